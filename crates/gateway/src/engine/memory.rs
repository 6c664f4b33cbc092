//! The single-node engine: every stream's position and history in this process, in
//! one [`History`] behind one lock.
//!
//! # The critical section
//!
//! Everything that reads or changes a position happens under the lock, in this order:
//!
//! 1. the workers' pending [`Request`]s are applied, in the order each worker sent
//!    them: subscriptions counted, recoveries read and answered through the
//!    [`Outbox`] (so a subscription is counted before its history is read);
//! 2. a publish assigns positions, keeps the data, and hands the batch to every worker.
//!
//! The answers and the deliveries enter each worker's link in lock order, so a
//! recovery's answer reaches its worker after every delivery its read returned and
//! before every later one: with the worker's merge ([`super::recovery`]) there is no
//! gap and no duplicate. The lock is taken on the admin runtime only (the publish API,
//! the request task, the 1-second tick), never by a worker.
//!
//! The engine is never unavailable: [`Engine::publish`] always succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::history::History;
use super::position::Since;
use super::recovery::Answer;
use super::{
    Answered, Delivery, Engine, EngineFuture, EngineRequests, EngineStats, HistoryRead, Outbox,
    Published, Request, Stream, StreamKey,
};
use crate::push::publish::Target;

/// How often expired history is swept and idle streams forgotten.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The memory engine. See the module docs.
#[derive(Debug)]
pub struct MemoryEngine {
    state: Mutex<State>,
    outbox: Arc<dyn Outbox>,
    /// `--recovery-max`: most messages one recovery hands out.
    recovery_max: u64,
    messages: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Debug)]
struct State {
    history: History,
    /// Set once [`Engine::run`] started.
    requests: Option<EngineRequests>,
    /// Answers per worker collected while applying requests (reused).
    answers: Vec<Vec<Answered>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic under the lock would have come from `History`'s own assertions; its
    // state is still usable for the other streams, so keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryEngine {
    /// An engine over `history`, handing out at most `recovery_max` messages per
    /// recovery, talking to the workers through `outbox`.
    pub fn new(history: History, recovery_max: u64, outbox: Arc<dyn Outbox>) -> MemoryEngine {
        MemoryEngine {
            state: Mutex::new(State {
                history,
                requests: None,
                answers: Vec::new(),
            }),
            outbox,
            recovery_max,
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Applies every request sent so far and sends the answers.
    fn apply_requests(&self, state: &mut State, now: Instant) {
        let State {
            history,
            requests,
            answers,
        } = state;
        let Some(requests) = requests else {
            return;
        };
        while let Some(request) = requests.try_recv() {
            match request {
                Request::Subscribe(key) => {
                    history.subscribe(key.as_stream(), now);
                }
                Request::Unsubscribe(key) => history.unsubscribe(key.as_stream(), now),
                Request::Recover(r) => {
                    let answer = match r.since {
                        None => {
                            let position = history.position(r.stream.as_stream(), now);
                            Answer {
                                position,
                                recovered: None,
                                frames: Vec::new(),
                                first_seq: position.seq + 1,
                            }
                        }
                        Some(since) => {
                            let rec = history.recover(
                                r.stream.as_stream(),
                                since,
                                self.recovery_max,
                                now,
                            );
                            Answer {
                                position: rec.position,
                                recovered: Some(rec.decision.is_recovered()),
                                frames: rec.frames,
                                first_seq: since.seq.saturating_add(1),
                            }
                        }
                    };
                    if answers.len() <= r.worker {
                        answers.resize_with(r.worker + 1, Vec::new);
                    }
                    answers[r.worker].push(Answered {
                        conn: r.conn,
                        ticket: r.ticket,
                        stream: r.stream,
                        answer: Ok(answer),
                    });
                }
            }
        }
        for (worker, list) in answers.iter_mut().enumerate() {
            if !list.is_empty() {
                self.outbox.answer(worker, std::mem::take(list));
            }
        }
    }

    fn update_stats(&self, history: &History) {
        let stats = history.stats();
        self.messages
            .store(stats.messages as u64, Ordering::Relaxed);
        self.bytes.store(stats.bytes as u64, Ordering::Relaxed);
    }

    /// [`Engine::publish`] at `now`, synchronously.
    pub fn publish_at(&self, items: &[(Target<'_>, &RawValue)], now: Instant) -> Vec<Published> {
        let mut results = Vec::with_capacity(items.len());
        let mut batch = Vec::with_capacity(items.len());
        let mut state = lock(&self.state);
        self.apply_requests(&mut state, now);
        for (target, data) in items {
            let stream = Stream::of(target);
            let published = state.history.publish(stream, now, data.get().as_bytes());
            results.push(Published {
                position: published.position,
                subscribers: u64::from(published.subscribers),
            });
            // Nobody here to deliver to: wake no worker for it.
            if published.subscribers > 0 {
                batch.push(Delivery {
                    stream: StreamKey::from(stream),
                    position: published.position,
                    frame: published.frame,
                    accepted_at: now,
                });
            }
        }
        if !batch.is_empty() {
            self.outbox.deliver(batch);
        }
        self.update_stats(&state.history);
        drop(state);
        results
    }

    /// [`Engine::history`] at `now`, synchronously.
    pub fn history_at(
        &self,
        stream: Stream<'_>,
        since: Option<Since>,
        limit: usize,
        now: Instant,
    ) -> HistoryRead {
        let mut state = lock(&self.state);
        self.apply_requests(&mut state, now);
        let page = state.history.read(stream, since, limit, now);
        HistoryRead {
            position: page.position,
            frames: page.frames,
        }
    }

    /// Applies pending requests and runs the history's timers at `now`.
    pub fn tick_at(&self, now: Instant) {
        let mut state = lock(&self.state);
        self.apply_requests(&mut state, now);
        state.history.tick(now);
        self.update_stats(&state.history);
    }

    /// Applies pending requests at `now` (what the request task does on a wake-up).
    pub fn serve_requests_at(&self, now: Instant) {
        let mut state = lock(&self.state);
        self.apply_requests(&mut state, now);
    }

    /// Takes the request channel (before [`Engine::run`]'s loop, or in tests).
    pub fn attach(&self, requests: EngineRequests) {
        lock(&self.state).requests = Some(requests);
    }
}

impl Engine for MemoryEngine {
    fn publish<'a>(
        &'a self,
        items: &'a [(Target<'a>, &'a RawValue)],
    ) -> EngineFuture<'a, Vec<Published>> {
        let published = self.publish_at(items, Instant::now());
        Box::pin(std::future::ready(Ok(published)))
    }

    fn history<'a>(
        &'a self,
        stream: Stream<'a>,
        since: Option<Since>,
        limit: usize,
    ) -> EngineFuture<'a, HistoryRead> {
        let read = self.history_at(stream, since, limit, Instant::now());
        Box::pin(std::future::ready(Ok(read)))
    }

    fn run(
        self: Arc<Self>,
        requests: EngineRequests,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let wake = requests.waker();
        self.attach(requests);
        Box::pin(async move {
            let mut tick = tokio::time::interval(TICK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = wake.notified() => self.serve_requests_at(Instant::now()),
                    _ = tick.tick() => self.tick_at(Instant::now()),
                }
            }
        })
    }

    fn ready(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            history_messages: self.messages.load(Ordering::Relaxed),
            history_bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
