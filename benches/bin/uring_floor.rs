//! The floor of a keepalive round trip on this kernel: what the *server's* side of one
//! Ping/Pong round trip over loopback TCP costs in CPU with the cheapest event loop one
//! can write, with epoll + `send`/`recv` per socket and with io_uring (batched
//! `IORING_OP_SEND`, one multishot receive per socket over a provided-buffer ring), so
//! that the gateway's figure (docs/benchmarks.md, issue 11) can be read against it.
//!
//! `cargo run --release -p pingwheel-benches --bin uring-floor -- [OPTIONS]`
//!
//! * `--conns N` (19,000): loopback TCP pairs; the client ends live in a child process
//!   (this binary re-run with `--client ADDR N`), which answers every 2-byte Ping with a
//!   6-byte Pong at once, as the load harness does (the sizes of WebSocket Ping and
//!   masked Pong frames; there is no WebSocket parsing on either side).
//! * `--interval-ms MS` (4,000): each connection gets a Ping every MS;
//!   `--windows W` (20): the Pings of one interval go out in W batches, as the
//!   gateway's ping slack sends them (`--windows 1`: all at once, as uWebSockets does).
//! * `--seconds S` (20) per phase; `--rounds R` (2): phases alternate epoll, io_uring, …
//! * `--nap-us U` (0): after a turn that found fewer than 1,024 events, sleep up to U µs
//!   before polling again (epoll); with io_uring, wait for all outstanding Pongs or U µs.
//!
//! Reports per phase the server thread's user and system CPU per round trip
//! (`getrusage(RUSAGE_THREAD)`), the whole server process's (`RUSAGE_SELF`: includes
//! io_uring's worker threads, if any), the waits per second and the client process's
//! CPU per round trip (`/proc/PID/stat`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

const PING: [u8; 2] = [0x89, 0x00];
const PONG: [u8; 6] = [0x8a, 0x80, 1, 2, 3, 4];
const EVENTS: usize = 1024;

#[derive(Clone, Copy, Debug)]
struct Opts {
    conns: usize,
    interval: Duration,
    windows: usize,
    seconds: u64,
    rounds: usize,
    nap: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        client(&args[2], args[3].parse().expect("N"));
        return;
    }
    let mut o = Opts {
        conns: 19_000,
        interval: Duration::from_millis(4000),
        windows: 20,
        seconds: 20,
        rounds: 2,
        nap: Duration::ZERO,
    };
    let mut modes = vec!["epoll".to_string(), "uring".to_string()];
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--conns" => o.conns = v.parse().expect("--conns"),
            "--interval-ms" => o.interval = Duration::from_millis(v.parse().expect("ms")),
            "--windows" => o.windows = v.parse().expect("--windows"),
            "--seconds" => o.seconds = v.parse().expect("--seconds"),
            "--rounds" => o.rounds = v.parse().expect("--rounds"),
            "--nap-us" => o.nap = Duration::from_micros(v.parse().expect("µs")),
            "--modes" => modes = v.split(',').map(str::to_string).collect(),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--client", &addr, &o.conns.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("client");
    let mut socks = Vec::with_capacity(o.conns);
    while socks.len() < o.conns {
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        s.set_nonblocking(true).expect("nonblocking");
        socks.push(s);
    }
    let fds: Vec<RawFd> = socks.iter().map(AsRawFd::as_raw_fd).collect();
    eprintln!(
        "{} pairs up; {} ms interval in {} windows, {} s per phase, nap {:?}",
        o.conns,
        o.interval.as_millis(),
        o.windows,
        o.seconds,
        o.nap
    );
    let mut epoll = Epoll::new(&fds);
    println!(
        "| round | loop | nap | round trips | thread µs/rt (user + sys) | process µs/rt | waits/s | client µs/rt |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for round in 1..=o.rounds {
        for mode in &modes {
            let before = Usage::now(child.id());
            let (pongs, waits) = match mode.as_str() {
                "epoll" => epoll.phase(&fds, &o),
                "uring" => uring_phase(&fds, &o),
                other => panic!("unknown mode {other}"),
            };
            let after = Usage::now(child.id());
            let per = |a: f64, b: f64| (b - a) / pongs as f64;
            let wall = after.wall.duration_since(before.wall).as_secs_f64();
            println!(
                "| {round} | {mode} | {} µs | {pongs} | {:.2} ({:.2} + {:.2}) | {:.2} | {:.0} | {:.2} |",
                o.nap.as_micros(),
                per(
                    before.thread_user + before.thread_sys,
                    after.thread_user + after.thread_sys
                ),
                per(before.thread_user, after.thread_user),
                per(before.thread_sys, after.thread_sys),
                per(before.proc_total, after.proc_total),
                waits as f64 / wall,
                per(before.client_total, after.client_total),
            );
        }
    }
    drop(child.stdin.take());
    stop(&mut child);
}

