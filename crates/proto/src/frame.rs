//! Encoding server frames (RFC 6455 §5.2): unmasked, FIN set, minimal length encoding.
//!
//! The server never fragments and never masks, so a header is 2, 4 or 10 bytes.
//! [`header`] returns just those bytes so a payload shared by many connections can be
//! written with `writev` without copying it into each connection's output.

pub use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Longest server frame header: 2 bytes plus a 64-bit extended length.
pub const MAX_HEADER_LEN: usize = 10;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The header of an unmasked final frame: the bytes in `.0[..len]`, `len` in `.1`.
///
/// Lengths up to 125 use the 7-bit field, up to 65535 the 16-bit one, anything longer
/// the 64-bit one.
///
/// # Examples
///
/// ```
/// use pingwheel_proto::frame::{header, Data, OpCode};
/// let (bytes, len) = header(OpCode::Data(Data::Text), 5);
/// assert_eq!(&bytes[..len], &[0x81, 0x05]);
/// ```
#[must_use]
pub fn header(opcode: OpCode, payload_len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    debug_assert!(
        !matches!(
            opcode,
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_))
        ),
        "reserved opcode {opcode:?}"
    );
    debug_assert!(
        !matches!(opcode, OpCode::Control(_)) || payload_len <= MAX_CONTROL_PAYLOAD,
        "control frame payload {payload_len} > {MAX_CONTROL_PAYLOAD}"
    );
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = 0x80 | u8::from(opcode);
    let len = put_length(&mut bytes, payload_len);
    (bytes, len)
}

