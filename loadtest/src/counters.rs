//! What one load-generating process measured: the unit that children ship to the parent
//! and that [`crate::report`] merges into the final report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::{LatencyHistogram, Timeline};

/// Everything one engine measured during a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessReport {
    /// The process's PID.
    pub pid: u32,
    /// Connections this process was asked to hold (churn: cycles it started).
    pub target: u64,
    /// Connection attempts started.
    pub opened: u64,
    /// Connections whose opening handshake completed.
    pub established: u64,
    /// Attempts that never completed the handshake, by cause.
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Established connections that ended before the run ended them, by cause.
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Established connections still open when the run finished.
    pub open_at_end: u64,
    /// TCP connect + WebSocket handshake time.
    pub connect_latency: LatencyHistogram,
    /// Seconds from the engine's start to the end of its ramp.
    pub ramp_seconds: f64,
    /// Seconds the engine spent in the hold phase.
    pub hold_seconds: f64,
    /// Server pings and client pings.
    pub pings: PingCounters,
    /// Data messages the scenario did not interpret (e.g. unsolicited server messages).
    pub messages_received: u64,
    /// Push scenario counters.
    pub push: Option<PushCounters>,
    /// Echo scenario counters.
    pub echo: Option<EchoCounters>,
    /// Churn scenario counters.
    pub churn: Option<ChurnCounters>,
    /// TLS handshakes (`wss://` targets only).
    pub tls: Option<TlsCounters>,
    /// The scenario's main latency over time since the run started.
    pub timeline: Timeline,
    /// This process's RSS before it opened any connection.
    pub rss_start: u64,
    /// RSS when the hold began (after the ramp).
    pub rss_hold: u64,
    /// RSS when the hold ended, before connections were closed.
    pub rss_end: u64,
    /// This process's CPU seconds when the hold began.
    pub cpu_hold_start: f64,
    /// This process's CPU seconds when the hold ended.
    pub cpu_end: f64,
}

impl ProcessReport {
    /// Attempts that failed, all causes together.
    pub fn failed(&self) -> u64 {
        self.failed_by_cause.values().sum()
    }

    /// Established connections lost, all causes together.
    pub fn lost(&self) -> u64 {
        self.lost_by_cause.values().sum()
    }

    /// Adds `other` into `self` (histograms merge exactly; per-connection minimum and
    /// maximum combine; process samples add up).
    pub fn merge(&mut self, other: &Self) {
        self.target += other.target;
        self.opened += other.opened;
        self.established += other.established;
        add_causes(&mut self.failed_by_cause, &other.failed_by_cause);
        add_causes(&mut self.lost_by_cause, &other.lost_by_cause);
        self.open_at_end += other.open_at_end;
        self.connect_latency.merge(&other.connect_latency);
        self.ramp_seconds = self.ramp_seconds.max(other.ramp_seconds);
        self.hold_seconds = self.hold_seconds.max(other.hold_seconds);
        self.pings.merge(&other.pings);
        self.messages_received += other.messages_received;
        merge_option(&mut self.push, &other.push, PushCounters::merge);
        merge_option(&mut self.echo, &other.echo, EchoCounters::merge);
        merge_option(&mut self.churn, &other.churn, ChurnCounters::merge);
        merge_option(&mut self.tls, &other.tls, TlsCounters::merge);
        self.timeline.merge(&other.timeline);
        self.rss_start += other.rss_start;
        self.rss_hold += other.rss_hold;
        self.rss_end += other.rss_end;
        self.cpu_hold_start += other.cpu_hold_start;
        self.cpu_end += other.cpu_end;
    }
}

/// Adds per-cause counts.
pub fn add_causes(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (cause, count) in from {
        *into.entry(cause.clone()).or_default() += count;
    }
}

fn merge_option<T: Clone>(into: &mut Option<T>, from: &Option<T>, merge: fn(&mut T, &T)) {
    match (into.as_mut(), from) {
        (Some(into), Some(from)) => merge(into, from),
        (None, Some(from)) => *into = Some(from.clone()),
        (_, None) => {}
    }
}

