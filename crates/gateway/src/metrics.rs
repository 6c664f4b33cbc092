//! Metric names, histogram buckets, per-worker counters, and the `/metrics` exporter.
//!
//! Every metric pingwheel exports is named here (see [`names`]) and described in
//! `docs/metrics.md`. Names follow Prometheus conventions: base units (seconds, bytes) in
//! the name, `_total` on counters. Histograms are real Prometheus histograms with explicit
//! buckets (never summaries), so they can be aggregated across workers and processes.
//!
//! # Hot path: no atomics, no allocation
//!
//! The event loop never looks a metric up by name, and records without a
//! read-modify-write atomic or an allocation. Each worker owns one [`WorkerMetrics`]:
//! plain per-worker counters, gauges and fixed-bucket histograms ([`LocalCounter`],
//! [`LocalGauge`], [`LocalHistogram`]) that only that worker writes. The exporter reads
//! them when `/metrics` is scraped ([`Exporter::render`]) and prints them in the same
//! Prometheus text format, with the same names, labels and buckets, as
//! `metrics-exporter-prometheus` prints the admin thread's own series (publish API, auth
//! failures), which still go through the `metrics` facade.
//!
//! A value is a `u64` in an `AtomicU64` that its one writer updates with a relaxed load
//! and a relaxed store (on x86-64 and AArch64 a plain load, add and store on the
//! worker's own cache line): with a single writer no update is lost, and the scraping
//! thread reads whole values. Single writer is kept by construction: a
//! [`WorkerMetrics`] is not `Clone`, and the exporter only reads.
//!
//! A scrape reads one value at a time while the worker goes on, so the series of one
//! scrape are not a snapshot of a single instant (as with the atomic handles before);
//! within a histogram, `_count` and the `+Inf` bucket are the same number (both are the
//! sum of the buckets as read), and each series only ever grows between scrapes.
//!
//! # Order of operations
//!
//! 1. [`install_recorder`] once, before [`ApiMetrics::new`]: handles made earlier are
//!    bound to the no-op recorder and record nothing. It returns the [`Exporter`].
//! 2. [`Exporter::worker`] per worker (its [`WorkerMetrics`]), [`ApiMetrics::new`] once
//!    for the admin thread.
//! 3. The admin thread renders `/metrics` with [`Exporter::render`] and calls
//!    [`Exporter::run_upkeep`] every [`UPKEEP_INTERVAL`]: without the exporter's own
//!    HTTP listener nobody else drains the facade's histogram samples.

use std::fmt::Write as _;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::conn::{CloseReason, HandshakeFailure};
use crate::push::auth::AuthFailure;

