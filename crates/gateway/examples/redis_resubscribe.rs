//! Measures how fast a node restores its channel subscriptions after a Redis restart
//! (docs/benchmarks.md, "Redis engine").
//!
//! ```text
//! cargo run --release -p pingwheel --example redis_resubscribe -- [CHANNELS]
//! ```
//!
//! Starts `redis-server` (`$REDIS_SERVER_BIN` or `redis-server` on PATH) on a free
//! loopback port in a temporary directory, subscribes one node to CHANNELS channels
//! (default 200,000), SIGKILLs and restarts Redis, and reports the time from Redis
//! accepting connections again to the node being up with every channel subscribed
//! (checked with `PUBSUB NUMSUB` on Redis's side). Redis is killed at the end.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingwheel::engine::redis::instance::Timing;
use pingwheel::engine::redis::node::{
    Epoch, Keep, Live, NodeSettings, NodeSink, RedisNode, StreamId,
};
use pingwheel::engine::redis::nodes::Control;
use pingwheel::metrics::EngineMetrics;

#[derive(Debug)]
struct Quiet;

impl NodeSink for Quiet {
    fn keep(&self, _: &StreamId) -> Keep {
        Keep {
            size: 0,
            ttl: Duration::ZERO,
        }
    }
    fn deliver(&self, _: Vec<Live>) {}
    fn position_lost(&self, _: &StreamId, _: Epoch, _: u64) {}
    fn control(&self, _: Control) {}
    fn up_changed(&self, _: bool) {}
    fn local_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn numsub(port: u16, channel: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PUBSUB", "NUMSUB", channel])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned()
}

fn main() {
    let channels: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().expect("CHANNELS is a number"));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("pingwheel-resub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = start_redis(port, &dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let node = RedisNode::start(
            NodeSettings {
                urls: vec![format!("redis://127.0.0.1:{port}")],
                name: "bench".into(),
                timing: Timing::default(),
                meta_ttl: Duration::from_secs(3600),
            },
            Arc::new(Quiet),
            EngineMetrics::new(),
        )
        .unwrap();
        while !node.is_up() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..channels {
            node.subscribe(StreamId::channel(&format!("bench:{i}")));
        }
        let started = Instant::now();
        let flushed = node.flush().await;
        assert!(flushed.iter().all(|(_, r)| r.is_ok()), "{flushed:?}");
        println!("initial subscribe of {channels} channels: {:?}", started.elapsed());

        let _ = redis.kill();
        let _ = redis.wait();
        while node.is_up() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        redis = start_redis(port, &dir);
        let back = Instant::now();
        while !node.is_up() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let restored = back.elapsed();
        let last = format!("pw:p:c:bench:{}", channels - 1);
        assert_eq!(numsub(port, &last), "1", "the last channel is subscribed again");
        println!(
            "after a Redis restart: {channels} channels resubscribed {restored:?} after Redis listened again"
        );
    });
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
