//! The admin listener's HTTP helpers: the response body type, size- and time-limited
//! body reads, and small response builders. Every route (`mod.rs`, `publish.rs`) answers through
//! these, so status codes, content types and limits are spelled once.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// The response body type of every route.
pub type AdminBody = Full<Bytes>;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the limit: answer 413.
    #[error("request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The body did not arrive completely within the time limit: answer 408 and close
    /// the connection (the rest of the body is never read).
    #[error("request body not complete within {after:?}")]
    TimedOut {
        /// The time limit.
        after: Duration,
    },
    /// The connection failed or the body was malformed mid-read: answer 400 (if the
    /// connection still can).
    #[error("cannot read request body: {0}")]
    Read(Box<dyn std::error::Error + Send + Sync>),
}

impl BodyError {
    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A plain-text response for this error (the connection's last after a timeout).
    pub fn to_response(&self) -> Response<AdminBody> {
        let mut response = respond(
            self.status(),
            "text/plain; charset=utf-8",
            format!("{self}\n"),
        );
        if matches!(self, BodyError::TimedOut { .. }) {
            close_after(&mut response);
        }
        response
    }
}

/// Reads a whole request body, failing with [`BodyError::TooLarge`] as soon as more than
/// `limit` bytes have arrived (nothing past the limit is buffered), and with
/// [`BodyError::TimedOut`] if the whole body has not arrived within `timeout`.
///
/// # Errors
///
/// See [`BodyError`].
pub async fn read_body<B>(body: B, limit: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| BodyError::TimedOut { after: timeout })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(err) => Err(BodyError::Read(err)),
    }
}

/// Marks `response` as the connection's last (`Connection: close`): hyper closes the
/// connection once it is written instead of waiting for the rest of a request body.
pub fn close_after(response: &mut Response<AdminBody>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// A response with `status`, `content_type` and `body`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A short `text/plain` response.
pub fn plain(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// 405 with `Allow: <allow>`.
pub fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_body_enforces_the_limit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let body = Full::new(Bytes::from_static(b"0123456789"));
            let bytes = read_body(body.clone(), 10, Duration::from_secs(5))
                .await
                .expect("exactly at the limit");
            assert_eq!(&bytes[..], b"0123456789");

            let err = read_body(body, 9, Duration::from_secs(5))
                .await
                .expect_err("one byte over");
            assert!(matches!(err, BodyError::TooLarge { limit: 9 }), "{err:?}");
            assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(err.to_response().status(), StatusCode::PAYLOAD_TOO_LARGE);
        });
    }

    #[test]
    fn read_body_enforces_the_time_limit() {
        use std::convert::Infallible;
        /// A body whose next frame never comes.
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>>
            {
                std::task::Poll::Pending
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let limit = Duration::from_millis(50);
            let err = read_body(Stalled, 1 << 20, limit)
                .await
                .expect_err("never completes");
            assert!(
                matches!(err, BodyError::TimedOut { after } if after == limit),
                "{err:?}"
            );
            let response = err.to_response();
            assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
            assert_eq!(response.headers()[CONNECTION], "close");
            assert_eq!(err.to_string(), "request body not complete within 50ms");
        });
    }
}
