//! Pure pacing of bulk work on one Redis instance, and the tally that turns a stream of
//! failures into one warning per interval with a count. No IO, no clock: durations
//! and `now` come from the caller.
//!
//! # Why reads are paced
//!
//! A reconnect storm (thousands of clients subscribing with `since` at once) asks for
//! thousands of recovery reads in one engine turn. Sent as one pipeline, Redis works
//! through all of them before it answers anything else on that instance — the publish
//! scripts and the liveness probe queue behind — and the pipeline as a whole misses
//! `--redis-timeout`, so every recovery in it fails. [`Pacer`] cuts such a batch into
//! chunks that each take about [`Pacer::target`] (a fraction of the command timeout),
//! sent one after the other: at most one chunk is ahead of a publish, and each chunk
//! is answered as soon as it is read. The chunk size follows the measured cost per
//! read (an average over recent chunks), so a cheap storm goes in few round trips and
//! an expensive one (long recoveries, a loaded machine) in small ones.
//!
//! # Invariants
//!
//! * [`Pacer::size`] is always within `1..=`[`MAX_CHUNK`].
//! * A timed-out chunk shrinks the size to a quarter at least, and is retried at most
//!   [`MAX_ATTEMPTS`] times in all before its reads fail.

use std::time::{Duration, Instant};

/// Reads per chunk before anything was measured.
pub const FIRST_CHUNK: usize = 64;
/// The largest chunk.
pub const MAX_CHUNK: usize = 1024;
/// How many times a chunk is sent before its reads fail (the first send included).
pub const MAX_ATTEMPTS: u32 = 3;

/// Chunk sizes for bulk reads on one instance. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pacer {
    target: Duration,
    /// Average cost of one read, in seconds (`None`: not measured yet).
    per_read: Option<f64>,
    size: usize,
}

impl Pacer {
    /// A pacer aiming at chunks of `target` each (e.g. a quarter of the command
    /// timeout, so a publish behind one chunk still answers in time).
    pub fn new(target: Duration) -> Pacer {
        Pacer {
            target,
            per_read: None,
            size: FIRST_CHUNK,
        }
    }

    /// How long a chunk should take.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// Reads in the next chunk.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A chunk of `reads` reads was answered after `took`.
    pub fn answered(&mut self, reads: usize, took: Duration) {
        if reads == 0 {
            return;
        }
        let sample = took.as_secs_f64() / reads as f64;
        // A small chunk's time is mostly the round trip: it says little about the
        // cost of a read, so it weighs by its share of a full chunk.
        let weight = (reads as f64 / self.size.max(1) as f64).clamp(0.1, 1.0) * 0.5;
        let per_read = match self.per_read {
            None => sample,
            Some(avg) => avg + (sample - avg) * weight,
        };
        self.per_read = Some(per_read);
        self.size = self.fit(per_read);
    }

    /// A chunk of `reads` reads got no answer within `after`: the next chunk is at most
    /// a quarter of that one.
    pub fn timed_out(&mut self, reads: usize, after: Duration) {
        let per_read = after.as_secs_f64() / reads.max(1) as f64;
        self.per_read = Some(self.per_read.map_or(per_read, |avg| avg.max(per_read)));
        self.size = self.fit(per_read).min((reads / 4).max(1));
    }

    fn fit(&self, per_read: f64) -> usize {
        if per_read <= 0.0 {
            return MAX_CHUNK;
        }
        let fits = self.target.as_secs_f64() / per_read;
        (fits as usize).clamp(1, MAX_CHUNK)
    }
}

/// Failures counted between warnings: the first after a quiet spell is reported at
/// once, the rest at most once per interval, with how many there were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    every: Duration,
    /// When the last warning was due.
    reported: Option<Instant>,
    /// Failures since then, not yet reported.
    count: u64,
}

impl Tally {
    /// A tally warning at most once per `every`.
    pub fn new(every: Duration) -> Tally {
        Tally {
            every,
            reported: None,
            count: 0,
        }
    }

    /// Counts `n` failures at `now`; returns how many to report when a warning is due.
    pub fn add(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.count += n;
        self.due(now)
    }

    /// Failures counted and not reported, once their interval is over (call it
    /// periodically, so the end of a burst is reported too).
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let quiet = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !quiet {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_cheap_storm_grows_to_the_largest_chunk() {
        let mut p = Pacer::new(25 * MS);
        assert_eq!(p.size(), FIRST_CHUNK);
        for _ in 0..10 {
            let n = p.size();
            p.answered(n, Duration::from_micros(10) * n as u32);
        }
        assert_eq!(p.size(), MAX_CHUNK);
    }

    #[test]
    fn the_size_follows_the_cost_of_a_read() {
        // 75 µs a read (recoveries of 20 messages on a loaded machine): 25 ms is ~333.
        let mut p = Pacer::new(25 * MS);
        for _ in 0..20 {
            let n = p.size();
            p.answered(n, Duration::from_micros(75) * n as u32);
        }
        assert!((320..=340).contains(&p.size()), "{}", p.size());
        // The machine gets three times slower: the chunks shrink to match.
        for _ in 0..20 {
            let n = p.size();
            p.answered(n, Duration::from_micros(225) * n as u32);
        }
        assert!((100..=120).contains(&p.size()), "{}", p.size());
    }

    #[test]
    fn a_timeout_cuts_the_chunk_to_a_quarter_at_least() {
        let mut p = Pacer::new(25 * MS);
        for _ in 0..10 {
            let n = p.size();
            p.answered(n, Duration::from_micros(10) * n as u32);
        }
        assert_eq!(p.size(), MAX_CHUNK);
        p.timed_out(MAX_CHUNK, 100 * MS);
        assert_eq!(p.size(), MAX_CHUNK / 4);
        // Timeouts in a row go down to one read, never to zero.
        for _ in 0..20 {
            let n = p.size();
            p.timed_out(n, 100 * MS);
        }
        assert_eq!(p.size(), 1);
    }

    #[test]
    fn a_timeout_is_not_forgotten_by_one_quick_small_chunk() {
        let mut p = Pacer::new(25 * MS);
        p.timed_out(400, 100 * MS); // ≥ 250 µs a read
        let after = p.size();
        assert!(after <= 100, "{after}");
        p.answered(1, Duration::from_micros(300)); // mostly round trip
        assert!(p.size() <= after * 2, "{} after {after}", p.size());
    }

    #[test]
    fn the_tally_reports_the_first_at_once_then_once_per_interval_with_the_count() {
        let start = Instant::now();
        let mut t = Tally::new(Duration::from_secs(1));
        assert_eq!(t.due(start), None);
        assert_eq!(t.add(1, start), Some(1));
        assert_eq!(t.add(5, start + 100 * MS), None);
        assert_eq!(t.add(7, start + 900 * MS), None);
        assert_eq!(t.due(start + 999 * MS), None);
        assert_eq!(t.due(start + 1000 * MS), Some(12));
        assert_eq!(t.due(start + 5000 * MS), None);
        // After a quiet spell the next failure is reported at once again.
        assert_eq!(t.add(3, start + 5000 * MS), Some(3));
    }
}
