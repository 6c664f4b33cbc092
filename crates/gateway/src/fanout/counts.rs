//! Subscriber counts for the publish API, kept with no lock on the workers' side.
//!
//! A publish reply says how many local subscribers each message reached, and the hub
//! wakes no worker for a message that nobody here subscribed to. Each worker knows its
//! own subscribers (its index); only the hub needs the sum. So a worker does not update
//! a shared map: it sends each change (+1 or −1 on a channel or a user) to the hub over
//! a channel ([`CountSender`]), and the hub folds the changes into its own map
//! ([`SubscriberCounts`]) right before it counts, under the lock it already holds to
//! number a publish. The admin thread also folds them every [`FOLD_INTERVAL`], so
//! changes do not pile up while nobody publishes.
//!
//! # No lock on the worker
//!
//! A send is one push onto std's unbounded (list) channel: atomics, no mutex. The
//! channel's only lock guards blocked receivers, and the hub never blocks: it only
//! `try_recv`s, so no worker ever takes that lock either.
//!
//! # Exact counts
//!
//! A worker sends the change before it queues the subscribe's acknowledgement (or, for
//! a connection that goes, before its socket is dropped), and the hub folds every
//! change sent so far before it counts. A publish made after a client saw its ack
//! therefore counts that client, just as the process-wide mutex this replaces did.
//! Counts of different workers are folded in no particular order; a count is never
//! negative because a worker sends a −1 only after its +1.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use crate::worker::link::DeliveryTarget;

/// How often the admin thread folds pending changes when nobody publishes: bounds
/// what a subscribe storm leaves queued to one second's worth. Each fold wakes the
/// admin thread (three `epoll_wait`s of its runtime); at 100 ms that was 0.08 % of a
/// core in an idle gateway, 7 % of its whole CPU at 20 s pings (docs/benchmarks.md).
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Who a change is about.
#[derive(Debug)]
enum Key {
    Channel(Arc<str>),
    User(Arc<str>),
}

/// One subscriber more (`true`) or fewer (`false`) on a key.
#[derive(Debug)]
struct Change(Key, bool);

/// A worker's end: reports its subscribes and unsubscribes to the hub. Cheap to clone;
/// sends never block and never lock.
#[derive(Clone, Debug)]
pub struct CountSender {
    changes: Sender<Change>,
}

impl CountSender {
    /// One more subscriber on `channel`.
    pub fn add_channel(&self, channel: Arc<str>) {
        self.send(Change(Key::Channel(channel), true));
    }

    /// One subscriber fewer on `channel`.
    pub fn remove_channel(&self, channel: Arc<str>) {
        self.send(Change(Key::Channel(channel), false));
    }

    /// One more connection of `user`.
    pub fn add_user(&self, user: Arc<str>) {
        self.send(Change(Key::User(user), true));
    }

    /// One connection fewer of `user`.
    pub fn remove_user(&self, user: Arc<str>) {
        self.send(Change(Key::User(user), false));
    }

    fn send(&self, change: Change) {
        // The hub is gone only when the process is shutting down: nobody will ask.
        let _ = self.changes.send(change);
    }
}

/// The hub's end: live subscriber counts across all workers of this process, as of the
/// last [`SubscriberCounts::fold`].
#[derive(Debug)]
pub struct SubscriberCounts {
    changes: Receiver<Change>,
    channels: HashMap<Arc<str>, u64>,
    users: HashMap<Arc<str>, u64>,
}

/// A new pair: one [`CountSender`] to clone into every worker, the counts for the hub.
pub fn subscriber_counts() -> (CountSender, SubscriberCounts) {
    let (changes, receiver) = mpsc::channel();
    let counts = SubscriberCounts {
        changes: receiver,
        channels: HashMap::new(),
        users: HashMap::new(),
    };
    (CountSender { changes }, counts)
}

impl SubscriberCounts {
    /// Applies every change sent so far.
    pub fn fold(&mut self) {
        while let Ok(Change(key, added)) = self.changes.try_recv() {
            let (map, name) = match key {
                Key::Channel(name) => (&mut self.channels, name),
                Key::User(name) => (&mut self.users, name),
            };
            if added {
                *map.entry(name).or_insert(0) += 1;
            } else if let Some(n) = map.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&name);
                }
            } else {
                debug_assert!(false, "{name}: a -1 without its +1");
            }
        }
    }

    /// Subscribers of `target` as of the last fold.
    pub fn of(&self, target: &DeliveryTarget) -> u64 {
        let (map, name) = match target {
            DeliveryTarget::Channel(c) => (&self.channels, c),
            DeliveryTarget::User(u) => (&self.users, u),
        };
        map.get(&**name).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> DeliveryTarget {
        DeliveryTarget::Channel(name.into())
    }

    #[test]
    fn changes_from_several_workers_add_up_once_folded() {
        let (a, mut counts) = subscriber_counts();
        let b = a.clone();
        let scores: Arc<str> = Arc::from("scores");
        a.add_channel(Arc::clone(&scores));
        b.add_channel(Arc::from("scores"));
        b.add_user(Arc::from("42"));
        assert_eq!(counts.of(&channel("scores")), 0, "nothing until folded");
        counts.fold();
        assert_eq!(counts.of(&channel("scores")), 2);
        assert_eq!(counts.of(&DeliveryTarget::User("42".into())), 1);
        assert_eq!(counts.of(&channel("news")), 0);

        a.remove_channel(scores);
        b.remove_user(Arc::from("42"));
        counts.fold();
        assert_eq!(counts.of(&channel("scores")), 1);
        assert_eq!(counts.of(&DeliveryTarget::User("42".into())), 0);
        b.remove_channel(Arc::from("scores"));
        counts.fold();
        assert_eq!(counts.of(&channel("scores")), 0);
        assert!(
            counts.channels.is_empty() && counts.users.is_empty(),
            "no leftovers"
        );
    }

    #[test]
    fn a_send_after_the_hub_is_gone_is_harmless() {
        let (sender, counts) = subscriber_counts();
        drop(counts);
        sender.add_channel(Arc::from("scores"));
    }
}
