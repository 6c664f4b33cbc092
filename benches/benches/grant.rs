//! What a token's `channels` claim costs at the upgrade: `ChannelGrant::from_patterns`
//! over 100, 1,000 and 10,000 distinct patterns (half exact names, half prefixes). It
//! runs on a worker's loop for every upgrade, so the time per pattern must stay flat as
//! the claim grows (criterion reports it as elements per second).
//!
//! `cargo bench -p pingwheel-benches --bench grant`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pingwheel::push::channel::ChannelGrant;

/// `n` distinct patterns as they would arrive in a claim: `team:0`, `org:1:*`, ...
fn patterns(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("team:{i}")
            } else {
                format!("org:{i}:*")
            }
        })
        .collect()
}

fn from_patterns(c: &mut Criterion) {
    let mut group = c.benchmark_group("grant/from_patterns");
    for n in [100, 1_000, 10_000] {
        let claim = patterns(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &claim, |b, claim| {
            b.iter(|| ChannelGrant::from_patterns(black_box(claim), 128).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, from_patterns);
criterion_main!(benches);
