//! Issue 9, against the real binary over loopback with raw sockets: what a hostile
//! client gets at the edges that an adversarial pass found (frame length encodings,
//! header limits, a flooder after its close, the file-descriptor limit, signals).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Gateway, upgrade_request, wait_until};

/// Connects, sends a valid upgrade and reads the 101 head; returns the socket.
fn upgraded(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).expect("read the 101"),
            1,
            "EOF in the 101"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    s
}

/// Reads until EOF (or reset); returns everything read.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read: {e} after {} bytes", all.len()),
        }
    }
}

/// The code and reason of the server Close frame at the start of `frames`.
fn close_frame(frames: &[u8]) -> (u16, String) {
    assert_eq!(frames.first(), Some(&0x88), "a Close frame: {frames:x?}");
    let len = usize::from(frames[1]);
    let payload = &frames[2..2 + len];
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8_lossy(&payload[2..]).into_owned(),
    )
}

#[test]
fn a_non_minimal_frame_length_fails_the_connection_with_1002_at_once() {
    let gw = Gateway::start(&["--workers", "1"]);
    // A 16-bit length for a 5-byte text frame (and a 64-bit one for 5 bytes): RFC 6455
    // §5.2 requires the minimal encoding. Only the header is sent; the refusal must not
    // wait for the mask or the payload.
    for header in [
        &[0x81u8, 0x80 | 126, 0x00, 0x05][..],
        &[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0x05][..],
    ] {
        let mut s = upgraded(&gw);
        let sent = Instant::now();
        s.write_all(header).unwrap();
        let frames = read_to_close(&mut s);
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "closed after {:?}",
            sent.elapsed()
        );
        assert_eq!(
            close_frame(&frames),
            (1002, "frame length not minimally encoded".to_owned())
        );
    }
    assert!(wait_until(Duration::from_secs(5), || gw.metric(
        "pingwheel_connections_closed_total",
        &["reason=\"protocol_error\""]
    ) == 2.0));
}

/// Sends `request` and reads the whole response (the gateway closes after a refusal).
fn whole_response(gw: &Gateway, request: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
}

#[test]
fn a_431_says_which_head_limit_was_hit() {
    let gw = Gateway::start(&[]);
    let upgrade = upgrade_request("/");
    let head = upgrade
        .strip_suffix("\r\n")
        .expect("ends with a blank line");
    // 65 tiny fields: far under 8 KiB, over the 64-field limit.
    let fields: String = (0..65 - 5).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("{head}{fields}\r\n");
    assert_eq!(
        upgrade.matches("\r\n").count() - 2,
        5,
        "the upgrade has 5 fields"
    );
    assert!(many.len() < 1024, "{}", many.len());
    let response = whole_response(&gw, many.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert!(
        response.ends_with("\r\n\r\nrequest head has more than 64 header fields (the limit)\n"),
        "{response}"
    );
    // Exactly 64 fields are fine.
    let fields: String = (0..64 - 5).map(|i| format!("X-{i}: y\r\n")).collect();
    let response = common::raw_request(gw.listen, format!("{head}{fields}\r\n").as_bytes());
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    // Few fields, over --max-handshake-size.
    let big = format!("{head}X-Big: {}\r\n\r\n", "a".repeat(9000));
    let response = whole_response(&gw, big.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert!(
        response.ends_with("\r\n\r\nrequest head over the size limit (--max-handshake-size)\n"),
        "{response}"
    );
}

#[test]
fn a_ping_flooder_closed_with_1008_is_no_longer_read_and_is_dropped_after_a_short_grace() {
    let gw = Gateway::start(&[
        "--workers",
        "1",
        "--max-queued-bytes",
        "64KiB",
        "--close-timeout",
        "10s",
    ]);
    // The flooder: a small receive buffer, never reads, sends masked Pings (125-byte
    // payloads) as fast as the socket takes them. Its Pongs pile up past 64 KiB.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.listen.into()).unwrap();
    let mut flood: TcpStream = sock.into();
    flood.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[b'p'; 125]);
    let chunk = ping.repeat(400);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            flood
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                match flood.write(&chunk) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return true, // reset or broken pipe: the gateway dropped us
                }
            }
            false
        })
    };
    let overflowed = wait_until(Duration::from_secs(10), || {
        gw.metric(
            "pingwheel_connections_closed_total",
            &["reason=\"write_overflow\""],
        ) == 1.0
    });
    let decided = Instant::now();
    assert!(overflowed, "the flooder was not closed for write overflow");
    // From the decision on, the gateway reads (next to) nothing more, although the
    // flooder keeps writing: only what was in flight when it decided.
    let received = || gw.metric("pingwheel_bytes_received_total", &[]);
    let at_decision = received();
    let gone = wait_until(Duration::from_secs(4), || {
        gw.metric("pingwheel_connections", &[]) == 0.0
    });
    let after = received();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let dropped = flooder.join().unwrap();
    assert!(
        gone,
        "the evicted flooder was still connected {:?} after the decision",
        decided.elapsed()
    );
    assert!(
        decided.elapsed() < Duration::from_secs(4),
        "dropped after {:?} (grace 1 s), not after --close-timeout",
        decided.elapsed()
    );
    assert!(
        after - at_decision < f64::from(1 << 20),
        "the gateway read {} more bytes from the flooder after deciding to close it",
        after - at_decision
    );
    assert!(dropped, "the flooder saw its socket dropped");
    // Counted as before: one write_overflow close, nothing else.
    assert_eq!(
        gw.metric("pingwheel_connections_closed_total", &[]),
        1.0,
        "{:?}",
        gw.metrics()
    );
}

