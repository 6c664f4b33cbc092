//! Timer-queue benchmarks (issue 3): pingwheel's [`wheel::Wheel`] against tokio-util's
//! `DelayQueue`, a `BinaryHeap` with lazy deletion and a `BTreeMap`, at 1k, 100k, 1M
//! and 10M live timers.
//!
//! ```sh
//! cargo bench -p pingwheel-benches --bench wheel                  # everything, ~7.5 min
//! PINGWHEEL_BENCH_QUICK=1 cargo bench -p pingwheel-benches --bench wheel   # smoke run
//! PINGWHEEL_BENCH_SIZES=1000000 PINGWHEEL_BENCH_IMPLS=wheel,delay_queue \
//!     cargo bench -p pingwheel-benches --bench wheel              # a subset
//! python3 benches/wheel_report.py                                 # markdown tables
//! ```
//!
//! Workloads, each on a fixture of `n` live timers whose deadlines are spread evenly
//! over the next 200 ticks (a tick is 10 ms; time is virtual everywhere, DelayQueue
//! runs on tokio's paused clock):
//!
//! * `insert`: insert a timer 1..2000 ticks ahead (the extra timers are cancelled
//!   outside the measurement, in batches of at most `n / 10`, so the size stays ~`n`).
//! * `cancel`: cancel a random live timer (re-inserted outside the measurement).
//! * `reset`: the keepalive pattern: move a random live timer to ~20 s from now, later
//!   than its current deadline. Every timer is moved once per round, in a fixed random
//!   order; round `r` moves them to `now + 2000 + r`.
//! * `advance_due`: one call that moves the clock one tick and fires the ~`n / 200`
//!   timers due then (they are re-inserted 200 ticks ahead outside the measurement).
//!   The time is per call, not per timer.
//! * `advance_idle`: one call that moves the clock one tick when nothing is due (on a
//!   second fixture whose timers are 2³² or more ticks out). DelayQueue's clock is not
//!   moved here (moving tokio's clock costs far more than the poll); its poll is
//!   measured.
//!
//! Each fixture is built once per (implementation, size) and reused by all its
//! workloads, which is why `iter_custom` is used throughout. A counting global
//! allocator measures the bytes each structure holds per live timer right after the
//! fixture is built (with `with_capacity(n)` where the structure has it, plus the
//! structure's own size); the bench prints that table at the end. Run as a test
//! (`cargo test --benches`: no `--bench` argument) it uses 1k timers only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key as DelayKey;
use wheel::{Tick, TimerKey, Wheel};

// ---- a counting allocator ------------------------------------------------------------

/// Forwards to the system allocator and keeps a running total of live heap bytes.
struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; we only add bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

// ---- settings ------------------------------------------------------------------------

/// Length of a tick in milliseconds, for DelayQueue's `Instant`s.
const TICK_MS: u64 = 10;
/// Fixture deadlines are spread over this many ticks: 1/200 of the timers per tick.
const SPREAD: u64 = 200;
/// The keepalive interval: 20 s.
const KEEPALIVE: u64 = 2_000;
/// Reset rounds before the fixture is moved back (outside the measurement), keeping
/// reset targets within 2000 + 1000 ticks of now.
const MAX_ROUND: u64 = 1_000;
/// Largest batch of extra inserts / cancels between untimed clean-ups.
const MAX_CHUNK: usize = 50_000;

struct Settings {
    sizes: Vec<usize>,
    impls: Option<Vec<String>>,
    warm_up: Duration,
    measurement: Duration,
}

