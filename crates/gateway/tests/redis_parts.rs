//! The Redis engine's parts against a real `redis-server` (started per test on a free
//! port, killed after): the publish and read scripts, the NOSCRIPT fallback, batched
//! subscriptions, the liveness probe, reconnecting and resubscribing.
#![allow(missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use pingwheel::engine::redis::instance::{Events, Instance, InstanceError, Timing};
use pingwheel::engine::redis::keys::{self, Kind};
use pingwheel::engine::redis::message::LiveMessage;
use pingwheel::engine::redis::script::{self, ReadArgs, ReadMode};

/// What an instance reported.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Message(String, Vec<u8>),
    Up,
    Down(String),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Events for Recorder {
    fn messages(&self, _instance: usize, batch: Vec<redis::Msg>) {
        let mut events = self.events.lock().unwrap();
        for m in batch {
            events.push(Event::Message(
                m.get_channel_name().to_owned(),
                m.get_payload_bytes().to_vec(),
            ));
        }
    }
    fn up(&self, _instance: usize) {
        self.events.lock().unwrap().push(Event::Up);
    }
    fn down(&self, _instance: usize, why: &str) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Down(why.to_owned()));
    }
}

impl Recorder {
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Waits (bounded) until `pred` holds for the events so far.
    async fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.events.lock().unwrap()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.events.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn fast() -> Timing {
    Timing {
        command: Duration::from_millis(200),
        connect: Duration::from_millis(500),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(200),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connected(server: &RedisServer) -> (Arc<Instance>, Arc<Recorder>) {
    let instance = Arc::new(Instance::new(0, &server.url(), fast()).unwrap());
    let recorder = Arc::new(Recorder::default());
    instance.spawn(recorder.clone());
    recorder
        .wait("up", Duration::from_secs(5), |e| e.contains(&Event::Up))
        .await;
    recorder.take();
    (instance, recorder)
}

/// A publish call of one message, as the engine makes them (meta TTL 3600 s).
fn publish_call<'a>(
    kind: Kind,
    name: &str,
    data: &str,
    history: (u32, u64),
    epoch: &str,
) -> redis::ScriptInvocation<'a> {
    let mut call = script::publish_call(3600);
    let target = script::Target {
        kind,
        name,
        data: data.as_bytes(),
        size: history.0,
        ttl_secs: history.1,
        epoch,
    };
    script::add_target(&mut call, &target, 3600);
    call
}

/// The one position a one-message call's reply holds.
fn published(reply: &redis::Value) -> (u64, String) {
    let mut positions = script::parse_published(reply, 1).unwrap();
    assert_eq!(positions.len(), 1);
    positions.pop().unwrap()
}

/// Runs the read script on one channel and parses its reply.
async fn read_channel(
    instance: Arc<Instance>,
    name: &'static str,
    args: ReadArgs<'static>,
) -> script::Read {
    let mut call = script::READ.prepare_invoke();
    call.key(keys::meta_key(Kind::Channel, name))
        .key(keys::history_key(Kind::Channel, name));
    args.apply(&mut call);
    let reply = instance.scripts(&script::READ, &[call]).await.unwrap();
    script::parse_read(reply.into_iter().next().unwrap()).unwrap()
}

#[test]
fn the_publish_script_numbers_keeps_and_publishes_in_one_step() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, recorder) = connected(&server).await;
        let channel = keys::pubsub_channel(Kind::Channel, "scores");
        instance.subscribe(vec![channel.clone()]).await.unwrap();

        let calls: Vec<_> = (0..5)
            .map(|i| {
                publish_call(
                    Kind::Channel,
                    "scores",
                    &format!("{{\"n\":{i}}}"),
                    (3, 60),
                    "EpochAAA",
                )
            })
            .collect();
        let replies = instance.scripts(&script::PUBLISH, &calls).await.unwrap();
        let positions: Vec<_> = replies.iter().map(published).collect();
        assert_eq!(
            positions,
            (1..=5)
                .map(|s| (s, "EpochAAA".to_owned()))
                .collect::<Vec<_>>()
        );
        // A later publish keeps the epoch it found, whatever new one it brings.
        let more = instance
            .scripts(
                &script::PUBLISH,
                &[publish_call(
                    Kind::Channel,
                    "scores",
                    "6",
                    (3, 60),
                    "EpochBBB",
                )],
            )
            .await
            .unwrap();
        assert_eq!(published(&more[0]), (6, "EpochAAA".into()));

        recorder
            .wait("six messages", Duration::from_secs(5), |e| e.len() >= 6)
            .await;
        let seqs: Vec<u64> = recorder
            .take()
            .into_iter()
            .map(|e| match e {
                Event::Message(ch, payload) => {
                    assert_eq!(ch, channel);
                    let m = LiveMessage::parse(&payload).unwrap();
                    assert_eq!(m.epoch, "EpochAAA");
                    m.seq
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

        // History: ids = seq. `MAXLEN ~ 3` trims whole stream nodes only, so all six
        // are still there (the read script counts only the newest three as kept).
        assert_eq!(server.cli(&["XLEN", "pw:h:c:scores"]), "6");
        assert!(
            server
                .cli(&["XRANGE", "pw:h:c:scores", "-", "+"])
                .starts_with("1-0")
        );
        let ttl: i64 = server.cli(&["TTL", "pw:h:c:scores"]).parse().unwrap();
        // The history TTL plus the renewal interval (a tenth of it).
        assert!((1..=66).contains(&ttl), "{ttl}");
        let meta_ttl: i64 = server.cli(&["TTL", "pw:m:c:scores"]).parse().unwrap();
        assert!(meta_ttl > 60, "{meta_ttl}");

        // No history: positions still count, nothing is kept.
        let calls = [publish_call(Kind::User, "42", "{}", (0, 0), "EpochUUU")];
        let r = instance.scripts(&script::PUBLISH, &calls).await.unwrap();
        assert_eq!(published(&r[0]).0, 1);
        assert_eq!(server.cli(&["EXISTS", "pw:h:u:42"]), "0");
    });
}

