//! One Redis instance as a node sees it: a command connection, a pub/sub connection,
//! the set of pub/sub channels the node wants, and the supervisor task that keeps them
//! alive.
//!
//! Everything here runs on the broker runtime (never on a worker's event loop).
//!
//! # Connections
//!
//! * **Commands** go over one multiplexed connection (the `redis` crate pipelines
//!   concurrent requests on it): publish scripts, reads, heartbeats. Each call is
//!   bounded by [`Timing::command`]: a timed-out call fails (the publish API answers
//!   503) and makes the supervisor probe the instance at once.
//! * **Pub/sub** is one connection per instance for every channel this node
//!   subscribes, with `SUBSCRIBE`/`UNSUBSCRIBE` of many channels per command
//!   ([`SUBSCRIBE_BATCH`]) and many commands in flight.
//!
//! # The supervisor ([`Instance::spawn`])
//!
//! ```text
//!  connect both ──▶ SUBSCRIBE everything wanted (batches, pipelined) ──▶ up ──▶ serve
//!      ▲                                                                        │
//!      └──── backoff (250 ms doubling to 5 s, jittered) ◀── down ◀── a failure ──┘
//! ```
//!
//! While up it reads the pub/sub connection, handing messages to [`Events::messages`]
//! in batches, and probes the connection with `PING` whenever it has been silent for
//! [`Timing::probe_interval`]; a probe not answered within [`Timing::probe_timeout`],
//! a closed connection, or an IO error on the command connection takes the instance
//! down: both connections are dropped ([`Instance::is_up`] turns false at once, so
//! publishes fail fast), [`Events::down`] is told, and it reconnects. A silently dead
//! broker (a partition, a hung host) is so noticed within about
//! `probe_interval + probe_timeout`. [`Events::up`] is told after everything wanted is
//! subscribed again, so the owner can check positions for what it missed.
//!
//! Generations: each connect is a new generation; a failure reported against an older
//! one is ignored, so a stale error never takes down a fresh connection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, ServerErrorKind, Value};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, info, warn};

use super::script::BadReply;

/// Channels per `SUBSCRIBE` / `UNSUBSCRIBE` command.
pub const SUBSCRIBE_BATCH: usize = 512;
/// Pub/sub messages handed over in one [`Events::messages`] call at most.
pub const MESSAGE_BATCH: usize = 1024;

/// How long things may take.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// One command or pipeline (`--redis-timeout`).
    pub command: Duration,
    /// Establishing a connection.
    pub connect: Duration,
    /// Probe a pub/sub connection silent for this long.
    pub probe_interval: Duration,
    /// A probe's answer must come within this.
    pub probe_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            command: Duration::from_millis(100),
            connect: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why a call to an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The instance is down (not connected, or reconnecting).
    #[error("redis {0} is unavailable")]
    Down(String),
    /// No answer within [`Timing::command`].
    #[error("redis {addr} did not answer within {after:?}")]
    Timeout {
        /// The instance.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// Redis answered with an error, or the connection failed mid-call.
    #[error("redis {addr}: {source}")]
    Redis {
        /// The instance.
        addr: String,
        /// What the client said.
        source: RedisError,
    },
    /// Redis answered something our scripts never return.
    #[error("redis {addr}: {source}")]
    Reply {
        /// The instance.
        addr: String,
        /// What was wrong.
        source: BadReply,
    },
}

/// What an instance tells its owner (called on the broker runtime; must not block).
pub trait Events: Send + Sync + 'static {
    /// Pub/sub messages, in the order Redis sent them.
    fn messages(&self, instance: usize, batch: Vec<redis::Msg>);
    /// The instance is up again and everything wanted is subscribed.
    fn up(&self, instance: usize);
    /// The instance went down (both connections dropped).
    fn down(&self, instance: usize, why: &str);
}

#[derive(Default)]
struct Shared {
    generation: u64,
    conn: Option<MultiplexedConnection>,
    sink: Option<PubSubSink>,
    /// Takes the current generation down (the supervisor waits on the receiver).
    kick: Option<oneshot::Sender<String>>,
    /// Pub/sub channels the node wants, resubscribed on every connect.
    wanted: HashSet<String>,
    /// (Un)subscribe calls in flight: their confirmations queue ahead of a probe's
    /// answer, and their own timeout already watches the connection, so the probe
    /// waits while any is out.
    in_flight: usize,
    /// When the pub/sub connection last proved alive (a message, a confirmation, a
    /// probe's answer).
    heard: Option<Instant>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("generation", &self.generation)
            .field("up", &self.conn.is_some())
            .field("wanted", &self.wanted.len())
            .finish()
    }
}

