//! [`Shared`]: what every client of one engine shares.

use std::borrow::Cow;

use super::Now;
use crate::counters::{ChurnCounters, EchoCounters, ProcessReport, PushCounters, TlsCounters};
use crate::hist::Timeline;
use crate::settings::{EngineConfig, MainLatency};

/// The engine-wide side of the clients: the settings, a random source, the counts the
/// loop paces the run by, and the tally every measurement goes into. Pure data: the
/// loop owns it and passes it to each [`super::Client`] call; the clients keep
/// [`Shared::pending`] and [`Shared::open`] true as they change state.
#[derive(Debug)]
pub struct Shared {
    /// What the engine was asked to do.
    pub config: EngineConfig,
    /// Nonces, jitter offsets.
    pub rng: fastrand::Rng,
    /// What this engine measured; the loop adds its own samples (RSS, CPU, ramp time).
    pub report: ProcessReport,
    /// Whether the hold phase runs (set by [`Shared::start_hold`]): echo traffic runs
    /// only then.
    pub holding: bool,
    /// Set by the loop once it was asked to finish: closed-loop echo stops sending.
    pub finishing: bool,
    /// Push: subscribed, open clients per channel right now.
    pub live_subscribers: Vec<u64>,
    /// Scratch for payloads being built (echo messages, churn text).
    pub payload: Vec<u8>,
    /// Clients not yet usable (connecting, upgrading, subscribing).
    pending: u64,
    /// Established clients not yet ended.
    open: u64,
    hold_start_ns: u64,
    pings_at_hold: u64,
}

impl Shared {
    /// The shared state of an engine that has not started a client yet.
    pub fn new(config: EngineConfig, rng: fastrand::Rng) -> Self {
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
        let channels = config.push.as_ref().map_or(0, |p| p.channels as usize);
        if config.push.is_some() {
            report.push = Some(PushCounters {
                subscribed_by_channel: vec![0; channels],
                ..PushCounters::default()
            });
        }
        if config.echo.is_some() {
            report.echo = Some(EchoCounters::default());
        }
        if config.churn.is_some() {
            report.churn = Some(ChurnCounters::default());
        }
        if config.tls.is_some() {
            report.tls = Some(TlsCounters::default());
        }
        Self {
            config,
            rng,
            report,
            holding: false,
            finishing: false,
            live_subscribers: vec![0; channels],
            payload: Vec::new(),
            pending: 0,
            open: 0,
            hold_start_ns: 0,
            pings_at_hold: 0,
        }
    }

    /// Clients not yet usable: connecting, upgrading or subscribing.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Established clients that have not ended.
    pub fn open(&self) -> u64 {
        self.open
    }

    /// Whether the first publish is due (push with a positive `--publish-delay`, that
    /// long into the hold): from then on ping intervals are recorded apart.
    pub fn publishing(&self, now_ns: u64) -> bool {
        match &self.config.push {
            Some(push) if self.holding && !push.publish_delay.is_zero() => {
                let delay = u64::try_from(push.publish_delay.as_nanos()).unwrap_or(u64::MAX);
                now_ns >= self.hold_start_ns.saturating_add(delay)
            }
            _ => false,
        }
    }

    /// When the hold began (engine nanoseconds; 0 before).
    pub fn hold_start_ns(&self) -> u64 {
        self.hold_start_ns
    }

    /// Counts a connection attempt and returns the index of its client (churn: its
    /// cycle number).
    pub fn start_attempt(&mut self) -> u32 {
        let index = self.report.opened as u32;
        self.report.opened += 1;
        if let Some(churn) = self.report.churn.as_mut() {
            churn.started += 1;
            self.report.target += 1;
        }
        index
    }

    /// An attempt failed before it had a client (socket setup, registration).
    pub fn attempt_failed(&mut self, cause: Cow<'static, str>) {
        *self
            .report
            .failed_by_cause
            .entry(cause.into_owned())
            .or_default() += 1;
    }

    /// A churn cycle was due but every slot was in flight.
    pub fn attempt_skipped(&mut self) {
        if let Some(churn) = self.report.churn.as_mut() {
            churn.skipped_at_capacity += 1;
        }
    }

    /// The hold begins at `now`: from here pings are counted for the hold and echo
    /// traffic runs. The loop then calls [`super::Client::handle_hold`] on every client.
    pub fn start_hold(&mut self, now: Now) {
        self.holding = true;
        self.hold_start_ns = now.ns;
        self.pings_at_hold = self.report.pings.received;
        if let Some(push) = self.report.push.as_mut() {
            push.subscribed_by_channel
                .clone_from(&self.live_subscribers);
        }
    }

    /// Records a latency sample in the timeline when it is the scenario's main one.
    pub fn record_main(&mut self, kind: MainLatency, latency_us: u64, at_unix_ns: u64) {
        if kind == self.config.main_latency {
            let offset_us = at_unix_ns.saturating_sub(self.config.run_start_unix_ns) / 1000;
            self.report.timeline.record(offset_us, latency_us);
        }
    }

    /// Hands out the report at the end of the run, after [`super::Client::finish`] ran
    /// on each of the `clients` still there (`not_established` of which had not
    /// completed their upgrade).
    pub fn take_report(&mut self, now: Now, clients: u64, not_established: u64) -> ProcessReport {
        let report = &mut self.report;
        if self.holding {
            report.hold_seconds = now.ns.saturating_sub(self.hold_start_ns) as f64 / 1e9;
            report.pings.received_hold = report.pings.received - self.pings_at_hold;
        }
        report.open_at_end = self.open;
        if let Some(churn) = report.churn.as_mut() {
            churn.in_flight_at_end = clients;
        } else {
            if not_established > 0 {
                *report
                    .failed_by_cause
                    .entry("not_established_at_end".into())
                    .or_default() += not_established;
            }
            let never_started = self.config.connections.saturating_sub(report.opened);
            if never_started > 0 {
                *report
                    .failed_by_cause
                    .entry("not_started".into())
                    .or_default() += never_started;
            }
        }
        std::mem::take(report)
    }

    pub(super) fn add_pending(&mut self) {
        self.pending += 1;
    }

    pub(super) fn remove_pending(&mut self) {
        debug_assert!(self.pending > 0, "pending count underflow");
        self.pending -= 1;
    }

    pub(super) fn add_open(&mut self) {
        self.open += 1;
    }

    pub(super) fn remove_open(&mut self) {
        debug_assert!(self.open > 0, "open count underflow");
        self.open -= 1;
    }
}