/// How often the admin thread must call [`Exporter::run_upkeep`].
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Every metric name, as exported.
pub mod names {
    /// Gauge: open client connections (accepted TCP connections, upgraded or still in the
    /// HTTP upgrade), per worker.
    pub const CONNECTIONS: &str = "pingwheel_connections";
    /// Counter: accepted client connections, per worker.
    pub const CONNECTIONS_OPENED: &str = "pingwheel_connections_opened_total";
    /// Counter: closed client connections, per worker and `reason`. Every accepted
    /// connection ends with exactly one reason, so opened − Σ closed = open.
    pub const CONNECTIONS_CLOSED: &str = "pingwheel_connections_closed_total";
    /// Counter: refused or abandoned HTTP upgrades, per worker and `reason`.
    pub const HANDSHAKE_FAILURES: &str = "pingwheel_handshake_failures_total";
    /// Counter: keepalive pings sent.
    pub const PINGS_SENT: &str = "pingwheel_pings_sent_total";
    /// Counter: pongs received (answered keepalive pings and unsolicited pongs).
    pub const PONGS_RECEIVED: &str = "pingwheel_pongs_received_total";
    /// Counter: connections closed because a ping went unanswered.
    pub const PING_TIMEOUTS: &str = "pingwheel_ping_timeouts_total";
    /// Histogram: keepalive ping → pong round-trip time, seconds.
    pub const PING_RTT: &str = "pingwheel_ping_rtt_seconds";
    /// Counter: complete data messages received from clients.
    pub const MESSAGES_RECEIVED: &str = "pingwheel_messages_received_total";
    /// Counter: data messages queued to clients.
    pub const MESSAGES_SENT: &str = "pingwheel_messages_sent_total";
    /// Counter: bytes read from client sockets (HTTP upgrade and WebSocket frames).
    pub const BYTES_RECEIVED: &str = "pingwheel_bytes_received_total";
    /// Counter: bytes written to client sockets (HTTP responses and WebSocket frames).
    pub const BYTES_SENT: &str = "pingwheel_bytes_sent_total";
    /// Gauge: live entries in the worker's timer wheel.
    pub const TIMERS: &str = "pingwheel_timers";
    /// Histogram: how late a worker ran its due timers, seconds.
    pub const EVENT_LOOP_LAG: &str = "pingwheel_event_loop_lag_seconds";
    /// Counter: push messages written to subscribers.
    pub const DELIVERIES: &str = "pingwheel_deliveries_total";
    /// Counter: subscribers closed with 1013 because they fell behind.
    pub const SLOW_CONSUMER_DISCONNECTS: &str = "pingwheel_slow_consumer_disconnects_total";
    /// Gauge: channel subscriptions held by this worker's connections.
    pub const SUBSCRIPTIONS: &str = "pingwheel_subscriptions";
    /// Gauge: channels with at least one subscriber on this worker.
    pub const CHANNELS: &str = "pingwheel_channels";
    /// Histogram: publish accepted → frame written to the socket, seconds.
    pub const DELIVERY_LAG: &str = "pingwheel_delivery_lag_seconds";
    /// Counter: messages accepted by the publish API (one per channel per message).
    pub const PUBLISHES: &str = "pingwheel_publishes_total";
    /// Counter: rejected client tokens and publish-API keys, per `reason`.
    pub const AUTH_FAILURES: &str = "pingwheel_auth_failures_total";
    /// Counter: publish-API responses, per HTTP `status`.
    pub const PUBLISH_REQUESTS: &str = "pingwheel_publish_requests_total";
    /// Counter: accept pauses (100 ms each) after `accept` failed for lack of resources
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM), per worker.
    pub const ACCEPT_PAUSES: &str = "pingwheel_accept_pauses_total";

    /// Gauge: messages kept in history on this node.
    pub const HISTORY_MESSAGES: &str = "pingwheel_history_messages";
    /// Gauge: bytes history holds on this node (frames' blocks, index, stream state).
    pub const HISTORY_BYTES: &str = "pingwheel_history_bytes";
    /// Counter: subscribes with `since`, per worker and `result`.
    pub const RECOVERIES: &str = "pingwheel_recoveries_total";
    /// Counter: messages handed out by recoveries, per worker.
    pub const RECOVERED_MESSAGES: &str = "pingwheel_recovered_messages_total";

    /// Gauge: 1 while the engine can take publishes and subscribes (memory: always;
    /// Redis: every instance connected), else 0.
    pub const ENGINE_UP: &str = "pingwheel_engine_up";
    /// Counter: engine up/down transitions, per `state` they went to.
    pub const ENGINE_TRANSITIONS: &str = "pingwheel_engine_transitions_total";
    /// Counter: failed engine operations, per `op`.
    pub const ENGINE_ERRORS: &str = "pingwheel_engine_errors_total";
    /// Histogram: one engine publish call (a request's messages), seconds.
    pub const ENGINE_PUBLISH: &str = "pingwheel_engine_publish_seconds";
    /// Counter: resubscribes of everything after a broker reconnect (one per instance
    /// per reconnect).
    pub const ENGINE_RESUBSCRIBES: &str = "pingwheel_engine_resubscribes_total";
    /// Counter: client subscribes the engine answered with an error (their position
    /// could not be read: the broker is down or did not answer in time).
    pub const ENGINE_SUBSCRIBE_FAILURES: &str = "pingwheel_engine_subscribe_failures_total";
    /// Counter: gaps in a stream's seq seen by this node, per `result`.
    pub const POSITION_GAPS: &str = "pingwheel_position_gaps_total";
    /// Counter: messages received from the broker's pub/sub.
    pub const BROKER_MESSAGES: &str = "pingwheel_broker_messages_received_total";

    /// Counter: TLS handshakes on the WebSocket listener, per worker and `result`
    /// ([`TLS_HANDSHAKE_RESULTS`]).
    pub const TLS_HANDSHAKES: &str = "pingwheel_tls_handshakes_total";
    /// Histogram: accept → TLS handshake complete, seconds, per worker.
    pub const TLS_HANDSHAKE_SECONDS: &str = "pingwheel_tls_handshake_seconds";
    /// Counter: SIGHUP certificate reloads, per `result` (`ok`, `failed`).
    pub const TLS_RELOADS: &str = "pingwheel_tls_reloads_total";
    /// Gauge: notAfter of the served leaf certificate, unix seconds, per `listener`
    /// (`ws`, `admin`).
    pub const TLS_CERT_EXPIRY: &str = "pingwheel_tls_certificate_expiry_timestamp_seconds";

    /// Every metric name, for tests and documentation checks.
    pub const ALL: [&str; 39] = [
        CONNECTIONS,
        CONNECTIONS_OPENED,
        CONNECTIONS_CLOSED,
        HANDSHAKE_FAILURES,
        PINGS_SENT,
        PONGS_RECEIVED,
        PING_TIMEOUTS,
        PING_RTT,
        MESSAGES_RECEIVED,
        MESSAGES_SENT,
        BYTES_RECEIVED,
        BYTES_SENT,
        TIMERS,
        EVENT_LOOP_LAG,
        DELIVERIES,
        SLOW_CONSUMER_DISCONNECTS,
        SUBSCRIPTIONS,
        CHANNELS,
        DELIVERY_LAG,
        PUBLISHES,
        AUTH_FAILURES,
        PUBLISH_REQUESTS,
        HISTORY_MESSAGES,
        HISTORY_BYTES,
        RECOVERIES,
        RECOVERED_MESSAGES,
        ACCEPT_PAUSES,
        ENGINE_UP,
        ENGINE_TRANSITIONS,
        ENGINE_ERRORS,
        ENGINE_PUBLISH,
        ENGINE_RESUBSCRIBES,
        ENGINE_SUBSCRIBE_FAILURES,
        POSITION_GAPS,
        BROKER_MESSAGES,
        TLS_HANDSHAKES,
        TLS_HANDSHAKE_SECONDS,
        TLS_RELOADS,
        TLS_CERT_EXPIRY,
    ];

    /// The `result` label values of [`RECOVERIES`].
    pub const RECOVERY_RESULTS: [&str; 2] = ["recovered", "not_recovered"];

    /// The `result` label values of [`TLS_HANDSHAKES`], in [`super::TlsResult`] order.
    pub const TLS_HANDSHAKE_RESULTS: [&str; 4] = ["full", "resumed", "failed", "timeout"];

    /// The histograms among [`ALL`].
    pub const HISTOGRAMS: [&str; 5] = [
        PING_RTT,
        EVENT_LOOP_LAG,
        DELIVERY_LAG,
        ENGINE_PUBLISH,
        TLS_HANDSHAKE_SECONDS,
    ];
}

/// Buckets (upper bounds, seconds) for round-trip and delivery latencies: 100 µs … 20 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0,
];

/// Buckets (upper bounds, seconds) for TLS handshakes, accept to complete: 250 µs … 10 s
/// (a full ECDSA handshake costs the server well under a millisecond of CPU; the rest
/// is round trips and queueing, bounded by `--open-timeout`).
pub const HANDSHAKE_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// How a TLS handshake on the WebSocket listener ended: the `result` label of
/// `pingwheel_tls_handshakes_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlsResult {
    /// A full handshake completed.
    Full,
    /// A resumed handshake (ticket or session ID) completed.
    Resumed,
    /// Refused: garbage, plain HTTP, a failed negotiation, or the peer left mid-way.
    Failed,
    /// Not complete within `--open-timeout`.
    Timeout,
}

