//! One worker's side of fan-out: its subscription index, the sessions' subscriptions,
//! the changes it reports to the hub, and the queueing of each delivery to the local
//! subscribers.
//!
//! [`LocalFanout`] is the only code that changes a session's user or channels, the
//! index, or the hub's counts, and it changes all three together, so they never
//! disagree:
//!
//! * a connection is in the index under channel `c` exactly when its session lists
//!   `c`, and under user `u` exactly when its session's user is `u`;
//! * for each of those, the hub has been sent one +1, and one −1 once it ended.
//!
//! Delivery is split where IO begins: [`LocalFanout::deliver`] finds the subscribers of
//! each delivery and hands the shared frame to the worker's `queue` callback (which
//! queues it on the connection's state machine); the worker then writes each
//! connection it queued to once per batch.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::counts::CountSender;
use super::index::Subscribers;
use super::session::Session;
use crate::token::ConnId;
use crate::worker::link::{Delivery, DeliveryTarget};

/// One worker's fan-out state. See the module docs.
#[derive(Debug)]
pub struct LocalFanout {
    index: Subscribers,
    counts: CountSender,
    /// Publish-accepted instants of the deliveries queued since the last
    /// [`LocalFanout::take_accepted`] (reused).
    accepted: Vec<Instant>,
}

impl LocalFanout {
    /// An empty index whose changes are reported to `counts`.
    pub fn new(counts: CountSender) -> LocalFanout {
        LocalFanout {
            index: Subscribers::default(),
            counts,
            accepted: Vec::new(),
        }
    }

    /// Registers a new session of connection `id`: its user, then `channels` (repeats
    /// are subscribed once), before any delivery can reach it.
    pub fn join(&mut self, id: ConnId, session: &mut Session, channels: &[Box<str>]) {
        if let Some(user) = &session.user {
            self.index.add_user(user, id);
            self.counts.add_user(Arc::clone(user));
        }
        for channel in channels {
            self.subscribe(id, session, channel);
        }
    }

    /// Subscribes `id` to `channel`; false (and nothing changes) if it already is.
    pub fn subscribe(&mut self, id: ConnId, session: &mut Session, channel: &str) -> bool {
        if session.is_subscribed(channel) {
            return false;
        }
        let name = self.index.subscribe(channel, id);
        self.counts.add_channel(Arc::clone(&name));
        session.channels.push(name);
        true
    }

    /// Unsubscribes `id` from `channel`; false (and nothing changes) if it was not
    /// subscribed.
    pub fn unsubscribe(&mut self, id: ConnId, session: &mut Session, channel: &str) -> bool {
        let Some(pos) = session.channels.iter().position(|c| **c == *channel) else {
            return false;
        };
        let name = session.channels.remove(pos);
        self.index.unsubscribe(&name, id);
        self.counts.remove_channel(name);
        true
    }

    /// Forgets connection `id`, which is going: every subscription and its user.
    pub fn leave(&mut self, id: ConnId, session: Session) {
        let Session { user, channels, .. } = session;
        for channel in channels {
            self.index.unsubscribe(&channel, id);
            self.counts.remove_channel(channel);
        }
        if let Some(user) = user {
            self.index.remove_user(&user, id);
            self.counts.remove_user(user);
        }
    }

    /// Hands each delivery of `batch`, in order, to `queue` once per local subscriber
    /// (`queue(id, frame)` returns whether connection `id` took it). Returns how many
    /// took one. The frames are shared: one worker-local reference count per delivery
    /// for all its local subscribers, so workers never contend on the shared frame's
    /// counter once per subscriber.
    pub fn deliver(
        &mut self,
        batch: &[Delivery],
        mut queue: impl FnMut(ConnId, Bytes) -> bool,
    ) -> u64 {
        let mut queued = 0;
        for delivery in batch {
            let ids = match &delivery.target {
                DeliveryTarget::Channel(channel) => self.index.channel(channel),
                DeliveryTarget::User(user) => self.index.user(user),
            };
            if ids.is_empty() {
                continue;
            }
            let frame = Bytes::from_owner(delivery.frame.clone());
            for &id in ids {
                if queue(id, frame.clone()) {
                    queued += 1;
                }
            }
            self.accepted.push(delivery.accepted_at);
        }
        queued
    }