fn settings() -> Settings {
    let quick = std::env::var_os("PINGWHEEL_BENCH_QUICK").is_some_and(|v| v != "0");
    let list = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
    };
    let sizes = match list("PINGWHEEL_BENCH_SIZES") {
        Some(sizes) => sizes
            .iter()
            .map(|s| {
                s.replace('_', "")
                    .parse()
                    .expect("PINGWHEEL_BENCH_SIZES: comma-separated integers")
            })
            .collect(),
        // Without `--bench` (as under `cargo test --benches`) criterion runs each
        // benchmark once, as a smoke test: skip the big fixtures.
        None if !std::env::args().any(|arg| arg == "--bench") => vec![1_000],
        None if quick => vec![1_000, 100_000],
        None => vec![1_000, 100_000, 1_000_000, 10_000_000],
    };
    let (warm_up, measurement) = if quick {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(500), Duration::from_millis(1_500))
    };
    Settings {
        sizes,
        impls: list("PINGWHEEL_BENCH_IMPLS"),
        warm_up,
        measurement,
    }
}

/// SplitMix64: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

// ---- the contenders ------------------------------------------------------------------

/// What every timer queue offers the workloads. Deadlines are ticks; values are the
/// position of the timer's key in the fixture.
trait TimerQueue {
    type Key: Copy;
    const NAME: &'static str;
    /// An empty queue whose clock reads tick 0.
    fn with_capacity(capacity: usize) -> Self;
    fn reserve(&mut self, additional: usize);
    fn insert(&mut self, deadline: u64, value: u64) -> Self::Key;
    fn cancel(&mut self, key: Self::Key) -> bool;
    /// Moves a live timer; the key may change (BTreeMap).
    fn reset(&mut self, key: &mut Self::Key, deadline: u64);
    /// Outside the measurement: moves a clock the queue reads by itself.
    fn set_clock(&mut self, _now: u64) {}
    /// Where the `advance_idle` fixture's timers are: far enough that a measurement
    /// never reaches them (the fastest queue passes ~2·10⁹ ticks in 2 s).
    fn far_away() -> u64 {
        1 << 40
    }
    /// Fires every timer due at `now`, pushing its value onto `fired`.
    fn advance(&mut self, now: u64, fired: &mut Vec<u64>);
    fn len(&self) -> usize;
}

/// pingwheel's wheel, unlimited budget.
struct WheelQueue(Wheel<u64>);

impl TimerQueue for WheelQueue {
    type Key = TimerKey;
    const NAME: &'static str = "wheel";

    fn with_capacity(capacity: usize) -> Self {
        Self(Wheel::with_capacity(Tick(0), capacity))
    }
    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> TimerKey {
        self.0.insert(Tick(deadline), value)
    }
    #[inline]
    fn cancel(&mut self, key: TimerKey) -> bool {
        self.0.cancel(key).is_some()
    }
    #[inline]
    fn reset(&mut self, key: &mut TimerKey, deadline: u64) {
        self.0.reset(*key, Tick(deadline));
    }
    #[inline]
    fn advance(&mut self, now: u64, fired: &mut Vec<u64>) {
        self.0
            .advance(Tick(now), usize::MAX, |_, value| fired.push(value));
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One current-thread runtime with paused time for every DelayQueue.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime")
    })
}

/// tokio-util's DelayQueue on tokio's paused clock, polled with a no-op waker.
struct DelayQueueQueue {
    queue: DelayQueue<u64>,
    start: tokio::time::Instant,
}

impl DelayQueueQueue {
    fn instant(&self, tick: u64) -> tokio::time::Instant {
        self.start + Duration::from_millis(TICK_MS * tick)
    }
}

impl TimerQueue for DelayQueueQueue {
    type Key = DelayKey;
    const NAME: &'static str = "delay_queue";

