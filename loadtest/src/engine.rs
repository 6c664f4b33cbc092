//! The load generator's event loop: one `mio::Poll`, every client in a `Slab` next to
//! its socket, every client deadline in one binary heap. This is the only code in the
//! harness that touches client sockets: it opens them ([`crate::socket`]), reads them
//! into one shared buffer, hands the bytes to the client state machine
//! ([`crate::client::Client`]) and writes what the client queued in the loop's one
//! [`Outbox`]. It knows no scenario: it opens connections at the ramp rate (and during
//! the hold at [`EngineConfig::hold_open_rate`]), feeds the clients, files their
//! deadlines, writes their output and ends them when they say so.
//!
//! # Memory per connection
//!
//! A connection is a `Slot` of under 200 bytes (socket, generation, armed deadline,
//! unsent output, the TLS box of a `wss://` connection, the `Client`) plus the kernel's socket. Reads go into the engine's
//! shared buffer and output into its shared outbox; a connection keeps heap bytes
//! only for a partial frame, a fragmented message or output the socket refused, and
//! frees them as soon as they are complete. Nothing per connection is kept in
//! histograms: every sample goes straight into the engine's shared ones.
//!
//! # Deadlines
//!
//! A connection has one armed deadline, `Slot::armed_ns`: its client's
//! [`Client::poll_timeout`]. Re-arming pushes a new heap entry and leaves the old one
//! behind; a popped entry whose time is not the slot's current `armed_ns` (or whose
//! slot now holds a newer generation) is stale and skipped. So the heap never needs a
//! removal.
//!
//! # TLS (`wss://`)
//!
//! With a TLS target a slot also holds a [`TlsConn`] (boxed, created when the TCP
//! connect completes). The client stays `Connecting` until the TLS handshake is done
//! (its connect deadline covers TCP and TLS; a handshake still running when it passes
//! fails as `tls_handshake_timeout`), then gets [`Client::handle_connected`] as on a
//! plain socket. Ciphertext is read into the shared read buffer and decrypted into a
//! second shared buffer, `plain`; what the client queues is encrypted into a shared
//! `cipher` buffer and written from there, so the backlog holds ciphertext. The
//! handshake's duration (TCP connected → TLS done) and whether it resumed go into the
//! report's `tls` counters.
//!
//! # Writes
//!
//! After every client call the loop writes the outbox straight to the socket (one
//! `send` per ping round trip); what the socket refuses waits in the slot's backlog for
//! the next writable event. A backlog that would pass 4 MiB fails the connection
//! (`write_backlog`).
//!
//! # Phases
//!
//! `Ramping` (open `connections` at `ramp_rate`) → `Ramped` (reported to the
//! coordinator, waiting) → `Holding` (after [`Command::Hold`]: scenario traffic runs,
//! pings are counted for the hold) → finished (after [`Command::Finish`]: the report is
//! built, then every connection is closed).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use slab::Slab;

use crate::client::{Client, End, Now, Outbox, Shared};
use crate::counters::ProcessReport;
use crate::pace::{NEVER, due_count, duration_ns, rate_due_ns};
use crate::procfs::{self, Pid};
use crate::settings::EngineConfig;
use crate::socket::{self, Sources, io_cause};
use crate::tls::{TlsConn, TlsTarget};

const _: () = assert!(usize::BITS == 64, "ConnId packs two u32s into a Token");

/// The token of the waker that announces commands.
const WAKER: Token = Token(usize::MAX);
/// Size of the shared read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Unsent output one connection may accumulate before it is failed (`write_backlog`).
const MAX_BACKLOG: usize = 4 << 20;
/// Most connections opened in one loop iteration, so a ramp never starves the loop.
///
/// A `connect` to loopback runs the whole TCP handshake on the calling thread, so a
/// batch is a stretch in which no reply is read. At 512 a batch kept the loop from its
/// sockets long enough that an "at once" recovery storm measured the harness: subscribe
/// → last recovered p99 209–219 ms (op form), connect p99 352–372 ms; at 64 the same
/// storm, at the same achieved ramp (~16,000/s), measured 24–27 ms and 29–31 ms
/// (docs/benchmarks.md, "History and recovery"). Smaller batches cost no ramp rate:
/// the loop comes straight back while connections are due.
const OPEN_BATCH: u64 = 64;

