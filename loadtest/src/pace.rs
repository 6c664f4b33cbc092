//! Schedule arithmetic on nanosecond clocks: rate schedules (the ramp, churn, echo
//! messages) and periodic slots (client pings, echo messages). Pure: every function
//! takes the times it needs.

/// "No deadline": later than any time the engine reaches.
pub const NEVER: u64 = u64::MAX;

/// Converts a duration to nanoseconds, saturating at [`NEVER`].
pub fn duration_ns(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(NEVER)
}

/// When the `count`-th event of a `rate`/s schedule starting at `start_ns` is due
/// ([`NEVER`] for a rate of 0).
pub fn rate_due_ns(start_ns: u64, rate: f64, count: u64) -> u64 {
    if rate <= 0.0 {
        return NEVER;
    }
    start_ns.saturating_add((count as f64 / rate * 1e9) as u64)
}

/// How many events of a `rate`/s schedule starting at `start_ns` are due at `now_ns`
/// (the first is due immediately).
pub fn due_count(start_ns: u64, rate: f64, now_ns: u64) -> u64 {
    if rate <= 0.0 || now_ns < start_ns {
        return 0;
    }
    let elapsed_s = (now_ns - start_ns) as f64 / 1e9;
    (elapsed_s * rate).floor() as u64 + 1
}

/// The period of a per-connection rate, [`NEVER`] for 0 (closed loop).
pub fn rate_period_ns(rate: f64) -> u64 {
    if rate > 0.0 {
        ((1e9 / rate) as u64).max(1)
    } else {
        NEVER
    }
}

/// The next slot of a periodic schedule whose slot `due` just ran at `now`: keeps the
/// phase, but never schedules into the past (a loop that fell behind does not burst).
pub fn next_on_schedule(due: u64, period: u64, now: u64) -> u64 {
    let period = period.max(1);
    let next = due.saturating_add(period);
    if next > now { next } else { now + period }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_schedules() {
        assert_eq!(due_count(0, 1000.0, 0), 1, "the first event is due at once");
        assert_eq!(due_count(0, 1000.0, 999_999), 1);
        assert_eq!(due_count(0, 1000.0, 1_000_000), 2);
        assert_eq!(due_count(5, 1000.0, 4), 0);
        assert_eq!(due_count(0, 0.0, 1 << 40), 0);
        assert_eq!(rate_due_ns(0, 1000.0, 3), 3_000_000);
        assert_eq!(rate_due_ns(0, 0.0, 3), NEVER);
        assert_eq!(rate_period_ns(0.0), NEVER);
        assert_eq!(rate_period_ns(4.0), 250_000_000);
        assert_eq!(next_on_schedule(100, 10, 101), 110, "keeps the phase");
        assert_eq!(next_on_schedule(100, 10, 150), 160, "no catch-up burst");
    }
}
