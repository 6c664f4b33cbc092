//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4.2), parsed with `httparse`.
//!
//! [`parse_request`] reads a request head from the start of a buffer and either asks
//! for more bytes, accepts it as an [`UpgradeRequest`], or refuses it with a
//! [`Refusal`] naming the problem. [`write_accept`] and [`write_refusal`] append the
//! response bytes; they never fail.
//!
//! Authentication, origin checks and subprotocol choice are the caller's policy: this
//! module only hands over the `Authorization`, `Origin` and `Sec-WebSocket-Protocol`
//! values as sent.

use std::borrow::Cow;

use httparse::Status;
use tungstenite::handshake::derive_accept_key;

use crate::reason::HandshakeFailure;

/// Most header fields accepted in a request head; more is refused with 431 whatever the
/// head's size (the fields are parsed into a fixed array on the stack, so this bound is
/// fixed too). Browsers send about 15–20, a browser behind a few proxies rarely 30.
/// [`TOO_MANY_HEADERS`] is the refusal's body text.
pub const MAX_HEADERS: usize = 64;

/// The 431 body when the head is over the size limit (the caller's `max_head_bytes`,
/// the gateway's `--max-handshake-size`).
pub const HEAD_TOO_LARGE: &str = "request head over the size limit (--max-handshake-size)";

/// The 431 body when the head has more than [`MAX_HEADERS`] fields.
pub const TOO_MANY_HEADERS: &str = "request head has more than 64 header fields (the limit)";

const _: () = assert!(MAX_HEADERS == 64, "TOO_MANY_HEADERS names the limit");

/// A valid upgrade request, owned and compact (dropped after the response is written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target as sent: a path plus an optional `?query`.
    pub target: String,
    /// The `Sec-WebSocket-Key`, validated as the base64 of exactly 16 bytes.
    pub key: String,
    /// The `Origin` header, if sent (browsers always send it).
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` tokens in the order offered (comma-split and trimmed,
    /// over all such headers; empty items skipped).
    pub protocols: Vec<String>,
    /// The `Authorization` header value as sent.
    pub authorization: Option<String>,
    /// The `Host` header, if sent.
    pub host: Option<String>,
}

impl UpgradeRequest {
    /// The target without its query (everything before the first `?`).
    #[must_use]
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(&self.target, |(path, _)| path)
    }

    /// The `name=value` pairs of the query, percent-decoded with `+` as a space
    /// (`application/x-www-form-urlencoded`). Empty items are skipped, an item without
    /// `=` has an empty value, a `%` not followed by two hex digits is kept literally,
    /// and bytes that do not decode to UTF-8 become U+FFFD. Borrows when nothing needs
    /// decoding.
    ///
    /// # Examples
    ///
    /// ```
    /// # use pingwheel_proto::handshake::UpgradeRequest;
    /// let request = UpgradeRequest {
    ///     target: "/ws?token=a%2Bb&channel=news+eu&flag".to_owned(),
    ///     key: "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
    ///     origin: None,
    ///     protocols: Vec::new(),
    ///     authorization: None,
    ///     host: None,
    /// };
    /// assert_eq!(request.path(), "/ws");
    /// let pairs: Vec<(String, String)> =
    ///     request.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    /// assert_eq!(pairs, [("token".into(), "a+b".into()), ("channel".into(), "news eu".into()), ("flag".into(), "".into())]);
    /// ```
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        let query = self.target.split_once('?').map_or("", |(_, query)| query);
        query_pairs(query)
    }
}

/// The `name=value` pairs of a query string (the part after `?`), form-decoded
/// (`%XX` and `+`), in order; what [`UpgradeRequest::query_pairs`] does for the
/// upgrade's target, for any other URL (the admin API's).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            (form_decode(name), form_decode(value))
        })
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => decoded.push(b' '),
            b'%' => {
                let high = bytes.get(i + 1).and_then(|&b| char::from(b).to_digit(16));
                let low = bytes.get(i + 2).and_then(|&b| char::from(b).to_digit(16));
                if let (Some(high), Some(low)) = (high, low) {
                    decoded.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                decoded.push(b'%');
            }
            other => decoded.push(other),
        }
        i += 1;
    }
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Why a request is refused and the short text body to send.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("upgrade refused ({}): {message}", .failure.as_label())]
pub struct Refusal {
    /// The failure: its HTTP status and metrics label.
    pub failure: HandshakeFailure,
    /// What was wrong, e.g. `"missing Sec-WebSocket-Key header"`.
    pub message: &'static str,
}

impl Refusal {
    const fn new(failure: HandshakeFailure, message: &'static str) -> Self {
        Refusal { failure, message }
    }

