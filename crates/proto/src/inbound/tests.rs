//! Byte-literal tests of the frame reader: RFC 6455 vectors, every violation, UTF-8.

use super::*;
use crate::frame::encode_client_frame;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const LIMITS: Limits = Limits {
    max_message_size: 1 << 20,
};

/// A masked client frame with the minimal length encoding.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(u8::from(fin) << 7 | opcode, payload, MASK, &mut out);
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// An owned copy of an item.
type Item = OwnedInbound;

fn text(s: &str) -> Item {
    Item::Text(s.to_owned())
}

/// Feeds `chunks` in order into `reader`, stopping at the first error.
fn feed_chunks(
    reader: &mut MessageReader,
    chunks: &[&[u8]],
    limits: &Limits,
) -> (Vec<Item>, Result<(), ReadError>) {
    let mut items = Vec::new();
    for chunk in chunks {
        let mut chunk = chunk.to_vec();
        if let Err(e) = reader.feed(&mut chunk, limits, |item| {
            items.push(Item::from(item));
            Flow::Continue
        }) {
            return (items, Err(e));
        }
    }
    (items, Ok(()))
}

/// Reads `bytes` as one input.
fn read(bytes: &[u8]) -> (Vec<Item>, Result<(), ReadError>) {
    feed_chunks(&mut MessageReader::new(), &[bytes], &LIMITS)
}

/// Reads `bytes` one byte per call.
fn read_bytewise(bytes: &[u8]) -> (Vec<Item>, Result<(), ReadError>) {
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    feed_chunks(&mut MessageReader::new(), &chunks, &LIMITS)
}

/// Asserts `bytes` fail with `error`, read whole and byte by byte.
#[track_caller]
fn assert_fails(bytes: &[u8], error: ReadError) {
    assert_eq!(read(bytes).1, Err(error), "whole input");
    assert_eq!(read_bytewise(bytes).1, Err(error), "byte by byte");
}

fn protocol(rule: &'static str) -> ReadError {
    ReadError::Protocol(rule)
}

#[test]
fn idle_reader_is_at_most_16_bytes() {
    assert!(
        size_of::<MessageReader>() <= 16,
        "{}",
        size_of::<MessageReader>()
    );
}

#[test]
fn rfc_6455_masked_hello() {
    let mut bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut reader = MessageReader::new();
    let mut items = Vec::new();
    let consumed = reader.feed(&mut bytes, &LIMITS, |item| {
        items.push(Item::from(item));
        Flow::Continue
    });
    assert_eq!(consumed, Ok(11));
    assert_eq!(items, [text("Hello")]);
    assert!(reader.is_idle());
    assert_eq!(reader.buffered_bytes(), 0);
    // Unmasked in place.
    assert_eq!(&bytes[6..], b"Hello");
    assert_eq!(
        read_bytewise(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
        ])
        .0,
        [text("Hello")]
    );
}

#[test]
fn rfc_6455_unmasked_hello_is_refused() {
    assert_fails(
        &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
        protocol("unmasked client frame"),
    );
}

#[test]
fn rfc_6455_fragmented_hello() {
    // §5.7 "Hel" + "lo", here masked as a client must.
    let mut bytes = frame(false, TEXT, b"Hel");
    bytes.extend(frame(true, CONTINUATION, b"lo"));
    assert_eq!(&bytes[..2], &[0x01, 0x83]);
    assert_eq!(read(&bytes), (vec![text("Hello")], Ok(())));
    assert_eq!(read_bytewise(&bytes), (vec![text("Hello")], Ok(())));
}

#[test]
fn rfc_6455_ping_and_pong() {
    let ping = [
        0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(read(&ping), (vec![Item::Ping(b"Hello".to_vec())], Ok(())));
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        read_bytewise(&pong),
        (vec![Item::Pong(b"Hello".to_vec())], Ok(()))
    );
    assert_eq!(
        read(&frame(true, PING, b"")),
        (vec![Item::Ping(Vec::new())], Ok(()))
    );
}

