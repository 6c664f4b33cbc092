//! One gateway node's side of the Redis engine: which streams it subscribes, the order
//! check of everything it receives, gap refills, position checks after a reconnect,
//! publishing, heartbeats and control messages.
//!
//! Runs on the broker runtime; the engine seam ([`super`]) is a thin layer over it.
//!
//! # Node subscriptions
//!
//! Subscriptions are per node, not per connection: [`RedisNode::subscribe`] and
//! [`RedisNode::unsubscribe`] only count (no IO); [`RedisNode::flush`] then subscribes
//! the streams whose count went from 0 and unsubscribes those that went to 0, one
//! batched, pipelined `SUBSCRIBE`/`UNSUBSCRIBE` per instance, so a reconnect storm of
//! 100,000 subscribes costs a few hundred round trips. A stream is subscribed on the
//! instance [`keys::shard_of`] names.
//!
//! # Order
//!
//! Every live message passes the stream's [`Order`]: duplicates are dropped, a gap is
//! refilled from the stream's history (the read script, on this runtime) while later
//! messages wait, or, when the history no longer has it, the stream's subscribers are
//! told `position_lost` ([`NodeSink::position_lost`]). Deliveries are handed to the
//! sink under the node's lock, so per stream they leave in seq order whichever task
//! (the pub/sub reader, a refill) produced them.
//!
//! After an instance reconnects, every stream it holds is resubscribed (by the
//! instance) and then its top is read and checked ([`Order::check_top`]): messages
//! published by other nodes while this one was away are refilled or reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;
use tracing::{debug, info, warn};

use super::gaps::{Gap, Order, Refilled};
use super::instance::{Events, Instance, InstanceError, Timing};
use super::keys::{self, Kind};
use super::message::LiveMessage;
use super::nodes::{self, Control, NodeInfo};
use super::pace::{self, Pacer, Tally};
use super::script::{self, BadReply, Read, ReadArgs, ReadMode};
use crate::metrics::{EngineMetrics, EngineOp};

/// Length of an epoch as the scripts store it.
pub const EPOCH_LEN: usize = 8;
/// A stream's epoch: [`EPOCH_LEN`] ASCII alphanumerics.
pub type Epoch = [u8; EPOCH_LEN];

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random epoch.
pub fn random_epoch() -> Epoch {
    let mut e = [0u8; EPOCH_LEN];
    for b in &mut e {
        *b = ALPHABET[fastrand::usize(..ALPHABET.len())];
    }
    e
}

/// The epoch spelled `s`, if it is one.
pub fn parse_epoch(s: &str) -> Option<Epoch> {
    let e: Epoch = s.as_bytes().try_into().ok()?;
    e.iter().all(u8::is_ascii_alphanumeric).then_some(e)
}

/// An epoch as text.
pub fn epoch_str(e: &Epoch) -> &str {
    std::str::from_utf8(e).unwrap_or_default()
}

/// Messages per publish-script call at most: a bigger batch for one instance becomes
/// several calls in one pipeline, so one call never holds Redis (which runs one script
/// at a time) for more than about a millisecond.
pub const PUBLISH_CHUNK: usize = 100;

/// Streams whose top is read per pipeline in a position check.
const CHECK_BATCH: usize = 1000;

/// A stream: a channel or a user's personal stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    /// Which kind.
    pub kind: Kind,
    /// The channel name or user id.
    pub name: Arc<str>,
}

impl StreamId {
    /// A channel.
    pub fn channel(name: &str) -> StreamId {
        StreamId {
            kind: Kind::Channel,
            name: Arc::from(name),
        }
    }

    /// A user's stream.
    pub fn user(name: &str) -> StreamId {
        StreamId {
            kind: Kind::User,
            name: Arc::from(name),
        }
    }
}

/// What a stream's namespace keeps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Messages kept (0: none; positions are still counted).
    pub size: u32,
    /// How long each is kept.
    pub ttl: Duration,
}

impl Keep {
    /// The TTL in whole seconds, rounded up, at least 1.
    pub fn ttl_secs(&self) -> u64 {
        (self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0)).max(1)
    }
}

/// One live (or refilled) message, in order for its stream.
#[derive(Clone, Debug)]
pub struct Live {
    /// Its stream.
    pub stream: StreamId,
    /// Its seq.
    pub seq: u64,
    /// Its epoch.
    pub epoch: Epoch,
    /// The published JSON.
    pub data: Bytes,
    /// Redis's clock when it was published, µs since the Unix epoch.
    pub micros: u64,
}

