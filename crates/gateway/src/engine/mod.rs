//! The `Engine` seam: who assigns positions, keeps history, and (with Redis) crosses
//! nodes. **This is where a publish gets its position.**
//!
//! | module | what | pure? |
//! |---|---|---|
//! | [`position`] | `(epoch, seq)`, the recovery decision, the URL `since` syntax | yes |
//! | [`namespace`] | `[[namespace]]` options, longest-prefix matching | yes |
//! | [`history`] | positions and bounded history in memory: blocks, TTL, byte bound, idle forgetting | yes (takes `now`) |
//! | [`recovery`] | the worker's half: per-subscription watermarks, merging an answer with buffered live frames | yes |
//! | [`memory`] | the single-node [`Engine`]: a [`history::History`] behind one lock | (admin thread) |
//! | [`redis`] | many nodes over Redis: the publish script, node subscriptions, order checks and refills, outages | (broker runtime) |
//!
//! # The seam
//!
//! An engine does three things, and workers never wait for any of them:
//!
//! 1. **Publish** ([`Engine::publish`], called by the publish API on the admin
//!    runtime): assign each message the next position of its stream, keep it when the
//!    stream's namespace keeps history, and hand the already-encoded frames to every
//!    worker through the [`Outbox`], in position order. An engine that cannot take a
//!    publish answers [`EngineError::Unavailable`] (the API's 503) — never a position
//!    for a message that was not kept and handed to fan-out.
//! 2. **Node subscriptions and recovery** ([`Request`], sent by workers through their
//!    [`EngineSender`]: a lock-free channel send and a wake-up, nothing more). A worker
//!    sends [`Request::Subscribe`] when a connection starts a subscription (before it
//!    asks for anything else about it) and [`Request::Unsubscribe`] when it ends; the
//!    engine counts them (a node subscribes a stream while it has any). Every
//!    `subscribe` op, with or without `since`, also sends a [`Request::Recover`]; the
//!    answer comes back to that worker later, through the [`Outbox`], as an
//!    [`Answered`]. Requests from one worker are handled in the order it sent them.
//! 3. **History reads** for the API ([`Engine::history`]).
//!
//! # What every engine MUST guarantee
//!
//! * Positions: `seq` 1, 2, 3… without gaps per stream and epoch; a new epoch whenever
//!   the history behind a position is lost.
//! * Per worker, deliveries of one stream arrive in seq order.
//! * No gap, no duplicate across a recovery: a recovery's read of the stream happens
//!   after the subscription was counted (the worker is then sent every later publish)
//!   and the answer reaches the worker after every delivery of a seq the read
//!   returned, *or* the worker's merge sorts it out by seq ([`recovery::Pending`]
//!   drops duplicates and stale frames; a lost frame is reported, never hidden). The
//!   memory engine orders the answer and the deliveries on the worker's link; the
//!   Redis engine reads on its own runtime and relies on the merge.
//! * A kept message is recovered as exactly the frame the fan-out sent: the same bytes
//!   (the memory engine keeps only the data and encodes the frame again from it, its
//!   position and its stream; the Redis engine encodes from the stream entry).
//! * The fan-out frame is encoded once per publish and shared by every subscriber on
//!   every worker (one [`Bytes`], clones are reference counts).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::push::publish::Target;
use crate::token::ConnId;

pub mod history;
pub mod memory;
pub mod namespace;
pub mod position;
pub mod recovery;
pub mod redis;

use position::{Position, Since};
use recovery::Answer;

/// A stream of publishes with its own position: a channel, or one user's personal
/// stream (delivered as channel `#user`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stream<'a> {
    /// A channel (a valid channel name).
    Channel(&'a str),
    /// The personal stream of this user id.
    User(&'a str),
}

impl<'a> Stream<'a> {
    /// The stream a publish [`Target`] goes to.
    pub fn of(target: &'a Target<'_>) -> Stream<'a> {
        match target {
            Target::Channel(c) => Stream::Channel(c),
            Target::User(u) => Stream::User(u),
        }
    }

    /// The channel name deliveries carry: the channel, or `#user`.
    pub fn wire_channel(&self) -> &'a str {
        match *self {
            Stream::Channel(c) => c,
            Stream::User(_) => crate::push::channel::USER_CHANNEL,
        }
    }
}

/// An owned [`Stream`], shared cheaply (the worker's index holds the same names).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// A channel.
    Channel(Arc<str>),
    /// A user's personal stream.
    User(Arc<str>),
}

impl StreamKey {
    /// The borrowed form.
    pub fn as_stream(&self) -> Stream<'_> {
        match self {
            StreamKey::Channel(c) => Stream::Channel(c),
            StreamKey::User(u) => Stream::User(u),
        }
    }
}

impl From<Stream<'_>> for StreamKey {
    fn from(s: Stream<'_>) -> StreamKey {
        match s {
            Stream::Channel(c) => StreamKey::Channel(Arc::from(c)),
            Stream::User(u) => StreamKey::User(Arc::from(u)),
        }
    }
}

