//! Each worker's subscription index: channel → subscribers and user → connections, each
//! subscriber with the last position delivered to it (its [`Watermark`]).
//!
//! A pure data structure, owned by one worker: no locks, no IO. A name is stored once
//! per worker (an `Arc<str>` shared by the index, every session on it, and the requests
//! to the engine).
//!
//! Invariant (kept by [`LocalFanout`](super::local::LocalFanout), the index's only
//! user): a connection appears under channel `c` exactly when its session lists `c`,
//! and under user `u` exactly when its session's user is `u`; once each.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::Stream;
use crate::engine::recovery::Watermark;
use crate::token::ConnId;

/// One subscription in the index: 24 bytes, walked once per delivery.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// The connection.
    pub id: ConnId,
    /// The last position delivered on this subscription, or
    /// [`Watermark::PENDING`] while its subscribe awaits the engine's answer.
    pub mark: Watermark,
}

/// This worker's stream → subscribers index.
#[derive(Debug, Default)]
pub struct Subscribers {
    channels: HashMap<Arc<str>, Vec<Subscriber>>,
    users: HashMap<Arc<str>, Vec<Subscriber>>,
    subscriptions: usize,
}

impl Subscribers {
    fn map<'s>(
        &mut self,
        stream: Stream<'s>,
    ) -> (&mut HashMap<Arc<str>, Vec<Subscriber>>, &'s str) {
        match stream {
            Stream::Channel(c) => (&mut self.channels, c),
            Stream::User(u) => (&mut self.users, u),
        }
    }

    /// Adds `id` to `stream` with `mark`; returns the worker's shared copy of the name.
    /// The caller has checked that `id` is not on `stream` yet.
    pub fn add(&mut self, stream: Stream<'_>, id: ConnId, mark: Watermark) -> Arc<str> {
        if matches!(stream, Stream::Channel(_)) {
            self.subscriptions += 1;
        }
        let (map, name) = self.map(stream);
        let entry = Subscriber { id, mark };
        if let Some((shared, list)) = map.get_key_value(name) {
            let shared = Arc::clone(shared);
            debug_assert!(
                !list.iter().any(|s| s.id == id),
                "{id:?} subscribed twice to {name}"
            );
            if let Some(list) = map.get_mut(name) {
                list.push(entry);
            }
            return shared;
        }
        let shared: Arc<str> = Arc::from(name);
        map.insert(Arc::clone(&shared), vec![entry]);
        shared
    }

    /// Removes `id` from `stream`; forgets the name when nobody is left. False if `id`
    /// was not on it.
    pub fn remove(&mut self, stream: Stream<'_>, id: ConnId) -> bool {
        let is_channel = matches!(stream, Stream::Channel(_));
        let (map, name) = self.map(stream);
        let Some(list) = map.get_mut(name) else {
            return false;
        };
        let Some(pos) = list.iter().position(|s| s.id == id) else {
            return false;
        };
        list.swap_remove(pos);
        if list.is_empty() {
            map.remove(name);
        } else if list.capacity() > 4 * list.len() + 16 {
            list.shrink_to_fit();
        }
        if is_channel {
            self.subscriptions -= 1;
        }
        true
    }

    /// The subscribers of `stream`, to deliver to (marks are updated in place).
    pub fn subscribers_mut(&mut self, stream: Stream<'_>) -> &mut [Subscriber] {
        let (map, name) = self.map(stream);
        map.get_mut(name).map_or(&mut [], Vec::as_mut_slice)
    }

    /// The subscribers of `stream`.
    pub fn subscribers(&self, stream: Stream<'_>) -> &[Subscriber] {
        let map = match stream {
            Stream::Channel(_) => &self.channels,
            Stream::User(_) => &self.users,
        };
        let name = match stream {
            Stream::Channel(c) | Stream::User(c) => c,
        };
        map.get(name).map_or(&[], Vec::as_slice)
    }

    /// The mark of `id` on `stream`, if subscribed (a linear search of the stream's
    /// subscribers: for the rare per-connection operations, never per delivery).
    pub fn mark_mut(&mut self, stream: Stream<'_>, id: ConnId) -> Option<&mut Watermark> {
        self.subscribers_mut(stream)
            .iter_mut()
            .find(|s| s.id == id)
            .map(|s| &mut s.mark)
    }

    /// Channels with at least one subscriber on this worker.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Channel subscriptions on this worker (a connection on two channels counts twice;
    /// user streams do not count).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::position::{Epoch, Position};

    fn id(i: u32) -> ConnId {
        ConnId {
            index: i,
            generation: i + 100,
        }
    }

    fn ids(s: &Subscribers, stream: Stream<'_>) -> Vec<ConnId> {
        s.subscribers(stream).iter().map(|s| s.id).collect()
    }

    #[test]
    fn subscribe_shares_names_and_unsubscribe_forgets_empty_channels() {
        let mut s = Subscribers::default();
        let scores = Stream::Channel("scores");
        let a = s.add(scores, id(1), Watermark::default());
        let b = s.add(scores, id(2), Watermark::default());
        assert!(Arc::ptr_eq(&a, &b));
        s.add(Stream::Channel("news"), id(1), Watermark::default());
        assert_eq!(ids(&s, scores), [id(1), id(2)]);
        assert_eq!((s.channel_count(), s.subscription_count()), (2, 3));
        assert!(s.remove(scores, id(1)));
        assert!(!s.remove(scores, id(1)));
        assert_eq!(ids(&s, scores), [id(2)]);
        assert!(s.remove(scores, id(2)));
        assert!(ids(&s, scores).is_empty());
        assert_eq!((s.channel_count(), s.subscription_count()), (1, 1));
    }

    #[test]
    fn users_map_to_all_their_connections_and_marks_move_in_place() {
        let mut s = Subscribers::default();
        let u = Stream::User("42");
        s.add(u, id(1), Watermark::default());
        s.add(u, id(2), Watermark::PENDING);
        s.add(Stream::User("7"), id(3), Watermark::default());
        assert_eq!(ids(&s, u), [id(1), id(2)]);
        assert_eq!(
            s.subscription_count(),
            0,
            "user streams are not subscriptions"
        );
        let p = Position {
            seq: 9,
            epoch: Epoch::parse("AAAAAAAA").unwrap(),
        };
        *s.mark_mut(u, id(2)).unwrap() = Watermark::at(p);
        assert_eq!(s.subscribers(u)[1].mark, Watermark::at(p));
        s.remove(u, id(1));
        assert_eq!(ids(&s, u), [id(2)]);
        s.remove(u, id(2));
        assert!(ids(&s, u).is_empty());
        assert_eq!(ids(&s, Stream::User("7")), [id(3)]);
        assert!(s.mark_mut(u, id(2)).is_none());
    }

    #[test]
    fn an_index_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Subscriber>(), 24);
    }
}