/// Buckets (upper bounds, seconds) for event-loop lag: 100 µs … 10 s.
pub const LAG_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The recorder builder with pingwheel's histogram buckets set per metric, so every
/// histogram is exported as a Prometheus histogram, not a summary. Exposed for tests
/// (`build_recorder` + `metrics::with_local_recorder`); production uses
/// [`install_recorder`].
///
/// # Errors
///
/// Only if a bucket list is empty, which the constants above are not.
pub fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in [names::PING_RTT, names::DELIVERY_LAG, names::ENGINE_PUBLISH] {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), &LATENCY_BUCKETS)?;
    }
    builder
        .set_buckets_for_metric(
            Matcher::Full(names::TLS_HANDSHAKE_SECONDS.to_owned()),
            &HANDSHAKE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::EVENT_LOOP_LAG.to_owned()),
            &LAG_BUCKETS,
        )
}

/// Builds the Prometheus recorder, installs it as the global `metrics` recorder, describes
/// every metric, and returns the [`Exporter`] that renders `/metrics`.
///
/// Call once, before creating any [`ApiMetrics`]. The caller must run
/// [`Exporter::run_upkeep`] every [`UPKEEP_INTERVAL`] (the admin thread does).
///
/// # Errors
///
/// When a global recorder is already installed.
pub fn install_recorder() -> Result<Exporter, BuildError> {
    let handle = builder()?.install_recorder()?;
    describe();
    Ok(Exporter::new(handle))
}

/// The kind of a per-worker metric family.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A per-worker metric family: its name, kind, unit and HELP text. The exporter prints
/// these from [`WorkerMetrics`]; [`describe`] registers the same text with the recorder.
#[derive(Copy, Clone, Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    unit: Unit,
    help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
    }
}

/// Every per-worker family, in the order `/metrics` lists them.
const WORKER_FAMILIES: [Family; 24] = [
    family(
        names::CONNECTIONS,
        Kind::Gauge,
        Unit::Count,
        "Open client connections: accepted TCP connections, upgraded or still in the HTTP upgrade.",
    ),
    family(
        names::CONNECTIONS_OPENED,
        Kind::Counter,
        Unit::Count,
        "Client connections accepted.",
    ),
    family(
        names::CONNECTIONS_CLOSED,
        Kind::Counter,
        Unit::Count,
        "Client connections closed, by reason (each accepted connection ends with exactly one reason).",
    ),
    family(
        names::HANDSHAKE_FAILURES,
        Kind::Counter,
        Unit::Count,
        "HTTP upgrade requests refused or abandoned, by reason.",
    ),
    family(
        names::PINGS_SENT,
        Kind::Counter,
        Unit::Count,
        "Keepalive pings sent.",
    ),
    family(
        names::PONGS_RECEIVED,
        Kind::Counter,
        Unit::Count,
        "Pong frames received.",
    ),
    family(
        names::PING_TIMEOUTS,
        Kind::Counter,
        Unit::Count,
        "Connections closed with 1011 because a keepalive ping got no pong in time.",
    ),
    family(
        names::PING_RTT,
        Kind::Histogram,
        Unit::Seconds,
        "Keepalive ping to pong round-trip time, in seconds.",
    ),
    family(
        names::MESSAGES_RECEIVED,
        Kind::Counter,
        Unit::Count,
        "Complete data messages received from clients.",
    ),
    family(
        names::MESSAGES_SENT,
        Kind::Counter,
        Unit::Count,
        "Data messages queued to clients.",
    ),
    family(
        names::BYTES_RECEIVED,
        Kind::Counter,
        Unit::Bytes,
        "Bytes read from client sockets: HTTP upgrade requests and WebSocket frames.",
    ),
    family(
        names::BYTES_SENT,
        Kind::Counter,
        Unit::Bytes,
        "Bytes written to client sockets: HTTP upgrade responses and WebSocket frames.",
    ),
    family(
        names::TIMERS,
        Kind::Gauge,
        Unit::Count,
        "Live entries in the worker's timer wheel (at most one per connection).",
    ),
    family(
        names::EVENT_LOOP_LAG,
        Kind::Histogram,
        Unit::Seconds,
        "How late a worker ran its due timers, in seconds.",
    ),
    family(
        names::DELIVERIES,
        Kind::Counter,
        Unit::Count,
        "Published messages written to subscribers.",
    ),
    family(
        names::SLOW_CONSUMER_DISCONNECTS,
        Kind::Counter,
        Unit::Count,
        "Subscribers closed with 1013 because their outbound queue overflowed.",
    ),
    family(
        names::SUBSCRIPTIONS,
        Kind::Gauge,
        Unit::Count,
        "Channel subscriptions held by the worker's connections.",
    ),
    family(
        names::CHANNELS,
        Kind::Gauge,
        Unit::Count,
        "Channels with at least one subscriber on the worker.",
    ),
    family(
        names::DELIVERY_LAG,
        Kind::Histogram,
        Unit::Seconds,
        "Time from a publish being accepted to its frame being written to a subscriber's socket, in seconds.",
    ),
    family(
        names::RECOVERIES,
        Kind::Counter,
        Unit::Count,
        "Subscribes with since, by result (recovered or not_recovered).",
    ),
    family(
        names::RECOVERED_MESSAGES,
        Kind::Counter,
        Unit::Count,
        "Messages delivered from history by recoveries.",
    ),
    family(
        names::ACCEPT_PAUSES,
        Kind::Counter,
        Unit::Count,
        "Accept pauses of 100 ms after accept failed for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
    ),
    family(
        names::TLS_HANDSHAKES,
        Kind::Counter,
        Unit::Count,
        "TLS handshakes on the WebSocket listener, by result (full, resumed, failed, timeout).",
    ),
    family(
        names::TLS_HANDSHAKE_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time from accept to TLS handshake complete, in seconds.",
    ),
];

