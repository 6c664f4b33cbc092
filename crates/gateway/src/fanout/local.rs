//! One worker's side of fan-out: its subscription index, the sessions' subscriptions,
//! the requests it sends the engine, the subscribes awaiting their answer, and the
//! queueing of each delivery to the local subscribers.
//!
//! [`LocalFanout`] is the only code that changes a session's user or channels, the
//! index, or what the engine counts, and it changes all three together, so they never
//! disagree:
//!
//! * a connection is in the index under channel `c` exactly when its session lists
//!   `c`, and under user `u` exactly when its session's user is `u`;
//! * for each of those the engine has been sent one [`Request::Subscribe`], and one
//!   [`Request::Unsubscribe`] once it ended;
//! * a subscription's mark is [`Watermark::PENDING`] exactly when it has a waiting
//!   subscribe with a merge (its live deliveries are buffered there).
//!
//! # A subscribe, start to finish
//!
//! Every `subscribe` (op or URL `since`) is registered at once — index, session,
//! [`Request::Subscribe`] — and then asks the engine for the position (and the
//! recovery from `since`) with a [`Request::Recover`] carrying a ticket. The reply
//! waits for the answer ([`LocalFanout::complete`]), which hands back what to send, in
//! order: the `subscribed` reply, the recovered frames, the buffered live ones. A
//! second subscribe of the same stream while one is waiting is refused
//! ([`SubscribeError::Busy`]) so that every request gets exactly one reply, in order.
//!
//! Delivery is split where IO begins: [`LocalFanout::deliver`] finds the subscribers of
//! each delivery and hands the shared frame to the worker's `queue` callback (which
//! queues it on the connection's state machine); the worker then writes each
//! connection it queued to once per batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::index::Subscribers;
use super::session::Session;
use crate::engine::position::{Position, Since};
use crate::engine::recovery::{LiveFrame, Pending, Watermark};
use crate::engine::{
    Answered, Delivery, EngineError, EngineSender, RecoverRequest, Request, Stream, StreamKey,
};
use crate::token::ConnId;

/// A subscribe awaiting the engine's answer.
#[derive(Debug)]
struct Waiting {
    ticket: u32,
    /// The request's `id`, echoed in the reply (`None`: no id, or the URL form).
    reply_id: Option<Box<RawValue>>,
    /// Whether the client gave `since` (the reply then says `recovered`).
    with_since: bool,
    /// `Some` when live deliveries are held back until the answer (a new subscription,
    /// or a recovery in place): the buffer, and the mark to merge from.
    merge: Option<(Pending, Watermark)>,
    /// The subscription did not exist before this subscribe (undone on an error).
    fresh: bool,
}

/// Why a subscribe was not started.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// A subscribe of this stream by this connection still awaits its answer.
    Busy,
}

/// What to send a connection once its subscribe is answered, in this order.
#[derive(Debug)]
pub struct Completed {
    /// The connection.
    pub conn: ConnId,
    /// The stream as the client names it (`#user` for the user stream).
    pub channel: Arc<str>,
    /// The request's id.
    pub reply_id: Option<Box<RawValue>>,
    /// The position, or why the engine could not answer (the reply is then an error).
    pub outcome: Result<Position, EngineError>,
    /// `recovered` for the reply (`None`: no `since` was given).
    pub recovered: Option<bool>,
    /// Frames to send after the reply: the recovered ones, then the buffered live ones.
    pub frames: Vec<Bytes>,
    /// Recovered frames among `frames`.
    pub recovered_count: usize,
    /// Buffered live frames the connection needed were dropped: send `position_lost`.
    pub lost: bool,
    /// The subscribe failed and the subscription did not exist before: the worker
    /// undoes it ([`LocalFanout::unsubscribe`]).
    pub undo: bool,
}

/// One worker's fan-out state. See the module docs.
#[derive(Debug)]
pub struct LocalFanout {
    worker: usize,
    index: Subscribers,
    engine: EngineSender,
    waiting: HashMap<(ConnId, StreamKey), Waiting>,
    next_ticket: u32,
    /// Publish-accepted instants of the deliveries queued since the last
    /// [`LocalFanout::take_accepted`] (reused).
    accepted: Vec<Instant>,
}

