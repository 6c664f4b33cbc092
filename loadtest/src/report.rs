//! The final report: built from the merged engine reports plus what the coordinator
//! measured (server and harness samples, publishes, timings), judged against the run's
//! assertions, and printed as a table or written as JSON.
//!
//! The JSON schema is documented in docs/loadtest.md; field names are a contract
//! (CI checks and operators' scripts read them), so they are only ever added.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::Scenario;
use crate::counters::ProcessReport;
use crate::hist::{LatencyHistogram, Summary};
use crate::plan::Plan;
use crate::publish::PublishStats;
use crate::settings::{MainLatency, SubscribeMode};
use crate::units::{format_bytes, format_duration};

/// Version of the JSON schema; bumped only for incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// RSS and CPU of a group of processes (summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupSample {
    /// Resident bytes.
    pub rss_bytes: u64,
    /// CPU seconds (user + system).
    pub cpu_seconds: f64,
    /// The user-space part of `cpu_seconds`.
    #[serde(default)]
    pub user_seconds: f64,
}

impl GroupSample {
    /// Adds another process's sample, `user_seconds` of its `cpu_seconds` in user space.
    pub fn add(&mut self, rss_bytes: u64, cpu_seconds: f64, user_seconds: f64) {
        self.rss_bytes += rss_bytes;
        self.cpu_seconds += cpu_seconds;
        self.user_seconds += user_seconds;
    }
}

/// Server samples taken by the coordinator.
#[derive(Debug, Clone, Default)]
pub struct ServerSamples {
    /// The sampled PIDs.
    pub pids: Vec<u32>,
    /// Before any connection.
    pub before: GroupSample,
    /// After the ramp and the settle pause (start of the hold).
    pub after_ramp: Option<GroupSample>,
    /// At the end of the hold.
    pub end: Option<GroupSample>,
    /// Sampling failures (a server process exited, ...).
    pub errors: Vec<String>,
}

/// Everything the coordinator learned, handed to [`Report::build`].
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// Every engine's report merged.
    pub total: ProcessReport,
    /// Engines that ran.
    pub processes: usize,
    /// Engines that died or never reported, with what happened.
    pub engine_failures: Vec<String>,
    /// Whether every engine reported the end of its ramp before the ramp timeout.
    pub ramp_completed: bool,
    /// Seconds from start to the end of the ramp (the last engine's).
    pub ramp_seconds: f64,
    /// Seconds of the hold phase (as the coordinator timed it, including a push drain).
    pub hold_seconds: f64,
    /// Seconds of the whole run.
    pub total_seconds: f64,
    /// Open connections when the server was sampled after the ramp.
    pub open_at_ramp_sample: u64,
    /// Server sampling (`--server-pid`).
    pub server: Option<ServerSamples>,
    /// The coordinator's own samples when engines ran in children: start, hold
    /// start, hold end.
    pub parent: Option<[GroupSample; 3]>,
    /// What the publishers did (push).
    pub publish: Option<PublishStats>,
}

/// One checked condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assertion {
    /// Stable identifier (`max_lost`, `max_p99`, `ping_interval`, ...).
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was measured against what was required.
    pub detail: String,
}

/// The run's parameters, echoed for the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// `--url`.
    pub url: String,
    /// `--connections`.
    pub connections: u64,
    /// `--duration` in seconds.
    pub duration_s: f64,
    /// `--ramp-rate` per second.
    pub ramp_rate: f64,
    /// `--connect-timeout` in seconds.
    pub connect_timeout_s: f64,
    /// Processes holding connections.
    pub processes: usize,
    /// Source addresses in use (0: the kernel chose).
    pub source_addrs: usize,
    /// `--expect-ping-interval` in ms.
    pub expect_ping_interval_ms: Option<f64>,
    /// `--client-ping-interval` in ms.
    pub client_ping_interval_ms: Option<f64>,
    /// Which latency `--max-p99`, the timeline and the plot use.
    pub main_latency: MainLatency,
}

/// Run phases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    /// Start → every engine ramped.
    pub ramp_s: f64,
    /// Whether the ramp completed before `--ramp-timeout`.
    pub ramp_completed: bool,
    /// Hold phase (push: publishing plus the drain).
    pub hold_s: f64,
    /// Whole run.
    pub total_s: f64,
}

/// Connection accounting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connections {
    /// Connections asked for (churn: cycles started).
    pub target: u64,
    /// Attempts started.
    pub opened: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Attempts that never completed the handshake.
    pub failed: u64,
    /// `failed` by cause.
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Established connections that ended before the run ended them.
    pub lost: u64,
    /// `lost` by cause.
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Established connections open at the end of the hold.
    pub open_at_end: u64,
    /// Established connections per second during the ramp.
    pub ramp_rate_achieved: Option<f64>,
}

/// Keepalive results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pings {
    /// Server pings received (each answered with a pong).
    pub received: u64,
    /// Server pings received during the hold.
    pub received_hold: u64,
    /// Fewest pings a connection open at the end received.
    pub per_connection_min: Option<u64>,
    /// Most pings a connection open at the end received.
    pub per_connection_max: Option<u64>,
    /// `--expect-ping-interval` in ms.
    pub expected_interval_ms: Option<f64>,
    /// Connections held at least two expected intervals.
    pub connections_checked: u64,
    /// Checked connections with fewer than floor(held ÷ interval) − 1 pings.
    pub connections_below_expected: u64,
    /// Observed time between consecutive pings on a connection (with `--publish-delay`:
    /// the intervals that ended before the first publish was due).
    pub interval_ms: Summary,
    /// With `--publish-delay`: the intervals that ended after it (not checked).
    pub interval_after_publish_ms: Summary,
    /// Client pings sent.
    pub client_sent: u64,
    /// Client ping round-trip times.
    pub client_rtt_ms: Summary,
}