/// Registers HELP text and units for every metric with the current recorder.
/// [`install_recorder`] calls it; tests using a local recorder call it themselves.
pub fn describe() {
    for f in WORKER_FAMILIES {
        match f.kind {
            Kind::Counter => describe_counter!(f.name, f.unit, f.help),
            Kind::Gauge => describe_gauge!(f.name, f.unit, f.help),
            Kind::Histogram => describe_histogram!(f.name, f.unit, f.help),
        }
    }
    describe_counter!(
        names::PUBLISHES,
        Unit::Count,
        "Messages accepted by the publish API (one per channel per message)."
    );
    describe_counter!(
        names::AUTH_FAILURES,
        Unit::Count,
        "Rejected client tokens and publish-API keys, by reason."
    );
    describe_counter!(
        names::PUBLISH_REQUESTS,
        Unit::Count,
        "Publish-API responses, by HTTP status."
    );
    describe_gauge!(
        names::HISTORY_MESSAGES,
        Unit::Count,
        "Messages kept in history on this node."
    );
    describe_gauge!(
        names::HISTORY_BYTES,
        Unit::Bytes,
        "Bytes history holds on this node (bounded by --history-max-bytes)."
    );
    describe_gauge!(
        names::ENGINE_UP,
        Unit::Count,
        "1 while the engine can take publishes and subscribes (Redis: every instance connected), else 0."
    );
    describe_counter!(
        names::ENGINE_TRANSITIONS,
        Unit::Count,
        "Engine up/down transitions, by the state they went to."
    );
    describe_counter!(
        names::ENGINE_ERRORS,
        Unit::Count,
        "Failed engine operations (publish, subscribe, read, heartbeat, control), by op."
    );
    describe_histogram!(
        names::ENGINE_PUBLISH,
        Unit::Seconds,
        "Duration of one engine publish call (all messages of one API request), in seconds."
    );
    describe_counter!(
        names::ENGINE_RESUBSCRIBES,
        Unit::Count,
        "Resubscribes of every channel after a broker reconnect (one per instance per reconnect)."
    );
    describe_counter!(
        names::ENGINE_SUBSCRIBE_FAILURES,
        Unit::Count,
        "Client subscribes answered with an error because the engine could not read their position."
    );
    describe_counter!(
        names::POSITION_GAPS,
        Unit::Count,
        "Gaps in a stream's seq seen by this node, by result: refilled from history, or lost (position_lost sent)."
    );
    describe_counter!(
        names::TLS_RELOADS,
        Unit::Count,
        "SIGHUP certificate reloads, by result (ok, failed: the old certificate stays)."
    );
    describe_gauge!(
        names::TLS_CERT_EXPIRY,
        Unit::Seconds,
        "notAfter of the served leaf certificate, unix seconds, by listener (ws, admin)."
    );
    describe_counter!(
        names::BROKER_MESSAGES,
        Unit::Count,
        "Messages received from the broker's pub/sub connections."
    );
}

/// The engine's metric handles (process-wide, no labels beyond `op`/`result`/`state`),
/// registered at start-up so every series exists from the first scrape.
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    /// `pingwheel_engine_up`.
    pub up: Gauge,
    /// `pingwheel_engine_transitions_total{state="up"|"down"}`.
    pub went_up: Counter,
    /// See `went_up`.
    pub went_down: Counter,
    /// `pingwheel_engine_errors_total{op}`, indexed by [`EngineOp`].
    pub errors: [Counter; EngineOp::ALL.len()],
    /// `pingwheel_engine_publish_seconds`.
    pub publish_seconds: Histogram,
    /// `pingwheel_engine_resubscribes_total`.
    pub resubscribes: Counter,
    /// `pingwheel_engine_subscribe_failures_total`.
    pub subscribe_failures: Counter,
    /// `pingwheel_position_gaps_total{result="refilled"}`.
    pub gaps_refilled: Counter,
    /// `pingwheel_position_gaps_total{result="lost"}`.
    pub gaps_lost: Counter,
    /// `pingwheel_broker_messages_received_total`.
    pub broker_messages: Counter,
}

/// The `op` label of `pingwheel_engine_errors_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EngineOp {
    /// A publish (script pipeline).
    Publish,
    /// A node-level subscribe.
    Subscribe,
    /// A position or history read (recovery, gap refill, history API).
    Read,
    /// A heartbeat or node-list read.
    Heartbeat,
    /// A control message (`/v1/disconnect`).
    Control,
}

impl EngineOp {
    /// Every op, in label order.
    pub const ALL: [EngineOp; 5] = [
        EngineOp::Publish,
        EngineOp::Subscribe,
        EngineOp::Read,
        EngineOp::Heartbeat,
        EngineOp::Control,
    ];

    /// The label value.
    pub const fn as_label(self) -> &'static str {
        match self {
            EngineOp::Publish => "publish",
            EngineOp::Subscribe => "subscribe",
            EngineOp::Read => "read",
            EngineOp::Heartbeat => "heartbeat",
            EngineOp::Control => "control",
        }
    }
}

impl EngineMetrics {
    /// Registers every engine series with the current recorder (`up` starts at 0).
    pub fn new() -> EngineMetrics {
        EngineMetrics {
            up: gauge!(names::ENGINE_UP),
            went_up: counter!(names::ENGINE_TRANSITIONS, "state" => "up"),
            went_down: counter!(names::ENGINE_TRANSITIONS, "state" => "down"),
            errors: EngineOp::ALL.map(|op| counter!(names::ENGINE_ERRORS, "op" => op.as_label())),
            publish_seconds: histogram!(names::ENGINE_PUBLISH),
            resubscribes: counter!(names::ENGINE_RESUBSCRIBES),
            subscribe_failures: counter!(names::ENGINE_SUBSCRIBE_FAILURES),
            gaps_refilled: counter!(names::POSITION_GAPS, "result" => "refilled"),
            gaps_lost: counter!(names::POSITION_GAPS, "result" => "lost"),
            broker_messages: counter!(names::BROKER_MESSAGES),
        }
    }

    /// The error counter of `op`.
    pub fn error(&self, op: EngineOp) -> &Counter {
        &self.errors[op as usize]
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics::new()
    }
}

