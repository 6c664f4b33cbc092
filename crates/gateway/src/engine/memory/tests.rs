//! The memory engine with a recording outbox and a simulated worker that applies the
//! real merge ([`Pending`], [`Watermark`]) to what it receives.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;
use crate::engine::history::HistoryLimits;
use crate::engine::namespace::{Namespace, Namespaces};
use crate::engine::position::Position;
use crate::engine::recovery::{LiveFrame, Pending, Watermark};
use crate::engine::{RecoverRequest, request_channel};
use crate::token::ConnId;

/// What one worker was sent, in order.
#[derive(Debug)]
enum Event {
    Deliver(Delivery),
    Answer(Answered),
}

#[derive(Debug, Default)]
struct Recorder {
    workers: Mutex<Vec<VecDeque<Event>>>,
}

impl Recorder {
    fn next(&self, worker: usize) -> Option<Event> {
        self.workers.lock().unwrap().get_mut(worker)?.pop_front()
    }
}

impl Outbox for Recorder {
    fn deliver(&self, batch: Vec<Delivery>) {
        let mut workers = self.workers.lock().unwrap();
        for log in workers.iter_mut() {
            log.extend(batch.iter().cloned().map(Event::Deliver));
        }
    }
    fn answer(&self, worker: usize, answers: Vec<Answered>) {
        let mut workers = self.workers.lock().unwrap();
        workers[worker].extend(answers.into_iter().map(Event::Answer));
    }
}

fn engine(
    workers: usize,
    size: u32,
) -> (
    Arc<MemoryEngine>,
    Arc<Recorder>,
    crate::engine::EngineSender,
) {
    engine_with(workers, size, 300)
}

/// [`engine`] with its `--recovery-max`.
fn engine_with(
    workers: usize,
    size: u32,
    recovery_max: u64,
) -> (
    Arc<MemoryEngine>,
    Arc<Recorder>,
    crate::engine::EngineSender,
) {
    let recorder = Arc::new(Recorder {
        workers: Mutex::new((0..workers).map(|_| VecDeque::new()).collect()),
    });
    let namespaces = Namespaces::new(vec![Namespace {
        prefix: "chat:".into(),
        history_size: size,
        history_ttl: Duration::from_secs(600),
    }])
    .unwrap();
    let history = History::new(namespaces, HistoryLimits::default(), Instant::now(), 9);
    let engine = Arc::new(MemoryEngine::new(history, recovery_max, recorder.clone()));
    let (sender, requests) = request_channel();
    engine.attach(requests);
    (engine, recorder, sender)
}

fn data(i: u64) -> Box<RawValue> {
    RawValue::from_string(i.to_string()).unwrap()
}

fn publish(engine: &MemoryEngine, channel: &str, i: u64) -> Published {
    let data = data(i);
    let items = [(Target::Channel(channel.into()), &*data)];
    engine.publish_at(&items, Instant::now())[0]
}

const CONN: ConnId = ConnId {
    index: 1,
    generation: 1,
};

fn key() -> StreamKey {
    StreamKey::Channel("chat:1".into())
}

/// The `data` of a delivery frame.
fn data_of(frame: &[u8]) -> u64 {
    let json: serde_json::Value =
        serde_json::from_slice(crate::push::protocol::delivery_json(frame)).unwrap();
    json["data"].as_u64().unwrap()
}

#[test]
fn positions_and_replies() {
    let (engine, recorder, sender) = engine(1, 10);
    let first = publish(&engine, "chat:1", 1);
    assert_eq!((first.position.seq, first.subscribers), (1, 0));
    // Nobody subscribed: nothing delivered.
    assert!(recorder.next(0).is_none());
    sender.send(Request::Subscribe(key()));
    let second = publish(&engine, "chat:1", 2);
    assert_eq!((second.position.seq, second.subscribers), (2, 1));
    assert_eq!(second.position.epoch, first.position.epoch);
    let Some(Event::Deliver(d)) = recorder.next(0) else {
        panic!("a delivery")
    };
    assert_eq!((d.position, d.stream.clone()), (second.position, key()));
    assert_eq!(data_of(&d.frame), 2);
    let read = engine.history_at(Stream::Channel("chat:1"), None, 10, Instant::now());
    assert_eq!(read.position, second.position);
    assert_eq!(read.frames.len(), 2);
    assert_eq!(read.frames[1], d.frame, "history keeps the delivered frame");
    let stats = engine.stats();
    assert_eq!(stats.history_messages, 2);
    assert!(stats.history_bytes > 0);
}