#[test]
fn a_second_sigterm_exits_at_once_with_status_1_as_help_says() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_pingwheel"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let collapsed = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        collapsed.contains("a second one exits at once with status 1"),
        "{help}"
    );

    let mut gw = Gateway::start(&["--drain-timeout", "30s"]);
    // A client that never answers the gateway's Close keeps the drain waiting.
    let _stuck = upgraded(&gw);
    assert!(wait_until(Duration::from_secs(5), || gw
        .metric("pingwheel_connections", &[])
        == 1.0));
    gw.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the first SIGTERM drains (up to --drain-timeout 30s)"
    );
    let second = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
}

#[test]
fn at_the_open_files_limit_accept_pauses_log_once_per_episode_and_are_counted() {
    use std::os::unix::process::CommandExt;
    const NOFILE: libc::rlim_t = 64;
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hardening-accept-pauses-{}.stderr.log",
        std::process::id()
    ));
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let gw = Gateway::start_with(&["--workers", "1", "--log-level", "info"], &[], |command| {
        command.stderr(stderr).env("NO_COLOR", "1");
        // SAFETY: setrlimit(2) is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: NOFILE,
                    rlim_max: NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // Twice the descriptors the gateway may hold: the kernel completes every handshake
    // into the backlog, the gateway runs out of descriptors accepting them.
    let clients: Vec<TcpStream> = (0..2 * NOFILE)
        .map(|_| TcpStream::connect(gw.listen).expect("connect (into the backlog)"))
        .collect();
    // Two seconds at the limit: twenty 100 ms pauses.
    std::thread::sleep(Duration::from_secs(2));
    let warnings = |text: &str| {
        text.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("cannot accept"))
            .count()
    };
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert_eq!(warnings(&text), 1, "one WARN line per episode:\n{text}");
    // Free the descriptors: the episode ends with one line, and accepting works.
    drop(clients);
    let ended = |text: &str| {
        text.lines()
            .filter(|l| l.contains("accepting again after"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || ended(
            &std::fs::read_to_string(&log).unwrap_or_default()
        ) == 1),
        "no end-of-episode line:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut fresh = upgraded(&gw);
    let pauses = gw.metric("pingwheel_accept_pauses_total", &["worker=\"0\""]);
    assert!(pauses >= 10.0, "pauses counted: {pauses}");
    let text = std::fs::read_to_string(&log).expect("read the log");
    assert_eq!(warnings(&text), 1, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("accepting again after"))
        .expect("the end line");
    assert!(
        line.contains(&format!("after {pauses} accept pauses")),
        "{line}"
    );
    fresh.write_all(&[0x88, 0x80, 0, 0, 0, 0]).unwrap(); // a masked empty Close
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_startup_error_is_one_line_naming_the_flag_and_exits_1() {
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-cert.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pingwheel"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pingwheel");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one line, not the log's copy as well: {stderr}"
    );
    assert!(
        lines[0].starts_with("pingwheel: --tls-cert ") && lines[0].contains("cannot read the file"),
        "{stderr}"
    );
}
