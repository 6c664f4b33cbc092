//! Unit tests: every operation and its edges. The random-sequence test against a
//! `BTreeMap` model is `tests/model.rs`.

use crate::wheel::{FAR_TICKS, NEAR_TICKS};
use crate::{Tick, TimerKey, Wheel};

/// Advances to `now` with an unlimited budget; returns the fired values in order.
#[track_caller]
fn fire<T>(wheel: &mut Wheel<T>, now: u64) -> Vec<T> {
    let mut fired = Vec::new();
    let n = wheel.advance(Tick(now), usize::MAX, |_, value| fired.push(value));
    assert_eq!(n, fired.len());
    wheel.check_invariants();
    fired
}

/// Drives the wheel like an event loop: sleeps until `next_expiry`, advances, repeats.
/// Returns `(tick, value)` for every firing, and how many wake-ups fired nothing.
#[track_caller]
fn run_event_loop<T>(wheel: &mut Wheel<T>, max_wakeups: usize) -> (Vec<(u64, T)>, usize) {
    let mut fired = Vec::new();
    let mut idle_wakeups = 0;
    for _ in 0..max_wakeups {
        let Some(Tick(at)) = wheel.next_expiry() else {
            return (fired, idle_wakeups);
        };
        assert!(
            at >= wheel.now().0,
            "next_expiry {at} before now {:?}",
            wheel.now()
        );
        let n = wheel.advance(Tick(at), usize::MAX, |_, value| fired.push((at, value)));
        wheel.check_invariants();
        if n == 0 {
            idle_wakeups += 1;
        }
    }
    panic!("still busy after {max_wakeups} wake-ups");
}

#[test]
fn an_arena_entry_is_32_bytes_for_a_u64_payload() {
    assert_eq!(Wheel::<u64>::ENTRY_SIZE_U64, 32);
}

#[test]
fn empty_wheel_has_no_next_expiry_and_advances_freely() {
    let mut wheel = Wheel::<u32>::new(Tick(10));
    assert_eq!(wheel.next_expiry(), None);
    assert!(wheel.is_empty());
    assert!(fire(&mut wheel, 1_000_000).is_empty());
    assert_eq!(wheel.now(), Tick(1_000_000));
    assert_eq!(wheel.next_expiry(), None);
    // Emptied again after use.
    let key = wheel.insert(Tick(1_000_005), 1);
    assert_eq!(wheel.next_expiry(), Some(Tick(1_000_005)));
    assert_eq!(wheel.cancel(key), Some(1));
    assert_eq!(wheel.next_expiry(), None);
    wheel.check_invariants();
}

#[test]
fn fires_at_its_tick_and_not_before() {
    let mut wheel = Wheel::with_capacity(Tick(0), 4);
    let key = wheel.insert(Tick(100), "a");
    assert_eq!(wheel.deadline(key), Some(Tick(100)));
    assert_eq!(wheel.get(key), Some(&"a"));
    assert_eq!(wheel.next_expiry(), Some(Tick(100)));
    assert!(fire(&mut wheel, 99).is_empty());
    assert_eq!(wheel.len(), 1);
    assert_eq!(fire(&mut wheel, 100), ["a"]);
    assert!(wheel.is_empty());
    assert!(!wheel.contains(key));
    assert_eq!(wheel.deadline(key), None);
}

#[test]
fn every_near_deadline_fires_exactly_on_time() {
    // One timer per tick of the whole near window, and one either side of its edge.
    let mut wheel = Wheel::new(Tick(7));
    for d in 8..=7 + NEAR_TICKS + 1 {
        wheel.insert(Tick(d), d);
    }
    wheel.check_invariants();
    for now in 8..=7 + NEAR_TICKS + 1 {
        assert_eq!(wheel.next_expiry(), Some(Tick(now)));
        assert_eq!(fire(&mut wheel, now), [now], "at tick {now}");
    }
    assert!(wheel.is_empty());
}