fn user_key(user: &Arc<str>) -> StreamKey {
    StreamKey::User(Arc::clone(user))
}

impl LocalFanout {
    /// The fan-out of worker `worker`, reporting to and asking `engine`.
    pub fn new(worker: usize, engine: EngineSender) -> LocalFanout {
        LocalFanout {
            worker,
            index: Subscribers::default(),
            engine,
            waiting: HashMap::new(),
            next_ticket: 0,
            accepted: Vec::new(),
        }
    }

    /// Asks the engine for `key`'s position (and the recovery from `since`) for `id`.
    fn ask(&mut self, id: ConnId, key: StreamKey, since: Option<Since>, waiting: Waiting) {
        let ticket = waiting.ticket;
        self.waiting.insert((id, key.clone()), waiting);
        self.engine.send(Request::Recover(RecoverRequest {
            worker: self.worker,
            conn: id,
            ticket,
            stream: key,
            since,
        }));
    }

    fn ticket(&mut self) -> u32 {
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.next_ticket
    }

    /// Registers a new session of connection `id`, before any delivery can reach it:
    /// its user (recovered from `user_since` if given), then `channels` (repeats are
    /// subscribed once), each recovered from its `since` when it has one. The replies
    /// for the `since`s come with [`LocalFanout::complete`].
    pub fn join(
        &mut self,
        id: ConnId,
        session: &mut Session,
        channels: &[Box<str>],
        since: &[(Box<str>, Since)],
        user_since: Option<Since>,
    ) {
        if let Some(user) = session.user.clone() {
            let mark = match user_since {
                Some(_) => Watermark::PENDING,
                None => Watermark::default(),
            };
            self.index.add(Stream::User(&user), id, mark);
            self.engine.send(Request::Subscribe(user_key(&user)));
            if let Some(since) = user_since {
                let waiting = self.waiting_for(true, Some((Pending::new(), Watermark::default())));
                self.ask(id, user_key(&user), Some(since), waiting);
            }
        }
        for channel in channels {
            let recover = since.iter().find(|(c, _)| c == channel).map(|(_, s)| *s);
            if session.is_subscribed(channel) {
                continue;
            }
            let mark = match recover {
                Some(_) => Watermark::PENDING,
                None => Watermark::default(),
            };
            let name = self.index.add(Stream::Channel(channel), id, mark);
            self.engine
                .send(Request::Subscribe(StreamKey::Channel(Arc::clone(&name))));
            session.channels.push(Arc::clone(&name));
            if let Some(since) = recover {
                let waiting = self.waiting_for(true, Some((Pending::new(), Watermark::default())));
                self.ask(id, StreamKey::Channel(name), Some(since), waiting);
            }
        }
    }

    fn waiting_for(&mut self, with_since: bool, merge: Option<(Pending, Watermark)>) -> Waiting {
        Waiting {
            ticket: self.ticket(),
            reply_id: None,
            with_since,
            merge,
            fresh: false,
        }
    }

    /// Starts a subscribe of `stream` by `id` (`Stream::User` only for the session's
    /// own user): a new subscription, or one in place (the subscription stays; with
    /// `since` it recovers after the later of `since` and what it already delivered).
    /// The reply comes with [`LocalFanout::complete`].
    ///
    /// # Errors
    /// [`SubscribeError::Busy`] while an earlier subscribe of the stream still waits.
    pub fn subscribe(
        &mut self,
        id: ConnId,
        session: &mut Session,
        stream: Stream<'_>,
        since: Option<Since>,
        reply_id: Option<Box<RawValue>>,
    ) -> Result<(), SubscribeError> {
        let subscribed = match stream {
            Stream::Channel(c) => session.is_subscribed(c),
            Stream::User(u) => session.user.as_deref() == Some(u),
        };
        let probe = self.key_of(stream, session);
        if let Some(key) = &probe
            && self.waiting.contains_key(&(id, key.clone()))
        {
            return Err(SubscribeError::Busy);
        }
        let ticket = self.ticket();
        let mut waiting = Waiting {
            ticket,
            reply_id,
            with_since: since.is_some(),
            merge: None,
            fresh: !subscribed,
        };
        if !subscribed {
            let Stream::Channel(channel) = stream else {
                debug_assert!(false, "a user stream is subscribed from the start");
                return Ok(());
            };
            let name = self.index.add(stream, id, Watermark::PENDING);
            let key = StreamKey::Channel(Arc::clone(&name));
            self.engine.send(Request::Subscribe(key.clone()));
            session.channels.push(name);
            debug_assert!(session.is_subscribed(channel));
            waiting.merge = Some((Pending::new(), Watermark::default()));
            self.ask(id, key, since, waiting);
            return Ok(());
        }
        let Some(key) = probe else {
            return Ok(());
        };
        let since = match (since, self.index.mark_mut(stream, id)) {
            (Some(since), Some(mark)) => {
                let from = mark.recover_from(since);
                let saved = std::mem::replace(mark, Watermark::PENDING);
                waiting.merge = Some((Pending::new(), saved));
                Some(from)
            }
            // Without `since`: the position only; the subscription stays live.
            (None, _) => None,
            (Some(since), None) => {
                debug_assert!(false, "{id:?} subscribed to {stream:?} but not indexed");
                Some(since)
            }
        };
        self.ask(id, key, since, waiting);
        Ok(())
    }

