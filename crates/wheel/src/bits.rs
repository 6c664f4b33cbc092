//! A fixed-size ring of occupancy bits with O(1) "next set bit, wrapping around".
//!
//! Two levels, like tokio's `Level.occupied`: `words[w]` holds bits `64 w .. 64 w + 63`
//! and bit `w` of `summary` says whether `words[w]` is non-zero. Finding the next set bit
//! looks at one word, then one summary word, then one more word: no loop over slots.

/// `64 * WORDS` bits (`1 <= WORDS <= 64`), searched in ring order.
#[derive(Clone, Debug)]
pub(crate) struct Bits<const WORDS: usize> {
    /// Bit `w` is set exactly when `words[w] != 0`.
    summary: u64,
    /// Bit `i % 64` of `words[i / 64]` is bit `i`.
    words: [u64; WORDS],
}

impl<const WORDS: usize> Bits<WORDS> {
    /// Number of bits in the ring.
    pub(crate) const LEN: usize = {
        assert!(WORDS >= 1 && WORDS <= 64, "the summary word has 64 bits");
        WORDS * 64
    };

    /// All bits clear.
    pub(crate) const fn new() -> Self {
        let _ = Self::LEN; // evaluates the size check at compile time
        Self {
            summary: 0,
            words: [0; WORDS],
        }
    }

    /// Sets bit `i`.
    #[inline]
    pub(crate) fn set(&mut self, i: usize) {
        debug_assert!(i < Self::LEN, "bit {i} out of range {}", Self::LEN);
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        self.summary |= 1 << w;
    }

    /// Clears bit `i`.
    #[inline]
    pub(crate) fn clear(&mut self, i: usize) {
        debug_assert!(i < Self::LEN, "bit {i} out of range {}", Self::LEN);
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        if self.words[w] == 0 {
            self.summary &= !(1 << w);
        }
    }

    /// Whether bit `i` is set.
    #[inline]
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether no bit is set.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.summary == 0
    }

    /// Clears every bit.
    pub(crate) fn clear_all(&mut self) {
        *self = Self::new();
    }

    /// The first set bit at or after `from` in ring order (`from`, `from + 1`, …,
    /// `LEN - 1`, `0`, …, `from - 1`), or `None` when no bit is set.
    #[inline]
    pub(crate) fn next_from(&self, from: usize) -> Option<usize> {
        debug_assert!(from < Self::LEN, "start {from} out of range {}", Self::LEN);
        let w = from / 64;
        // Bits at or after `from` in its own word.
        let here = self.words[w] & (u64::MAX << (from % 64));
        if here != 0 {
            return Some(w * 64 + here.trailing_zeros() as usize);
        }
        // Words after `w`, then words `0..=w` (word `w` can now only hold bits before
        // `from`, since `here` was empty).
        let after = self.summary & u64::MAX.checked_shl(w as u32 + 1).unwrap_or(0);
        let candidates = if after != 0 { after } else { self.summary };
        if candidates == 0 {
            return None;
        }
        let w2 = candidates.trailing_zeros() as usize;
        debug_assert!(
            self.words[w2] != 0,
            "summary bit {w2} set for an empty word; summary={:b}",
            self.summary
        );
        Some(w2 * 64 + self.words[w2].trailing_zeros() as usize)
    }

    /// Checks that `summary` agrees with `words` (for `check_invariants`).
    pub(crate) fn check(&self) {
        for (w, word) in self.words.iter().enumerate() {
            assert_eq!(
                self.summary & (1 << w) != 0,
                *word != 0,
                "summary bit {w} disagrees with word {word:#x}; summary={:b}",
                self.summary
            );
        }
        assert_eq!(
            self.summary >> (WORDS - 1) >> 1,
            0,
            "summary has bits beyond {WORDS} words: {:b}",
            self.summary
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Bits;

    /// The obvious answer, by walking the ring.
    fn slow_next<const W: usize>(bits: &Bits<W>, from: usize) -> Option<usize> {
        (0..Bits::<W>::LEN)
            .map(|k| (from + k) % Bits::<W>::LEN)
            .find(|&i| bits.contains(i))
    }

    #[test]
    fn empty_has_no_next() {
        let bits = Bits::<64>::new();
        assert!(bits.is_empty());
        for from in [0, 1, 63, 64, 4095] {
            assert_eq!(bits.next_from(from), None);
        }
    }

    #[test]
    fn next_from_matches_a_walk_at_word_boundaries() {
        // Every pattern of one or two set bits among the boundary positions, searched
        // from every boundary position and one either side of it.
        let interesting = [
            0, 1, 62, 63, 64, 65, 127, 128, 2047, 2048, 4031, 4032, 4094, 4095,
        ];
        for &a in &interesting {
            for &b in &interesting {
                let mut bits = Bits::<64>::new();
                bits.set(a);
                bits.set(b);
                bits.check();
                for &from in &interesting {
                    assert_eq!(
                        bits.next_from(from),
                        slow_next(&bits, from),
                        "bits {a},{b} from {from}"
                    );
                }
                bits.clear(a);
                bits.clear(b);
                bits.check();
                assert!(bits.is_empty());
            }
        }
    }

    #[test]
    fn small_ring_wraps() {
        let mut bits = Bits::<16>::new();
        assert_eq!(Bits::<16>::LEN, 1024);
        bits.set(3);
        assert_eq!(bits.next_from(4), Some(3));
        assert_eq!(bits.next_from(1023), Some(3));
        bits.set(1023);
        assert_eq!(bits.next_from(4), Some(1023));
        assert_eq!(bits.next_from(0), Some(3));
        bits.check();
        bits.clear_all();
        assert!(bits.is_empty());
    }
}