fn stop(child: &mut Child) {
    // SAFETY: signals the child this process started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// CPU seconds so far.
struct Usage {
    wall: Instant,
    thread_user: f64,
    thread_sys: f64,
    proc_total: f64,
    client_total: f64,
}

impl Usage {
    fn now(client: u32) -> Usage {
        let secs = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        let get = |who| {
            // SAFETY: getrusage fills a zeroed struct.
            let mut r: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(who, &raw mut r) };
            (secs(r.ru_utime), secs(r.ru_stime))
        };
        let (tu, ts) = get(libc::RUSAGE_THREAD);
        let (pu, ps) = get(libc::RUSAGE_SELF);
        let stat = std::fs::read_to_string(format!("/proc/{client}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Usage {
            wall: Instant::now(),
            thread_user: tu,
            thread_sys: ts,
            proc_total: pu + ps,
            // utime, stime are fields 14 and 15 (1-based), 11 and 12 after the ')'.
            client_total: (ticks(11) + ticks(12)) / hz * 1e6,
        }
    }
}

/// When window `w` of the phase starts.
fn window_at(start: Instant, o: &Opts, w: usize) -> Instant {
    start + o.interval * (w as u32) / (o.windows as u32)
}

/// The connections of window `w` (its share of every interval).
fn window_range(o: &Opts, w: usize) -> std::ops::Range<usize> {
    let k = w % o.windows;
    k * o.conns / o.windows..(k + 1) * o.conns / o.windows
}

fn windows_in(o: &Opts) -> usize {
    (Duration::from_secs(o.seconds).as_nanos() * o.windows as u128 / o.interval.as_nanos()) as usize
}

fn ms_until(t: Instant) -> i32 {
    let d = t.saturating_duration_since(Instant::now());
    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

// ---- epoll + send/recv ----

struct Epoll {
    fd: RawFd,
    buf: Vec<u8>,
}

impl Epoll {
    fn new(fds: &[RawFd]) -> Epoll {
        // SAFETY: plain syscalls on descriptors this process owns.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
            assert_eq!(rc, 0);
        }
        Epoll {
            fd: ep,
            buf: vec![0; 64 << 10],
        }
    }

    /// One phase: Pings in windows, each Pong read with one `recv`. Returns (Pongs, waits).
    fn phase(&mut self, fds: &[RawFd], o: &Opts) -> (u64, u64) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let total_windows = windows_in(o);
        let start = Instant::now();
        let (mut w, mut outstanding, mut pongs, mut waits) = (0, 0u64, 0u64, 0u64);
        loop {
            while w < total_windows && Instant::now() >= window_at(start, o, w) {
                for i in window_range(o, w) {
                    // SAFETY: sends 2 bytes from a static buffer on our own socket.
                    let n = unsafe { libc::send(fds[i], PING.as_ptr().cast(), 2, 0) };
                    assert_eq!(n, 2, "ping send");
                    outstanding += 1;
                }
                w += 1;
            }
            if w == total_windows && outstanding == 0 {
                return (pongs, waits);
            }
            let timeout = if w < total_windows {
                ms_until(window_at(start, o, w))
            } else {
                1000
            };
            // SAFETY: room for EVENTS events.
            let n =
                unsafe { libc::epoll_wait(self.fd, events.as_mut_ptr(), EVENTS as i32, timeout) };
            waits += 1;
            for ev in &events[..n.max(0) as usize] {
                let fd = fds[ev.u64 as usize];
                // SAFETY: reads into our own buffer.
                let r = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
                if r > 0 {
                    let k = r as u64 / PONG.len() as u64;
                    pongs += k;
                    outstanding -= k;
                }
            }
            if !o.nap.is_zero() && n > 0 && (n as usize) < EVENTS {
                let until = if w < total_windows {
                    window_at(start, o, w).saturating_duration_since(Instant::now())
                } else {
                    o.nap
                };
                std::thread::sleep(o.nap.min(until));
            }
        }
    }
}

// ---- io_uring: batched sends, multishot receive ----

const BUFS: u16 = 32_768;
const BUF_LEN: usize = 64;
const GROUP: u16 = 7;
const RECV: u64 = 1 << 32;

