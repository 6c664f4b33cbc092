//! Random operation sequences against a simple reference model (a `BTreeMap` ordered by
//! deadline), asserting the same expiries (each in the call it is due in, never early,
//! in deadline order), lengths, deadlines and `next_expiry`.
//!
//! The case count is fixed (`CASES`) so CI does the same amount of work every run.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use wheel::{FAR_TICKS, NEAR_TICKS, Tick, TimerKey, Wheel};

const CASES: u32 = 256;

#[derive(Clone, Debug)]
enum Op {
    /// Insert at `now() + delta` (saturating, clamped at 0).
    Insert(i64),
    /// Cancel the `n`-th key ever handed out (live or stale).
    Cancel(usize),
    /// Reset the `n`-th key ever handed out to `now() + delta`.
    Reset(usize, i64),
    /// `advance(now() + step, budget)`.
    Advance(u64, usize),
}

/// What the model knows about a live timer.
#[derive(Debug)]
struct Live {
    key: TimerKey,
    deadline: u64,
    /// Was given a deadline more than `NEAR_TICKS` ahead and may still be filed in the
    /// far ring or overflow list, where `next_expiry` is only a lower bound.
    far: bool,
}

#[derive(Default, Debug)]
struct Model {
    /// Live timers by id (the wheel's value is the id).
    live: BTreeMap<u64, Live>,
    /// `(deadline, id)` of every live timer: the reference ordering.
    by_deadline: BTreeSet<(u64, u64)>,
    /// Every key handed out, with its id; stale ones stay for stale-key operations.
    handed_out: Vec<(TimerKey, u64)>,
    next_id: u64,
}

impl Model {
    fn remove(&mut self, id: u64) -> Live {
        let timer = self.live.remove(&id).expect("model: removing a dead timer");
        assert!(self.by_deadline.remove(&(timer.deadline, id)));
        timer
    }
}

fn deadline_from(now: u64, delta: i64) -> u64 {
    now.saturating_add_signed(delta)
}

fn is_far(now: u64, deadline: u64) -> bool {
    deadline > now.saturating_add(NEAR_TICKS)
}

/// Runs `ops` on a wheel starting at `start` and on the model, checking after each op.
fn run(start: u64, ops: Vec<Op>) {
    let mut wheel: Wheel<u64> = Wheel::with_capacity(Tick(start), 8);
    let mut model = Model::default();
    for op in ops {
        let now = wheel.now().0;
        match op {
            Op::Insert(delta) => {
                let deadline = deadline_from(now, delta);
                let id = model.next_id;
                model.next_id += 1;
                let key = wheel.insert(Tick(deadline), id);
                model.handed_out.push((key, id));
                model.live.insert(
                    id,
                    Live {
                        key,
                        deadline,
                        far: is_far(now, deadline),
                    },
                );
                model.by_deadline.insert((deadline, id));
            }
            Op::Cancel(n) => {
                let Some(&(key, id)) = model.handed_out.get(n % model.handed_out.len().max(1))
                else {
                    continue;
                };
                let expected = model.live.contains_key(&id).then_some(id);
                assert_eq!(wheel.cancel(key), expected, "cancel {key:?}");
                if expected.is_some() {
                    model.remove(id);
                }
            }
            Op::Reset(n, delta) => {
                let Some(&(key, id)) = model.handed_out.get(n % model.handed_out.len().max(1))
                else {
                    continue;
                };
                let deadline = deadline_from(now, delta);
                let live = model.live.contains_key(&id);
                assert_eq!(wheel.reset(key, Tick(deadline)), live, "reset {key:?}");
                if live {
                    let old = model.remove(id);
                    // A far timer moved later stays where it is filed.
                    let far = is_far(now, deadline) || (old.far && deadline >= old.deadline);
                    model.live.insert(id, Live { key, deadline, far });
                    model.by_deadline.insert((deadline, id));
                }
            }
            Op::Advance(step, budget) => {
                advance(&mut wheel, &mut model, now.saturating_add(step), budget)
            }
        }
        check(&wheel, &model);
    }
    // Drain everything through the event loop, then the wheel must be empty.
    for _ in 0..10_000 {
        let Some(Tick(at)) = wheel.next_expiry() else {
            break;
        };
        advance(&mut wheel, &mut model, at, 7);
        check(&wheel, &model);
    }
    assert!(
        model.live.is_empty(),
        "timers never fired: {:?}",
        model.live
    );
    assert_eq!(wheel.next_expiry(), None);
}

