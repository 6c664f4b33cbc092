//! Positions in a stream, `(epoch, seq)`, and the recovery decision.
//!
//! Every channel and every user's personal stream (`#user`) has a position: `seq`
//! counts 1, 2, 3, … with no gaps within an **epoch**, and the epoch is a short random
//! string that changes whenever the history behind the position is lost (a restart of
//! the in-memory engine, a channel whose state was forgotten or whose kept messages
//! were evicted early). Positions of different epochs are incomparable. A new epoch
//! starts at seq 0 (nothing published yet); its first publish is seq 1.
//!
//! Pure: no clock, no IO. Epochs are drawn from a caller-owned [`fastrand::Rng`], so
//! tests seed it.

use std::fmt;

/// Length of an epoch in bytes.
pub const EPOCH_LEN: usize = 8;

const EPOCH_ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A stream's epoch: [`EPOCH_LEN`] characters of `[A-Za-z0-9]` (never a `:`, so
/// `CHANNEL:SEQ:EPOCH` parses from the right).
///
/// Invariant: every byte is in `[A-Za-z0-9]` (kept by [`Epoch::random`] and
/// [`Epoch::parse`], the only public constructors; the crate's `Epoch::NONE`
/// sentinel never leaves the structures that use it), so [`Epoch::as_str`] needs no
/// check.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// Not an epoch (all zero bytes, which [`Epoch::parse`] never returns): a compact
    /// "none" for structures that cannot afford an `Option`'s extra word.
    pub(crate) const NONE: Epoch = Epoch([0; EPOCH_LEN]);

    /// A fresh random epoch (62^8 ≈ 2·10^14 values).
    pub fn random(rng: &mut fastrand::Rng) -> Epoch {
        let mut bytes = [0u8; EPOCH_LEN];
        for b in &mut bytes {
            *b = EPOCH_ALPHABET[rng.usize(..EPOCH_ALPHABET.len())];
        }
        Epoch(bytes)
    }

    /// A fresh random epoch different from `old`.
    pub fn random_other_than(rng: &mut fastrand::Rng, old: Epoch) -> Epoch {
        loop {
            let epoch = Epoch::random(rng);
            if epoch != old {
                return epoch;
            }
        }
    }

    /// The epoch spelled `s`, if `s` is one ([`EPOCH_LEN`] characters of
    /// `[A-Za-z0-9]`). Anything else can never equal a stream's epoch.
    pub fn parse(s: &str) -> Option<Epoch> {
        let bytes: [u8; EPOCH_LEN] = s.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Epoch(bytes))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        // The invariant: ASCII alphanumerics only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The epoch's bytes (ASCII).
    pub fn as_bytes(&self) -> &[u8; EPOCH_LEN] {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.as_str())
    }
}

impl serde::Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream's position: the last `seq` published in `epoch` (0: nothing yet).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Messages published in this epoch; the next publish gets `seq + 1`.
    pub seq: u64,
    /// The epoch the `seq` counts in.
    pub epoch: Epoch,
}

/// A client's last known position, as it sent it (`"since":{"seq":40,"epoch":"…"}`,
/// or `CHANNEL:SEQ:EPOCH` in the URL). The epoch is `None` when the client's text is
/// not an epoch at all (empty, wrong length or characters): it matches no stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Since {
    /// The last seq the client has.
    pub seq: u64,
    /// The epoch that seq counts in.
    pub epoch: Option<Epoch>,
}

impl Since {
    /// `seq` in the epoch spelled `epoch`.
    pub fn new(seq: u64, epoch: &str) -> Since {
        Since {
            seq,
            epoch: Epoch::parse(epoch),
        }
    }
}

impl From<Position> for Since {
    fn from(p: Position) -> Since {
        Since {
            seq: p.seq,
            epoch: Some(p.epoch),
        }
    }
}

/// Why a recovery was refused (`"recovered":false`). Clients see only the boolean;
/// the reason is for logs and tests.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NotRecovered {
    /// The client's epoch is not the stream's: the history behind its position is gone
    /// (a restart, forgotten or evicted state) or the epoch was never valid.
    EpochChanged,
    /// The client claims a seq beyond the stream's top in the same epoch.
    Ahead,
    /// More than `--recovery-max` messages are missing.
    TooManyMissing,
    /// The kept history no longer reaches back to `since + 1` (expired or trimmed to
    /// the namespace's `history_size`, or the namespace keeps none).
    NotKept,
}

impl NotRecovered {
    /// A short label for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotRecovered::EpochChanged => "epoch_changed",
            NotRecovered::Ahead => "ahead",
            NotRecovered::TooManyMissing => "too_many_missing",
            NotRecovered::NotKept => "not_kept",
        }
    }
}

