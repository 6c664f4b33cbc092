//! What kept messages cost in resident memory: fills the memory engine's history with
//! N messages (default 1,000,000 of 100 B of data, over 10,000 channels of 100 kept
//! messages each) and reports the growth of this process's RSS per message against
//! three measures of "payload": the published data, the delivery JSON (what a client
//! receives as the message text) and the whole WebSocket frame.
//!
//! `cargo run --release -p pingwheel-benches --bin history-memory [-- MESSAGES DATA_BYTES CHANNELS]`
//!
//! The real gateway's figure (RSS of the `pingwheel` process after publishes through
//! the API) is in docs/benchmarks.md; this one isolates the history itself.

use std::time::{Duration, Instant};

use pingwheel::engine::Stream;
use pingwheel::engine::history::{History, HistoryLimits};
use pingwheel::engine::namespace::{Namespace, Namespaces};
use pingwheel::push::protocol::delivery_json;
use serde_json::value::RawValue;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: MESSAGES DATA_BYTES CHANNELS"))
        .collect();
    let messages = args.first().copied().unwrap_or(1_000_000);
    let data_bytes = args.get(1).copied().unwrap_or(100);
    let channels = args.get(2).copied().unwrap_or(10_000);
    let per_channel = messages.div_ceil(channels);
    // A JSON string of exactly `data_bytes` bytes, quotes included.
    let data = RawValue::from_string(format!("\"{}\"", "x".repeat(data_bytes - 2))).unwrap();
    let names: Vec<String> = (0..channels).map(|i| format!("chat:{i}")).collect();
    let namespaces = Namespaces::new(vec![Namespace {
        prefix: "chat:".into(),
        history_size: u32::try_from(per_channel).unwrap(),
        history_ttl: Duration::from_secs(3600),
    }])
    .unwrap();
    let limits = HistoryLimits {
        max_bytes: 4 << 30,
        ..HistoryLimits::default()
    };
    let t0 = Instant::now();
    let before = rss_bytes();
    let mut history = History::new(namespaces, limits, t0, 1);
    let (mut frame_bytes, mut json_bytes) = (0usize, 0usize);
    let start = Instant::now();
    for i in 0..messages {
        let name = &names[i % channels];
        let published = history.publish(Stream::Channel(name), t0, data.get().as_bytes());
        frame_bytes += published.frame.len();
        json_bytes += delivery_json(&published.frame).len();
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    let stats = history.stats();
    assert_eq!(stats.messages, messages);
    let grown = after - before;
    let m = messages as f64;
    println!(
        "kept messages:            {messages} ({channels} channels x {per_channel}), data {data_bytes} B each"
    );
    println!(
        "publish time:             {:.0} ns/message",
        elapsed.as_nanos() as f64 / m
    );
    println!(
        "RSS growth:               {grown} B = {:.1} B/message",
        grown as f64 / m
    );
    println!(
        "history's own account:    {} B = {:.1} B/message",
        stats.bytes,
        stats.bytes as f64 / m
    );
    println!(
        "frame (header+JSON):      {:.1} B/message; delivery JSON {:.1} B; data {data_bytes} B",
        frame_bytes as f64 / m,
        json_bytes as f64 / m
    );
    println!(
        "RSS / data:               {:.2}x\nRSS / delivery JSON:      {:.2}x\nRSS / frame:              {:.2}x",
        grown as f64 / (m * data_bytes as f64),
        grown as f64 / json_bytes as f64,
        grown as f64 / frame_bytes as f64
    );
    drop(history);
}
