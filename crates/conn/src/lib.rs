//! The sans-IO per-connection WebSocket state machine of pingwheel.
//!
//! Bytes and `now` go in; bytes to send, the next deadline and events come out.
//! Nothing here reads a clock or touches a socket: the gateway's worker
//! (`crates/gateway/src/worker/`) does both, and tests drive a [`Conn`] with a fake
//! clock. The crate's dependencies keep it that way: `pingwheel-proto`, `bytes`,
//! tungstenite's frame types and the (std-only) timer wheel, nothing with a runtime, a
//! socket, metrics or logging.
//!
//! | module | what |
//! |---|---|
//! | this one | [`Conn`], [`ConnConfig`], [`ConnEvent`], the lifecycle below |
//! | [`keepalive`] | **where pings are scheduled**: interval, timeout, jitter, slack |
//! | [`outbound`] | the per-connection output queue of whole frames |
//! | [`clock`] | [`clock::TickClock`]: `Instant` ↔ wheel [`wheel::Tick`], deadlines rounded up |
//! | [`timer`] | the connection's one wheel entry: the tick its next deadline is filed under (ping slack included), re-filed only when it moved |
//!
//! # Calling a `Conn` (quinn-proto's taxonomy)
//!
//! * **Input** — `handle_input` (bytes read from the socket, unmasked in place),
//!   `handle_timeout` (a wheel timer fired; early or repeated calls do nothing),
//!   `handle_eof`, `handle_io_error`.
//! * **Commands** — `accept`/`reject` (answer an [`ConnEvent::UpgradeRequested`]),
//!   `send` (a push delivery), `close` (e.g. shutdown with 1001).
//! * **Output** — after any input or command, in this order: handle the events pushed
//!   into the caller's `Vec<ConnEvent>` (they may lead to commands), write
//!   `io_slices` and report `consume_output`, shut the write half down when
//!   `wants_write_shutdown`, drop the socket when `is_done`, and file
//!   `poll_timeout` in the timer wheel. Read the socket only while `wants_read`: once
//!   it is false, stop asking for readability too (the bytes are not wanted, and
//!   leaving them unread lets TCP flow control stop the peer).
//!
//! Timestamps passed in must never go backwards.
//!
//! # Lifecycle
//!
//! ```text
//!  Handshake ──request──▶ AwaitingDecision ──accept──▶ Open ──close()──▶ ClosingByUs
//!      │                        │ reject                 │  peer Close / error     │ peer Close
//!      │ timeout/EOF            ▼                        ▼                          ▼
//!      └──────────────────▶ Draining ◀──────────────────────────────────────────────┘
//!                               │ output flushed, write half shut; then at once after a
//!                               │ complete closing handshake, else at EOF or close_timeout
//!                               ▼
//!                              Done  (a ping timeout jumps straight here)
//!                               ▲
//!  Open ──evict() / output overflow──▶ Evicting ──EVICTION_GRACE (nothing read)──┘
//! ```
//!
//! # Eviction
//!
//! A peer failed for abuse — it kept sending without reading our answers until they
//! passed `max_queued_bytes` ([`CloseReason::WriteOverflow`]), or flooded past its
//! inbound rate ([`CloseReason::PolicyViolation`]), both 1008 — is not worth another
//! byte of input: [`Conn::evict`] queues the Close, stops reading (`wants_read` turns
//! false, so the worker stops polling for input), shuts the write half once the Close
//! is written, and drops the socket [`EVICTION_GRACE`] after the decision (at most
//! `close_timeout`), whether or not the peer read it. A lingering close (reading and
//! discarding until the peer's EOF) would keep paying for a flooder for the whole
//! `close_timeout`; the grace costs a descriptor and no CPU. It is not shorter because
//! dropping a socket with unread input resets it, and a peer that is still writing
//! when the reset arrives may fail before it reads the Close it was already sent.
//!
//! # Memory
//!
//! An idle open connection holds no heap memory: the frame reader keeps bytes only
//! for a partial frame or message, the output queue only for unsent bytes, and the
//! request buffer only for a partial upgrade request. Events are pushed into the
//! worker's vector, and the settings ([`ConnConfig`]) are passed by reference on every
//! call instead of being stored per connection.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub mod clock;
pub mod keepalive;
pub mod outbound;
pub mod timer;

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingwheel_proto::frame::{encode_close, encode_frame, frame_len};
pub use pingwheel_proto::handshake::UpgradeRequest;
use pingwheel_proto::handshake::{parse_request, write_accept, write_refusal};
use pingwheel_proto::inbound::{Flow, Inbound, Limits, MessageReader, ReadError};
pub use pingwheel_proto::{CloseReason, HandshakeFailure};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use self::keepalive::{Keepalive, KeepaliveConfig, PongOutcome};
use self::outbound::Outbound;

