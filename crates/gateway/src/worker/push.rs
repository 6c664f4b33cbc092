//! The push half of a worker: authentication at the upgrade, client ops, and handing
//! publishes to the local subscribers. Same event loop, same rules: no locks on the
//! per-event path (subscriptions go through the worker's own
//! [`LocalFanout`](crate::fanout::local::LocalFanout)), and deliveries are written once
//! per connection per command batch.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::link::Delivery;
use super::{Slot, Worker, count_closed, live_slot};
use crate::conn::{CloseReason, Conn, ConnEvent, Message, UpgradeRequest};
use bytes::Bytes;

use crate::engine::position::Position;
use crate::engine::{Answered, Stream, StreamKey};
use crate::fanout::local::SubscribeError;
use crate::fanout::session::Session;
use crate::push::channel::ChannelGrant;
use crate::push::channel::USER_CHANNEL;
use crate::push::protocol::{
    ClientError, ClientOp, ErrorCode, InboundRateLimit, RateDecision, Reply, authorize_subscribe,
    encode_reply, parse_client_message,
};
use crate::token::ConnId;

impl Worker {
    /// The worker's millisecond clock (wrapping), for rate limits.
    pub(super) fn now_ms(&self, now: Instant) -> u32 {
        let since_start = now.saturating_duration_since(self.clock.instant(wheel::Tick(0)));
        since_start.as_millis() as u32
    }

    /// Answers an upgrade request: authenticate, then accept (subscribing the channels
    /// in the URL before any delivery can arrive) or refuse with the HTTP status.
    pub(super) fn upgrade(&mut self, id: ConnId, request: &UpgradeRequest, now: Instant) {
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let now_ms = self.now_ms(now);
        let cfg = &self.settings.conn;
        let Some(slot) = self.conns.get_mut(id.index as usize) else {
            return;
        };
        match self.push.auth.authenticate(request, unix_now) {
            Err(refusal) => {
                self.api_metrics.auth_failed(refusal.reason).increment(1);
                slot.conn.reject(
                    cfg,
                    now,
                    refusal.failure,
                    &refusal.message,
                    &mut self.events,
                );
            }
            Ok(granted) => {
                let jitter = fastrand::f64();
                slot.conn.accept(
                    cfg,
                    now,
                    &request.key,
                    granted.protocol,
                    jitter,
                    &mut self.events,
                );
                let anonymous = granted.user.is_none() && granted.initial_channels.is_empty();
                if anonymous && self.push.auth.dev_mode() {
                    return; // nothing to remember until it subscribes
                }
                let rate = InboundRateLimit::new(now_ms, &self.push.limits);
                let mut session = Box::new(Session::new(granted.user, granted.grant, rate));
                let user_since = granted
                    .since
                    .iter()
                    .find(|(c, _)| &**c == USER_CHANNEL)
                    .map(|(_, since)| *since);
                self.fanout.join(
                    id,
                    &mut session,
                    &granted.initial_channels,
                    &granted.since,
                    user_since,
                );
                slot.session = Some(session);
            }
        }
    }

