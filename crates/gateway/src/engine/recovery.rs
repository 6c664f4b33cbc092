//! The worker's half of positions: per-subscription watermarks, and the merge of a
//! recovery's answer with the live deliveries that arrived while it was pending.
//!
//! A worker never waits for the engine. When a connection subscribes (with or without
//! `since`), the subscription is registered at once and marked pending; the engine's
//! answer (the position, and the recovered frames) comes back later as a command on
//! the worker's link. Meanwhile live deliveries for the subscription are buffered in
//! its [`Pending`] (bounded: the oldest go first, and a loss that matters is reported).
//! When the answer arrives, [`Pending::complete`] returns, in order: the recovered
//! frames the connection has not had, then the buffered live frames after them — so
//! the connection sees every seq at most once and in order, with no gap, however the
//! answer and the live deliveries interleaved. The memory engine answers through the
//! same path (one code path to test).
//!
//! A [`Watermark`] is the last position delivered on one subscription. Every live
//! delivery passes [`Watermark::admit`]: a seq at or below the mark (in the mark's
//! epoch) is a duplicate and is dropped; another epoch resets the mark.
//!
//! Pure: frames in, frames out.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;

use super::position::{Epoch, Position, Since};

/// Live frames one pending subscription buffers at most; older ones are dropped (and
/// reported by [`Merged::lost`] if the answer does not cover them).
pub const MAX_PENDING_FRAMES: usize = 4096;

/// The last position delivered on one subscription (nothing yet: no epoch, seq 0).
/// 16 bytes: the worker keeps one per subscription in its index.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The epoch of the last delivery (or of the position the subscription started
    /// at); [`Epoch::NONE`] for none.
    epoch: Epoch,
    /// The last seq delivered (or the seq the subscription started after).
    seq: u64,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            epoch: Epoch::NONE,
            seq: 0,
        }
    }
}

impl fmt::Debug for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watermark({:?}, {})", self.epoch(), self.seq)
    }
}

impl Watermark {
    /// The mark of a subscription whose subscribe awaits the engine's answer: its live
    /// deliveries go to its [`Pending`] buffer instead of out.
    pub const PENDING: Watermark = Watermark {
        epoch: Epoch::NONE,
        seq: u64::MAX,
    };

    /// The mark of a subscription whose position the engine lost (a gap it could not
    /// refill: `position_lost` was sent): nothing live goes out on it until the client
    /// resubscribes with `since`, so that recovery starts at what the client really has
    /// ([`Watermark::recover_from`] then takes `since` as sent).
    pub const LOST: Watermark = Watermark {
        epoch: Epoch::NONE,
        seq: u64::MAX - 1,
    };

    /// Whether this is [`Watermark::LOST`].
    pub fn is_lost(&self) -> bool {
        *self == Watermark::LOST
    }

    /// Whether this is [`Watermark::PENDING`].
    pub fn is_pending(&self) -> bool {
        *self == Watermark::PENDING
    }

    /// A subscription that starts after `position`.
    pub fn at(position: Position) -> Watermark {
        Watermark {
            epoch: position.epoch,
            seq: position.seq,
        }
    }

    /// The epoch of the mark, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        (self.epoch != Epoch::NONE).then_some(self.epoch)
    }

    /// The seq of the mark.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a live delivery at `(seq, epoch)` goes out, moving the mark if so: yes
    /// for a later seq of the mark's epoch and for any seq of another epoch (a new
    /// epoch restarts the count), no for a duplicate.
    pub fn admit(&mut self, seq: u64, epoch: Epoch) -> bool {
        if self.is_lost() || (self.epoch == epoch && seq <= self.seq) {
            return false;
        }
        self.epoch = epoch;
        self.seq = seq;
        true
    }

    /// The position to recover from on this subscription for a client that sent
    /// `since`: after `max(since, mark)` when both count in the same epoch (a
    /// connection never gets a seq twice), else `since` as sent.
    pub fn recover_from(&self, since: Since) -> Since {
        match (self.epoch(), since.epoch) {
            (Some(mine), Some(theirs)) if mine == theirs && self.seq > since.seq => Since {
                seq: self.seq,
                epoch: Some(mine),
            },
            _ => since,
        }
    }
}

/// One live delivery as the worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveFrame {
    /// Its seq.
    pub seq: u64,
    /// Its epoch.
    pub epoch: Epoch,
    /// The encoded frame (shared).
    pub frame: Bytes,
}

/// The engine's answer to one subscribe.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The stream's position when the engine read it.
    pub position: Position,
    /// `None` for a subscribe without `since`; otherwise whether it was recovered.
    pub recovered: Option<bool>,
    /// When recovered: the frames of `first_seq..=position.seq`, in order.
    pub frames: Vec<Bytes>,
    /// Seq of `frames[0]`.
    pub first_seq: u64,
}