    fn with_capacity(capacity: usize) -> Self {
        Self {
            queue: DelayQueue::with_capacity(capacity),
            start: tokio::time::Instant::now(),
        }
    }
    fn reserve(&mut self, additional: usize) {
        self.queue.reserve(additional);
    }
    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> DelayKey {
        self.queue.insert_at(value, self.instant(deadline))
    }
    #[inline]
    fn cancel(&mut self, key: DelayKey) -> bool {
        self.queue.try_remove(&key).is_some()
    }
    #[inline]
    fn reset(&mut self, key: &mut DelayKey, deadline: u64) {
        self.queue.reset_at(key, self.instant(deadline));
    }
    /// 2³² ticks, 497 days: DelayQueue takes deadlines up to ~2 years, and its clock
    /// does not move in `advance_idle`.
    fn far_away() -> u64 {
        1 << 32
    }
    fn set_clock(&mut self, now: u64) {
        let target = self.instant(now);
        let current = tokio::time::Instant::now();
        if target > current {
            runtime().block_on(tokio::time::advance(target - current));
        }
    }
    #[inline]
    fn advance(&mut self, _now: u64, fired: &mut Vec<u64>) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(expired)) = self.queue.poll_expired(&mut cx) {
            fired.push(expired.into_inner());
        }
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
}

/// A binary heap of `(deadline, slot, generation)` with lazy deletion: cancel and reset
/// leave the old heap entry behind; pops skip entries that no longer match their slot.
/// The heap is compacted (`retain`, O(n)) when it holds more than twice the live
/// timers, inside whatever operation pushes it over.
struct HeapQueue {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    slots: Vec<HeapSlot>,
    free_head: u32,
    live: usize,
}

struct HeapSlot {
    deadline: u64,
    value: u64,
    generation: u32,
    /// `LIVE`, or the next free slot.
    next_free: u32,
}

const LIVE: u32 = u32::MAX - 1;
const NONE: u32 = u32::MAX;

impl HeapQueue {
    #[inline]
    fn is_current(slots: &[HeapSlot], (deadline, slot, generation): (u64, u32, u32)) -> bool {
        let s = &slots[slot as usize];
        s.next_free == LIVE && s.generation == generation && s.deadline == deadline
    }

    #[inline]
    fn push(&mut self, entry: (u64, u32, u32)) {
        self.heap.push(Reverse(entry));
        if self.heap.len() > 2 * self.live + 1_024 {
            let slots = &self.slots;
            self.heap.retain(|&Reverse(e)| Self::is_current(slots, e));
        }
    }

    #[inline]
    fn free(&mut self, slot: u32) -> u64 {
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        s.next_free = self.free_head;
        self.free_head = slot;
        self.live -= 1;
        s.value
    }
}

impl TimerQueue for HeapQueue {
    type Key = (u32, u32);
    const NAME: &'static str = "binary_heap";

    fn with_capacity(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            free_head: NONE,
            live: 0,
        }
    }
    fn reserve(&mut self, additional: usize) {
        self.heap.reserve(additional);
        self.slots.reserve(additional);
    }
    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> (u32, u32) {
        let slot = if self.free_head != NONE {
            let slot = self.free_head;
            let s = &mut self.slots[slot as usize];
            self.free_head = s.next_free;
            s.next_free = LIVE;
            s.deadline = deadline;
            s.value = value;
            slot
        } else {
            self.slots.push(HeapSlot {
                deadline,
                value,
                generation: 0,
                next_free: LIVE,
            });
            (self.slots.len() - 1) as u32
        };
        self.live += 1;
        let generation = self.slots[slot as usize].generation;
        self.push((deadline, slot, generation));
        (slot, generation)
    }
    #[inline]
    fn cancel(&mut self, (slot, generation): (u32, u32)) -> bool {
        let s = &self.slots[slot as usize];
        if s.next_free != LIVE || s.generation != generation {
            return false;
        }
        self.free(slot);
        true
    }
    #[inline]
    fn reset(&mut self, &mut (slot, generation): &mut (u32, u32), deadline: u64) {
        let s = &mut self.slots[slot as usize];
        if s.next_free != LIVE || s.generation != generation || s.deadline == deadline {
            return;
        }
        s.deadline = deadline;
        self.push((deadline, slot, generation));
    }
    #[inline]
    fn advance(&mut self, now: u64, fired: &mut Vec<u64>) {
        while let Some(&Reverse(entry)) = self.heap.peek() {
            if entry.0 > now {
                break;
            }
            self.heap.pop();
            if Self::is_current(&self.slots, entry) {
                fired.push(self.free(entry.1));
            }
        }
    }
    fn len(&self) -> usize {
        self.live
    }
}

