//! Property tests of `MessageReader` (`fuzz/fuzz_targets/frame_reader.rs` checks the same):
//!
//! * (a) any split of the same bytes into chunks gives the same items and the same
//!   final result, for valid streams (which must also give exactly the expected
//!   items), mutated valid streams and random bytes;
//! * (b) random and mutated input never panics, ends in `Ok` or a defined
//!   `ReadError`, and a failed reader keeps failing the same way;
//! * (c) the reader is idle after every complete message, and `buffered_bytes()`
//!   stays within `max_message_size` plus one frame header (plus one control payload
//!   when a control frame is split inside a message);
//! * fail-fast UTF-8: a text message with one bad sequence is refused by the call
//!   that delivers the byte proving it bad, not earlier and not later, however the
//!   message is fragmented and the stream is split.

use pingwheel_proto::frame::encode_client_frame;
use pingwheel_proto::inbound::{
    Flow, Limits, MAX_HEADER_LEN, MessageReader, OwnedInbound, ReadError,
};
use proptest::{collection::vec, prelude::*, sample::Index};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MAX_CONTROL_PAYLOAD: usize = 125;

/// An owned copy of an item.
type Item = OwnedInbound;

/// One top-level piece of a generated stream.
#[derive(Clone, Debug)]
enum Element {
    /// A data message split into fragments at `cuts`, with an optional control frame
    /// (Ping) in each gap between fragments.
    Data {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<Index>,
        between: Vec<Option<Vec<u8>>>,
    },
    /// A Ping or Pong outside any message.
    Control { ping: bool, payload: Vec<u8> },
}

/// A valid client stream and what reading it must produce.
#[derive(Clone, Debug)]
struct Stream {
    bytes: Vec<u8>,
    expected: Vec<Item>,
    /// Stream offsets at which no frame or message is unfinished.
    idle_at: Vec<usize>,
    /// Largest message or frame payload in the stream.
    largest: usize,
    /// Whether a control frame sits between fragments of a message.
    interleaved: bool,
    /// Offset just after the Close frame, if the stream has one.
    close_end: Option<usize>,
}

/// Appends a masked client frame with the minimal length encoding.
fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    encode_client_frame(u8::from(fin) << 7 | opcode, payload, mask, out);
}

/// A deterministic sequence of masks (splitmix-style), so a failing case replays.
struct Masks(u64);

impl Masks {
    fn next(&mut self) -> [u8; 4] {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mixed = (self.0 ^ (self.0 >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((mixed >> 16) as u32).to_le_bytes()
    }
}

fn build(
    elements: &[Element],
    close: Option<Option<(u16, String)>>,
    trailer: &[u8],
    mask_seed: u64,
) -> Stream {
    let mut masks = Masks(mask_seed);
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    let mut idle_at = vec![0];
    let mut largest = 0;
    let mut interleaved = false;
    for element in elements {
        match element {
            Element::Control { ping, payload } => {
                let opcode = if *ping { PING } else { PONG };
                push_frame(&mut bytes, true, opcode, payload, masks.next());
                expected.push(if *ping {
                    Item::Ping(payload.clone())
                } else {
                    Item::Pong(payload.clone())
                });
                largest = largest.max(payload.len());
            }
            Element::Data {
                text,
                payload,
                cuts,
                between,
            } => {
                let mut points: Vec<usize> =
                    cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
                points.sort_unstable();
                points.push(payload.len());
                let mut start = 0;
                for (i, &end) in points.iter().enumerate() {
                    let opcode = match (i, text) {
                        (0, true) => TEXT,
                        (0, false) => BINARY,
                        _ => CONTINUATION,
                    };
                    let last = i + 1 == points.len();
                    push_frame(&mut bytes, last, opcode, &payload[start..end], masks.next());
                    start = end;
                    if !last && let Some(Some(ping)) = between.get(i) {
                        push_frame(&mut bytes, true, PING, ping, masks.next());
                        expected.push(Item::Ping(ping.clone()));
                        largest = largest.max(ping.len());
                        interleaved = true;
                    }
                }
                expected.push(if *text {
                    Item::Text(String::from_utf8(payload.clone()).expect("generated text is UTF-8"))
                } else {
                    Item::Binary(payload.clone())
                });
                largest = largest.max(payload.len());
            }
        }
        idle_at.push(bytes.len());
    }
    let close_end = close.map(|close| {
        let payload = match &close {
            None => Vec::new(),
            Some((code, reason)) => {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(reason.as_bytes());
                p
            }
        };
        push_frame(&mut bytes, true, CLOSE, &payload, masks.next());
        expected.push(match close {
            None => Item::Close(None, String::new()),
            Some((code, reason)) => Item::Close(Some(code), reason),
        });
        largest = largest.max(payload.len());
        let end = bytes.len();
        bytes.extend_from_slice(trailer);
        end
    });
    Stream {
        bytes,
        expected,
        idle_at,
        largest,
        interleaved,
        close_end,
    }
}

/// Bytes with a recognisable pattern, for long payloads.
fn filled(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

fn binary_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..200),
        2 => (120usize..135).prop_map(filled),      // the 7-bit / 16-bit boundary
        1 => (65530usize..65542).prop_map(filled),  // the 16-bit / 64-bit boundary
    ]
}