#[test]
fn past_and_present_deadlines_fire_on_the_next_advance() {
    let mut wheel = Wheel::new(Tick(50));
    wheel.insert(Tick(3), "past");
    wheel.insert(Tick(50), "now");
    wheel.insert(Tick(51), "next tick");
    // Due now: reported as the current tick, not as the (earlier) deadline.
    assert_eq!(wheel.next_expiry(), Some(Tick(50)));
    let mut fired = fire(&mut wheel, 50); // the clock does not move
    fired.sort();
    assert_eq!(fired, ["now", "past"]);
    assert_eq!(wheel.next_expiry(), Some(Tick(51)));
    // Even a `now` behind the clock fires overdue timers (and moves nothing).
    wheel.insert(Tick(0), "late");
    assert_eq!(fire(&mut wheel, 10), ["late"]);
    assert_eq!(wheel.now(), Tick(50));
    assert_eq!(fire(&mut wheel, 51), ["next tick"]);
}

#[test]
fn far_deadlines_fire_exactly_on_time_with_few_idle_wakeups() {
    let start = 1_000u64;
    let offsets = [
        NEAR_TICKS - 1,
        NEAR_TICKS,
        NEAR_TICKS + 1,
        NEAR_TICKS + 63,
        NEAR_TICKS + 64,
        5_000,
        FAR_TICKS - 1,
        FAR_TICKS,
        FAR_TICKS + 64,
        FAR_TICKS * 3 + 17,
        1_000_000,
        1 << 33,
        (1 << 50) + 12_345,
        u64::MAX - start,
    ];
    for offset in offsets {
        let deadline = start + offset;
        let mut wheel = Wheel::new(Tick(start));
        wheel.insert(Tick(deadline), deadline);
        wheel.check_invariants();
        let next = wheel.next_expiry().unwrap();
        assert!(
            next.0 > start && next.0 <= deadline,
            "offset {offset}: next {next:?}"
        );
        let (fired, idle) = run_event_loop(&mut wheel, 100);
        assert_eq!(fired, [(deadline, deadline)], "offset {offset}");
        // At most: an overflow rescan, the far block drain, (and one more rescan when
        // the first one came early).
        assert!(idle <= 3, "offset {offset}: {idle} idle wake-ups");
    }
}

#[test]
fn one_jump_across_many_rotations_fires_everything_in_deadline_order() {
    let mut wheel = Wheel::new(Tick(0));
    let mut deadlines: Vec<u64> = (0..2_000u64)
        .map(|i| (i * 7_919 * 7_919) % (50 * FAR_TICKS) + 1) // scattered over 50 far rings
        .collect();
    for &d in &deadlines {
        wheel.insert(Tick(d), d);
    }
    wheel.check_invariants();
    let fired = fire(&mut wheel, 100 * FAR_TICKS);
    deadlines.sort();
    assert_eq!(fired, deadlines);
    assert_eq!(wheel.now(), Tick(100 * FAR_TICKS));
    assert!(wheel.is_empty());
}

#[test]
fn walking_tick_by_tick_through_far_timers_fires_each_on_its_tick() {
    let mut wheel = Wheel::new(Tick(0));
    let deadlines = [
        NEAR_TICKS + 5,
        NEAR_TICKS + 64,
        NEAR_TICKS + 700,
        3 * NEAR_TICKS,
    ];
    for d in deadlines {
        wheel.insert(Tick(d), d);
    }
    for now in 1..=3 * NEAR_TICKS {
        let fired = fire(&mut wheel, now);
        let expected: Vec<u64> = deadlines.iter().copied().filter(|&d| d == now).collect();
        assert_eq!(fired, expected, "tick {now}");
    }
}

#[test]
fn cancel_returns_the_value_once_and_stale_keys_are_refused() {
    let mut wheel = Wheel::new(Tick(0));
    let a = wheel.insert(Tick(10), 'a');
    let b = wheel.insert(Tick(20), 'b');
    assert_eq!(wheel.cancel(a), Some('a'));
    assert_eq!(wheel.cancel(a), None, "cancelled twice");
    assert!(!wheel.reset(a, Tick(30)));
    assert_eq!(wheel.deadline(a), None);
    assert_eq!(fire(&mut wheel, 20), ['b']);
    assert_eq!(wheel.cancel(b), None, "cancel after firing");
    assert!(!wheel.reset(b, Tick(40)));
    assert_eq!(wheel.len(), 0);
}

#[test]
fn a_stale_key_never_aliases_the_timer_reusing_its_slot() {
    let mut wheel = Wheel::with_capacity(Tick(0), 1);
    let old = wheel.insert(Tick(10), 1);
    assert_eq!(wheel.cancel(old), Some(1));
    let new = wheel.insert(Tick(10), 2);
    assert_ne!(old, new);
    assert_eq!(wheel.capacity(), 1, "the slot was reused");
    assert_eq!(wheel.cancel(old), None);
    assert!(!wheel.reset(old, Tick(5)));
    assert_eq!(wheel.get(old), None);
    assert_eq!(wheel.deadline(new), Some(Tick(10)));
    assert_eq!(fire(&mut wheel, 10), [2]);
}

