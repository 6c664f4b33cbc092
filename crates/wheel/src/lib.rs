//! A hashed timer wheel (Varghese & Lauck, 1987) with an explicit clock: O(1) insert,
//! cancel and reset, an O(1) poll timeout, and no allocation in steady state.
//!
//! pingwheel keeps every deadline of every connection on a worker (handshake, ping,
//! pong, close) in one [`Wheel`]. Almost every operation is "move this connection's
//! deadline later", so that is the operation this wheel makes cheapest: it writes the
//! new deadline into the timer and touches no list.
//!
//! Time is a parameter. The wheel never reads a clock, starts no thread and does no IO:
//! the caller passes [`Tick`]s (the gateway maps `Instant`s to ticks of a configurable
//! length, rounding deadlines *up*) and calls [`Wheel::advance`] when
//! [`Wheel::next_expiry`] says so.
//!
//! ```
//! use wheel::{Tick, Wheel};
//!
//! let mut wheel = Wheel::with_capacity(Tick(0), 16);
//! let ping = wheel.insert(Tick(2_000), "ping conn 7");
//! assert!(wheel.reset(ping, Tick(2_500))); // a pong came in: move it later
//! assert_eq!(wheel.next_expiry(), Some(Tick(2_500)));
//!
//! let mut fired = Vec::new();
//! assert_eq!(wheel.advance(Tick(2_499), 64, |_, v| fired.push(v)), 0); // never early
//! assert_eq!(wheel.advance(Tick(2_500), 64, |_, v| fired.push(v)), 1);
//! assert_eq!(fired, ["ping conn 7"]);
//! assert_eq!(wheel.cancel(ping), None); // the key went stale when it fired
//! assert_eq!(wheel.next_expiry(), None);
//! ```
//!
//! # Structure
//!
//! ```text
//!  now ─┐ (Wheel::now: every deadline <= now has fired)
//!       ▼
//!  near ring  │1│2│3│ … │4096│   one slot per tick for now+1 ..= now+4096 (slot = tick mod 4096),
//!             └─┴─┴─┴───┴────┘   plus a due count per slot and two 4096-bit occupancy maps
//!  far ring   │ 64 │ 64 │ … │ 64 │   1024 slots, one per 64-tick block (slot = block mod 1024),
//!             └────┴────┴───┴────┘   the next 65 536 ticks; a block moves to the near ring at its first tick
//!  overflow   ─▶ ─▶ ─▶   one list for anything later, rescanned at most every 32 768 ticks
//!  overdue    ─▶ ─▶      deadlines <= now (inserted late or left by a spent budget): fired first
//!
//!  arena      Vec<Entry>:  deadline u64 | value T | next u32 | prev u32 | generation u32 | place
//!             = 32 bytes for an 8-byte T. Lists are intrusive and doubly linked through
//!             next/prev; freed entries form a free list through the same memory.
//! ```
//!
//! Every live timer is on exactly one list. A timer in the near ring sits in the slot of
//! some tick `t` with `now < t <= deadline`: usually `t == deadline`, but when it is
//! moved later it stays put (*lazy re-filing*), and when `advance` reaches `t` it finds
//! the timer not yet due and files it again under its real deadline. The due counts are
//! kept by real deadline, so the slot of the earliest deadline is known exactly without
//! walking any list; the occupancy map says which slots `advance` must visit.
//!
//! ## Invariants
//!
//! Stated on the fields in `wheel.rs`, checked with `debug_assert!` where they are
//! relied on, and all checked by [`Wheel::check_invariants`]:
//!
//! 1. A near timer is filed at a tick `t` with `now < t <= deadline`, and counted once,
//!    at `deadline mod 4096`. It was filed with `deadline <= now + 4096`; a `reset` may
//!    have moved it further out since, and then its count stands for an earlier tick
//!    (which makes `next_expiry` early, never late) until `advance` re-files it.
//! 2. A far timer is filed under a block `b` that has not been drained yet
//!    (`b * 64 > now`) with `b * 64 <= deadline`; the live blocks lie within 1024
//!    consecutive blocks, so slots never collide.
//! 3. Every overflow deadline is at least `overflow_min`, and the next rescan comes
//!    after `now` and no later than the first tick of that deadline's block, so the
//!    timer moves to the far ring before its block is drained.
//! 4. An overdue timer has `deadline <= now`.
//! 5. Each bitmap bit is set exactly when its list is non-empty (or its count is
//!    non-zero), and the summary words agree with the bitmaps.
//! 6. Every vacant arena entry is on the free list, except retired ones (see *Keys*).
//!
//! Together, 1–3 say that a timer's slot always comes up no later than its deadline,
//! which is why nothing fires late; 1 says that nothing is filed at a tick before its
//! deadline is due to fire, which is why nothing fires early.
//!
//! # Costs
//!
//! | operation | cost | memory touched |
//! |---|---|---|
//! | [`insert`](Wheel::insert) | O(1) | one arena entry (free list or end), the old head of its list |
//! | [`cancel`](Wheel::cancel) | O(1) | the entry and its two list neighbours |
//! | [`reset`](Wheel::reset) later | O(1) | the entry and two due counters (no list change) |
//! | [`reset`](Wheel::reset) earlier | O(1) | as cancel + insert |
//! | [`next_expiry`](Wheel::next_expiry) | O(1) | three two-level bitmap searches |
//! | [`advance`](Wheel::advance) | O(1) per call + O(1) per timer fired or re-filed | the lists of the ticks passed |
//! | [`deadline`](Wheel::deadline), [`len`](Wheel::len) | O(1) | |
//!
//! Extra work from lazy re-filing is bounded: a timer moved later any number of times
//! between two visits of its slot is re-filed once, when its old slot comes up, so
//! there is at most one re-filing per `reset` call, and at most one per timer per slot
//! visit. Far timers are moved into the near ring once per 64-tick block (each timer
//! once, unless it was moved later again); overflow timers are looked at once per
//! rescan, and rescans are at least 32 768 ticks apart. These moves are not counted
//! against the `advance` budget, which bounds firings: one call moves at most one far
//! block per 64 ticks it passes, plus the overflow list once per rescan.
//!
//! A call that finds nothing to do (no slot, block or rescan due up to `now`) is O(1)
//! whatever the number of timers, and so is one that passes any number of empty ticks:
//! it jumps from one occupied slot to the next through the occupancy maps.
//!
//! ## Why this shape
//!
//! *A single ring with a rounds counter* (Varghese & Lauck's scheme 6) keeps far timers
//! in the ring and skips them on every rotation; a jump of the clock over many rotations
//! then costs one visit per timer per rotation, and its slots cannot tell "due" from
//! "due in a later round", so an O(1) exact poll timeout is lost. *A hierarchy of
//! aligned levels* (tokio's wheel: 6 levels of 64 slots) bounds work per timer by the
//! level count, but at each level boundary the whole next slot cascades at once; with
//! 20 s keepalives on 10 ms ticks that is most of the timers of a worker in one call,
//! and its poll timeout is the start of a level slot, not a deadline. Here the ring that
//! holds the common deadlines (up to 4096 ticks: 41 s at 10 ms, 6.8 min at 100 ms)
//! slides one tick at a time, so no boundary exists; farther timers come in 64 ticks at
//! a time; only timers more than 65 536 ticks out (11 min at 10 ms) pay a per-rescan
//! visit, bounded as above.
//!
//! # Guarantees
//!
//! * **Never early.** A timer fires in a call `advance(now, ..)` only if its deadline is
//!   `<= now`.
//! * **At most one tick late.** A timer fires in the first `advance` whose `now` reaches
//!   its deadline (a later call only if that one ran out of budget), and
//!   [`next_expiry`](Wheel::next_expiry) is never later than the earliest deadline. So a
//!   caller that rounds deadlines up to whole ticks and calls `advance` when
//!   `next_expiry` comes due runs each timer within one tick after its real deadline,
//!   plus however late the caller itself wakes up.
//! * **Order.** Overdue timers first, then tick by tick; within a tick the order is
//!   unspecified (it is currently last-filed-first).
//! * **Past deadlines** (at or before [`Wheel::now`]) fire on the next `advance`, even
//!   one that does not move the clock.
//! * **Budget.** `advance` fires at most `budget` timers; leftovers stay due
//!   (`next_expiry() <= now`) and fire first on the next call.
//! * **No allocation in steady state.** Only `insert` allocates, and only when the arena
//!   is full; freed entries are reused.
//!
//! # Keys
//!
//! A [`TimerKey`] is an arena index plus the generation of the timer stored there. Each
//! free of a slot bumps its generation, so the key of a fired or cancelled timer is
//! *stale*: every method reports that (`None` / `false`) instead of touching whatever
//! timer uses the slot now. After 2³² timers in one slot its generation would wrap and a
//! very old key could alias, so a slot whose generation reaches `u32::MAX` is *retired*
//! instead: it is never reused, at a cost of one arena entry per 2³² timers that went
//! through it.
//!
//! # Memory
//!
//! 32 bytes per arena entry for an 8-byte `T` (such as pingwheel's `ConnId`), a free
//! entry counting the same, aligned so that an entry never straddles two cache lines;
//! plus a fixed 37 KiB per wheel: 5 122 list heads (4 bytes each, on the heap), 4 096
//! due counters (4 bytes each) and three bitmaps (1.2 KiB), the last two inline in the
//! `Wheel` value. The arena only grows; size it with [`Wheel::with_capacity`].
//!
//! # The end of time
//!
//! Ticks are `u64` and all tick arithmetic saturates. `Tick(u64::MAX)` is a valid
//! deadline and fires on `advance(Tick(u64::MAX), ..)`. Once the clock reads
//! `u64::MAX`, every timer inserted is overdue and fires on the next `advance`.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod bits;
mod wheel;

#[cfg(test)]
mod tests;

pub use crate::wheel::{FAR_TICKS, MAX_TIMERS, NEAR_TICKS, Wheel};

/// A point on a wheel's clock, in ticks of whatever length the caller chose.
///
/// The wheel only compares and subtracts ticks; mapping `Instant`s to ticks (and
/// rounding deadlines up so nothing fires early) is the caller's job.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(pub u64);

impl From<u64> for Tick {
    fn from(tick: u64) -> Self {
        Tick(tick)
    }
}

impl From<Tick> for u64 {
    fn from(tick: Tick) -> Self {
        tick.0
    }
}

/// Names one live timer in one [`Wheel`].
///
/// Once the timer fires or is cancelled the key is *stale*: every method reports that
/// (`None` / `false`) instead of touching a newer timer, even one reusing the same
/// arena slot. A key is meaningless for any other wheel.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    /// Arena slot.
    index: u32,
    /// Generation of the timer that held the slot when the key was made.
    generation: u32,
}