/// Push results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushSection {
    /// Channels used.
    pub channels: u32,
    /// `--fanout-burst`.
    pub fanout_burst: bool,
    /// `--subscribe` mode.
    pub subscribe: SubscribeMode,
    /// Connections that became subscribers.
    pub subscribed: u64,
    /// `{"op":"subscribed"}` acknowledgements received.
    pub acks: u64,
    /// Publishes accepted by the API.
    pub published: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// `publish_errors` by cause.
    pub publish_errors_by_cause: BTreeMap<String, u64>,
    /// Accepted publishes per second.
    pub publish_rate_achieved: f64,
    /// Σ over channels of accepted publishes × subscribers at the hold start.
    pub expected: u64,
    /// Deliveries received (duplicates excluded).
    pub delivered: u64,
    /// `expected − delivered` (0 when more arrived than expected).
    pub missing: u64,
    /// Deliveries with a `seq` below the previous one on the connection.
    pub reordered: u64,
    /// Deliveries repeating the previous `seq`.
    pub duplicates: u64,
    /// Text messages that were neither an acknowledgement nor a delivery.
    pub unexpected: u64,
    /// Deliveries per second over the publishing window.
    pub deliveries_per_sec: f64,
    /// Sum of the API replies' `subscribers` (a cross-check of `expected`).
    pub subscribers_reported: u64,
    /// Publish → receive latency.
    pub latency_ms: Summary,
    /// Publish request → response time.
    pub publish_rtt_ms: Summary,
    /// The recovery storm (`--recover-back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySection>,
}

/// The recovery storm of `--recover-back`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverySection {
    /// `--recover-back`: messages each client recovers.
    pub back: u64,
    /// Subscribes answered `recovered:true`.
    pub recovered: u64,
    /// Subscribes answered `recovered:false`.
    pub not_recovered: u64,
    /// Clients that received all their recovered messages, in order, once each.
    pub complete: u64,
    /// Recovered messages that were not the next expected seq.
    pub gaps: u64,
    /// Subscribe → last recovered message.
    pub latency_ms: Summary,
}

/// Echo results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoSection {
    /// `--message-size`.
    pub message_size: usize,
    /// `--message-rate` per connection (0: closed loop).
    pub message_rate: f64,
    /// Messages sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Echoes that differed from what was sent.
    pub mismatches: u64,
    /// Messages without an echo at the end.
    pub outstanding_at_end: u64,
    /// Echoes per second during the hold.
    pub messages_per_sec: f64,
    /// Echoed bytes per second during the hold.
    pub bytes_per_sec: f64,
    /// Send → echo round-trip time.
    pub rtt_ms: Summary,
}

/// Churn results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSection {
    /// `--churn-rate`.
    pub rate_target: f64,
    /// Cycles started.
    pub started: u64,
    /// Cycles completed (server answered our close).
    pub completed: u64,
    /// Cycles that failed or were lost.
    pub failed: u64,
    /// Cycles skipped because `--connections` were in flight.
    pub skipped_at_capacity: u64,
    /// Cycles in flight at the end.
    pub in_flight_at_end: u64,
    /// Handshakes completed per second.
    pub connects_per_sec: f64,
    /// Cycles completed per second.
    pub cycles_per_sec: f64,
    /// Connect start → server close frame.
    pub cycle_ms: Summary,
}

/// TLS results (`wss://` only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsSection {
    /// Whether sessions were resumed when the server allowed it (`--no-tls-resume`
    /// turns it off).
    pub resume: bool,
    /// Handshakes completed, full and resumed together.
    pub handshakes: u64,
    /// Full handshakes (certificate sent and checked).
    pub full: u64,
    /// Resumed handshakes (ticket or session id accepted).
    pub resumed: u64,
    /// Handshakes that failed, by `tls_*` cause (also in `connections.failed_by_cause`).
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Per connection: TCP connected → TLS handshake complete.
    pub handshake_ms: Summary,
    /// The same, full handshakes only.
    pub handshake_full_ms: Summary,
    /// The same, resumed handshakes only.
    pub handshake_resumed_ms: Summary,
}

/// Server cost (`--server-pid`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSection {
    /// Sampled PIDs.
    pub pids: Vec<u32>,
    /// RSS before any connection.
    pub rss_before: u64,
    /// RSS after the ramp and settle.
    pub rss_after_ramp: Option<u64>,
    /// RSS at the end of the hold.
    pub rss_end: Option<u64>,
    /// Connections open at the after-ramp sample.
    pub connections_at_sample: u64,
    /// (rss_after_ramp − rss_before) ÷ connections_at_sample.
    pub bytes_per_connection: Option<f64>,
    /// (rss_end − rss_before) ÷ connections open at the end.
    pub bytes_per_connection_end: Option<f64>,
    /// Server CPU seconds during the hold.
    pub cpu_seconds_hold: Option<f64>,
    /// cpu_seconds_hold ÷ hold seconds × 100.
    pub cpu_percent_of_core: Option<f64>,
    /// The user-space part of `cpu_seconds_hold` (the rest is kernel time).
    #[serde(default)]
    pub cpu_user_seconds_hold: Option<f64>,
    /// Server CPU per ping round trip (pings received by clients during the hold);
    /// idle only, where keepalive is the server's only work.
    pub cpu_per_ping_us: Option<f64>,
    /// The user-space part of `cpu_per_ping_us`.
    #[serde(default)]
    pub cpu_user_per_ping_us: Option<f64>,
    /// The kernel (system) part of `cpu_per_ping_us`.
    #[serde(default)]
    pub cpu_system_per_ping_us: Option<f64>,
    /// Server CPU per push delivery.
    pub cpu_per_delivery_us: Option<f64>,
    /// Server CPU per echoed message.
    pub cpu_per_message_us: Option<f64>,
    /// Server CPU per churn cycle.
    pub cpu_per_cycle_us: Option<f64>,
    /// Sampling failures.
    pub errors: Vec<String>,
}

