//! Listening sockets: one `SO_REUSEPORT` socket per worker.
//!
//! With `SO_REUSEPORT` the kernel spreads incoming connections over every socket bound
//! to the same address (by a hash of the 4-tuple), so each worker accepts its own share
//! and nothing is shared between workers. The same option lets several `pingwheel`
//! processes serve one port.

use std::io;
use std::net::SocketAddr;

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
    fn bind_error_names_the_address() {
        let err = bind_reuseport("192.0.2.1:1".parse().unwrap(), 1, 16).unwrap_err();
        assert!(err.to_string().contains("192.0.2.1:1"), "{err}");
    }
}