/// A `BTreeMap` keyed by `(deadline, id)`; the key is the handle, so reset changes it.
struct BTreeQueue {
    map: BTreeMap<(u64, u64), u64>,
    next_id: u64,
}

impl TimerQueue for BTreeQueue {
    type Key = (u64, u64);
    const NAME: &'static str = "btree_map";

    fn with_capacity(_capacity: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            next_id: 0,
        }
    }
    fn reserve(&mut self, _additional: usize) {}
    #[inline]
    fn insert(&mut self, deadline: u64, value: u64) -> (u64, u64) {
        let key = (deadline, self.next_id);
        self.next_id += 1;
        self.map.insert(key, value);
        key
    }
    #[inline]
    fn cancel(&mut self, key: (u64, u64)) -> bool {
        self.map.remove(&key).is_some()
    }
    #[inline]
    fn reset(&mut self, key: &mut (u64, u64), deadline: u64) {
        if let Some(value) = self.map.remove(key) {
            key.0 = deadline;
            self.map.insert(*key, value);
        }
    }
    #[inline]
    fn advance(&mut self, now: u64, fired: &mut Vec<u64>) {
        while let Some(entry) = self.map.first_entry() {
            if entry.key().0 > now {
                break;
            }
            fired.push(entry.remove());
        }
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

// ---- fixtures ------------------------------------------------------------------------

/// `n` live timers and the harness state around them. `keys[p]` is the key of the timer
/// whose value is `p`; timers were inserted in a random order of `p`, so walking
/// `keys` in order touches the queue's storage at random.
struct Fixture<Q: TimerQueue> {
    queue: Q,
    keys: Vec<Q::Key>,
    now: u64,
    /// Next position for cancel / reset.
    cursor: usize,
    /// Reset round (see `MAX_ROUND`).
    round: u64,
    rng: Rng,
    fired: Vec<u64>,
    /// Timers fired and calls made by `advance_due`, for the per-call average.
    due_fired: u64,
    due_calls: u64,
    scratch_keys: Vec<Q::Key>,
    scratch_ticks: Vec<u64>,
}

/// One row of the memory table.
struct MemoryRow {
    name: &'static str,
    timers: usize,
    bytes: isize,
}

static MEMORY: Mutex<Vec<MemoryRow>> = Mutex::new(Vec::new());

impl<Q: TimerQueue> Fixture<Q> {
    /// Builds `n` timers with deadlines `first + rng % spread`, and records the bytes
    /// the queue holds when `record` is set.
    fn build(n: usize, first: u64, spread: u64, seed: u64, record: bool) -> Self {
        let mut rng = Rng(seed);
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        let mut keys: Vec<Option<Q::Key>> = vec![None; n];
        let chunk = (n / 10).clamp(1, MAX_CHUNK);
        let started = Instant::now();
        let before = live_bytes();
        let mut queue = Q::with_capacity(n);
        for &p in &order {
            keys[p as usize] = Some(queue.insert(first + rng.below(spread), u64::from(p)));
        }
        // Heap bytes, plus the structure's own size: the wheel keeps its due counters
        // and bitmaps inline.
        let bytes = live_bytes() - before + std::mem::size_of::<Q>() as isize;
        drop(order);
        queue.reserve(chunk); // room for the insert workload's extra timers
        eprintln!(
            "built {:>11} x {n:>10} in {:>6.2?}: {:.1} bytes per live timer",
            Q::NAME,
            started.elapsed(),
            bytes as f64 / n as f64
        );
        if record {
            MEMORY.lock().expect("memory table").push(MemoryRow {
                name: Q::NAME,
                timers: n,
                bytes,
            });
        }
        assert_eq!(queue.len(), n);
        Self {
            queue,
            keys: keys
                .into_iter()
                .map(|k| k.expect("every position inserted"))
                .collect(),
            now: 0,
            cursor: 0,
            round: 1,
            rng,
            fired: Vec::with_capacity(n),
            due_fired: 0,
            due_calls: 0,
            scratch_keys: Vec::with_capacity(chunk),
            scratch_ticks: Vec::with_capacity(chunk),
        }
    }

    fn chunk(&self) -> usize {
        (self.keys.len() / 10).clamp(1, MAX_CHUNK)
    }

    /// `iters` inserts 1..=2000 ticks ahead; the extra timers are cancelled untimed.
    fn insert(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let k = left.min(self.chunk());
            self.scratch_ticks.clear();
            for _ in 0..k {
                self.scratch_ticks
                    .push(self.now + 1 + self.rng.below(KEEPALIVE));
            }
            self.scratch_keys.clear();
            let started = Instant::now();
            for &deadline in &self.scratch_ticks {
                self.scratch_keys
                    .push(self.queue.insert(deadline, u64::MAX));
            }
            total += started.elapsed();
            for &key in &self.scratch_keys {
                assert!(self.queue.cancel(key));
            }
            left -= k;
        }
        total
    }

    /// `iters` cancels of random live timers, re-inserted untimed.
    fn cancel(&mut self, iters: u64) -> Duration {
        let n = self.keys.len();
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            let k = left.min(self.chunk()).min(n - self.cursor);
            let positions = self.cursor..self.cursor + k;
            let started = Instant::now();
            for &key in &self.keys[positions.clone()] {
                black_box(self.queue.cancel(key));
            }
            total += started.elapsed();
            for p in positions {
                self.keys[p] = self
                    .queue
                    .insert(self.now + 1 + self.rng.below(SPREAD), p as u64);
            }
            self.cursor = (self.cursor + k) % n;
            left -= k;
        }
        total
    }

    /// `iters` keepalive resets: each timer in turn to `now + 2000 + round`.
    fn reset(&mut self, iters: u64) -> Duration {
        let n = self.keys.len();
        let mut total = Duration::ZERO;
        let mut left = iters as usize;
        while left > 0 {
            if self.round > MAX_ROUND {
                // Untimed: move everything back near `now` and start over.
                for key in &mut self.keys {
                    self.queue.reset(key, self.now + 1 + self.rng.below(SPREAD));
                }
                self.round = 1;
                self.cursor = 0;
            }
            let k = left.min(n - self.cursor);
            let deadline = self.now + KEEPALIVE + self.round;
            let started = Instant::now();
            for key in &mut self.keys[self.cursor..self.cursor + k] {
                self.queue.reset(key, deadline);
            }
            total += started.elapsed();
            self.cursor += k;
            if self.cursor == n {
                self.cursor = 0;
                self.round += 1;
            }
            left -= k;
        }
        total
    }

    /// `iters` one-tick advances firing ~n/200 timers each, re-inserted untimed.
    fn advance_due(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.now += 1;
            self.queue.set_clock(self.now);
            self.fired.clear();
            let started = Instant::now();
            self.queue.advance(self.now, &mut self.fired);
            total += started.elapsed();
            self.due_fired += self.fired.len() as u64;
            self.due_calls += 1;
            for &p in &self.fired {
                self.keys[p as usize] = self.queue.insert(self.now + SPREAD, p);
            }
        }
        total
    }

    /// `iters` one-tick advances with nothing due.
    fn advance_idle(&mut self, iters: u64) -> Duration {
        self.fired.clear();
        let started = Instant::now();
        for _ in 0..iters {
            self.now += 1;
            self.queue.advance(self.now, &mut self.fired);
        }
        let total = started.elapsed();
        assert!(
            self.fired.is_empty(),
            "{} fired timers in advance_idle",
            Q::NAME
        );
        total
    }
}

