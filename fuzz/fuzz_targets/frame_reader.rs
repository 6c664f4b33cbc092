//! The client frame reader, `pingwheel_proto::inbound::MessageReader::feed`, on
//! arbitrary bytes.
//!
//! Input: `[limit, split, stream...]`. `limit` picks `max_message_size` from
//! [`LIMITS`]; `split` seeds where the stream is cut into `feed` calls (0: one call).
//!
//! Besides "never panics", it checks the reader's contract:
//! * however the stream is split, the same items and the same final result;
//! * stopping after every item and feeding the rest again gives the same items too,
//!   and the bytes after a stop are left untouched;
//! * a call consumes at most its input, and nothing after a Close;
//! * a failed reader fails again with the same error and delivers nothing, holds no
//!   bytes, and its close reason is ASCII and fits a close frame (≤ 123 bytes);
//! * it never holds more than `max_message_size` plus one control payload (125).
//!
//! Whether a given frame is accepted (e.g. a non-minimal length) is not asserted:
//! that is for the crate's own tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingwheel_proto::inbound::{Flow, Inbound, Limits, MessageReader, OwnedInbound, ReadError};

/// `max_message_size` values around the frame-length encodings' boundaries.
const LIMITS: [usize; 8] = [0, 1, 125, 126, 1000, 65_535, 65_536, 1 << 20];

/// Largest control payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// An owned copy of an item.
type Item = OwnedInbound;

/// What reading a whole stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    result: Result<(), ReadError>,
}

/// Cut points `0 = p0 <= p1 <= ... <= len`, from a small xorshift PRNG seeded by `seed`
/// (`seed == 0`: no cut).
fn cut_points(len: usize, seed: u8) -> Vec<usize> {
    let mut points = vec![0, len];
    let mut state = u32::from(seed) | 0x9E37_7900;
    for _ in 0..(seed % 16) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        points.push(state as usize % (len + 1));
    }
    points.sort_unstable();
    points
}

/// Checks the poisoned-reader contract after `error`: `rest` is not read, the same
/// error comes back, nothing is held, and the error fits a close frame.
fn check_poisoned(reader: &mut MessageReader, rest: &[u8], limits: &Limits, error: ReadError) {
    let mut again = rest.to_vec();
    let repeat = reader.feed(&mut again, limits, |item| {
        panic!("a failed reader delivered {item:?}")
    });
    assert_eq!(
        repeat,
        Err(error),
        "a failed reader must keep failing the same way"
    );
    assert!(reader.is_idle(), "an error drops partial data");
    assert_eq!(reader.buffered_bytes(), 0);
    let reason = error.reason();
    assert!(
        reason.is_ascii() && reason.len() <= 123,
        "close reason {reason:?}"
    );
    assert!(matches!(error.close_code(), 1002 | 1007 | 1009));
}

/// Feeds `stream` cut at `points`, one `feed` call per piece.
fn read_split(stream: &[u8], points: &[usize], limits: &Limits) -> Outcome {
    let mut reader = MessageReader::new();
    let mut items = Vec::new();
    let mut closed = false;
    for window in points.windows(2) {
        let mut chunk = stream[window[0]..window[1]].to_vec();
        let result = reader.feed(&mut chunk, limits, |item| {
            assert!(!closed, "an item after the Close");
            closed |= matches!(item, Inbound::Close { .. });
            items.push(Item::from(item));
            Flow::Continue
        });
        match result {
            Ok(consumed) => {
                assert!(consumed <= chunk.len());
                assert!(
                    consumed == chunk.len() || closed,
                    "only a Close (or Stop) leaves input unconsumed"
                );
                assert!(reader.buffered_bytes() <= limits.max_message_size + MAX_CONTROL_PAYLOAD);
                if closed {
                    assert!(reader.is_idle(), "a Close drops partial data");
                }
            }
            Err(error) => {
                check_poisoned(&mut reader, &stream[window[1]..], limits, error);
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

/// Feeds `stream` in one buffer, returning `Flow::Stop` after every item and feeding
/// the unconsumed rest again.
fn read_stopping(stream: &[u8], limits: &Limits) -> Outcome {
    let mut reader = MessageReader::new();
    let mut buf = stream.to_vec();
    let mut items = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let mut delivered = 0;
        let result = reader.feed(&mut buf[pos..], limits, |item| {
            delivered += 1;
            items.push(Item::from(item));
            Flow::Stop
        });
        match result {
            Ok(consumed) => {
                assert!(delivered <= 1, "Flow::Stop returns after the item");
                assert!(consumed <= buf.len() - pos);
                assert_eq!(
                    buf[pos + consumed..],
                    stream[pos + consumed..],
                    "bytes after a stop are left untouched"
                );
                if consumed == 0 {
                    // Only after a Close, which stops reading for good.
                    assert!(matches!(items.last(), Some(Item::Close(..))), "no progress");
                    break;
                }
                pos += consumed;
            }
            Err(error) => {
                check_poisoned(&mut reader, &stream[buf.len()..], limits, error);
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

fuzz_target!(|data: &[u8]| {
    let [limit, split, stream @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_message_size: LIMITS[usize::from(*limit) % LIMITS.len()],
    };
    let whole = read_split(stream, &[0, stream.len()], &limits);
    let split = read_split(stream, &cut_points(stream.len(), *split), &limits);
    assert_eq!(split, whole, "the same bytes, split differently");
    let stopping = read_stopping(stream, &limits);
    assert_eq!(stopping, whole, "stopping after every item");
});
