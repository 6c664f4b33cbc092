//! The wheel itself: arena, slot lists, filing rules and the expiry walk.
//!
//! The crate docs describe the structure and its costs; this file states each invariant
//! next to the field that keeps it and checks it with `debug_assert!` where it is relied
//! on. [`Wheel::check_invariants`] checks all of them at once.

use std::fmt;
use std::mem;

use crate::bits::Bits;
use crate::{Tick, TimerKey};

/// Ticks covered by the near ring: one slot per tick.
///
/// A timer given a deadline at most `NEAR_TICKS` ticks after [`Wheel::now`] (by
/// `insert`, or by a `reset` that moves it earlier) is filed in the near ring, where
/// [`Wheel::next_expiry`] sees its deadline exactly. A `reset` that moves a timer later
/// leaves it where it is filed.
pub const NEAR_TICKS: u64 = 1 << NEAR_BITS;
const NEAR_BITS: u32 = 12;
const NEAR_MASK: u64 = NEAR_TICKS - 1;

/// Ticks per far-ring block: the far ring files timers by `deadline / 64`.
const BLOCK_BITS: u32 = 6;
const BLOCK_TICKS: u64 = 1 << BLOCK_BITS;

/// Ticks covered by the far ring (1024 blocks of 64 ticks); timers beyond it wait in
/// the overflow list.
pub const FAR_TICKS: u64 = FAR_SLOTS << BLOCK_BITS;
const FAR_SLOTS: u64 = 1 << 10;
const FAR_MASK: u64 = FAR_SLOTS - 1;

/// The overflow list is rescanned at most once per this many ticks (half the far
/// ring), so each far-off timer is visited at most once per `RESCAN_INTERVAL` ticks.
const RESCAN_INTERVAL: u64 = FAR_TICKS / 2;

/// Most live timers one wheel can hold (2³¹): arena indices must leave the top bit of a
/// list link free to mark list heads.
pub const MAX_TIMERS: usize = HEAD_FLAG as usize;

// List heads, all in one array: near slot `s` is head `s`, far slot `f` is head
// `FAR_HEAD0 + f`, then the overflow list, then the overdue list.
const FAR_HEAD0: usize = NEAR_TICKS as usize;
const OVERFLOW_HEAD: usize = FAR_HEAD0 + FAR_SLOTS as usize;
const OVERDUE_HEAD: usize = OVERFLOW_HEAD + 1;
const HEADS: usize = OVERDUE_HEAD + 1;

/// "No entry": ends a list, or an empty list head, or the end of the free list.
const NIL: u32 = u32::MAX;
/// In `Timer::prev`, marks the first entry of a list: the low bits are the head id.
const HEAD_FLAG: u32 = 1 << 31;

const _: () = {
    // Far blocks must be shorter than the near window: a drained block must fit in
    // it, and a far timer's block always starts after the current one.
    assert!(NEAR_TICKS >= 2 * BLOCK_TICKS);
    assert!(HEADS < HEAD_FLAG as usize);
};

/// Where a live timer is filed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Place {
    /// In near slot `t % NEAR_TICKS` for some tick `t` with `now < t <= deadline`, and
    /// counted in `near_counts[deadline % NEAR_TICKS]`. Filed only with `deadline <= now
    /// + NEAR_TICKS`; a later `reset` may move the deadline further out, and then its
    /// count stands for an earlier tick of the window (`next_expiry` is early for it,
    /// never late) until `advance` reaches its slot and re-files it.
    Near,
    /// In the far slot of block `b` with `b * 64 <= deadline`, not yet drained.
    Far,
    /// In the overflow list; `overflow_min <= deadline`.
    Overflow,
    /// In the overdue list: `deadline <= now`, fires first on the next `advance`.
    Overdue,
}