#[test]
fn rfc_6455_256_byte_and_64_kib_binary() {
    let small: Vec<u8> = (0..256).map(|i| i as u8).collect();
    let bytes = frame(true, BINARY, &small);
    assert_eq!(&bytes[..4], &[0x82, 0xFE, 0x01, 0x00]);
    assert_eq!(read(&bytes), (vec![Item::Binary(small.clone())], Ok(())));

    let big: Vec<u8> = (0..65536).map(|i| (i * 31) as u8).collect();
    let bytes = frame(true, BINARY, &big);
    assert_eq!(&bytes[..10], &[0x82, 0xFF, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
    assert_eq!(read(&bytes), (vec![Item::Binary(big.clone())], Ok(())));
    // In uneven reads, through the assembly buffer.
    let chunks: Vec<&[u8]> = bytes.chunks(1000).collect();
    assert_eq!(
        feed_chunks(&mut MessageReader::new(), &chunks, &LIMITS),
        (vec![Item::Binary(big)], Ok(()))
    );
}

#[test]
fn non_minimal_length_encoding_is_refused_from_the_length_alone() {
    let refused = protocol("frame length not minimally encoded");
    // A 16-bit length for 2, 5 and 125 bytes; a 64-bit length for 5 and 65535 bytes.
    let cases: [&[u8]; 5] = [
        &[0x81, 0x80 | 126, 0x00, 0x02],
        &[0x82, 0x80 | 126, 0x00, 0x05],
        &[0x82, 0x80 | 126, 0x00, 125],
        &[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0x00, 0x05],
        &[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
    ];
    for header in cases {
        // Refused before the mask or any payload arrives.
        assert_eq!(read(header).1, Err(refused), "{header:x?}");
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&MASK);
        bytes.extend(std::iter::repeat_n(0, 5));
        assert_fails(&bytes, refused);
    }
    // Continuation frames are held to the same rule.
    let mut bytes = frame(false, TEXT, b"a");
    bytes.extend([0x80, 0x80 | 126, 0x00, 0x01]);
    assert_fails(&bytes, refused);
    // The shortest lengths of each field are accepted.
    assert_eq!(read(&frame(true, BINARY, &[7; 126])).1, Ok(()));
    assert_eq!(read(&frame(true, BINARY, &[7; 65536])).1, Ok(()));
}

#[test]
fn empty_messages() {
    assert_eq!(read(&frame(true, TEXT, b"")), (vec![text("")], Ok(())));
    assert_eq!(
        read(&frame(true, BINARY, b"")),
        (vec![Item::Binary(Vec::new())], Ok(()))
    );
    let mut bytes = frame(false, TEXT, b"");
    bytes.extend(frame(false, CONTINUATION, b""));
    bytes.extend(frame(true, CONTINUATION, b""));
    assert_eq!(read(&bytes), (vec![text("")], Ok(())));
    assert_eq!(read_bytewise(&bytes), (vec![text("")], Ok(())));
}

#[test]
fn control_frames_between_fragments_are_delivered_at_once() {
    let mut bytes = frame(false, BINARY, b"ab");
    bytes.extend(frame(true, PING, b"p1"));
    bytes.extend(frame(false, CONTINUATION, b"cd"));
    bytes.extend(frame(true, PONG, b"p2"));
    bytes.extend(frame(true, CONTINUATION, b"ef"));
    bytes.extend(frame(true, TEXT, b"next"));
    let expected = vec![
        Item::Ping(b"p1".to_vec()),
        Item::Pong(b"p2".to_vec()),
        Item::Binary(b"abcdef".to_vec()),
        text("next"),
    ];
    assert_eq!(read(&bytes), (expected.clone(), Ok(())));
    assert_eq!(read_bytewise(&bytes), (expected, Ok(())));
}

#[test]
fn reserved_bits_are_refused() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        let mut bytes = frame(true, TEXT, b"x");
        bytes[0] |= rsv;
        assert_fails(&bytes, protocol("reserved bits set"));
    }
}