/// A counter with a single writer (its worker), read by the exporter at scrape time.
/// See the module docs for why a relaxed load and store suffice.
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    /// Adds `n`. Only the owning worker calls this.
    #[inline]
    pub fn increment(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with a single writer (its worker): the last value set.
#[derive(Debug, Default)]
pub struct LocalGauge(AtomicU64);

impl LocalGauge {
    /// Sets the value. Only the owning worker calls this.
    #[inline]
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A fixed-bucket histogram with a single writer (its worker): one count per bucket
/// (the last one for samples above every bound) and the sum of the samples.
#[derive(Debug)]
pub struct LocalHistogram {
    /// Upper bounds, ascending; a sample equal to a bound counts in that bucket.
    bounds: &'static [f64],
    /// `counts[i]` = samples in `(bounds[i-1], bounds[i]]`; `counts[bounds.len()]` =
    /// samples above the last bound.
    counts: Box<[LocalCounter]>,
    /// Sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl LocalHistogram {
    /// An empty histogram with `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> LocalHistogram {
        debug_assert!(bounds.is_sorted(), "bucket bounds ascend");
        LocalHistogram {
            bounds,
            counts: (0..=bounds.len())
                .map(|_| LocalCounter::default())
                .collect(),
            sum: AtomicU64::new(0.0f64.to_bits()),
        }
    }

    /// Records one sample (seconds). Only the owning worker calls this.
    #[inline]
    pub fn record(&self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].increment(1);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + value;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// The cumulative count of samples at or below each bound, then the total.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0u64;
        self.counts
            .iter()
            .map(|c| {
                total = total.wrapping_add(c.get());
                total
            })
            .collect()
    }

    /// The sum of the samples.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    /// The upper bounds of the buckets.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }
}

/// One worker's metrics, labelled `worker="N"`, written by that worker only (the
/// exporter reads them at scrape time; see the module docs). Get it from
/// [`Exporter::worker`]; it dereferences to the values ([`WorkerStats`]), so recording
/// is `metrics.pings_sent.increment(1)`.
#[derive(Debug)]
pub struct WorkerMetrics(Arc<WorkerStats>);

impl Deref for WorkerMetrics {
    type Target = WorkerStats;

    fn deref(&self) -> &WorkerStats {
        &self.0
    }
}

/// The values of one worker's metrics. The per-reason arrays are indexed by
/// [`CloseReason::index`] and [`HandshakeFailure::index`] (or use
/// [`WorkerStats::closed`] / [`WorkerStats::handshake_failed`]).
#[derive(Debug)]
pub struct WorkerStats {
    /// The `worker` label.
    worker: usize,
    /// `pingwheel_connections`: open client connections (from accept to close).
    pub connections: LocalGauge,
    /// `pingwheel_connections_opened_total`: accepted connections.
    pub connections_opened: LocalCounter,
    /// `pingwheel_connections_closed_total{reason}`, indexed by [`CloseReason::index`].
    pub connections_closed: [LocalCounter; CloseReason::ALL.len()],
    /// `pingwheel_handshake_failures_total{reason}`, indexed by [`HandshakeFailure::index`].
    pub handshake_failures: [LocalCounter; HandshakeFailure::ALL.len()],
    /// `pingwheel_pings_sent_total`.
    pub pings_sent: LocalCounter,
    /// `pingwheel_pongs_received_total`.
    pub pongs_received: LocalCounter,
    /// `pingwheel_ping_timeouts_total`.
    pub ping_timeouts: LocalCounter,
    /// `pingwheel_ping_rtt_seconds`: record seconds.
    pub ping_rtt: LocalHistogram,
    /// `pingwheel_messages_received_total`.
    pub messages_received: LocalCounter,
    /// `pingwheel_messages_sent_total`.
    pub messages_sent: LocalCounter,
    /// `pingwheel_bytes_received_total`.
    pub bytes_received: LocalCounter,
    /// `pingwheel_bytes_sent_total`.
    pub bytes_sent: LocalCounter,
    /// `pingwheel_timers`: set to the wheel's `len()`.
    pub timers: LocalGauge,
    /// `pingwheel_event_loop_lag_seconds`: now minus the deadline of the timers being run.
    pub event_loop_lag: LocalHistogram,
    /// `pingwheel_deliveries_total`.
    pub deliveries: LocalCounter,
    /// `pingwheel_slow_consumer_disconnects_total`.
    pub slow_consumer_disconnects: LocalCounter,
    /// `pingwheel_subscriptions`.
    pub subscriptions: LocalGauge,
    /// `pingwheel_channels`: channels with at least one local subscriber.
    pub channels: LocalGauge,
    /// `pingwheel_delivery_lag_seconds`.
    pub delivery_lag: LocalHistogram,
    /// `pingwheel_recoveries_total{result}`, indexed like [`names::RECOVERY_RESULTS`].
    pub recoveries: [LocalCounter; names::RECOVERY_RESULTS.len()],
    /// `pingwheel_recovered_messages_total`.
    pub recovered_messages: LocalCounter,
    /// `pingwheel_accept_pauses_total`.
    pub accept_pauses: LocalCounter,
    /// `pingwheel_tls_handshakes_total{result}`, indexed by [`TlsResult`].
    pub tls_handshakes: [LocalCounter; names::TLS_HANDSHAKE_RESULTS.len()],
    /// `pingwheel_tls_handshake_seconds`.
    pub tls_handshake_seconds: LocalHistogram,
}

