//! Steady state allocates nothing: once the arena has held the peak number of timers,
//! insert, cancel, reset, next_expiry and advance never call the allocator.
//!
//! This file holds a single test so that no other test thread allocates while it
//! counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use wheel::{FAR_TICKS, NEAR_TICKS, Tick, TimerKey, Wheel};

/// Counts calls to `alloc` and `realloc`.
struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn steady_state_never_allocates() {
    const TIMERS: usize = 10_000;
    let mut wheel: Wheel<u64> = Wheel::with_capacity(Tick(0), TIMERS);
    let mut keys: Vec<TimerKey> = Vec::with_capacity(TIMERS);
    let mut fired: Vec<u64> = Vec::with_capacity(TIMERS);
    // A cheap deterministic scramble (xorshift) for deadlines and picks.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let deadline = |now: u64, r: u64| match r % 10 {
        0 => now + 1 + r % (4 * FAR_TICKS), // far and overflow timers too
        _ => now + 1 + r % NEAR_TICKS,
    };
    for i in 0..TIMERS as u64 {
        keys.push(wheel.insert(Tick(deadline(0, random())), i));
    }

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for now in 1..=20_000u64 {
        for _ in 0..8 {
            let r = random();
            let i = (r % TIMERS as u64) as usize;
            match r % 3 {
                0 => {
                    wheel.reset(keys[i], Tick(deadline(now, random())));
                }
                1 => {
                    if wheel.cancel(keys[i]).is_some() {
                        keys[i] = wheel.insert(Tick(deadline(now, random())), i as u64);
                    }
                }
                _ => {
                    wheel.reset(keys[i], Tick(now + 2_000)); // the keepalive pattern
                }
            }
        }
        let _ = wheel.next_expiry();
        wheel.advance(Tick(now), 256, |_, value| fired.push(value));
        for value in fired.drain(..) {
            keys[value as usize] = wheel.insert(Tick(deadline(now, random())), value);
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations in steady state");
    assert_eq!(wheel.len(), TIMERS);
    assert_eq!(wheel.capacity(), TIMERS);
    wheel.check_invariants();
}
