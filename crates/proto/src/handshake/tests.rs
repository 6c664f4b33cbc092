//! Byte-literal tests of the upgrade: the RFC 6455 sample, every refusal, responses.

use super::*;

const MAX: usize = 8 * 1024;

/// The RFC 6455 §1.3 sample handshake (plus a query, auth and two protocol headers).
const SAMPLE: &str = "GET /chat?token=abc HTTP/1.1\r\n\
    Host: server.example.com\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Origin: http://example.com\r\n\
    Sec-WebSocket-Protocol: chat, superchat\r\n\
    Sec-WebSocket-Protocol: v3\r\n\
    Authorization: Bearer xyz\r\n\
    Sec-WebSocket-Version: 13\r\n\
    \r\n";

/// The sample with `name`'s header line replaced by `line` (removed if empty).
fn with_header(name: &str, line: &str) -> String {
    let mut out = String::new();
    for l in SAMPLE.split_inclusive("\r\n") {
        if l.to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        {
            if !line.is_empty() {
                out.push_str(line);
                out.push_str("\r\n");
            }
        } else {
            out.push_str(l);
        }
    }
    out
}

/// The sample with `line` added before the blank line.
fn plus_header(line: &str) -> String {
    let head = SAMPLE.strip_suffix("\r\n").expect("ends with a blank line");
    format!("{head}{line}\r\n\r\n")
}

#[track_caller]
fn assert_refused(request: &str, failure: HandshakeFailure, message: &str) {
    let refusal = parse_request(request.as_bytes(), MAX).expect_err("should be refused");
    assert_eq!(
        (refusal.failure, refusal.message),
        (failure, message),
        "{request:?}"
    );
}

#[track_caller]
fn accept(request: &str) -> UpgradeRequest {
    let (len, upgrade) = parse_request(request.as_bytes(), MAX)
        .expect("valid")
        .expect("complete");
    assert_eq!(len, request.len());
    upgrade
}

#[test]
fn rfc_6455_sample_request() {
    let mut buf = SAMPLE.as_bytes().to_vec();
    buf.extend_from_slice(&[0x81, 0x80]); // first frame bytes already arrived
    let (head_len, upgrade) = parse_request(&buf, MAX).expect("valid").expect("complete");
    assert_eq!(head_len, SAMPLE.len());
    assert_eq!(
        upgrade,
        UpgradeRequest {
            target: "/chat?token=abc".to_owned(),
            key: "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
            origin: Some("http://example.com".to_owned()),
            protocols: vec!["chat".to_owned(), "superchat".to_owned(), "v3".to_owned()],
            authorization: Some("Bearer xyz".to_owned()),
            host: Some("server.example.com".to_owned()),
        }
    );
    assert_eq!(upgrade.path(), "/chat");
    let pairs: Vec<_> = upgrade.query_pairs().collect();
    assert_eq!(pairs, [(Cow::Borrowed("token"), Cow::Borrowed("abc"))]);
}

#[test]
fn rfc_6455_sample_accept_key() {
    let mut out = Vec::new();
    write_accept("dGhlIHNhbXBsZSBub25jZQ==", Some("chat"), &mut out);
    assert_eq!(
        std::str::from_utf8(&out).expect("ascii"),
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
         Sec-WebSocket-Protocol: chat\r\n\
         \r\n"
    );
    // A valid HTTP response.
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut response = httparse::Response::new(&mut headers);
    assert_eq!(response.parse(&out), Ok(Status::Complete(out.len())));
    assert_eq!(response.code, Some(101));
}

#[test]
fn every_prefix_is_incomplete() {
    for end in 0..SAMPLE.len() {
        assert_eq!(
            parse_request(&SAMPLE.as_bytes()[..end], MAX),
            Ok(None),
            "end={end}"
        );
    }
}

