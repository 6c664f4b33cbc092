//! Positions and history on a fake clock: every test takes one `Instant` as second 0
//! and builds later instants by adding durations; nothing sleeps.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::engine::namespace::Namespace;
use crate::engine::position::NotRecovered;

/// Frames `key|seq|epoch|data` (key: the channel, or the user id), so every frame
/// names its stream and position.
#[derive(Debug)]
struct TestFrame;

impl TestFrame {
    fn text(stream: Stream<'_>, p: &Position, data: &[u8]) -> String {
        let (Stream::Channel(key) | Stream::User(key)) = stream;
        format!(
            "{key}|{}|{}|{}",
            p.seq,
            p.epoch,
            String::from_utf8_lossy(data)
        )
    }
}

impl FrameEncoder for TestFrame {
    fn encode(&self, stream: Stream<'_>, p: &Position, data: &[u8]) -> Bytes {
        Bytes::from(TestFrame::text(stream, p, data))
    }
}

struct Clock(Instant);

impl Clock {
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn ns(prefix: &str, size: u32, ttl: u64) -> Namespace {
    Namespace {
        prefix: prefix.into(),
        history_size: size,
        history_ttl: Duration::from_secs(ttl),
    }
}

fn history(namespaces: Vec<Namespace>, limits: HistoryLimits) -> (History, Clock) {
    let t0 = Instant::now();
    let h = History::new(Namespaces::new(namespaces).unwrap(), limits, t0, 42)
        .with_encoder(Box::new(TestFrame));
    (h, Clock(t0))
}

fn publish(h: &mut History, stream: Stream<'_>, now: Instant, payload: &str) -> Published {
    let p = h.publish(stream, now, payload.as_bytes());
    h.check_invariants();
    p
}

fn texts(frames: &[Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect()
}

fn since(p: Position, seq: u64) -> Since {
    Since {
        seq,
        epoch: Some(p.epoch),
    }
}

const C: Stream<'static> = Stream::Channel("chat:1");

#[test]
fn seqs_count_from_one_per_stream_with_no_gaps() {
    let (mut h, clock) = history(vec![ns("chat:", 10, 60)], HistoryLimits::default());
    let now = clock.at(0.0);
    let a: Vec<u64> = (0..5)
        .map(|_| publish(&mut h, C, now, "x").position.seq)
        .collect();
    let b = publish(&mut h, Stream::Channel("other"), now, "y").position;
    let u = publish(&mut h, Stream::User("chat:1"), now, "z").position;
    assert_eq!(a, [1, 2, 3, 4, 5]);
    assert_eq!((b.seq, u.seq), (1, 1));
    // A user stream and a channel of the same name are different streams.
    assert_ne!(h.peek(C).unwrap().epoch, u.epoch);
    assert_eq!(h.stats().streams, 3);
}

#[test]
fn a_subscribers_epoch_is_the_one_the_next_publish_counts_in() {
    let (mut h, clock) = history(vec![], HistoryLimits::default());
    let p = h.subscribe(Stream::Channel("scores"), clock.at(0.0));
    assert_eq!(p.seq, 0);
    let published = publish(&mut h, Stream::Channel("scores"), clock.at(1.0), "1");
    assert_eq!(
        published.position,
        Position {
            seq: 1,
            epoch: p.epoch
        }
    );
    assert_eq!(published.subscribers, 1);
    assert_eq!(
        h.position(Stream::Channel("scores"), clock.at(2.0)),
        published.position
    );
}

#[test]
fn history_size_keeps_the_last_n() {
    let (mut h, clock) = history(vec![ns("chat:", 3, 60)], HistoryLimits::default());
    let now = clock.at(0.0);
    for i in 1..=5 {
        publish(&mut h, C, now, &i.to_string());
    }
    let top = h.peek(C).unwrap();
    assert_eq!(h.stats().messages, 3);
    let r = h.recover(C, since(top, 2), 300, now);
    assert_eq!(r.decision, RecoveryDecision::Recover { from: 3, to: 5 });
    let e = top.epoch;
    assert_eq!(
        texts(&r.frames),
        [
            format!("chat:1|3|{e}|3"),
            format!("chat:1|4|{e}|4"),
            format!("chat:1|5|{e}|5")
        ]
    );
    let r = h.recover(C, since(top, 1), 300, now);
    assert_eq!(r.decision, RecoveryDecision::Refuse(NotRecovered::NotKept));
    assert!(r.frames.is_empty());
    h.check_invariants();
}

#[test]
fn messages_expire_after_their_ttl_and_tick_frees_them() {
    let (mut h, clock) = history(vec![ns("chat:", 100, 10)], HistoryLimits::default());
    publish(&mut h, C, clock.at(0.0), "a");
    publish(&mut h, C, clock.at(5.0), "b");
    let top = h.peek(C).unwrap();
    let r = h.recover(C, since(top, 0), 300, clock.at(9.9));
    assert_eq!(r.frames.len(), 2);
    // The first expires at 10 s: from then on recovery from 0 is impossible, from 1 fine.
    let r = h.recover(C, since(top, 0), 300, clock.at(10.0));
    assert_eq!(r.decision, RecoveryDecision::Refuse(NotRecovered::NotKept));
    let r = h.recover(C, since(top, 1), 300, clock.at(10.0));
    assert_eq!(texts(&r.frames), [format!("chat:1|2|{}|b", top.epoch)]);
    assert_eq!(h.stats().messages, 1);
    // Nobody touches the stream again: the sweep drops the rest and the block.
    h.tick(clock.at(15.0));
    h.check_invariants();
    let stats = h.stats();
    assert_eq!(stats.messages, 0);
    assert_eq!(
        stats.bytes, h.state_bytes,
        "only the stream's state is left"
    );
    // The position survives its history.
    assert_eq!(h.peek(C), Some(top));
    let r = h.recover(C, since(top, 2), 300, clock.at(15.0));
    assert_eq!(r.decision, RecoveryDecision::Recover { from: 3, to: 2 });
}

#[test]
fn a_stream_without_history_still_counts_and_recovers_when_nothing_was_missed() {
    let (mut h, clock) = history(vec![], HistoryLimits::default());
    let s = Stream::Channel("scores");
    let p = publish(&mut h, s, clock.at(0.0), "1").position;
    assert_eq!(h.stats().messages, 0);
    let r = h.recover(s, since(p, 1), 300, clock.at(0.0));
    assert_eq!(r.decision, RecoveryDecision::Recover { from: 2, to: 1 });
    let r = h.recover(s, since(p, 0), 300, clock.at(0.0));
    assert_eq!(r.decision, RecoveryDecision::Refuse(NotRecovered::NotKept));
    let r = h.recover(s, since(p, 2), 300, clock.at(0.0));
    assert_eq!(r.decision, RecoveryDecision::Refuse(NotRecovered::Ahead));
    let other = Since::new(1, "ZZZZZZZZ");
    let r = h.recover(s, other, 300, clock.at(0.0));
    assert_eq!(
        r.decision,
        RecoveryDecision::Refuse(NotRecovered::EpochChanged)
    );
}

#[test]
fn recovery_is_bounded_by_max_missing() {
    let (mut h, clock) = history(vec![ns("chat:", 1000, 60)], HistoryLimits::default());
    for _ in 0..400 {
        publish(&mut h, C, clock.at(0.0), "m");
    }
    let top = h.peek(C).unwrap();
    let r = h.recover(C, since(top, 99), 300, clock.at(1.0));
    assert_eq!(
        r.decision,
        RecoveryDecision::Refuse(NotRecovered::TooManyMissing)
    );
    let r = h.recover(C, since(top, 100), 300, clock.at(1.0));
    assert_eq!(r.frames.len(), 300);
}

#[test]
fn kept_data_is_appended_to_one_shared_block_and_recovers_the_published_frames() {
    let (mut h, clock) = history(vec![ns("chat:", 10, 60)], HistoryLimits::default());
    let a = publish(&mut h, C, clock.at(0.0), "a");
    let b = publish(&mut h, C, clock.at(0.0), "b");
    let r = h.recover(C, since(b.position, 0), 300, clock.at(0.0));
    // Encoded again from the data: the same bytes the fan-out was handed.
    assert_eq!(r.frames, [a.frame.clone(), b.frame.clone()]);
    assert_eq!(
        texts(&[a.frame]),
        [format!("chat:1|1|{}|a", b.position.epoch)]
    );
    // Only the data is kept, back to back in one block.
    assert_eq!(h.blocks.len(), 1);
    assert_eq!(h.blocks[0].data, b"ab");
    assert_eq!(ENTRY_BYTES, 16);
    assert_eq!(
        h.stats().bytes,
        DEFAULT_BLOCK_SIZE + 4 * ENTRY_BYTES + h.state_bytes
    );
}

#[test]
fn large_data_gets_a_block_of_its_own() {
    let limits = HistoryLimits {
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("chat:", 10, 60)], limits);
    publish(&mut h, C, clock.at(0.0), "s");
    let big = publish(&mut h, C, clock.at(0.0), &"b".repeat(300));
    let small2 = publish(&mut h, C, clock.at(0.0), "t");
    assert_eq!(h.blocks.len(), 2);
    assert_eq!(
        h.blocks[0].data, b"st",
        "small data keeps filling the open block"
    );
    assert_eq!(h.block_bytes, 1024 + 300);
    let r = h.recover(C, since(small2.position, 1), 300, clock.at(0.0));
    assert_eq!(r.frames, [big.frame, small2.frame]);
}

#[test]
fn the_byte_account_is_the_data_blocks_the_rings_and_the_states() {
    let limits = HistoryLimits {
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("chat:", 100, 10)], limits);
    let data = "d".repeat(100);
    for i in 0..50 {
        publish(
            &mut h,
            Stream::Channel(&format!("chat:{}", i % 5)),
            clock.at(0.0),
            &data,
        );
    }
    // 50 × 100 B of data, 10 per 1,024-byte block (5 blocks), 16 ring slots per stream.
    assert_eq!(h.blocks.len(), 5);
    assert_eq!(h.entry_slots, 5 * 16);
    assert_eq!(
        h.bytes(),
        5 * 1024 + 5 * 16 * ENTRY_BYTES + h.state_bytes,
        "exactly what is held"
    );
    assert_eq!(h.stats().messages, 50);
    // Expired and swept: every block and ring is given back; the states remain.
    h.tick(clock.at(10.0));
    h.check_invariants();
    assert_eq!(h.stats().messages, 0);
    assert!(h.blocks.iter().all(|b| b.data.capacity() == 0));
    assert_eq!(h.bytes(), h.state_bytes);
}