/// A provided-buffer ring: `BUFS` entries of 16 bytes (`io_uring_buf`), page-aligned.
struct BufRing {
    ring: *mut u8,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> BufRing {
        let bytes = BUFS as usize * 16;
        // SAFETY: an anonymous private mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mut b = BufRing {
            ring: p.cast(),
            bufs: vec![0; BUFS as usize * BUF_LEN],
            tail: 0,
        };
        // SAFETY: the mapping lives as long as the ring (both end with the phase).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, BUFS, GROUP, 0)
                .expect("register_buf_ring");
        }
        for bid in 0..BUFS {
            b.give(bid);
        }
        b.publish();
        b
    }

    /// Puts buffer `bid` back (visible to the kernel at the next [`BufRing::publish`]).
    fn give(&mut self, bid: u16) {
        let slot = (self.tail & (BUFS - 1)) as usize;
        // SAFETY: slot < BUFS, inside the mapping; fields of io_uring_buf: addr u64, len u32,
        // bid u16, resv u16 (entry 0's resv is the ring's tail, written in publish).
        unsafe {
            let e = self.ring.add(slot * 16);
            e.cast::<u64>()
                .write((self.bufs.as_ptr() as u64) + bid as u64 * BUF_LEN as u64);
            e.add(8).cast::<u32>().write(BUF_LEN as u32);
            e.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail is the u16 at byte 14 of the ring; release-ordered after the entries.
        unsafe {
            (*self.ring.add(14).cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

fn push(ring: &mut IoUring, e: &squeue::Entry) {
    // SAFETY: every buffer an entry points at (the static Ping, the buffer ring) outlives it.
    while unsafe { ring.submission().push(e) }.is_err() {
        ring.submit().expect("submit");
    }
}

/// One phase on a fresh ring (dropped at the end, which cancels its multishot receives).
fn uring_phase(fds: &[RawFd], o: &Opts) -> (u64, u64) {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(65_536)
        .build(4096)
        .expect("io_uring");
    let mut bufs = BufRing::new(&ring);
    let arm = |i: usize| {
        opcode::RecvMulti::new(types::Fd(fds[i]), GROUP)
            .build()
            .user_data(RECV | i as u64)
    };
    for i in 0..fds.len() {
        push(&mut ring, &arm(i));
    }
    ring.submit().expect("submit");
    let total_windows = windows_in(o);
    let start = Instant::now();
    let (mut w, mut outstanding, mut pongs, mut waits) = (0, 0u64, 0u64, 0u64);
    loop {
        while w < total_windows && Instant::now() >= window_at(start, o, w) {
            for i in window_range(o, w) {
                let send = opcode::Send::new(types::Fd(fds[i]), PING.as_ptr(), 2)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(i as u64);
                push(&mut ring, &send);
                outstanding += 1;
            }
            w += 1;
        }
        if w == total_windows && outstanding == 0 {
            return (pongs, waits);
        }
        let until = if w < total_windows {
            window_at(start, o, w).saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        let (want, wait) = if o.nap.is_zero() {
            (1, until)
        } else {
            (outstanding.max(1) as usize, until.min(o.nap))
        };
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => panic!("submit: {e}"),
        }
        waits += 1;
        let mut rearm = Vec::new();
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data & RECV == 0 {
                panic!("ping send failed: {}", cqe.result());
            }
            let i = (data & 0xffff_ffff) as usize;
            if cqe.result() > 0 {
                let k = cqe.result() as u64 / PONG.len() as u64;
                pongs += k;
                outstanding -= k;
            }
            if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                bufs.give(bid);
            }
            if !cqueue::more(cqe.flags()) {
                rearm.push(i);
            }
        }
        bufs.publish();
        for i in rearm {
            push(&mut ring, &arm(i));
        }
    }
}

// ---- the client: answers every Ping with a Pong at once ----

fn client(addr: &str, n: usize) {
    // SAFETY: the client dies with its parent.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_nonblocking(true).expect("nonblocking");
        socks.push(s);
    }
    // SAFETY: plain syscalls on descriptors this process owns.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &raw mut ev) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    loop {
        // SAFETY: room for EVENTS events.
        let k = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS as i32, -1) };
        for ev in &events[..k.max(0) as usize] {
            let s = &mut socks[ev.u64 as usize];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(r) => {
                        out.clear();
                        for _ in 0..r / PING.len() {
                            out.extend_from_slice(&PONG);
                        }
                        s.write_all(&out).expect("pong");
                        if r < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }
}
