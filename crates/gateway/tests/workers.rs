//! Workers and their descriptor tables, on the real binary: each worker has its own
//! (Linux), so the open-files limit applies per worker, and a drained listener is
//! really closed.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use common::{Gateway, wait_until};

/// With a private descriptor table per worker, each worker may hold up to the
/// open-files limit by itself: two workers hold more connections than one process
/// could with a shared table.
#[cfg(target_os = "linux")]
#[test]
fn each_worker_has_its_own_open_files_limit() {
    const LIMIT: u64 = 256;
    const CONNECTIONS: usize = 360; // > LIMIT; ~180 per worker, each under ~230 free
    let gw =
        Gateway::start_with_open_files_limit(&["--workers", "2", "--open-timeout", "60s"], LIMIT);
    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(gw.listen).expect("connect"))
        .collect();
    let all_accepted = wait_until(Duration::from_secs(20), || {
        gw.metric("pingwheel_connections", &[]) == CONNECTIONS as f64
    });
    let per_worker: Vec<f64> = (0..2)
        .map(|w| gw.metric("pingwheel_connections", &[&format!("worker=\"{w}\"")]))
        .collect();
    assert!(
        all_accepted,
        "{CONNECTIONS} connections under an open-files limit of {LIMIT}: per worker {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0.0 && n < LIMIT as f64),
        "both workers took a share: {per_worker:?}"
    );
    drop(clients);
}

/// Once draining, the gateway refuses new connections: every worker's listener is
/// closed, none kept open by a copy in another descriptor table.
#[test]
fn a_draining_gateway_refuses_new_connections() {
    let mut gw = Gateway::start(&["--workers", "2", "--drain-timeout", "5s"]);
    // A client that never answers the Close keeps the drain going for its 5 s.
    let mut ws = tungstenite::connect(gw.ws_url()).expect("upgrade").0;
    let listen = gw.listen;
    gw.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || {
            (0..20).all(|_| {
                matches!(
                    TcpStream::connect(listen),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused
                )
            })
        }),
        "new connections are still accepted while draining"
    );
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "still draining, not exited"
    );
    let _ = ws.close(None);
    let _ = ws.flush();
    assert!(gw.wait(Duration::from_secs(10)).success());
}