/// A slab index plus the generation of the connection that owned it when the token was
/// handed to mio, so an event for a dead connection never reaches a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.index as usize)
    }

    fn from_token(token: Token) -> Self {
        Self {
            index: token.0 as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

/// Instructions from the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Start the hold phase.
    Hold,
    /// End the run: build the report and close everything.
    Finish,
}

/// Live counters, sent every `progress_every`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Connection attempts started.
    pub opened: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Connections open right now.
    pub open: u64,
    /// Attempts failed.
    pub failed: u64,
    /// Established connections lost.
    pub lost: u64,
    /// Server pings received.
    pub pings: u64,
    /// Push deliveries received.
    pub deliveries: u64,
    /// Echoes received.
    pub echoes: u64,
    /// Churn cycles completed.
    pub cycles: u64,
}

impl Progress {
    /// Adds another engine's counters.
    pub fn add(&mut self, other: &Self) {
        self.opened += other.opened;
        self.established += other.established;
        self.open += other.open;
        self.failed += other.failed;
        self.lost += other.lost;
        self.pings += other.pings;
        self.deliveries += other.deliveries;
        self.echoes += other.echoes;
        self.cycles += other.cycles;
    }
}

/// What an engine tells the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineEvent {
    /// Periodic counters.
    Progress(Progress),
    /// Every connection of the ramp is established (and subscribed) or failed.
    Ramped(Progress),
    /// The final report; the engine has stopped.
    Finished(Box<ProcessReport>),
}

/// One connection: the socket and the loop's bookkeeping around its client.
#[derive(Debug)]
struct Slot {
    socket: TcpStream,
    generation: u32,
    /// The deadline in the heap that is current for this slot ([`NEVER`]: none).
    armed_ns: u64,
    /// Output the socket did not take yet; empty (unallocated) otherwise.
    backlog: Vec<u8>,
    /// The TLS layer of a `wss://` connection, once its TCP connect completed.
    tls: Option<Box<TlsConn>>,
    client: Client,
}

/// The loop's shared byte buffers.
#[derive(Debug)]
struct Buffers {
    /// What a read from a socket lands in.
    read: Box<[u8]>,
    /// Decrypted bytes on their way to a client (TLS only; empty otherwise).
    plain: Box<[u8]>,
    /// Encrypted bytes on their way to a socket (TLS only); cleared after each use.
    cipher: Vec<u8>,
}

/// Engine phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ramping,
    Ramped,
    Holding,
}

/// Unix time in nanoseconds.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ns)
}

/// One load-generating event loop. Create with [`Engine::new`], drive with
/// [`Engine::run`].
#[derive(Debug)]
pub struct Engine {
    poll: Poll,
    slots: Slab<Slot>,
    /// `(deadline ns, token)`; may hold stale entries (see the module docs).
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    bufs: Buffers,
    /// TLS for a `wss://` target.
    tls: Option<TlsTarget>,
    out: Outbox,
    commands: Receiver<Command>,
    shared: Shared,
    sources: Sources,
    epoch: Instant,
    now: Now,
    phase: Phase,
    generation: u32,
    /// Hold-phase opens that came due so far (including skipped ones, for pacing).
    hold_opens_due: u64,
    next_progress_ns: u64,
}

impl Engine {
    /// Creates the engine and the waker the coordinator must wake after sending a
    /// command on the channel whose receiver is `commands`.
    pub fn new(
        config: EngineConfig,
        commands: Receiver<Command>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let capacity = usize::try_from(config.connections)
            .unwrap_or(usize::MAX)
            .min(1 << 22);
        let mut rng = fastrand::Rng::new();
        let out = Outbox::new(rng.fork());
        let sources = Sources::new(config.sources.clone());
        let engine = Self {
            poll,
            slots: Slab::with_capacity(capacity),
            timers: BinaryHeap::new(),
            bufs: Buffers {
                read: vec![0; READ_BUFFER].into_boxed_slice(),
                plain: vec![0; if config.tls.is_some() { READ_BUFFER } else { 0 }]
                    .into_boxed_slice(),
                cipher: Vec::new(),
            },
            tls: config.tls.clone(),
            out,
            commands,
            shared: Shared::new(config, rng),
            sources,
            epoch: Instant::now(),
            now: Now {
                ns: 0,
                unix_ns: unix_now_ns(),
            },
            phase: Phase::Ramping,
            generation: 0,
            hold_opens_due: 0,
            next_progress_ns: 0,
        };
        Ok((engine, waker))
    }