fn merge_min(into: &mut Option<u64>, from: Option<u64>) {
    *into = match (*into, from) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

fn merge_max(into: &mut Option<u64>, from: Option<u64>) {
    *into = match (*into, from) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

/// TLS: how the handshakes of a `wss://` run went. Failed handshakes are in
/// [`ProcessReport::failed_by_cause`] under `tls_*` causes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsCounters {
    /// Handshakes completed in full (certificate sent and checked).
    pub full: u64,
    /// Handshakes that resumed a session (ticket or session id).
    pub resumed: u64,
    /// TCP connected → TLS handshake complete, every completed handshake.
    pub handshake: LatencyHistogram,
    /// The same, full handshakes only.
    pub handshake_full: LatencyHistogram,
    /// The same, resumed handshakes only.
    pub handshake_resumed: LatencyHistogram,
}

impl TlsCounters {
    /// Counts one completed handshake that took `us` microseconds.
    pub fn record(&mut self, kind: crate::tls::Handshake, us: u64) {
        self.handshake.record_us(us);
        match kind {
            crate::tls::Handshake::Full => {
                self.full += 1;
                self.handshake_full.record_us(us);
            }
            crate::tls::Handshake::Resumed => {
                self.resumed += 1;
                self.handshake_resumed.record_us(us);
            }
        }
    }

    fn merge(&mut self, other: &Self) {
        self.full += other.full;
        self.resumed += other.resumed;
        self.handshake.merge(&other.handshake);
        self.handshake_full.merge(&other.handshake_full);
        self.handshake_resumed.merge(&other.handshake_resumed);
    }
}

/// Keepalive: pings the server sent and pings the client sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PingCounters {
    /// Server pings received (and answered with a pong).
    pub received: u64,
    /// Server pings received during the hold phase.
    pub received_hold: u64,
    /// Time between consecutive server pings on the same connection (with
    /// `--publish-delay`: those that ended before the first publish was due).
    pub interval: LatencyHistogram,
    /// With `--publish-delay`: intervals that ended once the first publish was due (the
    /// fan-out shares the machine with keepalive); not part of the ping check.
    #[serde(default)]
    pub interval_after_publish: LatencyHistogram,
    /// Fewest pings any connection open at the end received.
    pub per_connection_min: Option<u64>,
    /// Most pings any connection open at the end received.
    pub per_connection_max: Option<u64>,
    /// Connections held long enough (two intervals) to be checked against
    /// `--expect-ping-interval`.
    pub connections_checked: u64,
    /// Checked connections that received fewer than floor(held ÷ interval) − 1 pings.
    pub connections_below_expected: u64,
    /// Client pings sent (`--client-ping-interval`).
    pub client_sent: u64,
    /// Round-trip times of client pings.
    pub client_rtt: LatencyHistogram,
}

impl PingCounters {
    fn merge(&mut self, other: &Self) {
        self.received += other.received;
        self.received_hold += other.received_hold;
        self.interval.merge(&other.interval);
        self.interval_after_publish
            .merge(&other.interval_after_publish);
        merge_min(&mut self.per_connection_min, other.per_connection_min);
        merge_max(&mut self.per_connection_max, other.per_connection_max);
        self.connections_checked += other.connections_checked;
        self.connections_below_expected += other.connections_below_expected;
        self.client_sent += other.client_sent;
        self.client_rtt.merge(&other.client_rtt);
    }
}

/// Push: subscriptions and deliveries as the clients saw them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushCounters {
    /// Connections that became subscribers (by acknowledgement, or at the upgrade with
    /// `--subscribe url`).
    pub subscribed: u64,
    /// `{"op":"subscribed"}` acknowledgements received.
    pub acks: u64,
    /// Subscribed, still-open connections per channel when the hold began.
    pub subscribed_by_channel: Vec<u64>,
    /// Deliveries received, duplicates excluded.
    pub delivered: u64,
    /// Deliveries whose `seq` equalled the previous one on the connection.
    pub duplicates: u64,
    /// Deliveries whose `seq` was below the previous one on the connection.
    pub reordered: u64,
    /// Text messages that were neither an acknowledgement nor a delivery.
    pub unexpected: u64,
    /// Publish (the `t` in the payload) → receive latency.
    pub latency: LatencyHistogram,
    /// `--recover-back`: subscribes answered `recovered:true`.
    pub recovered: u64,
    /// `--recover-back`: subscribes answered `recovered:false` (or without `recovered`).
    pub not_recovered: u64,
    /// `--recover-back`: recovered messages that were not the next expected seq
    /// (missing, duplicated or out of order).
    pub recovery_gaps: u64,
    /// `--recover-back`: clients that received every recovered message.
    pub recovery_complete: u64,
    /// `--recover-back`: subscribe → last recovered message.
    pub recovery: LatencyHistogram,
}

