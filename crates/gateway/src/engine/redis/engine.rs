//! The Redis engine behind the [`Engine`] seam: a thin layer over [`RedisNode`].
//!
//! | seam | Redis |
//! |---|---|
//! | [`Engine::publish`] | the publish script, one call per instance for up to 100 messages (more: several calls in one pipeline) ([`RedisNode::publish`]); deliveries come back to every node, this one included, over pub/sub |
//! | [`Request::Subscribe`] / [`Request::Unsubscribe`] | counted per stream; the 0↔1 transitions become batched `SUBSCRIBE` / `UNSUBSCRIBE` ([`RedisNode::flush`]) |
//! | [`Request::Recover`] | after the node's subscription is confirmed: the read script (position + entries after `since`, atomically), then [`decide`]; answered through the [`Outbox`] |
//! | [`Engine::history`] | the read script |
//! | [`Engine::ready`] | every instance up |
//!
//! Recovery follows Centrifuge's order: the stream is subscribed (confirmed) first, then
//! its history is read, and the worker merges the answer with the live frames that
//! arrived meanwhile, deduplicated by seq ([`crate::engine::recovery::Pending`]): no
//! gap, no duplicate. A subscribe whose instance is down is answered
//! [`EngineError::Unavailable`] (the client gets an error reply and keeps its
//! connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::keys::Kind;
use super::node::{self, Keep, Live, NodeSettings, NodeSink, PublishItem, RedisNode, StreamId};
use super::nodes::Control;
use super::script::{ReadArgs, ReadMode};
use crate::admin::cluster::{disconnect_locally, local_counts};
use crate::engine::namespace::Namespaces;
use crate::engine::position::{Epoch, Position, Since, decide};
use crate::engine::recovery::Answer;
use crate::engine::{
    Answered, Delivery, Engine, EngineError, EngineFuture, EngineRequests, EngineStats,
    HistoryRead, Outbox, Published, Request, Stream, StreamKey,
};
use crate::metrics::EngineMetrics;
use crate::push::protocol::DeliveryFrame;
use crate::push::publish::Target;
use crate::worker::link::{Command, WorkerLink};

/// The Redis engine. See the module docs.
#[derive(Debug)]
pub struct RedisEngine {
    node: Arc<RedisNode>,
    sink: Arc<Sink>,
    recovery_max: u64,
    meta_ttl: Duration,
}

/// What the node hands to the workers.
#[derive(Debug)]
struct Sink {
    outbox: Arc<dyn Outbox>,
    links: Vec<WorkerLink>,
    namespaces: Namespaces,
}

fn stream_id(key: &StreamKey) -> StreamId {
    match key {
        StreamKey::Channel(c) => StreamId {
            kind: Kind::Channel,
            name: Arc::clone(c),
        },
        StreamKey::User(u) => StreamId {
            kind: Kind::User,
            name: Arc::clone(u),
        },
    }
}

fn stream_of(id: &StreamId) -> Stream<'_> {
    match id.kind {
        Kind::Channel => Stream::Channel(&id.name),
        Kind::User => Stream::User(&id.name),
    }
}

fn key_of(id: &StreamId) -> StreamKey {
    match id.kind {
        Kind::Channel => StreamKey::Channel(Arc::clone(&id.name)),
        Kind::User => StreamKey::User(Arc::clone(&id.name)),
    }
}