/// How long an evicted connection (see [the module docs](self#eviction)) keeps its
/// socket for the peer to read the Close frame; `close_timeout` when that is shorter.
/// Nothing is read meanwhile.
pub const EVICTION_GRACE: Duration = Duration::from_secs(1);

/// Settings shared by every connection of a worker (passed in, never stored per connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnConfig {
    /// Ping interval and timeout.
    pub keepalive: KeepaliveConfig,
    /// The upgrade request must be complete within this; `None` waits forever.
    pub open_timeout: Option<Duration>,
    /// How long the closing handshake (and the lingering after it) may take.
    pub close_timeout: Duration,
    /// Largest message (and frame) accepted; larger closes with 1009.
    pub max_message_size: usize,
    /// Largest amount of unsent output before the connection is closed.
    pub max_queued_bytes: usize,
    /// Largest HTTP request head; larger is refused with 431.
    pub max_handshake_size: usize,
    /// Echo every data message back (conformance and benchmark runs).
    pub echo: bool,
}

impl Default for ConnConfig {
    /// The gateway's embedded defaults.
    fn default() -> Self {
        ConnConfig {
            keepalive: KeepaliveConfig::default(),
            open_timeout: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_queued_bytes: 1 << 20,
            max_handshake_size: 8 << 10,
            echo: false,
        }
    }
}

/// A complete data message from the peer (only when not echoing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Text (UTF-8 validated) or binary.
    pub text: bool,
    /// The payload.
    pub data: Vec<u8>,
}

/// Something the worker must act on or count.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// A valid upgrade request arrived: answer with [`Conn::accept`] or [`Conn::reject`]
    /// before feeding more input.
    UpgradeRequested(Box<UpgradeRequest>),
    /// The 101 response is queued; keepalive is running.
    Opened,
    /// The upgrade failed (refused, timed out, or the peer left).
    HandshakeFailed(HandshakeFailure),
    /// A data message (echo mode off).
    Message(Message),
    /// A data message of `len` payload bytes was received and echoed (echo mode on).
    Echoed {
        /// Payload length.
        len: usize,
    },
    /// A keepalive Ping was queued.
    PingSent,
    /// A Pong arrived.
    Pong(PongOutcome),
    /// The connection's fate is decided; emitted exactly once per connection. The
    /// socket lives on until [`Conn::is_done`] (closing handshake, lingering).
    Closed(CloseReason),
}

/// Where a connection is in its life (see the module docs for the diagram).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// The request is complete; waiting for `accept` or `reject`.
    AwaitingDecision,
    /// WebSocket open: messages flow, keepalive runs.
    Open,
    /// We sent a Close frame and wait for the peer's.
    ClosingByUs,
    /// Nothing more to say: flush, shut the write half, discard input until EOF or the deadline.
    Draining,
    /// Failed for abuse: read nothing more; flush the Close, shut the write half, drop at
    /// the deadline ([`EVICTION_GRACE`]).
    Evicting,
    /// Drop the socket.
    Done,
}

/// One WebSocket connection's protocol state. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    /// Our write half has been shut down (in `Draining`).
    write_shut: bool,
    /// Both Close frames were exchanged: once ours is flushed and FIN sent, the socket
    /// can go without lingering (the peer has nothing more to send).
    close_complete: bool,
    /// The phase deadline: `open_timeout` while handshaking, `close_timeout` while closing.
    deadline: Option<Instant>,
    keepalive: Keepalive,
    reader: MessageReader,
    out: Outbound,
    /// A partial request head (`Handshake`), or bytes that followed it (`AwaitingDecision`).
    /// Empty (no heap) otherwise.
    pending_input: Vec<u8>,
}