#[test]
fn minimal_request_and_case_insensitive_names() {
    let upgrade = accept(
        "GET / HTTP/1.1\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
         sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n",
    );
    assert_eq!(upgrade.target, "/");
    assert_eq!(upgrade.key, "AAAAAAAAAAAAAAAAAAAAAA==");
    assert_eq!(
        (upgrade.origin, upgrade.host, upgrade.authorization),
        (None, None, None)
    );
    assert!(upgrade.protocols.is_empty());
    // Connection may come in several headers; Content-Length: 0 is no body.
    accept(&plus_header("Connection: keep-alive").replace(
        "Connection: Upgrade\r\n",
        "Connection: close\r\nConnection: upgrade\r\n",
    ));
    accept(&plus_header("Content-Length: 0"));
}

#[test]
fn malformed_http_is_400() {
    assert_refused(
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        HandshakeFailure::BadRequest,
        "malformed header name",
    );
    assert_refused(
        "GET / HTTP/2.0\r\n\r\n",
        HandshakeFailure::BadRequest,
        "malformed HTTP version",
    );
    assert_refused(
        "GET /\x01 HTTP/1.1\r\n\r\n",
        HandshakeFailure::BadRequest,
        "malformed request line",
    );
    assert_refused(
        "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
        HandshakeFailure::BadRequest,
        "malformed header value",
    );
}

#[test]
fn oversized_head_is_431() {
    let padding = format!("X-Pad: {}", "p".repeat(MAX));
    let request = plus_header(&padding);
    assert_refused(
        &request,
        HandshakeFailure::HeaderTooLarge,
        "request head over the size limit (--max-handshake-size)",
    );
    // Exactly at the limit with the head still incomplete.
    let partial = &request.as_bytes()[..MAX];
    assert_eq!(
        parse_request(partial, MAX).map_err(|r| r.failure),
        Err(HandshakeFailure::HeaderTooLarge)
    );
    // One byte short of the limit: wait for more.
    assert_eq!(parse_request(&partial[..MAX - 1], MAX), Ok(None));
    // A head that fits exactly is fine.
    accept(SAMPLE);
    assert!(
        parse_request(SAMPLE.as_bytes(), SAMPLE.len())
            .expect("fits")
            .is_some()
    );
    assert_eq!(
        parse_request(SAMPLE.as_bytes(), SAMPLE.len() - 1).map_err(|r| r.failure),
        Err(HandshakeFailure::HeaderTooLarge)
    );
}

#[test]
fn too_many_headers_is_431() {
    let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
    let request = plus_header(many.trim_end());
    assert!(request.len() < MAX, "small headers, small head");
    assert_refused(
        &request,
        HandshakeFailure::HeaderTooLarge,
        "request head has more than 64 header fields (the limit)",
    );
    assert!(TOO_MANY_HEADERS.contains(&MAX_HEADERS.to_string()));
    // One field fewer fits (the sample's own fields count too).
    let fields = SAMPLE.matches("\r\n").count() - 2;
    let fewer: String = (0..MAX_HEADERS - fields)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    accept(&plus_header(fewer.trim_end()));
}

#[test]
fn non_get_is_405() {
    assert_refused(
        &SAMPLE.replacen("GET", "POST", 1),
        HandshakeFailure::MethodNotAllowed,
        "method must be GET",
    );
    // Checked before the upgrade headers.
    assert_refused(
        "PUT / HTTP/1.1\r\n\r\n",
        HandshakeFailure::MethodNotAllowed,
        "method must be GET",
    );
}

#[test]
fn http_1_0_is_400() {
    assert_refused(
        &SAMPLE.replacen("HTTP/1.1", "HTTP/1.0", 1),
        HandshakeFailure::BadRequest,
        "HTTP version must be 1.1",
    );
    assert_refused(
        "GET / HTTP/1.0\r\n\r\n",
        HandshakeFailure::BadRequest,
        "HTTP version must be 1.1",
    );
}