#[test]
fn recovered_and_read_frames_are_byte_identical_to_the_json_deliveries() {
    use crate::push::protocol::DeliveryFrame;
    use serde_json::value::RawValue;
    let limits = HistoryLimits {
        block_size: 4096,
        ..HistoryLimits::default()
    };
    let t0 = Instant::now();
    let namespaces = Namespaces::new(vec![ns("chat:", 10, 60)]).unwrap();
    // The gateway's own encoder (`new`'s default).
    let mut h = History::new(namespaces, limits, t0, 7);
    let datas = [
        "1".to_owned(),
        r#"{"home":2,"away":1}"#.to_owned(),
        format!("\"{}\"", "x".repeat(98)),
        format!("\"{}\"", "y".repeat(2000)), // over a quarter block: its own block
        "null".to_owned(),
    ];
    for stream in [C, Stream::User("u\"42")] {
        let mut published = Vec::new();
        for d in &datas {
            let p = h.publish(stream, t0, d.as_bytes());
            h.check_invariants();
            let raw = RawValue::from_string(d.clone()).unwrap();
            let want = DeliveryFrame {
                channel: stream.wire_channel(),
                data: &raw,
            }
            .encode(&p.position);
            assert_eq!(p.frame, want);
            published.push((p.position, p.frame));
        }
        let top = published.last().unwrap().0;
        let r = h.recover(stream, since(top, 0), 100, t0);
        assert!(r.decision.is_recovered());
        let frames: Vec<Bytes> = published.iter().map(|(_, f)| f.clone()).collect();
        assert_eq!(r.frames, frames);
        let page = h.read(stream, Some(since(top, 2)), 2, t0);
        assert_eq!((page.first_seq, &page.frames[..]), (3, &frames[2..4]));
    }
}