// ---- running -------------------------------------------------------------------------

fn bench_queue<Q: TimerQueue>(c: &mut Criterion, settings: &Settings, n: usize) {
    if let Some(impls) = &settings.impls
        && !impls.iter().any(|i| i == Q::NAME)
    {
        return;
    }
    let configure =
        |group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>| {
            group
                .sample_size(10)
                .warm_up_time(settings.warm_up)
                .measurement_time(settings.measurement)
                .sampling_mode(SamplingMode::Flat);
        };
    let id = BenchmarkId::new(Q::NAME, n);

    let mut fixture = Fixture::<Q>::build(n, 1, SPREAD, 0x5EED ^ n as u64, true);
    let mut group = c.benchmark_group("insert");
    configure(&mut group);
    group.bench_function(id.clone(), |b| b.iter_custom(|iters| fixture.insert(iters)));
    group.finish();

    let mut group = c.benchmark_group("cancel");
    configure(&mut group);
    group.bench_function(id.clone(), |b| b.iter_custom(|iters| fixture.cancel(iters)));
    group.finish();

    let mut group = c.benchmark_group("advance_due");
    configure(&mut group);
    group.bench_function(id.clone(), |b| {
        b.iter_custom(|iters| fixture.advance_due(iters))
    });
    group.finish();
    eprintln!(
        "advance_due {} x {n}: {:.1} timers fired per call on average",
        Q::NAME,
        fixture.due_fired as f64 / fixture.due_calls.max(1) as f64
    );

    let mut group = c.benchmark_group("reset");
    configure(&mut group);
    group.bench_function(id.clone(), |b| b.iter_custom(|iters| fixture.reset(iters)));
    group.finish();
    assert_eq!(fixture.queue.len(), n);
    drop(fixture);

    let mut idle = Fixture::<Q>::build(n, Q::far_away(), KEEPALIVE, 0x1D1E ^ n as u64, false);
    let mut group = c.benchmark_group("advance_idle");
    configure(&mut group);
    group.bench_function(id, |b| b.iter_custom(|iters| idle.advance_idle(iters)));
    group.finish();
}