/// The harness's own cost (every process of the run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HarnessSection {
    /// Processes that held connections.
    pub processes: usize,
    /// RSS of all harness processes at the end of the hold.
    pub rss_bytes: u64,
    /// RSS growth from start to the end of the ramp ÷ connections established.
    pub bytes_per_connection: Option<f64>,
    /// Total CPU seconds at the end of the hold.
    pub cpu_seconds: f64,
    /// CPU seconds during the hold.
    pub cpu_seconds_hold: f64,
    /// cpu_seconds_hold ÷ hold seconds × 100.
    pub cpu_percent_of_core: Option<f64>,
    /// Engines that died or never reported.
    pub engine_failures: Vec<String>,
}

/// The main latency over time, for plots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineSection {
    /// Which latency.
    pub main_latency: MainLatency,
    /// Bucket width in ms.
    pub bucket_ms: f64,
    /// `[seconds since start, p50 ms, p99 ms, max ms]` per non-empty bucket.
    pub points: Vec<[f64; 4]>,
}

/// The complete, machine-readable result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub version: u32,
    /// The scenario.
    pub scenario: Scenario,
    /// Whether every assertion held.
    pub ok: bool,
    /// Every checked condition.
    pub assertions: Vec<Assertion>,
    /// The run's parameters.
    pub config: ConfigEcho,
    /// Phase durations.
    pub timing: Timing,
    /// Connection accounting.
    pub connections: Connections,
    /// TCP connect + handshake latency.
    pub connect_latency_ms: Summary,
    /// The scenario's main latency (see `config.main_latency`).
    pub main_latency_ms: Summary,
    /// Keepalive.
    pub pings: Pings,
    /// Push results (push only).
    pub push: Option<PushSection>,
    /// Echo results (echo only).
    pub echo: Option<EchoSection>,
    /// Churn results (churn only).
    pub churn: Option<ChurnSection>,
    /// TLS handshakes (`wss://` only).
    pub tls: Option<TlsSection>,
    /// Server cost (with `--server-pid`).
    pub server: Option<ServerSection>,
    /// Harness cost.
    pub harness: HarnessSection,
    /// Main latency over time.
    pub timeline: TimelineSection,
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0 && numerator.is_finite()).then(|| numerator / denominator)
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The histogram of the scenario's main latency.
pub fn main_histogram(total: &ProcessReport, main: MainLatency) -> LatencyHistogram {
    match main {
        MainLatency::Connect => total.connect_latency.clone(),
        MainLatency::ClientRtt => total.pings.client_rtt.clone(),
        MainLatency::Push => total
            .push
            .as_ref()
            .map(|p| p.latency.clone())
            .unwrap_or_default(),
        MainLatency::Echo => total
            .echo
            .as_ref()
            .map(|e| e.rtt.clone())
            .unwrap_or_default(),
        MainLatency::Recover => total
            .push
            .as_ref()
            .map(|p| p.recovery.clone())
            .unwrap_or_default(),
    }
}

