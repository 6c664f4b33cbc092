//! A connection's one wheel entry: under which tick its next deadline is filed, and
//! how the entry follows it.
//!
//! A worker keeps every deadline of its connections in one [`Wheel`], at most one
//! entry per connection: the minimum of its deadlines ([`Conn::poll_timeout`]). After
//! every call into a [`Conn`] the worker files that minimum again:
//!
//! ```text
//! let due = timer::due_tick(&conn, &cfg, &clock, now);
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
//! skips re-arming when the deadline is unchanged).
//!
//! # A keepalive round trip costs one wheel operation
//!
//! While a Ping awaits its Pong, the deadline is the Pong's, but the entry is filed
//! under the **earlier of the Pong deadline and the next Ping's slot** (when that slot
//! is still ahead of `now`). With the default `ping_timeout = ping_interval` the slot
//! comes first: the Ping went out at or after its own slot, so its Pong deadline is at
//! least one interval after it. When the Pong arrives the slot *is* the next deadline,
//! and the entry does not move: a round trip costs the one re-insert after the Ping
//! fires, instead of that plus a reset (an unlink and a re-link among other
//! connections' entries, cache misses each) when the Pong comes back. If the slot comes
//! up before the Pong, the firing finds nothing to do (no Ping goes out while one is
//! awaited, and the Pong deadline has not passed) and the entry moves to the exact Pong
//! deadline, so 1011 is still on time.

use std::time::Instant;

use wheel::{Tick, TimerKey, Wheel};

use crate::clock::TickClock;
use crate::{Conn, ConnConfig};

