//! The admin listener's HTTP helpers: the response body type, size-limited body reads,
//! and small response builders. Every route (`mod.rs`, `publish.rs`) answers through
//! these, so status codes, content types and limits are spelled once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
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
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A plain-text response for this error.
    pub fn to_response(&self) -> Response<AdminBody> {
        respond(
            self.status(),
            "text/plain; charset=utf-8",
            format!("{self}\n"),
        )
    }
}

/// Reads a whole request body, failing with [`BodyError::TooLarge`] as soon as more than
/// `limit` bytes have arrived (nothing past the limit is buffered).
///
/// # Errors
///
/// See [`BodyError`].
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(err) => Err(BodyError::Read(err)),
    }
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
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let body = Full::new(Bytes::from_static(b"0123456789"));
            let bytes = read_body(body.clone(), 10)
                .await
                .expect("exactly at the limit");
            assert_eq!(&bytes[..], b"0123456789");

            let err = read_body(body, 9).await.expect_err("one byte over");
            assert!(matches!(err, BodyError::TooLarge { limit: 9 }), "{err:?}");
            assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(err.to_response().status(), StatusCode::PAYLOAD_TOO_LARGE);
        });
    }
}
