//! The real binary serving `wss://`, with a rustls client (blocking) under tungstenite,
//! and raw sockets for what is not TLS.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gateway, raw_request, upgrade_request};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A certificate for localhost in a directory of its own, removed when dropped.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new() -> Certs {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "pingwheel-tls-it-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Certs {
            dir,
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    fn gateway(&self, extra: &[&str]) -> Gateway {
        let mut args = vec![
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Gateway::start(&args)
    }

    fn client(&self, gw: &Gateway) -> Tls {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(pingwheel::tls::config::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let sock = TcpStream::connect(gw.listen).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        StreamOwned::new(conn, sock)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wss(certs: &Certs, gw: &Gateway) -> tungstenite::WebSocket<Tls> {
    let url = format!("wss://localhost:{}/", gw.listen.port());
    let (ws, response) = tungstenite::client(url.as_str(), certs.client(gw)).expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

#[test]
fn pings_flow_over_wss_and_sigterm_sends_1001_then_close_notify() {
    let certs = Certs::new();
    let mut gw = certs.gateway(&["--ping-interval", "1", "--ping-timeout", "2"]);
    let mut ws = wss(&certs, &gw);
    assert_eq!(
        ws.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("read: {e}"),
        }
        ws.flush().unwrap();
    }
    assert!(pings >= 2, "{pings} pings in 3 s");
    // The Pongs were read back: the RTT histogram counts them.
    assert!(common::wait_until(Duration::from_secs(3), || {
        gw.metric("pingwheel_ping_rtt_seconds_count", &[]) >= 1.0
    }));
    assert_eq!(
        gw.metric("pingwheel_tls_handshakes_total", &["result=\"full\""]),
        1.0
    );
    gw.signal(libc::SIGTERM);
    let close = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(e) => panic!("read before the Close: {e}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    // tungstenite answered the Close; the gateway then ends TLS properly: close_notify
    // (a clean end of stream, not an unexpected EOF) before its FIN.
    let _ = ws.flush();
    let mut tls = ws.into_inner();
    let mut rest = Vec::new();
    match tls.read_to_end(&mut rest) {
        // rustls reports an end of stream without close_notify as UnexpectedEof.
        Ok(_) => assert!(rest.is_empty(), "nothing after the Close: {rest:?}"),
        Err(e) => panic!("no close_notify before the end: {e}"),
    }
    assert!(gw.wait(Duration::from_secs(10)).success());
}

#[test]
fn garbage_and_plain_http_are_refused_without_disturbing_a_wss_client() {
    let certs = Certs::new();
    let gw = certs.gateway(&["--ping-interval", "1", "--ping-timeout", "2"]);
    let mut ws = wss(&certs, &gw);

    let reply = raw_request(gw.listen, upgrade_request("/").as_bytes());
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("wss://"), "{reply}");

    let mut garbage = TcpStream::connect(gw.listen).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage.write_all(b"\x00\x01\x02 not TLS at all").unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert: {answer:?}");

    // The wss client still gets its pings.
    let mut pinged = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !pinged {
        match ws.read() {
            Ok(Message::Ping(_)) => pinged = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        ws.flush().unwrap();
    }
    assert!(pinged);
    assert_eq!(
        gw.metric("pingwheel_tls_handshakes_total", &["result=\"failed\""]),
        2.0
    );
}

#[test]
fn a_stalled_handshake_is_cut_at_the_open_timeout() {
    let certs = Certs::new();
    let gw = certs.gateway(&["--open-timeout", "1"]);
    let mut sock = TcpStream::connect(gw.listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Half a ClientHello record header, then nothing.
    sock.write_all(b"\x16\x03\x01\x02").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed, nothing sent: {:?}", &buf[..n]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(common::wait_until(Duration::from_secs(2), || {
        gw.metric("pingwheel_tls_handshakes_total", &["result=\"timeout\""]) == 1.0
    }));
}

#[test]
fn a_wss_client_that_stops_reading_is_closed_at_the_ciphertext_bound_while_others_keep_theirs() {
    let certs = Certs::new();
    let gw = certs.gateway(&[
        "--workers",
        "1",
        "--echo",
        "--max-queued-bytes",
        "64KiB",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "5",
    ]);
    let mut good = wss(&certs, &gw);
    // The bad client: upgrades over TLS, then sends big messages and never reads.
    let mut bad = wss(&certs, &gw);
    bad.get_ref()
        .sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let payload = vec![b'x'; 60_000];
    let closed = || {
        gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"slow_consumer\""],
        ) + gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"write_overflow\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && closed() < 1.0 {
        match bad.send(Message::binary(payload.clone())) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        let _ = good.flush();
    }
    assert!(
        common::wait_until(Duration::from_secs(5), || closed() == 1.0),
        "the non-reading client was not closed at the bound"
    );
    // The bound counts ciphertext: the TLS layer's check closes it as a slow consumer.
    assert_eq!(
        gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"slow_consumer\""]
        ),
        1.0
    );
    // The healthy client still gets pings.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(Message::Ping(_)) = good.read() {
            pings += 1;
        }
        let _ = good.flush();
    }
    assert!(pings >= 2, "{pings} pings for the healthy client");
}