/// Where a node's results go (called on the broker runtime; never blocks).
pub trait NodeSink: Send + Sync + 'static {
    /// What `stream` keeps (its namespace).
    fn keep(&self, stream: &StreamId) -> Keep;
    /// Messages for the local subscribers, in seq order per stream.
    fn deliver(&self, batch: Vec<Live>);
    /// A gap in `stream` could not be refilled: its subscribers' positions are lost;
    /// the node continues after `(epoch, seq)`.
    fn position_lost(&self, stream: &StreamId, epoch: Epoch, seq: u64);
    /// A cluster-wide operation arrived (from any node, this one included).
    fn control(&self, control: Control);
    /// The node's engine became usable (`true`) or not.
    fn up_changed(&self, up: bool);
    /// This node's open connections and subscriptions, for its heartbeat.
    fn local_counts(&self) -> (u64, u64);
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// `--redis-url`s, in order (the order decides sharding: keep it the same on every node).
    pub urls: Vec<String>,
    /// `--node-name`.
    pub name: String,
    /// Timeouts, probes, backoff.
    pub timing: Timing,
    /// How long a stream's position outlives its last publish.
    pub meta_ttl: Duration,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An instance failed or is down.
    #[error(transparent)]
    Instance(#[from] InstanceError),
    /// A reply we cannot read.
    #[error("{0}")]
    Reply(#[from] BadReply),
}

impl NodeError {
    fn down(addr: &str) -> NodeError {
        NodeError::Instance(InstanceError::Down(addr.to_owned()))
    }
}

/// One message to publish.
#[derive(Copy, Clone, Debug)]
pub struct PublishItem<'a> {
    /// The stream's kind.
    pub kind: Kind,
    /// Channel name or user id.
    pub name: &'a str,
    /// The JSON payload.
    pub data: &'a [u8],
    /// What its namespace keeps.
    pub keep: Keep,
}

#[derive(Debug)]
struct StreamState {
    /// Local subscriptions (from every worker).
    count: u32,
    /// Whether the node wants its pub/sub channel (sent to the instance).
    subscribed: bool,
    order: Order<Epoch, Live>,
}

#[derive(Debug, Default)]
struct Streams {
    map: HashMap<StreamId, StreamState>,
    /// Streams whose count crossed 0 since the last flush.
    dirty: Vec<StreamId>,
}

/// What [`RedisNode::read_paced`] calls once per chunk: the indices of the reads it
/// covers, and their results in the same order (or the chunk's failure).
pub type ChunkDone<'a> = dyn Fn(&[usize], Result<Vec<Read>, NodeError>) + Sync + 'a;

/// A node. See the module docs.
#[derive(Debug)]
pub struct RedisNode {
    me: Weak<RedisNode>,
    instances: Vec<Arc<Instance>>,
    settings: NodeSettings,
    streams: Mutex<Streams>,
    sink: Arc<dyn NodeSink>,
    metrics: EngineMetrics,
    up: AtomicBool,
    /// Instances that have been up before (their next `up` is a resubscribe).
    seen_up: Mutex<Vec<bool>>,
    /// Per instance: the chunk size of bulk reads ([`RedisNode::read_paced`]).
    pacers: Mutex<Vec<Pacer>>,
    /// Failed publishes (503s), between warnings.
    publish_failures: Mutex<Tally>,
    /// Subscribes answered with an error (the engine could not read the position),
    /// between warnings.
    subscribe_failures: Mutex<Tally>,
}

/// At most one warning per this, per kind of failure, with the count since the last.
const WARN_EVERY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for dyn NodeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSink")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_call<'a>(stream: &StreamId, args: &ReadArgs<'_>) -> redis::ScriptInvocation<'a> {
    let mut call = script::READ.prepare_invoke();
    call.key(keys::meta_key(stream.kind, &stream.name))
        .key(keys::history_key(stream.kind, &stream.name));
    args.apply(&mut call);
    call
}

