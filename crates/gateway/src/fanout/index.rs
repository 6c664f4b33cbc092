//! Each worker's subscription index: channel → connections and user → connections.
//!
//! A pure data structure, owned by one worker: no locks, no IO. A channel name is stored
//! once per worker (an `Arc<str>` shared by the index and every session on it).
//!
//! Invariant (kept by [`LocalFanout`](super::local::LocalFanout), the index's only
//! user): a connection appears under channel `c` exactly when its session lists `c`,
//! and under user `u` exactly when its session's user is `u`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::token::ConnId;

/// This worker's channel → connections and user → connections index.
#[derive(Debug, Default)]
pub struct Subscribers {
    channels: HashMap<Arc<str>, Vec<ConnId>>,
    users: HashMap<Box<str>, Vec<ConnId>>,
    subscriptions: usize,
}

impl Subscribers {
    /// Adds `id` to `channel`; returns the worker's shared copy of the name.
    /// The caller has checked that `id` is not on `channel` yet.
    pub fn subscribe(&mut self, channel: &str, id: ConnId) -> Arc<str> {
        self.subscriptions += 1;
        if let Some(ids) = self.channels.get_mut(channel) {
            debug_assert!(!ids.contains(&id), "{id:?} subscribed twice to {channel}");
            ids.push(id);
            if let Some((name, _)) = self.channels.get_key_value(channel) {
                return Arc::clone(name);
            }
        }
        let name: Arc<str> = Arc::from(channel);
        self.channels.insert(Arc::clone(&name), vec![id]);
        name
    }

    /// Removes `id` from `channel`; forgets the channel when it has no subscriber left.
    /// Returns false if `id` was not on it.
    pub fn unsubscribe(&mut self, channel: &str, id: ConnId) -> bool {
        let Some(ids) = self.channels.get_mut(channel) else {
            return false;
        };
        let Some(pos) = ids.iter().position(|x| *x == id) else {
            return false;
        };
        ids.swap_remove(pos);
        if ids.is_empty() {
            self.channels.remove(channel);
        } else if ids.capacity() > 4 * ids.len() + 16 {
            ids.shrink_to_fit();
        }
        self.subscriptions -= 1;
        true
    }

    /// Registers `id` as a connection of `user`.
    pub fn add_user(&mut self, user: &str, id: ConnId) {
        self.users.entry(Box::from(user)).or_default().push(id);
    }

    /// Unregisters `id` from `user`.
    pub fn remove_user(&mut self, user: &str, id: ConnId) {
        let Some(ids) = self.users.get_mut(user) else {
            return;
        };
        if let Some(pos) = ids.iter().position(|x| *x == id) {
            ids.swap_remove(pos);
        }
        if ids.is_empty() {
            self.users.remove(user);
        }
    }

    /// The connections on `channel`.
    pub fn channel(&self, channel: &str) -> &[ConnId] {
        self.channels.get(channel).map_or(&[], Vec::as_slice)
    }

    /// The connections of `user`.
    pub fn user(&self, user: &str) -> &[ConnId] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// Channels with at least one subscriber on this worker.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Subscriptions on this worker (a connection on two channels counts twice).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> ConnId {
        ConnId {
            index: i,
            generation: i + 100,
        }
    }

    #[test]
    fn subscribe_shares_names_and_unsubscribe_forgets_empty_channels() {
        let mut s = Subscribers::default();
        let a = s.subscribe("scores", id(1));
        let b = s.subscribe("scores", id(2));
        assert!(Arc::ptr_eq(&a, &b));
        s.subscribe("news", id(1));
        assert_eq!(s.channel("scores"), &[id(1), id(2)]);
        assert_eq!((s.channel_count(), s.subscription_count()), (2, 3));
        assert!(s.unsubscribe("scores", id(1)));
        assert!(!s.unsubscribe("scores", id(1)));
        assert_eq!(s.channel("scores"), &[id(2)]);
        assert!(s.unsubscribe("scores", id(2)));
        assert_eq!(s.channel("scores"), &[] as &[ConnId]);
        assert_eq!((s.channel_count(), s.subscription_count()), (1, 1));
    }

    #[test]
    fn users_map_to_all_their_connections() {
        let mut s = Subscribers::default();
        s.add_user("42", id(1));
        s.add_user("42", id(2));
        s.add_user("7", id(3));
        assert_eq!(s.user("42"), &[id(1), id(2)]);
        s.remove_user("42", id(1));
        assert_eq!(s.user("42"), &[id(2)]);
        s.remove_user("42", id(2));
        assert!(s.user("42").is_empty());
        assert_eq!(s.user("7"), &[id(3)]);
    }
}