#[test]
fn the_byte_bound_evicts_the_oldest_and_those_streams_start_a_new_epoch() {
    let limits = HistoryLimits {
        max_bytes: 16 * 1024,
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("", 1000, 3600)], limits);
    let old = Stream::Channel("old");
    // A subscriber keeps its state (an unwatched stream's state would simply be
    // forgotten at the bound once its messages are gone).
    h.subscribe(old, clock.at(0.0));
    let first = publish(&mut h, old, clock.at(0.0), &"o".repeat(100)).position;
    // Fill well past the bound from other channels.
    for i in 0..1000 {
        let name = format!("c{}", i % 7);
        publish(
            &mut h,
            Stream::Channel(&name),
            clock.at(1.0),
            &"x".repeat(100),
        );
        assert!(h.bytes() <= 16 * 1024, "over the bound: {}", h.bytes());
    }
    let now = h.peek(old).unwrap();
    assert_ne!(now.epoch, first.epoch, "lost a message it promised to keep");
    assert_eq!(now.seq, 0, "a new epoch starts at 0");
    let r = h.recover(old, since(first, 0), 300, clock.at(2.0));
    assert_eq!(
        r.decision,
        RecoveryDecision::Refuse(NotRecovered::EpochChanged)
    );
    assert_eq!(r.position, now);
    // Recent messages of busy channels are still there.
    let c0 = h.peek(Stream::Channel("c0")).unwrap();
    let r = h.recover(
        Stream::Channel("c0"),
        since(c0, c0.seq - 3),
        300,
        clock.at(2.0),
    );
    assert_eq!(r.frames.len(), 3);
    assert!(h.stats().evicted_streams > 0);
    h.check_invariants();
}