/// One Redis instance. See the module docs.
#[derive(Debug)]
pub struct Instance {
    index: usize,
    addr: String,
    client: redis::Client,
    timing: Timing,
    shared: Mutex<Shared>,
    /// Probe now (a command timed out).
    suspect: Notify,
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Instance {
    /// Instance `index` at `url` (`redis://HOST:PORT[/DB]`), not connected yet.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(index: usize, url: &str, timing: Timing) -> Result<Instance, RedisError> {
        // TCP_NODELAY on both connections (the redis crate leaves Nagle on): with Nagle,
        // a publish script written while an earlier one is unacknowledged waits for
        // Redis's reply before it leaves, adding a round trip to the publish path.
        let info = url
            .into_connection_info()?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        Ok(Instance {
            index,
            addr: redact(url),
            client,
            timing,
            shared: Mutex::new(Shared::default()),
            suspect: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its index among the `--redis-url`s.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its URL without the password.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether both connections are up.
    pub fn is_up(&self) -> bool {
        let s = self.lock();
        s.conn.is_some() && s.sink.is_some()
    }

    /// How many pub/sub channels the node wants here.
    pub fn wanted(&self) -> usize {
        self.lock().wanted.len()
    }

    fn live(&self) -> Result<(MultiplexedConnection, u64), InstanceError> {
        let s = self.lock();
        match &s.conn {
            Some(conn) => Ok((conn.clone(), s.generation)),
            None => Err(InstanceError::Down(self.addr.clone())),
        }
    }

    /// Takes generation `generation` down, if it is still the current one.
    fn fail(&self, generation: u64, why: String) {
        let mut s = self.lock();
        if s.generation == generation
            && let Some(kick) = s.kick.take()
        {
            s.conn = None;
            s.sink = None;
            let _ = kick.send(why);
        }
    }

    /// Classifies a failed call of generation `generation`: a broken connection takes
    /// the instance down, a timeout makes it probe at once, a server error is just an
    /// error.
    fn failed(&self, generation: u64, error: RedisError) -> InstanceError {
        if error.is_timeout() {
            self.suspect.notify_one();
            return InstanceError::Timeout {
                addr: self.addr.clone(),
                after: self.timing.command,
            };
        }
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            self.fail(generation, format!("command failed: {error}"));
        }
        InstanceError::Redis {
            addr: self.addr.clone(),
            source: error,
        }
    }

    /// Runs `pipe` on the command connection, bounded by [`Timing::command`]. Replies
    /// come back one per command, errors included (`Value::ServerError`).
    ///
    /// # Errors
    /// Down, timed out, or the connection failed.
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, InstanceError> {
        self.pipeline_within(pipe, self.timing.command).await
    }

    /// How long background work may take (recovery reads, heartbeats): what a
    /// `SUBSCRIBE` may, the longer of [`Timing::command`] and [`Timing::probe_timeout`].
    /// A dead broker is the liveness probe's to notice; on a loaded machine a read that
    /// waits a little is better than a subscribe refused.
    pub fn background_limit(&self) -> Duration {
        self.timing.command.max(self.timing.probe_timeout)
    }

    /// [`Instance::pipeline`] bounded by `limit` instead.
    ///
    /// # Errors
    /// Down, timed out, or the connection failed.
    pub async fn pipeline_within(
        &self,
        pipe: &redis::Pipeline,
        limit: Duration,
    ) -> Result<Vec<Value>, InstanceError> {
        let (mut conn, generation) = self.live()?;
        // The connection's own response timeout is `Timing::command`; this call's is
        // `limit` (the clone shares the connection, not the setting).
        conn.set_response_timeout(limit);
        match tokio::time::timeout(limit, pipe.query_async(&mut conn)).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(error)) if error.is_timeout() => {
                self.suspect.notify_one();
                Err(InstanceError::Timeout {
                    addr: self.addr.clone(),
                    after: limit,
                })
            }
            Ok(Err(error)) => Err(self.failed(generation, error)),
            Err(_) => {
                self.suspect.notify_one();
                Err(InstanceError::Timeout {
                    addr: self.addr.clone(),
                    after: limit,
                })
            }
        }
    }

