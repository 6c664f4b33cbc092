//! Metric names, histogram buckets, per-worker handles, and the Prometheus recorder.
//!
//! Every metric pingwheel exports is named here (see [`names`]) and described in
//! `docs/metrics.md`. Names follow Prometheus conventions: base units (seconds, bytes) in
//! the name, `_total` on counters. Histograms are real Prometheus histograms with explicit
//! buckets (never summaries), so they can be aggregated across workers and processes.
//!
//! # Hot path
//!
//! The event loop never looks a metric up by name. Each worker builds one
//! [`WorkerMetrics`] at start-up, which registers every series it will touch (with a
//! `worker="N"` label) and keeps the handles; recording is then an atomic add (counters,
//! gauges) or a lock-free push (histograms).
//!
//! # Order of operations
//!
//! 1. [`install_recorder`] once, before any handle is created: handles made earlier are
//!    bound to the no-op recorder and record nothing.
//! 2. [`WorkerMetrics::new`] per worker, [`ApiMetrics::new`] once for the admin thread.
//! 3. The admin thread renders `/metrics` with the returned [`PrometheusHandle`] and calls
//!    [`PrometheusHandle::run_upkeep`] every [`UPKEEP_INTERVAL`]: without the exporter's
//!    own HTTP listener nobody else drains histogram samples, and an unscraped histogram
//!    would otherwise grow without bound.

use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::conn::{CloseReason, HandshakeFailure};
use crate::push::auth::AuthFailure;

/// How often the admin thread must call [`PrometheusHandle::run_upkeep`].
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
    /// Counter: gaps in a stream's seq seen by this node, per `result`.
    pub const POSITION_GAPS: &str = "pingwheel_position_gaps_total";
    /// Counter: messages received from the broker's pub/sub.
    pub const BROKER_MESSAGES: &str = "pingwheel_broker_messages_received_total";

    /// Every metric name, for tests and documentation checks.
    pub const ALL: [&str; 34] = [
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
        POSITION_GAPS,
        BROKER_MESSAGES,
    ];

    /// The `result` label values of [`RECOVERIES`].
    pub const RECOVERY_RESULTS: [&str; 2] = ["recovered", "not_recovered"];

    /// The histograms among [`ALL`].
    pub const HISTOGRAMS: [&str; 4] = [PING_RTT, EVENT_LOOP_LAG, DELIVERY_LAG, ENGINE_PUBLISH];
}

/// Buckets (upper bounds, seconds) for round-trip and delivery latencies: 100 µs … 20 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0,
];

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
    builder.set_buckets_for_metric(
        Matcher::Full(names::EVENT_LOOP_LAG.to_owned()),
        &LAG_BUCKETS,
    )
}

/// Builds the Prometheus recorder, installs it as the global `metrics` recorder, describes
/// every metric, and returns the handle that renders `/metrics`.
///
/// Call once, before creating any [`WorkerMetrics`] or [`ApiMetrics`]. The caller must run
/// [`PrometheusHandle::run_upkeep`] every [`UPKEEP_INTERVAL`] (the admin thread does).
///
/// # Errors
///
/// When a global recorder is already installed.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = builder()?.install_recorder()?;
    describe();
    Ok(handle)
}