#[test]
fn one_call_publishes_a_batch_in_order_with_contiguous_seqs_per_stream() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, recorder) = connected(&server).await;
        let names = ["a", "b", "a", "nohist", "a", "b"];
        let channels: Vec<String> = ["a", "b", "nohist"]
            .iter()
            .map(|n| keys::pubsub_channel(Kind::Channel, n))
            .collect();
        instance.subscribe(channels.clone()).await.unwrap();
        let batch = |round: usize| {
            let mut call = script::publish_call(3600);
            for (i, name) in names.iter().enumerate() {
                let data = format!("{{\"r\":{round},\"i\":{i}}}");
                let target = script::Target {
                    kind: Kind::Channel,
                    name,
                    data: data.as_bytes(),
                    size: if *name == "nohist" { 0 } else { 100 },
                    ttl_secs: 60,
                    epoch: if round == 0 { "EpochAAA" } else { "EpochBBB" },
                };
                script::add_target(&mut call, &target, 3600);
            }
            call
        };
        let replies = instance
            .scripts(&script::PUBLISH, &[batch(0), batch(1)])
            .await
            .unwrap();
        let positions: Vec<Vec<(u64, String)>> = replies
            .iter()
            .map(|r| script::parse_published(r, names.len()).unwrap())
            .collect();
        let seqs = |p: &[(u64, String)]| p.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(seqs(&positions[0]), [1, 1, 2, 1, 3, 2]);
        assert_eq!(
            seqs(&positions[1]),
            [4, 3, 5, 2, 6, 4],
            "the next call continues"
        );
        assert!(
            positions.iter().flatten().all(|p| p.1 == "EpochAAA"),
            "every stream keeps the epoch it started with"
        );

        // Delivered in the order published: per stream, seqs 1, 2, 3, … with their data.
        recorder
            .wait("twelve messages", Duration::from_secs(5), |e| e.len() >= 12)
            .await;
        let mut got: Vec<(String, u64, String)> = Vec::new();
        for event in recorder.take() {
            let Event::Message(channel, payload) = event else {
                panic!("{event:?}");
            };
            let m = LiveMessage::parse(&payload).unwrap();
            assert_eq!(m.epoch, "EpochAAA");
            let data = String::from_utf8(m.data.to_vec()).unwrap();
            got.push((channel, m.seq, data));
        }
        let expected: Vec<(String, u64, String)> = (0..2)
            .flat_map(|round| {
                names
                    .iter()
                    .enumerate()
                    .map(move |(i, name)| (round, i, *name))
            })
            .zip(positions.iter().flatten())
            .map(|((round, i, name), (seq, _))| {
                (
                    keys::pubsub_channel(Kind::Channel, name),
                    *seq,
                    format!("{{\"r\":{round},\"i\":{i}}}"),
                )
            })
            .collect();
        assert_eq!(got, expected);

        // History: every kept message, id = seq, in order; none for the namespace
        // without history, whose positions still count.
        let ids = |name: &str| {
            server
                .cli(&["XRANGE", &keys::history_key(Kind::Channel, name), "-", "+"])
                .lines()
                .filter(|l| l.ends_with("-0"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("a"), ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]);
        assert_eq!(ids("b"), ["1-0", "2-0", "3-0", "4-0"]);
        assert_eq!(server.cli(&["EXISTS", "pw:h:c:nohist"]), "0");
        assert_eq!(server.cli(&["HGET", "pw:m:c:nohist", "s"]), "2");
        for key in ["pw:m:c:a", "pw:h:c:a", "pw:m:c:nohist"] {
            let ttl: i64 = server.cli(&["TTL", key]).parse().unwrap();
            assert!(ttl > 0, "{key} has a TTL: {ttl}");
        }

        // A history that went away (expired, evicted) while its position stayed is
        // recreated with a TTL by the next publish.
        server.cli(&["DEL", "pw:h:c:b"]);
        let r = instance
            .scripts(&script::PUBLISH, &[batch(2)])
            .await
            .unwrap();
        assert_eq!(
            seqs(&script::parse_published(&r[0], names.len()).unwrap()),
            [7, 5, 8, 3, 9, 6]
        );
        assert_eq!(ids("b"), ["5-0", "6-0"]);
        let ttl: i64 = server.cli(&["TTL", "pw:h:c:b"]).parse().unwrap();
        assert!((1..=66).contains(&ttl), "{ttl}");
    });
}

