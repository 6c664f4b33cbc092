//! The real binary over loopback, with tungstenite's client and raw sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Gateway, raw_request, upgrade_request, wait_until};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, connect};

const FAST_KEEPALIVE: &[&str] = &["--ping-interval", "1", "--ping-timeout", "1"];

/// Reads frames for `dur`, answering pings (tungstenite queues the Pong on read and
/// flushes it on the next read/write); returns how many Pings arrived.
fn hold_tungstenite(
    ws: &mut tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    dur: Duration,
) -> usize {
    let deadline = Instant::now() + dur;
    let mut pings = 0;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(c)) => panic!("server closed the connection: {c:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                ws.flush().expect("flush pongs");
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    pings
}

fn set_read_timeout(
    ws: &tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    t: Duration,
) {
    match ws.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => s.set_read_timeout(Some(t)).unwrap(),
        _ => unreachable!("plain TCP only"),
    }
}

#[test]
fn tungstenite_client_stays_connected_and_rtt_is_measured() {
    let gw = Gateway::start(FAST_KEEPALIVE);
    let (mut ws, response) = connect(gw.ws_url()).expect("upgrade");
    assert_eq!(response.status(), 101);
    set_read_timeout(&ws, Duration::from_millis(100));
    let before = gw.metric("pingwheel_ping_rtt_seconds_count", &[]);
    let pings = hold_tungstenite(&mut ws, Duration::from_secs(5));
    assert!(
        pings >= 3,
        "expected ≥3 pings in 5 s at a 1 s interval, got {pings}"
    );
    let after = gw.metric("pingwheel_ping_rtt_seconds_count", &[]);
    assert!(
        after >= before + 3.0,
        "RTT histogram count grew from {before} to {after}"
    );
    assert_eq!(gw.metric("pingwheel_ping_timeouts_total", &[]), 0.0);
    assert_eq!(gw.metric("pingwheel_connections", &[]), 1.0);
}

#[test]
fn silent_client_is_closed_with_1011_after_interval_plus_timeout() {
    let gw = Gateway::start(&[
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
        "--tick",
        "10ms",
    ]);
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    let opened = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Read everything until EOF without ever answering.
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let closed_after = opened.elapsed();
    let head_end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("101 response")
        + 4;
    assert!(all.starts_with(b"HTTP/1.1 101"));
    let frames = &all[head_end..];
    // A Ping (0x89) then a Close (0x88) with code 1011.
    assert_eq!(frames[0], 0x89, "first frame is a Ping: {frames:x?}");
    let ping_len = usize::from(frames[1]);
    let close = &frames[2 + ping_len..];
    assert_eq!(close[0], 0x88, "then a Close: {frames:x?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1011);
    // First ping ≤ 1 s (jitter makes it up to 10 % earlier) + 50 ms of ping slack, then
    // 1 s of timeout, + a tick.
    assert!(
        closed_after >= Duration::from_millis(1800),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after <= Duration::from_millis(2000 + 50 + 10 + 300),
        "closed too late: {closed_after:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || gw
        .metric("pingwheel_ping_timeouts_total", &[])
        == 1.0));
    assert_eq!(
        gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"ping_timeout\""]
        ),
        1.0
    );
}

#[test]
fn sigterm_closes_live_clients_with_1001_and_exits_0() {
    let mut gw = Gateway::start(&[]);
    let mut clients: Vec<_> = (0..3)
        .map(|_| connect(gw.ws_url()).expect("upgrade").0)
        .collect();
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("pingwheel_connections", &[])
        == 3.0));
    gw.signal(libc::SIGTERM);
    for ws in &mut clients {
        set_read_timeout(ws, Duration::from_secs(5));
        match ws.read() {
            Ok(Message::Close(Some(CloseFrame { code, .. }))) => assert_eq!(code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        // Complete the closing handshake.
        let _ = ws.flush();
        while ws.read().is_ok() {}
    }
    let status = gw.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn bad_handshakes_get_the_right_http_status() {
    let gw = Gateway::start(&[]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases: Vec<(String, &str)> = vec![
        (format!("POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: 13\r\n\r\n"), "405"),
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "426"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}Sec-WebSocket-Version: 8\r\n\r\n"), "426"),
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_string(), "400"),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), "400"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000)), "431"),
    ];
    for (request, status) in &cases {
        let head = raw_request(gw.listen, request.as_bytes());
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "want {status} for {request:.60?}, got {head:?}"
        );
    }
    let head = raw_request(gw.listen, cases[2].0.as_bytes());
    assert!(
        head.contains("Sec-WebSocket-Version: 13"),
        "426 names the version: {head}"
    );
    // The server is still healthy for good clients.
    let (mut ws, _) = connect(gw.ws_url()).expect("upgrade after bad requests");
    ws.send(Message::text("hi")).unwrap();
    assert!(gw.metric("pingwheel_handshake_failures_total", &[]) >= cases.len() as f64);
}