fn text_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => any::<String>().prop_map(String::into_bytes),
        3 => "[a-zé€𝄞 ]{0,80}".prop_map(String::into_bytes),
        1 => (60usize..70).prop_map(|n| "€𝄞".repeat(n).into_bytes()), // ~125..490 bytes
    ]
}

fn element() -> impl Strategy<Value = Element> {
    let data = (
        any::<bool>(),
        vec(any::<Index>(), 0..4),
        vec(proptest::option::of(vec(any::<u8>(), 0..=125)), 0..4),
    )
        .prop_flat_map(|(text, cuts, between)| {
            let payload = if text {
                text_payload().boxed()
            } else {
                binary_payload().boxed()
            };
            (Just(text), payload, Just(cuts), Just(between))
        })
        .prop_map(|(text, payload, cuts, between)| Element::Data {
            text,
            payload,
            cuts,
            between,
        });
    let control = (any::<bool>(), vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD))
        .prop_map(|(ping, payload)| Element::Control { ping, payload });
    prop_oneof![3 => data, 1 => control]
}

fn close() -> impl Strategy<Value = Option<Option<(u16, String)>>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    proptest::option::of(proptest::option::of((code, "[a-z é€]{0,30}")))
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        vec(element(), 0..6),
        close(),
        vec(any::<u8>(), 0..8),
        any::<u64>(),
    )
        .prop_map(|(elements, close, trailer, seed)| build(&elements, close, &trailer, seed))
}

/// What one run produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    result: Result<(), ReadError>,
}

/// Turns random indices into sorted cut points of `len` bytes.
fn cut_points(len: usize, cuts: &[Index], extra: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c.index(len + 1))
        .chain(extra.iter().copied())
        .collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
}

/// Feeds `bytes` split at `points`, checking the reader's invariants after every call:
/// `check(reader, consumed_so_far)` (`None` once a Close stopped the reader).
fn run(
    bytes: &[u8],
    points: &[usize],
    limits: &Limits,
    mut check: impl FnMut(&MessageReader, Option<usize>),
) -> Outcome {
    let mut reader = MessageReader::new();
    let mut items = Vec::new();
    let mut position = Some(0);
    for window in points.windows(2) {
        let mut chunk = bytes[window[0]..window[1]].to_vec();
        let result = reader.feed(&mut chunk, limits, |item| {
            items.push(Item::from(item));
            Flow::Continue
        });
        match result {
            Ok(consumed) => {
                assert!(consumed <= chunk.len());
                position = position
                    .filter(|_| consumed == chunk.len())
                    .map(|p| p + consumed);
                check(&reader, position);
            }
            Err(error) => {
                // Poisoned: the same error again, nothing read.
                let mut again = bytes[window[1]..].to_vec();
                let repeat = reader.feed(&mut again, limits, |_| {
                    panic!("poisoned reader delivered an item")
                });
                assert_eq!(repeat, Err(error));
                assert!(reader.is_idle(), "an error frees partial data");
                assert_eq!(reader.buffered_bytes(), 0);
                return Outcome {
                    items,
                    result: Err(error),
                };
            }
        }
    }
    Outcome {
        items,
        result: Ok(()),
    }
}