#[test]
fn a_flushed_script_cache_is_reloaded_and_only_refused_calls_rerun() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, _recorder) = connected(&server).await;
        let call = |d: &str| publish_call(Kind::Channel, "c", d, (10, 60), "EpochAAA");
        instance
            .scripts(&script::PUBLISH, &[call("1")])
            .await
            .unwrap();
        assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
        let replies = instance
            .scripts(&script::PUBLISH, &[call("2"), call("3")])
            .await
            .unwrap();
        let seqs: Vec<u64> = replies.iter().map(|r| published(r).0).collect();
        assert_eq!(seqs, [2, 3], "each message once");
        assert_eq!(server.cli(&["XLEN", "pw:h:c:c"]), "3");
    });
}

#[test]
fn the_read_script_recovers_fills_and_creates_positions() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, _recorder) = connected(&server).await;
        let calls: Vec<_> = (1..=10)
            .map(|i| publish_call(Kind::Channel, "r", &i.to_string(), (100, 60), "EpochAAA"))
            .collect();
        instance.scripts(&script::PUBLISH, &calls).await.unwrap();
        let read = |args| read_channel(Arc::clone(&instance), "r", args);
        let base = ReadArgs {
            epoch: "EpochAAA",
            after: 6,
            last: 6 + 300,
            mode: ReadMode::Recover,
            create: "",
            meta_ttl: 3600,
            size: 100,
        };
        let r = read(base.clone()).await;
        assert_eq!((r.top, r.epoch.as_deref()), (10, Some("EpochAAA")));
        assert_eq!(
            r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        assert_eq!(r.entries[0].data, b"7");
        assert!(r.now_micros > 1_700_000_000_000_000);
        // Over the recovery limit: nothing read at all.
        let r = read(ReadArgs {
            last: 6 + 2,
            ..base.clone()
        })
        .await;
        assert!(r.entries.is_empty());
        // A fill reads up to its last seq whatever the top.
        let r = read(ReadArgs {
            last: 8,
            mode: ReadMode::Fill,
            ..base.clone()
        })
        .await;
        assert_eq!(r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [7, 8]);
        // Another epoch reads nothing.
        let r = read(ReadArgs {
            epoch: "EpochZZZ",
            ..base.clone()
        })
        .await;
        assert!(r.entries.is_empty());
        // Unknown streams: no position, or a created one the first publish continues.
        let unknown = |create| {
            let args = ReadArgs {
                epoch: "",
                after: 0,
                last: 0,
                mode: ReadMode::Recover,
                create,
                meta_ttl: 3600,
                size: 100,
            };
            read_channel(Arc::clone(&instance), "new", args)
        };
        assert_eq!(unknown("").await.epoch, None);
        assert_eq!(unknown("EpochNEW").await.epoch.as_deref(), Some("EpochNEW"));
        assert_eq!(unknown("EpochXXX").await.epoch.as_deref(), Some("EpochNEW"));
        let r = instance
            .scripts(
                &script::PUBLISH,
                &[publish_call(Kind::Channel, "new", "1", (5, 60), "EpochYYY")],
            )
            .await
            .unwrap();
        assert_eq!(published(&r[0]), (1, "EpochNEW".into()));
    });
}

