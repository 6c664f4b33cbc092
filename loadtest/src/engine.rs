//! The load generator's event loop: one `mio::Poll`, every client connection in a
//! `Slab`, every per-connection deadline in one binary heap.
//!
//! # Memory per connection
//!
//! A connection is a `Conn` of under 200 bytes plus the kernel's socket. Reads go into
//! the engine's shared buffer; a connection keeps heap bytes only for a partial frame,
//! a fragmented message or unsent output, and frees them as soon as they are complete.
//! Nothing per connection is kept in histograms: every sample goes straight into the
//! engine's shared ones.
//!
//! # Deadlines
//!
//! A connection has one armed deadline, `Conn::armed_ns`, the minimum of what its
//! state needs (connect/handshake/subscribe/close timeout, next client ping, next
//! echo). Re-arming pushes a new heap entry and leaves the old one behind; a popped
//! entry whose time is not the connection's current `armed_ns` (or whose slot now holds
//! a newer generation) is stale and skipped. So the heap never needs a removal.
//!
//! # Phases
//!
//! `Ramping` (open `connections` at `ramp_rate`) → `Ramped` (reported to the
//! coordinator, waiting) → `Holding` (after [`Command::Hold`]: echo and churn traffic
//! run, pings are counted for the hold) → finished (after [`Command::Finish`]: the
//! report is built, then every connection is closed).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::codec::{self, Control, Data, OpCode};
use crate::counters::{ChurnCounters, EchoCounters, ProcessReport, PushCounters};
use crate::handshake;
use crate::hist::Timeline;
use crate::jwt;
use crate::procfs::{self, Pid};

const _: () = assert!(usize::BITS == 64, "ConnId packs two u32s into a Token");

/// The token of the waker that announces commands.
const WAKER: Token = Token(usize::MAX);
/// Size of the shared read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Unsent output one connection may accumulate before it is failed (`write_backlog`).
const MAX_BACKLOG: usize = 4 << 20;
/// Most connections opened in one loop iteration, so a ramp never starves the loop.
const OPEN_BATCH: u64 = 512;
/// "No deadline".
const NEVER: u64 = u64::MAX;
/// Bytes at the start of every echo message: sequence number and send time.
pub const ECHO_HEADER: usize = 16;

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

/// Which latency the scenario is judged by (`--max-p99`, the plot, the timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MainLatency {
    /// TCP connect + handshake.
    Connect,
    /// Client ping → pong.
    ClientRtt,
    /// Publish → delivery.
    Push,
    /// Message → echo.
    Echo,
}

impl MainLatency {
    /// The name used in reports (`connect`, `client_rtt`, `push`, `echo`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ClientRtt => "client_rtt",
            Self::Push => "push",
            Self::Echo => "echo",
        }
    }
}

/// Push-client settings.
#[derive(Debug, Clone)]
pub struct PushClients {
    /// Channels `lt-0` … `lt-{channels-1}`; client `i` subscribes to `i % channels`.
    pub channels: u32,
    /// HS256 secret for the clients' tokens.
    pub token_secret: Vec<u8>,
    /// How a client subscribes to its channel.
    pub subscribe: SubscribeMode,
}

/// How a push client subscribes to its channel (`--subscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscribeMode {
    /// `?channel=` in the URL; subscribed once the upgrade succeeds (no acknowledgement
    /// expected; one that arrives anyway is counted in `acks`). pingwheel's protocol.
    Url,
    /// `?channel=` in the URL, then wait for `{"op":"subscribed","channel":..}`.
    UrlAck,
    /// Send `{"op":"subscribe","channel":..}` after the upgrade and wait for
    /// `{"op":"subscribed",..}`.
    Op,
}

/// Echo settings.
#[derive(Debug, Clone, Copy)]
pub struct EchoLoad {
    /// Bytes per message (≥ [`ECHO_HEADER`]).
    pub message_size: usize,
    /// Messages per second per connection; 0 means "next as soon as the echo arrives".
    pub message_rate: f64,
}

/// Churn settings.
#[derive(Debug, Clone, Copy)]
pub struct ChurnLoad {
    /// Cycles started per second by this engine.
    pub rate: f64,
    /// Size of the text message sent before closing (0: none).
    pub message_size: usize,
}

/// Everything one engine needs to know; built by [`crate::plan::Plan::engine_config`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Server address.
    pub target: SocketAddr,
    /// `Host` header value.
    pub host_header: String,
    /// Request target of the upgrade request (push adds `token` and `channel`).
    pub path_and_query: String,
    /// Connections to hold (churn: most cycles in flight).
    pub connections: u64,
    /// Global index of this engine's first connection (names push clients).
    pub first_index: u64,
    /// Connections opened per second during the ramp.
    pub ramp_rate: f64,
    /// Time allowed from connect start to a usable connection.
    pub connect_timeout: Duration,
    /// Local addresses to bind, round-robin (empty: the kernel chooses).
    pub sources: Vec<IpAddr>,
    /// Largest server message accepted.
    pub max_message_size: u64,
    /// Send client pings at this interval.
    pub client_ping_interval: Option<Duration>,
    /// Check per-connection ping counts against this interval at the end.
    pub expect_ping_interval: Option<Duration>,
    /// Push scenario.
    pub push: Option<PushClients>,
    /// Echo scenario.
    pub echo: Option<EchoLoad>,
    /// Churn scenario.
    pub churn: Option<ChurnLoad>,
    /// The latency the timeline records.
    pub main_latency: MainLatency,
    /// Width of one timeline bucket.
    pub timeline_bucket: Duration,
    /// Unix time (ns) the whole run started; the timeline's origin.
    pub run_start_unix_ns: u64,
    /// How often to emit [`EngineEvent::Progress`].
    pub progress_every: Duration,
    /// The engine finishes on its own this long after it started.
    pub hard_deadline: Duration,
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

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for the 101.
    Handshaking,
    /// Push: upgraded, waiting for `{"op":"subscribed"}`.
    Subscribing,
    /// Usable.
    Open,
    /// We sent a close frame and wait for the server's.
    Closing,
}

