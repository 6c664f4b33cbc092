//! Keepalive: **where pings are scheduled**.
//!
//! The semantics are those of the Python `websockets` library (`keepalive()` in
//! `websockets/asyncio/connection.py`):
//!
//! * every `ping_interval` the server sends a Ping;
//! * with `ping_timeout` set, it then waits for the Pong: if none arrives within
//!   `ping_timeout` the connection is broken and is closed with 1011; when the Pong
//!   arrives after `latency`, the next Ping goes out `ping_interval` after the previous
//!   one was due, or right away if `latency > ping_interval` (so at most one Ping is
//!   outstanding). Unlike `websockets`, which sleeps after each Pong, pings stay on
//!   their grid: a timer that fires a tick late does not delay every later Ping;
//! * with `ping_timeout` disabled, Pings go out every `ping_interval` whether or not
//!   Pongs come back, and nothing is ever closed for a missing Pong;
//! * with `ping_interval` disabled, no Pings are sent at all.
//!
//! Each Ping carries a 4-byte big-endian sequence number. A Pong acknowledges the
//! outstanding Ping when its payload is that Ping's number; a Pong for an earlier Ping
//! (only possible with `ping_timeout` disabled) or with any other payload is
//! unsolicited and ignored. An acknowledged Ping yields a round-trip time: from the
//! moment the Ping was handed to the connection to the moment its Pong was processed,
//! so an overloaded event loop shows up as late Pongs.
//!
//! **First ping jitter.** The first Ping is due `ping_interval × (1 − j/10)` after the
//! upgrade, with `j` uniform in `[0, 1)`: up to 10 % early (2 s at the default 20 s).
//! A reconnect storm that opens thousands of connections in the same instant therefore
//! spreads its keepalive traffic over a tenth of the interval instead of sending every
//! Ping in the same wheel tick; later Pings keep that spacing. The jitter is an input
//! ([`Keepalive::start`]), so tests can pin it to zero.
//!
//! **Ping slack.** A Ping may go out up to `min(ping_interval / 20, 1 s)` late
//! ([`KeepaliveConfig::ping_slack`]; the 1 s cap is `--max-ping-slack`): the worker files
//! a Ping deadline under the next
//! multiple of that slack on its wheel clock, so the Pings of thousands of connections
//! that fall due within the same second go out together, in one wake-up, instead of one
//! small batch per 10 ms tick. On this project's test VM that makes a keepalive round
//! trip about a quarter cheaper (docs/benchmarks.md). Pings still keep their interval on
//! average (the grid is the exact due time; only the send is rounded), each interval
//! is within `± slack` of the configured one, and the first-ping jitter (a tenth of the
//! interval, two slack windows) still spreads a reconnect storm. Pong deadlines,
//! handshake and close deadlines get no slack. The price is latency: each worker sends
//! a second's Pings, and reads their Pongs, in one burst, and what else is due then
//! (a delivery) waits behind it: at 19,000 connections on two workers, a median delivery
//! p99 of 4.6 ms against 1.3 ms with a cap of zero, which sends each Ping in its own
//! tick and costs 40 % more CPU per idle round trip (docs/benchmarks.md).

use std::time::{Duration, Instant};

/// Keepalive timing settings, shared by every connection of a worker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Time between Pings; `None` disables keepalive Pings.
    pub ping_interval: Option<Duration>,
    /// How long to wait for a Pong before closing with 1011; `None` waits forever.
    pub ping_timeout: Option<Duration>,
    /// The cap on the ping slack (`--max-ping-slack`): at most [`MAX_PING_SLACK`]; zero
    /// sends every Ping in its own tick.
    pub max_ping_slack: Duration,
}

/// The default and largest cap on the ping slack: one second.
pub const MAX_PING_SLACK: Duration = Duration::from_secs(1);

impl Default for KeepaliveConfig {
    /// The gateway's defaults: a Ping every 20 s, 20 s for its Pong, slack capped at 1 s.
    fn default() -> KeepaliveConfig {
        KeepaliveConfig {
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            max_ping_slack: MAX_PING_SLACK,
        }
    }
}