    /// The key of `stream` as this worker shares it (the index's name), if indexed.
    fn key_of(&self, stream: Stream<'_>, session: &Session) -> Option<StreamKey> {
        match stream {
            Stream::Channel(c) => session
                .channels
                .iter()
                .find(|n| ***n == *c)
                .map(|n| StreamKey::Channel(Arc::clone(n))),
            Stream::User(_) => session.user.as_ref().map(user_key),
        }
    }

    /// Unsubscribes `id` from `channel` (a waiting subscribe of it is dropped); false
    /// (and nothing changes) if it was not subscribed.
    pub fn unsubscribe(&mut self, id: ConnId, session: &mut Session, channel: &str) -> bool {
        let Some(pos) = session.channels.iter().position(|c| **c == *channel) else {
            return false;
        };
        let name = session.channels.remove(pos);
        self.index.remove(Stream::Channel(&name), id);
        let key = StreamKey::Channel(name);
        self.waiting.remove(&(id, key.clone()));
        self.engine.send(Request::Unsubscribe(key));
        true
    }

    /// Forgets connection `id`, which is going: every subscription, waiting subscribe
    /// and its user.
    pub fn leave(&mut self, id: ConnId, session: Session) {
        let Session { user, channels, .. } = session;
        for channel in channels {
            self.index.remove(Stream::Channel(&channel), id);
            let key = StreamKey::Channel(channel);
            self.waiting.remove(&(id, key.clone()));
            self.engine.send(Request::Unsubscribe(key));
        }
        if let Some(user) = user {
            self.index.remove(Stream::User(&user), id);
            let key = user_key(&user);
            self.waiting.remove(&(id, key.clone()));
            self.engine.send(Request::Unsubscribe(key));
        }
    }

    /// Hands each delivery of `batch`, in order, to `queue` once per local subscriber
    /// that has not had it (`queue(id, frame)` returns whether connection `id` took
    /// it); a subscriber whose subscribe waits gets it buffered instead. Returns how
    /// many took one. The frames are shared: one worker-local reference count per
    /// delivery for all its local subscribers, so workers never contend on the shared
    /// frame's counter once per subscriber.
    pub fn deliver(
        &mut self,
        batch: &[Delivery],
        mut queue: impl FnMut(ConnId, Bytes) -> bool,
    ) -> u64 {
        let mut queued = 0;
        for delivery in batch {
            let subscribers = self.index.subscribers_mut(delivery.stream.as_stream());
            if subscribers.is_empty() {
                continue;
            }
            let frame = Bytes::from_owner(delivery.frame.clone());
            let Position { seq, epoch } = delivery.position;
            for sub in subscribers {
                if sub.mark.is_pending() {
                    let key = (sub.id, delivery.stream.clone());
                    if let Some(Waiting {
                        merge: Some((pending, _)),
                        ..
                    }) = self.waiting.get_mut(&key)
                    {
                        pending.buffer(LiveFrame {
                            seq,
                            epoch,
                            frame: frame.clone(),
                        });
                    }
                    continue;
                }
                if sub.mark.admit(seq, epoch) && queue(sub.id, frame.clone()) {
                    queued += 1;
                }
            }
            self.accepted.push(delivery.accepted_at);
        }
        queued
    }

