//! Cross-worker fan-out: how a publish from the admin thread reaches every worker.
//!
//! A publish is encoded into **one** WebSocket frame ([`Bytes`], reference-counted) and
//! handed to every worker as an [`Arc`]'d batch through its command channel plus its
//! `mio::Waker`; each worker looks the target up in its own subscription index and queues
//! the same frame for each local subscriber. Nobody copies the payload per subscriber.
//!
//! # Ordering
//!
//! [`Hub::publish`] takes one lock while it allocates `seq` numbers and sends the batch to
//! every worker, so batches enter every worker's queue in `seq` order; each worker handles
//! its queue in order and each connection's output queue is FIFO. Hence on every channel
//! every subscriber sees strictly increasing `seq` in publish order.
//!
//! # Subscriber counts
//!
//! Workers keep [`SubscriberCounts`] up to date on subscribe/unsubscribe (rare events, so
//! a mutex is fine there); the publish API reads it to answer "how many local
//! subscribers". The hot paths — keepalive and the delivery loop — never touch it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::value::RawValue;

use crate::push::protocol::{encode_delivery, encode_user_delivery};
use crate::push::publish::{SeqAllocator, Target};
use crate::worker::link::{Command, Delivery, DeliveryTarget, WorkerLink};

/// Live subscriber counts across all workers of this process.
#[derive(Debug, Default)]
pub struct SubscriberCounts {
    channels: Mutex<HashMap<Box<str>, u64>>,
    users: Mutex<HashMap<Box<str>, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is one statement.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn add(map: &Mutex<HashMap<Box<str>, u64>>, key: &str) {
    let mut map = lock(map);
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(Box::from(key), 1);
        }
    }
}

fn remove(map: &Mutex<HashMap<Box<str>, u64>>, key: &str) {
    let mut map = lock(map);
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl SubscriberCounts {
    /// One more subscriber on `channel`.
    pub fn add_channel(&self, channel: &str) {
        add(&self.channels, channel);
    }

    /// One subscriber fewer on `channel`.
    pub fn remove_channel(&self, channel: &str) {
        remove(&self.channels, channel);
    }

    /// One more connection of `user`.
    pub fn add_user(&self, user: &str) {
        add(&self.users, user);
    }

    /// One connection fewer of `user`.
    pub fn remove_user(&self, user: &str) {
        remove(&self.users, user);
    }

    /// Subscribers of `target` right now.
    pub fn of(&self, target: &DeliveryTarget) -> u64 {
        match target {
            DeliveryTarget::Channel(c) => lock(&self.channels).get(&**c).copied().unwrap_or(0),
            DeliveryTarget::User(u) => lock(&self.users).get(&**u).copied().unwrap_or(0),
        }
    }
}

/// The publish side of fan-out, owned by the admin thread.
#[derive(Debug)]
pub struct Hub {
    workers: Vec<WorkerLink>,
    /// Held while numbering a batch and sending it to every worker (see the module docs).
    order: Mutex<SeqAllocator>,
    counts: Arc<SubscriberCounts>,
}

/// What one publish got: its `seq` and how many local subscribers it was queued for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The delivery's sequence number.
    pub seq: u64,
    /// Local subscribers at the time of the publish.
    pub subscribers: u64,
}

impl Hub {
    /// A hub over these workers.
    pub fn new(workers: Vec<WorkerLink>, counts: Arc<SubscriberCounts>) -> Hub {
        Hub {
            workers,
            order: Mutex::new(SeqAllocator::new()),
            counts,
        }
    }

    /// The shared subscriber counts.
    pub fn counts(&self) -> &Arc<SubscriberCounts> {
        &self.counts
    }

    /// Publishes `items` in order, as one batch: numbers them, encodes each into one
    /// frame, and hands the batch to every worker. Returns one [`Published`] per item.
    pub fn publish(&self, items: &[(Target<'_>, &RawValue)]) -> Vec<Published> {
        let accepted_at = Instant::now();
        let mut results = Vec::with_capacity(items.len());
        let mut batch = Vec::with_capacity(items.len());
        let mut order = lock(&self.order);
        for (target, data) in items {
            let seq = order.allocate();
            let (target, frame) = match target {
                Target::Channel(c) => (
                    DeliveryTarget::Channel(Box::from(&**c)),
                    encode_delivery(c, seq, data),
                ),
                Target::User(u) => (
                    DeliveryTarget::User(Box::from(&**u)),
                    encode_user_delivery(seq, data),
                ),
            };
            let subscribers = self.counts.of(&target);
            results.push(Published { seq, subscribers });
            // Nobody local to deliver to: don't wake anyone for it.
            if subscribers > 0 {
                batch.push(Delivery {
                    target,
                    frame,
                    accepted_at,
                });
            }
        }
        if !batch.is_empty() {
            let batch: Arc<[Delivery]> = batch.into();
            for worker in &self.workers {
                worker.send(Command::Deliver(Arc::clone(&batch)));
            }
        }
        drop(order);
        results
    }
}
