//! Two nodes of the Redis engine on one real `redis-server`: publishing on one reaches
//! both in order, gaps are refilled from history or reported lost, a restart of Redis
//! is survived with the positions checked, control messages and heartbeats cross.
#![allow(missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use pingwheel::engine::redis::instance::Timing;
use pingwheel::engine::redis::keys::Kind;
use pingwheel::engine::redis::node::{
    Epoch, Keep, Live, NodeSettings, NodeSink, PublishItem, RedisNode, StreamId, epoch_str,
};
use pingwheel::engine::redis::nodes::Control;
use pingwheel::metrics::EngineMetrics;

#[derive(Default)]
struct Sink {
    delivered: Mutex<Vec<(String, u64, String, String)>>,
    lost: Mutex<Vec<(String, u64)>>,
    controls: Mutex<Vec<Control>>,
    ups: Mutex<Vec<bool>>,
}

impl NodeSink for Sink {
    fn keep(&self, stream: &StreamId) -> Keep {
        if stream.name.starts_with("nohist") {
            Keep {
                size: 0,
                ttl: Duration::ZERO,
            }
        } else {
            Keep {
                size: 1000,
                ttl: Duration::from_secs(60),
            }
        }
    }
    fn deliver(&self, batch: Vec<Live>) {
        let mut d = self.delivered.lock().unwrap();
        for l in batch {
            d.push((
                l.stream.name.to_string(),
                l.seq,
                epoch_str(&l.epoch).to_owned(),
                String::from_utf8(l.data.to_vec()).unwrap(),
            ));
        }
    }
    fn position_lost(&self, stream: &StreamId, _epoch: Epoch, seq: u64) {
        self.lost
            .lock()
            .unwrap()
            .push((stream.name.to_string(), seq));
    }
    fn control(&self, control: Control) {
        self.controls.lock().unwrap().push(control);
    }
    fn up_changed(&self, up: bool) {
        self.ups.lock().unwrap().push(up);
    }
    fn local_counts(&self) -> (u64, u64) {
        (3, 4)
    }
}

impl Sink {
    fn seqs(&self, stream: &str) -> Vec<u64> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.0 == stream)
            .map(|d| d.1)
            .collect()
    }
}

