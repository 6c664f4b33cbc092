//! One connection's push session: who it is, what it may subscribe to, what it is
//! subscribed to, and its inbound rate limit.
//!
//! A [`Session`] is boxed into a connection's slot only when it is needed — when the
//! connection has a user id, a subscription, or has sent a message — so the idle
//! anonymous connections of a keepalive benchmark carry nothing but a `None`. Its user
//! and channels change only through [`LocalFanout`](super::local::LocalFanout), which
//! keeps them in step with the worker's index and what the engine counts.

use std::sync::Arc;

use crate::push::channel::ChannelGrant;
use crate::push::protocol::InboundRateLimit;

/// What the push layer knows about one connection.
#[derive(Debug)]
pub struct Session {
    /// The token's `sub` (or the dev-mode `?user=`): per-user deliveries come here.
    pub(super) user: Option<Arc<str>>,
    /// Channels subscribed to, in subscription order (the worker's shared names).
    pub(super) channels: Vec<Arc<str>>,
    /// Channel patterns the connection may subscribe to.
    pub grant: ChannelGrant,
    /// Inbound message rate limit.
    pub rate: InboundRateLimit,
}

impl Session {
    /// A session subscribed to nothing yet (see [`LocalFanout::join`](super::local::LocalFanout::join)).
    pub fn new(user: Option<Box<str>>, grant: ChannelGrant, rate: InboundRateLimit) -> Session {
        Session {
            user: user.map(Arc::from),
            channels: Vec::new(),
            grant,
            rate,
        }
    }

    /// True if the session is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| &**c == channel)
    }

    /// The connection's user, if it has one.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// How many channels the session is subscribed to.
    pub fn subscription_count(&self) -> usize {
        self.channels.len()
    }
}