    /// Runs the scenario until [`Command::Finish`], a closed command channel or the hard
    /// deadline, emitting events as it goes; the last event is always
    /// [`EngineEvent::Finished`].
    pub fn run(mut self, emit: &mut dyn FnMut(EngineEvent)) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if let Ok(sample) = procfs::sample(Pid::Current) {
            self.shared.report.rss_start = sample.rss_bytes;
        }
        self.tick();
        let hard_deadline_ns = duration_ns(self.shared.config.hard_deadline);
        if self.shared.config.hold_open_rate().is_some() {
            // Connections open only during the hold: there is no ramp to wait for.
            self.phase = Phase::Ramped;
            emit(EngineEvent::Ramped(self.progress()));
        }
        while !self.shared.finishing && self.now.ns < hard_deadline_ns {
            let wake_ns = self.next_wakeup().min(hard_deadline_ns);
            let timeout = Duration::from_nanos(wake_ns.saturating_sub(self.now.ns));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.tick();
            for event in events.iter() {
                if event.token() == WAKER {
                    self.take_commands();
                } else {
                    let readable =
                        event.is_readable() || event.is_read_closed() || event.is_error();
                    self.on_socket_event(event.token(), readable, event.is_writable());
                }
            }
            self.fire_timers();
            self.open_due();
            if self.phase == Phase::Ramping
                && self.shared.report.opened >= self.shared.config.connections
                && self.shared.pending() == 0
            {
                self.phase = Phase::Ramped;
                self.shared.report.ramp_seconds = self.now.ns as f64 / 1e9;
                emit(EngineEvent::Ramped(self.progress()));
            }
            if self.now.ns >= self.next_progress_ns {
                self.next_progress_ns =
                    self.now.ns + duration_ns(self.shared.config.progress_every);
                emit(EngineEvent::Progress(self.progress()));
            }
        }
        let report = self.finish();
        emit(EngineEvent::Finished(Box::new(report)));
        // The sockets close only now, after the report is out: closing ~20,000 of them
        // (a FIN each, and the server's work in answering) takes seconds on a loaded
        // machine, and the coordinator waits a bounded time for reports.
        drop(self);
        Ok(())
    }

    fn tick(&mut self) {
        self.now = Now {
            ns: duration_ns(self.epoch.elapsed()),
            unix_ns: unix_now_ns(),
        };
    }

    fn progress(&self) -> Progress {
        let r = &self.shared.report;
        Progress {
            opened: r.opened,
            established: r.established,
            open: self.shared.open(),
            failed: r.failed(),
            lost: r.lost(),
            pings: r.pings.received,
            deliveries: r.push.as_ref().map_or(0, |p| p.delivered),
            echoes: r.echo.as_ref().map_or(0, |e| e.received),
            cycles: r.churn.as_ref().map_or(0, |c| c.completed),
        }
    }

    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Hold) => self.start_hold(),
                Ok(Command::Finish) | Err(TryRecvError::Disconnected) => {
                    self.shared.finishing = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// The earliest moment the loop has work without socket events.
    fn next_wakeup(&self) -> u64 {
        let config = &self.shared.config;
        let mut wake = self.next_progress_ns;
        if let Some(Reverse((deadline, _))) = self.timers.peek() {
            wake = wake.min(*deadline);
        }
        if self.phase == Phase::Ramping && self.shared.report.opened < config.connections {
            wake = wake.min(rate_due_ns(0, config.ramp_rate, self.shared.report.opened));
        }
        if let (Phase::Holding, Some(rate)) = (self.phase, config.hold_open_rate()) {
            let start = self.shared.hold_start_ns();
            wake = wake.min(rate_due_ns(start, rate, self.hold_opens_due));
        }
        wake
    }

    fn start_hold(&mut self) {
        if self.phase == Phase::Holding {
            return;
        }
        self.phase = Phase::Holding;
        self.shared.start_hold(self.now);
        if let Ok(sample) = procfs::sample(Pid::Current) {
            self.shared.report.rss_hold = sample.rss_bytes;
            self.shared.report.cpu_hold_start = sample.cpu_seconds;
        }
        for (key, slot) in self.slots.iter_mut() {
            slot.client.handle_hold(self.now, &mut self.shared);
            rearm(&mut self.timers, key, slot);
        }
    }

    /// Opens the connections the ramp (or hold) rate allows by now.
    fn open_due(&mut self) {
        let now = self.now.ns;
        let config = &self.shared.config;
        match (self.phase, config.hold_open_rate()) {
            (Phase::Ramping, _) => {
                let due = due_count(0, config.ramp_rate, now).min(config.connections);
                let mut opened_now = 0;
                while self.shared.report.opened < due && opened_now < OPEN_BATCH {
                    self.start_connection();
                    opened_now += 1;
                }
            }
            (Phase::Holding, Some(rate)) => {
                let due = due_count(self.shared.hold_start_ns(), rate, now);
                let mut opened_now = 0;
                while self.hold_opens_due < due && opened_now < OPEN_BATCH {
                    self.hold_opens_due += 1;
                    if (self.slots.len() as u64) < self.shared.config.connections {
                        self.start_connection();
                        opened_now += 1;
                    } else {
                        self.shared.attempt_skipped();
                    }
                }
            }
            _ => {}
        }
    }

    fn start_connection(&mut self) {
        let shared = &mut self.shared;
        let local_index = shared.start_attempt();
        let source = self.sources.next_addr();
        let mut socket = match socket::open(shared.config.target, source) {
            Ok(socket) => socket,
            Err(e) => return shared.attempt_failed(io_cause(&e)),
        };
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let Ok(index) = u32::try_from(key) else {
            return shared.attempt_failed(Cow::Borrowed("too_many_connections"));
        };
        self.generation = self.generation.wrapping_add(1);
        let id = ConnId {
            index,
            generation: self.generation,
        };
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return shared.attempt_failed(io_cause(&e));
        }
        let slot = entry.insert(Slot {
            socket,
            generation: self.generation,
            armed_ns: NEVER,
            backlog: Vec::new(),
            tls: None,
            client: Client::new(local_index, self.now, shared),
        });
        rearm(&mut self.timers, key, slot);
    }

    fn on_socket_event(&mut self, token: Token, readable: bool, writable: bool) {
        let id = ConnId::from_token(token);
        let key = id.index as usize;
        let slot = match self.slots.get_mut(key) {
            Some(slot) if slot.generation == id.generation => slot,
            // A stale event for a connection that is gone: ignore it.
            _ => return,
        };
        let (now, shared, out) = (self.now, &mut self.shared, &mut self.out);
        let io = Io {
            now,
            cx: shared,
            out,
            bufs: &mut self.bufs,
            tls: self.tls.as_ref(),
        };
        match drive(slot, io, readable, writable) {
            Ok(()) => rearm(&mut self.timers, key, slot),
            Err(end) => self.close(key, end),
        }
    }

    fn fire_timers(&mut self) {
        while let Some(&Reverse((deadline, token))) = self.timers.peek() {
            if deadline > self.now.ns {
                break;
            }
            self.timers.pop();
            let id = ConnId::from_token(Token(token));
            let key = id.index as usize;
            let slot = match self.slots.get_mut(key) {
                Some(slot) if slot.generation == id.generation && slot.armed_ns == deadline => slot,
                _ => continue,
            };
            slot.armed_ns = NEVER;
            let mut result = slot
                .client
                .handle_timeout(self.now, &mut self.shared, &mut self.out);
            if slot.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
                && result == Err(End::fault("timeout"))
            {
                result = Err(End::fault("tls_handshake_timeout"));
            }
            match send(slot, &mut self.out, &mut self.bufs.cipher, result) {
                Ok(()) => rearm(&mut self.timers, key, slot),
                Err(end) => self.close(key, end),
            }
        }
    }

    /// Removes a connection; its client accounts for how it ended.
    fn close(&mut self, key: usize, end: End) {
        let slot = self.slots.remove(key);
        slot.client.end(self.now, end, &mut self.shared);
        // Dropping the socket closes it and removes it from the poll.
    }

    /// Builds the report, then closes every connection (a best-effort close frame each).
    fn finish(&mut self) -> ProcessReport {
        self.tick();
        if let Ok(sample) = procfs::sample(Pid::Current) {
            self.shared.report.rss_end = sample.rss_bytes;
            self.shared.report.cpu_end = sample.cpu_seconds;
        }
        let mut not_established = 0;
        for (_, slot) in self.slots.iter_mut() {
            if !slot
                .client
                .finish(self.now, &mut self.shared, &mut self.out)
            {
                not_established += 1;
            }
            // Best effort: one write, no waiting, nothing behind unsent output.
            let cipher = &mut self.bufs.cipher;
            let bytes = match slot.tls.as_mut() {
                Some(tls) if !tls.is_handshaking() => {
                    tls.encrypt(self.out.bytes());
                    tls.close();
                    tls.take_ciphertext(cipher);
                    &cipher[..]
                }
                Some(_) => &[][..],
                None => self.out.bytes(),
            };
            if slot.backlog.is_empty() && !bytes.is_empty() {
                let _ = slot.socket.write(bytes);
            }
            cipher.clear();
            self.out.clear();
        }
        let clients = self.slots.len() as u64;
        self.shared.take_report(self.now, clients, not_established)
    }
}