    /// Completes the subscribes the engine answered, handing `send` what to send each
    /// connection, in order. Answers for subscribes that are gone (unsubscribed, the
    /// connection closed, superseded) are dropped.
    pub fn complete(&mut self, answers: Vec<Answered>, mut send: impl FnMut(Completed)) {
        for answered in answers {
            let key = (answered.conn, answered.stream);
            match self.waiting.get(&key) {
                Some(w) if w.ticket == answered.ticket => {}
                _ => continue,
            }
            let Some(waiting) = self.waiting.remove(&key) else {
                continue;
            };
            let (id, stream_key) = key;
            let stream = stream_key.as_stream();
            let channel = match &stream_key {
                StreamKey::Channel(c) => Arc::clone(c),
                StreamKey::User(_) => Arc::from(crate::push::channel::USER_CHANNEL),
            };
            let mut done = Completed {
                conn: id,
                channel,
                reply_id: waiting.reply_id,
                outcome: Err(EngineError::Unavailable(String::new())),
                recovered: None,
                frames: Vec::new(),
                recovered_count: 0,
                lost: false,
                undo: false,
            };
            match answered.answer {
                Err(error) => {
                    if let Some((_, saved)) = waiting.merge
                        && let Some(mark) = self.index.mark_mut(stream, id)
                    {
                        // Back to what it was; a fresh subscription is undone by the
                        // caller (it owns the session).
                        *mark = saved;
                    }
                    done.outcome = Err(error);
                    done.recovered = None;
                }
                Ok(answer) => {
                    let position = answer.position;
                    match waiting.merge {
                        Some((pending, saved)) => {
                            let mut mark = saved;
                            let merged = pending.complete(answer, &mut mark);
                            if let Some(slot) = self.index.mark_mut(stream, id) {
                                *slot = mark;
                            }
                            done.recovered = merged.recovered;
                            done.frames = merged.frames;
                            done.recovered_count = merged.recovered_count;
                            done.lost = merged.lost;
                        }
                        None => done.recovered = answer.recovered,
                    }
                    if !waiting.with_since {
                        done.recovered = None;
                    }
                    done.outcome = Ok(position);
                }
            }
            done.undo = waiting.fresh && done.outcome.is_err();
            send(done);
        }
    }

    /// The publish-accepted instants of the deliveries queued since the last call (for
    /// the delivery lag, once they are written).
    pub fn take_accepted(&mut self) -> std::vec::Drain<'_, Instant> {
        self.accepted.drain(..)
    }

    /// The connections of `user` on this worker.
    pub fn user_connections(&self, user: &str) -> Vec<ConnId> {
        self.index
            .subscribers(Stream::User(user))
            .iter()
            .map(|s| s.id)
            .collect()
    }

    /// The engine lost messages of `stream` up to `position` (a gap it could not
    /// refill). Every subscription that is not waiting gets [`Watermark::LOST`] (no
    /// live delivery until the client resubscribes with `since`); returns those
    /// connections, to be sent `position_lost`. A waiting subscribe's merge is told
    /// instead ([`Pending::lost`]), so its reply reports the loss if its answer does
    /// not cover it.
    pub fn position_lost(&mut self, stream: &StreamKey, position: Position) -> Vec<ConnId> {
        let mut told = Vec::new();
        for sub in self.index.subscribers_mut(stream.as_stream()) {
            if sub.mark.is_pending() {
                if let Some(Waiting {
                    merge: Some((pending, _)),
                    ..
                }) = self.waiting.get_mut(&(sub.id, stream.clone()))
                {
                    pending.lost(position.seq, position.epoch);
                }
                continue;
            }
            if !sub.mark.is_lost() {
                sub.mark = Watermark::LOST;
                told.push(sub.id);
            }
        }
        told
    }

    /// Channels with at least one subscriber on this worker.
    pub fn channel_count(&self) -> usize {
        self.index.channel_count()
    }

    /// Subscriptions on this worker (a connection on two channels counts twice).
    pub fn subscription_count(&self) -> usize {
        self.index.subscription_count()
    }

    /// Subscribes waiting for the engine's answer.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests;