/// What a completed subscribe sends, after its `subscribed` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Whether the reply says `recovered:true` (`None`: no `since` was given). False
    /// also when the answer said recovered but buffered live frames the connection
    /// needs were dropped ([`MAX_PENDING_FRAMES`]).
    pub recovered: Option<bool>,
    /// Frames to send, in order: recovered ones, then live ones.
    pub frames: Vec<Bytes>,
    /// A subscribe without `since` lost buffered live frames it needed: the worker
    /// tells the client its position is lost (it resubscribes with `since`).
    pub lost: bool,
    /// Recovered frames handed out (for `pingwheel_recovered_messages_total`).
    pub recovered_count: usize,
}

/// One subscription waiting for its engine answer.
#[derive(Debug, Default)]
pub struct Pending {
    /// Live frames that arrived meanwhile, oldest first.
    buffer: VecDeque<LiveFrame>,
    /// The latest frame dropped from the full buffer (its seq and epoch).
    dropped: Option<(u64, Epoch)>,
}

impl Pending {
    /// A pending subscription with nothing buffered yet.
    pub fn new() -> Pending {
        Pending::default()
    }

    /// Buffers a live delivery that arrived before the answer.
    pub fn buffer(&mut self, frame: LiveFrame) {
        if self.buffer.len() == MAX_PENDING_FRAMES
            && let Some(old) = self.buffer.pop_front()
        {
            self.dropped = Some((old.seq, old.epoch));
        }
        self.buffer.push_back(frame);
    }

    /// The engine lost messages up to `(seq, epoch)` of this stream while the answer
    /// was pending: unless the answer covers them, the merge reports the loss (never
    /// a silent gap).
    pub fn lost(&mut self, seq: u64, epoch: Epoch) {
        if self.dropped.is_none_or(|(s, e)| e != epoch || s < seq) {
            self.dropped = Some((seq, epoch));
        }
    }

    /// Frames buffered now.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Merges the engine's `answer` with what was buffered, for a subscription whose
    /// last delivered position is `mark` (default for a new subscription), and moves
    /// the mark to the last frame handed out (at least the answer's position).
    pub fn complete(self, answer: Answer, mark: &mut Watermark) -> Merged {
        let epoch = answer.position.epoch;
        let top = answer.position.seq;
        // What this connection already has in the answer's epoch.
        let had = if mark.epoch == epoch { mark.seq } else { 0 };
        let mut cursor = had.max(top);
        // A dropped live frame after everything the answer covers was lost for good.
        let lost = self
            .dropped
            .is_some_and(|(seq, e)| e == epoch && seq > cursor);
        let mut recovered = answer.recovered;
        let mut frames = Vec::new();
        let mut recovered_count = 0;
        if lost && recovered == Some(true) {
            recovered = Some(false); // never partial
        }
        if recovered == Some(true) {
            for (i, frame) in answer.frames.into_iter().enumerate() {
                if answer.first_seq + i as u64 > had {
                    frames.push(frame);
                    recovered_count += 1;
                }
            }
        }
        // Live frames of an epoch the answer does not know are older than it (stale)
        // or raced an epoch change (the client learns the new epoch from the next
        // delivery): dropped either way.
        for live in self.buffer {
            if live.epoch == epoch && live.seq > cursor {
                cursor = live.seq;
                frames.push(live.frame);
            }
        }
        *mark = Watermark { epoch, seq: cursor };
        Merged {
            recovered,
            frames,
            lost: lost && answer.recovered.is_none(),
            recovered_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(s: &str) -> Epoch {
        Epoch::parse(s).unwrap()
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    fn live(seq: u64, epoch: Epoch) -> LiveFrame {
        LiveFrame {
            seq,
            epoch,
            frame: frame(seq),
        }
    }

    fn seqs(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| std::str::from_utf8(f).unwrap().parse().unwrap())
            .collect()
    }

    fn answer(epoch: Epoch, top: u64, recovered: Option<bool>, from: u64) -> Answer {
        Answer {
            position: Position { seq: top, epoch },
            recovered,
            frames: if recovered == Some(true) {
                (from..=top).map(frame).collect()
            } else {
                Vec::new()
            },
            first_seq: from,
        }
    }

    #[test]
    fn a_watermark_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Watermark>(), 16);
    }

    #[test]
    fn watermark_drops_duplicates_and_resets_on_a_new_epoch() {
        let (a, b) = (e("AAAAAAAA"), e("BBBBBBBB"));
        let mut m = Watermark::default();
        assert_eq!((m.epoch(), m.seq()), (None, 0));
        assert!(m.admit(5, a));
        assert!(!m.admit(5, a));
        assert!(!m.admit(3, a));
        assert!(m.admit(6, a));
        assert!(m.admit(1, b), "a new epoch restarts at 1");
        assert!(!m.admit(1, b));
        assert_eq!(
            m.recover_from(Since {
                seq: 0,
                epoch: Some(b)
            }),
            Since {
                seq: 1,
                epoch: Some(b)
            }
        );
        let other = Since {
            seq: 40,
            epoch: Some(a),
        };
        assert_eq!(m.recover_from(other), other);
    }

