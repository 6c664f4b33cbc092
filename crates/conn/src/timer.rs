//! A connection's one wheel entry: under which tick its next deadline is filed, and
//! how the entry follows it.
//!
//! A worker keeps every deadline of its connections in one [`Wheel`], at most one
//! entry per connection: the minimum of its deadlines ([`Conn::poll_timeout`]). After
//! every call into a [`Conn`] the worker files that minimum again:
//!
//! ```text
//! let due = timer::due_tick(&conn, &cfg, &clock);
//! timer::refile(&mut wheel, &mut slot.timer, due, id);
//! ```
//!
//! [`due_tick`] rounds the deadline **up** to a tick, so nothing fires early. A
//! keepalive Ping may be served late by up to its slack ([`Conn::timeout_slack`], see
//! [`crate::keepalive`]), so a Ping deadline is filed further up, on the shared grid of
//! that slack ([`TickClock::deadline_tick_with_slack`]): the Pings of many connections
//! that fall due within one slack window share one tick and go out in one wake-up. Pong,
//! handshake and close deadlines have no slack and get the exact tick.
//!
//! [`refile`] then touches the wheel only when the tick moved (quinn's `drive_timer`
//! skips re-arming when the deadline is unchanged), which is what makes an answered
//! Ping whose next Ping lands in the same slack window cost no wheel operation at all.

use wheel::{Tick, TimerKey, Wheel};

use crate::clock::TickClock;
use crate::{Conn, ConnConfig};

/// The tick under which `conn`'s next deadline is filed on `clock`, or `None` when it
/// has none. Never before the deadline; late by less than one tick, plus the ping
/// slack when the deadline is a keepalive Ping.
#[must_use]
pub fn due_tick(conn: &Conn, cfg: &ConnConfig, clock: &TickClock) -> Option<Tick> {
    let deadline = conn.poll_timeout(cfg)?;
    Some(clock.deadline_tick_with_slack(deadline, conn.timeout_slack(cfg)))
}

/// What [`refile`] did to the wheel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refiled {
    /// Nothing: the entry already sits under the tick, or there is neither an entry
    /// nor a deadline.
    Unchanged,
    /// A new entry was inserted.
    Inserted,
    /// The entry was reset to a new tick.
    Moved,
    /// The entry was cancelled: the connection has no deadline any more.
    Cancelled,
}