    /// The publish-accepted instants of the deliveries queued since the last call (for
    /// the delivery lag, once they are written).
    pub fn take_accepted(&mut self) -> std::vec::Drain<'_, Instant> {
        self.accepted.drain(..)
    }

    /// Channels with at least one subscriber on this worker.
    pub fn channel_count(&self) -> usize {
        self.index.channel_count()
    }

    /// Subscriptions on this worker (a connection on two channels counts twice).
    pub fn subscription_count(&self) -> usize {
        self.index.subscription_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::counts::subscriber_counts;
    use crate::push::PushLimits;
    use crate::push::channel::ChannelGrant;
    use crate::push::protocol::InboundRateLimit;

    fn id(i: u32) -> ConnId {
        ConnId {
            index: i,
            generation: 7,
        }
    }

    fn session(user: Option<&str>) -> Box<Session> {
        let rate = InboundRateLimit::new(0, &PushLimits::default());
        Box::new(Session::new(user.map(Box::from), ChannelGrant::any(), rate))
    }

    fn delivery(target: DeliveryTarget) -> Delivery {
        Delivery {
            target,
            frame: Bytes::from_static(b"frame"),
            accepted_at: Instant::now(),
        }
    }

    #[test]
    fn index_session_and_counts_move_together() {
        let (sender, mut counts) = subscriber_counts();
        let mut fanout = LocalFanout::new(sender);
        let scores = DeliveryTarget::Channel("scores".into());
        let user = DeliveryTarget::User("42".into());

        let mut a = session(Some("42"));
        fanout.join(id(1), &mut a, &["scores".into(), "scores".into()]);
        assert_eq!(a.subscription_count(), 1, "a repeated channel once");
        let mut b = session(None);
        fanout.join(id(2), &mut b, &[]);
        assert!(fanout.subscribe(id(2), &mut b, "scores"));
        assert!(
            !fanout.subscribe(id(2), &mut b, "scores"),
            "already subscribed"
        );
        assert!(fanout.subscribe(id(2), &mut b, "news"));
        counts.fold();
        assert_eq!((counts.of(&scores), counts.of(&user)), (2, 1));
        assert_eq!(
            (fanout.channel_count(), fanout.subscription_count()),
            (2, 3)
        );

        assert!(fanout.unsubscribe(id(2), &mut b, "scores"));
        assert!(
            !fanout.unsubscribe(id(2), &mut b, "scores"),
            "not subscribed"
        );
        assert!(!b.is_subscribed("scores") && b.is_subscribed("news"));
        fanout.leave(id(1), *a);
        counts.fold();
        assert_eq!((counts.of(&scores), counts.of(&user)), (0, 0));
        assert_eq!(
            (fanout.channel_count(), fanout.subscription_count()),
            (1, 1)
        );
        fanout.leave(id(2), *b);
        assert_eq!(
            (fanout.channel_count(), fanout.subscription_count()),
            (0, 0)
        );
    }

    #[test]
    fn deliver_hands_each_frame_to_every_local_subscriber_in_order() {
        let (sender, _counts) = subscriber_counts();
        let mut fanout = LocalFanout::new(sender);
        let (mut a, mut b) = (session(Some("42")), session(None));
        fanout.join(id(1), &mut a, &["scores".into()]);
        fanout.join(id(2), &mut b, &["scores".into()]);
        let batch = [
            delivery(DeliveryTarget::Channel("scores".into())),
            delivery(DeliveryTarget::Channel("nobody".into())),
            delivery(DeliveryTarget::User("42".into())),
        ];
        let mut seen = Vec::new();
        // Connection 2 refuses (say it was just closed as a slow consumer).
        let queued = fanout.deliver(&batch, |id, frame| {
            assert_eq!(&frame[..], b"frame");
            seen.push(id.index);
            id.index != 2
        });
        assert_eq!(seen, [1, 2, 1]);
        assert_eq!(queued, 2);
        assert_eq!(
            fanout.take_accepted().count(),
            2,
            "deliveries with subscribers"
        );
        assert_eq!(fanout.take_accepted().count(), 0);
    }
}