#[test]
fn an_exhausted_generation_retires_its_slot() {
    let mut wheel = Wheel::with_capacity(Tick(0), 4);
    let key = wheel.insert(Tick(10), 1);
    let key = wheel.set_generation_for_test(key, u32::MAX - 1);
    assert_eq!(wheel.cancel(key), Some(1));
    // One more timer gets the last generation, u32::MAX ...
    let last = wheel.insert(Tick(10), 2);
    assert_eq!(
        last,
        TimerKey {
            index: key.index,
            generation: u32::MAX
        }
    );
    assert_eq!(wheel.cancel(key), None);
    assert_eq!(fire(&mut wheel, 10), [2]);
    // ... and then the slot is never used again.
    let next = wheel.insert(Tick(20), 3);
    assert_ne!(next.index, key.index);
    assert_eq!(wheel.cancel(last), None);
    wheel.check_invariants();
}

#[test]
fn reset_later_in_the_near_ring_moves_the_deadline_without_firing_early() {
    let mut wheel = Wheel::new(Tick(0));
    let key = wheel.insert(Tick(10), "x");
    let other = wheel.insert(Tick(12), "y");
    for d in [11, 15, 15, 40, 2_000] {
        assert!(wheel.reset(key, Tick(d)));
        wheel.check_invariants();
        assert_eq!(wheel.deadline(key), Some(Tick(d)));
    }
    assert_eq!(
        wheel.next_expiry(),
        Some(Tick(12)),
        "exact despite the lazy entry at 10"
    );
    assert!(
        fire(&mut wheel, 11).is_empty(),
        "passing the old slot only re-files"
    );
    assert_eq!(fire(&mut wheel, 12), ["y"]);
    assert_eq!(wheel.next_expiry(), Some(Tick(2_000)));
    assert!(fire(&mut wheel, 1_999).is_empty());
    assert_eq!(fire(&mut wheel, 2_000), ["x"]);
    assert!(!wheel.reset(other, Tick(3_000)));
}

#[test]
fn a_near_timer_moved_far_out_fires_on_time_with_at_most_two_idle_wakeups() {
    for offset in [
        NEAR_TICKS + 1,
        NEAR_TICKS + 100,
        3 * NEAR_TICKS + 7,
        FAR_TICKS + 5,
        1 << 40,
    ] {
        let mut wheel = Wheel::new(Tick(0));
        let key = wheel.insert(Tick(4_000), "moved");
        assert!(wheel.reset(key, Tick(100 + offset)));
        wheel.check_invariants();
        assert!(wheel.next_expiry().unwrap() <= Tick(100 + offset));
        let (fired, idle) = run_event_loop(&mut wheel, 100);
        assert_eq!(fired, [(100 + offset, "moved")], "offset {offset}");
        // Its count's stand-in tick (at most twice) + far block / overflow moves.
        assert!(idle <= 5, "offset {offset}: {idle} idle wake-ups");
    }
}

#[test]
fn reset_earlier_refiles_at_once() {
    let mut wheel = Wheel::new(Tick(0));
    let near = wheel.insert(Tick(500), "near");
    let far = wheel.insert(Tick(20_000), "far");
    let overflow = wheel.insert(Tick(1 << 40), "overflow");
    assert!(wheel.reset(near, Tick(5)));
    assert!(wheel.reset(far, Tick(6)));
    assert!(wheel.reset(overflow, Tick(7)));
    wheel.check_invariants();
    assert_eq!(wheel.next_expiry(), Some(Tick(5)));
    assert_eq!(fire(&mut wheel, 7), ["near", "far", "overflow"]);
}

