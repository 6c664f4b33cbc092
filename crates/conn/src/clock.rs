//! The one place where wall time (`Instant`) meets wheel time ([`Tick`]).
//!
//! The timer wheel counts ticks since the worker started; a tick is `--tick` long
//! (10 ms by default). Deadlines are rounded **up** to a tick and the current time is
//! rounded **down**, so a timer filed for instant `d` fires at the first
//! `advance(now_tick)` with `now >= d`: never early, and late by less than one tick
//! plus the event loop's own delay (measured as `pingwheel_event_loop_lag_seconds`).

use std::time::{Duration, Instant};

use wheel::Tick;

/// Converts between `Instant` and wheel [`Tick`]s for one worker.
#[derive(Copy, Clone, Debug)]
pub struct TickClock {
    epoch: Instant,
    tick_nanos: u64,
    /// The slack [`TickClock::deadline_tick_with_slack`] is called with most (the ping
    /// slack, see [`TickClock::with_slack`]), in nanoseconds, and its grid: the window
    /// in ticks and in nanoseconds. Saves the divisions that derive them on every call.
    slack_nanos: u64,
    window: u64,
    window_nanos: u64,
}

impl TickClock {
    /// A clock whose tick 0 starts at `epoch`.
    ///
    /// # Panics
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds.
    pub fn new(epoch: Instant, tick: Duration) -> TickClock {
        let tick_nanos = u64::try_from(tick.as_nanos()).expect("tick fits in u64 nanoseconds");
        assert!(tick_nanos > 0, "tick must be positive");
        TickClock {
            epoch,
            tick_nanos,
            slack_nanos: 0,
            window: 1,
            window_nanos: tick_nanos,
        }
    }

    /// The same clock, with the grid for `slack` worked out once: the worker passes the
    /// ping slack here, since every Ping deadline is filed with it.
    #[must_use]
    pub fn with_slack(mut self, slack: Duration) -> TickClock {
        self.slack_nanos = nanos(slack);
        self.window = (self.slack_nanos / self.tick_nanos).max(1);
        self.window_nanos = self.window * self.tick_nanos;
        self
    }

    /// The length of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// The tick that contains `now` (rounded down): what to pass to `Wheel::advance`.
    /// Instants before the epoch map to tick 0.
    pub fn now_tick(&self, now: Instant) -> Tick {
        Tick(self.nanos_since_epoch(now) / self.tick_nanos)
    }

    /// The first tick that starts at or after `deadline` (rounded up): what to file a
    /// deadline under, so it never fires before `deadline`.
    pub fn deadline_tick(&self, deadline: Instant) -> Tick {
        Tick(self.nanos_since_epoch(deadline).div_ceil(self.tick_nanos))
    }

    /// Like [`TickClock::deadline_tick`], but a deadline that may be served up to
    /// `slack` late is filed under the next multiple of `slack` (on this clock's tick
    /// grid), so deadlines with slack that fall in the same window share one tick and
    /// fire in one batch. Never early; late by less than `slack` plus one tick.
    pub fn deadline_tick_with_slack(&self, deadline: Instant, slack: Duration) -> Tick {
        let slack = nanos(slack);
        let (window, window_nanos) = if slack == self.slack_nanos {
            (self.window, self.window_nanos)
        } else {
            let window = (slack / self.tick_nanos).max(1);
            (window, window * self.tick_nanos)
        };
        if window == 1 {
            return self.deadline_tick(deadline);
        }
        // ⌈⌈n / tick⌉ / window⌉ = ⌈n / (tick · window)⌉: the next grid line, in one division.
        let windows = self.nanos_since_epoch(deadline).div_ceil(window_nanos);
        Tick(windows.saturating_mul(window))
    }