/// A live timer in the arena.
///
/// With `T = u64` this is 8 + 8 + 4 + 4 + 4 + 1 bytes; [`Entry`] packs its tag into the
/// spare bytes, so an arena entry is 32 bytes (checked by a test).
struct Timer<T> {
    /// The caller's deadline. May be later than the slot the timer is filed in (a lazy
    /// "move later"), never earlier.
    deadline: u64,
    value: T,
    /// Next entry in the same list, or `NIL`.
    next: u32,
    /// Previous entry in the same list, or `HEAD_FLAG | head id` for the first entry.
    prev: u32,
    /// Must equal the key's generation for the key to be live.
    generation: u32,
    place: Place,
}

/// Keeps a 32-byte [`Entry`] inside one cache line: large allocations start 16 bytes
/// into a line, so with its natural 8-byte alignment every other entry would straddle
/// two lines and cost two cache misses instead of one.
#[repr(align(32))]
struct Aligned<E>(E);

/// An arena slot.
enum Entry<T> {
    Occupied(Timer<T>),
    /// Free. `generation` is the generation the next timer here gets. `next_free`
    /// links the free list; a *retired* slot (generation exhausted) is on no list.
    Vacant {
        generation: u32,
        next_free: u32,
    },
}

/// A hashed timer wheel holding values of type `T`, driven by an explicit clock.
///
/// See the [crate docs](crate) for the structure, costs and guarantees.
pub struct Wheel<T> {
    /// The arena. Every `Occupied` entry is on exactly one list; every non-retired
    /// `Vacant` entry is on the free list.
    entries: Vec<Aligned<Entry<T>>>,
    /// First free arena slot, or `NIL`.
    free_head: u32,
    /// Number of `Occupied` entries.
    len: usize,
    /// Every timer with a deadline `<= now` has fired, except those on the overdue list.
    /// Only ever increases.
    now: u64,
    /// First entry of each list (see `FAR_HEAD0` and friends), or `NIL`.
    heads: Box<[u32; HEADS]>,
    /// `near_counts[s]` = number of `Near` timers whose deadline is `≡ s (mod
    /// NEAR_TICKS)`. Exactly one tick of the window `now + 1 ..= now + NEAR_TICKS` is in
    /// that class, so the first slot with a non-zero count is the earliest near
    /// deadline (or earlier, for a timer moved beyond the window; see `Place::Near`).
    /// Inline, not boxed: `reset` then reaches it without loading a pointer.
    near_counts: [u32; NEAR_TICKS as usize],
    /// Bit `s` set exactly when near list `s` is non-empty.
    near_filed: Bits<64>,
    /// Bit `s` set exactly when `near_counts[s] > 0`.
    near_due: Bits<64>,
    /// Bit `f` set exactly when far list `f` is non-empty.
    far_filed: Bits<16>,
    /// When the overflow list is non-empty: a lower bound on its deadlines.
    overflow_min: u64,
    /// `now` at the last overflow rescan.
    last_rescan: u64,
    /// When the overflow list is non-empty: the tick at which it is rescanned next.
    /// Always after `now` and at or before the first tick of the block of every
    /// overflow deadline, so no overflow timer misses its far-ring drain.
    rescan_at: u64,
    /// Lazily moved timers re-filed when their old near slot came up (tests only).
    #[cfg(test)]
    pub(crate) lazy_refiles: usize,
}