impl WorkerStats {
    fn new(worker: usize) -> WorkerStats {
        WorkerStats {
            worker,
            connections: LocalGauge::default(),
            connections_opened: LocalCounter::default(),
            connections_closed: Default::default(),
            handshake_failures: Default::default(),
            pings_sent: LocalCounter::default(),
            pongs_received: LocalCounter::default(),
            ping_timeouts: LocalCounter::default(),
            ping_rtt: LocalHistogram::new(&LATENCY_BUCKETS),
            messages_received: LocalCounter::default(),
            messages_sent: LocalCounter::default(),
            bytes_received: LocalCounter::default(),
            bytes_sent: LocalCounter::default(),
            timers: LocalGauge::default(),
            event_loop_lag: LocalHistogram::new(&LAG_BUCKETS),
            deliveries: LocalCounter::default(),
            slow_consumer_disconnects: LocalCounter::default(),
            subscriptions: LocalGauge::default(),
            channels: LocalGauge::default(),
            delivery_lag: LocalHistogram::new(&LATENCY_BUCKETS),
            recoveries: Default::default(),
            recovered_messages: LocalCounter::default(),
            accept_pauses: LocalCounter::default(),
            tls_handshakes: Default::default(),
            tls_handshake_seconds: LocalHistogram::new(&HANDSHAKE_BUCKETS),
        }
    }

    /// Counts one TLS handshake outcome.
    pub fn tls_handshake(&self, result: TlsResult) {
        self.tls_handshakes[result as usize].increment(1);
    }

    /// Counts one finished subscribe with `since`.
    pub fn recovery(&self, recovered: bool, messages: usize) {
        self.recoveries[usize::from(!recovered)].increment(1);
        self.recovered_messages.increment(messages as u64);
    }

    /// The `pingwheel_connections_closed_total` counter for `reason`.
    pub fn closed(&self, reason: CloseReason) -> &LocalCounter {
        &self.connections_closed[reason.index()]
    }

    /// The `pingwheel_handshake_failures_total` counter for `failure`.
    pub fn handshake_failed(&self, failure: HandshakeFailure) -> &LocalCounter {
        &self.handshake_failures[failure.index()]
    }

    /// Writes every series of family `f` for this worker.
    fn write_series(&self, f: &Family, out: &mut String) {
        let w = self.worker;
        let mut line = |labels: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{}{{worker=\"{w}\"{labels}}} {value}", f.name);
        };
        match f.name {
            names::CONNECTIONS => line("", &self.connections.get()),
            names::CONNECTIONS_OPENED => line("", &self.connections_opened.get()),
            names::CONNECTIONS_CLOSED => {
                for reason in CloseReason::ALL {
                    let labels = format!(",reason=\"{}\"", reason.as_label());
                    line(&labels, &self.closed(reason).get());
                }
            }
            names::HANDSHAKE_FAILURES => {
                for failure in HandshakeFailure::ALL {
                    let labels = format!(",reason=\"{}\"", failure.as_label());
                    line(&labels, &self.handshake_failed(failure).get());
                }
            }
            names::PINGS_SENT => line("", &self.pings_sent.get()),
            names::PONGS_RECEIVED => line("", &self.pongs_received.get()),
            names::PING_TIMEOUTS => line("", &self.ping_timeouts.get()),
            names::MESSAGES_RECEIVED => line("", &self.messages_received.get()),
            names::MESSAGES_SENT => line("", &self.messages_sent.get()),
            names::BYTES_RECEIVED => line("", &self.bytes_received.get()),
            names::BYTES_SENT => line("", &self.bytes_sent.get()),
            names::TIMERS => line("", &self.timers.get()),
            names::DELIVERIES => line("", &self.deliveries.get()),
            names::SLOW_CONSUMER_DISCONNECTS => line("", &self.slow_consumer_disconnects.get()),
            names::SUBSCRIPTIONS => line("", &self.subscriptions.get()),
            names::CHANNELS => line("", &self.channels.get()),
            names::PING_RTT => write_histogram(f.name, w, &self.ping_rtt, out),
            names::EVENT_LOOP_LAG => write_histogram(f.name, w, &self.event_loop_lag, out),
            names::DELIVERY_LAG => write_histogram(f.name, w, &self.delivery_lag, out),
            names::RECOVERIES => {
                for (result, counter) in names::RECOVERY_RESULTS.iter().zip(&self.recoveries) {
                    line(&format!(",result=\"{result}\""), &counter.get());
                }
            }
            names::RECOVERED_MESSAGES => line("", &self.recovered_messages.get()),
            names::ACCEPT_PAUSES => line("", &self.accept_pauses.get()),
            names::TLS_HANDSHAKES => {
                for (result, counter) in names::TLS_HANDSHAKE_RESULTS
                    .iter()
                    .zip(&self.tls_handshakes)
                {
                    line(&format!(",result=\"{result}\""), &counter.get());
                }
            }
            names::TLS_HANDSHAKE_SECONDS => {
                write_histogram(f.name, w, &self.tls_handshake_seconds, out);
            }
            other => debug_assert!(false, "no per-worker series for {other}"),
        }
    }
}

/// Writes one worker's histogram as `_bucket` (cumulative, `le` per bound and `+Inf`),
/// `_sum` and `_count` lines, as `metrics-exporter-prometheus` does.
fn write_histogram(name: &str, worker: usize, h: &LocalHistogram, out: &mut String) {
    let cumulative = h.cumulative();
    let total = *cumulative
        .last()
        .expect("one count per bucket and one above");
    for (bound, count) in h.bounds().iter().zip(&cumulative) {
        let _ = writeln!(
            out,
            "{name}_bucket{{worker=\"{worker}\",le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{worker=\"{worker}\",le=\"+Inf\"}} {total}"
    );
    let _ = writeln!(out, "{name}_sum{{worker=\"{worker}\"}} {}", h.sum());
    let _ = writeln!(out, "{name}_count{{worker=\"{worker}\"}} {total}");
}

/// Renders `/metrics`: every worker's series, read at scrape time, followed by the
/// series of the `metrics` recorder (the admin thread's: publish API, auth failures).
#[derive(Debug)]
pub struct Exporter {
    prometheus: PrometheusHandle,
    workers: Vec<Arc<WorkerStats>>,
}

impl Exporter {
    /// An exporter for `prometheus`'s series, with no workers yet.
    pub fn new(prometheus: PrometheusHandle) -> Exporter {
        Exporter {
            prometheus,
            workers: Vec::new(),
        }
    }

    /// The metrics of worker number `worker`, exported from now on. Every series
    /// exists from here on, so a reason that never happened is exported as 0 rather
    /// than missing.
    pub fn worker(&mut self, worker: usize) -> WorkerMetrics {
        let stats = Arc::new(WorkerStats::new(worker));
        self.workers.push(Arc::clone(&stats));
        WorkerMetrics(stats)
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if !self.workers.is_empty() {
            for f in &WORKER_FAMILIES {
                let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
                let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
                for w in &self.workers {
                    w.write_series(f, &mut out);
                }
                out.push('\n');
            }
        }
        out.push_str(&self.prometheus.render());
        out
    }

    /// Drains the recorder's histogram samples; call every [`UPKEEP_INTERVAL`].
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// Process-wide metric handles for the admin thread (publish API). No `worker` label:
/// client-side auth failures, counted by workers, use the same series.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// `pingwheel_publishes_total`.
    pub publishes: Counter,
    /// `pingwheel_auth_failures_total{reason}`, indexed by [`AuthFailure::index`].
    pub auth_failures: [Counter; AuthFailure::ALL.len()],
}

/// The process-wide TLS series (`pingwheel_tls_reloads_total`,
/// `pingwheel_tls_certificate_expiry_timestamp_seconds`), registered at startup when a
/// listener serves TLS so they exist from the first scrape.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    /// `pingwheel_tls_reloads_total{result="ok"}`.
    pub reloads_ok: Counter,
    /// `pingwheel_tls_reloads_total{result="failed"}`.
    pub reloads_failed: Counter,
}