#[test]
fn a_client_that_stops_reading_is_closed_at_the_queue_limit_while_others_keep_their_rtt() {
    let gw = Gateway::start(&[
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
    // The healthy client.
    let (mut good, _) = connect(gw.ws_url()).expect("upgrade");
    set_read_timeout(&good, Duration::from_millis(50));
    // The bad client: upgrades, then sends big messages and never reads.
    // A small receive buffer so the kernel stops absorbing the echoes early.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.listen.into()).unwrap();
    let mut bad: TcpStream = sock.into();
    bad.write_all(upgrade_request("/").as_bytes()).unwrap();
    let payload = vec![b'x'; 60_000];
    // 60,000 bytes take the 16-bit length (126): the minimal encoding RFC 6455 requires.
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // zero mask: payload as is
    frame.extend_from_slice(&payload);
    bad.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut good_pings = 0;
    let rtt_before = gw.metric("pingwheel_ping_rtt_seconds_count", &[]);
    while Instant::now() < deadline {
        match bad.write_all(&frame) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break, // reset or broken pipe: the server gave up on us
        }
        good_pings += hold_tungstenite(&mut good, Duration::from_millis(50));
        if gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"write_overflow\""],
        ) >= 1.0
        {
            break;
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"write_overflow\""]
        ) == 1.0),
        "the non-reading client was not closed for write overflow"
    );
    good_pings += hold_tungstenite(&mut good, Duration::from_secs(3));
    assert!(
        good_pings >= 2,
        "the healthy client kept getting pings: {good_pings}"
    );
    let rtt_after = gw.metric("pingwheel_ping_rtt_seconds_count", &[]);
    assert!(
        rtt_after >= rtt_before + 2.0,
        "and its RTT was measured ({rtt_before} → {rtt_after})"
    );
    // The bad client lingers (its Close queued) until it reads or leaves: it leaves.
    drop(bad);
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("pingwheel_connections", &[])
        == 1.0));
}

#[test]
fn healthz_and_metrics_are_served() {
    let gw = Gateway::start(&[]);
    let (status, body) = gw.admin_get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let m = gw.metrics();
    for name in ["pingwheel_connections", "pingwheel_timers"] {
        assert!(m.keys().any(|k| k.starts_with(name)), "{name} missing");
    }
}

#[test]
fn a_flooding_client_does_not_starve_others_on_its_worker() {
    // No ping timeout: the flooder (which never reads its pings) stays for the whole test.
    let gw = Gateway::start(&[
        "--workers",
        "1",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "off",
    ]);
    let (mut good, _) = connect(gw.ws_url()).expect("upgrade");
    set_read_timeout(&good, Duration::from_millis(50));
    // The flooder: valid but pointless traffic (unsolicited pongs, masked), as fast as
    // the socket takes it, for the whole test.
    let mut flood = TcpStream::connect(gw.listen).unwrap();
    flood.write_all(upgrade_request("/").as_bytes()).unwrap();
    let chunk: Vec<u8> =
        std::iter::repeat_n([0x8A, 0x84, 0, 0, 0, 0, b'f', b'l', b'o', b'o'], 6_000)
            .flatten()
            .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match flood.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent
        })
    };
    // 1 s pings: 4 or 5 are due in 5 s; 3 leaves room for a debug build on a loaded CI
    // machine (the pings are timed, the test must not be).
    let pings = hold_tungstenite(&mut good, Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flooder.join().unwrap();
    assert!(flooded > 10 << 20, "the flood was real: {flooded} bytes");
    assert!(
        pings >= 3,
        "the quiet client still got its pings: {pings} in 5 s"
    );
    assert_eq!(
        gw.metric("pingwheel_connections", &[]),
        2.0,
        "nobody was dropped"
    );
}
