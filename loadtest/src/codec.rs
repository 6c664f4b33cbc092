//! The client side of RFC 6455 framing, on caller-owned buffers.
//!
//! Encoding: every client frame is masked with a fresh key (RFC 6455 §5.3 requires a
//! mask the server cannot predict; a cheap PRNG is enough for a load generator).
//! Decoding: server frames are parsed in place with tungstenite's [`FrameHeader`]; a
//! partial frame is reported as `Ok(None)` and nothing is consumed, so the caller keeps
//! the bytes only while they are partial.
//!
//! **Deliberately the harness's own.** This codec shares no code with the gateway's
//! frame reader and encoder (`crates/proto`), and the harness never imports the
//! gateway: a load test is also a check of the server, and a bug shared by both sides
//! would pass unseen. The only common ground is tungstenite's header parser, written
//! by others. Keep it that way when the server's codec changes.

use std::fmt;
use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
pub use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// One frame from the server, borrowing its payload from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    /// The FIN bit: last frame of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The (unmasked) payload.
    pub payload: &'a [u8],
}

/// A server frame that breaks RFC 6455 or our limits. The connection is failed with
/// [`FrameError::cause`] as the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Servers must not mask frames (RFC 6455 §5.1).
    MaskedByServer,
    /// RSV bits set although no extension was negotiated.
    ReservedBits,
    /// A reserved opcode.
    BadOpcode,
    /// A control frame longer than 125 bytes or fragmented.
    BadControlFrame,
    /// A payload over the configured limit.
    TooBig,
}

impl FrameError {
    /// The failure-cause label used in reports.
    pub fn cause(self) -> &'static str {
        match self {
            Self::TooBig => "message_too_big",
            Self::MaskedByServer | Self::ReservedBits | Self::BadOpcode | Self::BadControlFrame => {
                "protocol_error"
            }
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaskedByServer => "server sent a masked frame",
            Self::ReservedBits => "server set RSV bits without an extension",
            Self::BadOpcode => "server used a reserved opcode",
            Self::BadControlFrame => "server sent an oversized or fragmented control frame",
            Self::TooBig => "server frame exceeds the size limit",
        })
    }
}

impl std::error::Error for FrameError {}

/// Decodes the first frame in `buf`. Returns the frame and how many bytes it used, or
/// `Ok(None)` when `buf` holds only part of a frame (nothing is consumed then).
pub fn decode_frame(
    buf: &[u8],
    max_payload: u64,
) -> Result<Option<(ServerFrame<'_>, usize)>, FrameError> {
    let mut cursor = Cursor::new(buf);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::BadOpcode),
    };
    if header.mask.is_some() {
        return Err(FrameError::MaskedByServer);
    }
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::ReservedBits);
    }
    if matches!(header.opcode, OpCode::Control(_)) && (length > 125 || !header.is_final) {
        return Err(FrameError::BadControlFrame);
    }
    if length > max_payload {
        return Err(FrameError::TooBig);
    }
    // `cursor.position()` ≤ 14 and `length` ≤ `max_payload`, which callers keep far
    // below `usize::MAX`.
    let start = cursor.position() as usize;
    let end = start + length as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        ServerFrame {
            fin: header.is_final,
            opcode: header.opcode,
            payload: &buf[start..end],
        },
        end,
    )))
}

/// Appends one masked, final client frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: Some(mask),
    };
    out.reserve(header.len(payload.len() as u64) + payload.len());
    // Writing into a `Vec` cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends a masked close frame carrying `code` (and no reason text).
pub fn encode_close(out: &mut Vec<u8>, code: u16, mask: [u8; 4]) {
    encode_frame(
        out,
        OpCode::Control(Control::Close),
        &code.to_be_bytes(),
        mask,
    );
}

/// The status code of a close frame's payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [high, low, ..] => Some(u16::from_be_bytes([*high, *low])),
        _ => None,
    }
}

/// XORs `data` with the 4-byte `mask` (RFC 6455 §5.3); applying it twice restores the
/// data.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Chunks of 8 keep the mask phase aligned, so the tail starts at mask[0].
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            OpCode::Data(Data::Text),
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn rfc6455_unmasked_server_frames() {
        // RFC 6455 §5.7: unmasked "Hello", then an unmasked ping with "Hello".
        let bytes = [
            0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f,
        ];
        let (first, used) = decode_frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(used, 7);
        assert_eq!(first.opcode, OpCode::Data(Data::Text));
        assert!(first.fin);
        assert_eq!(first.payload, b"Hello");
        let (second, used2) = decode_frame(&bytes[used..], 1 << 20).unwrap().unwrap();
        assert_eq!(used2, 7);
        assert_eq!(second.opcode, OpCode::Control(Control::Ping));
        assert_eq!(second.payload, b"Hello");
    }

    #[test]
    fn partial_frames_consume_nothing() {
        let mut frame = vec![0x82, 126, 0x01, 0x00];
        frame.extend(std::iter::repeat_n(7u8, 256));
        for cut in 0..frame.len() {
            assert_eq!(
                decode_frame(&frame[..cut], 1 << 20),
                Ok(None),
                "cut at {cut}"
            );
        }
        let (whole, used) = decode_frame(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!((whole.payload.len(), used), (256, frame.len()));
    }

    #[test]
    fn server_protocol_violations() {
        let masked = [0x81, 0x81, 1, 2, 3, 4, 0x61];
        assert_eq!(decode_frame(&masked, 100), Err(FrameError::MaskedByServer));
        assert_eq!(
            decode_frame(&[0xc1, 0x00], 100),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(decode_frame(&[0x83, 0x00], 100), Err(FrameError::BadOpcode));
        assert_eq!(
            decode_frame(&[0x09, 0x00], 100),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            decode_frame(&[0x89, 126, 0, 126], 1000),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(decode_frame(&[0x82, 101], 100), Err(FrameError::TooBig));
    }

    #[test]
    fn masking_round_trips_at_every_length_and_matches_bytewise_xor() {
        let mask = [0xa1, 0x02, 0xff, 0x5c];
        for len in 0..40 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, mask);
            let expected: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(data, expected, "len {len}");
            apply_mask(&mut data, mask);
            assert_eq!(data, original);
        }
    }

    #[test]
    fn encoded_frames_decode_after_unmasking() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mask = [9, 8, 7, 6];
            let mut out = Vec::new();
            encode_frame(&mut out, OpCode::Data(Data::Binary), &payload, mask);
            // Strip the mask the way a server would, then decode as a server frame.
            let mut cursor = Cursor::new(&out[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(header.mask, Some(mask));
            assert_eq!(length, len as u64);
            let start = cursor.position() as usize;
            let mut body = out[start..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn close_frames() {
        let mut out = Vec::new();
        encode_close(&mut out, 1000, [0, 0, 0, 0]);
        assert_eq!(out, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        assert_eq!(close_code(&[0x03, 0xe8, b'b', b'y', b'e']), Some(1000));
        assert_eq!(close_code(&[]), None);
    }
}