impl PushCounters {
    fn merge(&mut self, other: &Self) {
        self.subscribed += other.subscribed;
        self.acks += other.acks;
        if self.subscribed_by_channel.len() < other.subscribed_by_channel.len() {
            self.subscribed_by_channel
                .resize(other.subscribed_by_channel.len(), 0);
        }
        for (into, from) in self
            .subscribed_by_channel
            .iter_mut()
            .zip(&other.subscribed_by_channel)
        {
            *into += from;
        }
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.latency.merge(&other.latency);
        self.recovered += other.recovered;
        self.not_recovered += other.not_recovered;
        self.recovery_gaps += other.recovery_gaps;
        self.recovery_complete += other.recovery_complete;
        self.recovery.merge(&other.recovery);
    }
}

/// Echo: messages sent and their verified copies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EchoCounters {
    /// Messages sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Echoes whose payload, length or sequence differed from what was sent.
    pub mismatches: u64,
    /// Messages sent whose echo had not arrived when the run ended.
    pub outstanding_at_end: u64,
    /// Send → echo round-trip time.
    pub rtt: LatencyHistogram,
}

impl EchoCounters {
    fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.received += other.received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.mismatches += other.mismatches;
        self.outstanding_at_end += other.outstanding_at_end;
        self.rtt.merge(&other.rtt);
    }
}

/// Churn: connect → handshake → close cycles.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnCounters {
    /// Cycles started.
    pub started: u64,
    /// Cycles that ended with the server's close frame.
    pub completed: u64,
    /// Cycles not started because `--connections` cycles were already in flight.
    pub skipped_at_capacity: u64,
    /// Cycles still in flight when the run ended (neither completed nor failed).
    pub in_flight_at_end: u64,
    /// Connect start → server close frame.
    pub cycle: LatencyHistogram,
}

impl ChurnCounters {
    fn merge(&mut self, other: &Self) {
        self.started += other.started;
        self.completed += other.completed;
        self.skipped_at_capacity += other.skipped_at_capacity;
        self.in_flight_at_end += other.in_flight_at_end;
        self.cycle.merge(&other.cycle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, established: u64, pings: (u64, u64)) -> ProcessReport {
        let mut report = ProcessReport {
            pid,
            target: established + 1,
            opened: established + 1,
            established,
            open_at_end: established,
            ..ProcessReport::default()
        };
        report.failed_by_cause.insert("refused".into(), 1);
        report.pings.per_connection_min = Some(pings.0);
        report.pings.per_connection_max = Some(pings.1);
        report.pings.received = established * pings.0;
        report.connect_latency.record_us(1000 * u64::from(pid));
        report.push = Some(PushCounters {
            subscribed_by_channel: vec![1; pid as usize],
            delivered: 5,
            ..PushCounters::default()
        });
        report
    }

    #[test]
    fn merging_adds_counts_and_combines_extremes() {
        let mut total = ProcessReport::default();
        for part in [
            sample(1, 10, (3, 5)),
            sample(2, 20, (2, 4)),
            sample(3, 0, (9, 9)),
        ] {
            total.merge(&part);
        }
        assert_eq!(total.target, 33);
        assert_eq!(total.established, 30);
        assert_eq!(total.failed(), 3);
        assert_eq!(total.failed_by_cause["refused"], 3);
        assert_eq!(total.pings.per_connection_min, Some(2));
        assert_eq!(total.pings.per_connection_max, Some(9));
        assert_eq!(total.connect_latency.len(), 3);
        let push = total.push.expect("push counters merged");
        assert_eq!(push.delivered, 15);
        assert_eq!(push.subscribed_by_channel, [3, 2, 1]);
    }

    #[test]
    fn reports_survive_the_pipe() {
        let report = sample(7, 3, (1, 2));
        let line = serde_json::to_string(&report).unwrap();
        let back: ProcessReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back.established, 3);
        assert_eq!(back.connect_latency.len(), 1);
        assert_eq!(back.pings.per_connection_max, Some(2));
    }
}