    #[test]
    fn recovered_then_buffered_live_without_overlap() {
        let a = e("AAAAAAAA");
        let mut p = Pending::new();
        // Live frames published before the read (≤ top) and after it (> top).
        for seq in [49, 50, 51, 52] {
            p.buffer(live(seq, a));
        }
        let mut mark = Watermark::default();
        let m = p.complete(answer(a, 50, Some(true), 41), &mut mark);
        assert_eq!(m.recovered, Some(true));
        assert_eq!(seqs(&m.frames), (41..=52).collect::<Vec<_>>());
        assert_eq!(m.recovered_count, 10);
        assert_eq!(mark, Watermark::at(Position { seq: 52, epoch: a }));
    }

    #[test]
    fn a_plain_subscribe_starts_after_the_top() {
        let a = e("AAAAAAAA");
        let mut p = Pending::new();
        p.buffer(live(7, a));
        p.buffer(live(8, a));
        let mut mark = Watermark::default();
        let m = p.complete(answer(a, 7, None, 8), &mut mark);
        assert_eq!((m.recovered, seqs(&m.frames)), (None, vec![8]));
    }

    #[test]
    fn not_recovered_delivers_nothing_old() {
        let a = e("AAAAAAAA");
        let mut p = Pending::new();
        p.buffer(live(100, a));
        p.buffer(live(101, a));
        let mut mark = Watermark::default();
        let m = p.complete(answer(a, 100, Some(false), 0), &mut mark);
        assert_eq!((m.recovered, seqs(&m.frames)), (Some(false), vec![101]));
    }

    #[test]
    fn in_place_recovery_never_repeats_what_was_delivered() {
        let a = e("AAAAAAAA");
        let mut mark = Watermark::at(Position { seq: 45, epoch: a });
        let from = mark.recover_from(Since {
            seq: 40,
            epoch: Some(a),
        });
        assert_eq!(from.seq, 45);
        let p = Pending::new();
        let m = p.complete(answer(a, 50, Some(true), 41), &mut mark);
        assert_eq!(seqs(&m.frames), (46..=50).collect::<Vec<_>>());
    }

    #[test]
    fn stale_epoch_frames_are_dropped() {
        let (a, b) = (e("AAAAAAAA"), e("BBBBBBBB"));
        let mut p = Pending::new();
        p.buffer(live(9, a)); // published before the reset the read saw
        p.buffer(live(1, b));
        let mut mark = Watermark::default();
        let m = p.complete(answer(b, 0, Some(false), 1), &mut mark);
        assert_eq!(seqs(&m.frames), [1]);
    }

    #[test]
    fn overflow_that_loses_needed_frames_is_reported() {
        let a = e("AAAAAAAA");
        let mut p = Pending::new();
        for seq in 11..=(10 + MAX_PENDING_FRAMES as u64 + 5) {
            p.buffer(live(seq, a));
        }
        assert_eq!(p.buffered(), MAX_PENDING_FRAMES);
        let mut mark = Watermark::default();
        // The read saw top 10: frames 11..=15 were dropped and are needed.
        let m = p.complete(answer(a, 10, Some(true), 5), &mut mark);
        assert_eq!(m.recovered, Some(false), "never partial");
        let mut p = Pending::new();
        for seq in 11..=(10 + MAX_PENDING_FRAMES as u64 + 5) {
            p.buffer(live(seq, a));
        }
        let m = p.complete(answer(a, 10, None, 11), &mut Watermark::default());
        assert!(m.lost);
        // Dropped frames the answer covers are harmless.
        let mut p = Pending::new();
        for seq in 1..=(MAX_PENDING_FRAMES as u64 + 5) {
            p.buffer(live(seq, a));
        }
        let m = p.complete(answer(a, 10, None, 11), &mut Watermark::default());
        assert!(!m.lost);
        assert_eq!(seqs(&m.frames).first(), Some(&11));
    }

    proptest! {
        /// The engine publishes 1..=n in one epoch; the answer is read at an arbitrary
        /// top, and any suffix of the live stream arrives before the answer (the rest
        /// after, through the watermark). The connection sees exactly since+1..=n in
        /// order when recovered, and (top, n] otherwise — no gap, no duplicate.
        #[test]
        fn merge_is_gapless_and_duplicate_free(
            n in 0u64..200, top_pick: u64, since_pick: u64, early_pick: u64, start_pick: u64, recoverable: bool, with_since: bool,
        ) {
            let a = e("AAAAAAAA");
            let top = top_pick % (n + 1);
            let since = since_pick % (top + 1);
            // Live frames that reach the worker before the answer: a contiguous run
            // that may start at or before `top` (sent before the read) and end anywhere.
            let early_end = top + early_pick % (n - top + 1);
            let early_start = start_pick % (top + 1) + 1;
            let mut p = Pending::new();
            for seq in early_start..=early_end {
                p.buffer(live(seq, a));
            }
            let recovered = with_since.then_some(recoverable);
            let answer = answer(a, top, recovered, since + 1);
            let mut mark = Watermark::default();
            let m = p.complete(answer, &mut mark);
            let mut got = seqs(&m.frames);
            for seq in early_end + 1..=n {
                if mark.admit(seq, a) {
                    got.push(seq);
                }
            }
            let start = if recovered == Some(true) { since + 1 } else { top + 1 };
            prop_assert_eq!(got, (start..=n).collect::<Vec<_>>());
        }
    }
}
