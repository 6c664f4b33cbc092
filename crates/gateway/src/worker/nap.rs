//! Wake-up coalescing while Pongs trickle back: the worker's waker, and the short nap
//! between two turns that hears only that waker.
//!
//! # Why
//!
//! The Pongs to a batch of Pings come back over a few milliseconds, as the clients
//! answer. A worker that goes straight back to `epoll_wait` after each turn is woken
//! for every few of them (1,000–1,700 wake-ups a second per worker at 4 s pings with
//! 19,000 connections, docs/benchmarks.md), and each wake-up costs the sender's
//! `sendto` a cross-CPU wake and the worker a context switch. So after a turn that did
//! nothing but keepalive (Pings sent, Pongs read) the worker naps for at most [`NAP`]
//! before polling its sockets again, and finds the Pongs that arrived meanwhile in one
//! `epoll_wait`.
//!
//! # Invariants
//!
//! * **Commands are never delayed.** The nap waits on an epoll instance of its own that
//!   holds only the waker's eventfd, so a delivery, an engine answer or a shutdown
//!   ends the nap at once. The same eventfd is registered (edge-triggered) in the
//!   worker's `mio::Poll` under `WAKER`; every write raises an edge in both instances,
//!   so the `poll` after the nap reports it. An edge raised while the worker was not
//!   napping stays in the nap instance and ends the next nap early: harmless.
//! * **Deadlines are never passed.** A nap is never longer than the time to the
//!   worker's next deadline (the caller's poll timeout), and is skipped when that is
//!   shorter than [`NAP`] or zero (accepts or reads pending).
//! * **Client input other than Pongs is not delayed**: a turn in which any connection
//!   did anything but keepalive (a message, an upgrade, a close) is not followed by a nap.
//!   A Pong read after a nap is timestamped up to [`NAP`] late, which the RTT histogram
//!   shows (docs/metrics.md).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The longest nap between two turns. The poll's own timeout is in milliseconds, so is
/// this.
pub const NAP: Duration = Duration::from_millis(1);

/// A worker's waker: an eventfd the other threads write to. Registered in the worker's
/// `mio::Poll` (as `WAKER`) and in its [`Nap`].
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    /// A new non-blocking eventfd.
    ///
    /// # Errors
    /// `eventfd` failed (out of descriptors).
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the worker: one 8-byte write (as `mio::Waker` does on Linux; when the
    /// counter is full, it is drained and written again).
    ///
    /// # Errors
    /// The write failed for another reason than a full counter.
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live u64 to our own descriptor.
            let n = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    let mut count: u64 = 0;
                    // SAFETY: reads 8 bytes into a live u64 from our own descriptor.
                    unsafe { libc::read(self.0.as_raw_fd(), (&raw mut count).cast(), 8) };
                }
                _ => return Err(e),
            }
        }
    }
}

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance holding only the worker's waker: where the worker naps.
#[derive(Debug)]
pub struct Nap {
    epoll: OwnedFd,
}

impl Nap {
    /// A nap instance woken by `waker` (edge-triggered). Call on the worker's thread, after
    /// its descriptor table went private, so that the instance exists in that table only.
    ///
    /// # Errors
    /// `epoll_create1` or `epoll_ctl` failed.
    pub fn new(waker: &WakeFd) -> io::Result<Nap> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `event` is a live epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                waker.as_raw_fd(),
                &raw mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Nap { epoll })
    }

    /// Sleeps for `d` (whole milliseconds, at least one) or until the waker fires.
    pub fn nap(&self, d: Duration) {
        let ms = i32::try_from(d.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event; EINTR and the like just end the nap early.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &raw mut event, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_nap_lasts_its_time_without_a_wake() {
        let waker = WakeFd::new().unwrap();
        let nap = Nap::new(&waker).unwrap();
        let start = Instant::now();
        nap.nap(Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_wake_ends_the_nap_at_once() {
        let waker = WakeFd::new().unwrap();
        let nap = Nap::new(&waker).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                waker.wake().unwrap();
            });
            let start = Instant::now();
            nap.nap(Duration::from_secs(30));
            assert!(start.elapsed() < Duration::from_secs(10));
        });
    }

    #[test]
    fn a_wake_before_the_nap_ends_it_early_once() {
        let waker = WakeFd::new().unwrap();
        let nap = Nap::new(&waker).unwrap();
        waker.wake().unwrap();
        let start = Instant::now();
        nap.nap(Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(10));
        // The edge was consumed: the next nap sleeps its time.
        let start = Instant::now();
        nap.nap(Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