#[test]
fn recovery_is_answered_after_the_deliveries_it_read() {
    let (engine, recorder, sender) = engine(2, 100);
    for i in 1..=10 {
        publish(&engine, "chat:1", i);
    }
    let epoch = engine
        .history_at(Stream::Channel("chat:1"), None, 1, Instant::now())
        .position
        .epoch;
    sender.send(Request::Subscribe(key()));
    sender.send(Request::Recover(RecoverRequest {
        worker: 1,
        conn: CONN,
        ticket: 7,
        stream: key(),
        since: Some(Since {
            seq: 4,
            epoch: Some(epoch),
        }),
    }));
    publish(&engine, "chat:1", 11);
    // Worker 1: the answer first (the requests were applied before the publish), then 11.
    let Some(Event::Answer(a)) = recorder.next(1) else {
        panic!("the answer first")
    };
    assert_eq!((a.conn, a.ticket), (CONN, 7));
    let answer = a.answer.unwrap();
    assert_eq!(answer.recovered, Some(true));
    assert_eq!(answer.first_seq, 5);
    let got: Vec<u64> = answer.frames.iter().map(|f| data_of(f)).collect();
    assert_eq!(got, (5..=10).collect::<Vec<_>>());
    assert!(matches!(recorder.next(1), Some(Event::Deliver(d)) if d.position.seq == 11));
    // Worker 0 got the delivery only.
    assert!(matches!(recorder.next(0), Some(Event::Deliver(_))));
    assert!(recorder.next(0).is_none());
}

#[test]
fn a_plain_subscribe_is_answered_with_the_position() {
    let (engine, recorder, sender) = engine(1, 0);
    sender.send(Request::Subscribe(StreamKey::Channel("fresh".into())));
    sender.send(Request::Recover(RecoverRequest {
        worker: 0,
        conn: CONN,
        ticket: 1,
        stream: StreamKey::Channel("fresh".into()),
        since: None,
    }));
    engine.serve_requests_at(Instant::now());
    let Some(Event::Answer(a)) = recorder.next(0) else {
        panic!("an answer")
    };
    let answer = a.answer.unwrap();
    assert_eq!((answer.position.seq, answer.recovered), (0, None));
    // The epoch told is the one the next publish counts in.
    let p = publish(&engine, "fresh", 1);
    assert_eq!(
        p.position,
        Position {
            seq: 1,
            epoch: answer.position.epoch
        }
    );
}

/// A publisher keeps publishing while a worker resubscribes with `since` 50 back: the
/// worker, applying the real merge to what its link receives, ends with exactly
/// since+1..=N, in order, once each.
#[test]
fn recovery_during_publishing_has_no_gap_and_no_duplicate() {
    for round in 0..20 {
        // The recovery may be served after the publisher is done (a loaded machine):
        // --recovery-max covers all of it, so the answer never depends on timing.
        let (engine, recorder, sender) = engine_with(1, 1000, 1000);
        const N: u64 = 600;
        for i in 1..=100 {
            publish(&engine, "chat:1", i);
        }
        let epoch = engine
            .history_at(Stream::Channel("chat:1"), None, 1, Instant::now())
            .position
            .epoch;
        let done = Arc::new(AtomicBool::new(false));
        let publisher = {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                for i in 101..=N {
                    publish(&engine, "chat:1", i);
                    if i % 37 == round {
                        std::thread::yield_now();
                    }
                }
            })
        };
        let server = {
            let engine = Arc::clone(&engine);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    engine.serve_requests_at(Instant::now());
                    std::thread::yield_now();
                }
            })
        };
        // The worker: registers the subscription as pending, then asks.
        let mut pending = Some(Pending::new());
        let mut mark = Watermark::default();
        sender.send(Request::Subscribe(key()));
        sender.send(Request::Recover(RecoverRequest {
            worker: 0,
            conn: CONN,
            ticket: 1,
            stream: key(),
            since: Some(Since {
                seq: 50,
                epoch: Some(epoch),
            }),
        }));
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.last() != Some(&N) {
            assert!(Instant::now() < deadline, "stalled at {:?}", got.last());
            match recorder.next(0) {
                None => std::thread::yield_now(),
                Some(Event::Deliver(d)) => {
                    let live = LiveFrame {
                        seq: d.position.seq,
                        epoch: d.position.epoch,
                        frame: d.frame,
                    };
                    match &mut pending {
                        Some(p) => p.buffer(live),
                        None => {
                            if mark.admit(live.seq, live.epoch) {
                                got.push(data_of(&live.frame));
                            }
                        }
                    }
                }
                Some(Event::Answer(a)) => {
                    let merged = pending
                        .take()
                        .unwrap()
                        .complete(a.answer.unwrap(), &mut mark);
                    assert_eq!(merged.recovered, Some(true));
                    got.extend(merged.frames.iter().map(|f| data_of(f)));
                }
            }
        }
        publisher.join().unwrap();
        done.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert_eq!(got, (51..=N).collect::<Vec<_>>(), "round {round}");
    }
}
