//! A private file-descriptor table per worker thread (Linux only).
//!
//! # Why
//!
//! Every socket syscall first looks its descriptor up in the calling thread's table
//! (`fdget`). While several threads share one table, the kernel must take and drop a
//! reference on the file around each call, atomics on a cache line the other threads'
//! calls touch as well; a table with a single user takes the lock-free path. Before
//! this, 4.5 % of the gateway's CPU in a 4 s-ping hold was `fdget` under the Ping's
//! `sendto` and the Pong's `recvfrom` (docs/benchmarks.md). So the first thing a worker
//! thread does is `unshare(CLONE_FILES)` ([`make_private`]): it gets a private copy of
//! the process's table (same numbers, same open files) and everything it opens from then
//! on, every client socket, exists in its table only.
//!
//! # Invariants, and where they are kept
//!
//! * **The worker uses only its own descriptors.** Its epoll instance, its waker's
//!   eventfd and its listener are created by the spawning thread (`worker::spawn`) and
//!   used through the copies; every socket it accepts is created in its table. Nothing
//!   passes a descriptor between a worker and any other thread.
//! * **What other threads' code does on a worker thread uses descriptors that existed
//!   before the workers.** A worker's engine request wakes the engine's task on the
//!   admin runtime, or with `--engine redis` on the broker's (`tokio::sync::Notify`),
//!   and that wake-up may write to the runtime's I/O-driver eventfd from the worker's
//!   thread; so `server::run` builds both runtimes (`admin::runtime`,
//!   `engine::redis::broker::spawn_runtime`) before the first worker starts, and the
//!   number names the same eventfd in every copy. A descriptor the main table opens later does not
//!   exist in a worker's copy: there its number fails with `EBADF` or, worse, names one
//!   of the worker's client sockets.
//! * **The spawning thread closes its copies of the worker's epoll and listener** once
//!   the worker reports a private table, so that dropping the listener at drain really
//!   closes the socket (a copy left elsewhere would keep it in the `SO_REUSEPORT` group,
//!   taking connections nobody accepts). It keeps the eventfd: other threads wake the
//!   worker by writing to it.
//! * **Other workers' listeners are closed in the copy**, for the same reason: all
//!   listeners are bound before the first worker starts, so the first workers' copies
//!   hold the later ones ([`make_private`]'s `foreign`).
//! * **Worker threads block asynchronous signals.** A process-directed signal runs its
//!   handler on any thread that does not block it, and handlers write to descriptors
//!   of the shared table (signal-hook's self-pipe): on a worker thread with a private
//!   table such a number could name a client socket. Faults (SIGSEGV, SIGBUS, SIGFPE,
//!   SIGILL, SIGTRAP, SIGSYS) stay unblocked.
//!
//! # What it means for operators
//!
//! The open-files limit (`RLIMIT_NOFILE`) bounds descriptor numbers **per table**: each
//! worker may hold up to the limit itself, so a process with N workers can hold about
//! N × the limit client connections (the main table keeps only the listeners, admin
//! sockets and the like). `/proc/PID/fd` lists the main table; a worker's sockets are in
//! `/proc/PID/task/TID/fd`. If `unshare` fails (a seccomp filter, or not Linux) the
//! worker logs it and runs on the shared table, as before.

use std::io;
use std::os::fd::RawFd;

/// Which table a worker thread ended up with.
#[derive(Debug)]
pub enum FdTable {
    /// Its own: `unshare(CLONE_FILES)` succeeded.
    Private,
    /// The process's, shared with every other thread, and why.
    Shared(io::Error),
}

/// Gives the calling thread a private copy of the descriptor table, closes `foreign`
/// (descriptors of other workers, still open in the spawning thread) in that copy, and
/// blocks asynchronous signals on the thread. See the module docs.
///
/// Call it first thing on a worker thread, before it opens any descriptor. On
/// [`FdTable::Shared`] nothing was closed (the descriptors are the other threads' too).
pub fn make_private(foreign: &[RawFd]) -> FdTable {
    block_async_signals();
    match unshare_files() {
        Ok(()) => {
            for &fd in foreign {
                // SAFETY: `fd` names a descriptor in this thread's private copy of the
                // table; closing it there leaves the spawning thread's entry untouched.
                unsafe { libc::close(fd) };
            }
            FdTable::Private
        }
        Err(e) => FdTable::Shared(e),
    }
}

#[cfg(target_os = "linux")]
fn unshare_files() -> io::Result<()> {
    // SAFETY: unshare(2) with CLONE_FILES only copies the calling thread's table.
    if unsafe { libc::unshare(libc::CLONE_FILES) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn unshare_files() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "private descriptor tables need Linux",
    ))
}

/// Blocks every signal but the synchronous faults on the calling thread, so
/// process-directed signals are handled on other threads.
fn block_async_signals() {
    // SAFETY: the sigset is initialised by sigfillset before use, and pthread_sigmask
    // only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::*;

    /// The inode behind `fd` in the calling thread's table, if it is open.
    fn inode(fd: RawFd) -> Option<u64> {
        // SAFETY: fstat writes into a zeroed stat buffer we own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstat(fd, &mut st) == 0).then_some(st.st_ino)
        }
    }

    #[test]
    fn sockets_opened_after_the_unshare_exist_only_in_the_private_table() {
        let (fd, ino) = std::thread::spawn(|| {
            assert!(matches!(make_private(&[]), FdTable::Private));
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let fd = sock.as_raw_fd();
            let ino = inode(fd).unwrap();
            std::mem::forget(sock); // lives as long as the thread's table
            (fd, ino)
        })
        .join()
        .unwrap();
        // The number may be taken here by something else (tests run in parallel), but
        // never by that socket.
        assert_ne!(inode(fd), Some(ino));
    }

    #[test]
    fn foreign_descriptors_close_in_the_copy_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let ino = inode(fd).unwrap();
        let seen_in_worker = std::thread::spawn(move || {
            assert!(matches!(make_private(&[fd]), FdTable::Private));
            inode(fd)
        })
        .join()
        .unwrap();
        assert_eq!(seen_in_worker, None, "closed in the worker's copy");
        assert_eq!(inode(fd), Some(ino), "still open here");
    }

    #[test]
    fn worker_threads_block_termination_signals_but_not_faults() {
        let (term, segv) = std::thread::spawn(|| {
            make_private(&[]);
            // SAFETY: reads the calling thread's mask into a zeroed set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                (
                    libc::sigismember(&set, libc::SIGTERM),
                    libc::sigismember(&set, libc::SIGSEGV),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!((term, segv), (1, 0));
    }
}