impl KeepaliveConfig {
    /// How late a Ping may go out (timer slack, see the module docs):
    /// `min(ping_interval / 20, max_ping_slack)`; zero when pings are off.
    pub fn ping_slack(&self) -> Duration {
        self.ping_interval
            .map_or(Duration::ZERO, |i| (i / 20).min(self.max_ping_slack))
    }
}

/// What a Pong meant.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PongOutcome {
    /// It acknowledged the outstanding Ping, which was sent `rtt` ago.
    Acknowledged {
        /// Ping handed to the connection → Pong processed.
        rtt: Duration,
    },
    /// It matched no outstanding Ping and was ignored.
    Unsolicited,
}

/// Per-connection keepalive state: two instants and a counter.
///
/// Invariant: with `ping_timeout` set, at most one Ping is outstanding: `poll_ping`
/// sends nothing while `outstanding` is set.
#[derive(Clone, Debug, Default)]
pub struct Keepalive {
    /// When the next Ping is due (its slot on the `ping_interval` grid); `None` when
    /// disabled. In timeout mode it also waits for the outstanding Pong.
    next_ping: Option<Instant>,
    /// When the latest unacknowledged Ping was sent.
    outstanding: Option<Instant>,
    /// Sequence number of the latest Ping sent (its payload).
    seq: u32,
}

impl Keepalive {
    /// Starts keepalive at `now` (the upgrade). `jitter` in `[0, 1)` moves the first Ping
    /// up to 10 % earlier (see the module docs).
    pub fn start(&mut self, cfg: &KeepaliveConfig, now: Instant, jitter: f64) {
        debug_assert!((0.0..1.0).contains(&jitter), "jitter={jitter}");
        self.outstanding = None;
        self.next_ping = cfg.ping_interval.map(|interval| {
            let early = interval.mul_f64(jitter.clamp(0.0, 1.0) / 10.0);
            now + (interval - early)
        });
    }

    /// Stops keepalive (the connection is closing).
    pub fn stop(&mut self) {
        self.next_ping = None;
        self.outstanding = None;
    }

    /// The earliest keepalive deadline: the Pong deadline while a Ping is outstanding
    /// in timeout mode (the next Ping waits for the Pong), else the next Ping.
    pub fn poll_timeout(&self, cfg: &KeepaliveConfig) -> Option<Instant> {
        self.pong_deadline(cfg).or(self.next_ping)
    }

    /// How late [`Keepalive::poll_timeout`] may be served: the ping slack when it is a
    /// Ping, zero when it is a Pong deadline (a timeout is never served late on purpose).
    pub fn timeout_slack(&self, cfg: &KeepaliveConfig) -> Duration {
        match self.pong_deadline(cfg) {
            Some(_) => Duration::ZERO,
            None => cfg.ping_slack(),
        }
    }

    /// While a Ping awaits its Pong (timeout mode): the slot of the next Ping, which goes
    /// out once that Pong is in (`None` otherwise). The worker may file the connection's
    /// timer under this slot when it comes before the Pong deadline, so that the Pong,
    /// which makes the slot the next deadline, leaves the timer where it is
    /// (`timer::due_tick`).
    pub fn ping_after_pong(&self, cfg: &KeepaliveConfig) -> Option<Instant> {
        self.pong_deadline(cfg)?;
        self.next_ping
    }

    /// The instant by which the outstanding Ping must be answered, if any.
    pub fn pong_deadline(&self, cfg: &KeepaliveConfig) -> Option<Instant> {
        Some(self.outstanding? + cfg.ping_timeout?)
    }

    /// True when the Pong deadline has passed at `now`: close with 1011.
    pub fn timed_out(&self, cfg: &KeepaliveConfig, now: Instant) -> bool {
        self.pong_deadline(cfg).is_some_and(|d| now >= d)
    }