impl RedisNode {
    /// Creates the node and starts its instances' supervisors and its heartbeat on the
    /// current (broker) runtime.
    ///
    /// # Errors
    /// A `--redis-url` that is not a Redis URL (the message names it).
    pub fn start(
        settings: NodeSettings,
        sink: Arc<dyn NodeSink>,
        metrics: EngineMetrics,
    ) -> Result<Arc<RedisNode>, String> {
        let instances = settings
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Instance::new(i, url, settings.timing)
                    .map(Arc::new)
                    .map_err(|e| format!("--redis-url {}: {e}", super::instance::redact(url)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if instances.is_empty() {
            return Err("--engine redis needs at least one --redis-url".to_owned());
        }
        instances[0].want([keys::CONTROL_CHANNEL.to_owned()]);
        metrics.up.set(0.0);
        let count = instances.len();
        let pace_target = settings.timing.command / 4;
        let node = Arc::new_cyclic(|me| RedisNode {
            me: me.clone(),
            instances,
            settings,
            streams: Mutex::new(Streams::default()),
            sink,
            metrics,
            up: AtomicBool::new(false),
            seen_up: Mutex::new(vec![false; count]),
            pacers: Mutex::new(vec![Pacer::new(pace_target); count]),
            publish_failures: Mutex::new(Tally::new(WARN_EVERY)),
            subscribe_failures: Mutex::new(Tally::new(WARN_EVERY)),
        });
        for instance in &node.instances {
            instance.spawn(Arc::clone(&node) as Arc<dyn Events>);
        }
        let heartbeat = Arc::downgrade(&node);
        tokio::spawn(async move { heartbeats(heartbeat).await });
        Ok(node)
    }

    /// `--node-name`.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Whether every instance is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The instances, in `--redis-url` order.
    pub fn instances(&self) -> &[Arc<Instance>] {
        &self.instances
    }

    /// The instance holding `stream`.
    pub fn instance_of(&self, stream: &StreamId) -> &Arc<Instance> {
        &self.instances[keys::shard_of(stream.kind, &stream.name, self.instances.len())]
    }

    /// Whether the instance holding `stream` is up.
    pub fn stream_up(&self, stream: &StreamId) -> bool {
        self.instance_of(stream).is_up()
    }

    /// One more local subscription of `stream` (no IO: see [`RedisNode::flush`]).
    pub fn subscribe(&self, stream: StreamId) {
        let mut s = lock(&self.streams);
        let state = s.map.entry(stream.clone()).or_insert_with(|| StreamState {
            count: 0,
            subscribed: false,
            order: Order::new(),
        });
        state.count += 1;
        if state.count == 1 && !state.subscribed {
            s.dirty.push(stream);
        }
    }

    /// One local subscription of `stream` fewer.
    pub fn unsubscribe(&self, stream: StreamId) {
        let mut s = lock(&self.streams);
        if let Some(state) = s.map.get_mut(&stream) {
            state.count = state.count.saturating_sub(1);
            if state.count == 0 {
                s.dirty.push(stream);
            }
        }
    }

    /// Local subscriptions of `stream` (for tests and stats).
    pub fn local_count(&self, stream: &StreamId) -> u32 {
        lock(&self.streams).map.get(stream).map_or(0, |s| s.count)
    }

    /// Subscribes the streams that gained their first local subscription and
    /// unsubscribes those that lost their last, batched per instance. Returns, per
    /// instance that had subscribes, whether they were confirmed: after `Ok`, every
    /// later publish of those streams reaches this node.
    pub async fn flush(&self) -> Vec<(usize, Result<(), String>)> {
        let count = self.instances.len();
        let mut subscribe: Vec<Vec<String>> = vec![Vec::new(); count];
        let mut unsubscribe: Vec<Vec<String>> = vec![Vec::new(); count];
        {
            let mut guard = lock(&self.streams);
            let s = &mut *guard;
            for stream in std::mem::take(&mut s.dirty) {
                let Some(state) = s.map.get_mut(&stream) else {
                    continue;
                };
                let shard = keys::shard_of(stream.kind, &stream.name, count);
                let channel = keys::pubsub_channel(stream.kind, &stream.name);
                if state.count > 0 && !state.subscribed {
                    state.subscribed = true;
                    subscribe[shard].push(channel);
                } else if state.count == 0 {
                    if state.subscribed {
                        unsubscribe[shard].push(channel);
                    }
                    s.map.remove(&stream);
                }
            }
        }
        let calls = self.instances.iter().enumerate().map(|(i, instance)| {
            let (sub, unsub) = (
                std::mem::take(&mut subscribe[i]),
                std::mem::take(&mut unsubscribe[i]),
            );
            async move {
                instance.unsubscribe(unsub).await;
                if sub.is_empty() {
                    return None;
                }
                Some((i, instance.subscribe(sub).await.map_err(|e| e.to_string())))
            }
        });
        let results: Vec<_> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        for (_, result) in &results {
            if result.is_err() {
                self.metrics.error(EngineOp::Subscribe).increment(1);
            }
        }
        results
    }

    /// `n` subscribes were answered with an error (their position could not be read:
    /// `error`): counted in `pingwheel_engine_subscribe_failures_total` and warned about
    /// with a count, at most once per [`WARN_EVERY`].
    pub fn subscribes_failed(&self, n: usize, error: &str) {
        if n == 0 {
            return;
        }
        self.metrics.subscribe_failures.increment(n as u64);
        if let Some(n) = lock(&self.subscribe_failures).add(n as u64, Instant::now()) {
            warn!(
                node = %self.settings.name, failed = n,
                "subscribes answered with an error (engine_unavailable): {error}"
            );
        }
    }

    /// Writes this node's heartbeat for `GET /v1/nodes` (if the first instance is up).
    async fn heartbeat(&self) {
        let first = &self.instances[0];
        if !first.is_up() {
            return;
        }
        let (connections, subscriptions) = self.sink.local_counts();
        let info = NodeInfo {
            name: self.settings.name.clone(),
            connections,
            subscriptions,
            heartbeat_ms: nodes::unix_ms(),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(keys::NODES_KEY)
            .arg(&info.name)
            .arg(serde_json::to_string(&info).unwrap_or_default())
            .ignore();
        if let Err(e) = first.pipeline_within(&pipe, first.background_limit()).await {
            self.metrics.error(EngineOp::Heartbeat).increment(1);
            debug!("heartbeat failed: {e}");
        }
    }

    /// Warns about failures counted but not yet reported (called every heartbeat, so
    /// the end of a burst is reported too).
    fn report_failures(&self) {
        let now = Instant::now();
        if let Some(n) = lock(&self.publish_failures).due(now) {
            warn!(node = %self.settings.name, failed = n, "publishes answered 503 engine_unavailable");
        }
        if let Some(n) = lock(&self.subscribe_failures).due(now) {
            warn!(
                node = %self.settings.name, failed = n,
                "subscribes answered with an error (engine_unavailable)"
            );
        }
    }

    /// Starts `stream`'s order check at a position read from Redis, if nothing was
    /// received for it yet.
    pub fn observe_position(&self, stream: &StreamId, epoch: Epoch, seq: u64) {
        if let Some(state) = lock(&self.streams).map.get_mut(stream) {
            state.order.start_at(epoch, seq);
        }
    }

    /// Publishes `items` through the publish script on their streams' instances (per
    /// instance one pipeline of calls of up to [`PUBLISH_CHUNK`] messages each, in
    /// item order; the instances in parallel), and returns each one's position, in
    /// order. Items of one stream get increasing seqs in item order.
    ///
    /// # Errors
    /// When an instance involved is down nothing is published. When one fails during
    /// the call, the items on the instances that answered were published (a batch
    /// spanning instances is not atomic; documented in docs/operations.md).
    pub async fn publish(&self, items: &[PublishItem<'_>]) -> Result<Vec<(u64, Epoch)>, NodeError> {
        let result = self.publish_inner(items).await;
        if let Err(e) = &result {
            self.metrics.error(EngineOp::Publish).increment(1);
            if let Some(n) = lock(&self.publish_failures).add(1, Instant::now()) {
                warn!(
                    node = %self.settings.name, failed = n,
                    "publishes answered 503 engine_unavailable: {e}"
                );
            }
        }
        result
    }

    async fn publish_inner(
        &self,
        items: &[PublishItem<'_>],
    ) -> Result<Vec<(u64, Epoch)>, NodeError> {
        let count = self.instances.len();
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, item) in items.iter().enumerate() {
            by_shard[keys::shard_of(item.kind, item.name, count)].push(i);
        }
        for (shard, list) in by_shard.iter().enumerate() {
            if !list.is_empty() && !self.instances[shard].is_up() {
                return Err(NodeError::down(self.instances[shard].addr()));
            }
        }
        let meta_ttl = self.settings.meta_ttl.as_secs().max(1);
        let limit = self.settings.timing.command;
        let calls = by_shard
            .iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(shard, list)| {
                let invocations: Vec<_> = list
                    .chunks(PUBLISH_CHUNK)
                    .map(|chunk| {
                        let mut call = script::publish_call(meta_ttl);
                        for &i in chunk {
                            let item = &items[i];
                            let epoch = random_epoch();
                            let target = script::Target {
                                kind: item.kind,
                                name: item.name,
                                data: item.data,
                                size: item.keep.size,
                                ttl_secs: item.keep.ttl_secs(),
                                epoch: epoch_str(&epoch),
                            };
                            script::add_target(&mut call, &target, meta_ttl);
                        }
                        call
                    })
                    .collect();
                let instance = &self.instances[shard];
                async move {
                    let result = instance
                        .scripts_within(&script::PUBLISH, &invocations, limit)
                        .await;
                    (shard, result)
                }
            });
        let mut out: Vec<Option<(u64, Epoch)>> = vec![None; items.len()];
        let mut failure: Option<NodeError> = None;
        for (shard, result) in futures_util::future::join_all(calls).await {
            let replies = match result {
                Ok(replies) => replies,
                Err(e) => {
                    failure.get_or_insert(e.into());
                    continue;
                }
            };
            let chunks = by_shard[shard].chunks(PUBLISH_CHUNK);
            if replies.len() != chunks.len() {
                failure.get_or_insert(BadReply("pipeline: reply count").into());
                continue;
            }
            for (chunk, reply) in chunks.zip(replies) {
                if let Value::ServerError(e) = &reply {
                    failure.get_or_insert(NodeError::Instance(InstanceError::Redis {
                        addr: self.instances[shard].addr().to_owned(),
                        source: redis::RedisError::from(e.clone()),
                    }));
                    continue;
                }
                let positions = match script::parse_published(&reply, chunk.len()) {
                    Ok(positions) => positions,
                    Err(e) => {
                        failure.get_or_insert(e.into());
                        continue;
                    }
                };
                for (&i, (seq, epoch)) in chunk.iter().zip(positions) {
                    match parse_epoch(&epoch) {
                        Some(epoch) => out[i] = Some((seq, epoch)),
                        None => {
                            failure.get_or_insert(BadReply("publish: epoch").into());
                        }
                    }
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        out.into_iter()
            .map(|r| r.ok_or(BadReply("pipeline: missing reply").into()))
            .collect()
    }

    /// The shared per-instance runner: item `i` goes to instance `shards[i]` as the
    /// call `call(i)`; one pipeline of `script` per instance involved, the instances in
    /// parallel, each round trip bounded by `limit`. Returns one reply per item, in
    /// item order, or the first failure (an instance's error, a server error in a
    /// reply, a missing reply): all or nothing.
    async fn per_instance<'a>(
        &self,
        script: &redis::Script,
        shards: &[usize],
        limit: Duration,
        call: impl Fn(usize) -> redis::ScriptInvocation<'a>,
    ) -> Result<Vec<Value>, NodeError> {
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); self.instances.len()];
        for (i, &shard) in shards.iter().enumerate() {
            by_shard[shard].push(i);
        }
        let calls = by_shard
            .iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(shard, list)| {
                let invocations: Vec<_> = list.iter().map(|&i| call(i)).collect();
                let instance = &self.instances[shard];
                async move {
                    (
                        shard,
                        instance.scripts_within(script, &invocations, limit).await,
                    )
                }
            });
        let mut out: Vec<Option<Value>> = vec![None; shards.len()];
        let mut failure = None;
        for (shard, result) in futures_util::future::join_all(calls).await {
            let replies = match result {
                Ok(replies) if replies.len() == by_shard[shard].len() => replies,
                Ok(_) => {
                    failure.get_or_insert(BadReply("pipeline: reply count").into());
                    continue;
                }
                Err(e) => {
                    failure.get_or_insert(e.into());
                    continue;
                }
            };
            for (&i, reply) in by_shard[shard].iter().zip(replies) {
                if let Value::ServerError(e) = &reply {
                    failure.get_or_insert(NodeError::Instance(InstanceError::Redis {
                        addr: self.instances[shard].addr().to_owned(),
                        source: redis::RedisError::from(e.clone()),
                    }));
                }
                out[i] = Some(reply);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        out.into_iter()
            .map(|r| r.ok_or(BadReply("pipeline: missing reply").into()))
            .collect()
    }

    /// Runs the read script for `stream` with `args` on its instance.
    ///
    /// # Errors
    /// Down, timed out, or an unreadable reply.
    pub async fn read(&self, stream: &StreamId, args: &ReadArgs<'_>) -> Result<Read, NodeError> {
        let result = self.read_many(&[(stream.clone(), args.clone())]).await;
        result.and_then(|mut v| v.pop().ok_or(BadReply("read: no reply").into()))
    }

    /// Runs several reads, grouped per instance, one pipeline each, in parallel;
    /// results in order. For many reads at once (a recovery storm) use
    /// [`RedisNode::read_paced`].
    ///
    /// # Errors
    /// The first failure (all or nothing).
    pub async fn read_many(
        &self,
        reads: &[(StreamId, ReadArgs<'_>)],
    ) -> Result<Vec<Read>, NodeError> {
        self.read_within(reads, self.settings.timing.command).await
    }

    /// [`RedisNode::read_many`], each round trip bounded by `limit`.
    async fn read_within(
        &self,
        reads: &[(StreamId, ReadArgs<'_>)],
        limit: Duration,
    ) -> Result<Vec<Read>, NodeError> {
        let count = self.instances.len();
        let shards: Vec<usize> = reads
            .iter()
            .map(|(stream, _)| keys::shard_of(stream.kind, &stream.name, count))
            .collect();
        let result = self
            .per_instance(&script::READ, &shards, limit, |i| {
                read_call(&reads[i].0, &reads[i].1)
            })
            .await
            .and_then(|replies| {
                replies
                    .into_iter()
                    .map(|reply| script::parse_read(reply).map_err(NodeError::from))
                    .collect()
            });
        if result.is_err() {
            self.metrics.error(EngineOp::Read).increment(1);
        }
        result
    }

    /// Runs many reads (a recovery storm) in paced chunks: per instance, chunks sized
    /// by that instance's [`Pacer`] (about a quarter of `--redis-timeout` each), one
    /// after the other, so publishes and the liveness probe never queue behind more
    /// than one chunk; the instances in parallel. Each chunk may take up to
    /// [`Instance::background_limit`] (a subscribe's bound, not a publish's); one that
    /// times out is sent again, smaller, up to [`pace::MAX_ATTEMPTS`] times. `done` is called once per chunk as
    /// soon as it is read (or failed), with the indices into `reads` it covers and
    /// their reads in the same order; every index is covered exactly once.
    pub async fn read_paced(&self, reads: &[(StreamId, ReadArgs<'_>)], done: &ChunkDone<'_>) {
        let count = self.instances.len();
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, (stream, _)) in reads.iter().enumerate() {
            by_shard[keys::shard_of(stream.kind, &stream.name, count)].push(i);
        }
        let runs = by_shard
            .iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(shard, list)| self.read_paced_on(shard, list, reads, done));
        futures_util::future::join_all(runs).await;
    }

    async fn read_paced_on(
        &self,
        shard: usize,
        mut rest: &[usize],
        reads: &[(StreamId, ReadArgs<'_>)],
        done: &ChunkDone<'_>,
    ) {
        let mut attempts = 0;
        while !rest.is_empty() {
            let size = lock(&self.pacers)[shard].size().min(rest.len());
            let (chunk, after) = rest.split_at(size);
            let batch: Vec<_> = chunk.iter().map(|&i| reads[i].clone()).collect();
            let started = Instant::now();
            let limit = self.instances[shard].background_limit();
            let result = self.read_within(&batch, limit).await;
            let took = started.elapsed();
            attempts += 1;
            match result {
                Err(NodeError::Instance(InstanceError::Timeout { after: limit, .. }))
                    if attempts < pace::MAX_ATTEMPTS =>
                {
                    let mut pacers = lock(&self.pacers);
                    pacers[shard].timed_out(size, limit);
                    debug!(
                        redis = %self.instances[shard].addr(), reads = size, attempts,
                        next = pacers[shard].size(), "recovery reads timed out; again, smaller"
                    );
                    continue;
                }
                Ok(_) => lock(&self.pacers)[shard].answered(size, took),
                // The last attempt: its reads fail, the next chunk is smaller still.
                Err(NodeError::Instance(InstanceError::Timeout { after: limit, .. })) => {
                    lock(&self.pacers)[shard].timed_out(size, limit);
                }
                Err(_) => {}
            }
            debug!(
                redis = %self.instances[shard].addr(), reads = size, ?took,
                ok = result.is_ok(), "recovery chunk"
            );
            done(chunk, result);
            rest = after;
            attempts = 0;
        }
    }

    /// The live nodes, from the heartbeats (deleting expired ones).
    ///
    /// # Errors
    /// The first instance is down or failed.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        let first = &self.instances[0];
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(keys::NODES_KEY);
        let reply = first.pipeline(&pipe).await.inspect_err(|_| {
            self.metrics.error(EngineOp::Heartbeat).increment(1);
        })?;
        let fields: Vec<(String, Vec<u8>)> = match reply.into_iter().next() {
            Some(Value::Array(flat)) => flat
                .chunks(2)
                .filter_map(|pair| match pair {
                    [Value::BulkString(k), Value::BulkString(v)] => {
                        Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                    }
                    _ => None,
                })
                .collect(),
            Some(Value::Map(map)) => map
                .into_iter()
                .filter_map(|pair| match pair {
                    (Value::BulkString(k), Value::BulkString(v)) => {
                        Some((String::from_utf8_lossy(&k).into_owned(), v))
                    }
                    _ => None,
                })
                .collect(),
            _ => return Err(BadReply("nodes: HGETALL").into()),
        };
        let (live, stale) = nodes::live_nodes(fields, nodes::unix_ms());
        if !stale.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL").arg(keys::NODES_KEY).arg(&stale).ignore();
            let _ = first.pipeline(&pipe).await;
        }
        Ok(live)
    }

    /// Sends `control` to every node (this one included); returns how many received it.
    ///
    /// # Errors
    /// The first instance is down or failed.
    pub async fn send_control(&self, control: &Control) -> Result<u64, NodeError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(keys::CONTROL_CHANNEL)
            .arg(control.to_json());
        let reply = self.instances[0].pipeline(&pipe).await.inspect_err(|_| {
            self.metrics.error(EngineOp::Control).increment(1);
        })?;
        match reply.first() {
            Some(Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
            _ => Err(BadReply("control: PUBLISH").into()),
        }
    }

    fn update_up(&self) {
        let up = self.instances.iter().all(|i| i.is_up());
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.metrics.up.set(if up { 1.0 } else { 0.0 });
            if up {
                self.metrics.went_up.increment(1);
                info!(node = %self.settings.name, "engine up: every Redis instance connected");
            } else {
                self.metrics.went_down.increment(1);
                warn!(node = %self.settings.name, "engine down: publishes answer 503, subscribes an error");
            }
            self.sink.up_changed(up);
        }
    }

    fn spawn_refill(&self, stream: StreamId, gap: Gap<Epoch>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move { me.refill(stream, gap).await });
    }

    async fn refill(&self, stream: StreamId, gap: Gap<Epoch>) {
        let keep = self.sink.keep(&stream);
        let entries = if keep.size == 0 {
            None
        } else {
            let epoch = epoch_str(&gap.epoch).to_owned();
            let args = ReadArgs {
                epoch: &epoch,
                after: gap.from - 1,
                last: gap.to,
                mode: ReadMode::Fill,
                create: "",
                meta_ttl: 0,
                size: keep.size,
            };
            match self.read(&stream, &args).await {
                Ok(mut read) if read.epoch.as_deref() == Some(epoch.as_str()) => {
                    read.expire(keep.ttl.as_micros() as u64);
                    Some(
                        read.entries
                            .into_iter()
                            .map(|e| {
                                let live = Live {
                                    stream: stream.clone(),
                                    seq: e.seq,
                                    epoch: gap.epoch,
                                    data: Bytes::from(e.data),
                                    micros: e.micros,
                                };
                                (e.seq, live)
                            })
                            .collect(),
                    )
                }
                Ok(_) => None,
                Err(e) => {
                    debug!(stream = %stream.name, "refill read failed: {e}");
                    None
                }
            }
        };
        let mut next = None;
        {
            let mut s = lock(&self.streams);
            let Some(state) = s.map.get_mut(&stream) else {
                return;
            };
            if !state.order.is_refilling() {
                return;
            }
            let mut out = Vec::new();
            match state.order.refilled(entries, &mut out) {
                Refilled::Done => self.metrics.gaps_refilled.increment(1),
                Refilled::Again(g) => {
                    self.metrics.gaps_refilled.increment(1);
                    next = Some(g);
                }
                Refilled::Lost { epoch, seq } => {
                    self.metrics.gaps_lost.increment(1);
                    debug!(stream = %stream.name, from = gap.from, to = gap.to, "position lost");
                    self.sink.position_lost(&stream, epoch, seq);
                }
            }
            if !out.is_empty() {
                self.sink.deliver(out);
            }
        }
        if let Some(g) = next {
            self.spawn_refill(stream, g);
        }
    }

    /// Reads the top of every stream held on `instance` and checks it against what
    /// this node passed on (after a reconnect).
    async fn check_positions(&self, instance: usize) {
        let count = self.instances.len();
        let streams: Vec<StreamId> = lock(&self.streams)
            .map
            .iter()
            .filter(|(id, st)| {
                st.subscribed && keys::shard_of(id.kind, &id.name, count) == instance
            })
            .map(|(id, _)| id.clone())
            .collect();
        let args = ReadArgs {
            epoch: "",
            after: 0,
            last: 0,
            mode: ReadMode::Recover,
            create: "",
            meta_ttl: 0,
            // Only the top is wanted.
            size: 0,
        };
        for chunk in streams.chunks(CHECK_BATCH) {
            let reads: Vec<_> = chunk.iter().map(|s| (s.clone(), args.clone())).collect();
            let tops = match self.read_many(&reads).await {
                Ok(tops) => tops,
                Err(e) => {
                    warn!(redis = %self.instances[instance].addr(), "position check failed: {e}");
                    return;
                }
            };
            let mut gaps = Vec::new();
            {
                let mut s = lock(&self.streams);
                for (stream, read) in chunk.iter().zip(tops) {
                    let (Some(state), Some(epoch)) = (
                        s.map.get_mut(stream),
                        read.epoch.as_deref().and_then(parse_epoch),
                    ) else {
                        continue;
                    };
                    if state.order.mark().is_none() {
                        state.order.start_at(epoch, read.top);
                    } else if let Some(gap) = state.order.check_top(epoch, read.top) {
                        gaps.push((stream.clone(), gap));
                    }
                }
            }
            for (stream, gap) in gaps {
                self.spawn_refill(stream, gap);
            }
        }
    }
}

impl Events for RedisNode {
    fn messages(&self, _instance: usize, batch: Vec<redis::Msg>) {
        self.metrics.broker_messages.increment(batch.len() as u64);
        let mut out = Vec::with_capacity(batch.len());
        let mut gaps = Vec::new();
        let mut s = lock(&self.streams);
        for msg in batch {
            let channel = msg.get_channel_name();
            if channel == keys::CONTROL_CHANNEL {
                if let Some(control) = Control::parse(msg.get_payload_bytes()) {
                    self.sink.control(control);
                }
                continue;
            }
            let Some((kind, name)) = keys::parse_pubsub_channel(channel) else {
                continue;
            };
            let Ok(live) = LiveMessage::parse(msg.get_payload_bytes()) else {
                debug!(channel, "malformed pub/sub message dropped");
                continue;
            };
            let Some(epoch) = parse_epoch(live.epoch) else {
                continue;
            };
            let key = StreamId {
                kind,
                name: Arc::from(name),
            };
            let Some(state) = s.map.get_mut(&key) else {
                continue; // unsubscribed meanwhile
            };
            let item = Live {
                stream: key.clone(),
                seq: live.seq,
                epoch,
                data: Bytes::copy_from_slice(live.data),
                micros: live.micros,
            };
            if let Some(gap) = state.order.message(live.seq, epoch, item, &mut out) {
                gaps.push((key, gap));
            }
        }
        if !out.is_empty() {
            self.sink.deliver(out);
        }
        drop(s);
        for (stream, gap) in gaps {
            self.spawn_refill(stream, gap);
        }
    }

    fn up(&self, instance: usize) {
        let again = std::mem::replace(&mut lock(&self.seen_up)[instance], true);
        if again {
            self.metrics.resubscribes.increment(1);
        }
        self.update_up();
        if let Some(me) = self.me.upgrade() {
            // The node is listed in `/v1/nodes` as soon as it is up, not a tick later.
            if instance == 0 {
                let node = Arc::clone(&me);
                tokio::spawn(async move { node.heartbeat().await });
            }
            tokio::spawn(async move { me.check_positions(instance).await });
        }
    }

    fn down(&self, _instance: usize, _why: &str) {
        self.update_up();
    }
}

/// Writes this node's heartbeat every [`nodes::HEARTBEAT_INTERVAL`] until the node is
/// dropped.
async fn heartbeats(node: Weak<RedisNode>) {
    let mut tick = tokio::time::interval(nodes::HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        node.report_failures();
        node.heartbeat().await;
    }
}
