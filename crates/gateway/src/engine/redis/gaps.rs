//! Per-stream order on one node: every live message a node hands to its workers has
//! the next seq of its stream, or the node first fetches the missing ones from the
//! stream's history, or it reports the position lost.
//!
//! Redis pub/sub is at-most-once: a message published while a node's pub/sub
//! connection is being re-established, or dropped when a slow subscriber's output
//! buffer overflows, never arrives. Every live message carries its position
//! ([`super::message`]), so a node notices: for each stream it subscribes, an
//! [`Order`] keeps the last seq it passed on and checks each new one.
//!
//! | state | a message `(seq, epoch)` |
//! |---|---|
//! | nothing seen yet | is passed on and becomes the mark |
//! | mark `(s, e)` | `epoch == e`: `seq <= s` is a duplicate (dropped), `seq == s + 1` is passed on, `seq > s + 1` opens a [`Gap`] `s+1 ..= seq-1`; another epoch (a new one: seq restarts at 1): `seq == 1` is passed on, a higher seq opens the gap `1 ..= seq-1` of the new epoch |
//! | refilling a gap | is held (at most [`MAX_HELD`]) until the refill comes back |
//!
//! The caller fetches a gap's messages (`XRANGE`, on the broker runtime) and hands the
//! result to [`Order::refilled`]: the refilled messages, then the held ones, are passed
//! on in order (a held one may open the next gap). When the history no longer has
//! them, the outcome is [`Refilled::Lost`]: the node tells the stream's subscribers
//! `position_lost` with the newest position it knows, drops what it held (the clients
//! recover it from history, or reload), and continues from there.
//!
//! The same check runs after a reconnect ([`Order::check_top`]): a top beyond the mark
//! means messages were published while this node was not listening.
//!
//! Pure and generic over the epoch type and the message payload: no IO, no clock.

use std::mem;

/// Live messages held behind one gap at most; one more and the gap is reported lost.
pub const MAX_HELD: usize = 4096;

/// A range of seqs of one epoch the node has not seen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Gap<E> {
    /// The epoch they count in.
    pub epoch: E,
    /// First missing seq.
    pub from: u64,
    /// Last missing seq.
    pub to: u64,
}

impl<E> Gap<E> {
    /// How many messages are missing.
    pub fn len(&self) -> u64 {
        self.to - self.from + 1
    }

    /// Never true: a gap misses at least one message (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a refill ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refilled<E> {
    /// Every missing message came back; the stream is in order again.
    Done,
    /// A held message opened another gap: fetch it too.
    Again(Gap<E>),
    /// The missing messages are gone: tell the subscribers their position is lost;
    /// the node now continues after `(seq, epoch)`.
    Lost {
        /// The epoch of the newest known position.
        epoch: E,
        /// Its seq.
        seq: u64,
    },
}

#[derive(Debug)]
struct Held<E, T> {
    seq: u64,
    epoch: E,
    item: T,
}

#[derive(Debug, Default)]
enum State<E, T> {
    /// Nothing seen yet.
    #[default]
    Unknown,
    /// Everything up to `seq` of `epoch` was passed on.
    Live { epoch: E, seq: u64 },
    /// Everything up to `seq` of `epoch` was passed on; `gap` is being fetched and
    /// `held` arrived meanwhile, in arrival order.
    Refilling {
        epoch: E,
        seq: u64,
        gap: Gap<E>,
        held: Vec<Held<E, T>>,
    },
}

/// One stream's order check on one node. See the module docs.
#[derive(Debug, Default)]
pub struct Order<E, T> {
    state: State<E, T>,
}

