//! Incremental UTF-8 validation that fails at the first invalid byte.
//!
//! A text message may arrive in many pieces (fragments, and reads within a fragment).
//! [`Utf8Validator`] checks each piece as soon as it is unmasked and carries at most
//! three bytes of an unfinished code point to the next piece. `core::str::from_utf8`
//! already reports a truncated-but-valid prefix (`error_len() == None`) apart from an
//! invalid sequence (`Some(_)`), and checks the second byte of a sequence against the
//! narrowed ranges of RFC 3629 (so `F4 90` beyond U+10FFFF, `ED A0` surrogates and
//! `E0 80` / `F0 80` overlong prefixes fail without waiting for the rest).

/// The input was not valid UTF-8 (or ended inside a code point).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct InvalidUtf8;

/// State carried between pieces of one text message: the bytes of a code point
/// whose remaining bytes have not arrived yet.
///
/// Invariant: `pending[..len]` is a valid, incomplete UTF-8 prefix, so `len <= 3`.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct Utf8Validator {
    pending: [u8; 4],
    len: u8,
}

/// What a byte sequence is, as UTF-8.
enum Shape {
    Complete,
    Incomplete,
    Invalid,
}

fn classify(bytes: &[u8]) -> Shape {
    match core::str::from_utf8(bytes) {
        Ok(_) => Shape::Complete,
        Err(e) if e.error_len().is_none() => Shape::Incomplete,
        Err(_) => Shape::Invalid,
    }
}

/// Length of the sequence a valid lead byte starts.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

impl Utf8Validator {
    /// Validates the next piece of the message.
    pub(crate) fn push(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            let held = usize::from(self.len);
            let width = sequence_len(self.pending[0]).ok_or(InvalidUtf8)?;
            debug_assert!(held < width, "held={held} width={width}");
            let take = (width - held).min(piece.len());
            self.pending[held..held + take].copy_from_slice(&piece[..take]);
            let now_held = held + take;
            piece = &piece[take..];
            match classify(&self.pending[..now_held]) {
                Shape::Complete => self.len = 0,
                Shape::Incomplete => {
                    debug_assert!(piece.is_empty(), "a short sequence had more input");
                    self.len = now_held as u8;
                    return Ok(());
                }
                Shape::Invalid => return Err(InvalidUtf8),
            }
        }
        match core::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &piece[e.valid_up_to()..];
                debug_assert!((1..=3).contains(&tail.len()), "tail={tail:?}");
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: an unfinished code point is an error.
    pub(crate) fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(parts: &[&[u8]]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        for p in parts {
            v.push(p)?;
        }
        v.finish()
    }

    #[test]
    fn accepts_code_points_split_anywhere() {
        let text = "aé€𝄞z".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(
                    pieces(&[&text[..a], &text[a..b], &text[b..]]),
                    Ok(()),
                    "{a} {b}"
                );
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(pieces(&bytes), Ok(()));
    }

    #[test]
    fn fails_on_the_first_bad_byte_without_waiting() {
        for bad in [
            &b"\xF4\x90"[..], // beyond U+10FFFF
            b"\xED\xA0",      // surrogate
            b"\xE0\x80",      // overlong 3-byte
            b"\xF0\x80",      // overlong 4-byte
            b"\xC0",          // overlong 2-byte lead
            b"\xC1",
            b"\xF5",
            b"\xFF",
            b"\x80", // stray continuation
        ] {
            let mut v = Utf8Validator::default();
            assert_eq!(v.push(bad), Err(InvalidUtf8), "{bad:?}");
            // Split after the lead byte: the second byte alone must fail.
            if bad.len() == 2 {
                let mut v = Utf8Validator::default();
                assert_eq!(v.push(&bad[..1]), Ok(()));
                assert_eq!(v.push(&bad[1..]), Err(InvalidUtf8), "{bad:?} split");
            }
        }
    }

    #[test]
    fn incomplete_code_point_at_the_end_is_invalid() {
        assert_eq!(pieces(&[b"ok\xE2\x82"]), Err(InvalidUtf8));
        assert_eq!(pieces(&[b"ok\xE2", b"\x82"]), Err(InvalidUtf8));
        assert_eq!(pieces(&[b"ok\xE2", b"\x82", b"\xAC"]), Ok(()));
    }

    #[test]
    fn a_completed_code_point_followed_by_garbage_fails() {
        assert_eq!(pieces(&[b"\xE2", b"\x82\xAC\xFF"]), Err(InvalidUtf8));
        assert_eq!(pieces(&[b"\xE2", b"\x82\x41"]), Err(InvalidUtf8));
    }
}