/// A fragmented message being reassembled (rare, so boxed).
#[derive(Debug)]
struct Fragments {
    opcode: OpCode,
    data: Vec<u8>,
}

/// One client connection. Times are nanoseconds since the engine's epoch.
#[derive(Debug)]
struct Conn {
    socket: TcpStream,
    generation: u32,
    /// Index among this engine's connections (churn: cycle number).
    local_index: u32,
    state: State,
    /// Server pings received.
    pings: u32,
    started_ns: u64,
    /// 0 until the handshake completed.
    established_ns: u64,
    /// The deadline in the heap that is current for this connection.
    armed_ns: u64,
    /// Timeout of the current non-`Open` state.
    state_deadline_ns: u64,
    /// 0 until the first server ping.
    last_ping_ns: u64,
    next_client_ping_ns: u64,
    next_echo_ns: u64,
    echo_sent: u64,
    echo_received: u64,
    /// Push: last delivery's `seq + 1` (0: none yet).
    last_seq_plus_one: u64,
    nonce: [u8; 16],
    /// Bytes of a partial handshake response or frame; empty (unallocated) otherwise.
    inbuf: Vec<u8>,
    /// Output the socket did not take yet; empty (unallocated) otherwise.
    outbuf: Vec<u8>,
    fragments: Option<Box<Fragments>>,
}

impl Conn {
    /// The deadline this connection's state wants armed.
    fn wanted_deadline(&self) -> u64 {
        match self.state {
            State::Open => self.next_client_ping_ns.min(self.next_echo_ns),
            _ => self.state_deadline_ns,
        }
    }

    fn is_pending(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Handshaking | State::Subscribing
        )
    }
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The run ended it on purpose (churn cycle completed).
    Done,
    /// Failed (before the handshake) or lost (after), with a cause label.
    Fault(Cow<'static, str>),
}

fn fault(cause: &'static str) -> End {
    End::Fault(Cow::Borrowed(cause))
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

/// Engine phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ramping,
    Ramped,
    Holding,
}

/// Everything but the connections, so a connection and the context can be borrowed
/// together.
#[derive(Debug)]
struct Ctx {
    config: EngineConfig,
    epoch: Instant,
    now_ns: u64,
    now_unix_ns: u64,
    rng: fastrand::Rng,
    /// Frames being written.
    scratch: Vec<u8>,
    /// Payloads being built.
    payload: Vec<u8>,
    report: ProcessReport,
    /// Connections not yet usable (connecting, upgrading, subscribing).
    pending: u64,
    /// Established connections open right now.
    open: u64,
    generation: u32,
    next_source: usize,
    phase: Phase,
    hold_start_ns: u64,
    pings_at_hold: u64,
    /// Push: subscribed, open connections per channel right now.
    live_subscribers: Vec<u64>,
    /// Churn cycles started (including skipped ones, for pacing).
    churn_due_counted: u64,
    finish_requested: bool,
}

impl Ctx {
    fn tick(&mut self) {
        self.now_ns = duration_ns(self.epoch.elapsed());
        self.now_unix_ns = unix_now_ns();
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.u32(..).to_ne_bytes()
    }

    fn holding(&self) -> bool {
        self.phase == Phase::Holding
    }

    fn record_main(&mut self, kind: MainLatency, latency_us: u64, at_unix_ns: u64) {
        if kind == self.config.main_latency {
            let offset_us = at_unix_ns.saturating_sub(self.config.run_start_unix_ns) / 1000;
            self.report.timeline.record(offset_us, latency_us);
        }
    }

    fn progress(&self) -> Progress {
        let r = &self.report;
        Progress {
            opened: r.opened,
            established: r.established,
            open: self.open,
            failed: r.failed(),
            lost: r.lost(),
            pings: r.pings.received,
            deliveries: r.push.as_ref().map_or(0, |p| p.delivered),
            echoes: r.echo.as_ref().map_or(0, |e| e.received),
            cycles: r.churn.as_ref().map_or(0, |c| c.completed),
        }
    }