impl Conn {
    /// A freshly accepted connection at `now`, waiting for its upgrade request.
    pub fn new(cfg: &ConnConfig, now: Instant) -> Conn {
        Conn {
            phase: Phase::Handshake,
            write_shut: false,
            close_complete: false,
            deadline: cfg.open_timeout.map(|t| now + t),
            keepalive: Keepalive::default(),
            reader: MessageReader::new(),
            out: Outbound::default(),
            pending_input: Vec::new(),
        }
    }

    // ---- (A) getters ----

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True while the WebSocket is open (messages may be sent).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True when the socket should be dropped (after one last attempt to flush output).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True while input is wanted: false once evicted (see the module docs) or done.
    /// The worker reads the socket only while this holds.
    pub fn wants_read(&self) -> bool {
        !matches!(self.phase, Phase::Evicting | Phase::Done)
    }

    /// True when output is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Unsent output bytes.
    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes()
    }

    /// Heap bytes held for partial input (request head or frame/message).
    pub fn buffered_input_bytes(&self) -> usize {
        self.pending_input.capacity() + self.reader.buffered_bytes()
    }

    /// True when the worker should `shutdown(Write)` the socket now and then call
    /// [`Conn::on_write_shutdown`].
    pub fn wants_write_shutdown(&self) -> bool {
        matches!(self.phase, Phase::Draining | Phase::Evicting)
            && !self.write_shut
            && self.out.is_empty()
    }

    /// The earliest instant at which [`Conn::handle_timeout`] has work to do.
    ///
    /// Changes only after `handle_*` calls or commands; the worker re-files its timer
    /// only when the answer moved.
    #[must_use]
    pub fn poll_timeout(&self, cfg: &ConnConfig) -> Option<Instant> {
        match self.phase {
            Phase::Open => self.keepalive.poll_timeout(&cfg.keepalive),
            Phase::Done => None,
            _ => self.deadline,
        }
    }

    /// How late the [`Conn::poll_timeout`] deadline may be served without harm: the
    /// ping slack when the next deadline is a keepalive Ping (see [`keepalive`]), zero
    /// for every other deadline. The worker uses it to batch Pings.
    pub fn timeout_slack(&self, cfg: &ConnConfig) -> Duration {
        match self.phase {
            Phase::Open => self.keepalive.timeout_slack(&cfg.keepalive),
            _ => Duration::ZERO,
        }
    }

    /// While a keepalive Ping awaits its Pong: the slot of the Ping after it (see
    /// [`keepalive::Keepalive::ping_after_pong`]); `None` otherwise. Used by
    /// [`timer::due_tick`] only: it is not a deadline of its own.
    pub fn ping_after_pong(&self, cfg: &ConnConfig) -> Option<Instant> {
        match self.phase {
            Phase::Open => self.keepalive.ping_after_pong(&cfg.keepalive),
            _ => None,
        }
    }

    /// Fills `iov` with the unsent output, oldest first; returns how many slices are used.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        self.out.io_slices(iov)
    }

    // ---- (B) input ----

    /// Feeds bytes read from the socket at `now`. `input` is unmasked in place.
    pub fn handle_input(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        input: &mut [u8],
        events: &mut Vec<ConnEvent>,
    ) {
        match self.phase {
            Phase::Handshake => self.input_handshake(cfg, now, input, events),
            // The worker answers an upgrade request before reading again; keep any
            // pipelined bytes for after `accept`, bounded like a request head.
            Phase::AwaitingDecision => {
                if self.pending_input.len() + input.len() > cfg.max_message_size {
                    self.fail(
                        cfg,
                        now,
                        CloseReason::ProtocolError,
                        1002,
                        "no upgrade yet",
                        events,
                    );
                } else {
                    self.pending_input.extend_from_slice(input);
                }
            }
            Phase::Open | Phase::ClosingByUs => self.input_frames(cfg, now, input, events),
            Phase::Draining | Phase::Evicting | Phase::Done => {}
        }
    }

    /// The peer closed its write half (read returned 0).
    pub fn handle_eof(&mut self, events: &mut Vec<ConnEvent>) {
        self.lost(CloseReason::Abnormal, events);
    }

    /// A socket read or write failed with `err`.
    pub fn handle_io_error(&mut self, err: &io::Error, events: &mut Vec<ConnEvent>) {
        let reason = match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => CloseReason::Abnormal,
            _ => CloseReason::IoError,
        };
        // Whatever is still queued can never be delivered.
        self.out.consume(self.out.queued_bytes());
        self.lost(reason, events);
    }

    /// Runs whatever is due at `now`: a Ping, a Pong deadline, a handshake or close
    /// deadline. Spurious or repeated calls do nothing.
    pub fn handle_timeout(&mut self, cfg: &ConnConfig, now: Instant, events: &mut Vec<ConnEvent>) {
        match self.phase {
            Phase::Open => {
                let ka = &cfg.keepalive;
                if self.keepalive.timed_out(ka, now) {
                    self.queue_close(1011, "keepalive ping timeout");
                    self.set_closed(CloseReason::PingTimeout, events);
                    // An unresponsive peer gets no lingering.
                    self.phase = Phase::Done;
                } else if let Some(payload) = self.keepalive.poll_ping(ka, now) {
                    self.queue_frame(OpCode::Control(Control::Ping), &payload);
                    events.push(ConnEvent::PingSent);
                }
            }
            Phase::Handshake | Phase::AwaitingDecision => {
                if self.deadline.is_some_and(|d| now >= d) {
                    let failure = HandshakeFailure::Timeout;
                    self.queue_refusal(failure, "request head not received in time");
                    events.push(ConnEvent::HandshakeFailed(failure));
                    self.set_closed(CloseReason::HandshakeTimeout, events);
                    self.phase = Phase::Done;
                }
            }
            Phase::ClosingByUs | Phase::Draining | Phase::Evicting => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    // ---- (C) commands ----

    /// Accepts the upgrade: queues the 101 response (echoing `protocol` if chosen)
    /// and starts keepalive. `jitter` in `[0, 1)` spreads the first Ping
    /// (see [`keepalive`]). Does nothing unless an upgrade request is pending.
    pub fn accept(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        key: &str,
        protocol: Option<&str>,
        jitter: f64,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.phase != Phase::AwaitingDecision {
            debug_assert!(false, "accept in phase {:?}", self.phase);
            return;
        }
        let mut response = Vec::with_capacity(160);
        write_accept(key, protocol, &mut response);
        self.out.push(Bytes::from(response));
        self.phase = Phase::Open;
        self.deadline = None;
        self.keepalive.start(&cfg.keepalive, now, jitter);
        events.push(ConnEvent::Opened);
        let mut early = std::mem::take(&mut self.pending_input);
        if !early.is_empty() {
            self.input_frames(cfg, now, &mut early, events);
        }
    }

    /// Refuses the upgrade with `failure`'s HTTP status and `message` as the body,
    /// then drains the connection. Does nothing unless an upgrade request is pending.
    pub fn reject(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        failure: HandshakeFailure,
        message: &str,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.phase != Phase::AwaitingDecision {
            debug_assert!(false, "reject in phase {:?}", self.phase);
            return;
        }
        self.refuse(cfg, now, failure, message, events);
    }

    /// Queues a complete, shared frame (a push delivery). If that would take the
    /// backlog past `max_queued_bytes` (see [`Outbound::would_overflow`]), the
    /// connection is closed as a slow consumer (1013) instead and `false` is returned;
    /// also `false` when not open.
    pub fn send(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        frame: Bytes,
        events: &mut Vec<ConnEvent>,
    ) -> bool {
        let slow = (CloseReason::SlowConsumer, 1013, "slow consumer");
        self.queue_bounded(cfg, now, frame, slow, events)
    }

    /// Queues an owned frame for this connection only (a protocol reply). A peer that
    /// sends requests without reading the replies is evicted for write overflow (1008).
    pub fn send_owned(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        frame: Vec<u8>,
        events: &mut Vec<ConnEvent>,
    ) -> bool {
        let overflow = (CloseReason::WriteOverflow, 1008, "output queue full");
        self.queue_bounded(cfg, now, Bytes::from(frame), overflow, events)
    }

    fn queue_bounded(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        frame: Bytes,
        (reason, code, why): (CloseReason, u16, &str),
        events: &mut Vec<ConnEvent>,
    ) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        if self.out.would_overflow(frame.len(), cfg.max_queued_bytes) {
            self.overflow(cfg, now, reason, code, why, events);
            return false;
        }
        self.out.push(frame);
        true
    }

    /// Starts the closing handshake with `code` (e.g. 1001 at shutdown). Handshaking
    /// connections are simply dropped. Does nothing once closing.
    pub fn close(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        reason: CloseReason,
        code: u16,
        events: &mut Vec<ConnEvent>,
    ) {
        match self.phase {
            Phase::Open => {
                self.queue_close(code, "");
                self.set_closed(reason, events);
                self.linger(Phase::ClosingByUs, cfg, now);
            }
            Phase::Handshake | Phase::AwaitingDecision => {
                self.set_closed(reason, events);
                self.phase = Phase::Done;
            }
            Phase::ClosingByUs | Phase::Draining | Phase::Evicting | Phase::Done => {}
        }
    }

    /// Fails an open connection for abuse with `code` (1008) and `reason`: drops the
    /// queued output that has not started, queues the Close, stops reading, and ends the
    /// connection [`EVICTION_GRACE`] later (see the module docs). `reason` is reported
    /// once, as for any close. Does nothing unless open.
    pub fn evict(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        reason: CloseReason,
        code: u16,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        let why = match reason {
            CloseReason::WriteOverflow => "output queue full",
            _ => "",
        };
        self.out.discard_unstarted();
        self.queue_close(code, why);
        self.set_closed(reason, events);
        self.pending_input = Vec::new();
        self.phase = Phase::Evicting;
        self.deadline = Some(now + cfg.close_timeout.min(EVICTION_GRACE));
    }

    /// Closes an open connection as a slow consumer (1013), as [`Conn::send`] does when
    /// its queue passes `max_queued_bytes`: for a caller that holds more of this
    /// connection's output than the queue shows (the gateway's TLS layer counts its
    /// unsent ciphertext too). Does nothing unless open.
    pub fn overflowed(&mut self, cfg: &ConnConfig, now: Instant, events: &mut Vec<ConnEvent>) {
        if self.phase != Phase::Open {
            return;
        }
        self.overflow(
            cfg,
            now,
            CloseReason::SlowConsumer,
            1013,
            "slow consumer",
            events,
        );
    }

    // ---- (D) output bookkeeping ----

    /// Records that `written` bytes of the output went to the socket.
    pub fn consume_output(&mut self, written: usize) {
        self.out.consume(written);
    }

    /// Records that the write half was shut down. After a completed closing handshake
    /// that ends the connection; after a failure or refusal it lingers, discarding input
    /// until the peer's EOF or `close_timeout`, so the peer gets to read our last words
    /// (an evicted connection waits out its grace without reading).
    pub fn on_write_shutdown(&mut self) {
        self.write_shut = true;
        if self.close_complete && self.phase == Phase::Draining {
            self.phase = Phase::Done;
        }
    }

    // ---- internals ----

    fn input_handshake(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        input: &mut [u8],
        events: &mut Vec<ConnEvent>,
    ) {
        // Fast path: the whole request in one read, parsed straight from the
        // worker's buffer with no per-connection copy.
        let parsed = if self.pending_input.is_empty() {
            parse_request(input, cfg.max_handshake_size).map(|r| r.map(|(n, req)| (n, req, false)))
        } else {
            self.pending_input.extend_from_slice(input);
            parse_request(&self.pending_input, cfg.max_handshake_size)
                .map(|r| r.map(|(n, req)| (n, req, true)))
        };
        match parsed {
            Ok(None) => {
                if self.pending_input.is_empty() {
                    self.pending_input.extend_from_slice(input);
                }
            }
            Ok(Some((head_len, req, buffered))) => {
                if buffered {
                    self.pending_input.drain(..head_len);
                    self.pending_input.shrink_to_fit();
                } else {
                    self.pending_input.extend_from_slice(&input[head_len..]);
                }
                self.phase = Phase::AwaitingDecision;
                events.push(ConnEvent::UpgradeRequested(Box::new(req)));
            }
            Err(refusal) => self.refuse(cfg, now, refusal.failure, refusal.message, events),
        }
    }

    fn input_frames(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        input: &mut [u8],
        events: &mut Vec<ConnEvent>,
    ) {
        let limits = Limits {
            max_message_size: cfg.max_message_size,
        };
        let Conn {
            phase,
            keepalive,
            reader,
            out,
            ..
        } = self;
        let open = *phase == Phase::Open;
        let mut peer_close: Option<Option<u16>> = None;
        let mut overflow = false;
        let max_queued = cfg.max_queued_bytes;
        // Our replies (echoes, pongs) count against the output bound like anything else.
        let reply = |out: &mut Outbound, opcode: OpCode, payload: &[u8]| -> bool {
            if out.would_overflow(frame_len(payload.len()), max_queued) {
                return false;
            }
            push_frame(out, opcode, payload);
            true
        };
        let result = reader.feed(input, &limits, |item| {
            let replied = match item {
                Inbound::Text(text) if open && cfg.echo => {
                    let ok = reply(out, OpCode::Data(Data::Text), text.as_bytes());
                    if ok {
                        events.push(ConnEvent::Echoed { len: text.len() });
                    }
                    ok
                }
                Inbound::Binary(data) if open && cfg.echo => {
                    let ok = reply(out, OpCode::Data(Data::Binary), data);
                    if ok {
                        events.push(ConnEvent::Echoed { len: data.len() });
                    }
                    ok
                }
                Inbound::Text(text) if open => {
                    let data = text.as_bytes().to_vec();
                    events.push(ConnEvent::Message(Message { text: true, data }));
                    true
                }
                Inbound::Binary(data) if open => {
                    let data = data.to_vec();
                    events.push(ConnEvent::Message(Message { text: false, data }));
                    true
                }
                Inbound::Ping(payload) if open => {
                    reply(out, OpCode::Control(Control::Pong), payload)
                }
                Inbound::Pong(payload) if open => {
                    let outcome = keepalive.on_pong(now, payload);
                    events.push(ConnEvent::Pong(outcome));
                    true
                }
                // While closing, data and control frames other than Close are discarded.
                Inbound::Text(_) | Inbound::Binary(_) | Inbound::Ping(_) | Inbound::Pong(_) => true,
                Inbound::Close { code, .. } => {
                    peer_close = Some(code);
                    return Flow::Stop;
                }
            };
            if replied {
                Flow::Continue
            } else {
                overflow = true;
                Flow::Stop
            }
        });
        if overflow {
            self.evict(cfg, now, CloseReason::WriteOverflow, 1008, events);
            return;
        }
        match result {
            Err(err) => {
                let reason = match err {
                    ReadError::TooBig => CloseReason::MessageTooBig,
                    _ => CloseReason::ProtocolError,
                };
                self.fail(cfg, now, reason, err.close_code(), err.reason(), events);
            }
            Ok(_) => {
                if let Some(code) = peer_close {
                    self.on_peer_close(cfg, now, code, events);
                }
            }
        }
    }

    fn on_peer_close(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        code: Option<u16>,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.phase == Phase::Open {
            // Echo the peer's status code (RFC 6455 §5.5.1); an empty Close gets an empty Close.
            let mut frame = Vec::with_capacity(4);
            match code {
                Some(code) => encode_close(code, "", &mut frame),
                None => encode_frame(OpCode::Control(Control::Close), &[], &mut frame),
            }
            self.out.push(Bytes::from(frame));
            self.set_closed(CloseReason::Normal, events);
        }
        // Open or ClosingByUs: the closing handshake is complete; the server closes TCP first.
        self.close_complete = true;
        self.linger(Phase::Draining, cfg, now);
    }

    /// Fails the connection (RFC 6455 §7.1.7): a Close frame, then drain and close TCP.
    fn fail(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        reason: CloseReason,
        code: u16,
        why: &str,
        events: &mut Vec<ConnEvent>,
    ) {
        if self.phase == Phase::Open {
            self.queue_close(code, why);
        }
        self.set_closed(reason, events);
        self.linger(Phase::Draining, cfg, now);
    }

    /// The peer stopped reading: cut the queue at a frame boundary and append a Close
    /// frame. A slow consumer then drains like a failed connection: the Close goes out
    /// if the peer ever reads again, and the socket goes at EOF or after
    /// `close_timeout`; one that overflowed with our answers to its own traffic
    /// ([`CloseReason::WriteOverflow`]) is evicted instead. What either holds meanwhile
    /// is at most the partly written frame plus the Close.
    fn overflow(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        reason: CloseReason,
        code: u16,
        why: &str,
        events: &mut Vec<ConnEvent>,
    ) {
        // Only an open connection queues output, so `fail` queues the Close.
        debug_assert_eq!(self.phase, Phase::Open);
        if reason == CloseReason::WriteOverflow {
            return self.evict(cfg, now, reason, code, events);
        }
        self.out.discard_unstarted();
        self.fail(cfg, now, reason, code, why, events);
    }

    fn refuse(
        &mut self,
        cfg: &ConnConfig,
        now: Instant,
        failure: HandshakeFailure,
        message: &str,
        events: &mut Vec<ConnEvent>,
    ) {
        self.queue_refusal(failure, message);
        self.pending_input = Vec::new();
        events.push(ConnEvent::HandshakeFailed(failure));
        self.set_closed(CloseReason::Rejected, events);
        self.linger(Phase::Draining, cfg, now);
    }

    /// The socket is gone (EOF or error).
    fn lost(&mut self, reason: CloseReason, events: &mut Vec<ConnEvent>) {
        if matches!(self.phase, Phase::Handshake | Phase::AwaitingDecision) {
            events.push(ConnEvent::HandshakeFailed(HandshakeFailure::Disconnected));
        }
        self.set_closed(reason, events);
        self.pending_input = Vec::new();
        self.phase = Phase::Done;
    }

    /// Moves to a closing `phase` that ends by `close_timeout` at the latest.
    fn linger(&mut self, phase: Phase, cfg: &ConnConfig, now: Instant) {
        debug_assert!(matches!(phase, Phase::ClosingByUs | Phase::Draining));
        self.phase = phase;
        self.deadline = Some(now + cfg.close_timeout);
    }

    /// Stops keepalive (a closing connection sends no Pings and expects no Pongs) and
    /// emits `Closed(reason)` if the connection's fate was not decided yet.
    fn set_closed(&mut self, reason: CloseReason, events: &mut Vec<ConnEvent>) {
        self.keepalive.stop();
        if matches!(
            self.phase,
            Phase::Handshake | Phase::AwaitingDecision | Phase::Open
        ) {
            events.push(ConnEvent::Closed(reason));
        }
    }

    fn queue_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        push_frame(&mut self.out, opcode, payload);
    }

    fn queue_close(&mut self, code: u16, reason: &str) {
        let mut frame = Vec::with_capacity(4 + reason.len());
        encode_close(code, reason, &mut frame);
        self.out.push(Bytes::from(frame));
    }

    fn queue_refusal(&mut self, failure: HandshakeFailure, message: &str) {
        let mut response = Vec::with_capacity(160 + message.len());
        write_refusal(failure, message, &mut response);
        self.out.push(Bytes::from(response));
    }
}

fn push_frame(out: &mut Outbound, opcode: OpCode, payload: &[u8]) {
    let mut frame = Vec::with_capacity(frame_len(payload.len()));
    encode_frame(opcode, payload, &mut frame);
    out.push(Bytes::from(frame));
}

#[cfg(test)]
mod tests;
