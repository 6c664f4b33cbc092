//! The sans-IO client: one WebSocket client connection as a state machine. Bytes and
//! [`Now`] go in; frames to send come out in an [`Outbox`], measurements go into the
//! [`Shared`] tally, the next deadline comes out of [`Client::poll_timeout`], and how
//! the client ended comes back as an [`End`]. It never touches a socket or reads a
//! clock: [`crate::engine`] does both, and the tests drive it on a fake clock.
//!
//! # Life
//!
//! `Connecting` → ([`Client::handle_connected`]: upgrade request queued) `Handshaking`
//! → (valid `101`) `Open`, or `Subscribing` until the scenario sees its
//! acknowledgement, or `Closing` when the scenario closes at once (churn) → ended.
//! Each of `Connecting`, `Handshaking`, `Subscribing` and `Closing` has one deadline;
//! when it passes the client fails with `timeout`, `handshake_timeout`,
//! `subscribe_timeout` or `close_timeout`.
//!
//! # Call order (the loop's side)
//!
//! 1. [`Client::new`] once the socket is registered; [`Client::handle_connected`] once
//!    it is connected.
//! 2. [`Client::handle_input`] with every chunk read, [`Client::handle_timeout`] when
//!    [`Client::poll_timeout`] passed (early or repeated calls do nothing),
//!    [`Client::handle_hold`] when the hold begins.
//! 3. After each call: write the [`Outbox`] to the socket — also when the call
//!    returned an [`End`] (a close echo goes out best-effort) — then end the client
//!    with [`Client::end`] or re-file its deadline.
//! 4. At the end of the run, [`Client::finish`] on every client left.
//!
//! # What every client does
//!
//! Answers server pings with pongs (and counts them and their intervals), sends client
//! pings at `--client-ping-interval` and measures their round trip, reassembles
//! fragmented messages, echoes a server's close. What a connection does beyond that is
//! its scenario's ([`crate::scenario`]): the client calls it through [`Load`] and
//! applies the [`Transition`] it asks for.
//!
//! # Memory
//!
//! A `Client` is about 140 bytes. It keeps heap bytes only for a partial handshake
//! response or frame, or a fragmented message, and frees them once complete; output
//! lives in the loop's one [`Outbox`].

mod outbox;
mod shared;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use outbox::Outbox;
pub use shared::Shared;

use crate::codec::{self, Control, Data, OpCode};
use crate::handshake;
use crate::pace::{NEVER, duration_ns, next_on_schedule};
use crate::scenario::Load;
use crate::settings::MainLatency;

/// One moment on both clocks the client needs: the engine's monotonic nanoseconds
/// (deadlines, RTTs) and Unix nanoseconds (the publish time in push deliveries is Unix
/// time). Read by the loop, passed in; tests make them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Nanoseconds since the engine started.
    pub ns: u64,
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: u64,
}

/// How a client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The run ended it on purpose (a churn cycle completed).
    Done,
    /// Failed (before the upgrade completed) or lost (after), with a cause label.
    Fault(Cow<'static, str>),
}

impl End {
    /// A fault with a fixed cause label.
    pub fn fault(cause: &'static str) -> Self {
        Self::Fault(Cow::Borrowed(cause))
    }
}

/// Where a client is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for the `101`.
    Handshaking,
    /// Upgraded, waiting for the scenario's acknowledgement (push).
    Subscribing,
    /// Usable.
    Open,
    /// We sent a close frame and wait for the server's.
    Closing,
}

/// What a scenario asks of the client after it handled an upgrade or a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changes.
    Stay,
    /// The client is usable (from `Handshaking` or `Subscribing`).
    Open,
    /// Wait for an acknowledgement before the client counts as usable.
    Subscribe,
    /// Send a close frame with this code and wait for the server's close.
    Close(u16),
    /// The client ends now, failed (while connecting or subscribing) or lost, with
    /// this cause (e.g. the server refused the subscribe).
    Fail(&'static str),
}

/// What a scenario hook may use: which client it acts for, the time, the engine's
/// shared state, and the outbox its frames go to.
#[derive(Debug)]
pub struct Turn<'a> {
    /// The client's index among this engine's clients (churn: its cycle number).
    pub local_index: u32,
    /// The client's state when the hook runs.
    pub state: State,
    /// The time of the call.
    pub now: Now,
    /// The engine's shared state.
    pub cx: &'a mut Shared,
    /// Where frames go.
    pub out: &'a mut Outbox,
}