#[test]
fn reserved_opcodes_are_refused() {
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        assert_fails(&frame(true, opcode, b""), protocol("reserved opcode"));
        // Refused from the first byte alone.
        let mut reader = MessageReader::new();
        assert_eq!(
            feed_chunks(&mut reader, &[&[0x80 | opcode]], &LIMITS).1,
            Err(protocol("reserved opcode"))
        );
    }
}

#[test]
fn control_frames_must_be_final_and_short() {
    for opcode in [CLOSE, PING, PONG] {
        assert_fails(
            &frame(false, opcode, b""),
            protocol("fragmented control frame"),
        );
        assert_fails(
            &frame(true, opcode, &[0; 126]),
            protocol("control frame over 125 bytes"),
        );
    }
    assert_eq!(
        read(&frame(true, PING, &[7; 125])).0,
        [Item::Ping(vec![7; 125])]
    );
    // A 16-bit length on a control frame is refused from the second byte.
    assert_eq!(
        read(&[0x89, 0x80 | 126]).1,
        Err(protocol("control frame over 125 bytes"))
    );
}

#[test]
fn continuation_without_a_message_is_refused() {
    assert_fails(
        &frame(true, CONTINUATION, b"x"),
        protocol("continuation without a message"),
    );
    assert_fails(
        &frame(false, CONTINUATION, b"x"),
        protocol("continuation without a message"),
    );
    // Also after a message has completed.
    let mut bytes = frame(false, TEXT, b"a");
    bytes.extend(frame(true, CONTINUATION, b"b"));
    bytes.extend(frame(true, CONTINUATION, b"c"));
    assert_eq!(
        read(&bytes),
        (
            vec![text("ab")],
            Err(protocol("continuation without a message"))
        )
    );
}

#[test]
fn new_message_inside_a_message_is_refused() {
    for opcode in [TEXT, BINARY] {
        let mut bytes = frame(false, TEXT, b"a");
        bytes.extend(frame(true, opcode, b"b"));
        assert_fails(&bytes, protocol("new message before the last ended"));
    }
}

#[test]
fn length_with_the_top_bit_set_is_refused() {
    let mut bytes = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&MASK);
    assert_fails(&bytes, protocol("frame length has its top bit set"));
    // Without the mask bytes: refused from the length alone.
    assert_eq!(
        read(&bytes[..10]).1,
        Err(protocol("frame length has its top bit set"))
    );
}

#[test]
fn too_big_is_detected_from_the_header() {
    let limits = Limits {
        max_message_size: 10,
    };
    let fits = frame(true, BINARY, &[1; 10]);
    assert_eq!(
        feed_chunks(&mut MessageReader::new(), &[&fits], &limits).1,
        Ok(())
    );

    // The header of an 11-byte frame is enough: no payload sent at all.
    let over = frame(true, BINARY, &[1; 11]);
    let mut reader = MessageReader::new();
    assert_eq!(
        feed_chunks(&mut reader, &[&over[..6]], &limits).1,
        Err(ReadError::TooBig)
    );
    // Even before the mask arrives.
    assert_eq!(
        feed_chunks(&mut MessageReader::new(), &[&over[..2]], &limits).1,
        Err(ReadError::TooBig)
    );
    // A 64-bit length far beyond the limit.
    let huge = [0x82, 0xFF, 0x00, 0x00, 0x10, 0, 0, 0, 0, 0];
    assert_eq!(
        feed_chunks(&mut MessageReader::new(), &[&huge], &limits).1,
        Err(ReadError::TooBig)
    );

    // Fragments add up: 6 + 5 > 10, refused at the second header.
    let mut bytes = frame(false, TEXT, b"abcdef");
    let second = frame(true, CONTINUATION, b"ghijk");
    bytes.extend_from_slice(&second[..6]);
    let mut reader = MessageReader::new();
    assert_eq!(
        feed_chunks(&mut reader, &[&bytes], &limits),
        (vec![], Err(ReadError::TooBig))
    );
    assert!(reader.is_idle(), "the partial message is freed on error");

    // Control frames are frames too.
    let ping = frame(true, PING, &[0; 11]);
    assert_eq!(
        feed_chunks(&mut MessageReader::new(), &[&ping], &limits).1,
        Err(ReadError::TooBig)
    );
}

