//! What one engine is asked to do: [`EngineConfig`], built by
//! [`crate::plan::Plan::engine_config`], and the per-scenario settings inside it. The
//! loop ([`crate::engine`]), the client state machine ([`crate::client`]) and the
//! scenarios ([`crate::scenario`]) all read it; none of them changes it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tls::TlsTarget;

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
    /// Subscribe with `since` → last recovered message (`--recover-back`).
    Recover,
}

impl MainLatency {
    /// The name used in reports (`connect`, `client_rtt`, `push`, `echo`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ClientRtt => "client_rtt",
            Self::Push => "push",
            Self::Echo => "echo",
            Self::Recover => "recover",
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
    /// `--recover-back`: subscribe with `since` this far back and check the recovery.
    pub recover: Option<RecoverPlan>,
    /// `--publish-delay`: when positive, ping intervals that end this long or more into
    /// the hold are kept apart from the ones before the first publish.
    pub publish_delay: Duration,
}

/// The recovery storm of `--recover-back`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverPlan {
    /// Messages each client recovers.
    pub back: u64,
    /// Channel `lt-C`'s position after the prefill: `positions[C] = (top seq, epoch)`.
    pub positions: Vec<(u64, String)>,
}

impl RecoverPlan {
    /// The `TOP:EPOCH,…` form of `positions`, handed to child processes.
    pub fn positions_arg(positions: &[(u64, String)]) -> String {
        positions
            .iter()
            .map(|(top, epoch)| format!("{top}:{epoch}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`RecoverPlan::positions_arg`]'s form.
    pub fn parse_positions(text: &str) -> Result<Vec<(u64, String)>, String> {
        text.split(',')
            .map(|item| {
                let (top, epoch) = item
                    .split_once(':')
                    .ok_or_else(|| format!("bad recover position {item:?}"))?;
                let top = top
                    .parse()
                    .map_err(|_| format!("bad recover position {item:?}"))?;
                Ok((top, epoch.to_owned()))
            })
            .collect()
    }
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
    /// Bytes per message (≥ [`crate::scenario::echo::ECHO_HEADER`]).
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
    /// TLS for a `wss://` target; `None`: clear-text `ws://`.
    pub tls: Option<TlsTarget>,
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
    /// How often to emit [`crate::engine::EngineEvent::Progress`].
    pub progress_every: Duration,
    /// The engine finishes on its own this long after it started.
    pub hard_deadline: Duration,
}

impl EngineConfig {
    /// Connections opened per second during the hold, with at most
    /// [`EngineConfig::connections`] in flight (churn); `None`: the hold opens none.
    pub fn hold_open_rate(&self) -> Option<f64> {
        self.churn.map(|churn| churn.rate)
    }
}
