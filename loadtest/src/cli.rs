//! The command line: `pingwheel-loadtest <idle|push|echo|churn> --url ws://HOST:PORT/PATH
//! --connections N --duration 30s [...]`. The shape is a contract: operators' scripts
//! and our CI checks call it, so flags are only ever added.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::settings::SubscribeMode;
use crate::units::{parse_duration, parse_rate, parse_size};

/// What a run does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open N connections that answer every server ping, hold them for the duration.
    Idle,
    /// Subscribe N clients to M channels and publish through the HTTP publish API.
    Push,
    /// Every connection sends messages at a rate and checks the echoed copies.
    Echo,
    /// Connect, handshake, close, repeat, at a rate.
    Churn,
}

impl Scenario {
    /// The lowercase name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Push => "push",
            Self::Echo => "echo",
            Self::Churn => "churn",
        }
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn usize_size_arg(text: &str) -> Result<usize, String> {
    usize::try_from(size_arg(text)?).map_err(|_| format!("`{text}`: too large"))
}

fn rate_arg(text: &str) -> Result<f64, String> {
    let rate = parse_rate(text).map_err(|e| e.to_string())?;
    if rate < 0.0 {
        return Err(format!("`{text}`: rates cannot be negative"));
    }
    Ok(rate)
}

fn fraction_arg(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=10.0).contains(&f) => Ok(f),
        _ => Err(format!("`{text}`: expected a fraction such as 0.25")),
    }
}

