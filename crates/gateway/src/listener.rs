//! Listening sockets: one `SO_REUSEPORT` socket per worker.
//!
//! With `SO_REUSEPORT` the kernel spreads incoming connections over every socket bound
//! to the same address (by a hash of the 4-tuple), so each worker accepts its own share
//! and nothing is shared between workers. The same option lets several `pingwheel`
//! processes serve one port.
//!
//! When `accept` fails for lack of resources (the open-files limit, most often), the
//! caller pauses accepting for a moment and retries; [`AcceptPauses`] turns the retries
//! of one such episode into one log line at its start and one with the count at its end.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` non-blocking listeners to `addr` with `SO_REUSEPORT`.
///
/// If `addr` has port 0, the first socket picks a free port and the others bind to
/// that same port; the returned address is the one actually bound.
///
/// # Errors
/// Socket creation or bind/listen failures, with the address in the message.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = bind_one(bound, backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {bound}: {e}")))?;
        bound = socket.local_addr()?;
        listeners.push(socket);
    }
    Ok((bound, listeners))
}

/// Whether an `accept` error means the process or the system ran out of resources
/// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): the listener is fine, accepting again at
/// once would fail the same way, so the caller pauses instead of spinning.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// One listener's episodes of accept pauses: from the first `accept` that failed for
/// lack of resources until accepting works again (the workers: until the backlog is
/// empty, since at the limit every closing connection lets one accept through between
/// failures; the admin listener: until an accept succeeds). A
/// process at its open-files limit retries every pause (100 ms), which is ten log lines
/// a second per listener without this; with it, the caller logs once when an episode
/// starts ([`AcceptPauses::paused`] returns `true`) and once, with the count, when it
/// ends ([`AcceptPauses::resumed`]). Pure bookkeeping: `now` is passed in.
#[derive(Debug, Default)]
pub struct AcceptPauses {
    /// When the current episode began; `None` while accepting works.
    since: Option<Instant>,
    /// Pauses in the current episode.
    count: u64,
}

impl AcceptPauses {
    /// Records one pause at `now`; `true` when it starts a new episode.
    pub fn paused(&mut self, now: Instant) -> bool {
        self.count += 1;
        if self.since.is_none() {
            self.since = Some(now);
            return true;
        }
        false
    }

    /// Accepting works again at `now`: ends the episode, if one was running, returning
    /// its number of pauses and how long it lasted.
    pub fn resumed(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let since = self.since.take()?;
        let count = std::mem::take(&mut self.count);
        Some((count, now.saturating_duration_since(since)))
    }
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_every_listener_to_one_port() {
        let (addr, ls) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }

    #[test]
    fn accept_pauses_make_one_episode_until_accepting_works() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut pauses = AcceptPauses::default();
        assert_eq!(pauses.resumed(t0), None, "no episode, nothing to report");
        assert!(pauses.paused(t0), "the first pause starts an episode");
        for n in 1..=9 {
            assert!(
                !pauses.paused(ms(100 * n)),
                "later pauses are the same episode"
            );
        }
        assert_eq!(pauses.resumed(ms(1000)), Some((10, Duration::from_secs(1))));
        assert_eq!(pauses.resumed(ms(1100)), None);
        assert!(pauses.paused(ms(5000)), "a new episode");
        assert_eq!(pauses.resumed(ms(5000)), Some((1, Duration::ZERO)));
    }

    #[test]
    fn resource_exhaustion_errors() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        assert!(!is_resource_exhaustion(&io::ErrorKind::WouldBlock.into()));
    }

    #[test]
    fn bind_error_names_the_address() {
        let err = bind_reuseport("192.0.2.1:1".parse().unwrap(), 1, 16).unwrap_err();
        assert!(err.to_string().contains("192.0.2.1:1"), "{err}");
    }
}