impl Report {
    /// Builds the report and evaluates the assertions.
    pub fn build(plan: &Plan, outcome: &RunOutcome) -> Self {
        let args = &plan.args;
        let total = &outcome.total;
        let main = plan.main_latency();
        let hold = outcome.hold_seconds;
        let failed = total.failed();
        let lost = total.lost();

        let connections = Connections {
            target: total.target.max(if args.scenario == Scenario::Churn {
                0
            } else {
                args.connections
            }),
            opened: total.opened,
            established: total.established,
            failed,
            failed_by_cause: total.failed_by_cause.clone(),
            lost,
            lost_by_cause: total.lost_by_cause.clone(),
            open_at_end: total.open_at_end,
            ramp_rate_achieved: (args.scenario != Scenario::Churn)
                .then(|| ratio(total.established as f64, outcome.ramp_seconds))
                .flatten(),
        };
        let pings = Pings {
            received: total.pings.received,
            received_hold: total.pings.received_hold,
            per_connection_min: total.pings.per_connection_min,
            per_connection_max: total.pings.per_connection_max,
            expected_interval_ms: args.expect_ping_interval.map(ms),
            connections_checked: total.pings.connections_checked,
            connections_below_expected: total.pings.connections_below_expected,
            interval_ms: total.pings.interval.summary(),
            interval_after_publish_ms: total.pings.interval_after_publish.summary(),
            client_sent: total.pings.client_sent,
            client_rtt_ms: total.pings.client_rtt.summary(),
        };
        let publish = outcome.publish.clone().unwrap_or_default();
        let push = total.push.as_ref().map(|p| {
            let expected: u64 = publish
                .published_by_channel
                .iter()
                .zip(&p.subscribed_by_channel)
                .map(|(published, subscribers)| published * subscribers)
                .sum();
            PushSection {
                channels: plan.channels(),
                fanout_burst: args.fanout_burst,
                subscribe: args.subscribe,
                subscribed: p.subscribed,
                acks: p.acks,
                published: publish.published(),
                publish_errors: publish.errors(),
                publish_errors_by_cause: publish.errors_by_cause.clone(),
                publish_rate_achieved: ratio(publish.published() as f64, publish.seconds)
                    .unwrap_or(0.0),
                expected,
                delivered: p.delivered,
                missing: expected.saturating_sub(p.delivered),
                reordered: p.reordered,
                duplicates: p.duplicates,
                unexpected: p.unexpected,
                deliveries_per_sec: ratio(p.delivered as f64, publish.seconds).unwrap_or(0.0),
                subscribers_reported: publish.subscribers_reported,
                latency_ms: p.latency.summary(),
                publish_rtt_ms: publish.rtt.summary(),
                recovery: args.recover_back.map(|back| RecoverySection {
                    back,
                    recovered: p.recovered,
                    not_recovered: p.not_recovered,
                    complete: p.recovery_complete,
                    gaps: p.recovery_gaps,
                    latency_ms: p.recovery.summary(),
                }),
            }
        });
        let echo = total.echo.as_ref().map(|e| EchoSection {
            message_size: args.message_size,
            message_rate: args.message_rate,
            sent: e.sent,
            received: e.received,
            mismatches: e.mismatches,
            outstanding_at_end: e.outstanding_at_end,
            messages_per_sec: ratio(e.received as f64, hold).unwrap_or(0.0),
            bytes_per_sec: ratio(e.bytes_received as f64, hold).unwrap_or(0.0),
            rtt_ms: e.rtt.summary(),
        });
        let churn = total.churn.as_ref().map(|c| ChurnSection {
            rate_target: args.churn_rate,
            started: c.started,
            completed: c.completed,
            failed: failed + lost,
            skipped_at_capacity: c.skipped_at_capacity,
            in_flight_at_end: c.in_flight_at_end,
            connects_per_sec: ratio(total.established as f64, hold).unwrap_or(0.0),
            cycles_per_sec: ratio(c.completed as f64, hold).unwrap_or(0.0),
            cycle_ms: c.cycle.summary(),
        });
        let server = outcome.server.as_ref().map(|s| {
            let cpu_hold = match (s.after_ramp, s.end) {
                (Some(a), Some(e)) => Some((e.cpu_seconds - a.cpu_seconds).max(0.0)),
                _ => None,
            };
            let user_hold = match (s.after_ramp, s.end) {
                (Some(a), Some(e)) => Some((e.user_seconds - a.user_seconds).max(0.0)),
                _ => None,
            };
            let system_hold = cpu_hold.zip(user_hold).map(|(c, u)| (c - u).max(0.0));
            let per = |cpu: Option<f64>, ops: u64| cpu.and_then(|cpu| ratio(cpu * 1e6, ops as f64));
            let per_op = |ops: u64| per(cpu_hold, ops);
            let idle = args.scenario == Scenario::Idle;
            let pings = total.pings.received_hold;
            let growth = |sample: Option<GroupSample>, connections: u64| {
                sample.and_then(|g| {
                    ratio(
                        g.rss_bytes as f64 - s.before.rss_bytes as f64,
                        connections as f64,
                    )
                })
            };
            ServerSection {
                pids: s.pids.clone(),
                rss_before: s.before.rss_bytes,
                rss_after_ramp: s.after_ramp.map(|g| g.rss_bytes),
                rss_end: s.end.map(|g| g.rss_bytes),
                connections_at_sample: outcome.open_at_ramp_sample,
                bytes_per_connection: growth(s.after_ramp, outcome.open_at_ramp_sample),
                bytes_per_connection_end: growth(s.end, total.open_at_end),
                cpu_seconds_hold: cpu_hold,
                cpu_user_seconds_hold: user_hold,
                cpu_percent_of_core: cpu_hold.and_then(|cpu| ratio(cpu * 100.0, hold)),
                cpu_per_ping_us: idle.then(|| per_op(pings)).flatten(),
                cpu_user_per_ping_us: idle.then(|| per(user_hold, pings)).flatten(),
                cpu_system_per_ping_us: idle.then(|| per(system_hold, pings)).flatten(),
                cpu_per_delivery_us: total.push.as_ref().and_then(|p| per_op(p.delivered)),
                cpu_per_message_us: total.echo.as_ref().and_then(|e| per_op(e.received)),
                cpu_per_cycle_us: total.churn.as_ref().and_then(|c| per_op(c.completed)),
                errors: s.errors.clone(),
            }
        });
        // Engine samples cover their whole process; in-process runs therefore already
        // include the coordinator, child runs add it.
        let mut rss_start = total.rss_start;
        let mut rss_hold = total.rss_hold;
        let mut rss_end = total.rss_end;
        let mut cpu_hold = total.cpu_end - total.cpu_hold_start;
        let mut cpu_end = total.cpu_end;
        if let Some([start, hold_start, hold_end]) = outcome.parent {
            rss_start += start.rss_bytes;
            rss_hold += hold_start.rss_bytes;
            rss_end += hold_end.rss_bytes;
            cpu_hold += hold_end.cpu_seconds - hold_start.cpu_seconds;
            cpu_end += hold_end.cpu_seconds;
        }
        let harness = HarnessSection {
            processes: outcome.processes,
            rss_bytes: rss_end.max(rss_hold),
            bytes_per_connection: ratio(
                rss_hold as f64 - rss_start as f64,
                total.established as f64,
            ),
            cpu_seconds: cpu_end,
            cpu_seconds_hold: cpu_hold.max(0.0),
            cpu_percent_of_core: ratio(cpu_hold.max(0.0) * 100.0, hold),
            engine_failures: outcome.engine_failures.clone(),
        };
        let main_histogram = main_histogram(total, main);
        let timeline = TimelineSection {
            main_latency: main,
            bucket_ms: total.timeline.bucket_us as f64 / 1000.0,
            points: total
                .timeline
                .series()
                .into_iter()
                .map(|(t, a, b, c)| [t, a, b, c])
                .collect(),
        };
        let mut report = Self {
            version: SCHEMA_VERSION,
            scenario: args.scenario,
            ok: false,
            assertions: Vec::new(),
            config: ConfigEcho {
                url: args.url.clone(),
                connections: args.connections,
                duration_s: args.duration.as_secs_f64(),
                ramp_rate: args.ramp_rate,
                connect_timeout_s: args.connect_timeout.as_secs_f64(),
                processes: outcome.processes,
                source_addrs: plan.sources.len(),
                expect_ping_interval_ms: args.expect_ping_interval.map(ms),
                client_ping_interval_ms: args.client_ping_interval.map(ms),
                main_latency: main,
            },
            timing: Timing {
                ramp_s: outcome.ramp_seconds,
                ramp_completed: outcome.ramp_completed,
                hold_s: hold,
                total_s: outcome.total_seconds,
            },
            connections,
            connect_latency_ms: total.connect_latency.summary(),
            main_latency_ms: main_histogram.summary(),
            pings,
            push,
            echo,
            churn,
            tls: total.tls.as_ref().map(|t| TlsSection {
                resume: !args.no_tls_resume,
                handshakes: t.full + t.resumed,
                full: t.full,
                resumed: t.resumed,
                failed_by_cause: total
                    .failed_by_cause
                    .iter()
                    .chain(&total.lost_by_cause)
                    .filter(|(cause, _)| cause.starts_with("tls_"))
                    .map(|(cause, n)| (cause.clone(), *n))
                    .collect(),
                handshake_ms: t.handshake.summary(),
                handshake_full_ms: t.handshake_full.summary(),
                handshake_resumed_ms: t.handshake_resumed.summary(),
            }),
            server,
            harness,
            timeline,
        };
        report.assertions = assertions(plan, &report);
        report.ok = report.assertions.iter().all(|a| a.ok);
        report
    }

