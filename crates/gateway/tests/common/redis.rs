//! A real `redis-server` for tests: started on a free loopback port in a temporary
//! directory, with no persistence unless asked, killed (by PID) when dropped.
//!
//! The binary is `$REDIS_SERVER_BIN` or `redis-server` on `PATH`
//! (`scripts/test` installs Debian's); a missing binary fails the test, never skips it.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    persistent: bool,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// A fresh server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), None, false)
    }

    /// A server that keeps its data across [`RedisServer::restart`] (AOF, fsync always).
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_on(free_port(), None, true)
    }

    fn start_on(port: u16, dir: Option<PathBuf>, persistent: bool) -> RedisServer {
        let dir = dir.unwrap_or_else(|| {
            let dir = std::env::temp_dir().join(format!(
                "pingwheel-redis-{}-{port}-{}",
                std::process::id(),
                fastrand::u32(..)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            dir
        });
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&dir)
            .args(["--loglevel", "warning", "--daemonize", "no"]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (install redis-server)", binary()));
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            child: Some(child),
            port,
            dir,
            persistent,
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILLs the server (its data is gone unless persistent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the server (SIGSTOP/SIGCONT for a hung broker).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: plain syscall on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let again = RedisServer::start_on(self.port, Some(self.dir.clone()), self.persistent);
        let mut again = std::mem::ManuallyDrop::new(again);
        self.child = again.child.take();
    }

    /// Runs `redis-cli` against the server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