#[test]
fn expired_entries_are_not_a_loss_and_keep_the_epoch() {
    let limits = HistoryLimits {
        max_bytes: 8 * 1024,
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("short:", 100, 1), ns("", 1000, 3600)], limits);
    let s = Stream::Channel("short:1");
    // Subscribed, so its state is not forgotten at the bound once its message expired.
    h.subscribe(s, clock.at(0.0));
    let p = publish(&mut h, s, clock.at(0.0), "gone soon").position;
    for i in 0..500 {
        let name = format!("c{}", i % 3);
        publish(
            &mut h,
            Stream::Channel(&name),
            clock.at(5.0),
            &"x".repeat(100),
        );
    }
    assert_eq!(h.peek(s).unwrap().epoch, p.epoch, "expiry is not a loss");
}

#[test]
fn idle_streams_are_forgotten_and_come_back_with_a_new_epoch() {
    let limits = HistoryLimits {
        idle_forget: Duration::from_secs(60),
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("chat:", 10, 30)], limits);
    let plain = Stream::Channel("plain");
    let watched = Stream::Channel("watched");
    let p = publish(&mut h, plain, clock.at(0.0), "1").position;
    h.subscribe(watched, clock.at(0.0));
    publish(&mut h, C, clock.at(0.0), "kept");
    h.tick(clock.at(59.0));
    assert_eq!(h.stats().streams, 3);
    h.tick(clock.at(61.0));
    h.check_invariants();
    // `plain` is gone; `watched` has a subscriber; `chat:1`'s message expired at 30 s
    // and the sweep saw it at 59 s, so it is idle from its publish at 0 s too.
    assert_eq!(h.peek(plain), None);
    assert!(h.peek(watched).is_some());
    assert_eq!(h.stats().forgotten_streams, 2);
    let again = h.position(plain, clock.at(62.0));
    assert_eq!(again.seq, 0);
    assert_ne!(again.epoch, p.epoch);
    // Unsubscribed, `watched` goes idle from then.
    h.unsubscribe(watched, clock.at(100.0));
    h.tick(clock.at(159.0));
    assert!(h.peek(watched).is_some());
    h.tick(clock.at(161.0));
    assert_eq!(h.peek(watched), None);
    h.check_invariants();
}

#[test]
fn activity_postpones_forgetting() {
    let limits = HistoryLimits {
        idle_forget: Duration::from_secs(60),
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![], limits);
    let s = Stream::Channel("busy");
    for minute in 0..5 {
        publish(&mut h, s, clock.at(f64::from(minute) * 50.0), "m");
        h.tick(clock.at(f64::from(minute) * 50.0 + 49.0));
        assert!(h.peek(s).is_some(), "minute {minute}");
    }
    h.tick(clock.at(200.0 + 121.0));
    assert_eq!(h.peek(s), None);
}