/// The tick under which `conn`'s next deadline is filed on `clock` at `now`, or `None`
/// when it has none. Never before the deadline; late by less than one tick, plus the
/// ping slack when the deadline is a keepalive Ping. While a Pong is awaited it may be
/// the next Ping's slot instead, when that is earlier and still ahead (see the module
/// docs): firing there is early for the connection, which ignores it.
#[must_use]
pub fn due_tick(conn: &Conn, cfg: &ConnConfig, clock: &TickClock, now: Instant) -> Option<Tick> {
    let deadline = conn.poll_timeout(cfg)?;
    let due = clock.deadline_tick_with_slack(deadline, conn.timeout_slack(cfg));
    let Some(next_ping) = conn.ping_after_pong(cfg) else {
        return Some(due);
    };
    let slot = clock.deadline_tick_with_slack(next_ping, cfg.keepalive.ping_slack());
    Some(if slot < due && slot > clock.now_tick(now) {
        slot
    } else {
        due
    })
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
        /// Virtual time: the last instant the connection was driven at.
        now: Instant,
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
                now: t0,
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
            self.refile_at(self.now)
        }

        fn refile_at(&mut self, now: Instant) -> Refiled {
            let due = due_tick(&self.conn, &self.cfg, &self.clock, now);
            refile(&mut self.wheel, &mut self.entry, due, 7)
        }

        /// The instant the wheel entry fires at, relative to `t0`.
        fn filed_at(&self) -> Option<Duration> {
            let tick = self.wheel.deadline(self.entry?)?;
            Some(self.clock.instant(tick) - self.t0)
        }

        /// Advances the wheel to its entry's tick, fires it into the connection, refiles.
        fn fire(&mut self) -> (Duration, Refiled) {
            self.fire_late(Duration::ZERO)
        }

        /// Like [`Filed::fire`], with the event loop getting to it `late` after the tick
        /// began (a real loop always runs a little after the instant of its tick).
        fn fire_late(&mut self, late: Duration) -> (Duration, Refiled) {
            let tick = self.wheel.next_expiry().expect("an entry is filed");
            let mut fired = Vec::new();
            self.wheel.advance(tick, 16, |_, v| fired.push(v));
            assert_eq!(fired, [7]);
            self.entry = None; // the entry fired and is gone
            self.now = self.clock.instant(tick) + late;
            self.conn
                .handle_timeout(&self.cfg, self.now, &mut self.events);
            (self.now - self.t0, self.refile())
        }

        /// Feeds the client's Pong for Ping number `seq` at `now`.
        fn pong(&mut self, now: Instant, seq: u32) {
            let mut pong = Vec::new();
            encode_client_frame(0x8A, &seq.to_be_bytes(), [1, 2, 3, 4], &mut pong);
            self.now = now;
            self.conn
                .handle_input(&self.cfg, now, &mut pong, &mut self.events);
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
                ..KeepaliveConfig::default()
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

    #[test]
    fn an_answered_ping_leaves_the_entry_under_the_next_ping_slot() {
        // 4 s pings and timeout: slack 200 ms. The loop runs each tick 3 ms late, so the
        // Pong deadline (send + 4 s) lands 3 ms after the next Ping's slot.
        let cfg = ConnConfig {
            keepalive: KeepaliveConfig {
                ping_interval: Some(secs(4)),
                ping_timeout: Some(secs(4)),
                ..KeepaliveConfig::default()
            },
            ..ConnConfig::default()
        };
        let mut f = Filed::open(cfg, 0.3); // first Ping due at 3.88 s, slot 4 s
        f.refile();
        for seq in 1..=3u32 {
            let slot = secs(4 * u64::from(seq));
            assert_eq!(f.filed_at(), Some(slot), "ping {seq}");
            let (sent, refiled) = f.fire_late(ms(3));
            assert_eq!(sent, slot + ms(3));
            assert_eq!(f.events, [ConnEvent::PingSent]);
            f.events.clear();
            assert_eq!(refiled, Refiled::Inserted);
            let pong_deadline = f.conn.poll_timeout(&f.cfg).unwrap() - f.t0;
            assert_eq!(pong_deadline, sent + secs(4));
            assert_eq!(
                f.filed_at(),
                Some(slot + secs(4)),
                "filed under the next Ping's slot, before the Pong deadline"
            );
            f.pong(f.t0 + sent + ms(1), seq);
            assert!(matches!(f.events[..], [ConnEvent::Pong(_)]));
            f.events.clear();
            assert_eq!(f.refile(), Refiled::Unchanged, "the Pong moves nothing");
        }
    }

    #[test]
    fn a_pong_later_than_the_next_slot_still_gets_its_exact_deadline() {
        let cfg = ConnConfig {
            keepalive: KeepaliveConfig {
                ping_interval: Some(secs(4)),
                ping_timeout: Some(secs(4)),
                ..KeepaliveConfig::default()
            },
            ..ConnConfig::default()
        };
        let mut f = Filed::open(cfg, 0.0); // first Ping due at 4 s, on the grid
        f.refile();
        let (sent, _) = f.fire_late(ms(3));
        assert_eq!(sent, ms(4_003));
        f.events.clear();
        assert_eq!(f.filed_at(), Some(secs(8)), "the next Ping's slot");
        // No Pong: the slot fires early for the connection, which does nothing, and the
        // entry moves to the exact Pong deadline (8.003 s, one tick up: 8.01 s).
        let (at, refiled) = f.fire_late(ms(2));
        assert_eq!(at, ms(8_002));
        assert_eq!(f.events, [], "no second Ping while one is awaited");
        assert_eq!(refiled, Refiled::Inserted);
        assert_eq!(f.filed_at(), Some(ms(8_010)));
        // Still no Pong: 1011 at the Pong deadline.
        let (at, _) = f.fire();
        assert_eq!(at, ms(8_010));
        assert_eq!(f.events, [ConnEvent::Closed(CloseReason::PingTimeout)]);
    }

    #[test]
    fn a_shorter_timeout_is_filed_at_the_pong_deadline() {
        // 20 s interval, 5 s timeout: the Pong deadline comes first and is filed exactly.
        let cfg = ConnConfig {
            keepalive: KeepaliveConfig {
                ping_interval: Some(secs(20)),
                ping_timeout: Some(secs(5)),
                ..KeepaliveConfig::default()
            },
            ..ConnConfig::default()
        };
        let mut f = Filed::open(cfg, 0.0);
        f.refile();
        let (sent, _) = f.fire_late(ms(3));
        f.events.clear();
        assert_eq!(f.filed_at(), Some(sent + secs(5) + ms(7)), "one tick up");
        f.pong(f.t0 + sent + ms(1), 1);
        f.events.clear();
        assert_eq!(f.refile(), Refiled::Moved, "later, to the next Ping's slot");
        assert_eq!(f.filed_at(), Some(secs(40)));
    }
}
