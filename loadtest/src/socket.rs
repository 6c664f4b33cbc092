//! Socket setup for the loop: which source address the next connection binds to, the
//! socket options, the non-blocking connect and how its outcome is read, and the cause
//! label of an OS error. Nothing here reads or writes WebSocket bytes.

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Source addresses handed out round-robin (see [`crate::sources`] for why there are
/// many). Empty: the kernel chooses.
#[derive(Debug, Clone)]
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: usize,
}

impl Sources {
    /// Round-robin over `addrs`, starting at the first.
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Self { addrs, next: 0 }
    }

    /// The address the next connection binds to, or `None` when the kernel chooses.
    pub fn next_addr(&mut self) -> Option<IpAddr> {
        let addr = *self.addrs.get(self.next % self.addrs.len().max(1))?;
        self.next = self.next.wrapping_add(1);
        Some(addr)
    }
}

/// A non-blocking TCP socket with `TCP_NODELAY`, bound to `source` (port chosen at
/// connect time) with its connect to `target` in progress. Whether the connect
/// succeeded is read later with [`connect_outcome`] once the socket is ready.
pub fn open(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// After a readiness event on a socket from [`open`]: `Ok(true)` once connected,
/// `Ok(false)` while the connect is still in progress (a spurious wake-up), the
/// connect's error otherwise.
pub fn connect_outcome(socket: &TcpStream) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// `IP_BIND_ADDRESS_NO_PORT`: `bind` records only the address and the port is chosen
/// at `connect`, per 4-tuple, so one source address serves ~28k connections per
/// destination instead of ~28k in total.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, and `one` outlives the call with the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The cause label for an OS error.
pub fn io_cause(error: &io::Error) -> Cow<'static, str> {
    let label = match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EPIPE) => "broken_pipe",
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => "addr_unavailable",
        Some(libc::EMFILE | libc::ENFILE) => "fd_limit",
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "unreachable",
        Some(libc::ENOBUFS | libc::ENOMEM) => "no_memory",
        Some(errno) => return Cow::Owned(format!("errno_{errno}")),
        None => return Cow::Owned(format!("io_{:?}", error.kind()).to_lowercase()),
    };
    Cow::Borrowed(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_cause_labels() {
        let label = |errno| io_cause(&io::Error::from_raw_os_error(errno)).into_owned();
        assert_eq!(label(libc::ECONNREFUSED), "refused");
        assert_eq!(label(libc::ECONNRESET), "reset");
        assert_eq!(label(libc::EADDRNOTAVAIL), "addr_unavailable");
        assert_eq!(label(libc::EMFILE), "fd_limit");
        assert_eq!(label(libc::EPROTO), format!("errno_{}", libc::EPROTO));
        assert_eq!(io_cause(&io::Error::other("x")), "io_other");
    }

    #[test]
    fn sources_go_round_robin() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mut sources = Sources::new(vec![a, b]);
        let picked: Vec<_> = (0..5).map(|_| sources.next_addr()).collect();
        assert_eq!(picked, [Some(a), Some(b), Some(a), Some(b), Some(a)]);
        assert_eq!(Sources::new(Vec::new()).next_addr(), None, "kernel chooses");
    }

    #[test]
    fn a_refused_connect_is_reported_by_connect_outcome() {
        // A port nobody listens on: bind one, learn it, close it again.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let socket = open(target, Some("127.0.0.1".parse().unwrap())).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let outcome = loop {
            match connect_outcome(&socket) {
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                outcome => break outcome,
            }
        };
        let error = outcome.expect_err("nobody listens");
        assert_eq!(io_cause(&error), "refused");
    }
}