#[test]
fn the_read_script_caps_every_mode_at_the_newest_history_size_seqs() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, _recorder) = connected(&server).await;
        // 250 messages into a history of 100: approximate trimming keeps more than 100.
        let calls: Vec<_> = (1..=250)
            .map(|i| publish_call(Kind::Channel, "t", &i.to_string(), (100, 60), "EpochAAA"))
            .collect();
        instance.scripts(&script::PUBLISH, &calls).await.unwrap();
        let len: u64 = server.cli(&["XLEN", "pw:h:c:t"]).parse().unwrap();
        assert!((100..=250).contains(&len), "{len}");
        assert!(len > 100, "whole nodes only: {len} kept");
        let read = |args| read_channel(Arc::clone(&instance), "t", args);
        let seqs = |r: &script::Read| r.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
        let base = ReadArgs {
            epoch: "EpochAAA",
            after: 0,
            last: 1_000,
            mode: ReadMode::Recover,
            create: "",
            meta_ttl: 3600,
            size: 100,
        };
        // Recovery from the start: only 151..=250 (the first entry after 1 says the
        // rest is gone), exactly what `MAXLEN 100` would have kept.
        let r = read(base.clone()).await;
        assert_eq!(r.top, 250);
        assert_eq!(seqs(&r), (151..=250).collect::<Vec<_>>());
        assert_eq!(r.entries[0].data, b"151");
        // Within the kept range a recovery reads from its seq.
        let r = read(ReadArgs {
            after: 200,
            ..base.clone()
        })
        .await;
        assert_eq!(seqs(&r), (201..=250).collect::<Vec<_>>());
        // A fill across the boundary starts at the oldest kept and stops at its last.
        let r = read(ReadArgs {
            after: 120,
            last: 160,
            mode: ReadMode::Fill,
            ..base.clone()
        })
        .await;
        assert_eq!(seqs(&r), (151..=160).collect::<Vec<_>>());
        // A fill wholly before the oldest kept reads nothing.
        let r = read(ReadArgs {
            after: 10,
            last: 20,
            mode: ReadMode::Fill,
            ..base.clone()
        })
        .await;
        assert!(r.entries.is_empty());
        // The history API in another epoch: the oldest kept first, at most `last - after`.
        let r = read(ReadArgs {
            epoch: "EpochZZZ",
            after: 0,
            last: 10,
            mode: ReadMode::History,
            ..base.clone()
        })
        .await;
        assert_eq!(seqs(&r), (151..=160).collect::<Vec<_>>());
        let r = read(ReadArgs {
            epoch: "",
            mode: ReadMode::History,
            ..base.clone()
        })
        .await;
        assert_eq!(seqs(&r), (151..=250).collect::<Vec<_>>());
        // A namespace that keeps nothing reads nothing, whatever the stream holds.
        let r = read(ReadArgs {
            size: 0,
            mode: ReadMode::History,
            epoch: "",
            ..base.clone()
        })
        .await;
        assert!(r.entries.is_empty());
        assert_eq!(r.top, 250);
    });
}