#[test]
fn reset_later_from_every_place() {
    let mut wheel = Wheel::new(Tick(100));
    let overdue = wheel.insert(Tick(90), "overdue");
    let near = wheel.insert(Tick(150), "near");
    let far = wheel.insert(Tick(10_000), "far");
    let overflow = wheel.insert(Tick(1 << 30), "overflow");
    // Overdue -> still overdue, then into the future.
    assert!(wheel.reset(overdue, Tick(95)));
    assert_eq!(wheel.next_expiry(), Some(Tick(100)));
    assert!(wheel.reset(overdue, Tick(300)));
    // Near -> beyond the near window (stays filed where it is until its slot comes up).
    assert!(wheel.reset(near, Tick(100 + NEAR_TICKS + 500)));
    // Far -> later in the far ring, and beyond it.
    assert!(wheel.reset(far, Tick(20_000)));
    // Overflow -> later still.
    assert!(wheel.reset(overflow, Tick(1 << 31)));
    wheel.check_invariants();
    assert_eq!(wheel.next_expiry(), Some(Tick(300)));
    let (fired, _) = run_event_loop(&mut wheel, 100);
    assert_eq!(
        fired,
        [
            (300, "overdue"),
            (100 + NEAR_TICKS + 500, "near"),
            (20_000, "far"),
            (1 << 31, "overflow")
        ]
    );
}

#[test]
fn reset_into_the_past_fires_on_the_next_advance() {
    let mut wheel = Wheel::new(Tick(100));
    let key = wheel.insert(Tick(200), ());
    assert!(wheel.reset(key, Tick(40)));
    assert_eq!(wheel.next_expiry(), Some(Tick(100)));
    assert_eq!(fire(&mut wheel, 100).len(), 1);
}

#[test]
fn lazily_moved_timers_cost_one_refile_each() {
    // Many timers moved later many times: passing their old slots re-files each once.
    let mut wheel = Wheel::new(Tick(0));
    let keys: Vec<TimerKey> = (0..100u64)
        .map(|i| wheel.insert(Tick(1 + i % 10), i))
        .collect();
    for round in 0..50u64 {
        for &key in &keys {
            assert!(wheel.reset(key, Tick(100 + round)));
        }
    }
    wheel.check_invariants();
    assert_eq!(wheel.next_expiry(), Some(Tick(149)));
    assert!(fire(&mut wheel, 148).is_empty());
    assert_eq!(
        wheel.lazy_refiles, 100,
        "one re-filing per timer, not per reset"
    );
    assert_eq!(fire(&mut wheel, 149).len(), 100);
    assert_eq!(wheel.lazy_refiles, 100);
}

#[test]
fn budget_limits_each_call_and_leftovers_stay_due() {
    let mut wheel = Wheel::new(Tick(0));
    wheel.insert(Tick(0), 0u64); // overdue
    for i in 1..=6 {
        wheel.insert(Tick(5), i);
    }
    for i in 7..=9 {
        wheel.insert(Tick(6), i);
    }
    wheel.insert(Tick(8), 10);
    let mut fired = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        let n = wheel.advance(Tick(7), 4, |_, v| fired.push(v));
        wheel.check_invariants();
        assert!(n <= 4);
        if n < 4 {
            break;
        }
        // Ran out: whatever is left and due must be reported as due.
        if fired.len() < 10 {
            assert!(
                wheel.next_expiry().unwrap() <= Tick(7),
                "leftovers not reported due"
            );
        }
    }
    assert_eq!(calls, 3);
    assert_eq!(fired.len(), 10);
    assert_eq!(fired[0], 0, "overdue first");
    let ticks: Vec<u64> = fired
        .iter()
        .map(|&v| {
            if v == 0 {
                0
            } else if v <= 6 {
                5
            } else {
                6
            }
        })
        .collect();
    assert!(ticks.is_sorted(), "deadline order across calls: {fired:?}");
    assert_eq!(wheel.now(), Tick(7));
    assert_eq!(wheel.next_expiry(), Some(Tick(8)));
}

#[test]
fn budget_leftover_then_cancel_and_reset_of_the_rest() {
    let mut wheel = Wheel::new(Tick(0));
    let keys: Vec<TimerKey> = (0..5).map(|i| wheel.insert(Tick(3), i)).collect();
    assert_eq!(wheel.advance(Tick(10), 2, |_, _| {}), 2);
    assert!(wheel.now() < Tick(3));
    let live: Vec<TimerKey> = keys
        .iter()
        .copied()
        .filter(|&k| wheel.contains(k))
        .collect();
    assert_eq!(live.len(), 3);
    assert!(wheel.cancel(live[0]).is_some());
    assert!(wheel.reset(live[1], Tick(9)));
    wheel.check_invariants();
    assert_eq!(wheel.next_expiry(), Some(Tick(3)));
    assert_eq!(fire(&mut wheel, 10).len(), 2);
    assert_eq!(wheel.next_expiry(), None);
}