    /// Handles one client message: rate limit, parse, subscribe/unsubscribe/ping, reply.
    pub(super) fn client_message(&mut self, id: ConnId, message: Message, now: Instant) {
        let now_ms = self.now_ms(now);
        let cfg = &self.settings.conn;
        let limits = &self.push.limits;
        let Some(Slot { conn, session, .. }) = self.conns.get_mut(id.index as usize) else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        // Only dev mode has session-less connections: anonymous, any channel.
        let session = session.get_or_insert_with(|| {
            let rate = InboundRateLimit::new(now_ms, limits);
            Box::new(Session::new(None, ChannelGrant::any(), rate))
        });
        let events = &mut self.events;
        let reply = |conn: &mut Conn, events: &mut Vec<ConnEvent>, reply: &Reply<'_>| {
            conn.send_owned(cfg, now, encode_reply(reply), events);
        };
        match session.rate.check(now_ms, limits) {
            RateDecision::Allow => {}
            RateDecision::Limited => {
                return reply(conn, events, &ClientError::rate_limited().reply());
            }
            RateDecision::Flood => {
                return conn.evict(cfg, now, CloseReason::PolicyViolation, 1008, events);
            }
        }
        let text = match std::str::from_utf8(&message.data) {
            Ok(text) if message.text => text,
            _ => return reply(conn, events, &ClientError::binary_message().reply()),
        };
        let request = match parse_client_message(text, limits) {
            Ok(request) => request,
            Err(error) => return reply(conn, events, &error.reply()),
        };
        match &request.op {
            ClientOp::Subscribe { channel, since } => {
                let user = session.user().cloned();
                let stream = if channel == USER_CHANNEL {
                    match &user {
                        Some(user) => Stream::User(user),
                        None => {
                            let error = ClientError::new(
                                ErrorCode::Forbidden,
                                "this connection has no user stream (its token has no sub)",
                                request.id,
                            );
                            return reply(conn, events, &error.reply());
                        }
                    }
                } else {
                    let already = session.is_subscribed(channel);
                    let count = session.subscription_count();
                    let grant = &session.grant;
                    if let Err(error) =
                        authorize_subscribe(grant, channel, already, count, limits, request.id)
                    {
                        return reply(conn, events, &error.reply());
                    }
                    Stream::Channel(channel)
                };
                // The reply waits for the engine's answer (`answered`).
                let reply_id = request.id.map(ToOwned::to_owned);
                return match self.fanout.subscribe(id, session, stream, *since, reply_id) {
                    Ok(()) => {}
                    Err(SubscribeError::Busy) => {
                        let error = ClientError::subscribe_pending(channel, request.id);
                        reply(conn, events, &error.reply());
                    }
                };
            }
            ClientOp::Unsubscribe { channel } => {
                if !self.fanout.unsubscribe(id, session, channel) {
                    let error = ClientError::not_subscribed(channel, request.id);
                    return reply(conn, events, &error.reply());
                }
            }
            ClientOp::Ping => {}
        }
        reply(conn, events, &request.ack());
    }

    /// Queues every delivery of `batch` for its local subscribers. The writes happen
    /// once per connection in [`Worker::flush_deliveries`], so a burst of publishes
    /// goes out in one `writev` per subscriber.
    pub(super) fn deliver(&mut self, batch: &[Delivery], now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        let Worker {
            fanout,
            conns,
            settings,
            events,
            metrics,
            dirty,
            ..
        } = self;
        let queued = fanout.deliver(batch, |id, frame| {
            let Some(slot) = live_slot(conns, id) else {
                return false;
            };
            let queued = slot.conn.send(&settings.conn, now, frame, events);
            slot.mark_dirty(id, dirty);
            // `send` emits nothing but a slow consumer's close: count it now.
            for event in events.drain(..) {
                match event {
                    ConnEvent::Closed(reason) => count_closed(metrics, reason),
                    other => debug_assert!(false, "Conn::send emitted {other:?}"),
                }
            }
            queued
        });
        metrics.deliveries.increment(queued);
    }

    /// Tells every subscriber of `stream` whose position the engine lost
    /// `position_lost` ([`LocalFanout::position_lost`](crate::fanout::local::LocalFanout::position_lost));
    /// written with the batch's in [`Worker::flush_deliveries`].
    pub(super) fn position_lost(&mut self, stream: &StreamKey, position: Position, now: Instant) {
        let channel = match stream {
            StreamKey::Channel(c) => &**c,
            StreamKey::User(_) => USER_CHANNEL,
        };
        let frame = Bytes::from(encode_reply(&Reply::PositionLost { channel, position }));
        for id in self.fanout.position_lost(stream, position) {
            let Some(slot) = live_slot(&mut self.conns, id).filter(|s| s.conn.is_open()) else {
                continue;
            };
            slot.conn
                .send(&self.settings.conn, now, frame.clone(), &mut self.events);
            slot.mark_dirty(id, &mut self.dirty);
            for event in self.events.drain(..) {
                if let ConnEvent::Closed(reason) = event {
                    count_closed(&self.metrics, reason);
                }
            }
        }
    }

    /// Sends each answered subscribe its reply, recovered frames and buffered live
    /// frames, in that order (see [`LocalFanout::complete`](crate::fanout::local::LocalFanout::complete));
    /// the writes happen with the batch's in [`Worker::flush_deliveries`].
    pub(super) fn answered(&mut self, answers: Vec<Answered>, now: Instant) {
        let mut undo = Vec::new();
        let Worker {
            fanout,
            conns,
            settings,
            events,
            metrics,
            dirty,
            ..
        } = self;
        fanout.complete(answers, |done| {
            let Some(slot) = live_slot(conns, done.conn).filter(|s| s.conn.is_open()) else {
                return;
            };
            let cfg = &settings.conn;
            let frame = match &done.outcome {
                Ok(position) => encode_reply(&Reply::Subscribed {
                    channel: &done.channel,
                    id: done.reply_id.as_deref(),
                    position: Some(*position),
                    recovered: done.recovered,
                }),
                Err(error) => {
                    let error = ClientError::engine_unavailable(error, done.reply_id.as_deref());
                    encode_reply(&error.reply())
                }
            };
            slot.conn.send_owned(cfg, now, frame, events);
            let mut sent = 0;
            for frame in done.frames {
                if slot.conn.send(cfg, now, frame, events) {
                    sent += 1;
                }
            }
            if done.lost
                && let Ok(position) = done.outcome
            {
                let lost = Reply::PositionLost {
                    channel: &done.channel,
                    position,
                };
                slot.conn.send_owned(cfg, now, encode_reply(&lost), events);
            }
            if let Some(recovered) = done.recovered {
                metrics.recovery(recovered, done.recovered_count);
            }
            metrics.deliveries.increment(sent);
            if done.undo {
                undo.push((done.conn, done.channel));
            }
            slot.mark_dirty(done.conn, dirty);
            // Sends emit nothing but a slow consumer's close: count it now.
            for event in events.drain(..) {
                match event {
                    ConnEvent::Closed(reason) => count_closed(metrics, reason),
                    other => debug_assert!(false, "Conn::send emitted {other:?}"),
                }
            }
        });
        for (id, channel) in undo {
            if let Some(Slot {
                session: Some(session),
                generation,
                ..
            }) = self.conns.get_mut(id.index as usize)
                && *generation == id.generation
            {
                self.fanout.unsubscribe(id, session, &channel);
            }
        }
    }

    /// Writes out every connection that got deliveries in this batch, once each.
    pub(super) fn flush_deliveries(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            match self.conns.get_mut(id.index as usize) {
                Some(slot) if slot.generation == id.generation => slot.dirty = false,
                _ => continue,
            }
            self.settle(id, now);
        }
        self.dirty = dirty;
        let written = Instant::now();
        for accepted in self.fanout.take_accepted() {
            let lag = written.saturating_duration_since(accepted);
            self.metrics.delivery_lag.record(lag.as_secs_f64());
        }
    }
}