    /// The push channel of local connection `local_index`.
    fn channel_of(&self, local_index: u32) -> usize {
        let channels = self.config.push.as_ref().map_or(1, |p| p.channels.max(1));
        ((self.config.first_index + u64::from(local_index)) % u64::from(channels)) as usize
    }
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
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
    conns: Slab<Conn>,
    /// `(deadline ns, token)`; may hold stale entries (see the module docs).
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    read_buf: Box<[u8]>,
    commands: Receiver<Command>,
    ctx: Ctx,
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
        let epoch = Instant::now();
        let mut report = ProcessReport {
            pid: std::process::id(),
            target: if config.churn.is_some() {
                0
            } else {
                config.connections
            },
            timeline: Timeline::new(config.timeline_bucket),
            ..ProcessReport::default()
        };
        if let Some(push) = &config.push {
            report.push = Some(PushCounters {
                subscribed_by_channel: vec![0; push.channels as usize],
                ..PushCounters::default()
            });
        }
        if config.echo.is_some() {
            report.echo = Some(EchoCounters::default());
        }
        if config.churn.is_some() {
            report.churn = Some(ChurnCounters::default());
        }
        let live_subscribers = vec![0; config.push.as_ref().map_or(0, |p| p.channels as usize)];
        let capacity = usize::try_from(config.connections)
            .unwrap_or(usize::MAX)
            .min(1 << 22);
        let ctx = Ctx {
            epoch,
            now_ns: 0,
            now_unix_ns: unix_now_ns(),
            rng: fastrand::Rng::new(),
            scratch: Vec::with_capacity(4096),
            payload: Vec::new(),
            report,
            pending: 0,
            open: 0,
            generation: 0,
            next_source: 0,
            phase: Phase::Ramping,
            hold_start_ns: 0,
            pings_at_hold: 0,
            live_subscribers,
            churn_due_counted: 0,
            finish_requested: false,
            config,
        };
        let engine = Self {
            poll,
            conns: Slab::with_capacity(capacity),
            timers: BinaryHeap::new(),
            read_buf: vec![0; READ_BUFFER].into_boxed_slice(),
            commands,
            ctx,
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
            self.ctx.report.rss_start = sample.rss_bytes;
        }
        self.ctx.tick();
        let hard_deadline_ns = duration_ns(self.ctx.config.hard_deadline);
        if self.ctx.config.churn.is_some() {
            self.ctx.phase = Phase::Ramped;
            emit(EngineEvent::Ramped(self.ctx.progress()));
        }
        while !self.ctx.finish_requested && self.ctx.now_ns < hard_deadline_ns {
            let wake_ns = self.next_wakeup().min(hard_deadline_ns);
            let timeout = Duration::from_nanos(wake_ns.saturating_sub(self.ctx.now_ns));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.ctx.tick();
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
            if self.ctx.phase == Phase::Ramping
                && self.ctx.report.opened >= self.ctx.config.connections
                && self.ctx.pending == 0
            {
                self.ctx.phase = Phase::Ramped;
                self.ctx.report.ramp_seconds = self.ctx.now_ns as f64 / 1e9;
                emit(EngineEvent::Ramped(self.ctx.progress()));
            }
            if self.ctx.now_ns >= self.next_progress_ns {
                self.next_progress_ns =
                    self.ctx.now_ns + duration_ns(self.ctx.config.progress_every);
                emit(EngineEvent::Progress(self.ctx.progress()));
            }
        }
        let report = self.finish();
        emit(EngineEvent::Finished(Box::new(report)));
        Ok(())
    }

    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Hold) => self.start_hold(),
                Ok(Command::Finish) | Err(TryRecvError::Disconnected) => {
                    self.ctx.finish_requested = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// The earliest moment the loop has work without socket events.
    fn next_wakeup(&self) -> u64 {
        let ctx = &self.ctx;
        let mut wake = self.next_progress_ns;
        if let Some(Reverse((deadline, _))) = self.timers.peek() {
            wake = wake.min(*deadline);
        }
        if ctx.phase == Phase::Ramping && ctx.report.opened < ctx.config.connections {
            wake = wake.min(rate_due_ns(0, ctx.config.ramp_rate, ctx.report.opened));
        }
        if let (Phase::Holding, Some(churn)) = (ctx.phase, ctx.config.churn) {
            wake = wake.min(rate_due_ns(
                ctx.hold_start_ns,
                churn.rate,
                ctx.churn_due_counted,
            ));
        }
        wake
    }

    fn start_hold(&mut self) {
        let ctx = &mut self.ctx;
        if ctx.phase == Phase::Holding {
            return;
        }
        ctx.phase = Phase::Holding;
        ctx.hold_start_ns = ctx.now_ns;
        ctx.pings_at_hold = ctx.report.pings.received;
        if let Ok(sample) = procfs::sample(Pid::Current) {
            ctx.report.rss_hold = sample.rss_bytes;
            ctx.report.cpu_hold_start = sample.cpu_seconds;
        }
        if let Some(push) = ctx.report.push.as_mut() {
            push.subscribed_by_channel.clone_from(&ctx.live_subscribers);
        }
        if let Some(echo) = ctx.config.echo {
            let period_ns = rate_period_ns(echo.message_rate);
            let now = ctx.now_ns;
            let mut keys = Vec::new();
            for (key, conn) in self.conns.iter_mut() {
                if conn.state == State::Open {
                    let offset = if period_ns == NEVER {
                        0
                    } else {
                        ctx.rng.u64(..period_ns.max(1))
                    };
                    conn.next_echo_ns = now + offset;
                    keys.push(key);
                }
            }
            for key in keys {
                self.rearm(key);
            }
        }
    }

    /// Opens connections the ramp (or churn) rate allows by now.
    fn open_due(&mut self) {
        let now = self.ctx.now_ns;
        match (self.ctx.phase, self.ctx.config.churn) {
            (Phase::Ramping, _) => {
                let rate = self.ctx.config.ramp_rate;
                let target = self.ctx.config.connections;
                let due = due_count(0, rate, now).min(target);
                let mut opened_now = 0;
                while self.ctx.report.opened < due && opened_now < OPEN_BATCH {
                    self.start_connection();
                    opened_now += 1;
                }
            }
            (Phase::Holding, Some(churn)) => {
                let due = due_count(self.ctx.hold_start_ns, churn.rate, now);
                let mut opened_now = 0;
                while self.ctx.churn_due_counted < due && opened_now < OPEN_BATCH {
                    self.ctx.churn_due_counted += 1;
                    if (self.conns.len() as u64) < self.ctx.config.connections {
                        self.start_connection();
                        opened_now += 1;
                    } else if let Some(c) = self.ctx.report.churn.as_mut() {
                        c.skipped_at_capacity += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn start_connection(&mut self) {
        let ctx = &mut self.ctx;
        let local_index = ctx.report.opened as u32;
        ctx.report.opened += 1;
        if let Some(churn) = ctx.report.churn.as_mut() {
            churn.started += 1;
            ctx.report.target += 1;
        }
        let source = if ctx.config.sources.is_empty() {
            None
        } else {
            let source = ctx.config.sources[ctx.next_source % ctx.config.sources.len()];
            ctx.next_source = ctx.next_source.wrapping_add(1);
            Some(source)
        };
        let mut socket = match open_socket(ctx.config.target, source) {
            Ok(socket) => socket,
            Err(e) => {
                *ctx.report
                    .failed_by_cause
                    .entry(io_cause(&e).into_owned())
                    .or_default() += 1;
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let Ok(index) = u32::try_from(key) else {
            *ctx.report
                .failed_by_cause
                .entry("too_many_connections".into())
                .or_default() += 1;
            return;
        };
        ctx.generation = ctx.generation.wrapping_add(1);
        let id = ConnId {
            index,
            generation: ctx.generation,
        };
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            *ctx.report
                .failed_by_cause
                .entry(io_cause(&e).into_owned())
                .or_default() += 1;
            return;
        }
        let now = ctx.now_ns;
        let mut nonce = [0u8; 16];
        ctx.rng.fill(&mut nonce);
        entry.insert(Conn {
            socket,
            generation: ctx.generation,
            local_index,
            state: State::Connecting,
            pings: 0,
            started_ns: now,
            established_ns: 0,
            armed_ns: NEVER,
            state_deadline_ns: now + duration_ns(ctx.config.connect_timeout),
            last_ping_ns: 0,
            next_client_ping_ns: NEVER,
            next_echo_ns: NEVER,
            echo_sent: 0,
            echo_received: 0,
            last_seq_plus_one: 0,
            nonce,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            fragments: None,
        });
        ctx.pending += 1;
        self.rearm(key);
    }

    fn on_socket_event(&mut self, token: Token, readable: bool, writable: bool) {
        let id = ConnId::from_token(token);
        let key = id.index as usize;
        let result = match self.conns.get_mut(key) {
            Some(conn) if conn.generation == id.generation => {
                drive(conn, &mut self.ctx, &mut self.read_buf, readable, writable)
            }
            // A stale event for a connection that is gone: ignore it.
            _ => return,
        };
        match result {
            Ok(()) => self.rearm(key),
            Err(end) => self.close(key, end),
        }
    }

    fn fire_timers(&mut self) {
        while let Some(&Reverse((deadline, token))) = self.timers.peek() {
            if deadline > self.ctx.now_ns {
                break;
            }
            self.timers.pop();
            let id = ConnId::from_token(Token(token));
            let key = id.index as usize;
            let result = match self.conns.get_mut(key) {
                Some(conn) if conn.generation == id.generation && conn.armed_ns == deadline => {
                    conn.armed_ns = NEVER;
                    on_timer(conn, &mut self.ctx)
                }
                _ => continue,
            };
            match result {
                Ok(()) => self.rearm(key),
                Err(end) => self.close(key, end),
            }
        }
    }

    /// Files the connection's wanted deadline in the heap if it changed.
    fn rearm(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let wanted = conn.wanted_deadline();
        if wanted != conn.armed_ns {
            conn.armed_ns = wanted;
            if wanted != NEVER {
                let id = ConnId {
                    index: key as u32,
                    generation: conn.generation,
                };
                self.timers.push(Reverse((wanted, id.token().0)));
            }
        }
    }

    /// Removes a connection and accounts for how it ended.
    fn close(&mut self, key: usize, end: End) {
        let conn = self.conns.remove(key);
        let ctx = &mut self.ctx;
        if conn.is_pending() {
            ctx.pending -= 1;
        }
        let established = conn.established_ns != 0;
        if established {
            ctx.open -= 1;
        }
        if ctx.config.push.is_some() && matches!(conn.state, State::Open | State::Closing) {
            let channel = ctx.channel_of(conn.local_index);
            ctx.live_subscribers[channel] -= 1;
        }
        match end {
            End::Done => {
                if let Some(churn) = ctx.report.churn.as_mut() {
                    churn.completed += 1;
                    churn
                        .cycle
                        .record_us(ctx.now_ns.saturating_sub(conn.started_ns) / 1000);
                }
            }
            End::Fault(cause) => {
                let causes = if established {
                    &mut ctx.report.lost_by_cause
                } else {
                    &mut ctx.report.failed_by_cause
                };
                *causes.entry(cause.into_owned()).or_default() += 1;
            }
        }
        // Dropping the socket closes it and removes it from the poll.
    }

    /// Builds the report, then closes every connection (a best-effort close frame each).
    fn finish(mut self) -> ProcessReport {
        self.ctx.tick();
        let ctx = &mut self.ctx;
        let now = ctx.now_ns;
        if let Ok(sample) = procfs::sample(Pid::Current) {
            ctx.report.rss_end = sample.rss_bytes;
            ctx.report.cpu_end = sample.cpu_seconds;
        }
        if ctx.phase == Phase::Holding {
            ctx.report.hold_seconds = now.saturating_sub(ctx.hold_start_ns) as f64 / 1e9;
            ctx.report.pings.received_hold = ctx.report.pings.received - ctx.pings_at_hold;
        }
        let expect_ns = ctx
            .config
            .expect_ping_interval
            .map(duration_ns)
            .filter(|&i| i > 0);
        let mut not_established = 0;
        for (_, conn) in self.conns.iter_mut() {
            if conn.established_ns == 0 {
                not_established += 1;
                continue;
            }
            let pings = u64::from(conn.pings);
            let pings_report = &mut ctx.report.pings;
            pings_report.per_connection_min = Some(
                pings_report
                    .per_connection_min
                    .map_or(pings, |m| m.min(pings)),
            );
            pings_report.per_connection_max = Some(
                pings_report
                    .per_connection_max
                    .map_or(pings, |m| m.max(pings)),
            );
            if let Some(interval) = expect_ns {
                let held = now.saturating_sub(conn.established_ns);
                if held >= 2 * interval {
                    pings_report.connections_checked += 1;
                    if pings < (held / interval).saturating_sub(1) {
                        pings_report.connections_below_expected += 1;
                    }
                }
            }
            if let Some(echo) = ctx.report.echo.as_mut() {
                echo.outstanding_at_end += conn.echo_sent - conn.echo_received;
            }
            // Best effort: one close frame, no waiting.
            if matches!(conn.state, State::Open | State::Subscribing) && conn.outbuf.is_empty() {
                ctx.scratch.clear();
                let mask = ctx.rng.u32(..).to_ne_bytes();
                codec::encode_close(&mut ctx.scratch, 1000, mask);
                let _ = conn.socket.write(&ctx.scratch);
            }
        }
        ctx.report.open_at_end = ctx.open;
        if let Some(churn) = ctx.report.churn.as_mut() {
            churn.in_flight_at_end = self.conns.len() as u64;
        } else {
            if not_established > 0 {
                *ctx.report
                    .failed_by_cause
                    .entry("not_established_at_end".into())
                    .or_default() += not_established;
            }
            let never_started = ctx.config.connections.saturating_sub(ctx.report.opened);
            if never_started > 0 {
                *ctx.report
                    .failed_by_cause
                    .entry("not_started".into())
                    .or_default() += never_started;
            }
        }
        let report = std::mem::take(&mut ctx.report);
        drop(self.conns);
        report
    }
}

/// When the `count`-th event of a `rate`/s schedule starting at `start_ns` is due.
fn rate_due_ns(start_ns: u64, rate: f64, count: u64) -> u64 {
    if rate <= 0.0 {
        return NEVER;
    }
    start_ns.saturating_add((count as f64 / rate * 1e9) as u64)
}

/// How many events of a `rate`/s schedule starting at `start_ns` are due at `now_ns`
/// (the first is due immediately).
fn due_count(start_ns: u64, rate: f64, now_ns: u64) -> u64 {
    if rate <= 0.0 || now_ns < start_ns {
        return 0;
    }
    let elapsed_s = (now_ns - start_ns) as f64 / 1e9;
    (elapsed_s * rate).floor() as u64 + 1
}

/// The period of a per-connection rate, `NEVER` for 0 (closed loop).
fn rate_period_ns(rate: f64) -> u64 {
    if rate > 0.0 {
        ((1e9 / rate) as u64).max(1)
    } else {
        NEVER
    }
}

/// The next slot of a periodic schedule whose slot `due` just ran at `now`: keeps the
/// phase, but never schedules into the past (a loop that fell behind does not burst).
fn next_on_schedule(due: u64, period: u64, now: u64) -> u64 {
    let period = period.max(1);
    let next = due.saturating_add(period);
    if next > now { next } else { now + period }
}

/// A non-blocking TCP socket bound to `source` (port chosen at connect time) with its
/// connect to `target` in progress.
fn open_socket(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
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

/// Handles readiness for one connection.
fn drive(
    conn: &mut Conn,
    ctx: &mut Ctx,
    read_buf: &mut [u8],
    readable: bool,
    writable: bool,
) -> Result<(), End> {
    if conn.state == State::Connecting {
        match conn.socket.take_error() {
            Ok(Some(e)) | Err(e) => return Err(End::Fault(io_cause(&e))),
            Ok(None) => {}
        }
        match conn.socket.peer_addr() {
            Ok(_) => {}
            // Not connected yet: a spurious wakeup.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(End::Fault(io_cause(&e))),
        }
        conn.state = State::Handshaking;
        let path = upgrade_path(ctx, conn.local_index);
        ctx.scratch.clear();
        handshake::write_request(&mut ctx.scratch, &ctx.config.host_header, &path, conn.nonce);
        write_bytes(conn, &ctx.scratch)?;
    } else if writable && !conn.outbuf.is_empty() {
        flush(conn)?;
    }
    if readable {
        loop {
            match conn.socket.read(read_buf) {
                Ok(0) => return Err(fault("eof")),
                Ok(n) => {
                    on_bytes(conn, ctx, &read_buf[..n])?;
                    if n < read_buf.len() {
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

/// The request target for connection `local_index` (push adds its token and channel).
fn upgrade_path(ctx: &Ctx, local_index: u32) -> String {
    let base = &ctx.config.path_and_query;
    let Some(push) = &ctx.config.push else {
        return base.clone();
    };
    let global = ctx.config.first_index + u64::from(local_index);
    let expires = ctx.now_unix_ns / 1_000_000_000 + 3600;
    let token = jwt::client_token(&push.token_secret, global, expires);
    let separator = if base.contains('?') { '&' } else { '?' };
    if push.subscribe == SubscribeMode::Op {
        return format!("{base}{separator}token={token}");
    }
    let channel = ctx.channel_of(local_index);
    format!("{base}{separator}token={token}&channel=lt-{channel}")
}

/// A push connection became a subscriber of its channel.
fn subscribed(conn: &mut Conn, ctx: &mut Ctx) {
    debug_assert!(conn.is_pending(), "subscribed twice: {:?}", conn.state);
    conn.state = State::Open;
    ctx.pending -= 1;
    let channel = ctx.channel_of(conn.local_index);
    ctx.live_subscribers[channel] += 1;
    if let Some(push) = ctx.report.push.as_mut() {
        push.subscribed += 1;
    }
}

/// Writes `bytes` after whatever is already queued; queues what the socket refuses.
fn write_bytes(conn: &mut Conn, bytes: &[u8]) -> Result<(), End> {
    if !conn.outbuf.is_empty() {
        if conn.outbuf.len() + bytes.len() > MAX_BACKLOG {
            return Err(fault("write_backlog"));
        }
        conn.outbuf.extend_from_slice(bytes);
        return Ok(());
    }
    let mut written = 0;
    while written < bytes.len() {
        match conn.socket.write(&bytes[written..]) {
            Ok(0) => return Err(fault("write_zero")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Fault(io_cause(&e))),
        }
    }
    if written < bytes.len() {
        conn.outbuf.extend_from_slice(&bytes[written..]);
    }
    Ok(())
}

/// Writes queued output until the socket refuses more; frees the queue when empty.
fn flush(conn: &mut Conn) -> Result<(), End> {
    let mut written = 0;
    while written < conn.outbuf.len() {
        match conn.socket.write(&conn.outbuf[written..]) {
            Ok(0) => return Err(fault("write_zero")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Fault(io_cause(&e))),
        }
    }
    if written == conn.outbuf.len() {
        conn.outbuf = Vec::new();
    } else {
        conn.outbuf.drain(..written);
    }
    Ok(())
}

/// Sends one masked frame.
fn send_frame(conn: &mut Conn, ctx: &mut Ctx, opcode: OpCode, payload: &[u8]) -> Result<(), End> {
    let mask = ctx.mask();
    ctx.scratch.clear();
    codec::encode_frame(&mut ctx.scratch, opcode, payload, mask);
    write_bytes(conn, &ctx.scratch)
}

/// Feeds bytes read from the socket; keeps a partial remainder on the connection.
fn on_bytes(conn: &mut Conn, ctx: &mut Ctx, data: &[u8]) -> Result<(), End> {
    if conn.inbuf.is_empty() {
        let used = consume(conn, ctx, data)?;
        if used < data.len() {
            conn.inbuf.extend_from_slice(&data[used..]);
        }
    } else {
        let mut buffered = std::mem::take(&mut conn.inbuf);
        buffered.extend_from_slice(data);
        let used = consume(conn, ctx, &buffered)?;
        if used < buffered.len() {
            buffered.drain(..used);
            conn.inbuf = buffered;
        }
        // Otherwise `buffered` drops here and the connection holds no input bytes.
    }
    Ok(())
}

/// Consumes complete units (the handshake response, frames) from `buf`; returns how
/// many bytes were used.
fn consume(conn: &mut Conn, ctx: &mut Ctx, buf: &[u8]) -> Result<usize, End> {
    let mut used = 0;
    while used < buf.len() {
        let rest = &buf[used..];
        if conn.state == State::Handshaking {
            match handshake::parse_response(rest, conn.nonce) {
                Ok(None) => break,
                Ok(Some(head_len)) => {
                    used += head_len;
                    on_established(conn, ctx)?;
                }
                Err(failure) => return Err(End::Fault(Cow::Owned(failure.cause()))),
            }
        } else {
            match codec::decode_frame(rest, ctx.config.max_message_size) {
                Ok(None) => break,
                Ok(Some((frame, frame_len))) => {
                    used += frame_len;
                    on_frame(conn, ctx, frame)?;
                }
                Err(error) => return Err(fault(error.cause())),
            }
        }
    }
    Ok(used)
}

fn on_established(conn: &mut Conn, ctx: &mut Ctx) -> Result<(), End> {
    let now = ctx.now_ns;
    conn.established_ns = now;
    ctx.open += 1;
    ctx.report.established += 1;
    let latency_us = now.saturating_sub(conn.started_ns) / 1000;
    ctx.report.connect_latency.record_us(latency_us);
    ctx.record_main(MainLatency::Connect, latency_us, ctx.now_unix_ns);
    if let Some(interval) = ctx.config.client_ping_interval {
        let interval = duration_ns(interval).max(1);
        conn.next_client_ping_ns = now + ctx.rng.u64(..interval) + 1;
    }
    if let Some(churn) = ctx.config.churn {
        ctx.pending -= 1;
        if churn.message_size > 0 {
            ctx.payload.clear();
            ctx.payload.resize(churn.message_size, b'x');
            let payload = std::mem::take(&mut ctx.payload);
            let sent = send_frame(conn, ctx, OpCode::Data(Data::Text), &payload);
            ctx.payload = payload;
            sent?;
        }
        conn.state = State::Closing;
        conn.state_deadline_ns = now + duration_ns(ctx.config.connect_timeout);
        let mask = ctx.mask();
        ctx.scratch.clear();
        codec::encode_close(&mut ctx.scratch, 1000, mask);
        return write_bytes(conn, &ctx.scratch);
    }
    if let Some(push) = &ctx.config.push {
        match push.subscribe {
            SubscribeMode::Url => subscribed(conn, ctx),
            SubscribeMode::UrlAck => conn.state = State::Subscribing,
            SubscribeMode::Op => {
                conn.state = State::Subscribing;
                let op = format!(
                    r#"{{"op":"subscribe","channel":"lt-{}"}}"#,
                    ctx.channel_of(conn.local_index)
                );
                send_frame(conn, ctx, OpCode::Data(Data::Text), op.as_bytes())?;
            }
        }
    } else {
        conn.state = State::Open;
        ctx.pending -= 1;
        if ctx.holding() {
            schedule_first_echo(conn, ctx);
        }
    }
    Ok(())
}

/// Echo connections that open during the hold start sending right away.
fn schedule_first_echo(conn: &mut Conn, ctx: &mut Ctx) {
    if let Some(echo) = ctx.config.echo {
        let period = rate_period_ns(echo.message_rate);
        let offset = if period == NEVER {
            0
        } else {
            ctx.rng.u64(..period)
        };
        conn.next_echo_ns = ctx.now_ns + offset;
    }
}

fn on_frame(conn: &mut Conn, ctx: &mut Ctx, frame: codec::ServerFrame<'_>) -> Result<(), End> {
    let now = ctx.now_ns;
    match frame.opcode {
        OpCode::Control(Control::Ping) => {
            conn.pings = conn.pings.saturating_add(1);
            ctx.report.pings.received += 1;
            if conn.last_ping_ns != 0 {
                ctx.report
                    .pings
                    .interval
                    .record_us((now - conn.last_ping_ns) / 1000);
            }
            conn.last_ping_ns = now;
            send_frame(conn, ctx, OpCode::Control(Control::Pong), frame.payload)
        }
        OpCode::Control(Control::Pong) => {
            if let Ok(sent) = <[u8; 8]>::try_from(frame.payload) {
                let sent_ns = u64::from_be_bytes(sent);
                if sent_ns <= now {
                    let rtt_us = (now - sent_ns) / 1000;
                    ctx.report.pings.client_rtt.record_us(rtt_us);
                    ctx.record_main(MainLatency::ClientRtt, rtt_us, ctx.now_unix_ns);
                }
            }
            Ok(())
        }
        OpCode::Control(Control::Close) => {
            if conn.state == State::Closing {
                return Err(End::Done);
            }
            let code = codec::close_code(frame.payload);
            // Echo the close (RFC 6455 §5.5.1), then count the connection as lost.
            let mask = ctx.mask();
            ctx.scratch.clear();
            match code {
                Some(code) => codec::encode_close(&mut ctx.scratch, code, mask),
                None => codec::encode_frame(
                    &mut ctx.scratch,
                    OpCode::Control(Control::Close),
                    &[],
                    mask,
                ),
            }
            let _ = write_bytes(conn, &ctx.scratch);
            Err(End::Fault(match code {
                Some(code) => Cow::Owned(format!("closed_by_server_{code}")),
                None => Cow::Borrowed("closed_by_server"),
            }))
        }
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
            Err(fault("protocol_error"))
        }
        OpCode::Data(Data::Continue) => {
            let Some(mut fragments) = conn.fragments.take() else {
                return Err(fault("protocol_error"));
            };
            if (fragments.data.len() + frame.payload.len()) as u64 > ctx.config.max_message_size {
                return Err(fault("message_too_big"));
            }
            fragments.data.extend_from_slice(frame.payload);
            if frame.fin {
                on_message(conn, ctx, fragments.opcode, &fragments.data)
            } else {
                conn.fragments = Some(fragments);
                Ok(())
            }
        }
        OpCode::Data(data @ (Data::Text | Data::Binary)) => {
            if conn.fragments.is_some() {
                return Err(fault("protocol_error"));
            }
            if frame.fin {
                on_message(conn, ctx, OpCode::Data(data), frame.payload)
            } else {
                conn.fragments = Some(Box::new(Fragments {
                    opcode: OpCode::Data(data),
                    data: frame.payload.to_vec(),
                }));
                Ok(())
            }
        }
    }
}

/// A server text message in the push protocol: an acknowledgement or a delivery.
#[derive(Debug, Deserialize)]
struct PushMessage<'a> {
    #[serde(borrow)]
    op: Option<Text<'a>>,
    #[serde(borrow)]
    channel: Option<Text<'a>>,
    seq: Option<u64>,
    data: Option<PushData>,
}

/// A JSON string borrowed from the message when it has no escapes (serde borrows a
/// bare `Cow` but not one inside an `Option`, hence this newtype).
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[derive(Debug, Deserialize)]
struct PushData {
    t: Option<u64>,
}

fn on_message(conn: &mut Conn, ctx: &mut Ctx, opcode: OpCode, payload: &[u8]) -> Result<(), End> {
    if ctx.config.push.is_some() && opcode == OpCode::Data(Data::Text) {
        on_push_message(conn, ctx, payload);
        return Ok(());
    }
    if ctx.config.echo.is_some()
        && opcode == OpCode::Data(Data::Binary)
        && conn.state == State::Open
    {
        return on_echo(conn, ctx, payload);
    }
    ctx.report.messages_received += 1;
    Ok(())
}

fn on_push_message(conn: &mut Conn, ctx: &mut Ctx, payload: &[u8]) {
    let channel = ctx.channel_of(conn.local_index);
    let Ok(message) = serde_json::from_slice::<PushMessage<'_>>(payload) else {
        if let Some(push) = ctx.report.push.as_mut() {
            push.unexpected += 1;
        }
        return;
    };
    let ours = message
        .channel
        .as_deref()
        .and_then(|name| name.strip_prefix("lt-"))
        .and_then(|n| n.parse::<usize>().ok())
        == Some(channel);
    let is_ack = message.op.as_deref() == Some("subscribed") && ours;
    if is_ack && conn.state == State::Subscribing {
        subscribed(conn, ctx);
    }
    let Some(push) = ctx.report.push.as_mut() else {
        return;
    };
    if is_ack {
        push.acks += 1;
        return;
    }
    if conn.state == State::Subscribing {
        push.unexpected += 1;
        return;
    }
    let (Some(seq), Some(sent_unix_ns)) = (message.seq, message.data.and_then(|d| d.t)) else {
        push.unexpected += 1;
        return;
    };
    if !ours {
        push.unexpected += 1;
        return;
    }
    let latest = conn.last_seq_plus_one;
    if latest != 0 && seq + 1 == latest {
        push.duplicates += 1;
        return;
    }
    if latest != 0 && seq + 1 < latest {
        push.reordered += 1;
    } else {
        conn.last_seq_plus_one = seq + 1;
    }
    push.delivered += 1;
    let latency_us = ctx.now_unix_ns.saturating_sub(sent_unix_ns) / 1000;
    push.latency.record_us(latency_us);
    ctx.record_main(MainLatency::Push, latency_us, sent_unix_ns);
}

/// Fills an echo payload: sequence, send time, then a pattern derived from both and
/// the connection, so the echo can be verified without keeping a copy.
fn fill_echo(out: &mut Vec<u8>, size: usize, seq: u64, sent_ns: u64, local_index: u32) {
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
    let salt = (seq as u8) ^ (local_index as u8);
    out.extend((ECHO_HEADER..size).map(|j| salt.wrapping_add(j as u8)));
}

fn echo_matches(payload: &[u8], size: usize, seq: u64, local_index: u32) -> bool {
    if payload.len() != size || payload[..8] != seq.to_be_bytes() {
        return false;
    }
    let salt = (seq as u8) ^ (local_index as u8);
    payload[ECHO_HEADER..]
        .iter()
        .enumerate()
        .all(|(k, &b)| b == salt.wrapping_add((ECHO_HEADER + k) as u8))
}

fn send_echo(conn: &mut Conn, ctx: &mut Ctx, size: usize) -> Result<(), End> {
    let seq = conn.echo_sent;
    let mut payload = std::mem::take(&mut ctx.payload);
    fill_echo(&mut payload, size, seq, ctx.now_ns, conn.local_index);
    let sent = send_frame(conn, ctx, OpCode::Data(Data::Binary), &payload);
    ctx.payload = payload;
    sent?;
    conn.echo_sent += 1;
    if let Some(echo) = ctx.report.echo.as_mut() {
        echo.sent += 1;
        echo.bytes_sent += size as u64;
    }
    Ok(())
}

fn on_echo(conn: &mut Conn, ctx: &mut Ctx, payload: &[u8]) -> Result<(), End> {
    let Some(load) = ctx.config.echo else {
        return Ok(());
    };
    let now = ctx.now_ns;
    let expected_seq = conn.echo_received;
    let ok = echo_matches(payload, load.message_size, expected_seq, conn.local_index);
    conn.echo_received += 1;
    let mut rtt_us = None;
    if let Some(echo) = ctx.report.echo.as_mut() {
        echo.received += 1;
        echo.bytes_received += payload.len() as u64;
        if ok {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&payload[8..ECHO_HEADER]);
            let us = now.saturating_sub(u64::from_be_bytes(sent)) / 1000;
            echo.rtt.record_us(us);
            rtt_us = Some(us);
        } else {
            echo.mismatches += 1;
        }
    }
    if let Some(us) = rtt_us {
        ctx.record_main(MainLatency::Echo, us, ctx.now_unix_ns);
    }
    if load.message_rate <= 0.0 && ctx.holding() && !ctx.finish_requested {
        send_echo(conn, ctx, load.message_size)?;
    }
    Ok(())
}

/// A connection's deadline passed.
fn on_timer(conn: &mut Conn, ctx: &mut Ctx) -> Result<(), End> {
    let now = ctx.now_ns;
    match conn.state {
        State::Connecting => Err(fault("timeout")),
        State::Handshaking => Err(fault("handshake_timeout")),
        State::Subscribing => Err(fault("subscribe_timeout")),
        State::Closing => Err(fault("close_timeout")),
        State::Open => {
            if now >= conn.next_client_ping_ns {
                if let Some(interval) = ctx.config.client_ping_interval {
                    send_frame(
                        conn,
                        ctx,
                        OpCode::Control(Control::Ping),
                        &now.to_be_bytes(),
                    )?;
                    ctx.report.pings.client_sent += 1;
                    conn.next_client_ping_ns =
                        next_on_schedule(conn.next_client_ping_ns, duration_ns(interval), now);
                } else {
                    conn.next_client_ping_ns = NEVER;
                }
            }
            if now >= conn.next_echo_ns {
                let due = conn.next_echo_ns;
                conn.next_echo_ns = NEVER;
                if let (Some(load), true) = (ctx.config.echo, ctx.holding()) {
                    send_echo(conn, ctx, load.message_size)?;
                    let period = rate_period_ns(load.message_rate);
                    if period != NEVER {
                        conn.next_echo_ns = next_on_schedule(due, period, now);
                    }
                }
            }
            Ok(())
        }
    }
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
    fn rate_schedules() {
        assert_eq!(due_count(0, 1000.0, 0), 1, "the first event is due at once");
        assert_eq!(due_count(0, 1000.0, 999_999), 1);
        assert_eq!(due_count(0, 1000.0, 1_000_000), 2);
        assert_eq!(due_count(5, 1000.0, 4), 0);
        assert_eq!(due_count(0, 0.0, 1 << 40), 0);
        assert_eq!(rate_due_ns(0, 1000.0, 3), 3_000_000);
        assert_eq!(rate_due_ns(0, 0.0, 3), NEVER);
        assert_eq!(rate_period_ns(0.0), NEVER);
        assert_eq!(rate_period_ns(4.0), 250_000_000);
        assert_eq!(next_on_schedule(100, 10, 101), 110, "keeps the phase");
        assert_eq!(next_on_schedule(100, 10, 150), 160, "no catch-up burst");
    }

    #[test]
    fn echo_payloads_verify_and_detect_corruption() {
        let mut payload = Vec::new();
        fill_echo(&mut payload, 64, 9, 123, 77);
        assert_eq!(payload.len(), 64);
        assert!(echo_matches(&payload, 64, 9, 77));
        assert!(!echo_matches(&payload, 64, 10, 77), "wrong sequence");
        assert!(!echo_matches(&payload, 65, 9, 77), "wrong length");
        payload[40] ^= 1;
        assert!(!echo_matches(&payload, 64, 9, 77), "flipped bit");
        fill_echo(&mut payload, ECHO_HEADER, 1, 2, 3);
        assert!(echo_matches(&payload, ECHO_HEADER, 1, 3));
    }

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
    fn push_messages_parse_without_copying_names() {
        let ack: PushMessage<'_> =
            serde_json::from_slice(br#"{"op":"subscribed","channel":"lt-3"}"#).unwrap();
        assert_eq!(ack.op.as_deref(), Some("subscribed"));
        assert!(matches!(ack.channel, Some(Text(Cow::Borrowed("lt-3")))));
        let escaped: PushMessage<'_> =
            serde_json::from_slice(br#"{"channel":"lt-\u0033"}"#).unwrap();
        assert_eq!(escaped.channel.as_deref(), Some("lt-3"));
        let delivery: PushMessage<'_> = serde_json::from_slice(
            br#"{"channel":"lt-3","seq":17,"data":{"t":1700000000000000000,"i":4,"pad":"xx"}}"#,
        )
        .unwrap();
        assert_eq!(delivery.seq, Some(17));
        assert_eq!(
            delivery.data.and_then(|d| d.t),
            Some(1_700_000_000_000_000_000)
        );
    }

    #[test]
    fn conn_stays_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 192,
            "Conn grew to {} bytes",
            std::mem::size_of::<Conn>()
        );
    }
}