fn whole(bytes: &[u8], limits: &Limits) -> Outcome {
    run(bytes, &[0, bytes.len()], limits, |_, _| {})
}

/// How to damage a valid stream.
#[derive(Clone, Debug)]
enum Mutation {
    Xor(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Xor(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            return;
        }
        match m {
            Mutation::Xor(i, x) => {
                let at = i.index(bytes.len());
                bytes[at] ^= x;
            }
            Mutation::Set(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Mutation::Remove(i) => {
                let at = i.index(bytes.len());
                bytes.remove(at);
            }
            Mutation::Truncate(i) => {
                let at = i.index(bytes.len());
                bytes.truncate(at);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) + (c) on valid streams: exactly the expected items whatever the split; idle
    /// at every message boundary; bounded buffering.
    #[test]
    fn valid_streams_read_the_same_however_split(
        stream in stream(),
        cuts in vec(any::<Index>(), 0..24),
        slack in 0usize..16,
    ) {
        let limits = Limits { max_message_size: stream.largest + slack };
        let all = whole(&stream.bytes, &limits);
        prop_assert_eq!(&all.items, &stream.expected);
        prop_assert_eq!(all.result, Ok(()));

        // Cut at the random points and at every message boundary.
        let points = cut_points(stream.bytes.len(), &cuts, &stream.idle_at);
        let bound = limits.max_message_size
            + if stream.interleaved { MAX_CONTROL_PAYLOAD } else { MAX_HEADER_LEN };
        let split = run(&stream.bytes, &points, &limits, |reader, position| {
            assert!(reader.buffered_bytes() <= bound, "buffered {} > {bound}", reader.buffered_bytes());
            if let Some(position) = position
                && stream.idle_at.contains(&position)
            {
                assert!(reader.is_idle(), "not idle at message boundary {position}");
                assert_eq!(reader.buffered_bytes(), 0);
            }
            if position.is_none() {
                assert!(reader.is_idle(), "a Close frees everything");
            }
        });
        prop_assert_eq!(&split, &all);

        // Byte by byte, for streams small enough.
        if stream.bytes.len() <= 4096 {
            let bytewise: Vec<usize> = (0..=stream.bytes.len()).collect();
            let one_by_one = run(&stream.bytes, &bytewise, &limits, |reader, _| {
                assert!(reader.buffered_bytes() <= bound);
            });
            prop_assert_eq!(one_by_one, all);
        }
    }

    /// Nothing after the Close is consumed.
    #[test]
    fn close_ends_consumption(stream in stream()) {
        let limits = Limits { max_message_size: stream.largest };
        let mut input = stream.bytes.clone();
        let consumed = MessageReader::new().feed(&mut input, &limits, |_| Flow::Continue);
        prop_assert_eq!(consumed, Ok(stream.close_end.unwrap_or(stream.bytes.len())));
        if let Some(end) = stream.close_end {
            prop_assert_eq!(&input[end..], &stream.bytes[end..]);
        }
    }

    /// (a) + (b) on damaged streams: no panic, the same outcome however split.
    #[test]
    fn mutated_streams_read_the_same_however_split(
        stream in stream(),
        mutations in vec(mutation(), 1..4),
        cuts in vec(any::<Index>(), 0..24),
        max_message_size in prop_oneof![Just(1usize << 20), 0usize..300],
    ) {
        let mut bytes = stream.bytes.clone();
        mutate(&mut bytes, &mutations);
        let limits = Limits { max_message_size };
        let all = whole(&bytes, &limits);
        let points = cut_points(bytes.len(), &cuts, &[]);
        let bound = max_message_size + MAX_CONTROL_PAYLOAD;
        let split = run(&bytes, &points, &limits, |reader, _| {
            assert!(reader.buffered_bytes() <= bound, "buffered {} > {bound}", reader.buffered_bytes());
        });
        prop_assert_eq!(split, all);
    }

    /// (a) + (b) on random bytes, also with a plausible first two bytes so the
    /// reader gets past the first checks.
    #[test]
    fn random_bytes_never_panic(
        mut bytes in vec(any::<u8>(), 0..600),
        plausible in any::<bool>(),
        cuts in vec(any::<Index>(), 0..16),
        max_message_size in 0usize..1000,
    ) {
        if plausible && bytes.len() >= 2 {
            bytes[0] &= 0x8F;
            bytes[1] |= 0x80;
        }
        let limits = Limits { max_message_size };
        let all = whole(&bytes, &limits);
        let points = cut_points(bytes.len(), &cuts, &[]);
        let split = run(&bytes, &points, &limits, |reader, _| {
            assert!(reader.buffered_bytes() <= max_message_size + MAX_CONTROL_PAYLOAD);
        });
        prop_assert_eq!(split, all);
    }
}

/// Bad UTF-8 sequences and the index of the byte that proves each bad.
const BAD_SEQUENCES: [(&[u8], usize); 9] = [
    (b"\xFF", 0),
    (b"\x80", 0),
    (b"\xC0\xAF", 0),         // C0 is never a lead byte
    (b"\xC3\x28", 1),         // lead byte then a non-continuation
    (b"\xE0\x80\xAF", 1),     // overlong: E0 needs A0..BF next
    (b"\xED\xA0\x80", 1),     // surrogate: ED needs 80..9F next
    (b"\xF4\x90\x80\x80", 1), // beyond U+10FFFF
    (b"\xF0\x80\x80\xAF", 1), // overlong 4-byte
    (b"\xE2\x82\x41", 2),     // third byte not a continuation
];

/// A fragmented text message, with Pings between fragments, and the stream offset of
/// each payload byte.
fn fragmented_text(
    payload: &[u8],
    cuts: &[Index],
    pings: &[bool],
    mask_seed: u64,
) -> (Vec<u8>, Vec<usize>) {
    let mut masks = Masks(mask_seed);
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
    points.sort_unstable();
    points.push(payload.len());
    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity(payload.len());
    let mut start = 0;
    for (i, &end) in points.iter().enumerate() {
        let last = i + 1 == points.len();
        let fragment = &payload[start..end];
        push_frame(
            &mut bytes,
            last,
            if i == 0 { TEXT } else { CONTINUATION },
            fragment,
            masks.next(),
        );
        let payload_at = bytes.len() - fragment.len();
        offsets.extend((0..fragment.len()).map(|k| payload_at + k));
        start = end;
        if !last && pings.get(i).copied().unwrap_or(false) {
            push_frame(&mut bytes, true, PING, b"p", masks.next());
        }
    }
    (bytes, offsets)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invalid_utf8_fails_on_the_proving_byte(
        before in "[a-zé€𝄞]{0,40}",
        after in "[a-zé€𝄞]{0,40}",
        bad in 0..BAD_SEQUENCES.len(),
        cuts in vec(any::<Index>(), 0..4),
        pings in vec(any::<bool>(), 0..4),
        stream_cuts in vec(any::<Index>(), 0..8),
        seed in any::<u64>(),
    ) {
        let (sequence, proving) = BAD_SEQUENCES[bad];
        let mut payload = before.clone().into_bytes();
        payload.extend_from_slice(sequence);
        payload.extend_from_slice(after.as_bytes());
        let (bytes, offsets) = fragmented_text(&payload, &cuts, &pings, seed);
        let proof_end = offsets[before.len() + proving] + 1;
        let limits = Limits { max_message_size: 1 << 16 };

        // Everything before the proving byte is accepted, however split.
        let points = cut_points(proof_end - 1, &stream_cuts, &[]);
        let early = run(&bytes[..proof_end - 1], &points, &limits, |_, _| {});
        prop_assert_eq!(early.result, Ok(()));
        prop_assert!(early.items.iter().all(|item| matches!(item, Item::Ping(_))));

        // The call that brings the proving byte fails, even though the rest of the
        // frame and message has not arrived.
        let points = cut_points(proof_end, &stream_cuts, &[proof_end - 1]);
        let failed = run(&bytes[..proof_end], &points, &limits, |_, _| {});
        prop_assert_eq!(failed.result, Err(ReadError::InvalidUtf8));
        prop_assert_eq!(whole(&bytes, &limits).result, Err(ReadError::InvalidUtf8));
    }
}