/// Makes a connection's single wheel entry `entry` (`None` when it has none) sit under
/// `due` (`None`: no deadline), inserting `value` if a new entry is needed, and
/// touching the wheel only when the tick moved.
///
/// `entry` must be live: once the wheel fires it, the caller sets it to `None` before
/// calling `refile` again.
pub fn refile<T>(
    wheel: &mut Wheel<T>,
    entry: &mut Option<TimerKey>,
    due: Option<Tick>,
    value: T,
) -> Refiled {
    match (*entry, due) {
        (Some(key), Some(tick)) => {
            if wheel.deadline(key) == Some(tick) {
                return Refiled::Unchanged;
            }
            let live = wheel.reset(key, tick);
            debug_assert!(
                live,
                "a connection's timer key is live until it fires or is cancelled"
            );
            Refiled::Moved
        }
        (None, Some(tick)) => {
            *entry = Some(wheel.insert(tick, value));
            Refiled::Inserted
        }
        (Some(key), None) => {
            wheel.cancel(key);
            *entry = None;
            Refiled::Cancelled
        }
        (None, None) => Refiled::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use pingwheel_proto::frame::encode_client_frame;

    use super::*;
    use crate::keepalive::KeepaliveConfig;
    use crate::{CloseReason, ConnEvent};

    const TICK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A connection on a fake clock, its one wheel entry, and the wheel.
    struct Filed {
        cfg: ConnConfig,
        clock: TickClock,
        t0: Instant,
        conn: Conn,
        wheel: Wheel<u32>,
        entry: Option<TimerKey>,
        events: Vec<ConnEvent>,
    }

    impl Filed {
        /// A connection upgraded at `t0` with first-ping `jitter`, its deadline filed.
        fn open(cfg: ConnConfig, jitter: f64) -> Filed {
            let t0 = Instant::now(); // an epoch only; never read again
            let mut f = Filed {
                clock: TickClock::new(t0, TICK),
                t0,
                conn: Conn::new(&cfg, t0),
                cfg,
                wheel: Wheel::with_capacity(Tick(0), 4),
                entry: None,
                events: Vec::new(),
            };
            assert_eq!(f.refile(), Refiled::Inserted, "the handshake deadline");
            let mut request = b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                Sec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
            f.conn.handle_input(&f.cfg, t0, &mut request, &mut f.events);
            let Some(ConnEvent::UpgradeRequested(req)) = f.events.pop() else {
                panic!("no upgrade request");
            };
            f.conn
                .accept(&f.cfg, t0, &req.key, None, jitter, &mut f.events);
            f.events.clear();
            f
        }

        fn refile(&mut self) -> Refiled {
            let due = due_tick(&self.conn, &self.cfg, &self.clock);
            refile(&mut self.wheel, &mut self.entry, due, 7)
        }

        /// The instant the wheel entry fires at, relative to `t0`.
        fn filed_at(&self) -> Option<Duration> {
            let tick = self.wheel.deadline(self.entry?)?;
            Some(self.clock.instant(tick) - self.t0)
        }

        /// Advances the wheel to its entry's tick, fires it into the connection, refiles.
        fn fire(&mut self) -> (Duration, Refiled) {
            let tick = self.wheel.next_expiry().expect("an entry is filed");
            let mut fired = Vec::new();
            self.wheel.advance(tick, 16, |_, v| fired.push(v));
            assert_eq!(fired, [7]);
            self.entry = None; // the entry fired and is gone
            let now = self.clock.instant(tick);
            self.conn.handle_timeout(&self.cfg, now, &mut self.events);
            (now - self.t0, self.refile())
        }
    }

    #[test]
    fn a_ping_is_filed_on_the_slack_grid_and_a_pong_deadline_exactly() {
        // 20 s interval: slack 1 s. Jitter 0.25 makes the first Ping due at 19.5 s.
        let mut f = Filed::open(ConnConfig::default(), 0.25);
        assert_eq!(f.conn.poll_timeout(&f.cfg), Some(f.t0 + ms(19_500)));
        assert_eq!(f.refile(), Refiled::Moved, "handshake deadline → ping");
        assert_eq!(f.filed_at(), Some(secs(20)), "rounded up to the 1 s grid");
        assert_eq!(f.refile(), Refiled::Unchanged, "nothing moved");

        let (fired_at, refiled) = f.fire();
        assert_eq!(fired_at, secs(20));
        assert_eq!(f.events, [ConnEvent::PingSent]);
        f.events.clear();
        assert_eq!(refiled, Refiled::Inserted);
        assert_eq!(
            f.filed_at(),
            Some(secs(40)),
            "pong deadline: exact, no slack"
        );

        // The Pong comes back 100 ms later: the next Ping is due on its grid at 39.5 s,
        // filed at 40 s, the tick the Pong deadline already sits under.
        let mut pong = Vec::new();
        encode_client_frame(0x8A, &1u32.to_be_bytes(), [1, 2, 3, 4], &mut pong);
        let now = f.t0 + ms(20_100);
        f.conn.handle_input(&f.cfg, now, &mut pong, &mut f.events);
        assert!(
            matches!(f.events[..], [ConnEvent::Pong(_)]),
            "{:?}",
            f.events
        );
        f.events.clear();
        assert_eq!(f.conn.poll_timeout(&f.cfg), Some(f.t0 + ms(39_500)));
        assert_eq!(
            f.refile(),
            Refiled::Unchanged,
            "same tick: the wheel is not touched"
        );
        assert_eq!(f.filed_at(), Some(secs(40)));
    }

    #[test]
    fn an_unanswered_ping_fires_its_pong_deadline_then_the_entry_goes() {
        let mut f = Filed::open(ConnConfig::default(), 0.0);
        f.refile();
        assert_eq!(f.fire().0, secs(20));
        f.events.clear();
        let (fired_at, refiled) = f.fire();
        assert_eq!(fired_at, secs(40));
        assert_eq!(f.events, [ConnEvent::Closed(CloseReason::PingTimeout)]);
        assert!(f.conn.is_done());
        assert_eq!(
            refiled,
            Refiled::Unchanged,
            "fired, and nothing left to file"
        );
        assert_eq!(f.entry, None);
        assert_eq!(f.wheel.len(), 0);
    }

    #[test]
    fn a_close_deadline_is_exact_and_dropping_the_connection_cancels_the_entry() {
        let mut f = Filed::open(ConnConfig::default(), 0.0);
        f.refile();
        let now = f.t0 + ms(1_234);
        f.conn
            .close(&f.cfg, now, CloseReason::Shutdown, 1001, &mut f.events);
        assert_eq!(f.refile(), Refiled::Moved);
        assert_eq!(f.filed_at(), Some(ms(11_240)), "close_timeout, one tick up");
        f.conn.handle_eof(&mut f.events);
        assert!(f.conn.is_done());
        assert_eq!(f.refile(), Refiled::Cancelled);
        assert_eq!((f.entry, f.wheel.len()), (None, 0));
    }

    #[test]
    fn slack_shorter_than_a_tick_files_the_exact_tick() {
        // 100 ms interval: 5 ms slack, less than the 10 ms tick.
        let cfg = ConnConfig {
            keepalive: KeepaliveConfig {
                ping_interval: Some(ms(100)),
                ping_timeout: Some(ms(100)),
            },
            ..ConnConfig::default()
        };
        let mut f = Filed::open(cfg, 0.33);
        f.refile();
        // 100 ms × (1 − 0.033) = 96.7 ms, rounded up to the next 10 ms tick.
        assert_eq!(f.filed_at(), Some(ms(100)));
        let mut f = Filed::open(f.cfg.clone(), 0.5);
        f.refile();
        assert_eq!(f.filed_at(), Some(ms(100)), "95 ms rounds up to 100 ms");
        let mut f = Filed::open(f.cfg.clone(), 0.9);
        f.refile();
        assert_eq!(f.filed_at(), Some(ms(100)), "91 ms rounds up to 100 ms");
    }

    #[test]
    fn a_filed_deadline_is_never_early_and_late_by_less_than_slack_plus_a_tick() {
        for jitter in [0.0, 0.013, 0.25, 0.5, 0.777, 0.999] {
            let mut f = Filed::open(ConnConfig::default(), jitter);
            f.refile();
            let slack = f.conn.timeout_slack(&f.cfg);
            assert_eq!(slack, secs(1));
            for seq in 1..=5u32 {
                let deadline = f.conn.poll_timeout(&f.cfg).unwrap() - f.t0;
                let filed = f.filed_at().unwrap();
                assert!(
                    filed >= deadline,
                    "jitter {jitter}: {filed:?} < {deadline:?}"
                );
                assert!(filed - deadline < slack + TICK, "jitter {jitter}");
                let (fired_at, _) = f.fire();
                assert_eq!(f.events, [ConnEvent::PingSent], "jitter {jitter}");
                f.events.clear();
                // Answered at once, so the next deadline is a Ping again.
                let mut pong = Vec::new();
                encode_client_frame(0x8A, &seq.to_be_bytes(), [9, 9, 9, 9], &mut pong);
                let now = f.t0 + fired_at;
                f.conn.handle_input(&f.cfg, now, &mut pong, &mut f.events);
                f.events.clear();
                f.refile();
            }
        }
    }
}