impl TlsMetrics {
    /// Registers the reload counters with the current recorder.
    pub fn new() -> TlsMetrics {
        TlsMetrics {
            reloads_ok: counter!(names::TLS_RELOADS, "result" => "ok"),
            reloads_failed: counter!(names::TLS_RELOADS, "result" => "failed"),
        }
    }

    /// Sets the expiry gauge of `listener` (`ws` or `admin`) to `not_after` (unix s).
    pub fn set_expiry(&self, listener: &'static str, not_after: i64) {
        gauge!(names::TLS_CERT_EXPIRY, "listener" => listener).set(not_after as f64);
    }
}

impl Default for TlsMetrics {
    fn default() -> Self {
        TlsMetrics::new()
    }
}

/// Sets the process-wide history gauges (at each scrape, from the engine's numbers).
pub fn set_history(messages: u64, bytes: u64) {
    gauge!(names::HISTORY_MESSAGES).set(messages as f64);
    gauge!(names::HISTORY_BYTES).set(bytes as f64);
}

impl ApiMetrics {
    /// Registers the process-wide series with the current recorder.
    pub fn new() -> ApiMetrics {
        ApiMetrics {
            publishes: counter!(names::PUBLISHES),
            auth_failures: AuthFailure::ALL
                .map(|failure| counter!(names::AUTH_FAILURES, "reason" => failure.as_label())),
        }
    }

    /// The `pingwheel_auth_failures_total` counter for `failure`.
    pub fn auth_failed(&self, failure: AuthFailure) -> &Counter {
        &self.auth_failures[failure.index()]
    }