#[test]
fn at_the_bound_idle_states_go_before_kept_messages() {
    let limits = HistoryLimits {
        max_bytes: 64 * 1024,
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("chat:", 10, 3600)], limits);
    let p = publish(&mut h, C, clock.at(0.0), "kept").position;
    let mut i = 0;
    while h.stats().forgotten_streams == 0 {
        publish(
            &mut h,
            Stream::Channel(&format!("one-off-{i}")),
            clock.at(0.0),
            "x",
        );
        i += 1;
        assert!(i < 100_000);
    }
    assert!(h.bytes() <= 64 * 1024);
    assert_eq!(h.peek(C).unwrap().epoch, p.epoch);
    assert_eq!(h.stats().evicted_streams, 0);
}

#[test]
fn history_reads_page_through_the_kept_messages() {
    let (mut h, clock) = history(vec![ns("chat:", 10, 60)], HistoryLimits::default());
    for i in 1..=15 {
        publish(&mut h, C, clock.at(0.0), &i.to_string());
    }
    let now = clock.at(1.0);
    let page = h.read(C, None, 3, now);
    assert_eq!(
        (page.position.seq, page.first_seq, page.frames.len()),
        (15, 6, 3)
    );
    let page = h.read(C, Some(since(page.position, 12)), 100, now);
    assert_eq!((page.first_seq, page.frames.len()), (13, 3));
    let page = h.read(C, Some(since(page.position, 15)), 100, now);
    assert_eq!((page.first_seq, page.frames.len()), (16, 0));
    // Another epoch's since is meaningless here: from the oldest kept.
    let page = h.read(C, Some(Since::new(14, "ZZZZZZZZ")), 2, now);
    assert_eq!((page.first_seq, page.frames.len()), (6, 2));
    // An unknown stream answers a fresh, empty position.
    let page = h.read(Stream::Channel("nobody"), None, 10, now);
    assert_eq!(
        (page.position.seq, page.first_seq, page.frames.len()),
        (0, 1, 0)
    );
}

#[test]
fn a_queued_frame_does_not_pin_history_memory() {
    let limits = HistoryLimits {
        block_size: 1024,
        ..HistoryLimits::default()
    };
    let (mut h, clock) = history(vec![ns("chat:", 1, 60)], limits);
    let queued = publish(&mut h, C, clock.at(0.0), "still in a socket queue").frame;
    for _ in 0..300 {
        publish(&mut h, C, clock.at(0.0), "next");
    }
    // The frame is the fan-out's own allocation: it still reads fine, while history
    // gave back the blocks its data was in.
    assert!(
        String::from_utf8(queued.to_vec())
            .unwrap()
            .ends_with("queue")
    );
    assert_eq!(h.stats().messages, 1);
    assert_eq!(h.block_bytes, 1024);
    assert_eq!(h.blocks.len(), 1);
}

// ---- model-based property test ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Publish { stream: u8, len: u16 },
    Advance { secs: u8 },
    Recover { stream: u8, back: u8 },
    Subscribe { stream: u8 },
    Unsubscribe { stream: u8 },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, 0u16..120).prop_map(|(stream, len)| Op::Publish { stream, len }),
        2 => (0u8..12, 0u16..400).prop_map(|(stream, len)| Op::Publish { stream, len }),
        2 => (0u8..20).prop_map(|secs| Op::Advance { secs }),
        3 => (0u8..12, 0u8..40).prop_map(|(stream, back)| Op::Recover { stream, back }),
        1 => (0u8..12).prop_map(|stream| Op::Subscribe { stream }),
        1 => (0u8..12).prop_map(|stream| Op::Unsubscribe { stream }),
        1 => Just(Op::Tick),
    ]
}

fn stream_of(i: u8) -> (String, bool) {
    // Five namespaces: no history, short TTL, small size, large size (what fills the
    // byte bound), users (built-in 16 / 5 min).
    match i % 5 {
        0 => (format!("plain:{i}"), false),
        1 => (format!("short:{i}"), false),
        2 => (format!("small:{i}"), false),
        3 => (format!("big:{i}"), false),
        _ => (format!("{i}"), true),
    }
}