#[test]
fn missing_upgrade_headers_are_426() {
    let connection = "Connection header must include upgrade";
    assert_refused(
        &with_header("Connection", ""),
        HandshakeFailure::UpgradeRequired,
        connection,
    );
    assert_refused(
        &with_header("Connection", "Connection: keep-alive"),
        HandshakeFailure::UpgradeRequired,
        connection,
    );
    assert_refused(
        &with_header("Connection", "Connection: upgraded"),
        HandshakeFailure::UpgradeRequired,
        connection,
    );
    let upgrade = "Upgrade header must include websocket";
    assert_refused(
        &with_header("Upgrade", ""),
        HandshakeFailure::UpgradeRequired,
        upgrade,
    );
    assert_refused(
        &with_header("Upgrade", "Upgrade: h2c"),
        HandshakeFailure::UpgradeRequired,
        upgrade,
    );
    accept(&with_header("Upgrade", "Upgrade: foo, WebSocket"));
}

#[test]
fn wrong_version_is_426() {
    let message = "Sec-WebSocket-Version must be 13";
    assert_refused(
        &with_header("Sec-WebSocket-Version", ""),
        HandshakeFailure::UpgradeRequired,
        message,
    );
    assert_refused(
        &with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"),
        HandshakeFailure::UpgradeRequired,
        message,
    );
    assert_refused(
        &with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"),
        HandshakeFailure::UpgradeRequired,
        message,
    );
    assert_refused(
        &plus_header("Sec-WebSocket-Version: 13"),
        HandshakeFailure::UpgradeRequired,
        message,
    );
}