    /// Runs `calls` of `script` as one pipeline of `EVALSHA`s. Calls refused with
    /// `NOSCRIPT` (the script cache was emptied: a Redis restart, `SCRIPT FLUSH`) were
    /// not run: the script is loaded and exactly those calls run again, in order. A
    /// reply per call, in order; a server error stays in its slot.
    ///
    /// # Errors
    /// As [`Instance::pipeline`].
    pub async fn scripts(
        &self,
        script: &redis::Script,
        calls: &[redis::ScriptInvocation<'_>],
    ) -> Result<Vec<Value>, InstanceError> {
        self.scripts_within(script, calls, self.timing.command)
            .await
    }

    /// [`Instance::scripts`] with each round trip bounded by `limit`.
    ///
    /// # Errors
    /// As [`Instance::pipeline`].
    pub async fn scripts_within(
        &self,
        script: &redis::Script,
        calls: &[redis::ScriptInvocation<'_>],
        limit: Duration,
    ) -> Result<Vec<Value>, InstanceError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in calls {
            pipe.invoke_script(call);
        }
        let mut replies = self.pipeline_within(&pipe, limit).await?;
        let refused: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
            })
            .map(|(i, _)| i)
            .collect();
        if refused.is_empty() {
            return Ok(replies);
        }
        debug!(redis = %self.addr, calls = refused.len(), "NOSCRIPT: loading the script");
        let mut retry = redis::pipe();
        retry.ignore_errors();
        retry.load_script(script).ignore();
        for &i in &refused {
            retry.invoke_script(&calls[i]);
        }
        let again = self.pipeline_within(&retry, limit).await?;
        if again.len() != refused.len() {
            return Err(InstanceError::Reply {
                addr: self.addr.clone(),
                source: BadReply("pipeline: reply count"),
            });
        }
        for (i, value) in refused.into_iter().zip(again) {
            replies[i] = value;
        }
        Ok(replies)
    }

    /// Adds `channels` to what the node wants here without subscribing now: the
    /// supervisor subscribes them on its next connect (the first included).
    pub fn want(&self, channels: impl IntoIterator<Item = String>) {
        self.lock().wanted.extend(channels);
    }

    /// Adds `channels` to what the node wants here and subscribes them now, in
    /// batches. A channel stays wanted even when this fails (it is subscribed on the
    /// next connect) until [`Instance::unsubscribe`].
    ///
    /// # Errors
    /// Down, or the subscription was not confirmed in time.
    pub async fn subscribe(&self, channels: Vec<String>) -> Result<(), InstanceError> {
        if channels.is_empty() {
            return Ok(());
        }
        let (sink, generation) = {
            let mut s = self.lock();
            s.wanted.extend(channels.iter().cloned());
            match &s.sink {
                Some(sink) => (sink.clone(), s.generation),
                None => return Err(InstanceError::Down(self.addr.clone())),
            }
        };
        self.subscribe_on(sink, generation, &channels, true).await
    }

    /// Removes `channels` from what the node wants here and unsubscribes them now
    /// (best effort: a disconnected instance forgets them anyway).
    pub async fn unsubscribe(&self, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        let sink = {
            let mut s = self.lock();
            for c in &channels {
                s.wanted.remove(c);
            }
            s.sink.clone().map(|sink| (sink, s.generation))
        };
        if let Some((sink, generation)) = sink
            && let Err(e) = self.subscribe_on(sink, generation, &channels, false).await
        {
            debug!(redis = %self.addr, "unsubscribe failed: {e}");
        }
    }

    async fn subscribe_on(
        &self,
        sink: PubSubSink,
        generation: u64,
        channels: &[String],
        subscribe: bool,
    ) -> Result<(), InstanceError> {
        let calls = channels.chunks(SUBSCRIBE_BATCH).map(|chunk| {
            let mut sink = sink.clone();
            async move {
                if subscribe {
                    sink.subscribe(chunk).await
                } else {
                    sink.unsubscribe(chunk).await
                }
            }
        });
        let all = futures_util::future::try_join_all(calls);
        // Many batches (a resubscribe of everything) get proportionally longer.
        let batches = channels.len().div_ceil(SUBSCRIBE_BATCH) as u32;
        let limit = self.timing.command.max(self.timing.probe_timeout) * batches.max(1);
        self.lock().in_flight += 1;
        let result = tokio::time::timeout(limit, all).await;
        {
            let mut s = self.lock();
            s.in_flight -= 1;
            if matches!(result, Ok(Ok(_))) {
                s.heard = Some(Instant::now());
            }
        }
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(self.failed(generation, error)),
            Err(_) => {
                self.fail(generation, "subscribe timed out".to_owned());
                Err(InstanceError::Timeout {
                    addr: self.addr.clone(),
                    after: limit,
                })
            }
        }
    }

    /// Starts the supervisor on the current (broker) runtime. See the module docs.
    pub fn spawn(self: &Arc<Self>, events: Arc<dyn Events>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.supervise(events).await })
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, redis::aio::PubSub), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timing.connect))
            .set_response_timeout(Some(self.timing.command));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        // Load the scripts before the instance counts as up, so a pipeline of EVALSHAs
        // never meets NOSCRIPT for some calls and not others (a retry of the refused
        // ones would run them after the later ones: out of order). The NOSCRIPT
        // fallback in `scripts` stays for a `SCRIPT FLUSH` while connected.
        let mut load = redis::pipe();
        load.load_script(&super::script::PUBLISH)
            .ignore()
            .load_script(&super::script::READ)
            .ignore();
        load.query_async::<()>(&mut conn.clone())
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        let pubsub = tokio::time::timeout(self.timing.connect, self.client.get_async_pubsub())
            .await
            .map_err(|_| "pub/sub connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok((conn, pubsub))
    }

    async fn supervise(self: Arc<Self>, events: Arc<dyn Events>) {
        let mut backoff = self.timing.backoff_min;
        let mut was_up = true; // log the first failure to connect
        loop {
            let (conn, pubsub) = match self.connect().await {
                Ok(both) => both,
                Err(why) => {
                    if was_up {
                        warn!(redis = %self.addr, "cannot connect: {why}; retrying with backoff");
                        was_up = false;
                    }
                    sleep_jittered(backoff).await;
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    continue;
                }
            };
            let (sink, mut stream) = pubsub.split();
            let (kick_tx, mut kick_rx) = oneshot::channel();
            let (generation, wanted) = {
                let mut s = self.lock();
                s.generation += 1;
                s.kick = Some(kick_tx);
                let wanted: Vec<String> = s.wanted.iter().cloned().collect();
                (s.generation, wanted)
            };
            let started = Instant::now();
            if let Err(e) = self
                .subscribe_on(sink.clone(), generation, &wanted, true)
                .await
            {
                warn!(redis = %self.addr, channels = wanted.len(), "resubscribe failed: {e}");
                self.lock().kick = None;
                sleep_jittered(backoff).await;
                backoff = (backoff * 2).min(self.timing.backoff_max);
                continue;
            }
            {
                let mut s = self.lock();
                if s.generation == generation && s.kick.is_some() {
                    s.conn = Some(conn);
                    s.sink = Some(sink.clone());
                }
            }
            info!(
                redis = %self.addr, channels = wanted.len(), took = ?started.elapsed(),
                "connected; subscribed everything wanted"
            );
            was_up = true;
            backoff = self.timing.backoff_min;
            events.up(self.index);

            let why = self.serve(&events, sink, &mut stream, &mut kick_rx).await;
            {
                let mut s = self.lock();
                if s.generation == generation {
                    s.conn = None;
                    s.sink = None;
                    s.kick = None;
                }
            }
            warn!(redis = %self.addr, "down: {why}; reconnecting");
            events.down(self.index, &why);
            sleep_jittered(self.timing.backoff_min).await;
        }
    }

    /// Reads and probes the pub/sub connection until it fails; returns why.
    async fn serve(
        &self,
        events: &Arc<dyn Events>,
        mut sink: PubSubSink,
        stream: &mut redis::aio::PubSubStream,
        kick: &mut oneshot::Receiver<String>,
    ) -> String {
        let mut heard = Instant::now();
        let mut tick = tokio::time::interval(self.timing.probe_interval / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let probe = tokio::select! {
                message = stream.next() => {
                    let Some(first) = message else {
                        return "pub/sub connection closed".to_owned();
                    };
                    let mut batch = Vec::with_capacity(16);
                    batch.push(first);
                    while batch.len() < MESSAGE_BATCH {
                        match stream.next().now_or_never() {
                            Some(Some(m)) => batch.push(m),
                            Some(None) => break,
                            None => break,
                        }
                    }
                    heard = Instant::now();
                    events.messages(self.index, batch);
                    false
                }
                why = &mut *kick => return why.unwrap_or_else(|_| "stopped".to_owned()),
                // A command timed out: probe now, however recently we heard.
                () = self.suspect.notified() => {
                    heard = Instant::now() - self.timing.probe_interval;
                    true
                }
                _ = tick.tick() => heard.elapsed() >= self.timing.probe_interval,
            };
            if probe {
                let (busy, confirmed) = {
                    let s = self.lock();
                    (s.in_flight > 0, s.heard)
                };
                if let Some(at) = confirmed.filter(|at| *at > heard) {
                    heard = at;
                }
                if busy || heard.elapsed() < self.timing.probe_interval {
                    continue;
                }
                match tokio::time::timeout(self.timing.probe_timeout, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => heard = Instant::now(),
                    Ok(Err(e)) => return format!("probe failed: {e}"),
                    Err(_) => {
                        return format!(
                            "no answer to a probe within {:?}",
                            self.timing.probe_timeout
                        );
                    }
                }
            }
        }
    }
}

async fn sleep_jittered(base: Duration) {
    // Full jitter on the upper half: many nodes reconnecting at once spread out.
    let half = base / 2;
    let jitter = half.mul_f64(fastrand::f64());
    tokio::time::sleep(half + jitter).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("redis://:secret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
