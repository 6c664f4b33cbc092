//! Short runs of the real `pingwheel-loadtest` binary against the real
//! `pingwheel-baseline` server: every scenario but push (which needs a publish API; see
//! tests/test_loadtest.py), the child-process split, the gates and the exit codes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A baseline server, killed (by its PID, through `Child::kill`) when dropped.
struct Server {
    child: Child,
    listen: String,
}

impl Server {
    fn start(flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pingwheel-baseline"))
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the baseline server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a readiness line");
        let listen = line
            .trim()
            .strip_prefix("ready listen=")
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
            .to_owned();
        Self { child, listen }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.listen)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the harness with `--quiet --json` and returns its output and the report.
fn loadtest(args: &[&str]) -> (Output, Value) {
    let json = temp_path("json");
    let output = Command::new(env!("CARGO_BIN_EXE_pingwheel-loadtest"))
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("the harness runs");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&json);
    (output, report)
}

fn temp_path(ext: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "pingwheel-loadtest-{}-{n}.{ext}",
        std::process::id()
    ))
}

#[track_caller]
fn assert_ok(output: &Output, report: &Value) {
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["ok"], true, "{report:#}");
}

fn u64_at(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"))
}

fn f64_at(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"))
}

#[test]
fn idle_split_over_two_processes_keeps_every_connection_pinged() {
    let server = Server::start(&["--ping-interval", "300ms"]);
    let pid = server.child.id().to_string();
    let (output, report) = loadtest(&[
        "idle",
        "--url",
        &server.url(),
        "--connections",
        "200",
        "--duration",
        "1.5s",
        "--settle",
        "200ms",
        "--processes",
        "2",
        "--expect-ping-interval",
        "300ms",
        // Any interval up to 2× passes: what this test shows is the split (every
        // connection of both processes pinged), not the spacing, which the pure timer
        // tests pin on a fake clock; a shared CI machine delays a 300 ms ping by 150 ms.
        "--ping-tolerance",
        "1",
        "--client-ping-interval",
        "200ms",
        "--server-pid",
        &pid,
        "--max-lost",
        "0",
    ]);
    assert_ok(&output, &report);
    assert_eq!(report["scenario"], "idle");
    assert_eq!(u64_at(&report, "/harness/processes"), 2);
    assert_eq!(u64_at(&report, "/connections/established"), 200);
    assert_eq!(u64_at(&report, "/connections/failed"), 0);
    assert_eq!(u64_at(&report, "/connections/lost"), 0);
    assert!(
        u64_at(&report, "/pings/per_connection_min") >= 4,
        "{report:#}"
    );
    let p50 = f64_at(&report, "/pings/interval_ms/p50");
    assert!((250.0..350.0).contains(&p50), "ping interval p50 {p50}");
    assert!(u64_at(&report, "/pings/client_sent") > 0);
    assert!(f64_at(&report, "/server/bytes_per_connection") > 0.0);
    assert!(f64_at(&report, "/harness/rss_bytes") > 0.0);
    assert_eq!(report["config"]["main_latency"], "client_rtt");
}

#[test]
fn echo_verifies_every_payload() {
    let server = Server::start(&["--echo"]);
    for rate in ["50/s", "0"] {
        let (output, report) = loadtest(&[
            "echo",
            "--url",
            &server.url(),
            "-c",
            "20",
            "-d",
            "1s",
            "--settle",
            "100ms",
            "--message-size",
            "300",
            "--message-rate",
            rate,
            "--max-lost",
            "0",
        ]);
        assert_ok(&output, &report);
        assert!(
            u64_at(&report, "/echo/received") > 100,
            "rate {rate}: {report:#}"
        );
        assert_eq!(u64_at(&report, "/echo/mismatches"), 0);
        assert!(f64_at(&report, "/echo/rtt_ms/p99") > 0.0);
    }
}

#[test]
fn churn_completes_close_handshakes() {
    let server = Server::start(&[]);
    let (output, report) = loadtest(&[
        "churn",
        "--url",
        &server.url(),
        "-c",
        "20",
        "-d",
        "1s",
        "--settle",
        "0s",
        "--churn-rate",
        "100/s",
        "--churn-message-size",
        "16",
        "--max-lost",
        "0",
    ]);
    assert_ok(&output, &report);
    let completed = u64_at(&report, "/churn/completed");
    assert!(
        (80..=101).contains(&completed),
        "{completed} cycles in 1 s at 100/s"
    );
}