#[test]
fn zero_budget_does_nothing() {
    let mut wheel = Wheel::new(Tick(0));
    wheel.insert(Tick(0), 1);
    wheel.insert(Tick(2), 2);
    assert_eq!(
        wheel.advance(Tick(5), 0, |_, _| panic!("fired with no budget")),
        0
    );
    assert_eq!(wheel.now(), Tick(0));
    assert_eq!(wheel.len(), 2);
}

#[test]
fn tick_counter_near_u64_max() {
    let start = u64::MAX - 100;
    let mut wheel = Wheel::new(Tick(start));
    wheel.insert(Tick(u64::MAX), "end");
    wheel.insert(Tick(u64::MAX - 1), "almost");
    wheel.insert(Tick(start + 50), "middle");
    wheel.check_invariants();
    assert_eq!(wheel.next_expiry(), Some(Tick(start + 50)));
    assert_eq!(fire(&mut wheel, u64::MAX - 1), ["middle", "almost"]);
    assert_eq!(wheel.next_expiry(), Some(Tick(u64::MAX)));
    assert_eq!(fire(&mut wheel, u64::MAX), ["end"]);
    assert_eq!(wheel.now(), Tick(u64::MAX));
    // At the end of time everything is overdue and fires on the next advance.
    let key = wheel.insert(Tick(u64::MAX), "after the end");
    assert_eq!(wheel.next_expiry(), Some(Tick(u64::MAX)));
    assert!(wheel.reset(key, Tick(3)));
    assert_eq!(fire(&mut wheel, u64::MAX), ["after the end"]);
    assert_eq!(wheel.next_expiry(), None);
}

#[test]
fn far_and_overflow_timers_near_u64_max() {
    let start = u64::MAX - 3 * FAR_TICKS;
    let mut wheel = Wheel::new(Tick(start));
    let deadlines = [
        start + NEAR_TICKS + 1,
        start + 2 * FAR_TICKS,
        u64::MAX - 1,
        u64::MAX,
    ];
    for d in deadlines {
        wheel.insert(Tick(d), d);
    }
    wheel.check_invariants();
    let (fired, idle) = run_event_loop(&mut wheel, 100);
    assert_eq!(fired, deadlines.map(|d| (d, d)));
    assert!(idle <= 6, "{idle} idle wake-ups");
}

#[test]
fn clear_makes_every_key_stale_and_keeps_capacity() {
    let mut wheel = Wheel::with_capacity(Tick(0), 8);
    let keys: Vec<TimerKey> = (0..8u64)
        .map(|i| wheel.insert(Tick(i * 10_000), i))
        .collect();
    wheel.clear();
    wheel.check_invariants();
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_expiry(), None);
    assert_eq!(wheel.capacity(), 8);
    for key in keys {
        assert_eq!(wheel.cancel(key), None);
    }
    let key = wheel.insert(Tick(5), 99);
    assert_eq!(fire(&mut wheel, 5), [99]);
    assert!(!wheel.contains(key));
}

#[test]
fn steady_churn_reuses_the_arena() {
    let mut wheel = Wheel::with_capacity(Tick(0), 1_000);
    let mut keys: Vec<TimerKey> = (0..1_000u64)
        .map(|i| wheel.insert(Tick(1 + i % 300), i))
        .collect();
    for now in 1..=5_000u64 {
        for (i, key) in keys.iter_mut().enumerate() {
            if i as u64 % 97 == now % 97 {
                wheel.reset(*key, Tick(now + 200));
            }
        }
        let mut refill = Vec::new();
        wheel.advance(Tick(now), usize::MAX, |_, v| refill.push(v));
        for v in refill {
            keys[v as usize] = wheel.insert(Tick(now + 1 + v % 250), v);
        }
    }
    wheel.check_invariants();
    assert_eq!(wheel.len(), 1_000);
    assert_eq!(wheel.capacity(), 1_000, "the arena never grew");
}

#[test]
fn debug_output_is_a_summary() {
    let mut wheel = Wheel::new(Tick(3));
    wheel.insert(Tick(9), vec![0u8; 1_000]);
    let text = format!("{wheel:?}");
    assert!(
        text.contains("len: 1") && text.contains("Tick(9)"),
        "{text}"
    );
    assert!(text.len() < 200, "{text}");
}