#[test]
fn close_frames_are_validated() {
    assert_eq!(
        read(&frame(true, CLOSE, b"")),
        (vec![Item::Close(None, String::new())], Ok(()))
    );
    assert_fails(
        &frame(true, CLOSE, &[0x03]),
        protocol("close payload of 1 byte"),
    );
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        let bytes = frame(true, CLOSE, &close_payload(code, b"bye"));
        assert_eq!(
            read(&bytes),
            (vec![Item::Close(Some(code), "bye".to_owned())], Ok(())),
            "{code}"
        );
        assert_eq!(
            read_bytewise(&bytes).0,
            [Item::Close(Some(code), "bye".to_owned())],
            "{code}"
        );
    }
    for code in [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        assert_fails(
            &frame(true, CLOSE, &close_payload(code, b"")),
            protocol("invalid close code"),
        );
    }
    assert_fails(
        &frame(true, CLOSE, &close_payload(1000, b"\xFF")),
        ReadError::InvalidUtf8,
    );
    assert_fails(
        &frame(true, CLOSE, &close_payload(1000, b"\xE2\x82")),
        ReadError::InvalidUtf8,
    );
    let reason = "é".repeat(61); // 122 bytes: payload 124.
    assert_eq!(
        read(&frame(true, CLOSE, &close_payload(1000, reason.as_bytes()))).0,
        [Item::Close(Some(1000), reason)]
    );
}

#[test]
fn reading_stops_right_after_close() {
    let mut bytes = frame(true, TEXT, b"a");
    let close = frame(true, CLOSE, &close_payload(1000, b""));
    bytes.extend_from_slice(&close);
    let close_end = bytes.len();
    bytes.extend(frame(true, TEXT, b"after"));
    let original = bytes.clone();

    let mut reader = MessageReader::new();
    let mut items = Vec::new();
    let consumed = reader.feed(&mut bytes, &LIMITS, |item| {
        items.push(Item::from(item));
        Flow::Continue
    });
    assert_eq!(consumed, Ok(close_end));
    assert_eq!(items, [text("a"), Item::Close(Some(1000), String::new())]);
    assert_eq!(
        bytes[close_end..],
        original[close_end..],
        "bytes after the close are untouched"
    );
    assert!(reader.is_idle());
    // Nothing more is read.
    let mut rest = bytes[close_end..].to_vec();
    assert_eq!(
        reader.feed(&mut rest, &LIMITS, |_| panic!("no items after close")),
        Ok(0)
    );
}

#[test]
fn close_inside_a_fragmented_message_frees_it() {
    let mut bytes = frame(false, BINARY, b"partial");
    bytes.extend(frame(true, CLOSE, b""));
    let mut reader = MessageReader::new();
    let (items, result) = feed_chunks(&mut reader, &[&bytes], &LIMITS);
    assert_eq!(
        (items, result),
        (vec![Item::Close(None, String::new())], Ok(()))
    );
    assert!(reader.is_idle());
    assert_eq!(reader.buffered_bytes(), 0);
}

#[test]
fn stop_leaves_the_rest_untouched_for_the_next_call() {
    let mut bytes = frame(true, TEXT, b"one");
    let first_end = bytes.len();
    bytes.extend(frame(true, PING, b"two"));
    let second_end = bytes.len();
    bytes.extend(frame(true, BINARY, b"three"));
    let original = bytes.clone();

    let mut reader = MessageReader::new();
    let mut items = Vec::new();
    let mut stop_each = |item: Inbound<'_>| {
        items.push(Item::from(item));
        Flow::Stop
    };
    assert_eq!(
        reader.feed(&mut bytes, &LIMITS, &mut stop_each),
        Ok(first_end)
    );
    assert_eq!(bytes[first_end..], original[first_end..]);
    assert_eq!(
        reader.feed(&mut bytes[first_end..], &LIMITS, &mut stop_each),
        Ok(second_end - first_end)
    );
    assert_eq!(bytes[second_end..], original[second_end..]);
    assert_eq!(
        reader.feed(&mut bytes[second_end..], &LIMITS, &mut stop_each),
        Ok(original.len() - second_end)
    );
    assert_eq!(
        items,
        [
            text("one"),
            Item::Ping(b"two".to_vec()),
            Item::Binary(b"three".to_vec())
        ]
    );
    assert!(reader.is_idle());
}