fn epoch_of(e: &node::Epoch) -> Option<Epoch> {
    Epoch::parse(node::epoch_str(e))
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// When a message Redis timed at `micros` was accepted, on this process's clock.
fn accepted_at(micros: u64, now: Instant) -> Instant {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.checked_sub(Duration::from_micros(wall.saturating_sub(micros)))
        .unwrap_or(now)
}

/// The frame of one message; `None` if its data is not JSON (never for our scripts).
fn frame(stream: Stream<'_>, position: &Position, data: &[u8]) -> Option<Bytes> {
    let data: &RawValue = serde_json::from_slice(data).ok()?;
    let encoder = DeliveryFrame {
        channel: stream.wire_channel(),
        data,
    };
    Some(encoder.encode(position))
}

impl Sink {
    fn keep_of(&self, stream: Stream<'_>) -> Keep {
        let ns = self.namespaces.of(stream);
        Keep {
            size: ns.history_size,
            ttl: ns.history_ttl,
        }
    }
}

impl NodeSink for Sink {
    fn keep(&self, stream: &StreamId) -> Keep {
        self.keep_of(stream_of(stream))
    }

    fn deliver(&self, batch: Vec<Live>) {
        let now = Instant::now();
        let deliveries: Vec<Delivery> = batch
            .into_iter()
            .filter_map(|live| {
                let position = Position {
                    seq: live.seq,
                    epoch: epoch_of(&live.epoch)?,
                };
                let frame = frame(stream_of(&live.stream), &position, &live.data)?;
                Some(Delivery {
                    stream: key_of(&live.stream),
                    position,
                    frame,
                    accepted_at: accepted_at(live.micros, now),
                })
            })
            .collect();
        if !deliveries.is_empty() {
            self.outbox.deliver(deliveries);
        }
    }

    fn position_lost(&self, stream: &StreamId, epoch: node::Epoch, seq: u64) {
        let Some(epoch) = epoch_of(&epoch) else {
            return;
        };
        let stream = key_of(stream);
        for link in &self.links {
            link.send(Command::PositionLost {
                stream: stream.clone(),
                position: Position { seq, epoch },
            });
        }
    }

    fn control(&self, control: Control) {
        match control {
            Control::Disconnect { user } => disconnect_locally(&self.links, &user),
        }
    }

    fn up_changed(&self, _up: bool) {}

    fn local_counts(&self) -> (u64, u64) {
        local_counts(&self.links)
    }
}

impl RedisEngine {
    /// Starts the engine's node on the current (broker) runtime.
    ///
    /// # Errors
    /// A bad `--redis-url`, or none.
    pub fn start(
        settings: NodeSettings,
        namespaces: Namespaces,
        recovery_max: u64,
        outbox: Arc<dyn Outbox>,
        links: Vec<WorkerLink>,
        metrics: EngineMetrics,
    ) -> Result<RedisEngine, String> {
        let meta_ttl = settings.meta_ttl;
        let sink = Arc::new(Sink {
            outbox,
            links,
            namespaces,
        });
        let node = RedisNode::start(settings, Arc::clone(&sink) as Arc<dyn NodeSink>, metrics)?;
        Ok(RedisEngine {
            node,
            sink,
            recovery_max,
            meta_ttl,
        })
    }

    /// The node (for the cluster routes).
    pub fn node(&self) -> &Arc<RedisNode> {
        &self.node
    }

    async fn publish_items(
        &self,
        items: &[(Target<'_>, &RawValue)],
    ) -> Result<Vec<Published>, EngineError> {
        let batch: Vec<PublishItem<'_>> = items
            .iter()
            .map(|(target, data)| {
                let stream = Stream::of(target);
                let (kind, name) = match stream {
                    Stream::Channel(c) => (Kind::Channel, c),
                    Stream::User(u) => (Kind::User, u),
                };
                PublishItem {
                    kind,
                    name,
                    data: data.get().as_bytes(),
                    keep: self.sink.keep_of(stream),
                }
            })
            .collect();
        let positions = self.node.publish(&batch).await.map_err(unavailable)?;
        positions
            .into_iter()
            .zip(&batch)
            .map(|((seq, epoch), item)| {
                let epoch = epoch_of(&epoch).ok_or_else(|| unavailable("bad epoch from Redis"))?;
                let id = StreamId {
                    kind: item.kind,
                    name: Arc::from(item.name),
                };
                Ok(Published {
                    position: Position { seq, epoch },
                    subscribers: u64::from(self.node.local_count(&id)),
                })
            })
            .collect()
    }

    /// Answers a drained set of recovery requests (their streams were flushed).
    ///
    /// Identical requests (same stream, same `since`: a fleet that was live on a
    /// channel up to the same message when its node went away) share one read and one
    /// answer, whose frames are shared `Bytes`. The reads go out paced
    /// ([`RedisNode::read_paced`]: chunks per instance, one after the other), and each
    /// chunk's subscribes are answered as soon as it is read, so a storm of thousands of
    /// recoveries never becomes one pipeline that misses `--redis-timeout` as a whole.
    /// Every request is answered exactly once; the ones that fail are answered
    /// `engine_unavailable`, counted and warned about ([`RedisNode::subscribes_failed`]).
    async fn recover(&self, requests: Vec<crate::engine::RecoverRequest>, failed: &[usize]) {
        let count = self.node.instances().len();
        let mut unanswerable: HashMap<usize, Vec<Answered>> = HashMap::new();
        // One read per distinct (stream, since); `askers[n]`: the requests read `n` answers.
        let mut distinct: HashMap<(StreamId, Option<(u64, String)>), usize> = HashMap::new();
        let mut keys: Vec<(StreamId, u64, String)> = Vec::new();
        let mut askers: Vec<Vec<usize>> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let id = stream_id(&r.stream);
            let shard = super::keys::shard_of(id.kind, &id.name, count);
            if failed.contains(&shard) || !self.node.stream_up(&id) {
                unanswerable.entry(r.worker).or_default().push(Answered {
                    conn: r.conn,
                    ticket: r.ticket,
                    stream: r.stream.clone(),
                    answer: Err(unavailable("redis unavailable")),
                });
                continue;
            }
            let since = r.since.map(|s| {
                let epoch = s.epoch.map(|e| e.as_str().to_owned()).unwrap_or_default();
                (s.seq, epoch)
            });
            let n = *distinct
                .entry((id.clone(), since.clone()))
                .or_insert_with(|| {
                    let (after, epoch) = since.unwrap_or_default();
                    keys.push((id, after, epoch));
                    askers.push(Vec::new());
                    keys.len() - 1
                });
            askers[n].push(i);
        }
        let down: usize = unanswerable.values().map(Vec::len).sum();
        self.node.subscribes_failed(down, "redis unavailable");
        for (worker, list) in unanswerable {
            self.sink.outbox.answer(worker, list);
        }
        if keys.is_empty() {
            return;
        }
        let fresh: Vec<String> = keys
            .iter()
            .map(|_| node::epoch_str(&node::random_epoch()).to_owned())
            .collect();
        let reads: Vec<_> = keys
            .iter()
            .zip(&fresh)
            .map(|((id, after, epoch), fresh)| {
                let args = ReadArgs {
                    epoch,
                    after: *after,
                    last: after.saturating_add(self.recovery_max),
                    mode: ReadMode::Recover,
                    create: fresh,
                    meta_ttl: self.meta_ttl.as_secs().max(1),
                    size: self.sink.keep(id).size,
                };
                (id.clone(), args)
            })
            .collect();
        let answer_chunk = |covered: &[usize], result: Result<Vec<super::script::Read>, _>| {
            let mut answers: HashMap<usize, Vec<Answered>> = HashMap::new();
            let mut failures = 0;
            let mut error = None;
            let result: Result<Vec<_>, node::NodeError> = result;
            for (k, &n) in covered.iter().enumerate() {
                let first = &requests[askers[n][0]];
                let answer = match &result {
                    Err(e) => Err(unavailable(e)),
                    Ok(list) => self.answer(first, &reads[n].0, list[k].clone()),
                };
                if let Err(e) = &answer {
                    failures += askers[n].len();
                    error.get_or_insert_with(|| e.to_string());
                }
                for &i in &askers[n] {
                    let r = &requests[i];
                    answers.entry(r.worker).or_default().push(Answered {
                        conn: r.conn,
                        ticket: r.ticket,
                        stream: r.stream.clone(),
                        answer: answer.clone(),
                    });
                }
            }
            self.node
                .subscribes_failed(failures, error.as_deref().unwrap_or_default());
            for (worker, list) in answers {
                self.sink.outbox.answer(worker, list);
            }
        };
        self.node.read_paced(&reads, &answer_chunk).await;
    }

    fn answer(
        &self,
        r: &crate::engine::RecoverRequest,
        id: &StreamId,
        mut read: super::script::Read,
    ) -> Result<Answer, EngineError> {
        let epoch = read
            .epoch
            .as_deref()
            .and_then(Epoch::parse)
            .ok_or_else(|| unavailable("no epoch from Redis"))?;
        let position = Position {
            seq: read.top,
            epoch,
        };
        if let Some(e) = node::parse_epoch(epoch.as_str()) {
            self.node.observe_position(id, e, read.top);
        }
        let Some(since) = r.since else {
            return Ok(Answer {
                position,
                recovered: None,
                frames: Vec::new(),
                first_seq: read.top + 1,
            });
        };
        let keep = self.sink.keep_of(stream_of(id));
        read.expire(keep.ttl.as_micros() as u64);
        // The kept entries must run contiguously up to the top.
        let contiguous = read.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1)
            && read.entries.last().is_none_or(|e| e.seq == read.top);
        let oldest_kept = match read.entries.first() {
            Some(first) if contiguous => first.seq,
            _ => read.top + 1,
        };
        let decision = decide(
            since,
            position,
            oldest_kept.min(read.top + 1),
            self.recovery_max,
        );
        let mut frames = Vec::new();
        if let crate::engine::position::RecoveryDecision::Recover { from, to } = decision {
            let stream = stream_of(id);
            for e in read.entries.iter().filter(|e| e.seq >= from && e.seq <= to) {
                let p = Position { seq: e.seq, epoch };
                match frame(stream, &p, &e.data) {
                    Some(f) => frames.push(f),
                    None => return Err(unavailable("unreadable history entry")),
                }
            }
        }
        Ok(Answer {
            position,
            recovered: Some(decision.is_recovered()),
            frames,
            first_seq: since.seq.saturating_add(1),
        })
    }
}

impl Engine for RedisEngine {
    fn publish<'a>(
        &'a self,
        items: &'a [(Target<'a>, &'a RawValue)],
    ) -> EngineFuture<'a, Vec<Published>> {
        Box::pin(self.publish_items(items))
    }

    fn history<'a>(
        &'a self,
        stream: Stream<'a>,
        since: Option<Since>,
        limit: usize,
    ) -> EngineFuture<'a, HistoryRead> {
        Box::pin(async move {
            let id = match stream {
                Stream::Channel(c) => StreamId::channel(c),
                Stream::User(u) => StreamId::user(u),
            };
            let fresh = node::epoch_str(&node::random_epoch()).to_owned();
            let epoch = since.and_then(|s| s.epoch).map(|e| e.as_str().to_owned());
            let (match_epoch, after) = match &epoch {
                Some(e) => (e.as_str(), since.map_or(0, |s| s.seq)),
                None => ("", 0),
            };
            let keep = self.sink.keep_of(stream);
            let args = ReadArgs {
                epoch: match_epoch,
                after,
                last: after.saturating_add(limit as u64),
                mode: ReadMode::History,
                create: &fresh,
                meta_ttl: self.meta_ttl.as_secs().max(1),
                size: keep.size,
            };
            let mut read = self.node.read(&id, &args).await.map_err(unavailable)?;
            read.expire(keep.ttl.as_micros() as u64);
            let epoch = read
                .epoch
                .as_deref()
                .and_then(Epoch::parse)
                .ok_or_else(|| unavailable("no epoch from Redis"))?;
            let frames = read
                .entries
                .iter()
                .take(limit)
                .filter_map(|e| frame(stream, &Position { seq: e.seq, epoch }, &e.data))
                .collect();
            Ok(HistoryRead {
                position: Position {
                    seq: read.top,
                    epoch,
                },
                frames,
            })
        })
    }

    fn run(
        self: Arc<Self>,
        requests: EngineRequests,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let wake = requests.waker();
            loop {
                let mut recovers = Vec::new();
                while let Some(request) = requests.try_recv() {
                    match request {
                        Request::Subscribe(key) => self.node.subscribe(stream_id(&key)),
                        Request::Unsubscribe(key) => self.node.unsubscribe(stream_id(&key)),
                        Request::Recover(r) => recovers.push(r),
                    }
                }
                let flushed = self.node.flush().await;
                let failed: Vec<usize> = flushed
                    .iter()
                    .filter(|(_, r)| r.is_err())
                    .map(|(i, _)| *i)
                    .collect();
                if !recovers.is_empty() {
                    self.recover(recovers, &failed).await;
                }
                wake.notified().await;
            }
        })
    }

    fn ready(&self) -> bool {
        self.node.is_up()
    }

    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }
}