fn print_memory_table() {
    let fixed = {
        let before = live_bytes();
        let empty = Wheel::<u64>::with_capacity(Tick(0), 0);
        let bytes = live_bytes() - before + std::mem::size_of_val(&empty) as isize;
        drop(empty);
        bytes
    };
    let rows = MEMORY.lock().expect("memory table");
    if rows.is_empty() {
        return;
    }
    println!();
    println!("Bytes per live timer (u64 payload): heap bytes counted by the allocator right after");
    println!("building the fixture with with_capacity(n) where available, plus the structure's");
    println!("own size. The wheel's fixed part: {fixed} bytes (heap + the Wheel struct itself).");
    println!();
    println!("| implementation | timers | bytes | bytes per live timer |");
    println!("|---|---:|---:|---:|");
    for row in rows.iter() {
        println!(
            "| {} | {} | {} | {:.1} |",
            row.name,
            row.timers,
            row.bytes,
            row.bytes as f64 / row.timers as f64
        );
    }
}

fn main() {
    let settings = settings();
    // DelayQueue needs a runtime context for its `Sleep`; the others ignore it.
    let _runtime = runtime().enter();
    let mut criterion = Criterion::default().configure_from_args();
    for &n in &settings.sizes {
        bench_queue::<WheelQueue>(&mut criterion, &settings, n);
        bench_queue::<DelayQueueQueue>(&mut criterion, &settings, n);
        bench_queue::<HeapQueue>(&mut criterion, &settings, n);
        bench_queue::<BTreeQueue>(&mut criterion, &settings, n);
    }
    criterion.final_summary();
    print_memory_table();
}
