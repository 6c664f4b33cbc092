//! Measures the Redis engine's publish path with history on (docs/benchmarks.md,
//! "Redis engine"): how many publishes per second one node pushes through 1 or more
//! Redis instances with pipelined batches, and what each Redis costs in CPU.
//!
//! ```text
//! cargo run --release -p pingwheel --example redis_publish -- INSTANCES SECONDS BATCH IN_FLIGHT
//! ```
//!
//! Starts INSTANCES `redis-server`s (`$REDIS_SERVER_BIN` or `redis-server`) on free
//! loopback ports in temporary directories, then publishes for SECONDS: IN_FLIGHT
//! concurrent calls of BATCH messages each (1,000 channels, history of 100 messages
//! with a 10-minute TTL, a 40-byte payload), through the same script, pipelines and
//! sharding as the gateway. Prints publishes/s, each Redis's CPU and the publishing
//! node's own (from `/proc/PID/stat`). Every Redis is killed at the end.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingwheel::engine::redis::instance::Timing;
use pingwheel::engine::redis::keys::Kind;
use pingwheel::engine::redis::node::{
    Epoch, Keep, Live, NodeSettings, NodeSink, PublishItem, RedisNode, StreamId,
};
use pingwheel::engine::redis::nodes::Control;
use pingwheel::metrics::EngineMetrics;

#[derive(Debug)]
struct Quiet;

impl NodeSink for Quiet {
    fn keep(&self, _: &StreamId) -> Keep {
        KEEP
    }
    fn deliver(&self, _: Vec<Live>) {}
    fn position_lost(&self, _: &StreamId, _: Epoch, _: u64) {}
    fn control(&self, _: Control) {}
    fn up_changed(&self, _: bool) {}
    fn local_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

const KEEP: Keep = Keep {
    size: 100,
    ttl: Duration::from_secs(600),
};

fn start_redis() -> (Child, u16, std::path::PathBuf) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("pingwheel-pub-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, port, dir)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let instances = *args.first().unwrap_or(&1) as usize;
    let seconds = *args.get(1).unwrap_or(&10);
    let batch = *args.get(2).unwrap_or(&100) as usize;
    let in_flight = *args.get(3).unwrap_or(&8) as usize;
    let mut servers: Vec<_> = (0..instances).map(|_| start_redis()).collect();
    let ticks_per_sec = 100.0; // Linux USER_HZ
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let published = Arc::new(AtomicU64::new(0));
    let (rate, cpus, own) = runtime.block_on(async {
        let node = RedisNode::start(
            NodeSettings {
                urls: servers
                    .iter()
                    .map(|s| format!("redis://127.0.0.1:{}", s.1))
                    .collect(),
                name: "bench".into(),
                timing: Timing {
                    command: Duration::from_secs(2),
                    ..Timing::default()
                },
                meta_ttl: Duration::from_secs(3600),
            },
            Arc::new(Quiet),
            EngineMetrics::new(),
        )
        .unwrap();
        while !node.is_up() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let names: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("bench:{i}")).collect());
        let data = br#"{"score":12345,"team":"home","t":17646336}"#;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let start_ticks: Vec<u64> = servers.iter().map(|s| cpu_ticks(s.0.id())).collect();
        let own_start = cpu_ticks(std::process::id());
        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|t| {
                let node = Arc::clone(&node);
                let names = Arc::clone(&names);
                let published = Arc::clone(&published);
                tokio::spawn(async move {
                    let mut next = t * batch;
                    while Instant::now() < deadline {
                        let items: Vec<PublishItem<'_>> = (0..batch)
                            .map(|k| PublishItem {
                                kind: Kind::Channel,
                                name: &names[(next + k) % names.len()],
                                data,
                                keep: KEEP,
                            })
                            .collect();
                        next += batch * in_flight;
                        node.publish(&items).await.expect("publish");
                        published.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let wall = started.elapsed().as_secs_f64();
        let cpus: Vec<f64> = servers
            .iter()
            .zip(&start_ticks)
            .map(|(s, t0)| (cpu_ticks(s.0.id()) - t0) as f64 / ticks_per_sec / wall)
            .collect();
        let own = (cpu_ticks(std::process::id()) - own_start) as f64 / ticks_per_sec / wall;
        (published.load(Ordering::Relaxed) as f64 / wall, cpus, own)
    });
    println!(
        "instances={instances} batch={batch} in_flight={in_flight}: {rate:.0} publishes/s; \
         the publishing node (this process) used {:.0}% of a core",
        own * 100.0
    );
    for (i, cpu) in cpus.iter().enumerate() {
        let per = rate / instances as f64;
        println!(
            "  redis {i}: {:.0}% of a core for ~{per:.0} publishes/s = {:.1}% of a core per 10,000 publishes/s",
            cpu * 100.0,
            cpu * 100.0 / (per / 10_000.0)
        );
    }
    for (_, port, _) in &servers {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "INFO", "commandstats"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in out.lines().filter(|l| l.starts_with("cmdstat_evalsha")) {
            println!("  redis :{port} {line}");
        }
    }
    for (child, _, dir) in &mut servers {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}