/// A fragmented message being reassembled (rare, so boxed).
#[derive(Debug)]
struct Fragments {
    opcode: OpCode,
    data: Vec<u8>,
}

/// One client connection (see the module docs). Times are engine nanoseconds.
#[derive(Debug)]
pub struct Client {
    started_ns: u64,
    /// 0 until the upgrade completed.
    established_ns: u64,
    /// Deadline of the current non-`Open` state.
    state_deadline_ns: u64,
    /// 0 until the first server ping.
    last_ping_ns: u64,
    /// [`NEVER`] without `--client-ping-interval`.
    next_client_ping_ns: u64,
    nonce: [u8; 16],
    /// Bytes of a partial handshake response or frame; empty (unallocated) otherwise.
    inbuf: Vec<u8>,
    fragments: Option<Box<Fragments>>,
    /// The scenario's per-client state.
    load: Load,
    local_index: u32,
    /// Server pings received.
    pings: u32,
    state: State,
}

impl Client {
    /// A client whose TCP connect started at `now`; `local_index` comes from
    /// [`Shared::start_attempt`]. It is pending until it is usable or ended.
    pub fn new(local_index: u32, now: Now, cx: &mut Shared) -> Self {
        let mut nonce = [0u8; 16];
        cx.rng.fill(&mut nonce);
        cx.add_pending();
        Self {
            started_ns: now.ns,
            established_ns: 0,
            state_deadline_ns: now
                .ns
                .saturating_add(duration_ns(cx.config.connect_timeout)),
            last_ping_ns: 0,
            next_client_ping_ns: NEVER,
            nonce,
            inbuf: Vec::new(),
            fragments: None,
            load: Load::new(&cx.config),
            local_index,
            pings: 0,
            state: State::Connecting,
        }
    }

    /// Where the client is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the TCP connect has not completed yet.
    pub fn is_connecting(&self) -> bool {
        self.state == State::Connecting
    }

