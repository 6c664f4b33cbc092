//! What a connection does beyond being a WebSocket client: one file per scenario, each
//! acting on the client through its hooks — it reads what the client received, queues
//! frames in the [`Outbox`](crate::client::Outbox) and returns a
//! [`Transition`] — never on a socket.
//!
//! * `idle`: nothing beyond what every client does (answer pings, client pings; see
//!   [`crate::client`]), so it has no file.
//! * [`push`]: the upgrade URL carries a token and channel; acknowledgements and
//!   deliveries are checked for order and timed.
//! * [`echo`]: self-verifying binary messages at a rate or closed-loop, timed.
//! * [`churn`]: close right after the upgrade (optionally after one text message) and
//!   time the whole cycle.
//!
//! # Adding a scenario
//!
//! Its settings go into [`crate::settings::EngineConfig`], its per-client state into a
//! [`Load`] variant, its hooks into a file here dispatched from [`Load`]'s methods.
//! The loop ([`crate::engine`]) does not change: it only opens connections (at the ramp
//! rate, and during the hold at [`crate::settings::EngineConfig::hold_open_rate`]),
//! feeds the clients and writes their outboxes.

pub mod churn;
pub mod echo;
pub mod push;

use std::borrow::Cow;

use crate::client::{End, Now, Shared, State, Transition, Turn};
use crate::codec::{Data, OpCode};
use crate::pace::NEVER;
use crate::settings::EngineConfig;

/// A client's scenario and that scenario's per-client state. The variant is fixed at
/// [`Load::new`] by which scenario the configuration sets.
#[derive(Debug)]
pub enum Load {
    /// Hold the connection open.
    Idle,
    /// Subscribe and check deliveries.
    Push(push::PushState),
    /// Send messages and verify their echoes.
    Echo(echo::EchoState),
    /// Close right after the upgrade.
    Churn,
}

impl Load {
    /// The scenario `config` asks for (at most one of push, echo and churn is set).
    pub fn new(config: &EngineConfig) -> Self {
        if config.push.is_some() {
            Self::Push(push::PushState::default())
        } else if config.echo.is_some() {
            Self::Echo(echo::EchoState::default())
        } else if config.churn.is_some() {
            Self::Churn
        } else {
            Self::Idle
        }
    }

    /// The request target of the upgrade.
    pub fn upgrade_path<'c>(&mut self, local_index: u32, now: Now, cx: &'c Shared) -> Cow<'c, str> {
        match self {
            Self::Push(state) => Cow::Owned(push::upgrade_path(state, local_index, now, cx)),
            Self::Idle | Self::Echo(_) | Self::Churn => Cow::Borrowed(&cx.config.path_and_query),
        }
    }

    /// The upgrade completed: what the client does first.
    pub fn on_upgraded(&mut self, turn: &mut Turn<'_>) -> Transition {
        match self {
            Self::Idle => Transition::Open,
            Self::Push(state) => push::on_upgraded(state, turn),
            Self::Echo(state) => echo::on_upgraded(state, turn),
            Self::Churn => churn::on_upgraded(turn),
        }
    }

    /// A complete data message arrived.
    pub fn on_message(
        &mut self,
        turn: &mut Turn<'_>,
        opcode: OpCode,
        payload: &[u8],
    ) -> Transition {
        match self {
            Self::Push(state) if opcode == OpCode::Data(Data::Text) => {
                push::on_message(state, turn, payload)
            }
            Self::Echo(state)
                if opcode == OpCode::Data(Data::Binary) && turn.state == State::Open =>
            {
                echo::on_message(state, turn, payload);
                Transition::Stay
            }
            _ => {
                turn.cx.report.messages_received += 1;
                Transition::Stay
            }
        }
    }

    /// The scenario's next deadline while the client is open ([`NEVER`]: none).
    pub fn poll_timeout(&self) -> u64 {
        match self {
            Self::Echo(state) => state.poll_timeout(),
            Self::Idle | Self::Push(_) | Self::Churn => NEVER,
        }
    }

    /// An open client's deadline passed (possibly the client's own, not ours).
    pub fn handle_timeout(&mut self, turn: &mut Turn<'_>) {
        if let Self::Echo(state) = self {
            echo::handle_timeout(state, turn);
        }
    }

    /// The hold began and the client is open.
    pub fn handle_hold(&mut self, now: Now, cx: &mut Shared) {
        if let Self::Echo(state) = self {
            echo::schedule_first(state, now, cx);
        }
    }

    /// The client ended in `state` after `age_ns`.
    pub fn on_end(&self, state: State, local_index: u32, end: &End, age_ns: u64, cx: &mut Shared) {
        match self {
            Self::Push(_) => push::on_end(state, local_index, cx),
            Self::Churn => churn::on_end(end, age_ns, cx),
            Self::Idle | Self::Echo(_) => {}
        }
    }

    /// The run ends with this (established) client still there.
    pub fn at_finish(&self, cx: &mut Shared) {
        if let Self::Echo(state) = self {
            state.at_finish(cx);
        }
    }
}