async fn until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn timing() -> Timing {
    Timing {
        command: Duration::from_millis(300),
        connect: Duration::from_millis(500),
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(300),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

async fn node(urls: &[String], name: &str) -> (Arc<RedisNode>, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let node = RedisNode::start(
        NodeSettings {
            urls: urls.to_vec(),
            name: name.into(),
            timing: timing(),
            meta_ttl: Duration::from_secs(3600),
        },
        sink.clone(),
        EngineMetrics::new(),
    )
    .unwrap();
    until("node up", Duration::from_secs(5), || node.is_up()).await;
    (node, sink)
}

fn item<'a>(name: &'a str, data: &'a str) -> PublishItem<'a> {
    PublishItem {
        kind: Kind::Channel,
        name,
        data: data.as_bytes(),
        keep: Keep {
            size: 1000,
            ttl: Duration::from_secs(60),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn publishes_on_either_node_reach_both_in_order() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let urls = vec![server.url()];
        let (a, sa) = node(&urls, "a").await;
        let (b, sb) = node(&urls, "b").await;
        for n in [&a, &b] {
            n.subscribe(StreamId::channel("scores"));
            n.subscribe(StreamId::channel("scores")); // counted, subscribed once
            assert!(n.flush().await.iter().all(|(_, r)| r.is_ok()));
        }
        assert_eq!(a.local_count(&StreamId::channel("scores")), 2);
        let mut positions = Vec::new();
        for i in 0..200 {
            let publisher = if i % 2 == 0 { &a } else { &b };
            let data = format!("{{\"n\":{i}}}");
            let batch = [item("scores", &data), item("other", "1")];
            let got = publisher.publish(&batch).await.unwrap();
            positions.push(got[0]);
        }
        assert_eq!(
            positions.iter().map(|p| p.0).collect::<Vec<_>>(),
            (1..=200).collect::<Vec<_>>()
        );
        assert!(positions.windows(2).all(|w| w[0].1 == w[1].1), "one epoch");
        for sink in [&sa, &sb] {
            until("200 deliveries", Duration::from_secs(5), || {
                sink.seqs("scores").len() >= 200
            })
            .await;
            assert_eq!(sink.seqs("scores"), (1..=200).collect::<Vec<_>>());
            assert!(sink.seqs("other").is_empty(), "not subscribed");
            assert!(sink.lost.lock().unwrap().is_empty());
        }
        assert_eq!(sa.delivered.lock().unwrap()[0].3, "{\"n\":0}");

        // The last local subscription leaves: the node unsubscribes.
        a.unsubscribe(StreamId::channel("scores"));
        a.unsubscribe(StreamId::channel("scores"));
        a.flush().await;
        assert_eq!(
            server
                .cli(&["PUBSUB", "NUMSUB", "pw:p:c:scores"])
                .lines()
                .last(),
            Some("1")
        );

        // Control messages reach every node, the sender's own included.
        let receivers = b
            .send_control(&Control::Disconnect { user: "42".into() })
            .await
            .unwrap();
        assert_eq!(receivers, 2);
        for sink in [&sa, &sb] {
            until("control", Duration::from_secs(5), || {
                !sink.controls.lock().unwrap().is_empty()
            })
            .await;
        }
        // Heartbeats list both nodes.
        until("heartbeats", Duration::from_secs(5), || {
            server.cli(&["HLEN", "pw:nodes"]) == "2"
        })
        .await;
        let nodes = a.nodes().await.unwrap();
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!((nodes[0].connections, nodes[0].subscriptions), (3, 4));
    });
}

#[test]
fn a_gap_is_refilled_from_history_or_reported_lost() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let urls = vec![server.url()];
        let (a, sink) = node(&urls, "a").await;
        for name in ["g", "nohist"] {
            a.subscribe(StreamId::channel(name));
        }
        a.flush().await;
        let first = a.publish(&[item("g", "1")]).await.unwrap()[0];
        let epoch = epoch_str(&first.1).to_owned();
        until("seq 1", Duration::from_secs(5), || sink.seqs("g") == [1]).await;

        // Seqs 2 and 3 are kept but their pub/sub messages "were lost"; 4 arrives.
        server.cli(&["DEL", "pw:h:c:g"]);
        let now = server.cli(&[
            "EVAL",
            "local t = redis.call('time') return t[1] .. string.format('%06d', tonumber(t[2]))",
            "0",
        ]);
        for seq in ["1", "2", "3"] {
            server.cli(&["XADD", "pw:h:c:g", seq, "d", seq, "t", &now]);
        }
        server.cli(&["HSET", "pw:m:c:g", "s", "4"]);
        server.cli(&["PUBLISH", "pw:p:c:g", &format!("4:{epoch}:{now}:4")]);
        until("refilled", Duration::from_secs(5), || {
            sink.seqs("g") == [1, 2, 3, 4]
        })
        .await;
        assert!(sink.lost.lock().unwrap().is_empty());

        // Seq 6 arrives with 5 nowhere: lost at 6, and 7 follows.
        server.cli(&["PUBLISH", "pw:p:c:g", &format!("6:{epoch}:{now}:6")]);
        until("lost", Duration::from_secs(5), || {
            !sink.lost.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(sink.lost.lock().unwrap()[0], ("g".to_owned(), 6));
        server.cli(&["PUBLISH", "pw:p:c:g", &format!("7:{epoch}:{now}:7")]);
        until("7", Duration::from_secs(5), || {
            sink.seqs("g").ends_with(&[7])
        })
        .await;
        assert_eq!(sink.seqs("g"), [1, 2, 3, 4, 7]);

        // Without history, any gap is lost at once.
        let p = a
            .publish(&[PublishItem {
                keep: Keep {
                    size: 0,
                    ttl: Duration::ZERO,
                },
                ..item("nohist", "1")
            }])
            .await
            .unwrap()[0];
        let e = epoch_str(&p.1).to_owned();
        until("nohist 1", Duration::from_secs(5), || {
            sink.seqs("nohist") == [1]
        })
        .await;
        server.cli(&["PUBLISH", "pw:p:c:nohist", &format!("3:{e}:{now}:3")]);
        until("nohist lost", Duration::from_secs(5), || {
            sink.lost.lock().unwrap().len() == 2
        })
        .await;
    });
}

#[test]
fn after_a_redis_restart_the_node_resubscribes_and_recovers_what_it_missed() {
    let mut server = RedisServer::start_persistent();
    runtime().block_on(async {
        let urls = vec![server.url()];
        let (a, sink) = node(&urls, "a").await;
        a.subscribe(StreamId::channel("r"));
        a.flush().await;
        a.publish(&[item("r", "1"), item("r", "2")]).await.unwrap();
        until("1, 2", Duration::from_secs(5), || sink.seqs("r") == [1, 2]).await;

        server.restart();
        until("down", Duration::from_secs(5), || !a.is_up()).await;
        let err = a.publish(&[item("r", "x")]).await.unwrap_err();
        eprintln!("publish while down: {err}");
        // While this node is away, another publisher (a second node) goes on: seq 3, 4.
        let (b, _) = node(&urls, "b").await;
        b.publish(&[item("r", "3"), item("r", "4")]).await.unwrap();
        until("up again", Duration::from_secs(5), || a.is_up()).await;
        // The check after the reconnect sees top 4 > 2 and refills 3, 4 from history.
        until("refilled 3, 4", Duration::from_secs(5), || {
            sink.seqs("r") == [1, 2, 3, 4]
        })
        .await;
        // And live publishes reach it again.
        b.publish(&[item("r", "5")]).await.unwrap();
        until("5", Duration::from_secs(5), || {
            sink.seqs("r") == [1, 2, 3, 4, 5]
        })
        .await;
        assert_eq!(*sink.ups.lock().unwrap(), [true, false, true]);
    });
}

#[test]
fn two_instances_shard_streams_and_each_works() {
    let (one, two) = (RedisServer::start(), RedisServer::start());
    runtime().block_on(async {
        let urls = vec![one.url(), two.url()];
        let (a, sink) = node(&urls, "a").await;
        let names: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        for n in &names {
            a.subscribe(StreamId::channel(n));
        }
        a.flush().await;
        let items: Vec<_> = names.iter().map(|n| item(n, "1")).collect();
        a.publish(&items).await.unwrap();
        until("40 deliveries", Duration::from_secs(5), || {
            sink.delivered.lock().unwrap().len() == 40
        })
        .await;
        let on = |s: &RedisServer| {
            s.cli(&["EVAL", "return #redis.call('keys', 'pw:m:*')", "0"])
                .parse::<usize>()
                .unwrap()
        };
        let (x, y) = (on(&one), on(&two));
        assert_eq!(x + y, 40);
        assert!(x >= 8 && y >= 8, "spread {x}/{y}");
    });
}

#[test]
fn a_batch_bigger_than_one_call_keeps_item_order_per_stream() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let urls = vec![server.url()];
        let (a, sa) = node(&urls, "a").await;
        let (b, sb) = node(&urls, "b").await;
        let names = ["x", "y", "x", "z", "x"];
        for n in [&a, &b] {
            for name in ["x", "y", "z"] {
                n.subscribe(StreamId::channel(name));
            }
            assert!(n.flush().await.iter().all(|(_, r)| r.is_ok()));
        }
        // 5 × 50 = 250 messages: three script calls (PUBLISH_CHUNK = 100) in one pipeline.
        let data: Vec<String> = (0..250).map(|i| format!("{{\"i\":{i}}}")).collect();
        let items: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, d)| item(names[i % names.len()], d))
            .collect();
        let positions = a.publish(&items).await.unwrap();
        for name in ["x", "y", "z"] {
            let seqs: Vec<u64> = positions
                .iter()
                .zip(&items)
                .filter(|(_, it)| it.name == name)
                .map(|(p, _)| p.0)
                .collect();
            let n = seqs.len() as u64;
            assert_eq!(
                seqs,
                (1..=n).collect::<Vec<_>>(),
                "{name}: contiguous, in item order"
            );
            for sink in [&sa, &sb] {
                until("deliveries", Duration::from_secs(5), || {
                    sink.seqs(name).len() as u64 >= n
                })
                .await;
                assert_eq!(sink.seqs(name), seqs, "{name}: delivered in seq order");
            }
        }
        // Each delivery carries its own item's data.
        let delivered = sb.delivered.lock().unwrap().clone();
        for (name, seq, _, d) in &delivered {
            let i = positions
                .iter()
                .zip(&items)
                .position(|(p, it)| it.name == name && p.0 == *seq)
                .unwrap();
            assert_eq!(d, &data[i]);
        }
        assert_eq!(server.cli(&["XLEN", "pw:h:c:x"]), "150");
        assert!(sa.lost.lock().unwrap().is_empty());
    });
}