#[test]
fn ten_thousand_channels_subscribe_in_batches_and_come_back_after_a_restart() {
    let mut server = RedisServer::start();
    runtime().block_on(async {
        let (instance, recorder) = connected(&server).await;
        let channels: Vec<String> = (0..10_000)
            .map(|i| keys::pubsub_channel(Kind::Channel, &format!("ch{i}")))
            .collect();
        let started = Instant::now();
        instance.subscribe(channels.clone()).await.unwrap();
        eprintln!("10,000 channels subscribed in {:?}", started.elapsed());
        assert_eq!(
            server
                .cli(&["PUBSUB", "NUMSUB", &channels[9_999]])
                .lines()
                .last(),
            Some("1")
        );
        assert_eq!(instance.wanted(), 10_000);

        // Killed: down at once, calls fail fast.
        server.kill();
        recorder
            .wait("down", Duration::from_secs(3), |e| {
                e.iter().any(|e| matches!(e, Event::Down(_)))
            })
            .await;
        assert!(!instance.is_up());
        let started = Instant::now();
        let err = instance
            .scripts(
                &script::PUBLISH,
                &[publish_call(Kind::Channel, "x", "1", (0, 0), "EpochAAA")],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, InstanceError::Down(_)), "{err}");
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(
            instance
                .subscribe(vec!["pw:p:c:late".into()])
                .await
                .is_err()
        );

        // Back: everything wanted is subscribed again, the late one included.
        server.restart();
        recorder
            .wait("up again", Duration::from_secs(5), |e| {
                e.contains(&Event::Up)
            })
            .await;
        assert!(instance.is_up());
        for ch in [&channels[0], &channels[5_000], &"pw:p:c:late".to_owned()] {
            assert_eq!(
                server.cli(&["PUBSUB", "NUMSUB", ch]).lines().last(),
                Some("1"),
                "{ch}"
            );
        }
        instance.unsubscribe(channels[..5_000].to_vec()).await;
        assert_eq!(
            server
                .cli(&["PUBSUB", "NUMSUB", &channels[0]])
                .lines()
                .last(),
            Some("0")
        );
        assert_eq!(instance.wanted(), 5_001);
    });
}

#[test]
fn a_hung_broker_is_noticed_by_the_probe_and_rejoined_when_it_wakes() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let (instance, recorder) = connected(&server).await;
        instance.subscribe(vec!["pw:p:c:a".into()]).await.unwrap();
        server.signal(libc::SIGSTOP);
        let stopped = Instant::now();
        recorder
            .wait("down by probe", Duration::from_secs(3), |e| {
                e.iter().any(|e| matches!(e, Event::Down(_)))
            })
            .await;
        let noticed = stopped.elapsed();
        eprintln!("hung broker noticed after {noticed:?}");
        // probe_interval + probe_timeout = 400 ms (+ one tick of slack).
        assert!(noticed < Duration::from_millis(900), "{noticed:?}");
        assert!(!instance.is_up());
        server.signal(libc::SIGCONT);
        recorder
            .wait("up again", Duration::from_secs(5), |e| {
                e.contains(&Event::Up)
            })
            .await;
        assert_eq!(
            server.cli(&["PUBSUB", "NUMSUB", "pw:p:c:a"]).lines().last(),
            Some("1")
        );
    });
}
