//! Runs a plan: starts the engines, walks them through the phases, samples the server
//! and the harness at the phase boundaries, publishes (push), and assembles the report.
//!
//! ```text
//! sample server (before) → start engines → wait for every `ramped` (≤ ramp timeout)
//!   → settle → sample (after ramp) → `hold` → [publish] → duration → [drain]
//!   → sample (end) → `finish` → collect reports (≤ 30 s, then kill) → report
//! ```

use std::io::IsTerminal;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::Scenario;
use crate::counters::ProcessReport;
use crate::engine::{Command, EngineEvent, Progress};
use crate::fleet::{Fleet, FleetEvent};
use crate::hist::LatencyHistogram;
use crate::plan::Plan;
use crate::procfs::{self, Pid};
use crate::publish::{PublishConfig, Publisher};
use crate::report::{GroupSample, Report, RunOutcome, ServerSamples, main_histogram};

/// How long engines get to deliver their reports after `finish`: 30 s, plus 1 s per
/// 10,000 connections (each engine writes a close frame to every connection first; at a
/// million connections on two cores that alone takes tens of seconds).
fn finish_timeout(connections: u64) -> Duration {
    Duration::from_secs(30 + connections / 10_000)
}
/// A push drain also ends when no delivery arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Sums RSS and CPU over `pids`.
fn sample_group(pids: &[u32]) -> Result<GroupSample, String> {
    let mut group = GroupSample::default();
    for &pid in pids {
        let sample = procfs::sample(Pid::Other(pid))
            .map_err(|e| format!("cannot sample /proc/{pid}: {e}"))?;
        group.add(sample.rss_bytes, sample.cpu_seconds, sample.user_seconds);
    }
    Ok(group)
}

fn sample_self() -> GroupSample {
    let mut group = GroupSample::default();
    if let Ok(sample) = procfs::sample(Pid::Current) {
        group.add(sample.rss_bytes, sample.cpu_seconds, sample.user_seconds);
    }
    group
}

/// What the coordinator knows about each engine.
#[derive(Debug)]
struct Tracker {
    last: Vec<Progress>,
    ramped: Vec<bool>,
    reports: Vec<Option<ProcessReport>>,
    exited: Vec<Option<String>>,
}

impl Tracker {
    fn new(engines: usize) -> Self {
        Self {
            last: vec![Progress::default(); engines],
            ramped: vec![false; engines],
            reports: vec![None; engines],
            exited: vec![None; engines],
        }
    }

    fn handle(&mut self, index: usize, event: FleetEvent) {
        match event {
            FleetEvent::Engine(EngineEvent::Progress(p)) => self.last[index] = p,
            FleetEvent::Engine(EngineEvent::Ramped(p)) => {
                self.last[index] = p;
                self.ramped[index] = true;
            }
            FleetEvent::Engine(EngineEvent::Finished(report)) => {
                self.reports[index] = Some(*report)
            }
            FleetEvent::Exited { detail } => {
                self.exited[index].get_or_insert(detail);
            }
        }
    }

