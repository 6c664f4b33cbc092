//! Positions and history in user space: what the memory engine's critical section costs
//! per publish with and without history, at the byte bound (evicting), and per recovery.
//! (Fan-out and the whole process are measured by the load runs in docs/benchmarks.md;
//! the RSS per kept message by `--bin history-memory`.)
//!
//! `cargo bench -p pingwheel-benches --bench history`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pingwheel::engine::Stream;
use pingwheel::engine::history::{History, HistoryLimits};
use pingwheel::engine::namespace::{Namespace, Namespaces};
use pingwheel::engine::position::Since;
use pingwheel::push::protocol::DeliveryFrame;
use serde_json::value::RawValue;

const CHANNELS: usize = 10_000;

fn namespaces() -> Namespaces {
    Namespaces::new(vec![Namespace {
        prefix: "chat:".into(),
        history_size: 100,
        history_ttl: Duration::from_secs(3600),
    }])
    .unwrap()
}

fn data() -> Box<RawValue> {
    // 100 B of data, quotes included.
    RawValue::from_string(format!("\"{}\"", "x".repeat(98))).unwrap()
}

/// Publishes round-robin over `names`, `prefill` times first; benches one publish.
fn bench_publish(
    c: &mut Criterion,
    label: &str,
    names: &[String],
    limits: HistoryLimits,
    prefill: usize,
) {
    let data = data();
    let t0 = Instant::now();
    let mut h = History::new(namespaces(), limits, t0, 1);
    let mut i = 0usize;
    let mut publish = |h: &mut History| {
        let name = &names[i % names.len()];
        i += 1;
        h.publish(Stream::Channel(name), t0, data.get().as_bytes())
    };
    for _ in 0..prefill {
        publish(&mut h);
    }
    c.bench_function(label, |b| {
        b.iter(|| black_box(publish(&mut h).position.seq))
    });
}

fn publish(c: &mut Criterion) {
    let chat: Vec<String> = (0..CHANNELS).map(|i| format!("chat:{i}")).collect();
    let plain: Vec<String> = (0..CHANNELS).map(|i| format!("plain:{i}")).collect();
    bench_publish(
        c,
        "history/publish, no history (10k channels)",
        &plain,
        HistoryLimits::default(),
        CHANNELS,
    );
    bench_publish(
        c,
        "history/publish, kept, 100 per channel, full rings (10k channels, 1M kept)",
        &chat,
        HistoryLimits {
            max_bytes: 4 << 30,
            ..HistoryLimits::default()
        },
        100 * CHANNELS,
    );
    bench_publish(
        c,
        "history/publish, kept, at a 64 MiB byte bound (evicting)",
        &chat,
        HistoryLimits {
            max_bytes: 64 << 20,
            ..HistoryLimits::default()
        },
        100 * CHANNELS,
    );
    let one = vec!["chat:hot".to_owned()];
    bench_publish(
        c,
        "history/publish, kept, one hot channel",
        &one,
        HistoryLimits::default(),
        1000,
    );
}

fn recover(c: &mut Criterion) {
    let data = data();
    let t0 = Instant::now();
    let mut h = History::new(namespaces(), HistoryLimits::default(), t0, 1);
    let name = "chat:1";
    for _ in 0..100 {
        h.publish(Stream::Channel(name), t0, data.get().as_bytes());
    }
    let top = h.peek(Stream::Channel(name)).unwrap();
    let since = Since {
        seq: top.seq - 20,
        epoch: Some(top.epoch),
    };
    c.bench_function("history/recover 20 messages", |b| {
        b.iter(|| {
            black_box(
                h.recover(Stream::Channel(name), since, 300, t0)
                    .frames
                    .len(),
            )
        })
    });
    let frame = DeliveryFrame {
        channel: name,
        data: &data,
    };
    c.bench_function(
        "history/encode one 100 B delivery alone (own allocation)",
        |b| b.iter(|| black_box(frame.encode(&top).len())),
    );
}

criterion_group!(benches, publish, recover);
criterion_main!(benches);