/// Registers HELP text and units for every metric with the current recorder.
/// [`install_recorder`] calls it; tests using a local recorder call it themselves.
pub fn describe() {
    describe_gauge!(
        names::CONNECTIONS,
        Unit::Count,
        "Open client connections: accepted TCP connections, upgraded or still in the HTTP upgrade."
    );
    describe_counter!(
        names::CONNECTIONS_OPENED,
        Unit::Count,
        "Client connections accepted."
    );
    describe_counter!(
        names::CONNECTIONS_CLOSED,
        Unit::Count,
        "Client connections closed, by reason (each accepted connection ends with exactly one reason)."
    );
    describe_counter!(
        names::HANDSHAKE_FAILURES,
        Unit::Count,
        "HTTP upgrade requests refused or abandoned, by reason."
    );
    describe_counter!(names::PINGS_SENT, Unit::Count, "Keepalive pings sent.");
    describe_counter!(names::PONGS_RECEIVED, Unit::Count, "Pong frames received.");
    describe_counter!(
        names::PING_TIMEOUTS,
        Unit::Count,
        "Connections closed with 1011 because a keepalive ping got no pong in time."
    );
    describe_histogram!(
        names::PING_RTT,
        Unit::Seconds,
        "Keepalive ping to pong round-trip time, in seconds."
    );
    describe_counter!(
        names::MESSAGES_RECEIVED,
        Unit::Count,
        "Complete data messages received from clients."
    );
    describe_counter!(
        names::MESSAGES_SENT,
        Unit::Count,
        "Data messages queued to clients."
    );
    describe_counter!(
        names::BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes read from client sockets: HTTP upgrade requests and WebSocket frames."
    );
    describe_counter!(
        names::BYTES_SENT,
        Unit::Bytes,
        "Bytes written to client sockets: HTTP upgrade responses and WebSocket frames."
    );
    describe_gauge!(
        names::TIMERS,
        Unit::Count,
        "Live entries in the worker's timer wheel (at most one per connection)."
    );
    describe_histogram!(
        names::EVENT_LOOP_LAG,
        Unit::Seconds,
        "How late a worker ran its due timers, in seconds."
    );
    describe_counter!(
        names::DELIVERIES,
        Unit::Count,
        "Published messages written to subscribers."
    );
    describe_counter!(
        names::SLOW_CONSUMER_DISCONNECTS,
        Unit::Count,
        "Subscribers closed with 1013 because their outbound queue overflowed."
    );
    describe_gauge!(
        names::SUBSCRIPTIONS,
        Unit::Count,
        "Channel subscriptions held by the worker's connections."
    );
    describe_gauge!(
        names::CHANNELS,
        Unit::Count,
        "Channels with at least one subscriber on the worker."
    );
    describe_histogram!(
        names::DELIVERY_LAG,
        Unit::Seconds,
        "Time from a publish being accepted to its frame being written to a subscriber's socket, in seconds."
    );
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
    describe_counter!(
        names::RECOVERIES,
        Unit::Count,
        "Subscribes with since, by result (recovered or not_recovered)."
    );
    describe_counter!(
        names::RECOVERED_MESSAGES,
        Unit::Count,
        "Messages delivered from history by recoveries."
    );
    describe_counter!(
        names::ACCEPT_PAUSES,
        Unit::Count,
        "Accept pauses of 100 ms after accept failed for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)."
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
        names::POSITION_GAPS,
        Unit::Count,
        "Gaps in a stream's seq seen by this node, by result: refilled from history, or lost (position_lost sent)."
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

/// One worker's metric handles, labelled `worker="N"`. Build once per worker, after
/// [`install_recorder`]; then record without any lookup.
///
/// The fields are the handles themselves (`metrics.pings_sent.increment(1)`); the
/// per-reason arrays are indexed by [`CloseReason::index`] and [`HandshakeFailure::index`]
/// (or use [`WorkerMetrics::closed`] / [`WorkerMetrics::handshake_failed`]).
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// `pingwheel_connections`: open client connections (from accept to close).
    pub connections: Gauge,
    /// `pingwheel_connections_opened_total`: accepted connections.
    pub connections_opened: Counter,
    /// `pingwheel_connections_closed_total{reason}`, indexed by [`CloseReason::index`].
    pub connections_closed: [Counter; CloseReason::ALL.len()],
    /// `pingwheel_handshake_failures_total{reason}`, indexed by [`HandshakeFailure::index`].
    pub handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    /// `pingwheel_pings_sent_total`.
    pub pings_sent: Counter,
    /// `pingwheel_pongs_received_total`.
    pub pongs_received: Counter,
    /// `pingwheel_ping_timeouts_total`.
    pub ping_timeouts: Counter,
    /// `pingwheel_ping_rtt_seconds`: record a `Duration` (converted to seconds).
    pub ping_rtt: Histogram,
    /// `pingwheel_messages_received_total`.
    pub messages_received: Counter,
    /// `pingwheel_messages_sent_total`.
    pub messages_sent: Counter,
    /// `pingwheel_bytes_received_total`.
    pub bytes_received: Counter,
    /// `pingwheel_bytes_sent_total`.
    pub bytes_sent: Counter,
    /// `pingwheel_timers`: set to the wheel's `len()`.
    pub timers: Gauge,
    /// `pingwheel_event_loop_lag_seconds`: now minus the deadline of the timers being run.
    pub event_loop_lag: Histogram,
    /// `pingwheel_deliveries_total`.
    pub deliveries: Counter,
    /// `pingwheel_slow_consumer_disconnects_total`.
    pub slow_consumer_disconnects: Counter,
    /// `pingwheel_subscriptions`.
    pub subscriptions: Gauge,
    /// `pingwheel_channels`: channels with at least one local subscriber.
    pub channels: Gauge,
    /// `pingwheel_delivery_lag_seconds`.
    pub delivery_lag: Histogram,
    /// `pingwheel_recoveries_total{result}`, indexed like [`names::RECOVERY_RESULTS`].
    pub recoveries: [Counter; 2],
    /// `pingwheel_recovered_messages_total`.
    pub recovered_messages: Counter,
    /// `pingwheel_accept_pauses_total`.
    pub accept_pauses: Counter,
}

impl WorkerMetrics {
    /// Registers (or finds) every per-worker series for worker number `worker` with the
    /// current recorder and keeps the handles. Every series exists from here on, so a
    /// reason that never happened is exported as 0 rather than missing.
    pub fn new(worker: usize) -> WorkerMetrics {
        let worker = worker.to_string();
        WorkerMetrics {
            connections: gauge!(names::CONNECTIONS, "worker" => worker.clone()),
            connections_opened: counter!(names::CONNECTIONS_OPENED, "worker" => worker.clone()),
            connections_closed: CloseReason::ALL.map(|reason| {
                counter!(
                    names::CONNECTIONS_CLOSED,
                    "worker" => worker.clone(),
                    "reason" => reason.as_label()
                )
            }),
            handshake_failures: HandshakeFailure::ALL.map(|failure| {
                counter!(
                    names::HANDSHAKE_FAILURES,
                    "worker" => worker.clone(),
                    "reason" => failure.as_label()
                )
            }),
            pings_sent: counter!(names::PINGS_SENT, "worker" => worker.clone()),
            pongs_received: counter!(names::PONGS_RECEIVED, "worker" => worker.clone()),
            ping_timeouts: counter!(names::PING_TIMEOUTS, "worker" => worker.clone()),
            ping_rtt: histogram!(names::PING_RTT, "worker" => worker.clone()),
            messages_received: counter!(names::MESSAGES_RECEIVED, "worker" => worker.clone()),
            messages_sent: counter!(names::MESSAGES_SENT, "worker" => worker.clone()),
            bytes_received: counter!(names::BYTES_RECEIVED, "worker" => worker.clone()),
            bytes_sent: counter!(names::BYTES_SENT, "worker" => worker.clone()),
            timers: gauge!(names::TIMERS, "worker" => worker.clone()),
            event_loop_lag: histogram!(names::EVENT_LOOP_LAG, "worker" => worker.clone()),
            deliveries: counter!(names::DELIVERIES, "worker" => worker.clone()),
            slow_consumer_disconnects: counter!(names::SLOW_CONSUMER_DISCONNECTS, "worker" => worker.clone()),
            subscriptions: gauge!(names::SUBSCRIPTIONS, "worker" => worker.clone()),
            channels: gauge!(names::CHANNELS, "worker" => worker.clone()),
            delivery_lag: histogram!(names::DELIVERY_LAG, "worker" => worker.clone()),
            recoveries: names::RECOVERY_RESULTS.map(|result| {
                counter!(names::RECOVERIES, "worker" => worker.clone(), "result" => result)
            }),
            recovered_messages: counter!(names::RECOVERED_MESSAGES, "worker" => worker.clone()),
            accept_pauses: counter!(names::ACCEPT_PAUSES, "worker" => worker.clone()),
        }
    }

    /// Counts one finished subscribe with `since`.
    pub fn recovery(&self, recovered: bool, messages: usize) {
        self.recoveries[usize::from(!recovered)].increment(1);
        self.recovered_messages.increment(messages as u64);
    }

    /// The `pingwheel_connections_closed_total` counter for `reason`.
    pub fn closed(&self, reason: CloseReason) -> &Counter {
        &self.connections_closed[reason.index()]
    }

    /// The `pingwheel_handshake_failures_total` counter for `failure`.
    pub fn handshake_failed(&self, failure: HandshakeFailure) -> &Counter {
        &self.handshake_failures[failure.index()]
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

    /// Builds a private recorder, creates and touches every handle under it, and renders.
    fn render_everything() -> String {
        let recorder = builder().expect("buckets are non-empty").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for worker in 0..2 {
                let m = WorkerMetrics::new(worker);
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
                m.ping_rtt.record(Duration::from_micros(300));
                m.ping_rtt.record(Duration::from_secs(30));
                m.messages_received.increment(1);
                m.messages_sent.increment(1);
                m.bytes_received.increment(100);
                m.bytes_sent.increment(100);
                m.timers.set(3.0);
                m.event_loop_lag.record(Duration::from_millis(2));
                m.deliveries.increment(1);
                m.slow_consumer_disconnects.increment(1);
                m.subscriptions.set(2.0);
                m.channels.set(1.0);
                m.delivery_lag.record(Duration::from_millis(1));
                m.recovery(true, 20);
                m.recovery(false, 0);
                m.accept_pauses.increment(1);
            }
            set_history(10, 4096);
            let api = ApiMetrics::new();
            api.publishes.increment(1);
            for failure in AuthFailure::ALL {
                api.auth_failed(failure).increment(1);
            }
            api.publish_request(200);
            api.publish_request(413);
            let engine = EngineMetrics::new();
            engine.up.set(1.0);
            engine.publish_seconds.record(Duration::from_micros(300));
        });
        handle.run_upkeep();
        handle.render()
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
    fn handles_made_before_any_recorder_are_harmless_no_ops() {
        // No recorder installed for this thread: must not panic.
        let m = WorkerMetrics::new(7);
        m.pings_sent.increment(1);
        m.ping_rtt.record(Duration::from_millis(1));
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