/// What the model remembers of one epoch of one stream: every publish's (expiry
/// second, payload).
#[derive(Default, Debug)]
struct ModelStream {
    epoch: Option<Epoch>,
    published: Vec<(u32, String)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Against a model that knows only the per-namespace promises: seqs are gapless per
    /// epoch; a recovery hands out exactly the frames published at those seqs; while an
    /// epoch lasts, recovery succeeds exactly when size, TTL and `max_missing` allow
    /// it; the byte bound holds; every invariant holds after every operation.
    #[test]
    fn history_keeps_its_promises(ops in proptest::collection::vec(op(), 1..400), max_kib in 4usize..24) {
        let limits = HistoryLimits {
            max_bytes: max_kib * 1024,
            idle_forget: Duration::from_secs(30),
            block_size: 1024,
        };
        let namespaces = vec![ns("short:", 50, 5), ns("small:", 4, 3600), ns("big:", 1000, 3600)];
        let (mut h, clock) = history(namespaces.clone(), limits);
        let nss = Namespaces::new(namespaces).unwrap();
        let mut model: HashMap<u8, ModelStream> = HashMap::new();
        let mut subscribed: HashMap<u8, u32> = HashMap::new();
        let mut now_s = 0u32;
        for op in ops {
            let now = clock.at(f64::from(now_s));
            match op {
                Op::Advance { secs } => now_s += u32::from(secs),
                Op::Tick => h.tick(now),
                Op::Subscribe { stream } => {
                    let (key, user) = stream_of(stream);
                    let s = if user { Stream::User(&key) } else { Stream::Channel(&key) };
                    h.subscribe(s, now);
                    *subscribed.entry(stream).or_default() += 1;
                }
                Op::Unsubscribe { stream } => {
                    let (key, user) = stream_of(stream);
                    let s = if user { Stream::User(&key) } else { Stream::Channel(&key) };
                    if let Some(n) = subscribed.get_mut(&stream).filter(|n| **n > 0) {
                        *n -= 1;
                        h.unsubscribe(s, now);
                    }
                }
                Op::Publish { stream, len } => {
                    let (key, user) = stream_of(stream);
                    let s = if user { Stream::User(&key) } else { Stream::Channel(&key) };
                    let payload = format!("{stream}-{}", "p".repeat(len as usize));
                    let p = h.publish(s, now, payload.as_bytes());
                    let m = model.entry(stream).or_default();
                    if m.epoch != Some(p.position.epoch) {
                        // A new epoch (first sight, forgotten or evicted): starts at 1.
                        prop_assert_eq!(p.position.seq, 1);
                        m.epoch = Some(p.position.epoch);
                        m.published.clear();
                    }
                    prop_assert_eq!(
                        texts(&[p.frame]),
                        [format!("{key}|{}|{}|{payload}", p.position.seq, p.position.epoch)]
                    );
                    let ttl = nss.of(s).ttl_secs();
                    m.published.push((now_s.saturating_add(ttl), payload));
                    prop_assert_eq!(p.position.seq, m.published.len() as u64, "gapless");
                    prop_assert_eq!(p.subscribers, subscribed.get(&stream).copied().unwrap_or(0));
                }
                Op::Recover { stream, back } => {
                    let (key, user) = stream_of(stream);
                    let s = if user { Stream::User(&key) } else { Stream::Channel(&key) };
                    let Some(m) = model.get(&stream) else { continue };
                    let Some(epoch) = m.epoch else { continue };
                    let top = m.published.len() as u64;
                    let from_seq = top.saturating_sub(u64::from(back));
                    let r = h.recover(s, Since { seq: from_seq, epoch: Some(epoch) }, 20, now);
                    if r.position.epoch != epoch {
                        // Forgotten or evicted since: refused, never partial.
                        prop_assert_eq!(r.decision, RecoveryDecision::Refuse(NotRecovered::EpochChanged));
                        prop_assert!(r.frames.is_empty());
                        continue;
                    }
                    prop_assert_eq!(r.position.seq, top);
                    let size = u64::from(nss.of(s).history_size);
                    let missing = top - from_seq;
                    let kept = (from_seq + 1..=top).all(|seq| {
                        let (expires, _) = &m.published[seq as usize - 1];
                        *expires > now_s && seq + size > top
                    });
                    let expect = missing == 0 || (missing <= 20 && kept);
                    prop_assert_eq!(r.decision.is_recovered(), expect, "{:?} missing {} kept {}", r.decision, missing, kept);
                    if expect {
                        let want: Vec<String> = (from_seq + 1..=top)
                            .map(|seq| format!("{key}|{seq}|{epoch}|{}", m.published[seq as usize - 1].1))
                            .collect();
                        prop_assert_eq!(texts(&r.frames), want);
                    }
                }
            }
            h.check_invariants();
            prop_assert!(h.bytes() <= h.limits().max_bytes, "bytes {} over the bound", h.bytes());
        }
    }
}