#[test]
fn stop_on_a_message_assembled_across_calls() {
    let mut message = frame(false, TEXT, b"ab");
    message.extend(frame(true, CONTINUATION, b"cd"));
    let mut tail = frame(true, TEXT, b"next");
    let mut reader = MessageReader::new();
    let (items, result) = feed_chunks(&mut reader, &[&message[..message.len() - 1]], &LIMITS);
    assert_eq!((items, result), (vec![], Ok(())));
    let mut input = message[message.len() - 1..].to_vec();
    input.append(&mut tail);
    let mut items = Vec::new();
    let consumed = reader.feed(&mut input, &LIMITS, |item| {
        items.push(Item::from(item));
        Flow::Stop
    });
    assert_eq!(consumed, Ok(1));
    assert_eq!(items, [text("abcd")]);
    assert!(
        reader.is_idle(),
        "the assembly box is dropped once delivered"
    );
}

#[test]
fn an_error_poisons_the_reader() {
    let mut reader = MessageReader::new();
    let (_, first) = feed_chunks(&mut reader, &[&frame(true, 0x3, b"")], &LIMITS);
    assert_eq!(first, Err(protocol("reserved opcode")));
    let mut valid = frame(true, TEXT, b"fine");
    let again = reader.feed(&mut valid, &LIMITS, |_| {
        panic!("a poisoned reader reads nothing")
    });
    assert_eq!(again, Err(protocol("reserved opcode")));
    assert_eq!(valid, frame(true, TEXT, b"fine"), "input untouched");
    assert!(reader.is_idle());
}

#[test]
fn split_headers_are_kept_inline() {
    let bytes = frame(true, BINARY, &[9; 300]); // 8-byte header
    for cut in 1..8 {
        let mut reader = MessageReader::new();
        let (items, result) = feed_chunks(&mut reader, &[&bytes[..cut]], &LIMITS);
        assert_eq!((items, result), (vec![], Ok(())));
        assert!(
            matches!(reader.state, State::Header(_)),
            "cut={cut}: no box for a split header"
        );
        assert!(!reader.is_idle());
        assert_eq!(reader.buffered_bytes(), cut);
        let (items, result) = feed_chunks(&mut reader, &[&bytes[cut..]], &LIMITS);
        assert_eq!((items, result), (vec![Item::Binary(vec![9; 300])], Ok(())));
        assert!(reader.is_idle());
    }
    // A 14-byte header split at every point.
    let bytes = frame(true, BINARY, &[5; 70_000]);
    for cut in 1..14 {
        let (items, result) = feed_chunks(
            &mut MessageReader::new(),
            &[&bytes[..cut], &bytes[cut..]],
            &LIMITS,
        );
        assert_eq!(
            (items, result),
            (vec![Item::Binary(vec![5; 70_000])], Ok(())),
            "cut={cut}"
        );
    }
}

#[test]
fn split_control_frame_inside_a_message() {
    let mut bytes = frame(false, TEXT, b"he");
    bytes.extend(frame(true, PING, b"0123456789"));
    bytes.extend(frame(true, CONTINUATION, b"llo"));
    for cut in 0..=bytes.len() {
        let (items, result) = feed_chunks(
            &mut MessageReader::new(),
            &[&bytes[..cut], &bytes[cut..]],
            &LIMITS,
        );
        assert_eq!(
            (items, result),
            (
                vec![Item::Ping(b"0123456789".to_vec()), text("hello")],
                Ok(())
            ),
            "cut={cut}"
        );
    }
}