/// Load-test any WebSocket server: hold idle connections, push through a publish API,
/// echo messages, or churn connections; sample the server's memory and CPU; report
/// percentiles as a table, JSON and an SVG plot; exit 1 when an assertion fails.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pingwheel-loadtest",
    version,
    after_help = "Exit status: 0 when every assertion passed, 1 when one failed, 2 for usage or setup errors.\n\
                  Durations: 30s, 250ms, 100us, 1.5m, 2h (a bare number is seconds). Sizes: 4096, 64KiB, 1MiB, 1MB.\n\
                  Rates: 5000/s, 300/m, 20 (per second).\n\
                  See docs/loadtest.md for the JSON schema and examples against other servers."
)]
pub struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// WebSocket URL of the server under test (ws:// only; path and query are kept).
    #[arg(long, value_name = "URL")]
    pub url: String,

    /// Connections to open (idle, push, echo), or the most churn cycles in flight at
    /// once (churn).
    #[arg(short = 'c', long, value_name = "N", default_value_t = 100)]
    pub connections: u64,

    /// How long to hold the connections (or publish, echo, churn) after the ramp.
    #[arg(short = 'd', long, value_name = "DURATION", default_value = "30s", value_parser = duration_arg)]
    pub duration: Duration,

    /// How fast to open connections during the ramp.
    #[arg(long, value_name = "N/s", default_value = "5000/s", value_parser = rate_arg)]
    pub ramp_rate: f64,

    /// A connection not connected, upgraded (and for push, subscribed) within this time
    /// fails with cause `timeout`, `handshake_timeout` or `subscribe_timeout`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_arg)]
    pub connect_timeout: Duration,

    /// Give up waiting for the ramp after this long [default: connections ÷ ramp rate +
    /// connect timeout + 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub ramp_timeout: Option<Duration>,

    /// Pause between the end of the ramp and the memory sample that starts the hold.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration_arg)]
    pub settle: Duration,

    /// Local addresses to bind, round-robin: `none` (the kernel chooses), a count N
    /// (127.0.0.2 onwards), or a list of addresses and IPv4 ranges
    /// (`10.0.0.5,10.0.0.10-10.0.0.20`) [default: 127.0.0.2-127.0.0.254 for loopback
    /// targets, otherwise none].
    #[arg(long, value_name = "SPEC")]
    pub source_addrs: Option<String>,

    /// Spread the connections over this many processes [default: as few as the
    /// open-file limit allows].
    #[arg(long, value_name = "N")]
    pub processes: Option<usize>,

    /// Most connections one process may hold [default: the open-file limit − 100].
    #[arg(long, value_name = "N")]
    pub max_per_process: Option<u64>,

    /// PID of a server process to sample (/proc RSS and CPU time); repeat for servers
    /// made of several processes. Enables the `server` section of the report.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,

    /// Write the machine-readable report to this file (see docs/loadtest.md).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Draw latency over time and the latency CDF into this SVG file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,

    /// Assertion: at most N connections may fail to open or be lost (churn: fail).
    #[arg(long, value_name = "N")]
    pub max_lost: Option<u64>,

    /// Assertion: the scenario's main latency p99 must not exceed this (idle: client
    /// ping RTT if enabled, else connect latency; push: publish→receive; echo: RTT;
    /// churn: connect latency).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub max_p99: Option<Duration>,

    /// Hide the live progress line (it is also hidden when stderr is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,

    /// Largest server message accepted; bigger ones fail the connection with
    /// `message_too_big`.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = size_arg)]
    pub max_message_size: u64,

    /// `wss://` only: trust the CA certificates in this PEM file (instead of the system
    /// bundle).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "insecure",
        help_heading = "TLS"
    )]
    pub ca_file: Option<PathBuf>,

    /// `wss://` only: accept any server certificate (handshake signatures are still
    /// checked).
    #[arg(long, help_heading = "TLS")]
    pub insecure: bool,

    /// `wss://` only: do not resume TLS sessions; every connection does a full
    /// handshake (by default a reconnecting client resumes with a ticket the server
    /// gave an earlier connection).
    #[arg(long, help_heading = "TLS")]
    pub no_tls_resume: bool,

    /// `wss://` only: the key-exchange groups to offer, in order, comma-separated
    /// (`x25519`, `secp256r1`, `secp384r1`, `x25519mlkem768`; default: rustls's).
    #[arg(long, value_name = "LIST", value_delimiter = ',', help_heading = "TLS")]
    pub tls_groups: Vec<String>,

    /// Assertion (any scenario): every connection held at least two intervals received
    /// at least floor(held ÷ interval) − 1 server pings, and every observed interval
    /// between consecutive pings lies within the tolerance.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, help_heading = "Keepalive")]
    pub expect_ping_interval: Option<Duration>,

    /// Allowed relative deviation of observed ping intervals from
    /// --expect-ping-interval.
    #[arg(long, value_name = "FRACTION", default_value = "0.25", value_parser = fraction_arg, help_heading = "Keepalive")]
    pub ping_tolerance: f64,

    /// Also send client pings at this interval and report their round-trip times.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, help_heading = "Keepalive")]
    pub client_ping_interval: Option<Duration>,

    /// push: number of channels `lt-0` … `lt-{M-1}`; client i subscribes to i mod M.
    #[arg(long, value_name = "M", default_value_t = 10, help_heading = "Push")]
    pub channels: u32,

    /// push: how clients subscribe: `url` (`?channel=` in the URL, subscribed at the
    /// upgrade — pingwheel), `url-ack` (`?channel=`, then wait for
    /// `{"op":"subscribed"}`), `op` (send `{"op":"subscribe"}`, wait for the reply).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value = "url",
        help_heading = "Push"
    )]
    pub subscribe: SubscribeMode,

    /// push: base URL of the publish API; requests go to `{URL}/v1/publish`.
    #[arg(long, value_name = "URL", help_heading = "Push")]
    pub publish_url: Option<String>,

    /// push: sent as `Authorization: Bearer KEY` to the publish API.
    #[arg(
        long,
        value_name = "KEY",
        env = "PINGWHEEL_API_KEY",
        hide_env_values = true,
        help_heading = "Push"
    )]
    pub api_key: Option<String>,

    /// push: HS256 secret that signs the clients' JWTs (`?token=`).
    #[arg(
        long,
        value_name = "SECRET",
        env = "PINGWHEEL_TOKEN_SECRET",
        hide_env_values = true,
        help_heading = "Push"
    )]
    pub token_secret: Option<String>,

    /// push: publishes per second, over all channels.
    #[arg(long, value_name = "N/s", default_value = "100/s", value_parser = rate_arg, help_heading = "Push")]
    pub publish_rate: f64,

    /// push: the first publish goes out this long into the hold (publishing still ends
    /// with the hold): e.g. `-d 330s --publish-delay 300s --publish-rate 1/30s` sends one
    /// publish after five minutes of holding.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration_arg, help_heading = "Push")]
    pub publish_delay: Duration,

    /// push: size of each publish's `data` JSON object in bytes (padded with `pad`).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        value_parser = usize_size_arg,
        help_heading = "Push"
    )]
    pub payload_size: usize,

    /// push: HTTP keep-alive connections used for publishing.
    #[arg(long, value_name = "N", default_value_t = 4, help_heading = "Push")]
    pub publishers: usize,

    /// push: every client subscribes to the one channel `lt-0` and publishes go out one
    /// at a time, measuring fan-out latency across all N subscribers.
    #[arg(long, help_heading = "Push")]
    pub fanout_burst: bool,

    /// push: recovery storm. Before connecting, publish N messages to every channel and
    /// note each channel's position; then every client subscribes with `since` N
    /// messages back (`?since=lt-C:SEQ:EPOCH`, or in the subscribe op with `--subscribe
    /// op`) and must get `recovered:true` and exactly those N, in order. The main latency
    /// becomes subscribe → last recovered message. The gateway must keep at least N
    /// messages per `lt-` channel (a `[[namespace]]` with `prefix = "lt-"`).
    #[arg(long, value_name = "N", help_heading = "Push")]
    pub recover_back: Option<u64>,

    /// Internal: the channels' positions for `--recover-back` (`TOP:EPOCH,…`), handed to
    /// child processes.
    #[arg(long, hide = true)]
    pub recover_positions: Option<String>,

    /// push: after the last publish, wait at most this long for outstanding deliveries.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration_arg, help_heading = "Push")]
    pub drain_timeout: Duration,

    /// echo: size of each message in bytes (at least 16: sequence and timestamp).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        value_parser = usize_size_arg,
        help_heading = "Echo"
    )]
    pub message_size: usize,

    /// echo: messages per second per connection; 0 sends the next message as soon as
    /// the previous echo arrives.
    #[arg(long, value_name = "N/s", default_value = "1/s", value_parser = rate_arg, help_heading = "Echo")]
    pub message_rate: f64,

    /// churn: new connections per second over all processes.
    #[arg(long, value_name = "N/s", default_value = "100/s", value_parser = rate_arg, help_heading = "Churn")]
    pub churn_rate: f64,

    /// churn: send one text message of this size before closing (0: none).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 0,
        value_parser = usize_size_arg,
        help_heading = "Churn"
    )]
    pub churn_message_size: usize,

    /// Internal: this process is child I of a multi-process run.
    #[arg(long, hide = true, requires = "child_count")]
    pub child_index: Option<usize>,

    /// Internal: the number of children in a multi-process run.
    #[arg(long, hide = true, requires = "child_index")]
    pub child_count: Option<usize>,

    /// Internal: the parent's run start in Unix nanoseconds (the timeline origin).
    #[arg(long, hide = true)]
    pub run_start_unix_ns: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn contract_shape_parses() {
        let args = Args::try_parse_from([
            "pingwheel-loadtest",
            "idle",
            "--url",
            "ws://127.0.0.1:8080/",
            "--connections",
            "19000",
            "--duration",
            "30s",
            "--ramp-rate",
            "5000/s",
            "--server-pid",
            "10",
            "--server-pid",
            "11",
            "--json",
            "out.json",
            "--plot",
            "out.svg",
            "--max-lost",
            "0",
            "--max-p99",
            "50ms",
        ])
        .expect("the documented command line parses");
        assert_eq!(args.scenario, Scenario::Idle);
        assert_eq!(args.connections, 19_000);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.ramp_rate, 5000.0);
        assert_eq!(args.server_pids, [10, 11]);
        assert_eq!(args.max_lost, Some(0));
        assert_eq!(args.max_p99, Some(Duration::from_millis(50)));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["x", "idle", "--url", "ws://h/", "--duration", "soon"][..],
            &["x", "idle", "--url", "ws://h/", "--ramp-rate", "-5/s"],
            &["x", "nap", "--url", "ws://h/"],
            &["x", "idle"],
            &["x", "idle", "--url", "ws://h/", "--child-index", "1"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_flag_has_help() {
        for arg in Args::command().get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.is_hide_set(),
                "--{} has no help",
                arg.get_id()
            );
        }
    }
}