/// What [`drive`] works with besides the slot.
struct Io<'a> {
    now: Now,
    cx: &'a mut Shared,
    out: &'a mut Outbox,
    bufs: &'a mut Buffers,
    tls: Option<&'a TlsTarget>,
}

/// Handles readiness for one connection: completes the connect (and starts TLS),
/// flushes the backlog, reads until the socket is drained and hands every chunk to the
/// client (through the TLS layer for `wss://`).
fn drive(slot: &mut Slot, io: Io<'_>, readable: bool, writable: bool) -> Result<(), End> {
    let Io {
        now,
        cx,
        out,
        bufs,
        tls,
    } = io;
    if slot.client.is_connecting() && slot.tls.is_none() {
        match socket::connect_outcome(&slot.socket) {
            Ok(true) => {}
            // Not connected yet: a spurious wake-up.
            Ok(false) => return Ok(()),
            Err(e) => return Err(End::Fault(io_cause(&e))),
        }
        match tls {
            None => slot.client.handle_connected(now, cx, out),
            // The ClientHello goes out with the send below.
            Some(target) => slot.tls = Some(Box::new(TlsConn::new(target, now.ns)?)),
        }
        send(slot, out, &mut bufs.cipher, Ok(()))?;
    } else if writable && !slot.backlog.is_empty() {
        flush(slot)?;
    }
    if readable {
        loop {
            match slot.socket.read(&mut bufs.read) {
                Ok(0) => return Err(End::fault("eof")),
                Ok(n) => {
                    if slot.tls.is_some() {
                        tls_input(slot, now, cx, out, bufs, n)?;
                    } else {
                        let result = slot.client.handle_input(now, &bufs.read[..n], cx, out);
                        send(slot, out, &mut bufs.cipher, result)?;
                    }
                    if n < bufs.read.len() {
                        // A short read drained the socket; the next data raises a new edge.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Fault(io_cause(&e))),
            }
        }
    }
    Ok(())
}

/// Puts `bufs.read[..n]` (ciphertext) through the slot's TLS layer: reports a handshake
/// that completed (and lets the client start its upgrade), hands the plaintext to the
/// client chunk by chunk, and sends what the TLS layer and the client queued. A TLS
/// error still sends the alert rustls queued, best effort.
fn tls_input(
    slot: &mut Slot,
    now: Now,
    cx: &mut Shared,
    out: &mut Outbox,
    bufs: &mut Buffers,
    n: usize,
) -> Result<(), End> {
    let mut input = &bufs.read[..n];
    while !input.is_empty() {
        let tls = slot.tls.as_deref_mut().expect("a TLS slot");
        if let Err(end) = tls.read_tls(&mut input) {
            return send(slot, out, &mut bufs.cipher, Err(end));
        }
        if let Some((kind, ns)) = tls.handshake_done(now.ns) {
            if let Some(counters) = cx.report.tls.as_mut() {
                counters.record(kind, ns / 1000);
            }
            slot.client.handle_connected(now, cx, out);
        }
        loop {
            let tls = slot.tls.as_deref_mut().expect("a TLS slot");
            let got = tls.read_plaintext(&mut bufs.plain);
            let got = match got {
                Ok(0) => break,
                Ok(got) => got,
                Err(end) => return send(slot, out, &mut bufs.cipher, Err(end)),
            };
            let result = slot.client.handle_input(now, &bufs.plain[..got], cx, out);
            send(slot, out, &mut bufs.cipher, result)?;
        }
        send(slot, out, &mut bufs.cipher, Ok(()))?;
    }
    Ok(())
}

/// Files the slot's wanted deadline in the heap if it changed.
fn rearm(timers: &mut BinaryHeap<Reverse<(u64, usize)>>, key: usize, slot: &mut Slot) {
    let wanted = slot.client.poll_timeout();
    if wanted != slot.armed_ns {
        slot.armed_ns = wanted;
        if wanted != NEVER {
            let id = ConnId {
                index: key as u32,
                generation: slot.generation,
            };
            timers.push(Reverse((wanted, id.token().0)));
        }
    }
}

/// Writes what a client call queued — also when the call ended the client, so a close
/// echo still goes out — and passes the call's verdict on; a failed write ends the
/// client only when the call did not. On a TLS slot the output is encrypted first (in
/// `cipher`, cleared again) and whatever the TLS layer queued itself (handshake
/// messages, alerts) goes out too.
fn send(
    slot: &mut Slot,
    out: &mut Outbox,
    cipher: &mut Vec<u8>,
    result: Result<(), End>,
) -> Result<(), End> {
    let written = if let Some(tls) = slot.tls.as_deref_mut() {
        if !out.is_empty() {
            tls.encrypt(out.bytes());
        }
        tls.take_ciphertext(cipher);
        let written = if cipher.is_empty() {
            Ok(())
        } else {
            write_out(slot, cipher)
        };
        cipher.clear();
        written
    } else if out.is_empty() {
        Ok(())
    } else {
        write_out(slot, out.bytes())
    };
    out.clear();
    result.and(written)
}

/// Writes `bytes` after whatever is already queued; queues what the socket refuses.
fn write_out(slot: &mut Slot, bytes: &[u8]) -> Result<(), End> {
    if !slot.backlog.is_empty() {
        if slot.backlog.len() + bytes.len() > MAX_BACKLOG {
            return Err(End::fault("write_backlog"));
        }
        slot.backlog.extend_from_slice(bytes);
        return Ok(());
    }
    let written = write_some(&mut slot.socket, bytes)?;
    if written < bytes.len() {
        slot.backlog.extend_from_slice(&bytes[written..]);
    }
    Ok(())
}

/// Writes the backlog until the socket refuses more; frees it when empty.
fn flush(slot: &mut Slot) -> Result<(), End> {
    let written = write_some(&mut slot.socket, &slot.backlog)?;
    if written == slot.backlog.len() {
        slot.backlog = Vec::new();
    } else {
        slot.backlog.drain(..written);
    }
    Ok(())
}

/// Writes as much of `bytes` as the socket takes now; returns how much that was.
fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> Result<usize, End> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => return Err(End::fault("write_zero")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Fault(io_cause(&e))),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ids_round_trip_through_tokens() {
        for id in [
            ConnId {
                index: 0,
                generation: 0,
            },
            ConnId {
                index: 7,
                generation: 1,
            },
            ConnId {
                index: u32::MAX - 1,
                generation: u32::MAX,
            },
        ] {
            assert_eq!(ConnId::from_token(id.token()), id);
        }
        assert_ne!(
            ConnId {
                index: 3,
                generation: 1
            }
            .token(),
            ConnId {
                index: 3,
                generation: 2
            }
            .token(),
            "a reused slot gets a new token"
        );
    }

    #[test]
    fn slot_stays_small() {
        // Release builds: 184 bytes (a 4-byte socket, 8 for the TLS box); debug builds
        // add mio's 8-byte selector id to the socket, and padding.
        let (slot, client) = (std::mem::size_of::<Slot>(), std::mem::size_of::<Client>());
        assert!(client <= 136, "Client grew to {client} bytes");
        assert!(slot <= 200, "Slot grew to {slot} bytes");
    }
}
