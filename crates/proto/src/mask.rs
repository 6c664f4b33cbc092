//! Unmasking client payloads (RFC 6455 §5.3): payload byte `i` is XORed with
//! `mask[i % 4]`. This is on the hot path of every inbound frame, so it works on
//! eight bytes at a time.

/// XORs `buf` in place with `mask`, where `buf[0]` is payload byte number `offset`
/// of its frame (only `offset % 4` matters). Applying it twice restores the input.
#[inline]
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Little-endian words throughout: byte `j` of a word is bits `8j..8j + 8`, so
    // rotating right by 8 bits per byte of offset brings `mask[offset % 4]` to byte 0.
    // Integer rotation (rather than building the rotated bytes one by one) keeps the
    // mask in a register.
    let word = u32::from_le_bytes(mask).rotate_right(8 * (offset % 4) as u32);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for chunk in words {
        *chunk = (u64::from_le_bytes(*chunk) ^ wide).to_le_bytes();
    }
    // `tail` starts at a multiple of 8, so its mask phase is that of `buf[0]` again.
    let rotated = word.to_le_bytes();
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::apply_mask;

    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_bytewise_masking_at_every_length_and_offset() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            for offset in 0..8 {
                let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply_mask(&mut fast, mask, offset);
                naive(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len={len} offset={offset}");
                apply_mask(&mut fast, mask, offset);
                assert_eq!(fast, original, "masking twice is the identity");
            }
        }
    }

    #[test]
    fn rfc_6455_hello_example() {
        // §5.7: a masked text frame containing "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn split_masking_equals_whole_masking() {
        let mask = [1, 2, 3, 4];
        let original: Vec<u8> = (0..=255).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        for cut in 0..original.len() {
            let mut split = original.clone();
            let (a, b) = split.split_at_mut(cut);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, cut);
            assert_eq!(split, whole, "cut={cut}");
        }
    }
}