    /// The human summary table.
    pub fn summary_table(&self) -> String {
        let mut out = String::new();
        let mut row = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<26} {value}");
        };
        let c = &self.connections;
        row(
            "scenario",
            format!("{} against {}", self.scenario.name(), self.config.url),
        );
        row(
            "timing",
            format!(
                "ramp {:.1}s{}, hold {:.1}s, total {:.1}s",
                self.timing.ramp_s,
                if self.timing.ramp_completed {
                    ""
                } else {
                    " (INCOMPLETE)"
                },
                self.timing.hold_s,
                self.timing.total_s
            ),
        );
        row(
            "connections",
            format!(
                "{} target, {} established, {} open at end, {} processes",
                c.target, c.established, c.open_at_end, self.config.processes
            ),
        );
        row(
            "failed",
            format!("{}{}", c.failed, causes(&c.failed_by_cause)),
        );
        row("lost", format!("{}{}", c.lost, causes(&c.lost_by_cause)));
        row("connect latency", latency(&self.connect_latency_ms));
        if let Some(tls) = &self.tls {
            row(
                "tls handshakes",
                format!(
                    "{} full, {} resumed{}{}",
                    tls.full,
                    tls.resumed,
                    if tls.resume { "" } else { " (resumption off)" },
                    causes(&tls.failed_by_cause)
                ),
            );
            row("tls handshake time", latency(&tls.handshake_ms));
        }
        let p = &self.pings;
        row(
            "server pings",
            format!(
                "{} received ({} in hold), per connection {}–{}",
                p.received,
                p.received_hold,
                opt(p.per_connection_min),
                opt(p.per_connection_max)
            ),
        );
        if p.interval_ms.count > 0 {
            row("ping interval", latency(&p.interval_ms));
        }
        if p.interval_after_publish_ms.count > 0 {
            row(
                "ping interval after publish",
                latency(&p.interval_after_publish_ms),
            );
        }
        if p.client_sent > 0 {
            row(
                "client ping rtt",
                format!("{} ({} sent)", latency(&p.client_rtt_ms), p.client_sent),
            );
        }
        if let Some(push) = &self.push {
            row(
                "publishes",
                format!(
                    "{} accepted, {} failed{}, {:.1}/s",
                    push.published,
                    push.publish_errors,
                    causes(&push.publish_errors_by_cause),
                    push.publish_rate_achieved
                ),
            );
            row(
                "deliveries",
                format!(
                    "{} of {} expected, {} missing, {} reordered, {} duplicates, {:.0}/s",
                    push.delivered,
                    push.expected,
                    push.missing,
                    push.reordered,
                    push.duplicates,
                    push.deliveries_per_sec
                ),
            );
            row("publish→receive", latency(&push.latency_ms));
            if let Some(r) = &push.recovery {
                row(
                    "recovery",
                    format!(
                        "{} recovered, {} not, {} complete ({} back each), {} gaps",
                        r.recovered, r.not_recovered, r.complete, r.back, r.gaps
                    ),
                );
                row("subscribe→recovered", latency(&r.latency_ms));
            }
        }
        if let Some(echo) = &self.echo {
            row(
                "echo",
                format!(
                    "{} sent, {} received, {} mismatched, {:.0} msg/s, {}/s",
                    echo.sent,
                    echo.received,
                    echo.mismatches,
                    echo.messages_per_sec,
                    format_bytes(echo.bytes_per_sec)
                ),
            );
            row("echo rtt", latency(&echo.rtt_ms));
        }
        if let Some(churn) = &self.churn {
            row(
                "churn",
                format!(
                    "{} started, {} completed, {} failed, {:.1} connects/s",
                    churn.started, churn.completed, churn.failed, churn.connects_per_sec
                ),
            );
            row("cycle time", latency(&churn.cycle_ms));
        }
        if let Some(s) = &self.server {
            row(
                "server rss",
                format!(
                    "{} before, {} after ramp, {} at end",
                    format_bytes(s.rss_before as f64),
                    s.rss_after_ramp
                        .map_or("-".into(), |v| format_bytes(v as f64)),
                    s.rss_end.map_or("-".into(), |v| format_bytes(v as f64)),
                ),
            );
            row(
                "server bytes/connection",
                format!(
                    "{} (after ramp), {} (end)",
                    opt_f(s.bytes_per_connection, 0),
                    opt_f(s.bytes_per_connection_end, 0)
                ),
            );
            row(
                "server cpu (hold)",
                format!(
                    "{} s ({} s user), {}% of a core, {} µs/ping ({} user + {} system), {} µs/delivery, {} µs/message",
                    opt_f(s.cpu_seconds_hold, 2),
                    opt_f(s.cpu_user_seconds_hold, 2),
                    opt_f(s.cpu_percent_of_core, 1),
                    opt_f(s.cpu_per_ping_us, 2),
                    opt_f(s.cpu_user_per_ping_us, 2),
                    opt_f(s.cpu_system_per_ping_us, 2),
                    opt_f(s.cpu_per_delivery_us, 2),
                    opt_f(s.cpu_per_message_us, 2),
                ),
            );
        }
        let h = &self.harness;
        row(
            "harness",
            format!(
                "{} rss, {} bytes/connection, {:.2} s cpu in hold ({}% of a core)",
                format_bytes(h.rss_bytes as f64),
                opt_f(h.bytes_per_connection, 0),
                h.cpu_seconds_hold,
                opt_f(h.cpu_percent_of_core, 1)
            ),
        );
        let mut text = String::from("pingwheel-loadtest summary\n");
        text.push_str(&out);
        text.push_str("assertions\n");
        for a in &self.assertions {
            let _ = writeln!(
                text,
                "  [{}] {:<24} {}",
                if a.ok { "ok" } else { "FAIL" },
                a.name,
                a.detail
            );
        }
        let _ = writeln!(text, "result: {}", if self.ok { "ok" } else { "FAILED" });
        text
    }
}