    /// Counts one publish-API response with HTTP `status`. This looks the series up by
    /// label (cheap next to an HTTP request), so it is not for worker hot paths.
    pub fn publish_request(&self, status: u16) {
        counter!(names::PUBLISH_REQUESTS, "status" => status.to_string()).increment(1);
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// Builds a private recorder and an exporter, touches every series, and renders.
    fn render_everything() -> String {
        let recorder = builder().expect("buckets are non-empty").build_recorder();
        let mut exporter = Exporter::new(recorder.handle());
        let workers: Vec<WorkerMetrics> = (0..2).map(|w| exporter.worker(w)).collect();
        for m in &workers {
            m.connections.set(3.0);
            m.connections_opened.increment(4);
            for reason in CloseReason::ALL {
                m.closed(reason).increment(1);
            }
            for failure in HandshakeFailure::ALL {
                m.handshake_failed(failure).increment(1);
            }
            m.pings_sent.increment(5);
            m.pongs_received.increment(5);
            m.ping_timeouts.increment(1);
            m.ping_rtt.record(Duration::from_micros(300).as_secs_f64());
            m.ping_rtt.record(Duration::from_secs(30).as_secs_f64());
            m.messages_received.increment(1);
            m.messages_sent.increment(1);
            m.bytes_received.increment(100);
            m.bytes_sent.increment(100);
            m.timers.set(3.0);
            m.event_loop_lag
                .record(Duration::from_millis(2).as_secs_f64());
            m.deliveries.increment(1);
            m.slow_consumer_disconnects.increment(1);
            m.subscriptions.set(2.0);
            m.channels.set(1.0);
            m.delivery_lag
                .record(Duration::from_millis(1).as_secs_f64());
            m.recovery(true, 20);
            m.recovery(false, 0);
            m.accept_pauses.increment(1);
            m.tls_handshake(TlsResult::Full);
            m.tls_handshake(TlsResult::Resumed);
            m.tls_handshake(TlsResult::Failed);
            m.tls_handshake(TlsResult::Timeout);
            m.tls_handshake_seconds.record(0.002);
        }
        metrics::with_local_recorder(&recorder, || {
            describe();
            set_history(10, 4096);
            let api = ApiMetrics::new();
            api.publishes.increment(1);
            for failure in AuthFailure::ALL {
                api.auth_failed(failure).increment(1);
            }
            api.publish_request(200);
            api.publish_request(413);
            let tls = TlsMetrics::new();
            tls.reloads_ok.increment(1);
            tls.reloads_failed.increment(1);
            tls.set_expiry("ws", 1_900_000_000);
            tls.set_expiry("admin", 1_900_000_000);
            let engine = EngineMetrics::new();
            engine.up.set(1.0);
            engine.publish_seconds.record(Duration::from_micros(300));
        });
        exporter.run_upkeep();
        exporter.render()
    }

    #[test]
    fn every_metric_renders_with_its_type() {
        let text = render_everything();
        for name in names::ALL {
            let expected_type = if names::HISTOGRAMS.contains(&name) {
                "histogram"
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {name} {expected_type}\n")),
                "{name} should be a {expected_type}:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} lacks HELP:\n{text}"
            );
        }
        assert!(!text.contains("summary"), "no summaries:\n{text}");
        assert!(!text.contains("quantile="), "no summaries:\n{text}");
    }

    #[test]
    fn labels_and_buckets_are_as_documented() {
        let text = render_everything();
        for reason in CloseReason::ALL {
            let series = format!(
                "pingwheel_connections_closed_total{{worker=\"1\",reason=\"{}\"}} 1\n",
                reason.as_label()
            );
            assert!(text.contains(&series), "missing {series}:\n{text}");
        }
        for failure in HandshakeFailure::ALL {
            let series = format!(
                "pingwheel_handshake_failures_total{{worker=\"0\",reason=\"{}\"}} 1\n",
                failure.as_label()
            );
            assert!(text.contains(&series), "missing {series}:\n{text}");
        }
        for failure in AuthFailure::ALL {
            let series = format!(
                "pingwheel_auth_failures_total{{reason=\"{}\"}} 1\n",
                failure.as_label()
            );
            assert!(text.contains(&series), "missing {series}:\n{text}");
        }
        assert!(
            text.contains("pingwheel_publish_requests_total{status=\"413\"} 1\n"),
            "{text}"
        );
        // 300 µs lands in the 500 µs bucket; 30 s only in +Inf.
        assert!(
            text.contains("pingwheel_ping_rtt_seconds_bucket{worker=\"0\",le=\"0.00025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("pingwheel_ping_rtt_seconds_bucket{worker=\"0\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pingwheel_ping_rtt_seconds_bucket{worker=\"0\",le=\"20\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pingwheel_ping_rtt_seconds_bucket{worker=\"0\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("pingwheel_event_loop_lag_seconds_bucket{worker=\"1\",le=\"10\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("pingwheel_event_loop_lag_seconds_bucket{worker=\"1\",le=\"20\"}"),
            "lag buckets stop at 10 s:\n{text}"
        );
    }

    #[test]
    fn docs_list_every_metric_and_label_value() {
        let doc = include_str!("../../../docs/metrics.md");
        for name in names::ALL {
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "docs/metrics.md lacks a row for {name}"
            );
        }
        let labels = CloseReason::ALL
            .iter()
            .map(|r| r.as_label())
            .chain(HandshakeFailure::ALL.iter().map(|f| f.as_label()))
            .chain(AuthFailure::ALL.iter().map(|f| f.as_label()));
        for label in labels {
            assert!(
                doc.contains(&format!("| `{label}` |")),
                "docs/metrics.md lacks the reason {label}"
            );
        }
    }

    #[test]
    fn worker_series_print_as_the_prometheus_exporter_prints_them() {
        // The same series through the `metrics` facade and the exporter crate, as
        // pingwheel exported them before its workers kept their own counters. Powers of
        // two (and a bound), so the sums are exact in any order.
        const SAMPLES: [f64; 6] = [
            0.000_061_035_156_25,
            0.000_244_140_625,
            0.000_244_140_625,
            0.5,
            2.5,
            32.0,
        ];
        let recorder = builder().expect("buckets").build_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::counter!(names::PINGS_SENT, "worker" => "0").increment(5);
            metrics::gauge!(names::CONNECTIONS, "worker" => "0").set(3.0);
            let rtt = metrics::histogram!(names::PING_RTT, "worker" => "0");
            for v in SAMPLES {
                rtt.record(v);
            }
        });
        let facade = recorder.handle().render();
        let mut exporter = Exporter::new(builder().expect("buckets").build_recorder().handle());
        let m = exporter.worker(0);
        m.pings_sent.increment(5);
        m.connections.set(3.0);
        for v in SAMPLES {
            m.ping_rtt.record(v);
        }
        let ours = exporter.render();
        // Every line the facade printed for these families, ours prints identically.
        let families = [names::PINGS_SENT, names::CONNECTIONS, names::PING_RTT];
        let mut compared = 0;
        for line in facade
            .lines()
            .filter(|l| families.iter().any(|f| l.contains(f)))
        {
            assert!(
                ours.lines().any(|l| l == line),
                "missing {line:?} in:\n{ours}"
            );
            compared += 1;
        }
        // HELP, TYPE and the series: one line for the counter and the gauge, 17 buckets,
        // +Inf, _sum and _count for the histogram.
        assert_eq!(compared, 3 + 3 + (2 + 17 + 3), "{facade}");
    }

    #[test]
    fn a_histogram_counts_a_sample_equal_to_a_bound_in_that_bucket() {
        let h = LocalHistogram::new(&LATENCY_BUCKETS);
        h.record(0.0005);
        h.record(0.0005000001);
        h.record(100.0);
        let c = h.cumulative();
        assert_eq!(c[2], 1, "le=0.0005");
        assert_eq!(c[3], 2, "le=0.001");
        assert_eq!(c[LATENCY_BUCKETS.len() - 1], 2, "le=20");
        assert_eq!(c[LATENCY_BUCKETS.len()], 3, "+Inf");
        assert!((h.sum() - 100.0010000001).abs() < 1e-9);
    }

    #[test]
    fn a_counter_read_from_another_thread_sees_every_increment() {
        let mut exporter = Exporter::new(builder().expect("buckets").build_recorder().handle());
        let m = exporter.worker(0);
        let writer = std::thread::spawn(move || {
            for _ in 0..100_000 {
                m.pings_sent.increment(1);
            }
            m
        });
        let m = writer.join().unwrap();
        assert!(
            exporter
                .render()
                .contains("pingwheel_pings_sent_total{worker=\"0\"} 100000\n")
        );
        drop(m);
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let text = render_everything();
        let promtool = std::env::var_os("PROMTOOL_BIN").unwrap_or_else(|| "promtool".into());
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {promtool:?} ({err}); install it (Debian package `prometheus`) \
                     or run scripts/test, which installs it"
                )
            });
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("promtool reads stdin");
        let output = child.wait_with_output().expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
