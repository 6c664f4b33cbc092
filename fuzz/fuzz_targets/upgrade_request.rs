//! The HTTP upgrade parser, `pingwheel_proto::handshake::parse_request`, on arbitrary
//! bytes, and the responses written for its results.
//!
//! Input: `[limit, request...]`. `limit` picks `max_head_bytes` from [`LIMITS`] (the
//! gateway's default, `--max-handshake-size`, is 8 KiB).
//!
//! Besides "never panics", it checks:
//! * an accepted head lies within the input and the limit, and parsing exactly that
//!   head gives the same request (the bytes after it are not read);
//! * "incomplete" only below the limit;
//! * the accessors (`path`, `query_pairs`) work on whatever was accepted, and the 101
//!   response and every refusal response are complete HTTP/1.1 responses.
//!
//! Which requests are refused, and with what, is for the crate's own tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingwheel_proto::handshake::{parse_request, write_accept, write_refusal};

/// `max_head_bytes` values: tiny, small and the gateway's default.
const LIMITS: [usize; 4] = [16, 256, 1024, 8 << 10];

/// Parses `out` as one complete HTTP/1.1 response with status `expected`, followed by
/// exactly `Content-Length` bytes of body.
fn check_response(out: &[u8], expected: Option<u16>) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let status = response.parse(out).expect("a valid HTTP response");
    let httparse::Status::Complete(head_len) = status else {
        panic!("an incomplete response: {:?}", String::from_utf8_lossy(out));
    };
    assert_eq!(response.version, Some(1));
    if let Some(code) = expected {
        assert_eq!(response.code, Some(code));
    }
    let body_len = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a numeric Content-Length")
        });
    assert_eq!(
        out.len() - head_len,
        body_len,
        "body length matches Content-Length"
    );
}

fuzz_target!(|data: &[u8]| {
    let [limit, request @ ..] = data else {
        return;
    };
    let max = LIMITS[usize::from(*limit) % LIMITS.len()];
    match parse_request(request, max) {
        Ok(Some((head_len, upgrade))) => {
            assert!(
                head_len <= request.len() && head_len <= max,
                "head_len={head_len}"
            );
            let again = parse_request(&request[..head_len], max);
            assert_eq!(
                again,
                Ok(Some((head_len, upgrade.clone()))),
                "the head alone"
            );
            assert!(upgrade.target.starts_with(upgrade.path()));
            let pairs = upgrade.query_pairs().count();
            assert!(pairs <= upgrade.target.len(), "at most one pair per byte");
            let mut out = Vec::new();
            write_accept(
                &upgrade.key,
                upgrade.protocols.first().map(String::as_str),
                &mut out,
            );
            check_response(&out, Some(101));
        }
        Ok(None) => assert!(request.len() < max, "incomplete at or past the limit"),
        Err(refusal) => {
            let text = refusal.to_string();
            assert!(!text.is_empty());
            let mut out = Vec::new();
            write_refusal(refusal.failure, refusal.message, &mut out);
            match refusal.failure.status() {
                Some(status) => check_response(&out, Some(status)),
                None => assert!(out.is_empty(), "{refusal}: no status, nothing written"),
            }
        }
    }
});