/// What a subscribe with `since` gets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// Deliver every seq in `from..=to` (empty when `from > to`: nothing was missed),
    /// then live messages.
    Recover {
        /// First seq to deliver (`since + 1`).
        from: u64,
        /// Last seq to deliver (the stream's top).
        to: u64,
    },
    /// Deliver nothing from history; the client reloads from its backend.
    Refuse(NotRecovered),
}

impl RecoveryDecision {
    /// True for [`RecoveryDecision::Recover`].
    pub fn is_recovered(&self) -> bool {
        matches!(self, RecoveryDecision::Recover { .. })
    }
}

/// Decides a recovery from `since` for a stream at `top` whose oldest kept message is
/// `oldest_kept` (`top.seq + 1` when nothing is kept), allowing at most `max_missing`
/// messages.
///
/// The rules, in order: another epoch → [`NotRecovered::EpochChanged`]; `since` beyond
/// the top → [`NotRecovered::Ahead`]; nothing missed → recovered with nothing to
/// deliver (even when nothing is kept); more than `max_missing` missing →
/// [`NotRecovered::TooManyMissing`]; history starting after `since + 1` →
/// [`NotRecovered::NotKept`]; otherwise recovered. Never partial.
///
/// # Examples
///
/// ```
/// use pingwheel::engine::position::*;
/// let epoch = Epoch::parse("Xy3kP0aQ").unwrap();
/// let top = Position { seq: 50, epoch };
/// let since = Since { seq: 40, epoch: Some(epoch) };
/// assert_eq!(decide(since, top, 31, 300), RecoveryDecision::Recover { from: 41, to: 50 });
/// assert_eq!(decide(since, top, 42, 300), RecoveryDecision::Refuse(NotRecovered::NotKept));
/// ```
pub fn decide(since: Since, top: Position, oldest_kept: u64, max_missing: u64) -> RecoveryDecision {
    debug_assert!(
        oldest_kept >= 1 && oldest_kept <= top.seq + 1,
        "oldest_kept={oldest_kept} top={top:?}"
    );
    if since.epoch != Some(top.epoch) {
        return RecoveryDecision::Refuse(NotRecovered::EpochChanged);
    }
    if since.seq > top.seq {
        return RecoveryDecision::Refuse(NotRecovered::Ahead);
    }
    let from = since.seq + 1;
    let missing = top.seq - since.seq;
    if missing == 0 {
        return RecoveryDecision::Recover { from, to: top.seq };
    }
    if missing > max_missing {
        return RecoveryDecision::Refuse(NotRecovered::TooManyMissing);
    }
    if oldest_kept > from {
        return RecoveryDecision::Refuse(NotRecovered::NotKept);
    }
    RecoveryDecision::Recover { from, to: top.seq }
}

/// Parses a URL `since` value, `CHANNEL:SEQ:EPOCH`, from the right (channel names may
/// contain `:`, seqs and epochs never do). The epoch may be empty (`%23user:0:`, "I
/// have no position yet") or any other text that is not an epoch: such a position
/// matches no stream, so its recovery answers `recovered:false`, as in the op form.
/// Returns the channel part and the position.
///
/// # Examples
///
/// ```
/// use pingwheel::engine::position::{parse_url_since, Since};
/// let (channel, since) = parse_url_since("team:7:40:Xy3kP0aQ").unwrap();
/// assert_eq!((channel, since), ("team:7", Since::new(40, "Xy3kP0aQ")));
/// assert!(parse_url_since("scores:forty:Xy3kP0aQ").is_err());
/// ```
pub fn parse_url_since(value: &str) -> Result<(&str, Since), UrlSinceError> {
    let (rest, epoch) = value.rsplit_once(':').ok_or(UrlSinceError::Shape)?;
    let (channel, seq) = rest.rsplit_once(':').ok_or(UrlSinceError::Shape)?;
    if channel.is_empty() {
        return Err(UrlSinceError::Shape);
    }
    // `u64::from_str` takes a leading `+`; a position is plain digits.
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlSinceError::Seq);
    }
    let seq = seq.parse().map_err(|_| UrlSinceError::Seq)?;
    Ok((channel, Since::new(seq, epoch)))
}

/// Why a URL `since` value was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UrlSinceError {
    /// Not `CHANNEL:SEQ:EPOCH`.
    Shape,
    /// The seq is not a decimal number that fits 64 bits.
    Seq,
}

impl fmt::Display for UrlSinceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlSinceError::Shape => "since must be CHANNEL:SEQ:EPOCH",
            UrlSinceError::Seq => "the seq in since must be a decimal number",
        })
    }
}