#[test]
fn bad_keys_are_400() {
    assert_refused(
        &with_header("Sec-WebSocket-Key", ""),
        HandshakeFailure::BadRequest,
        "missing Sec-WebSocket-Key header",
    );
    assert_refused(
        &plus_header("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
        HandshakeFailure::BadRequest,
        "duplicate Sec-WebSocket-Key header",
    );
    for key in [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",    // no padding
        "dGhlIHNhbXBsZSBub25jZQ=",   // short padding
        "dGhlIHNhbXBsZSBub25jZQ===", // 25 bytes
        "dGhlIHNhbXBsZSBub25j",      // 15 bytes, unpadded
        "dGhlIHNhbXBsZSBub25jZSE=",  // 17 bytes
        "dGhlIHNhbXBsZSBub25jZ!==",  // not base64
        "dGhlIHNhbXBsZSBub25jZR==",  // non-zero padding bits
        "dGhlIHNhbXBsZSBub25jZQ==x",
    ] {
        assert_refused(
            &with_header("Sec-WebSocket-Key", &format!("Sec-WebSocket-Key: {key}")),
            HandshakeFailure::BadRequest,
            "invalid Sec-WebSocket-Key header",
        );
    }
}

#[test]
fn a_body_is_400() {
    let message = "request must not have a body";
    assert_refused(
        &plus_header("Content-Length: 5"),
        HandshakeFailure::BadRequest,
        message,
    );
    assert_refused(
        &plus_header("Transfer-Encoding: chunked"),
        HandshakeFailure::BadRequest,
        message,
    );
    assert_refused(
        &plus_header("Content-Length: -1"),
        HandshakeFailure::BadRequest,
        "invalid Content-Length header",
    );
    assert_refused(
        &plus_header("Content-Length: "),
        HandshakeFailure::BadRequest,
        "invalid Content-Length header",
    );
}

#[test]
fn ambiguous_or_non_utf8_kept_headers_are_400() {
    assert_refused(
        &plus_header("Host: other.example"),
        HandshakeFailure::BadRequest,
        "duplicate Host header",
    );
    assert_refused(
        &plus_header("Origin: http://evil.example"),
        HandshakeFailure::BadRequest,
        "duplicate Origin header",
    );
    assert_refused(
        &plus_header("Authorization: Bearer b"),
        HandshakeFailure::BadRequest,
        "duplicate Authorization header",
    );
    let mut request = with_header("Origin", "Origin: http://x").into_bytes();
    let at = request
        .windows(8)
        .position(|w| w == b"http://x")
        .expect("present")
        + 7;
    request[at] = 0xFF;
    let refusal = parse_request(&request, MAX).expect_err("not UTF-8");
    assert_eq!(refusal, Refusal::bad_request("Origin header is not UTF-8"));
}

#[test]
fn refusal_order_follows_tungstenite() {
    // Version before key; upgrade before version; key before body.
    let no_key_old_version =
        with_header("Sec-WebSocket-Key", "").replace("Version: 13", "Version: 7");
    assert_refused(
        &no_key_old_version,
        HandshakeFailure::UpgradeRequired,
        "Sec-WebSocket-Version must be 13",
    );
    let no_upgrade_no_version = with_header("Upgrade", "").replace("Version: 13", "Version: 7");
    assert_refused(
        &no_upgrade_no_version,
        HandshakeFailure::UpgradeRequired,
        "Upgrade header must include websocket",
    );
    let no_key_with_body = plus_header("Content-Length: 3")
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_refused(
        &no_key_with_body,
        HandshakeFailure::BadRequest,
        "missing Sec-WebSocket-Key header",
    );
}

#[test]
fn protocols_are_split_trimmed_and_ordered() {
    let upgrade = accept(&SAMPLE.replacen(
        "Sec-WebSocket-Protocol: chat, superchat",
        "Sec-WebSocket-Protocol:  a ,b,, c\t",
        1,
    ));
    assert_eq!(upgrade.protocols, ["a", "b", "c", "v3"]);
}

#[test]
fn query_pairs_are_form_decoded() {
    let upgrade = accept(&SAMPLE.replacen(
        "/chat?token=abc",
        "/p?a=1&b=x%20y+z&&c&d=%zz%4&e=%C3%A9&f=%FF&a=2",
        1,
    ));
    assert_eq!(upgrade.path(), "/p");
    let pairs: Vec<(String, String)> = upgrade
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let expected = [
        ("a", "1"),
        ("b", "x y z"),
        ("c", ""),
        ("d", "%zz%4"),
        ("e", "é"),
        ("f", "\u{FFFD}"),
        ("a", "2"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(pairs, expected);
    let no_query = accept(&SAMPLE.replacen("/chat?token=abc", "/only/path", 1));
    assert_eq!(no_query.path(), "/only/path");
    assert_eq!(no_query.query_pairs().count(), 0);
    assert!(matches!(
        upgrade.query_pairs().next(),
        Some((Cow::Borrowed(_), Cow::Borrowed(_)))
    ));
}

#[test]
fn refusal_responses() {
    for failure in HandshakeFailure::ALL {
        let mut out = Vec::new();
        write_refusal(failure, "what went wrong", &mut out);
        let Some(status) = failure.status() else {
            assert!(out.is_empty(), "{failure:?} sends nothing");
            continue;
        };
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(Status::Complete(head_len)) = response.parse(&out) else {
            panic!("{failure:?}: not a complete HTTP response: {out:?}");
        };
        assert_eq!(response.code, Some(status));
        assert_eq!(response.reason, Some(reason_phrase(status)));
        assert_ne!(reason_phrase(status), "Error", "{status} has a phrase");
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).expect("ascii"))
        };
        assert_eq!(header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(header("Connection"), Some("close"));
        assert_eq!(header("Content-Length"), Some("16"));
        assert_eq!(header("Allow"), (status == 405).then_some("GET"));
        assert_eq!(
            header("Sec-WebSocket-Version"),
            (status == 426).then_some("13")
        );
        assert_eq!(
            header("WWW-Authenticate"),
            (status == 401).then_some("Bearer")
        );
        assert_eq!(&out[head_len..], b"what went wrong\n");
    }
    let mut out = Vec::new();
    write_refusal(
        HandshakeFailure::HeaderTooLarge,
        "request head too large",
        &mut out,
    );
    assert!(out.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
}

#[test]
fn refusal_display_names_the_problem() {
    let refusal = parse_request(b"POST / HTTP/1.1\r\n\r\n", MAX).expect_err("refused");
    assert_eq!(
        refusal.to_string(),
        "upgrade refused (method_not_allowed): method must be GET"
    );
}
