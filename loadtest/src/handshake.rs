//! The client's opening handshake (RFC 6455 §4.1): the upgrade request and the checks
//! on the server's `101 Switching Protocols`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tungstenite::handshake::derive_accept_key;

/// Largest response head we buffer before giving up on the server.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Appends the upgrade request for `path_and_query` on `host_header` with the given
/// 16-byte nonce (sent base64-encoded as `Sec-WebSocket-Key`).
pub fn write_request(out: &mut Vec<u8>, host_header: &str, path_and_query: &str, nonce: [u8; 16]) {
    let key = STANDARD.encode(nonce);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host_header.as_bytes());
    out.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(
        b"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: pingwheel-loadtest\r\n\r\n",
    );
}

/// Why the server's answer to the upgrade request was not a valid acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A well-formed HTTP response with a status other than 101.
    Status(u16),
    /// A 101 that breaks RFC 6455 (missing/wrong `Sec-WebSocket-Accept`, `Upgrade`,
    /// `Connection`, an extension we did not offer) or a malformed/oversized head.
    Invalid(&'static str),
}

impl HandshakeFailure {
    /// The failure-cause label used in reports: `http_<status>` or `handshake_invalid`.
    pub fn cause(&self) -> String {
        match self {
            Self::Status(status) => format!("http_{status}"),
            Self::Invalid(_) => "handshake_invalid".to_owned(),
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "server answered HTTP {status} instead of 101"),
            Self::Invalid(why) => write!(f, "invalid handshake response: {why}"),
        }
    }
}

impl std::error::Error for HandshakeFailure {}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks the server's response head at the start of `buf`. Returns the head's length
/// once it is complete and valid (bytes after it are already WebSocket frames), or
/// `Ok(None)` when more bytes are needed.
pub fn parse_response(buf: &[u8], nonce: [u8; 16]) -> Result<Option<usize>, HandshakeFailure> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(HandshakeFailure::Invalid("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeFailure::Invalid("malformed HTTP response")),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(HandshakeFailure::Status(status));
    }
    let headers = response.headers;
    if !header(headers, "upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Err(HandshakeFailure::Invalid("missing `Upgrade: websocket`"));
    }
    if !header(headers, "connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(HandshakeFailure::Invalid("missing `Connection: Upgrade`"));
    }
    let expected = derive_accept_key(STANDARD.encode(nonce).as_bytes());
    match header(headers, "sec-websocket-accept") {
        Some(accept) if accept.trim_ascii() == expected.as_bytes() => {}
        Some(_) => return Err(HandshakeFailure::Invalid("wrong Sec-WebSocket-Accept")),
        None => return Err(HandshakeFailure::Invalid("missing Sec-WebSocket-Accept")),
    }
    if header(headers, "sec-websocket-extensions").is_some() {
        return Err(HandshakeFailure::Invalid(
            "extension negotiated without an offer",
        ));
    }
    Ok(Some(head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §1.3's sample nonce, `dGhlIHNhbXBsZSBub25jZQ==`.
    const SAMPLE_NONCE: [u8; 16] = *b"the sample nonce";

    fn response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        )
    }

    #[test]
    fn request_carries_the_rfc_headers() {
        let mut out = Vec::new();
        write_request(&mut out, "127.0.0.1:8080", "/ws?token=t", SAMPLE_NONCE);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /ws?token=t HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn rfc_sample_accept_key_is_valid_and_trailing_frames_are_left() {
        let head = response("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&[0x89, 0x00]);
        assert_eq!(parse_response(&buf, SAMPLE_NONCE), Ok(Some(head.len())));
    }

    #[test]
    fn partial_heads_need_more() {
        let head = response("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n");
        for cut in 0..head.len() {
            assert_eq!(
                parse_response(&head.as_bytes()[..cut], SAMPLE_NONCE),
                Ok(None)
            );
        }
    }

    #[test]
    fn refusals_and_bad_acceptances() {
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        let failure = parse_response(refused, SAMPLE_NONCE).unwrap_err();
        assert_eq!(failure.cause(), "http_401");

        let wrong = response("Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n");
        let failure = parse_response(wrong.as_bytes(), SAMPLE_NONCE).unwrap_err();
        assert_eq!(
            failure,
            HandshakeFailure::Invalid("wrong Sec-WebSocket-Accept")
        );
        assert_eq!(failure.cause(), "handshake_invalid");

        let missing = response("");
        assert!(parse_response(missing.as_bytes(), SAMPLE_NONCE).is_err());

        let extension = response(
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
        );
        assert!(parse_response(extension.as_bytes(), SAMPLE_NONCE).is_err());

        assert!(parse_response(b"garbage\r\n\r\n", SAMPLE_NONCE).is_err());
        let endless = vec![b'a'; MAX_RESPONSE_HEAD + 1];
        assert!(parse_response(&endless, SAMPLE_NONCE).is_err());
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let head = "HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
                    sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            parse_response(head.as_bytes(), SAMPLE_NONCE),
            Ok(Some(head.len()))
        );
    }
}
