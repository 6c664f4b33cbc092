//! The push half of a worker: authentication at the upgrade, client ops, and the
//! delivery of publishes to local subscribers. Same event loop, same rules: no locks
//! on the per-event path (the subscriber counts are touched only on subscribe and
//! unsubscribe), and deliveries are written once per connection per command batch.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Slot, Worker};
use crate::conn::{CloseReason, Conn, ConnEvent, Message, UpgradeRequest};
use crate::hub::{Delivery, DeliveryTarget};
use crate::push::channel::ChannelGrant;
use crate::push::protocol::{
    ClientError, ClientOp, InboundRateLimit, RateDecision, Reply, authorize_subscribe,
    encode_reply, parse_client_message,
};
use crate::session::Session;
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
                let mut session = Box::new(Session {
                    user: granted.user,
                    grant: granted.grant,
                    channels: Vec::with_capacity(granted.initial_channels.len()),
                    rate: InboundRateLimit::new(now_ms, &self.push.limits),
                });
                for channel in &granted.initial_channels {
                    if !session.is_subscribed(channel) {
                        session
                            .channels
                            .push(self.subscribers.subscribe(channel, id));
                        self.push.counts.add_channel(channel);
                    }
                }
                if let Some(user) = &session.user {
                    self.subscribers.add_user(user, id);
                    self.push.counts.add_user(user);
                }
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
            Box::new(Session {
                user: None,
                grant: ChannelGrant::any(),
                channels: Vec::new(),
                rate: InboundRateLimit::new(now_ms, limits),
            })
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
            ClientOp::Subscribe { channel } => {
                let already = session.is_subscribed(channel);
                let count = session.channels.len();
                let grant = &session.grant;
                if let Err(error) =
                    authorize_subscribe(grant, channel, already, count, limits, request.id)
                {
                    return reply(conn, events, &error.reply());
                }
                if !already {
                    session
                        .channels
                        .push(self.subscribers.subscribe(channel, id));
                    self.push.counts.add_channel(channel);
                }
            }
            ClientOp::Unsubscribe { channel } => {
                let Some(pos) = session.channels.iter().position(|c| **c == **channel) else {
                    let error = ClientError::not_subscribed(channel, request.id);
                    return reply(conn, events, &error.reply());
                };
                session.channels.remove(pos);
                self.subscribers.unsubscribe(channel, id);
                self.push.counts.remove_channel(channel);
            }
            ClientOp::Ping => {}
        }
        reply(conn, events, &request.ack());
    }

    /// Removes a departing connection from the indexes and counts.
    pub(super) fn forget_session(&mut self, id: ConnId, session: &Session) {
        for channel in &session.channels {
            self.subscribers.unsubscribe(channel, id);
            self.push.counts.remove_channel(channel);
        }
        if let Some(user) = &session.user {
            self.subscribers.remove_user(user, id);
            self.push.counts.remove_user(user);
        }
    }

    /// Queues every delivery of `batch` for its local subscribers. The writes happen
    /// once per connection in [`Worker::flush_deliveries`], so a burst of publishes
    /// goes out in one `writev` per subscriber.
    pub(super) fn deliver(&mut self, batch: &[Delivery], now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        for delivery in batch {
            let ids = match &delivery.target {
                DeliveryTarget::Channel(channel) => self.subscribers.channel(channel),
                DeliveryTarget::User(user) => self.subscribers.user(user),
            };
            if ids.is_empty() {
                continue;
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.extend_from_slice(ids);
            // One worker-local reference count for all local subscribers, so workers
            // never contend on the shared frame's counter once per subscriber.
            let frame = Bytes::from_owner(delivery.frame.clone());
            let mut queued = 0;
            for &id in &scratch {
                let Some(slot) = self.conns.get_mut(id.index as usize) else {
                    continue;
                };
                if slot.generation != id.generation {
                    continue;
                }
                if slot
                    .conn
                    .send(&self.settings.conn, now, frame.clone(), &mut self.events)
                {
                    queued += 1;
                }
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(id);
                }
                if !self.events.is_empty() {
                    // A slow consumer was just closed: count it now.
                    self.handle_events(id, now);
                }
            }
            self.scratch = scratch;
            self.metrics.deliveries.increment(queued);
            self.delivered_at.push(delivery.accepted_at);
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
        for accepted in self.delivered_at.drain(..) {
            let lag = written.saturating_duration_since(accepted);
            self.metrics.delivery_lag.record(lag.as_secs_f64());
        }
    }
}