impl<T> Wheel<T> {
    /// An empty wheel whose clock reads `start`, with room for `capacity` live timers
    /// before the arena grows.
    ///
    /// Besides the arena (`capacity` entries; 32 bytes each for an 8-byte `T`), a wheel
    /// owns a fixed ~37 KiB: 20 KiB of list heads on the heap, and 16 KiB of due counters
    /// and 1.2 KiB of bitmaps inline (so a `Wheel` value is ~17.6 KiB; box it rather than
    /// move it around).
    pub fn with_capacity(start: Tick, capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity.min(MAX_TIMERS)),
            free_head: NIL,
            len: 0,
            now: start.0,
            heads: Box::new([NIL; HEADS]),
            near_counts: [0; NEAR_TICKS as usize],
            near_filed: Bits::new(),
            near_due: Bits::new(),
            far_filed: Bits::new(),
            overflow_min: u64::MAX,
            last_rescan: start.0,
            rescan_at: u64::MAX,
            #[cfg(test)]
            lazy_refiles: 0,
        }
    }

    /// An empty wheel whose clock reads `start`.
    pub fn new(start: Tick) -> Self {
        Self::with_capacity(start, 0)
    }

    /// Adds a timer that fires at `deadline` and returns its key.
    ///
    /// A deadline at or before [`now`](Self::now) fires on the next
    /// [`advance`](Self::advance), whatever its `now`.
    ///
    /// # Panics
    ///
    /// If the arena is full at [`MAX_TIMERS`] entries (2³¹) with none free, or if
    /// growing it fails to allocate.
    pub fn insert(&mut self, deadline: Tick, value: T) -> TimerKey {
        let timer = |generation| Timer {
            deadline: deadline.0,
            value,
            next: NIL,
            prev: NIL,
            generation,
            place: Place::Overdue, // set by `file`
        };
        let (index, generation) = if self.free_head != NIL {
            let index = self.free_head;
            let slot = &mut self.entries[index as usize].0;
            let Entry::Vacant {
                generation,
                next_free,
            } = *slot
            else {
                unreachable!("free list entry {index} is occupied");
            };
            self.free_head = next_free;
            *slot = Entry::Occupied(timer(generation));
            (index, generation)
        } else {
            let index = self.entries.len();
            assert!(
                index < MAX_TIMERS,
                "a wheel holds at most {MAX_TIMERS} timers"
            );
            self.entries.push(Aligned(Entry::Occupied(timer(0))));
            (index as u32, 0)
        };
        self.len += 1;
        self.file(index);
        TimerKey { index, generation }
    }

    /// Moves a live timer to `deadline`; returns `false` (and does nothing) for a stale
    /// key.
    ///
    /// Moving a timer later is the cheap case, and the common one (a keepalive): the
    /// timer stays where it is filed and only its deadline and two due counters change;
    /// it is re-filed once, when its old slot comes up, however often it moved. Moving
    /// it earlier re-files it at once. Both are O(1).
    #[inline]
    pub fn reset(&mut self, key: TimerKey, deadline: Tick) -> bool {
        let new = deadline.0;
        let Some(Aligned(entry)) = self.entries.get_mut(key.index as usize) else {
            return false;
        };
        // The hot path, kept small so it inlines and back-to-back calls overlap their
        // cache misses: a near timer moved later. The slot it is filed in stays at or
        // before its deadline; only its due count moves (see `Place::Near`).
        if let Entry::Occupied(timer) = entry
            && timer.place == Place::Near
            && timer.generation == key.generation
            && timer.deadline <= new
        {
            let old = mem::replace(&mut timer.deadline, new);
            self.uncount(old);
            self.count(new);
            return true;
        }
        self.reset_other(key, new)
    }

    /// `reset` off the hot path: stale keys, and every case but "near, later".
    #[inline(never)]
    fn reset_other(&mut self, key: TimerKey, new: u64) -> bool {
        if self.live(key).is_none() {
            return false;
        }
        let now = self.now;
        let timer = self.timer_mut(key.index);
        let stays = match timer.place {
            Place::Near => false, // moved earlier (later is the hot path)
            // Still at or after the block / overflow lower bound it is filed under.
            Place::Far | Place::Overflow => new >= timer.deadline,
            Place::Overdue => new <= now,
        };
        if stays {
            timer.deadline = new;
        } else {
            self.unlink(key.index);
            self.timer_mut(key.index).deadline = new;
            self.file(key.index);
        }
        true
    }

    /// Removes a live timer and returns its value; `None` for a stale key (a timer
    /// that already fired or was cancelled).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        self.live(key)?;
        self.unlink(key.index);
        Some(self.release(key.index).1)
    }

    /// The deadline of a live timer, `None` for a stale key.
    pub fn deadline(&self, key: TimerKey) -> Option<Tick> {
        self.live(key).map(|timer| Tick(timer.deadline))
    }

    /// The value of a live timer, `None` for a stale key.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.live(key).map(|timer| &timer.value)
    }

    /// Whether `key` names a live timer.
    pub fn contains(&self, key: TimerKey) -> bool {
        self.live(key).is_some()
    }

    /// Number of live timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of timers the arena holds before it has to grow.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Makes room for at least `additional` more arena entries.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
    }

    /// The wheel's clock: every timer with a deadline at or before it has fired, except
    /// ones inserted or moved there since (they fire on the next `advance`).
    ///
    /// It is the largest `now` passed to [`advance`](Self::advance) (or the start),
    /// except after a call that ran out of budget: then it is the last tick that call
    /// finished.
    pub fn now(&self) -> Tick {
        Tick(self.now)
    }

    /// Drops every timer, making all keys stale. Keeps the clock and the arena's
    /// capacity. O(capacity).
    pub fn clear(&mut self) {
        for index in 0..self.entries.len() {
            if matches!(self.entries[index].0, Entry::Occupied(_)) {
                self.release(index as u32);
            }
        }
        self.heads.fill(NIL);
        self.near_counts.fill(0);
        self.near_filed.clear_all();
        self.near_due.clear_all();
        self.far_filed.clear_all();
        self.overflow_min = u64::MAX;
        self.rescan_at = u64::MAX;
        debug_assert_eq!(self.len, 0);
    }

    /// The earliest tick at which [`advance`](Self::advance) has work; `None` when the
    /// wheel is empty. O(1): it is meant to be the event loop's poll timeout.
    ///
    /// * A timer that is already due (overdue, or left over by a call that ran out of
    ///   budget) makes this at most the `now` of the last `advance`.
    /// * Otherwise it is exactly the earliest deadline, as long as no live timer has
    ///   been given a deadline more than [`NEAR_TICKS`] after [`now`](Self::now) at the
    ///   time (by `insert` or `reset`).
    /// * Such far-off timers make it a lower bound instead: the first tick of the
    ///   64-tick block holding the earliest of them (where `advance` moves the block
    ///   into the near ring), the next overflow rescan, or, for a near timer moved more
    ///   than [`NEAR_TICKS`] ahead, the tick of the window congruent to its deadline
    ///   (at most twice, until `advance` reaches its old slot and re-files it). An
    ///   `advance` at such a tick may fire nothing; the answer after it is closer to
    ///   the deadline.
    ///
    /// It is never later than the earliest deadline.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Tick> {
        if self.heads[OVERDUE_HEAD] != NIL {
            return Some(Tick(self.now));
        }
        let mut next = self.far_and_overflow_event();
        if let Some(slot) = self.next_near(&self.near_due) {
            next = Some(next.map_or(slot, |far| far.min(slot)));
        }
        debug_assert_eq!(
            next.is_some(),
            self.len > 0,
            "next_expiry {next:?} with {} timers",
            self.len
        );
        next.map(Tick)
    }

    /// Moves the clock to `now` and hands every timer due by then to `fire`, at most
    /// `budget` of them. Returns how many fired; when that equals `budget`, timers may
    /// be left over: they stay due ([`next_expiry`](Self::next_expiry) `<= now`) and
    /// fire on the next call.
    ///
    /// Order: overdue timers first (in no particular order), then by deadline tick;
    /// timers due at the same tick fire in no particular order.
    ///
    /// A `now` at or before [`now()`](Self::now) only fires overdue timers. A budget
    /// of 0 does nothing.
    ///
    /// Cost: O(1) per call plus O(1) per timer fired or re-filed (a lazily moved timer
    /// whose old slot came up, a far block moved into the near ring, an overflow
    /// rescan). Nothing allocates.
    pub fn advance(
        &mut self,
        now: Tick,
        budget: usize,
        mut fire: impl FnMut(TimerKey, T),
    ) -> usize {
        let now = now.0;
        let mut fired = 0;
        while fired < budget {
            let index = self.heads[OVERDUE_HEAD];
            if index == NIL {
                break;
            }
            self.unlink(index);
            let (key, value) = self.release(index);
            fire(key, value);
            fired += 1;
        }
        while fired < budget && self.now < now {
            let tick = match self.next_event() {
                Some(tick) if tick <= now => tick,
                _ => {
                    // Nothing is filed for any tick up to `now`.
                    self.now = now;
                    break;
                }
            };
            debug_assert!(tick > self.now, "event {tick} not after now {}", self.now);
            // Nothing happens strictly between `now` and `tick`, so the clock may jump
            // to just before it; it reaches `tick` once all of `tick`'s work is done.
            self.now = tick - 1;
            if self.heads[OVERFLOW_HEAD] != NIL && self.rescan_at == tick {
                self.rescan_overflow();
            }
            if tick % BLOCK_TICKS == 0 {
                self.drain_far_block(tick >> BLOCK_BITS);
            }
            let slot = (tick & NEAR_MASK) as usize;
            loop {
                let index = self.heads[slot];
                if index == NIL {
                    break;
                }
                if fired == budget {
                    return fired; // `now` stays `tick - 1`: the rest of `tick` is due
                }
                self.unlink(index);
                let deadline = self.timer(index).deadline;
                if deadline == tick {
                    let (key, value) = self.release(index);
                    fire(key, value);
                    fired += 1;
                } else {
                    // Moved later while filed here: file it under its real deadline.
                    debug_assert!(
                        deadline > tick,
                        "near timer {index} deadline {deadline} < its slot {tick}"
                    );
                    #[cfg(test)]
                    {
                        self.lazy_refiles += 1;
                    }
                    self.file(index);
                }
            }
            self.now = tick;
        }
        fired
    }

    /// Checks every structural invariant, panicking with the state on the first
    /// violation. O(capacity + slots); for tests.
    pub fn check_invariants(&self) {
        self.near_filed.check();
        self.near_due.check();
        self.far_filed.check();
        let now = self.now;

        // Free list: vacant entries, no cycles.
        let mut on_free_list = vec![false; self.entries.len()];
        let mut free = 0usize;
        let mut index = self.free_head;
        while index != NIL {
            let i = index as usize;
            assert!(
                i < self.entries.len(),
                "free list points past the arena: {i}"
            );
            assert!(!on_free_list[i], "free list cycles at {i}");
            on_free_list[i] = true;
            let Entry::Vacant { next_free, .. } = self.entries[i].0 else {
                panic!("occupied entry {i} on the free list");
            };
            free += 1;
            index = next_free;
        }

        // Every list: consistent links, entries filed where their place says.
        let mut seen = vec![false; self.entries.len()];
        let mut counts = vec![0u32; NEAR_TICKS as usize];
        let mut listed = 0usize;
        let first_live_block = now / BLOCK_TICKS + 1;
        for head in 0..HEADS {
            let mut prev = HEAD_FLAG | head as u32;
            let mut index = self.heads[head];
            match head {
                s if s < FAR_HEAD0 => {
                    assert_eq!(
                        self.near_filed.contains(s),
                        index != NIL,
                        "near_filed bit {s}"
                    )
                }
                f if f < OVERFLOW_HEAD => {
                    let f = f - FAR_HEAD0;
                    assert_eq!(
                        self.far_filed.contains(f),
                        index != NIL,
                        "far_filed bit {f}"
                    )
                }
                _ => {}
            }
            while index != NIL {
                let i = index as usize;
                assert!(
                    i < self.entries.len(),
                    "list {head} points past the arena: {i}"
                );
                assert!(!seen[i], "entry {i} is on two lists or a list cycles");
                seen[i] = true;
                listed += 1;
                let Entry::Occupied(timer) = &self.entries[i].0 else {
                    panic!("vacant entry {i} on list {head}");
                };
                assert_eq!(timer.prev, prev, "entry {i} on list {head}: bad prev link");
                let d = timer.deadline;
                match head {
                    s if s < FAR_HEAD0 => {
                        assert_eq!(timer.place, Place::Near, "entry {i} in near slot {s}");
                        // The tick this slot stands for in the window now+1 ..= now+N.
                        let slot_tick = now + 1 + ((s as u64).wrapping_sub(now + 1) & NEAR_MASK);
                        assert!(
                            now < slot_tick && slot_tick <= d,
                            "near entry {i}: slot tick {slot_tick}, deadline {d}, now {now}"
                        );
                        counts[(d & NEAR_MASK) as usize] += 1;
                    }
                    f if f < OVERFLOW_HEAD => {
                        assert_eq!(
                            timer.place,
                            Place::Far,
                            "entry {i} in far slot {}",
                            f - FAR_HEAD0
                        );
                        let f = (f - FAR_HEAD0) as u64;
                        let block =
                            first_live_block + (f.wrapping_sub(first_live_block) & FAR_MASK);
                        assert!(
                            block << BLOCK_BITS <= d,
                            "far entry {i}: block {block} starts after deadline {d}; now {now}"
                        );
                    }
                    OVERFLOW_HEAD => {
                        assert_eq!(timer.place, Place::Overflow, "entry {i} in overflow");
                        assert!(
                            self.overflow_min <= d,
                            "overflow entry {i}: {d} < min {}",
                            self.overflow_min
                        );
                        assert!(
                            self.rescan_at > now
                                && self.rescan_at <= (d >> BLOCK_BITS) << BLOCK_BITS,
                            "overflow entry {i}: deadline {d}, rescan_at {}, now {now}",
                            self.rescan_at
                        );
                    }
                    _ => {
                        assert_eq!(timer.place, Place::Overdue, "entry {i} in overdue list");
                        assert!(d <= now, "overdue entry {i}: deadline {d} > now {now}");
                    }
                }
                prev = index;
                index = timer.next;
            }
        }
        assert_eq!(
            listed, self.len,
            "len {} but {listed} timers on lists",
            self.len
        );
        for (s, (&count, &expected)) in self.near_counts.iter().zip(&counts).enumerate() {
            assert_eq!(count, expected, "near_counts[{s}]");
            assert_eq!(self.near_due.contains(s), count > 0, "near_due bit {s}");
        }
        // Retired slots are the only vacant entries off the free list.
        let mut retired = 0usize;
        for (i, entry) in self.entries.iter().enumerate() {
            if let Entry::Vacant { generation, .. } = &entry.0
                && !on_free_list[i]
            {
                assert_eq!(
                    *generation,
                    u32::MAX,
                    "vacant entry {i} is lost (not on the free list)"
                );
                retired += 1;
            }
        }
        assert_eq!(
            self.len + free + retired,
            self.entries.len(),
            "arena accounting"
        );
    }

    // ---- internals ---------------------------------------------------------------

    #[inline]
    fn live(&self, key: TimerKey) -> Option<&Timer<T>> {
        match self.entries.get(key.index as usize) {
            Some(Aligned(Entry::Occupied(timer))) if timer.generation == key.generation => {
                Some(timer)
            }
            _ => None,
        }
    }

    #[inline]
    fn timer(&self, index: u32) -> &Timer<T> {
        match &self.entries[index as usize].0 {
            Entry::Occupied(timer) => timer,
            Entry::Vacant { .. } => unreachable!("linked entry {index} is vacant"),
        }
    }

    #[inline]
    fn timer_mut(&mut self, index: u32) -> &mut Timer<T> {
        match &mut self.entries[index as usize].0 {
            Entry::Occupied(timer) => timer,
            Entry::Vacant { .. } => unreachable!("linked entry {index} is vacant"),
        }
    }

    /// Counts a near timer due at `deadline`.
    #[inline]
    fn count(&mut self, deadline: u64) {
        let slot = (deadline & NEAR_MASK) as usize;
        let count = &mut self.near_counts[slot];
        *count += 1;
        if *count == 1 {
            self.near_due.set(slot);
        }
    }

    /// Reverses [`count`](Self::count).
    #[inline]
    fn uncount(&mut self, deadline: u64) {
        let slot = (deadline & NEAR_MASK) as usize;
        let count = &mut self.near_counts[slot];
        debug_assert!(
            *count > 0,
            "uncounting deadline {deadline} in an empty near slot"
        );
        *count -= 1;
        if *count == 0 {
            self.near_due.clear(slot);
        }
    }

    /// Files an unlinked entry under its deadline, relative to `self.now`.
    fn file(&mut self, index: u32) {
        let deadline = self.timer(index).deadline;
        let now = self.now;
        let (place, head) = if deadline <= now {
            (Place::Overdue, OVERDUE_HEAD)
        } else if deadline <= now.saturating_add(NEAR_TICKS) {
            self.count(deadline);
            (Place::Near, (deadline & NEAR_MASK) as usize)
        } else {
            // `now + NEAR_TICKS < deadline`, so the block starts after `now`'s block.
            let block = deadline >> BLOCK_BITS;
            let first_live_block = now / BLOCK_TICKS + 1;
            debug_assert!(
                block >= first_live_block,
                "far deadline {deadline} in a past block; now {now}"
            );
            if block - first_live_block < FAR_SLOTS {
                (Place::Far, FAR_HEAD0 + (block & FAR_MASK) as usize)
            } else {
                if self.heads[OVERFLOW_HEAD] == NIL || deadline < self.overflow_min {
                    self.overflow_min = deadline;
                }
                // The first tick at which the earliest overflow block fits in the far
                // ring (`block - first_live_block < FAR_SLOTS` with `now = tick - 1`).
                let accept_tick = ((self.overflow_min >> BLOCK_BITS) - FAR_SLOTS + 1) << BLOCK_BITS;
                self.rescan_at = accept_tick.max(self.last_rescan.saturating_add(RESCAN_INTERVAL));
                debug_assert!(self.rescan_at > now && self.rescan_at <= block << BLOCK_BITS);
                (Place::Overflow, OVERFLOW_HEAD)
            }
        };
        self.timer_mut(index).place = place;
        self.link(index, head);
    }

    /// Pushes an unlinked entry onto the front of list `head`.
    #[inline]
    fn link(&mut self, index: u32, head: usize) {
        let first = self.heads[head];
        let timer = self.timer_mut(index);
        timer.next = first;
        timer.prev = HEAD_FLAG | head as u32;
        if first == NIL {
            match head {
                s if s < FAR_HEAD0 => self.near_filed.set(s),
                f if f < OVERFLOW_HEAD => self.far_filed.set(f - FAR_HEAD0),
                _ => {}
            }
        } else {
            self.timer_mut(first).prev = index;
        }
        self.heads[head] = index;
    }

    /// Takes a live entry off its list (and out of the near counts).
    #[inline]
    fn unlink(&mut self, index: u32) {
        let timer = self.timer(index);
        let (prev, next, place, deadline) = (timer.prev, timer.next, timer.place, timer.deadline);
        if prev & HEAD_FLAG != 0 {
            let head = (prev & !HEAD_FLAG) as usize;
            debug_assert_eq!(
                self.heads[head], index,
                "entry {index} claims to head list {head}"
            );
            self.heads[head] = next;
            if next == NIL {
                match head {
                    s if s < FAR_HEAD0 => self.near_filed.clear(s),
                    f if f < OVERFLOW_HEAD => self.far_filed.clear(f - FAR_HEAD0),
                    _ => {}
                }
            }
        } else {
            self.timer_mut(prev).next = next;
        }
        if next != NIL {
            self.timer_mut(next).prev = prev;
        }
        if place == Place::Near {
            self.uncount(deadline);
        }
    }

    /// Frees an unlinked entry and returns its key and value. A slot whose generation
    /// is exhausted is retired instead of reused, so a stale key never aliases.
    fn release(&mut self, index: u32) -> (TimerKey, T) {
        let generation = self.timer(index).generation;
        let vacant = if generation == u32::MAX {
            Entry::Vacant {
                generation,
                next_free: NIL,
            }
        } else {
            Entry::Vacant {
                generation: generation + 1,
                next_free: mem::replace(&mut self.free_head, index),
            }
        };
        let Entry::Occupied(timer) = mem::replace(&mut self.entries[index as usize].0, vacant)
        else {
            unreachable!("releasing vacant entry {index}");
        };
        self.len -= 1;
        (TimerKey { index, generation }, timer.value)
    }

    /// The first tick after `now` whose bit is set in `bits` (a near-ring bitmap).
    #[inline]
    fn next_near(&self, bits: &Bits<64>) -> Option<u64> {
        let from = self.now.checked_add(1)?;
        let slot = bits.next_from((from & NEAR_MASK) as usize)? as u64;
        Some(from + (slot.wrapping_sub(from) & NEAR_MASK))
    }

    /// The earliest far-block drain or overflow rescan, if any.
    #[inline]
    fn far_and_overflow_event(&self) -> Option<u64> {
        let mut next = None;
        if !self.far_filed.is_empty() {
            let first_live_block = self.now / BLOCK_TICKS + 1;
            if let Some(slot) = self
                .far_filed
                .next_from((first_live_block & FAR_MASK) as usize)
            {
                let block =
                    first_live_block + ((slot as u64).wrapping_sub(first_live_block) & FAR_MASK);
                next = Some(block << BLOCK_BITS);
            }
        }
        if self.heads[OVERFLOW_HEAD] != NIL {
            next = Some(next.map_or(self.rescan_at, |far: u64| far.min(self.rescan_at)));
        }
        next
    }

    /// The next tick at which `advance` has to do something (fire, re-file, drain a far
    /// block or rescan the overflow list), ignoring the overdue list.
    #[inline]
    fn next_event(&self) -> Option<u64> {
        let far = self.far_and_overflow_event();
        match (self.next_near(&self.near_filed), far) {
            (Some(near), Some(far)) => Some(near.min(far)),
            (near, far) => near.or(far),
        }
    }

    /// Moves every timer of far block `block` (whose first tick is `now + 1`) into the
    /// near ring.
    fn drain_far_block(&mut self, block: u64) {
        debug_assert_eq!(
            block << BLOCK_BITS,
            self.now + 1,
            "draining block {block} early or late"
        );
        let slot = (block & FAR_MASK) as usize;
        if !self.far_filed.contains(slot) {
            return;
        }
        let mut index = mem::replace(&mut self.heads[FAR_HEAD0 + slot], NIL);
        self.far_filed.clear(slot);
        while index != NIL {
            let next = self.timer(index).next;
            debug_assert!(
                self.timer(index).deadline > self.now,
                "far timer {index} overdue at drain"
            );
            self.file(index);
            index = next;
        }
    }

    /// Re-files every overflow timer: those now within the far ring's reach move there.
    fn rescan_overflow(&mut self) {
        let mut index = mem::replace(&mut self.heads[OVERFLOW_HEAD], NIL);
        self.last_rescan = self.now;
        self.overflow_min = u64::MAX;
        self.rescan_at = u64::MAX;
        while index != NIL {
            let next = self.timer(index).next;
            self.file(index);
            index = next;
        }
    }

    #[cfg(test)]
    pub(crate) fn set_generation_for_test(&mut self, key: TimerKey, generation: u32) -> TimerKey {
        self.timer_mut(key.index).generation = generation;
        TimerKey {
            index: key.index,
            generation,
        }
    }

    #[cfg(test)]
    pub(crate) const ENTRY_SIZE_U64: usize = mem::size_of::<Aligned<Entry<u64>>>();
}

impl<T> fmt::Debug for Wheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("next_expiry", &self.next_expiry())
            .finish_non_exhaustive()
    }
}

impl<T> Default for Wheel<T> {
    /// An empty wheel starting at tick 0.
    fn default() -> Self {
        Self::new(Tick(0))
    }
}
