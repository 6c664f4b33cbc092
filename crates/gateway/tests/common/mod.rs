//! Helpers for tests that run the real `pingwheel` binary over loopback.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running gateway, killed (by PID) when dropped.
pub struct Gateway {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    /// Starts `pingwheel` on free loopback ports with `args`, and waits for its
    /// `ready listen=… admin=…` line (bounded). The gateway sees neither
    /// `PINGWHEEL_TOKEN_SECRET` nor `PINGWHEEL_API_KEY`, whatever the test's environment.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with_env(args, &[])
    }

    /// Like [`Gateway::start`], with `env` (`(name, value)` pairs, e.g.
    /// `PINGWHEEL_TOKEN_SECRET`) set in the gateway's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(args, env, |_| {})
    }

    /// Like [`Gateway::start_with_env`], letting `configure` adjust the command last
    /// (redirect stderr, set resource limits). `--log-level warn` is passed unless
    /// `args` has its own `--log-level`.
    pub fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pingwheel"));
        command
            .env_remove("PINGWHEEL_TOKEN_SECRET")
            .env_remove("PINGWHEEL_API_KEY")
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        if !args.contains(&"--log-level") {
            command.args(["--log-level", "warn"]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().expect("spawn pingwheel");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("pingwheel did not print its ready line within 20 s");
            }
        };
        let mut listen = None;
        let mut admin = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("listen=") {
                listen = Some(v.parse().expect("listen address"));
            } else if let Some(v) = field.strip_prefix("admin=") {
                admin = Some(v.parse().expect("admin address"));
            }
        }
        assert!(line.starts_with("ready "), "unexpected first line: {line}");
        Gateway {
            child,
            listen: listen.expect("listen="),
            admin: admin.expect("admin="),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.listen)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// GET `path` on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The `/metrics` page as `name{labels}` → value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Sum of every sample of `name` whose labels include all of `labels` (`k="v"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(), name, labels)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(within)
    }

    /// Sends `signal` to the gateway.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits (bounded) for the gateway to exit.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pingwheel did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn sum_metric(metrics: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A minimal HTTP/1.1 GET (Connection: close): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A reply from [`http_post`].
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// The response head's header lines, as sent (`Name: value`).
    pub headers: Vec<String>,
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A minimal HTTP/1.1 POST of `body` with extra `headers` (`"Name: value"`), with
/// `Connection: close` and a bounded read.
pub fn http_post(addr: SocketAddr, path: &str, headers: &[&str], body: &str) -> HttpReply {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status code");
    HttpReply {
        status,
        headers: lines.map(str::to_owned).collect(),
        body: body.to_owned(),
    }
}

/// Sends a raw request head and returns the whole response head (up to the blank line).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub mod redis;