    const fn bad_request(message: &'static str) -> Self {
        Refusal::new(HandshakeFailure::BadRequest, message)
    }
}

/// Whether the comma-separated list `value` contains `token` (ASCII case-insensitive,
/// items trimmed of optional whitespace).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Value of a base64 digit (standard alphabet).
fn base64_digit(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Whether `key` is the canonical base64 encoding of exactly 16 bytes: 22 digits, the
/// last with its 4 padding bits clear, then `==` (RFC 6455 §4.1, item 7).
fn is_valid_key(key: &[u8]) -> bool {
    let [digits @ .., b'=', b'='] = key else {
        return false;
    };
    digits.len() == 22
        && digits.iter().all(|&b| base64_digit(b).is_some())
        && digits
            .last()
            .and_then(|&b| base64_digit(b))
            .is_some_and(|last| last & 0x0F == 0)
}

/// Where a header of interest was seen, and how often.
#[derive(Default)]
struct Single<'b> {
    value: Option<&'b [u8]>,
    count: usize,
}

impl<'b> Single<'b> {
    fn see(&mut self, value: &'b [u8]) {
        self.value.get_or_insert(value);
        self.count += 1;
    }

    /// The value as an owned string, or the refusal for a duplicate / non-UTF-8 value.
    fn owned(
        &self,
        duplicate: &'static str,
        not_utf8: &'static str,
    ) -> Result<Option<String>, Refusal> {
        if self.count > 1 {
            return Err(Refusal::bad_request(duplicate));
        }
        self.value
            .map(|v| {
                std::str::from_utf8(v)
                    .map(str::to_owned)
                    .map_err(|_| Refusal::bad_request(not_utf8))
            })
            .transpose()
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete; call again with more bytes (nothing is
/// consumed). `Ok(Some((head_len, request)))`: a valid upgrade; the bytes after
/// `head_len` already belong to the WebSocket stream.
///
/// # Errors
///
/// A [`Refusal`], from the first failing check in this order (tungstenite's):
///
/// 1. malformed HTTP → 400;
/// 2. the head is not complete within `max_head_bytes` ([`HEAD_TOO_LARGE`]), or has
///    more than [`MAX_HEADERS`] fields ([`TOO_MANY_HEADERS`]) → 431, the body saying
///    which;
/// 3. a method other than GET → 405;
/// 4. an HTTP version other than 1.1 → 400;
/// 5. `Connection` lacks the token `upgrade`, or `Upgrade` lacks `websocket` (both
///    case-insensitive comma lists, over all such headers) → 426;
/// 6. `Sec-WebSocket-Version` is not exactly one `13` → 426;
/// 7. `Sec-WebSocket-Key` missing, repeated, or not the base64 of 16 bytes → 400;
/// 8. a body (`Content-Length` other than 0, or any `Transfer-Encoding`) → 400;
/// 9. `Host`, `Origin` or `Authorization` repeated, or a kept header value
///    (those and `Sec-WebSocket-Protocol`) not UTF-8 → 400.
///
/// Header names are matched case-insensitively.
pub fn parse_request(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<(usize, UpgradeRequest)>, Refusal> {
    let window = &buf[..buf.len().min(max_head_bytes)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(window) {
        Ok(Status::Complete(head_len)) => head_len,
        Ok(Status::Partial) if buf.len() >= max_head_bytes => {
            return Err(Refusal::new(
                HandshakeFailure::HeaderTooLarge,
                HEAD_TOO_LARGE,
            ));
        }
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                HandshakeFailure::HeaderTooLarge,
                TOO_MANY_HEADERS,
            ));
        }
        Err(error) => return Err(Refusal::bad_request(parse_error_message(error))),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        // httparse fills all three in a complete request.
        return Err(Refusal::bad_request("malformed request line"));
    };
    if method != "GET" {
        return Err(Refusal::new(
            HandshakeFailure::MethodNotAllowed,
            "method must be GET",
        ));
    }
    if version != 1 {
        return Err(Refusal::bad_request("HTTP version must be 1.1"));
    }

    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;
    let mut version = Single::default();
    let mut key = Single::default();
    let mut host = Single::default();
    let mut origin = Single::default();
    let mut authorization = Single::default();
    let mut content_length_invalid = false;
    let mut has_body = false;
    let mut protocols_not_utf8 = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version.see(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key.see(value);
        } else if name.eq_ignore_ascii_case("host") {
            host.see(value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin.see(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization.see(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocols_not_utf8 |= std::str::from_utf8(value).is_err();
        } else if name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(digits) if !digits.is_empty() => has_body |= digits.bytes().any(|b| b != b'0'),
                _ => content_length_invalid = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
    }

    if !connection_upgrade {
        return Err(Refusal::new(
            HandshakeFailure::UpgradeRequired,
            "Connection header must include upgrade",
        ));
    }
    if !upgrade_websocket {
        return Err(Refusal::new(
            HandshakeFailure::UpgradeRequired,
            "Upgrade header must include websocket",
        ));
    }
    if version.count != 1 || version.value != Some(&b"13"[..]) {
        return Err(Refusal::new(
            HandshakeFailure::UpgradeRequired,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = match (key.value, key.count) {
        (None, _) => return Err(Refusal::bad_request("missing Sec-WebSocket-Key header")),
        (Some(_), 2..) => return Err(Refusal::bad_request("duplicate Sec-WebSocket-Key header")),
        (Some(key), _) if !is_valid_key(key) => {
            return Err(Refusal::bad_request("invalid Sec-WebSocket-Key header"));
        }
        (Some(key), _) => key,
    };
    if content_length_invalid {
        return Err(Refusal::bad_request("invalid Content-Length header"));
    }
    if has_body {
        return Err(Refusal::bad_request("request must not have a body"));
    }
    let host = host.owned("duplicate Host header", "Host header is not UTF-8")?;
    let origin = origin.owned("duplicate Origin header", "Origin header is not UTF-8")?;
    let authorization = authorization.owned(
        "duplicate Authorization header",
        "Authorization header is not UTF-8",
    )?;
    if protocols_not_utf8 {
        return Err(Refusal::bad_request(
            "Sec-WebSocket-Protocol header is not UTF-8",
        ));
    }

    let protocols = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
        .flat_map(|value| value.split(','))
        .map(|item| item.trim_matches([' ', '\t']))
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    // `is_valid_key` accepted only ASCII base64 digits and `=`.
    let key = String::from_utf8_lossy(key).into_owned();
    let upgrade = UpgradeRequest {
        target: target.to_owned(),
        key,
        origin,
        protocols,
        authorization,
        host,
    };
    Ok(Some((head_len, upgrade)))
}

/// The refusal text for an `httparse` error (other than `TooManyHeaders`).
fn parse_error_message(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "malformed header name",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Version => "malformed HTTP version",
        httparse::Error::Token | httparse::Error::Status | httparse::Error::TooManyHeaders => {
            "malformed request line"
        }
    }
}

/// Appends the `101 Switching Protocols` response accepting the request with `key`,
/// echoing `protocol` in `Sec-WebSocket-Protocol` if given (it must be one of the
/// offered [`UpgradeRequest::protocols`]).
///
/// # Examples
///
/// ```
/// use pingwheel_proto::handshake::write_accept;
/// let mut out = Vec::new();
/// write_accept("dGhlIHNhbXBsZSBub25jZQ==", None, &mut out);
/// assert_eq!(
///     out,
///     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
///       Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
/// );
/// ```
pub fn write_accept(key: &str, protocol: Option<&str>, out: &mut Vec<u8>) {
    let accept = derive_accept_key(key.as_bytes());
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(protocol) = protocol {
        debug_assert!(
            !protocol.bytes().any(|b| b == b'\r' || b == b'\n'),
            "protocol {protocol:?} would split the header"
        );
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase for the statuses a refusal uses.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Appends the HTTP error response for `failure` (status from
/// [`HandshakeFailure::status`]) with the body `message` plus a newline.
///
/// Headers: `Content-Type: text/plain; charset=utf-8`, `Content-Length`,
/// `Connection: close`, plus `Allow: GET` for 405, `Sec-WebSocket-Version: 13` for
/// 426 and `WWW-Authenticate: Bearer` for 401 (RFC 9110 §15.5.2 requires one). For a
/// failure with no status ([`HandshakeFailure::Disconnected`]) nothing is written.
///
/// # Examples
///
/// ```
/// use pingwheel_proto::{handshake::write_refusal, HandshakeFailure};
/// let mut out = Vec::new();
/// write_refusal(HandshakeFailure::MethodNotAllowed, "method must be GET", &mut out);
/// assert!(out.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
/// assert!(out.ends_with(b"Allow: GET\r\n\r\nmethod must be GET\n"));
/// ```
pub fn write_refusal(failure: HandshakeFailure, message: &str, out: &mut Vec<u8>) {
    let Some(status) = failure.status() else {
        return;
    };
    let extra = match status {
        401 => "WWW-Authenticate: Bearer\r\n",
        405 => "Allow: GET\r\n",
        426 => "Sec-WebSocket-Version: 13\r\n",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n",
        phrase = reason_phrase(status),
        length = message.len() + 1,
    );
    out.reserve(head.len() + message.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