    /// The instant at which `tick` starts.
    pub fn instant(&self, tick: Tick) -> Instant {
        let nanos = u128::from(tick.0) * u128::from(self.tick_nanos);
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(nanos)
    }

    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn deadlines_round_up_and_now_rounds_down() {
        let t0 = Instant::now();
        let c = TickClock::new(t0, ms(10));
        assert_eq!(c.now_tick(t0), Tick(0));
        assert_eq!(c.deadline_tick(t0), Tick(0));
        assert_eq!(c.now_tick(t0 + ms(9)), Tick(0));
        assert_eq!(c.deadline_tick(t0 + ms(9)), Tick(1));
        assert_eq!(c.now_tick(t0 + ms(10)), Tick(1));
        assert_eq!(c.deadline_tick(t0 + ms(10)), Tick(1));
        assert_eq!(
            c.deadline_tick(t0 + ms(10) + Duration::from_nanos(1)),
            Tick(2)
        );
        assert_eq!(c.instant(Tick(3)), t0 + ms(30));
    }

    #[test]
    fn a_timer_never_fires_early() {
        let t0 = Instant::now();
        let c = TickClock::new(t0, ms(10));
        for d in [0u64, 1, 9, 10, 11, 12_345] {
            let deadline = t0 + Duration::from_micros(d * 7 + 3);
            let tick = c.deadline_tick(deadline);
            // advance(now_tick) fires when now_tick >= tick, i.e. from instant(tick) on.
            assert!(c.instant(tick) >= deadline);
            assert!(c.instant(tick) - deadline < c.tick());
        }
    }

    #[test]
    fn slack_batches_deadlines_of_one_window_without_firing_early() {
        let t0 = Instant::now();
        let c = TickClock::new(t0, ms(10));
        let slack = Duration::from_secs(1);
        // Deadlines anywhere in (0 s, 1 s] share the tick at 1 s.
        for d in [1, 10, 333, 999, 1000] {
            assert_eq!(
                c.deadline_tick_with_slack(t0 + ms(d), slack),
                Tick(100),
                "{d} ms"
            );
        }
        assert_eq!(c.deadline_tick_with_slack(t0 + ms(1001), slack), Tick(200));
        // No slack (or less than a tick): the exact tick.
        assert_eq!(
            c.deadline_tick_with_slack(t0 + ms(333), Duration::ZERO),
            Tick(34)
        );
        assert_eq!(c.deadline_tick_with_slack(t0 + ms(333), ms(5)), Tick(34));
        for d in [7u64, 1234, 98_765] {
            let deadline = t0 + ms(d);
            let tick = c.deadline_tick_with_slack(deadline, slack);
            assert!(c.instant(tick) >= deadline);
            assert!(c.instant(tick) - deadline < slack + c.tick());
        }
    }

    #[test]
    fn instants_before_the_epoch_are_tick_zero() {
        let t0 = Instant::now() + ms(50);
        let c = TickClock::new(t0, ms(10));
        assert_eq!(c.now_tick(t0 - ms(20)), Tick(0));
    }

    #[test]
    fn the_precomputed_grid_files_as_the_two_step_rounding_did() {
        let t0 = Instant::now();
        for (tick, slack) in [
            (ms(10), ms(200)),
            (ms(10), ms(1000)),
            (ms(7), ms(50)),
            (ms(10), ms(5)),
        ] {
            let plain = TickClock::new(t0, tick);
            let gridded = plain.with_slack(slack);
            let t = u64::try_from(tick.as_nanos()).unwrap();
            let window = (u64::try_from(slack.as_nanos()).unwrap() / t).max(1);
            for n in (0..5_000_000_000u64).step_by(3_333_337) {
                let deadline = t0 + Duration::from_nanos(n);
                let two_step = Tick(n.div_ceil(t).div_ceil(window) * window);
                assert_eq!(
                    gridded.deadline_tick_with_slack(deadline, slack),
                    two_step,
                    "{n}"
                );
                assert_eq!(
                    plain.deadline_tick_with_slack(deadline, slack),
                    two_step,
                    "{n}"
                );
            }
        }
    }
}