    /// Receives events until `until` or until `done(self)` holds.
    fn pump(
        &mut self,
        fleet: &Fleet,
        line: &mut ProgressLine,
        until: Instant,
        done: impl Fn(&Self) -> bool,
    ) {
        while !done(self) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            match fleet.events.recv_timeout(wait) {
                Ok((index, event)) => self.handle(index, event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            line.update(&self.total());
        }
    }

    fn total(&self) -> Progress {
        let mut total = Progress::default();
        for p in &self.last {
            total.add(p);
        }
        total
    }

    fn gone(&self, index: usize) -> bool {
        self.exited[index].is_some() && self.reports[index].is_none()
    }

    fn all_ramped_or_gone(&self) -> bool {
        (0..self.last.len()).all(|i| self.ramped[i] || self.gone(i))
    }

    fn all_reported_or_gone(&self) -> bool {
        (0..self.last.len()).all(|i| self.reports[i].is_some() || self.exited[i].is_some())
    }
}

/// The live progress line on stderr.
#[derive(Debug)]
struct ProgressLine {
    bar: ProgressBar,
    phase: &'static str,
    rate_base: (Instant, Progress),
    rates: (f64, f64, f64),
    last_draw: Instant,
}

impl ProgressLine {
    fn new(plan: &Plan) -> Self {
        let hidden = plan.args.quiet || !std::io::stderr().is_terminal();
        let target = if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(4)
        };
        let bar = ProgressBar::with_draw_target(Some(plan.args.connections), target);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:16}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self {
            bar,
            phase: "ramp",
            rate_base: (Instant::now(), Progress::default()),
            rates: (0.0, 0.0, 0.0),
            last_draw: Instant::now(),
        }
    }

    fn update(&mut self, total: &Progress) {
        if self.bar.is_hidden() || self.last_draw.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_draw = Instant::now();
        let (since, base) = self.rate_base;
        let seconds = since.elapsed().as_secs_f64();
        if seconds >= 1.0 {
            let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
            self.rates = (
                per_s(total.established, base.established),
                per_s(total.pings, base.pings),
                per_s(
                    total.deliveries + total.echoes + total.cycles,
                    base.deliveries + base.echoes + base.cycles,
                ),
            );
            self.rate_base = (Instant::now(), *total);
        }
        self.bar.set_position(total.open);
        self.bar.set_message(format!(
            "{} est {} fail {} lost {} | {:.0} conn/s {:.0} ping/s {:.0} msg/s",
            self.phase,
            total.established,
            total.failed,
            total.lost,
            self.rates.0,
            self.rates.1,
            self.rates.2
        ));
    }
}

/// `--recover-back N`: publishes N messages to every channel before any client
/// connects and records the channels' positions in `plan` (a no-op otherwise).
///
/// # Errors
/// The prefill's publish failed (a setup error, exit status 2).
pub fn prefill_recovery(plan: &mut Plan) -> Result<(), String> {
    let (Some(back), Some(target)) = (plan.args.recover_back, plan.publish.as_ref()) else {
        return Ok(());
    };
    if plan.recover_positions.is_some() {
        return Ok(());
    }
    let config = PublishConfig {
        addr: target.addr,
        host_header: target.host_header.clone(),
        path: target.path.clone(),
        api_key: plan.args.api_key.clone(),
        channels: plan.channels(),
        rate: plan.args.publish_rate,
        payload_size: plan.args.payload_size,
        publishers: 1,
        duration: plan.args.duration,
        delay: Duration::ZERO,
    };
    plan.recover_positions = Some(crate::publish::prefill(&config, back)?);
    Ok(())
}