/// Why an engine refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The engine cannot take the request now (its broker is unreachable, say): the
    /// publish API answers 503 `engine_unavailable`; a subscribe gets an error reply.
    Unavailable(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Unavailable(why) => write!(f, "engine unavailable: {why}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// What one published message got.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its position.
    pub position: Position,
    /// Subscribers on this node when it was published.
    pub subscribers: u64,
}

/// One publish as every worker receives it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its stream.
    pub stream: StreamKey,
    /// Its position.
    pub position: Position,
    /// The complete WebSocket text frame, shared by every subscriber.
    pub frame: Bytes,
    /// When the publish API accepted it (for `pingwheel_delivery_lag_seconds`).
    pub accepted_at: Instant,
}

/// A worker's request to the engine.
#[derive(Clone, Debug)]
pub enum Request {
    /// One more subscription of this stream on the node.
    Subscribe(StreamKey),
    /// One subscription fewer.
    Unsubscribe(StreamKey),
    /// The stream's position, and with `since` the recovery from it, for one
    /// subscription (answered through the [`Outbox`]).
    Recover(RecoverRequest),
}

/// A recovery (or a plain position query, without `since`) for one subscription.
#[derive(Clone, Debug)]
pub struct RecoverRequest {
    /// The asking worker.
    pub worker: usize,
    /// The connection.
    pub conn: ConnId,
    /// The worker's number for this request (a later request for the same
    /// subscription supersedes it).
    pub ticket: u32,
    /// The stream.
    pub stream: StreamKey,
    /// The client's last position; `None` asks for the position only.
    pub since: Option<Since>,
}

/// An engine's answer to one [`RecoverRequest`].
#[derive(Clone, Debug)]
pub struct Answered {
    /// The connection it is for.
    pub conn: ConnId,
    /// The request's ticket.
    pub ticket: u32,
    /// The stream.
    pub stream: StreamKey,
    /// The position and recovered frames, or why there are none.
    pub answer: Result<Answer, EngineError>,
}

/// Where an engine sends what the workers must see.
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Hands `batch` to every worker, in order.
    fn deliver(&self, batch: Vec<Delivery>);
    /// Hands `answers` to worker `worker`, after everything delivered to it so far.
    fn answer(&self, worker: usize, answers: Vec<Answered>);
}

/// A worker's end of the request channel: sends never block and never lock.
#[derive(Clone, Debug)]
pub struct EngineSender {
    requests: Sender<Request>,
    wake: Arc<tokio::sync::Notify>,
}

impl EngineSender {
    /// Sends `request` and wakes the engine (wake-ups coalesce).
    pub fn send(&self, request: Request) {
        // The engine is gone only when the process is shutting down: nobody will ask.
        let _ = self.requests.send(request);
        self.wake.notify_one();
    }
}

/// The engine's end of the request channel.
#[derive(Debug)]
pub struct EngineRequests {
    requests: Receiver<Request>,
    wake: Arc<tokio::sync::Notify>,
}

impl EngineRequests {
    /// The next request, if one is waiting.
    pub fn try_recv(&self) -> Option<Request> {
        self.requests.try_recv().ok()
    }

    /// Resolves when a request may be waiting.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// A waker handle (so a task can wait without holding the receiver's lock).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }
}

/// A new request channel: one [`EngineSender`] to clone into every worker.
pub fn request_channel() -> (EngineSender, EngineRequests) {
    let (requests, receiver) = mpsc::channel();
    let wake = Arc::new(tokio::sync::Notify::new());
    (
        EngineSender {
            requests,
            wake: Arc::clone(&wake),
        },
        EngineRequests {
            requests: receiver,
            wake,
        },
    )
}

/// The answer to a history read.
#[derive(Clone, Debug)]
pub struct HistoryRead {
    /// The stream's current position.
    pub position: Position,
    /// Kept frames, oldest first.
    pub frames: Vec<Bytes>,
}

/// Numbers an engine reports for metrics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Messages kept in history on this node (`pingwheel_history_messages`).
    pub history_messages: u64,
    /// Bytes history holds on this node (`pingwheel_history_bytes`).
    pub history_bytes: u64,
}

/// A boxed future an engine returns.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// The engine seam. See the module docs for what every implementation guarantees.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Publishes `items` in order, as one batch: a position each, kept when their
    /// namespace keeps history, handed to every worker. All or nothing: on an error no
    /// item was published.
    fn publish<'a>(
        &'a self,
        items: &'a [(Target<'a>, &'a RawValue)],
    ) -> EngineFuture<'a, Vec<Published>>;

    /// Up to `limit` kept frames of `stream`, oldest first: those after `since` when it
    /// is in the current epoch, else from the oldest kept.
    fn history<'a>(
        &'a self,
        stream: Stream<'a>,
        since: Option<Since>,
        limit: usize,
    ) -> EngineFuture<'a, HistoryRead>;

    /// Handles the workers' requests and the engine's timers until the process ends
    /// (spawned once on the admin runtime).
    fn run(self: Arc<Self>, requests: EngineRequests) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Whether the engine can serve now (`/readyz`).
    fn ready(&self) -> bool;

    /// Numbers for metrics.
    fn stats(&self) -> EngineStats;
}