impl std::error::Error for UrlSinceError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn epoch(s: &str) -> Epoch {
        Epoch::parse(s).unwrap()
    }

    #[test]
    fn epochs_are_eight_alphanumerics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let e = Epoch::random(&mut rng);
            assert_eq!(e.as_str().len(), EPOCH_LEN);
            assert!(e.as_str().bytes().all(|b| b.is_ascii_alphanumeric()), "{e}");
            assert_eq!(Epoch::parse(e.as_str()), Some(e));
        }
        let old = Epoch::random(&mut rng);
        assert_ne!(Epoch::random_other_than(&mut rng, old), old);
        for bad in ["", "short", "Xy3kP0aQ9", "Xy3kP0a:", "Xy3kP0a ", "Xy3kP0aé"] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{:?}", epoch("Xy3kP0aQ")), "Epoch(Xy3kP0aQ)");
    }

    #[test]
    fn decision_table() {
        use NotRecovered::*;
        use RecoveryDecision::*;
        let e = epoch("AAAAAAAA");
        let top = Position { seq: 50, epoch: e };
        let at = |seq| Since {
            seq,
            epoch: Some(e),
        };
        let cases = [
            // (since, oldest kept, max, expected)
            (at(40), 1, 300, Recover { from: 41, to: 50 }),
            (at(40), 41, 300, Recover { from: 41, to: 50 }),
            (at(40), 42, 300, Refuse(NotKept)),
            (at(50), 51, 300, Recover { from: 51, to: 50 }),
            (at(51), 1, 300, Refuse(Ahead)),
            (at(0), 1, 50, Recover { from: 1, to: 50 }),
            (at(0), 1, 49, Refuse(TooManyMissing)),
            (at(39), 1, 10, Refuse(TooManyMissing)),
            (at(40), 1, 10, Recover { from: 41, to: 50 }),
            (
                Since {
                    seq: 40,
                    epoch: Some(epoch("BBBBBBBB")),
                },
                1,
                300,
                Refuse(EpochChanged),
            ),
            (
                Since {
                    seq: 50,
                    epoch: None,
                },
                1,
                300,
                Refuse(EpochChanged),
            ),
        ];
        for (since, oldest, max, want) in cases {
            assert_eq!(
                decide(since, top, oldest, max),
                want,
                "{since:?} {oldest} {max}"
            );
        }
    }

    #[test]
    fn url_since_parses_from_the_right() {
        let ok = [
            ("scores:40:Xy3kP0aQ", "scores", 40, Some("Xy3kP0aQ")),
            ("a:b:c:0:Xy3kP0aQ", "a:b:c", 0, Some("Xy3kP0aQ")),
            ("#user:0:", "#user", 0, None),
            ("scores:4:not-an-epoch", "scores", 4, None),
            (
                "#user:18446744073709551615:Xy3kP0aQ",
                "#user",
                u64::MAX,
                Some("Xy3kP0aQ"),
            ),
        ];
        for (text, channel, seq, ep) in ok {
            let (c, since) = parse_url_since(text).unwrap();
            assert_eq!(
                (c, since.seq, since.epoch),
                (channel, seq, ep.map(epoch)),
                "{text}"
            );
        }
        let bad = [
            ("scores", UrlSinceError::Shape),
            ("scores:40", UrlSinceError::Shape),
            (":40:Xy3kP0aQ", UrlSinceError::Shape),
            ("scores::Xy3kP0aQ", UrlSinceError::Seq),
            ("scores:+4:Xy3kP0aQ", UrlSinceError::Seq),
            ("scores:-4:Xy3kP0aQ", UrlSinceError::Seq),
            ("scores:18446744073709551616:Xy3kP0aQ", UrlSinceError::Seq),
        ];
        for (text, want) in bad {
            assert_eq!(parse_url_since(text), Err(want), "{text}");
        }
    }

    proptest! {
        /// Recovered means exactly: same epoch, not ahead, and either nothing missed or
        /// every missed seq kept and no more than the maximum missing.
        #[test]
        fn decide_matches_its_definition(
            top in 0u64..1000, since in 0u64..1100, kept in 0u64..1100, max in 0u64..400, same: bool,
        ) {
            let e = epoch("AAAAAAAA");
            let oldest = kept.min(top) + 1;
            let since_epoch = if same { e } else { epoch("BBBBBBBB") };
            let d = decide(Since { seq: since, epoch: Some(since_epoch) }, Position { seq: top, epoch: e }, oldest, max);
            let expect = same && since <= top && (since == top || (top - since <= max && oldest <= since + 1));
            prop_assert_eq!(d.is_recovered(), expect);
            if let RecoveryDecision::Recover { from, to } = d {
                prop_assert_eq!((from, to), (since + 1, top));
            }
        }

        #[test]
        fn url_since_round_trips(channel in "[!-~]{1,40}", seq: u64, ep in "[A-Za-z0-9]{8}") {
            let text = format!("{channel}:{seq}:{ep}");
            let (c, since) = parse_url_since(&text).unwrap();
            prop_assert_eq!(c, channel.as_str());
            prop_assert_eq!(since, Since::new(seq, &ep));
        }
    }
}