/// Runs `plan` to completion. Returns the report and the main latency histogram (for
/// the plot), or a setup error (exit status 2).
pub fn execute(plan: &Plan) -> Result<(Report, LatencyHistogram), String> {
    let started = Instant::now();
    let args = &plan.args;
    let mut server = if args.server_pids.is_empty() {
        None
    } else {
        Some(ServerSamples {
            pids: args.server_pids.clone(),
            before: sample_group(&args.server_pids).map_err(|e| format!("--server-pid: {e}"))?,
            ..ServerSamples::default()
        })
    };
    let parent_start = sample_self();
    let mut fleet = Fleet::start(plan)?;
    let engines = fleet.len();
    let mut tracker = Tracker::new(engines);
    let mut line = ProgressLine::new(plan);

    // Ramp.
    tracker.pump(
        &fleet,
        &mut line,
        started + plan.ramp_timeout,
        Tracker::all_ramped_or_gone,
    );
    let ramp_completed = (0..engines).all(|i| tracker.ramped[i]);
    let ramp_seconds = started.elapsed().as_secs_f64();

    // Settle, then sample and start the hold.
    line.phase = "settle";
    tracker.pump(&fleet, &mut line, Instant::now() + args.settle, |_| false);
    let open_at_ramp_sample = tracker.total().open;
    if let Some(s) = server.as_mut() {
        match sample_group(&s.pids) {
            Ok(g) => s.after_ramp = Some(g),
            Err(e) => s.errors.push(e),
        }
    }
    let parent_hold = sample_self();
    fleet.broadcast(Command::Hold);
    let hold_started = Instant::now();
    line.phase = "hold";

    // Hold (push: publish, then drain).
    let publisher = plan.publish.as_ref().map(|target| {
        Publisher::start(PublishConfig {
            addr: target.addr,
            host_header: target.host_header.clone(),
            path: target.path.clone(),
            api_key: args.api_key.clone(),
            channels: plan.channels(),
            rate: args.publish_rate,
            payload_size: args.payload_size,
            publishers: if args.fanout_burst {
                1
            } else {
                args.publishers
            },
            duration: args.duration,
            delay: args.publish_delay,
        })
    });
    tracker.pump(&fleet, &mut line, hold_started + args.duration, |_| false);
    let publish = publisher.map(|p| {
        p.stop();
        p.join()
    });
    if let Some(stats) = &publish {
        line.phase = "drain";
        let drain_end = Instant::now() + args.drain_timeout;
        let reported = stats.subscribers_reported;
        let mut last_count = tracker.total().deliveries;
        let mut last_change = Instant::now();
        while Instant::now() < drain_end {
            let step = (Instant::now() + Duration::from_millis(250)).min(drain_end);
            tracker.pump(&fleet, &mut line, step, |_| false);
            let count = tracker.total().deliveries;
            if reported > 0 && count >= reported {
                break;
            }
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            } else if last_change.elapsed() >= DRAIN_QUIET && reported == 0 {
                break;
            }
        }
    }
    let hold_seconds = hold_started.elapsed().as_secs_f64();
    if let Some(s) = server.as_mut() {
        match sample_group(&s.pids) {
            Ok(g) => s.end = Some(g),
            Err(e) => s.errors.push(e),
        }
    }
    let parent_end = sample_self();

    // Finish and collect.
    fleet.broadcast(Command::Finish);
    line.phase = "finish";
    tracker.pump(
        &fleet,
        &mut line,
        Instant::now() + finish_timeout(args.connections),
        Tracker::all_reported_or_gone,
    );
    if !tracker.all_reported_or_gone() {
        fleet.kill();
    }
    let endings = fleet.wait();
    // Late `Exited` events (after the reports) are informational only.
    while let Ok((index, event)) = fleet.events.try_recv() {
        tracker.handle(index, event);
    }
    line.bar.finish_and_clear();

    let mut total = ProcessReport::default();
    let mut engine_failures = Vec::new();
    for index in 0..engines {
        match &tracker.reports[index] {
            Some(report) => total.merge(report),
            None => {
                let detail = tracker.exited[index]
                    .clone()
                    .unwrap_or_else(|| "did not report in time".into());
                let ending = endings.get(index).map_or("", String::as_str);
                engine_failures.push(format!("engine {index}: {detail} ({ending})"));
                // Count every connection of a dead engine as failed or lost.
                let (_, share) = plan.share(index, engines);
                let last = tracker.last[index];
                let mut dead = ProcessReport {
                    target: if args.scenario == Scenario::Churn {
                        0
                    } else {
                        share
                    },
                    opened: last.opened,
                    established: last.established,
                    ..ProcessReport::default()
                };
                let never = share.saturating_sub(last.established);
                if never > 0 {
                    dead.failed_by_cause.insert("engine_died".into(), never);
                }
                if last.established > 0 {
                    dead.lost_by_cause
                        .insert("engine_died".into(), last.established);
                }
                total.merge(&dead);
            }
        }
    }
    let outcome = RunOutcome {
        total,
        processes: engines,
        engine_failures,
        ramp_completed,
        ramp_seconds,
        hold_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        open_at_ramp_sample,
        server,
        parent: fleet
            .uses_children()
            .then_some([parent_start, parent_hold, parent_end]),
        publish,
    };
    let report = Report::build(plan, &outcome);
    let histogram = main_histogram(&outcome.total, plan.main_latency());
    Ok((report, histogram))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_timeout_grows_with_the_connections() {
        assert_eq!(finish_timeout(0), Duration::from_secs(30));
        assert_eq!(finish_timeout(19_000), Duration::from_secs(31));
        assert_eq!(finish_timeout(1_000_000), Duration::from_secs(130));
    }
}