    /// If a Ping is due at `now`, records it as sent and returns its 4-byte payload.
    /// Calling it early, again at the same `now`, or (in timeout mode) while a Ping is
    /// still unanswered, returns `None`.
    pub fn poll_ping(&mut self, cfg: &KeepaliveConfig, now: Instant) -> Option<[u8; 4]> {
        let due = self.next_ping?;
        let interval = cfg.ping_interval?;
        if now < due || self.pong_deadline(cfg).is_some() {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        // Without a timeout several Pings may be outstanding; the RTT is then taken
        // against the latest one only.
        self.outstanding = Some(now);
        // Pings stay on their grid (a late timer does not push every later Ping back),
        // unless a whole interval was missed (overload): then the next Ping is a full
        // interval after this one, never a burst.
        self.next_ping = Some(if due + interval > now {
            due + interval
        } else {
            now + interval
        });
        Some(self.seq.to_be_bytes())
    }

    /// Handles a Pong with `payload` received at `now`.
    pub fn on_pong(&mut self, now: Instant, payload: &[u8]) -> PongOutcome {
        let Some(sent) = self.outstanding else {
            return PongOutcome::Unsolicited;
        };
        if payload != self.seq.to_be_bytes() {
            return PongOutcome::Unsolicited;
        }
        self.outstanding = None;
        // A Pong later than the next Ping's slot (latency > interval) lets that Ping go
        // at once, as in `websockets`.
        if let Some(next) = self.next_ping {
            self.next_ping = Some(next.max(now));
        }
        PongOutcome::Acknowledged {
            rtt: now.saturating_duration_since(sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cfg(interval: Option<u64>, timeout: Option<u64>) -> KeepaliveConfig {
        KeepaliveConfig {
            ping_interval: interval.map(s),
            ping_timeout: timeout.map(s),
            ..KeepaliveConfig::default()
        }
    }

    #[test]
    fn the_ping_slack_is_a_twentieth_of_the_interval_under_its_cap() {
        let ms = Duration::from_millis;
        let mut c = cfg(Some(20), Some(20));
        assert_eq!(c.ping_slack(), s(1), "20 s / 20 = the default cap");
        c.ping_interval = Some(s(4));
        assert_eq!(c.ping_slack(), ms(200));
        c.max_ping_slack = ms(50);
        assert_eq!(c.ping_slack(), ms(50));
        c.max_ping_slack = Duration::ZERO;
        assert_eq!(
            c.ping_slack(),
            Duration::ZERO,
            "a zero cap: every ping on its tick"
        );
        assert_eq!(
            cfg(None, Some(20)).ping_slack(),
            Duration::ZERO,
            "pings off"
        );
    }

    #[test]
    fn ping_then_pong_then_next_ping_one_interval_after_the_first() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(20)));
        assert_eq!(k.poll_ping(&c, t0 + s(19)), None);
        let p = k.poll_ping(&c, t0 + s(20)).expect("due");
        assert_eq!(p, 1u32.to_be_bytes());
        assert_eq!(
            k.poll_ping(&c, t0 + s(20)),
            None,
            "no second ping while one is outstanding"
        );
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(40)), "pong deadline");
        let out = k.on_pong(t0 + s(21), &p);
        assert_eq!(out, PongOutcome::Acknowledged { rtt: s(1) });
        assert_eq!(
            k.poll_timeout(&c),
            Some(t0 + s(40)),
            "next ping at sent + interval"
        );
        assert!(!k.timed_out(&c, t0 + s(100)));
    }

    #[test]
    fn late_timers_do_not_accumulate_drift_in_timeout_mode() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        let late = Duration::from_millis(10);
        for n in 1..=5u64 {
            // The timer fires one tick late each time; the pong comes 1 ms later.
            let p = k.poll_ping(&c, t0 + s(20 * n) + late).expect("due");
            k.on_pong(t0 + s(20 * n) + late + Duration::from_millis(1), &p);
            assert_eq!(k.poll_timeout(&c), Some(t0 + s(20 * (n + 1))), "ping {n}");
        }
    }

    #[test]
    fn the_next_ping_slot_is_known_while_its_pong_is_awaited() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        assert_eq!(k.ping_after_pong(&c), None, "no Ping outstanding");
        let p = k.poll_ping(&c, t0 + s(20)).unwrap();
        assert_eq!(k.ping_after_pong(&c), Some(t0 + s(40)));
        k.on_pong(t0 + s(21), &p);
        assert_eq!(k.ping_after_pong(&c), None);
        let untimed = cfg(Some(20), None);
        k.start(&untimed, t0, 0.0);
        k.poll_ping(&untimed, t0 + s(20)).unwrap();
        assert_eq!(k.ping_after_pong(&untimed), None, "no Pong is awaited");
    }

    #[test]
    fn slow_pong_schedules_the_next_ping_immediately() {
        let c = cfg(Some(2), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        let p = k.poll_ping(&c, t0 + s(2)).unwrap();
        k.on_pong(t0 + s(7), &p);
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(7)));
    }

    #[test]
    fn missing_pong_times_out() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        k.poll_ping(&c, t0 + s(20)).unwrap();
        assert!(!k.timed_out(&c, t0 + s(39)));
        assert!(k.timed_out(&c, t0 + s(40)));
    }

    #[test]
    fn unsolicited_and_stale_pongs_are_ignored() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        assert_eq!(k.on_pong(t0, b"\0\0\0\x01"), PongOutcome::Unsolicited);
        k.poll_ping(&c, t0 + s(20)).unwrap();
        assert_eq!(k.on_pong(t0 + s(21), b"hello"), PongOutcome::Unsolicited);
        assert_eq!(
            k.on_pong(t0 + s(21), b"\0\0\0\x00"),
            PongOutcome::Unsolicited
        );
        assert!(k.timed_out(&c, t0 + s(40)));
    }

    #[test]
    fn without_timeout_pings_keep_coming_and_nothing_times_out() {
        let c = cfg(Some(5), None);
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        for i in 1..=4u32 {
            let p = k.poll_ping(&c, t0 + s(5 * u64::from(i))).unwrap();
            assert_eq!(p, i.to_be_bytes());
        }
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(25)));
        assert!(!k.timed_out(&c, t0 + s(1000)));
        // A pong for an earlier ping is not the latest one's answer.
        assert_eq!(
            k.on_pong(t0 + s(21), &3u32.to_be_bytes()),
            PongOutcome::Unsolicited
        );
        assert_eq!(
            k.on_pong(t0 + s(21), &4u32.to_be_bytes()),
            PongOutcome::Acknowledged { rtt: s(1) }
        );
    }

    #[test]
    fn late_timer_does_not_drift_or_burst() {
        let c = cfg(Some(5), None);
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.0);
        // The loop ran 1 s late: the next ping keeps the original grid.
        k.poll_ping(&c, t0 + s(6)).unwrap();
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(10)));
        // Far behind (overload): one ping, then one interval later — no burst.
        k.poll_ping(&c, t0 + s(30)).unwrap();
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(35)));
        assert_eq!(k.poll_ping(&c, t0 + s(30)), None);
    }

    #[test]
    fn disabled_interval_sends_nothing() {
        let c = cfg(None, Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.5);
        assert_eq!(k.poll_timeout(&c), None);
        assert_eq!(k.poll_ping(&c, t0 + s(1000)), None);
    }

    #[test]
    fn jitter_moves_the_first_ping_up_to_a_tenth_earlier() {
        let c = cfg(Some(20), Some(20));
        let t0 = Instant::now();
        let mut k = Keepalive::default();
        k.start(&c, t0, 0.5);
        assert_eq!(k.poll_timeout(&c), Some(t0 + s(19)));
        k.start(&c, t0, 0.999_999);
        let first = k.poll_timeout(&c).unwrap();
        assert!(first > t0 + s(18) && first <= t0 + s(20));
    }
}