#[test]
fn gates_fail_with_status_1_and_name_the_assertion() {
    let server = Server::start(&[]);
    let (output, report) = loadtest(&[
        "idle",
        "--url",
        &server.url(),
        "-c",
        "10",
        "-d",
        "200ms",
        "--settle",
        "0s",
        "--max-p99",
        "1us",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(report["ok"], false);
    let failed: Vec<&str> = report["assertions"]
        .as_array()
        .expect("assertions")
        .iter()
        .filter(|a| a["ok"] == false)
        .map(|a| a["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(failed, ["max_p99"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("[FAIL] max_p99"));
}

#[test]
fn refused_connections_are_counted_by_cause() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let (output, report) = loadtest(&[
        "idle", "--url", &url, "-c", "30", "-d", "100ms", "--settle", "0s",
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "no connection means the run failed"
    );
    assert_eq!(u64_at(&report, "/connections/failed_by_cause/refused"), 30);
    assert_eq!(u64_at(&report, "/connections/established"), 0);
}

#[test]
fn plot_is_an_svg() {
    let server = Server::start(&["--echo"]);
    let svg = temp_path("svg");
    let (output, report) = loadtest(&[
        "echo",
        "--url",
        &server.url(),
        "-c",
        "5",
        "-d",
        "500ms",
        "--settle",
        "0s",
        "--message-rate",
        "20/s",
        "--plot",
        svg.to_str().expect("utf-8 temp path"),
    ]);
    assert_ok(&output, &report);
    let text = std::fs::read_to_string(&svg).expect("the plot was written");
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
    assert!(text.contains("echo latency CDF"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["idle", "--url", "https://127.0.0.1:1/"][..],
        &["idle", "--url", "ws://127.0.0.1:1/", "--insecure"],
        &[
            "idle",
            "--url",
            "wss://127.0.0.1:1/",
            "--ca-file",
            "/nonexistent/ca.pem",
        ],
        &["idle", "--url", "ws://127.0.0.1:1/", "--duration", "soon"],
        &["push", "--url", "ws://127.0.0.1:1/"],
        &["bogus"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_pingwheel-loadtest"))
            .args(args)
            .output()
            .expect("the harness runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn help_documents_every_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_pingwheel-loadtest"))
        .arg("--help")
        .output()
        .expect("the harness runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--url",
        "--connections",
        "--duration",
        "--ramp-rate",
        "--server-pid",
        "--json",
        "--plot",
        "--max-lost",
        "--max-p99",
        "--source-addrs",
        "--processes",
        "--expect-ping-interval",
        "--client-ping-interval",
        "--publish-url",
        "--message-size",
        "--churn-rate",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(
        !help.contains("--child-index"),
        "internal flags stay hidden"
    );
}

#[test]
fn baseline_closes_unanswered_pings_with_1011() {
    use std::io::{Read, Write};
    let server = Server::start(&["--ping-interval", "100ms", "--ping-timeout", "100ms"]);
    let mut stream = std::net::TcpStream::connect(&server.listen).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("write the upgrade");
    // Read (and never answer) until the server closes the TCP connection.
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let close = [0x88, 0x0e, 0x03, 0xf3]; // close, 14-byte payload, code 1011
    assert!(
        received.windows(close.len()).any(|w| w == close),
        "no 1011 close in {:?}",
        String::from_utf8_lossy(&received)
    );
}

/// A CA named `ca_name` and a leaf for localhost/127.0.0.1 signed by it (ECDSA P-256),
/// written as PEM files: `(ca, leaf chain, leaf key)`.
fn test_pki(ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        temp_path("ca.pem"),
        temp_path("cert.pem"),
        temp_path("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn every_scenario_runs_over_wss_and_reports_its_handshakes() {
    let (ca, cert, key) = test_pki("loadtest test CA");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = Server::start(&[
        "--echo",
        "--ping-interval",
        "300ms",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    let url = format!("wss://{}/", server.listen);
    let ca = ca.to_str().unwrap();

    // Idle over two processes: every connection pinged through TLS.
    let (output, report) = loadtest(&[
        "idle",
        "--url",
        &url,
        "--ca-file",
        ca,
        "-c",
        "100",
        "-d",
        "1.2s",
        "--settle",
        "100ms",
        "--processes",
        "2",
        "--expect-ping-interval",
        "300ms",
        "--ping-tolerance",
        "1",
        "--max-lost",
        "0",
    ]);
    assert_ok(&output, &report);
    assert_eq!(u64_at(&report, "/connections/established"), 100);
    assert_eq!(u64_at(&report, "/tls/handshakes"), 100);
    assert!(
        u64_at(&report, "/pings/per_connection_min") >= 2,
        "{report:#}"
    );
    assert!(f64_at(&report, "/tls/handshake_ms/p50") > 0.0);
    assert_eq!(report["tls"]["resume"], true);

    // Echo: payloads intact through TLS, also messages larger than one read.
    let (output, report) = loadtest(&[
        "echo",
        "--url",
        &url,
        "--insecure",
        "-c",
        "10",
        "-d",
        "1s",
        "--settle",
        "100ms",
        "--message-size",
        "100KiB",
        "--message-rate",
        "5/s",
        "--max-lost",
        "0",
    ]);
    assert_ok(&output, &report);
    assert!(u64_at(&report, "/echo/received") > 20, "{report:#}");
    assert_eq!(u64_at(&report, "/echo/mismatches"), 0);

    // Churn: reconnects resume with tickets by default, never with --no-tls-resume.
    for resume in [true, false] {
        let mut args = vec![
            "churn",
            "--url",
            &url,
            "--ca-file",
            ca,
            "-c",
            "10",
            "-d",
            "1s",
            "--settle",
            "0s",
            "--churn-rate",
            "60/s",
            "--max-lost",
            "0",
        ];
        if !resume {
            args.push("--no-tls-resume");
        }
        let (output, report) = loadtest(&args);
        assert_ok(&output, &report);
        let (full, resumed) = (
            u64_at(&report, "/tls/full"),
            u64_at(&report, "/tls/resumed"),
        );
        assert!(u64_at(&report, "/churn/completed") >= 30, "{report:#}");
        if resume {
            assert!(resumed > full, "resume on: {full} full, {resumed} resumed");
        } else {
            assert_eq!(resumed, 0, "resume off");
        }
    }

    // Trusting another CA: every attempt fails, by a TLS cause, and the run fails.
    let (other_ca, _, _) = test_pki("another CA");
    let (output, report) = loadtest(&[
        "idle",
        "--url",
        &url,
        "--ca-file",
        other_ca.to_str().unwrap(),
        "-c",
        "5",
        "-d",
        "0.5s",
        "--ramp-timeout",
        "3s",
    ]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(
        u64_at(&report, "/connections/failed_by_cause/tls_unknown_issuer"),
        5
    );
    assert_eq!(
        u64_at(&report, "/tls/failed_by_cause/tls_unknown_issuer"),
        5
    );
}