fn advance(wheel: &mut Wheel<u64>, model: &mut Model, target: u64, budget: usize) {
    let before = wheel.now().0;
    let mut fired = Vec::new();
    let n = wheel.advance(Tick(target), budget, |key, id| fired.push((key, id)));
    assert_eq!(n, fired.len());
    assert!(n <= budget);
    // Effective deadline: overdue timers count as due at the clock's old reading.
    let mut last_effective = 0;
    for (key, id) in fired {
        let timer = model.remove(id);
        assert_eq!(timer.key, key, "fired with the wrong key");
        assert!(
            timer.deadline <= target,
            "fired early: deadline {} at {target}",
            timer.deadline
        );
        let effective = timer.deadline.max(before);
        assert!(
            effective >= last_effective,
            "out of order: {effective} after {last_effective}"
        );
        last_effective = effective;
    }
    let still_due = model.by_deadline.first().is_some_and(|&(d, _)| d <= target);
    if n < budget {
        assert!(
            !still_due,
            "advance({target}) left a due timer: {:?}",
            model.by_deadline.first()
        );
        assert_eq!(wheel.now().0, before.max(target));
    } else {
        assert!(wheel.now().0 <= before.max(target));
        if let Some(&(d, _)) = model.by_deadline.first()
            && d <= target
        {
            assert!(
                d.max(before) >= last_effective,
                "a leftover {d} is earlier than a fired one"
            );
            let next = wheel.next_expiry().expect("leftovers but no next_expiry");
            assert!(
                next.0 <= target,
                "leftover due at {d} but next_expiry {next:?} > {target}"
            );
        }
    }
}

fn check(wheel: &Wheel<u64>, model: &Model) {
    wheel.check_invariants();
    assert_eq!(wheel.len(), model.live.len());
    assert_eq!(wheel.is_empty(), model.live.is_empty());
    for &(key, id) in &model.handed_out {
        let expected = model.live.get(&id).map(|timer| Tick(timer.deadline));
        assert_eq!(wheel.deadline(key), expected, "deadline of {key:?}");
    }
    let now = wheel.now().0;
    let expected = model.by_deadline.first().map(|&(d, _)| d.max(now));
    let got = wheel.next_expiry().map(|t| t.0);
    if model.live.values().any(|timer| timer.far) {
        // A lower bound, never late, and never a busy loop when nothing is due.
        let (Some(got), Some(expected)) = (got, expected) else {
            panic!("next_expiry {got:?}, model {expected:?}");
        };
        assert!(
            got <= expected,
            "next_expiry {got} later than the earliest deadline {expected}"
        );
        assert!(
            got >= expected.min(now + 1),
            "next_expiry {got} due with nothing due; model {expected}"
        );
    } else {
        assert_eq!(got, expected, "next_expiry; now {now}");
    }
}

/// Deadlines relative to `now()`: mostly within the near window, some past, some far.
fn delta(far: bool) -> BoxedStrategy<i64> {
    let near = NEAR_TICKS as i64;
    if far {
        prop_oneof![
            2 => -20i64..=0,
            8 => 1i64..=64,
            5 => 1..=near + 64,
            3 => near..=3 * FAR_TICKS as i64,
            1 => 3 * FAR_TICKS as i64..=1 << 40,
            1 => Just(i64::MAX),
        ]
        .boxed()
    } else {
        prop_oneof![2 => -20i64..=0, 8 => 1i64..=64, 5 => 1..=near].boxed()
    }
}

fn step(far: bool) -> BoxedStrategy<u64> {
    if far {
        prop_oneof![
            4 => 0u64..=3,
            4 => 0u64..=100,
            2 => 0..=2 * NEAR_TICKS,
            1 => 0..=4 * FAR_TICKS,
            1 => 0u64..=1 << 41,
        ]
        .boxed()
    } else {
        prop_oneof![4 => 0u64..=3, 4 => 0u64..=100, 2 => 0..=2 * NEAR_TICKS].boxed()
    }
}

fn op(far: bool) -> impl Strategy<Value = Op> {
    let budget = prop_oneof![3 => 1usize..=4, 2 => Just(usize::MAX)];
    prop_oneof![
        6 => delta(far).prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Cancel),
        5 => (any::<usize>(), delta(far)).prop_map(|(n, d)| Op::Reset(n, d)),
        3 => (step(far), budget).prop_map(|(s, b)| Op::Advance(s, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Deadlines within the near window: `next_expiry` must be exact at every step.
    #[test]
    fn near_deadlines_match_the_model(start in 0u64..1 << 40, ops in prop::collection::vec(op(false), 1..300)) {
        run(start, ops);
    }

    /// Deadlines anywhere, including across many far-ring rotations and overflow.
    #[test]
    fn any_deadlines_match_the_model(start in 0u64..1 << 40, ops in prop::collection::vec(op(true), 1..300)) {
        run(start, ops);
    }

    /// The clock close to `u64::MAX`: saturating deadlines, the end of time.
    #[test]
    fn the_end_of_time_matches_the_model(
        before_end in prop_oneof![0u64..100, 0..10 * FAR_TICKS, 0u64..1 << 42],
        ops in prop::collection::vec(op(true), 1..200),
    ) {
        run(u64::MAX - before_end, ops);
    }
}