fn causes(by_cause: &BTreeMap<String, u64>) -> String {
    if by_cause.is_empty() {
        return String::new();
    }
    let list: Vec<String> = by_cause.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", list.join(", "))
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn opt_f(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn latency(s: &Summary) -> String {
    if s.count == 0 {
        return "no samples".into();
    }
    let f = |v: Option<f64>| opt_f(v, 3);
    format!(
        "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms (n={})",
        f(s.p50),
        f(s.p90),
        f(s.p99),
        f(s.p999),
        f(s.max),
        s.count
    )
}

fn check(name: &str, ok: bool, detail: String) -> Assertion {
    Assertion {
        name: name.to_owned(),
        ok,
        detail,
    }
}

/// Evaluates the run's assertions against a built report.
fn assertions(plan: &Plan, report: &Report) -> Vec<Assertion> {
    let args = &plan.args;
    let c = &report.connections;
    let mut list = vec![
        check(
            "engines_reported",
            report.harness.engine_failures.is_empty(),
            if report.harness.engine_failures.is_empty() {
                format!("all {} processes reported", report.harness.processes)
            } else {
                report.harness.engine_failures.join("; ")
            },
        ),
        check(
            "connections_established",
            c.established > 0,
            format!("{} of {} established", c.established, c.target),
        ),
    ];
    if args.scenario != Scenario::Churn {
        list.push(check(
            "ramp_completed",
            report.timing.ramp_completed,
            format!(
                "ramp took {:.1}s (timeout {})",
                report.timing.ramp_s,
                format_duration(plan.ramp_timeout)
            ),
        ));
    }
    if let Some(max_lost) = args.max_lost {
        let bad = c.failed + c.lost;
        list.push(check(
            "max_lost",
            bad <= max_lost,
            format!(
                "{} failed + {} lost = {bad}, allowed {max_lost}",
                c.failed, c.lost
            ),
        ));
    }
    if let Some(max_p99) = args.max_p99 {
        let p99 = report.main_latency_ms.p99;
        let limit = ms(max_p99);
        list.push(check(
            "max_p99",
            p99.is_some_and(|p| p <= limit),
            match p99 {
                Some(p) => format!(
                    "{} p99 {p:.3} ms, allowed {limit:.3} ms",
                    report.config.main_latency.name()
                ),
                None => format!("no {} samples to judge", report.config.main_latency.name()),
            },
        ));
    }
    if let Some(interval) = args.expect_ping_interval {
        let p = &report.pings;
        let interval_ms = ms(interval);
        let low = interval_ms * (1.0 - args.ping_tolerance);
        let high = interval_ms * (1.0 + args.ping_tolerance);
        let within = match (p.interval_ms.min, p.interval_ms.max) {
            (Some(min), Some(max)) => min >= low && max <= high,
            _ => true,
        };
        let ok = p.connections_checked > 0 && p.connections_below_expected == 0 && within;
        list.push(check(
            "ping_interval",
            ok,
            format!(
                "{} of {} checked connections below floor(held/interval)-1 pings; intervals {}–{} ms, allowed {low:.0}–{high:.0} ms",
                p.connections_below_expected,
                p.connections_checked,
                opt_f(p.interval_ms.min, 1),
                opt_f(p.interval_ms.max, 1),
            ),
        ));
    }
    if let Some(push) = &report.push {
        list.push(check(
            "push_published",
            push.published > 0,
            format!(
                "{} publishes accepted, {} failed",
                push.published, push.publish_errors
            ),
        ));
        list.push(check(
            "push_no_missing",
            push.missing == 0,
            format!(
                "{} of {} expected deliveries missing",
                push.missing, push.expected
            ),
        ));
        list.push(check(
            "push_in_order",
            push.reordered == 0 && push.duplicates == 0,
            format!(
                "{} reordered, {} duplicates",
                push.reordered, push.duplicates
            ),
        ));
        if let Some(r) = &push.recovery {
            list.push(check(
                "recovery_complete",
                r.not_recovered == 0
                    && r.gaps == 0
                    && r.recovered == push.subscribed
                    && r.complete == r.recovered,
                format!(
                    "{} of {} subscribers recovered ({} not), {} complete, {} gaps",
                    r.recovered, push.subscribed, r.not_recovered, r.complete, r.gaps
                ),
            ));
        }
    }
    if let Some(echo) = &report.echo {
        list.push(check(
            "echo_received",
            echo.received > 0,
            format!("{} of {} echoes received", echo.received, echo.sent),
        ));
        list.push(check(
            "echo_payloads_match",
            echo.mismatches == 0,
            format!("{} mismatched echoes", echo.mismatches),
        ));
    }
    if let Some(churn) = &report.churn {
        list.push(check(
            "churn_completed",
            churn.completed > 0,
            format!("{} of {} cycles completed", churn.completed, churn.started),
        ));
    }
    if let Some(server) = &report.server {
        list.push(check(
            "server_sampled",
            server.errors.is_empty(),
            if server.errors.is_empty() {
                format!("sampled {:?}", server.pids)
            } else {
                server.errors.join("; ")
            },
        ));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use crate::counters::{EchoCounters, PushCounters};
    use clap::Parser;

    fn plan(extra: &[&str]) -> Plan {
        let mut argv = vec!["pingwheel-loadtest"];
        argv.extend_from_slice(extra);
        Plan::new(Args::try_parse_from(argv).unwrap()).unwrap()
    }

    fn outcome(established: u64) -> RunOutcome {
        let mut total = ProcessReport {
            target: 100,
            opened: 100,
            established,
            open_at_end: established,
            ..ProcessReport::default()
        };
        if established < 100 {
            total
                .failed_by_cause
                .insert("refused".into(), 100 - established);
        }
        for v in [1_000, 2_000, 40_000] {
            total.connect_latency.record_us(v);
        }
        RunOutcome {
            total,
            processes: 1,
            ramp_completed: true,
            ramp_seconds: 1.0,
            hold_seconds: 10.0,
            total_seconds: 13.0,
            open_at_ramp_sample: established,
            ..RunOutcome::default()
        }
    }

    fn assertion<'a>(report: &'a Report, name: &str) -> &'a Assertion {
        report
            .assertions
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn clean_idle_run_passes_its_gates() {
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "--max-lost",
            "0",
            "--max-p99",
            "50ms",
        ]);
        let report = Report::build(&p, &outcome(100));
        assert!(report.ok, "{:#?}", report.assertions);
        assert_eq!(report.connections.failed, 0);
        assert_eq!(report.main_latency_ms, report.connect_latency_ms);
        assert!(report.summary_table().contains("result: ok"));
    }

    #[test]
    fn failures_and_slow_p99_fail_the_gates() {
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "--max-lost",
            "0",
            "--max-p99",
            "10ms",
        ]);
        let report = Report::build(&p, &outcome(97));
        assert!(!report.ok);
        assert!(!assertion(&report, "max_lost").ok);
        assert!(!assertion(&report, "max_p99").ok);
        assert!(assertion(&report, "max_lost").detail.contains("3 failed"));
        assert!(report.summary_table().contains("[FAIL] max_lost"));
    }

    #[test]
    fn ping_interval_assertion_uses_counts_and_tolerance() {
        let p = plan(&[
            "idle",
            "--url",
            "ws://127.0.0.1:9/",
            "--expect-ping-interval",
            "1s",
        ]);
        let mut o = outcome(100);
        o.total.pings.connections_checked = 100;
        for v in [950_000, 1_000_000, 1_100_000] {
            o.total.pings.interval.record_us(v);
        }
        assert!(assertion(&Report::build(&p, &o), "ping_interval").ok);
        o.total.pings.interval.record_us(1_400_000);
        assert!(
            !assertion(&Report::build(&p, &o), "ping_interval").ok,
            "interval out of tolerance"
        );
        let mut o = outcome(100);
        o.total.pings.connections_checked = 100;
        o.total.pings.connections_below_expected = 1;
        assert!(
            !assertion(&Report::build(&p, &o), "ping_interval").ok,
            "a starved connection"
        );
        let o = outcome(100);
        assert!(
            !assertion(&Report::build(&p, &o), "ping_interval").ok,
            "nothing checked"
        );
    }

    #[test]
    fn push_expectation_is_publishes_times_subscribers() {
        let p = plan(&[
            "push",
            "--url",
            "ws://127.0.0.1:9/",
            "--publish-url",
            "http://127.0.0.1:9",
            "--token-secret",
            "s",
            "--channels",
            "2",
        ]);
        let mut o = outcome(100);
        o.total.push = Some(PushCounters {
            subscribed: 100,
            subscribed_by_channel: vec![50, 50],
            delivered: 50 * 3 + 50 * 2 - 1,
            ..PushCounters::default()
        });
        o.publish = Some(PublishStats {
            attempted: 5,
            published_by_channel: vec![3, 2],
            seconds: 1.0,
            ..PublishStats::default()
        });
        let report = Report::build(&p, &o);
        let push = report.push.as_ref().unwrap();
        assert_eq!((push.expected, push.delivered, push.missing), (250, 249, 1));
        assert!(!assertion(&report, "push_no_missing").ok);
        assert!(assertion(&report, "push_in_order").ok);
    }

    #[test]
    fn server_costs_per_operation() {
        let p = plan(&["echo", "--url", "ws://127.0.0.1:9/", "--server-pid", "1"]);
        let mut o = outcome(100);
        o.total.pings.received_hold = 1000;
        o.total.echo = Some(EchoCounters {
            sent: 500,
            received: 500,
            ..EchoCounters::default()
        });
        o.server = Some(ServerSamples {
            pids: vec![1],
            before: GroupSample {
                rss_bytes: 1_000_000,
                cpu_seconds: 1.0,
                user_seconds: 0.5,
            },
            after_ramp: Some(GroupSample {
                rss_bytes: 1_051_200,
                cpu_seconds: 2.0,
                user_seconds: 1.0,
            }),
            end: Some(GroupSample {
                rss_bytes: 1_100_000,
                cpu_seconds: 2.5,
                user_seconds: 1.125,
            }),
            errors: Vec::new(),
        });
        let report = Report::build(&p, &o);
        let server = report.server.as_ref().unwrap();
        assert_eq!(server.bytes_per_connection, Some(512.0));
        assert_eq!(server.cpu_seconds_hold, Some(0.5));
        assert_eq!(server.cpu_percent_of_core, Some(5.0));
        assert_eq!(
            server.cpu_per_ping_us, None,
            "pings are not the work in echo"
        );
        assert_eq!(server.cpu_per_message_us, Some(1000.0));
        assert!(assertion(&report, "echo_payloads_match").ok);
    }

    #[test]
    fn idle_splits_cpu_per_ping_into_user_and_system() {
        let p = plan(&["idle", "--url", "ws://127.0.0.1:9/", "--server-pid", "1"]);
        let mut o = outcome(100);
        o.total.pings.received_hold = 1000;
        let sample = |cpu_seconds, user_seconds| GroupSample {
            rss_bytes: 1_000_000,
            cpu_seconds,
            user_seconds,
        };
        o.server = Some(ServerSamples {
            pids: vec![1],
            before: sample(0.0, 0.0),
            after_ramp: Some(sample(1.0, 0.25)),
            end: Some(sample(1.5, 0.375)),
            errors: Vec::new(),
        });
        let report = Report::build(&p, &o);
        let server = report.server.as_ref().unwrap();
        assert_eq!(server.cpu_per_ping_us, Some(500.0));
        assert_eq!(server.cpu_user_seconds_hold, Some(0.125));
        assert_eq!(server.cpu_user_per_ping_us, Some(125.0));
        assert_eq!(server.cpu_system_per_ping_us, Some(375.0));
    }

    #[test]
    fn json_has_the_contract_fields() {
        let p = plan(&["idle", "--url", "ws://127.0.0.1:9/"]);
        let value = serde_json::to_value(Report::build(&p, &outcome(100))).unwrap();
        for path in [
            "/scenario",
            "/ok",
            "/assertions/0/name",
            "/assertions/0/ok",
            "/assertions/0/detail",
            "/connections/target",
            "/connections/established",
            "/connections/failed",
            "/connections/failed_by_cause",
            "/connections/lost",
            "/connections/lost_by_cause",
            "/connect_latency_ms/p50",
            "/connect_latency_ms/p90",
            "/connect_latency_ms/p99",
            "/connect_latency_ms/max",
            "/pings/received",
            "/pings/per_connection_min",
            "/pings/per_connection_max",
            "/pings/interval_ms/min",
            "/pings/interval_ms/p50",
            "/pings/interval_ms/p99",
            "/pings/interval_ms/max",
            "/push",
            "/echo",
            "/churn",
            "/server",
            "/harness/rss_bytes",
            "/harness/bytes_per_connection",
            "/harness/cpu_seconds",
            "/harness/processes",
        ] {
            assert!(value.pointer(path).is_some(), "missing {path}");
        }
        assert_eq!(value["scenario"], "idle");
    }
}