#[test]
fn heap_is_freed_after_a_spanning_message() {
    let payload = vec![b'x'; 10_000];
    let bytes = frame(true, TEXT, &payload);
    let limits = Limits {
        max_message_size: payload.len(),
    };
    let mut reader = MessageReader::new();
    let mut delivered = 0;
    for (i, chunk) in bytes.chunks(97).enumerate() {
        let mut chunk = chunk.to_vec();
        reader
            .feed(&mut chunk, &limits, |item| {
                assert_eq!(
                    item,
                    Inbound::Text(std::str::from_utf8(&payload).expect("ascii"))
                );
                delivered += 1;
                Flow::Continue
            })
            .expect("valid");
        assert!(
            reader.buffered_bytes() <= limits.max_message_size + 13,
            "chunk {i}: {}",
            reader.buffered_bytes()
        );
    }
    assert_eq!(delivered, 1);
    assert!(reader.is_idle());
    assert_eq!(reader.buffered_bytes(), 0);
    assert!(matches!(reader.state, State::Idle));
}

#[test]
fn utf8_fails_fast_inside_an_unfinished_frame() {
    // A 100-byte text frame of which only the header and 3 bytes have arrived, the
    // third invalid: refused now, not when the other 97 bytes come.
    let mut payload = b"ab\xFF".to_vec();
    payload.resize(100, b'c');
    let bytes = frame(true, TEXT, &payload);
    let mut reader = MessageReader::new();
    assert_eq!(
        feed_chunks(&mut reader, &[&bytes[..6 + 3]], &LIMITS),
        (vec![], Err(ReadError::InvalidUtf8))
    );

    // The same inside a continuation frame.
    let mut bytes = frame(false, TEXT, b"ok");
    bytes.extend(frame(true, CONTINUATION, &payload));
    let end_of_bad_byte = bytes.len() - 100 + 3;
    assert_eq!(
        feed_chunks(
            &mut MessageReader::new(),
            &[&bytes[..end_of_bad_byte]],
            &LIMITS
        ),
        (vec![], Err(ReadError::InvalidUtf8))
    );
    // And a bad second byte of a sequence whose lead byte came in an earlier call.
    let bytes = frame(true, TEXT, b"\xF4\x90\x80\x80 and more text");
    assert_eq!(
        feed_chunks(
            &mut MessageReader::new(),
            &[&bytes[..7], &bytes[7..8]],
            &LIMITS
        ),
        (vec![], Err(ReadError::InvalidUtf8))
    );
}

#[test]
fn invalid_code_points_are_refused() {
    for bad in [
        &b"\xF4\x90\x80\x80"[..], // U+110000, beyond Unicode
        b"\xED\xA0\x80",          // U+D800, a surrogate
        b"\xED\xBF\xBF",          // U+DFFF
        b"\xC0\xAF",              // overlong '/'
        b"\xE0\x80\xAF",          // overlong '/'
        b"\xF0\x80\x80\xAF",      // overlong '/'
        b"\xC1\xBF",
        b"\xF8\x88\x80\x80\x80", // 5-byte form
        b"\x80",
    ] {
        // Whole in one frame (fast path), split bytewise, and across fragments.
        assert_fails(&frame(true, TEXT, bad), ReadError::InvalidUtf8);
        let mut fragmented = frame(false, TEXT, &bad[..1]);
        fragmented.extend(frame(true, CONTINUATION, &bad[1..]));
        assert_fails(&fragmented, ReadError::InvalidUtf8);
    }
}

#[test]
fn code_points_split_across_frames_and_calls_are_accepted() {
    let message = "a€𝄞é";
    let bytes = message.as_bytes();
    for cut in 0..=bytes.len() {
        let mut stream = frame(false, TEXT, &bytes[..cut]);
        stream.extend(frame(true, CONTINUATION, &bytes[cut..]));
        assert_eq!(read(&stream), (vec![text(message)], Ok(())), "cut={cut}");
        assert_eq!(
            read_bytewise(&stream),
            (vec![text(message)], Ok(())),
            "cut={cut}"
        );
    }
    // Three fragments, each ending mid code point.
    let mut stream = frame(false, TEXT, &bytes[..2]);
    stream.extend(frame(false, CONTINUATION, &bytes[2..5]));
    stream.extend(frame(true, CONTINUATION, &bytes[5..]));
    assert_eq!(read(&stream), (vec![text(message)], Ok(())));
}