    /// Whether the client is not usable yet: connecting, upgrading or subscribing.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Handshaking | State::Subscribing
        )
    }

    /// Whether the upgrade completed.
    pub fn is_established(&self) -> bool {
        self.established_ns != 0
    }

    /// Server pings received.
    pub fn pings(&self) -> u32 {
        self.pings
    }

    /// Input bytes the client holds: a partial response or frame, a fragmented message.
    pub fn buffered_bytes(&self) -> usize {
        self.inbuf.len() + self.fragments.as_ref().map_or(0, |f| f.data.len())
    }

    /// The earliest time the client has work without input: its state's deadline, or
    /// once open its next client ping or scenario message; [`NEVER`] when nothing is due.
    pub fn poll_timeout(&self) -> u64 {
        match self.state {
            State::Open => self.next_client_ping_ns.min(self.load.poll_timeout()),
            _ => self.state_deadline_ns,
        }
    }

    /// The TCP connect completed: queues the upgrade request.
    pub fn handle_connected(&mut self, now: Now, cx: &mut Shared, out: &mut Outbox) {
        debug_assert_eq!(self.state, State::Connecting, "connected twice");
        self.state = State::Handshaking;
        let path = self.load.upgrade_path(self.local_index, now, cx);
        out.upgrade_request(&cx.config.host_header, &path, self.nonce);
    }

    /// Feeds bytes read from the socket. Complete units (the `101`, frames) are handled
    /// at once; a partial remainder stays buffered until the next call.
    pub fn handle_input(
        &mut self,
        now: Now,
        bytes: &[u8],
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<(), End> {
        if self.inbuf.is_empty() {
            let used = self.consume(now, bytes, cx, out)?;
            if used < bytes.len() {
                self.inbuf.extend_from_slice(&bytes[used..]);
            }
        } else {
            let mut buffered = std::mem::take(&mut self.inbuf);
            buffered.extend_from_slice(bytes);
            let used = self.consume(now, &buffered, cx, out)?;
            if used < buffered.len() {
                buffered.drain(..used);
                self.inbuf = buffered;
            }
            // Otherwise `buffered` drops here and the client holds no input bytes.
        }
        Ok(())
    }

    /// Runs what is due at `now`: a state's timeout fails the client; an open client
    /// sends its client ping and lets its scenario send what is due. Calls before
    /// [`Client::poll_timeout`] do nothing.
    pub fn handle_timeout(
        &mut self,
        now: Now,
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<(), End> {
        if self.state != State::Open {
            if now.ns < self.state_deadline_ns {
                return Ok(());
            }
            return Err(End::fault(match self.state {
                State::Connecting => "timeout",
                State::Handshaking => "handshake_timeout",
                State::Subscribing => "subscribe_timeout",
                State::Open | State::Closing => "close_timeout",
            }));
        }
        if now.ns >= self.next_client_ping_ns {
            if let Some(interval) = cx.config.client_ping_interval {
                out.frame(OpCode::Control(Control::Ping), &now.ns.to_be_bytes());
                cx.report.pings.client_sent += 1;
                self.next_client_ping_ns =
                    next_on_schedule(self.next_client_ping_ns, duration_ns(interval), now.ns);
            } else {
                self.next_client_ping_ns = NEVER;
            }
        }
        let mut turn = self.turn(now, cx, out);
        self.load.handle_timeout(&mut turn);
        Ok(())
    }

    /// The hold began (after [`Shared::start_hold`]): an open client's scenario may
    /// start its traffic.
    pub fn handle_hold(&mut self, now: Now, cx: &mut Shared) {
        if self.state == State::Open {
            self.load.handle_hold(now, cx);
        }
    }

    /// Accounts for how the client ended (failed or lost by cause, or the scenario's
    /// completion) and drops it.
    pub fn end(self, now: Now, end: End, cx: &mut Shared) {
        if self.is_pending() {
            cx.remove_pending();
        }
        let established = self.is_established();
        if established {
            cx.remove_open();
        }
        let age_ns = now.ns.saturating_sub(self.started_ns);
        self.load
            .on_end(self.state, self.local_index, &end, age_ns, cx);
        if let End::Fault(cause) = end {
            let causes = if established {
                &mut cx.report.lost_by_cause
            } else {
                &mut cx.report.failed_by_cause
            };
            *causes.entry(cause.into_owned()).or_default() += 1;
        }
    }

    /// At the end of the run: adds this client to the per-connection figures (pings,
    /// the `--expect-ping-interval` check, the scenario's outstanding work) and queues
    /// a close frame 1000 when it is upgraded and not closing. Returns whether it was
    /// established.
    pub fn finish(&self, now: Now, cx: &mut Shared, out: &mut Outbox) -> bool {
        if !self.is_established() {
            return false;
        }
        let pings = u64::from(self.pings);
        let report = &mut cx.report.pings;
        report.per_connection_min = Some(report.per_connection_min.map_or(pings, |m| m.min(pings)));
        report.per_connection_max = Some(report.per_connection_max.map_or(pings, |m| m.max(pings)));
        let expect_ns = cx.config.expect_ping_interval.map(duration_ns);
        if let Some(interval) = expect_ns.filter(|&i| i > 0) {
            let held = now.ns.saturating_sub(self.established_ns);
            if held >= 2 * interval {
                report.connections_checked += 1;
                if pings < (held / interval).saturating_sub(1) {
                    report.connections_below_expected += 1;
                }
            }
        }
        self.load.at_finish(cx);
        if matches!(self.state, State::Open | State::Subscribing) {
            out.close(Some(1000));
        }
        true
    }

    fn turn<'a>(&self, now: Now, cx: &'a mut Shared, out: &'a mut Outbox) -> Turn<'a> {
        Turn {
            local_index: self.local_index,
            state: self.state,
            now,
            cx,
            out,
        }
    }

    /// Consumes complete units (the handshake response, frames) from `buf`; returns how
    /// many bytes were used.
    fn consume(
        &mut self,
        now: Now,
        buf: &[u8],
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<usize, End> {
        let mut used = 0;
        while used < buf.len() {
            let rest = &buf[used..];
            if self.state == State::Handshaking {
                match handshake::parse_response(rest, self.nonce) {
                    Ok(None) => break,
                    Ok(Some(head_len)) => {
                        used += head_len;
                        self.on_established(now, cx, out)?;
                    }
                    Err(failure) => return Err(End::Fault(Cow::Owned(failure.cause()))),
                }
            } else {
                match codec::decode_frame(rest, cx.config.max_message_size) {
                    Ok(None) => break,
                    Ok(Some((frame, frame_len))) => {
                        used += frame_len;
                        self.on_frame(now, frame, cx, out)?;
                    }
                    Err(error) => return Err(End::fault(error.cause())),
                }
            }
        }
        Ok(used)
    }

    fn on_established(&mut self, now: Now, cx: &mut Shared, out: &mut Outbox) -> Result<(), End> {
        self.established_ns = now.ns;
        cx.add_open();
        cx.report.established += 1;
        let latency_us = now.ns.saturating_sub(self.started_ns) / 1000;
        cx.report.connect_latency.record_us(latency_us);
        cx.record_main(MainLatency::Connect, latency_us, now.unix_ns);
        if let Some(interval) = cx.config.client_ping_interval {
            let interval = duration_ns(interval).max(1);
            self.next_client_ping_ns = now.ns + cx.rng.u64(..interval) + 1;
        }
        let mut turn = self.turn(now, cx, out);
        let transition = self.load.on_upgraded(&mut turn);
        self.apply(transition, now, cx, out)
    }

    /// Moves to the state a scenario asked for.
    fn apply(
        &mut self,
        transition: Transition,
        now: Now,
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<(), End> {
        let next = match transition {
            Transition::Stay => return Ok(()),
            Transition::Fail(cause) => return Err(End::fault(cause)),
            Transition::Open => State::Open,
            Transition::Subscribe => State::Subscribing,
            Transition::Close(code) => {
                out.close(Some(code));
                self.state_deadline_ns = now
                    .ns
                    .saturating_add(duration_ns(cx.config.connect_timeout));
                State::Closing
            }
        };
        if self.is_pending() && next != State::Subscribing {
            cx.remove_pending();
        }
        self.state = next;
        Ok(())
    }

    fn on_frame(
        &mut self,
        now: Now,
        frame: codec::ServerFrame<'_>,
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<(), End> {
        match frame.opcode {
            OpCode::Control(Control::Ping) => {
                self.pings = self.pings.saturating_add(1);
                cx.report.pings.received += 1;
                if self.last_ping_ns != 0 {
                    let interval_us = (now.ns - self.last_ping_ns) / 1000;
                    if cx.publishing(now.ns) {
                        cx.report
                            .pings
                            .interval_after_publish
                            .record_us(interval_us);
                    } else {
                        cx.report.pings.interval.record_us(interval_us);
                    }
                }
                self.last_ping_ns = now.ns;
                out.frame(OpCode::Control(Control::Pong), frame.payload);
                Ok(())
            }
            OpCode::Control(Control::Pong) => {
                if let Ok(sent) = <[u8; 8]>::try_from(frame.payload) {
                    let sent_ns = u64::from_be_bytes(sent);
                    if sent_ns <= now.ns {
                        let rtt_us = (now.ns - sent_ns) / 1000;
                        cx.report.pings.client_rtt.record_us(rtt_us);
                        cx.record_main(MainLatency::ClientRtt, rtt_us, now.unix_ns);
                    }
                }
                Ok(())
            }
            OpCode::Control(Control::Close) => {
                if self.state == State::Closing {
                    return Err(End::Done);
                }
                // Echo the close (RFC 6455 §5.5.1), then count the client as lost.
                let code = codec::close_code(frame.payload);
                out.close(code);
                Err(End::Fault(match code {
                    Some(code) => Cow::Owned(format!("closed_by_server_{code}")),
                    None => Cow::Borrowed("closed_by_server"),
                }))
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(End::fault("protocol_error"))
            }
            OpCode::Data(Data::Continue) => {
                let Some(mut fragments) = self.fragments.take() else {
                    return Err(End::fault("protocol_error"));
                };
                if (fragments.data.len() + frame.payload.len()) as u64 > cx.config.max_message_size
                {
                    return Err(End::fault("message_too_big"));
                }
                fragments.data.extend_from_slice(frame.payload);
                if frame.fin {
                    self.on_message(now, fragments.opcode, &fragments.data, cx, out)?;
                } else {
                    self.fragments = Some(fragments);
                }
                Ok(())
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if self.fragments.is_some() {
                    return Err(End::fault("protocol_error"));
                }
                if frame.fin {
                    self.on_message(now, OpCode::Data(data), frame.payload, cx, out)?;
                } else {
                    self.fragments = Some(Box::new(Fragments {
                        opcode: OpCode::Data(data),
                        data: frame.payload.to_vec(),
                    }));
                }
                Ok(())
            }
        }
    }

    fn on_message(
        &mut self,
        now: Now,
        opcode: OpCode,
        payload: &[u8],
        cx: &mut Shared,
        out: &mut Outbox,
    ) -> Result<(), End> {
        let mut turn = self.turn(now, cx, out);
        let transition = self.load.on_message(&mut turn, opcode, payload);
        self.apply(transition, now, cx, out)
    }
}