impl<E: Copy + Eq, T> Order<E, T> {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Order {
            state: State::Unknown,
        }
    }

    /// The last position passed on, if any.
    pub fn mark(&self) -> Option<(E, u64)> {
        match self.state {
            State::Unknown => None,
            State::Live { epoch, seq } | State::Refilling { epoch, seq, .. } => Some((epoch, seq)),
        }
    }

    /// Whether a refill is outstanding.
    pub fn is_refilling(&self) -> bool {
        matches!(self.state, State::Refilling { .. })
    }

    /// Starts the mark at a position read from Redis when nothing was seen yet (so a
    /// message lost right after the node subscribed is noticed too). A known mark is
    /// left alone: messages up to a newer top may still be in flight.
    pub fn start_at(&mut self, epoch: E, seq: u64) {
        if matches!(self.state, State::Unknown) {
            self.state = State::Live { epoch, seq };
        }
    }

    /// Checks one live message: passes it (pushed onto `out`), drops a duplicate,
    /// holds it behind a refill, or opens a gap (returned; the message is held).
    pub fn message(&mut self, seq: u64, epoch: E, item: T, out: &mut Vec<T>) -> Option<Gap<E>> {
        match &mut self.state {
            State::Unknown => {
                self.state = State::Live { epoch, seq };
                out.push(item);
                None
            }
            State::Live { .. } => self.step(seq, epoch, item, out),
            State::Refilling { held, .. } => {
                if held.len() >= MAX_HELD {
                    // Report the whole backlog lost on the next refill outcome: keep
                    // only the newest so the lost position is current.
                    held.clear();
                }
                held.push(Held { seq, epoch, item });
                None
            }
        }
    }

    /// The step from a live mark (the state is `Live`).
    fn step(&mut self, seq: u64, epoch: E, item: T, out: &mut Vec<T>) -> Option<Gap<E>> {
        let State::Live {
            epoch: mark_epoch,
            seq: mark_seq,
        } = self.state
        else {
            unreachable!("step from a live mark only");
        };
        let (base_epoch, base_seq) = if epoch == mark_epoch {
            (mark_epoch, mark_seq)
        } else {
            (epoch, 0) // a new epoch starts at 1
        };
        if epoch == mark_epoch && seq <= mark_seq {
            return None; // duplicate
        }
        if seq == base_seq + 1 {
            self.state = State::Live { epoch, seq };
            out.push(item);
            return None;
        }
        let gap = Gap {
            epoch,
            from: base_seq + 1,
            to: seq - 1,
        };
        self.state = State::Refilling {
            epoch: base_epoch,
            seq: base_seq,
            gap,
            held: vec![Held { seq, epoch, item }],
        };
        Some(gap)
    }

    /// Checks the stream's top as read from Redis (after a reconnect, or a periodic
    /// check): returns the gap to fetch when messages past the mark exist that the
    /// node never got. Nothing to do while unknown, refilling, or in another epoch
    /// with nothing published (its first message starts it).
    pub fn check_top(&mut self, epoch: E, top: u64) -> Option<Gap<E>> {
        let State::Live {
            epoch: mark_epoch,
            seq: mark_seq,
        } = self.state
        else {
            return None;
        };
        let base = if epoch == mark_epoch { mark_seq } else { 0 };
        if top <= base {
            return None;
        }
        let gap = Gap {
            epoch,
            from: base + 1,
            to: top,
        };
        self.state = State::Refilling {
            epoch: if epoch == mark_epoch {
                mark_epoch
            } else {
                epoch
            },
            seq: base,
            gap,
            held: Vec::new(),
        };
        Some(gap)
    }

    /// Hands back the messages fetched for the outstanding gap: `Some(entries)` as
    /// `(seq, item)` in seq order (the history read; entries outside the gap are
    /// ignored), `None` when they could not be read or are not kept. Passes on, onto
    /// `out`, the refilled messages and then the held ones, in order.
    pub fn refilled(&mut self, entries: Option<Vec<(u64, T)>>, out: &mut Vec<T>) -> Refilled<E> {
        let State::Refilling {
            epoch,
            seq,
            gap,
            held,
        } = mem::take(&mut self.state)
        else {
            debug_assert!(false, "refilled without a refill");
            return Refilled::Done;
        };
        let mut cursor = seq;
        let mut complete = false;
        if let Some(entries) = entries {
            let start = out.len();
            for (s, item) in entries {
                if s < gap.from || s > gap.to {
                    continue;
                }
                if s != cursor + 1 {
                    break; // a hole inside the history itself
                }
                cursor = s;
                out.push(item);
            }
            complete = cursor == gap.to;
            if !complete {
                out.truncate(start); // never partial
                cursor = seq;
            }
        }
        if !complete {
            let (lost_epoch, lost_seq) = held
                .last()
                .map_or((gap.epoch, gap.to), |h| (h.epoch, h.seq.max(gap.to)));
            self.state = State::Live {
                epoch: lost_epoch,
                seq: lost_seq,
            };
            return Refilled::Lost {
                epoch: lost_epoch,
                seq: lost_seq,
            };
        }
        let _ = epoch;
        self.state = State::Live {
            epoch: gap.epoch,
            seq: cursor,
        };
        let mut rest = held.into_iter();
        while let Some(h) = rest.next() {
            if let Some(next) = self.step(h.seq, h.epoch, h.item, out) {
                if let State::Refilling { held, .. } = &mut self.state {
                    held.extend(rest);
                }
                return Refilled::Again(next);
            }
        }
        Refilled::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type O = Order<char, u64>;

    fn feed(o: &mut O, seq: u64, epoch: char, out: &mut Vec<u64>) -> Option<Gap<char>> {
        o.message(seq, epoch, seq, out)
    }

    #[test]
    fn in_order_passes_and_duplicates_drop() {
        let mut o = O::new();
        let mut out = Vec::new();
        for s in [5, 6, 6, 4, 7] {
            assert_eq!(feed(&mut o, s, 'a', &mut out), None);
        }
        assert_eq!(out, [5, 6, 7]);
        assert_eq!(o.mark(), Some(('a', 7)));
    }

    #[test]
    fn a_gap_is_refilled_then_held_messages_follow() {
        let mut o = O::new();
        let mut out = Vec::new();
        o.start_at('a', 10);
        let gap = feed(&mut o, 13, 'a', &mut out).unwrap();
        assert_eq!(
            gap,
            Gap {
                epoch: 'a',
                from: 11,
                to: 12
            }
        );
        assert_eq!(gap.len(), 2);
        assert_eq!(feed(&mut o, 14, 'a', &mut out), None);
        assert!(o.is_refilling() && out.is_empty());
        let r = o.refilled(Some(vec![(11, 11), (12, 12)]), &mut out);
        assert_eq!(r, Refilled::Done);
        assert_eq!(out, [11, 12, 13, 14]);
        assert_eq!(o.mark(), Some(('a', 14)));
    }

    #[test]
    fn a_held_message_can_open_the_next_gap() {
        let mut o = O::new();
        let mut out = Vec::new();
        o.start_at('a', 0);
        feed(&mut o, 2, 'a', &mut out).unwrap();
        feed(&mut o, 4, 'a', &mut out);
        feed(&mut o, 5, 'a', &mut out);
        let r = o.refilled(Some(vec![(1, 1)]), &mut out);
        assert_eq!(
            r,
            Refilled::Again(Gap {
                epoch: 'a',
                from: 3,
                to: 3
            })
        );
        assert_eq!(out, [1, 2]);
        assert_eq!(o.refilled(Some(vec![(3, 3)]), &mut out), Refilled::Done);
        assert_eq!(out, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn missing_history_is_lost_at_the_newest_position_never_partial() {
        let mut o = O::new();
        let mut out = Vec::new();
        o.start_at('a', 10);
        feed(&mut o, 14, 'a', &mut out).unwrap();
        feed(&mut o, 15, 'a', &mut out);
        // Only 12..13 are still kept: nothing of it goes out.
        let r = o.refilled(Some(vec![(12, 12), (13, 13)]), &mut out);
        assert_eq!(
            r,
            Refilled::Lost {
                epoch: 'a',
                seq: 15
            }
        );
        assert!(out.is_empty());
        assert_eq!(feed(&mut o, 16, 'a', &mut out), None);
        assert_eq!(out, [16]);
        // And a failed read is lost as well.
        feed(&mut o, 18, 'a', &mut out).unwrap();
        assert_eq!(
            o.refilled(None, &mut out),
            Refilled::Lost {
                epoch: 'a',
                seq: 18
            }
        );
    }

    #[test]
    fn a_new_epoch_restarts_at_one() {
        let mut o = O::new();
        let mut out = Vec::new();
        o.start_at('a', 40);
        assert_eq!(feed(&mut o, 1, 'b', &mut out), None);
        assert_eq!(out, [1]);
        let gap = feed(&mut o, 4, 'c', &mut out).unwrap();
        assert_eq!(
            gap,
            Gap {
                epoch: 'c',
                from: 1,
                to: 3
            }
        );
        assert_eq!(
            o.refilled(Some(vec![(1, 1), (2, 2), (3, 3)]), &mut out),
            Refilled::Done
        );
        assert_eq!(out, [1, 1, 2, 3, 4]);
        assert_eq!(o.mark(), Some(('c', 4)));
    }

    #[test]
    fn the_top_after_a_reconnect_reveals_what_was_missed() {
        let mut o = O::new();
        let mut out = Vec::new();
        assert_eq!(o.check_top('a', 9), None, "unknown: nothing to compare");
        o.start_at('a', 5);
        o.start_at('a', 1); // a known mark is kept
        assert_eq!(o.check_top('a', 5), None);
        assert_eq!(
            o.check_top('a', 8),
            Some(Gap {
                epoch: 'a',
                from: 6,
                to: 8
            })
        );
        assert_eq!(o.check_top('a', 9), None, "one refill at a time");
        feed(&mut o, 9, 'a', &mut out);
        assert_eq!(
            o.refilled(Some(vec![(6, 6), (7, 7), (8, 8)]), &mut out),
            Refilled::Done
        );
        assert_eq!(out, [6, 7, 8, 9]);
        // Another epoch with nothing published: wait for its first message.
        assert_eq!(o.check_top('z', 0), None);
        assert_eq!(
            o.check_top('z', 2),
            Some(Gap {
                epoch: 'z',
                from: 1,
                to: 2
            })
        );
    }

    #[test]
    fn too_much_held_is_reported_lost() {
        let mut o = O::new();
        let mut out = Vec::new();
        o.start_at('a', 0);
        feed(&mut o, 2, 'a', &mut out).unwrap();
        for s in 3..(3 + MAX_HELD as u64 + 10) {
            feed(&mut o, s, 'a', &mut out);
        }
        let r = o.refilled(Some(vec![(1, 1)]), &mut out);
        // The held backlog overflowed: what is left opens the next gap, nothing is
        // passed on out of order.
        let Refilled::Again(gap) = r else {
            panic!("{r:?}")
        };
        assert_eq!(gap.from, 2);
        assert_eq!(out, [1]);
    }

    proptest! {
        /// Whatever subset of 1..=n arrives, in order, with duplicates, and whatever
        /// the history still keeps: what is passed on is strictly increasing and
        /// contiguous between the reported losses, and everything is passed on when
        /// the history keeps everything.
        #[test]
        fn passes_contiguous_runs(
            arrive in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..200),
            kept_from in 1u64..250,
        ) {
            let n = arrive.len() as u64;
            let mut o = O::new();
            o.start_at('a', 0);
            let mut out = Vec::new();
            let mut pending: Option<Gap<char>> = None;
            let mut lost_at = Vec::new();
            let refill = |g: Gap<char>| -> Option<Vec<(u64, u64)>> {
                Some((g.from..=g.to).filter(|&s| s >= kept_from).map(|s| (s, s)).collect())
            };
            for (i, &(shows, dup)) in arrive.iter().enumerate() {
                let seq = i as u64 + 1;
                if shows {
                    if let Some(g) = o.message(seq, 'a', seq, &mut out) { pending = Some(g); }
                    if dup { let _ = o.message(seq, 'a', seq, &mut out); }
                }
                while let Some(g) = pending.take() {
                    match o.refilled(refill(g), &mut out) {
                        Refilled::Done => {}
                        Refilled::Again(g) => pending = Some(g),
                        Refilled::Lost { seq, .. } => lost_at.push(seq),
                    }
                }
            }
            if let Some(g) = o.check_top('a', n) {
                match o.refilled(refill(g), &mut out) {
                    Refilled::Lost { seq, .. } => lost_at.push(seq),
                    Refilled::Done => {}
                    Refilled::Again(_) => prop_assert!(false, "nothing held"),
                }
            }
            prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "{out:?}");
            for w in out.windows(2) {
                if w[1] != w[0] + 1 {
                    prop_assert!(lost_at.iter().any(|&l| l >= w[0] && l < w[1]),
                        "a hole {}..{} without a loss report {lost_at:?}", w[0], w[1]);
                }
            }
            if kept_from == 1 {
                prop_assert_eq!(out, (1..=n).collect::<Vec<_>>());
                prop_assert!(lost_at.is_empty());
            }
        }
    }
}