#[test]
fn message_ending_inside_a_code_point_is_refused() {
    assert_fails(&frame(true, TEXT, b"ok\xE2\x82"), ReadError::InvalidUtf8);
    let mut stream = frame(false, TEXT, b"ok\xE2");
    stream.extend(frame(true, CONTINUATION, b"\x82"));
    assert_fails(&stream, ReadError::InvalidUtf8);
    // Binary messages are not UTF-8 checked.
    assert_eq!(read(&frame(true, BINARY, b"\xFF\xE2")).1, Ok(()));
}

#[test]
fn errors_map_to_close_codes() {
    assert_eq!(protocol("x").close_code(), 1002);
    assert_eq!(ReadError::InvalidUtf8.close_code(), 1007);
    assert_eq!(ReadError::TooBig.close_code(), 1009);
    assert_eq!(ReadError::TooBig.close_reason(), CloseReason::MessageTooBig);
    assert_eq!(
        ReadError::InvalidUtf8.close_reason(),
        CloseReason::ProtocolError
    );
    for fault in [
        Fault::ReservedBits,
        Fault::ReservedOpcode,
        Fault::FragmentedControl,
        Fault::UnexpectedContinuation,
        Fault::ExpectedContinuation,
        Fault::Unmasked,
        Fault::ControlTooLong,
        Fault::LengthTopBit,
        Fault::NonMinimalLength,
        Fault::CloseTooShort,
        Fault::InvalidCloseCode,
        Fault::InvalidUtf8,
        Fault::TooBig,
    ] {
        let reason = fault.error().reason();
        assert!(reason.is_ascii() && reason.len() <= 123, "{fault:?}");
        assert!(!fault.error().to_string().is_empty());
    }
}

#[test]
fn header_decoding_agrees_with_tungstenite() {
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;
    for (fin, opcode, len) in [
        (true, TEXT, 0),
        (false, BINARY, 125),
        (true, BINARY, 126),
        (true, PING, 5),
        (true, BINARY, 65536),
    ] {
        let bytes = frame(fin, opcode, &vec![0; len]);
        let ours = decode_header(&bytes, None, &LIMITS)
            .expect("valid")
            .expect("complete");
        let mut cursor = Cursor::new(&bytes[..]);
        let (theirs, theirs_len) = FrameHeader::parse(&mut cursor)
            .expect("valid")
            .expect("complete");
        assert_eq!(ours.fin, theirs.is_final);
        assert_eq!(Some(ours.mask), theirs.mask);
        assert_eq!(ours.payload_len as u64, theirs_len);
        assert_eq!(ours.header_len as u64, cursor.position());
        assert_eq!(u8::from(theirs.opcode), opcode);
    }
}

#[test]
fn opcode_values_agree_with_tungstenite() {
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    for value in 0u8..16 {
        let inside_message = decode_header(&[0x80 | value, 0x80, 0, 0, 0, 0], Some(0), &LIMITS)
            .map(|head| head.map(|h| h.opcode));
        let outside_message = decode_header(&[0x80 | value, 0x80, 0, 0, 0, 0], None, &LIMITS)
            .map(|head| head.map(|h| h.opcode));
        let expected = match OpCode::from(value) {
            OpCode::Data(Data::Continue) => Ok(Some(Opcode::Continuation)),
            OpCode::Data(Data::Text) => Ok(Some(Opcode::Text)),
            OpCode::Data(Data::Binary) => Ok(Some(Opcode::Binary)),
            OpCode::Control(Control::Close) => Ok(Some(Opcode::Control(ControlKind::Close))),
            OpCode::Control(Control::Ping) => Ok(Some(Opcode::Control(ControlKind::Ping))),
            OpCode::Control(Control::Pong) => Ok(Some(Opcode::Control(ControlKind::Pong))),
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(Fault::ReservedOpcode)
            }
        };
        // A continuation is valid inside a message, Text/Binary outside one.
        let actual = match expected {
            Ok(Some(Opcode::Continuation)) => inside_message,
            _ => outside_message,
        };
        assert_eq!(actual, expected, "opcode {value:#x}");
    }
}