/// Writes the minimal length encoding of `payload_len` from `bytes[1]` on (mask bit
/// clear) and returns the header length: 2, 4 or 10.
fn put_length(bytes: &mut [u8; MAX_HEADER_LEN], payload_len: usize) -> usize {
    if payload_len <= 125 {
        bytes[1] = payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Appends a masked client frame to `out`: `first_byte` as given (FIN, RSV and opcode
/// bits, unchecked, so tests can build invalid frames too), the minimal length encoding
/// with the mask bit set, `mask`, and `payload` masked with it.
///
/// The gateway never sends one; the benches and tests use it to play the client.
///
/// # Examples
///
/// ```
/// use pingwheel_proto::frame::encode_client_frame;
/// // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
/// let mut out = Vec::new();
/// encode_client_frame(0x81, b"Hello", [0x37, 0xfa, 0x21, 0x3d], &mut out);
/// assert_eq!(out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
/// ```
pub fn encode_client_frame(first_byte: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = first_byte;
    let len = put_length(&mut bytes, payload.len());
    bytes[1] |= 0x80;
    out.reserve(len + 4 + payload.len());
    out.extend_from_slice(&bytes[..len]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::mask::apply_mask(&mut out[start..], mask, 0);
}

/// Size on the wire of a server frame carrying `payload_len` bytes: header plus payload.
#[must_use]
pub fn frame_len(payload_len: usize) -> usize {
    let header_len = if payload_len <= 125 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    };
    header_len + payload_len
}

/// Appends one unmasked final frame with `payload` to `out`.
///
/// Control frames must carry at most [`MAX_CONTROL_PAYLOAD`] bytes (checked with a
/// `debug_assert!`; the caller controls every payload it sends).
///
/// # Examples
///
/// ```
/// use pingwheel_proto::frame::{encode_frame, Control, OpCode};
/// let mut out = Vec::new();
/// encode_frame(OpCode::Control(Control::Pong), b"hi", &mut out);
/// assert_eq!(out, [0x8a, 0x02, b'h', b'i']);
/// ```
pub fn encode_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let (bytes, len) = header(opcode, payload.len());
    out.reserve(len + payload.len());
    out.extend_from_slice(&bytes[..len]);
    out.extend_from_slice(payload);
}

/// Appends a Close frame with `code` and `reason` to `out`.
///
/// The reason is cut at a `char` boundary so the payload (2-byte code plus reason)
/// stays within [`MAX_CONTROL_PAYLOAD`]. `code` should be one an endpoint may send
/// (RFC 6455 §7.4: not 1005, 1006 or 1015; checked with a `debug_assert!`).
///
/// # Examples
///
/// ```
/// use pingwheel_proto::frame::encode_close;
/// let mut out = Vec::new();
/// encode_close(1000, "bye", &mut out);
/// assert_eq!(out, [0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e']);
/// ```
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    debug_assert!(
        crate::inbound::is_valid_close_code(code),
        "close code {code} may not be sent"
    );
    let reason = truncate_at_char_boundary(reason, MAX_CONTROL_PAYLOAD - 2);
    let (bytes, len) = header(OpCode::Control(Control::Close), 2 + reason.len());
    out.reserve(len + 2 + reason.len());
    out.extend_from_slice(&bytes[..len]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a `char` boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BINARY: OpCode = OpCode::Data(Data::Binary);

    #[test]
    fn rfc_6455_unmasked_examples() {
        // §5.7: a single-frame unmasked text message containing "Hello".
        let mut out = Vec::new();
        encode_frame(TEXT, b"Hello", &mut out);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);

        // §5.7: an unmasked Pong in response to a Ping with "Hello".
        out.clear();
        encode_frame(OpCode::Control(Control::Pong), b"Hello", &mut out);
        assert_eq!(out, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);

        // §5.7: 256 bytes binary in a single unmasked frame.
        out.clear();
        encode_frame(BINARY, &[0xAB; 256], &mut out);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);

        // §5.7: 64 KiB binary in a single unmasked frame.
        out.clear();
        encode_frame(BINARY, &vec![0xCD; 65536], &mut out);
        assert_eq!(out[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        assert_eq!(out.len(), 10 + 65536);
    }

    #[test]
    fn length_encoding_boundaries() {
        for (payload_len, header_len) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            let (bytes, len) = header(BINARY, payload_len);
            assert_eq!(len, header_len, "payload_len={payload_len}");
            assert_eq!(frame_len(payload_len), header_len + payload_len);
            assert_eq!(bytes[0], 0x82);
            match len {
                2 => assert_eq!(usize::from(bytes[1]), payload_len),
                4 => {
                    assert_eq!(bytes[1], 126);
                    assert_eq!(
                        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
                        payload_len
                    );
                }
                _ => {
                    assert_eq!(bytes[1], 127);
                    let mut wide = [0u8; 8];
                    wide.copy_from_slice(&bytes[2..10]);
                    assert_eq!(u64::from_be_bytes(wide), payload_len as u64);
                }
            }
        }
    }

    #[test]
    fn encoded_frames_parse_back_with_tungstenite() {
        use std::io::Cursor;
        use tungstenite::protocol::frame::FrameHeader;
        for payload_len in [0usize, 1, 125, 126, 300, 65535, 65536] {
            let payload = vec![7u8; payload_len];
            let mut out = Vec::new();
            encode_frame(BINARY, &payload, &mut out);
            let mut cursor = Cursor::new(&out[..]);
            let (hdr, len) = FrameHeader::parse(&mut cursor)
                .expect("valid header")
                .expect("complete header");
            assert!(hdr.is_final && hdr.mask.is_none());
            assert_eq!(hdr.opcode, BINARY);
            assert_eq!(len, payload_len as u64);
            assert_eq!(cursor.position() as usize + payload_len, out.len());
        }
    }

    #[test]
    fn close_with_code_and_reason() {
        let mut out = Vec::new();
        encode_close(1002, "", &mut out);
        assert_eq!(out, [0x88, 0x02, 0x03, 0xea]);
        out.clear();
        encode_close(4000, "x", &mut out);
        assert_eq!(out, [0x88, 0x03, 0x0f, 0xa0, b'x']);
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        // 122 ASCII bytes + "é" (2 bytes) = 124 > 123: the "é" must go entirely.
        let reason = format!("{}é", "a".repeat(122));
        let mut out = Vec::new();
        encode_close(1000, &reason, &mut out);
        assert_eq!(out[1], 2 + 122);
        assert_eq!(out.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());

        // Exactly 123 bytes fit.
        out.clear();
        encode_close(1000, &"b".repeat(123), &mut out);
        assert_eq!(out[1], 125);

        // Long multi-byte text: payload is ≤ 125 and still valid UTF-8.
        out.clear();
        encode_close(1001, &"€".repeat(100), &mut out);
        assert!(usize::from(out[1]) <= MAX_CONTROL_PAYLOAD);
        assert_eq!(out.len(), 2 + usize::from(out[1]));
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
