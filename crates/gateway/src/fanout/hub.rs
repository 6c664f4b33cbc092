//! Cross-worker fan-out: how a publish from the admin thread reaches every worker.
//!
//! **Where a publish is numbered and handed to the workers.** A publish is encoded into
//! **one** WebSocket frame ([`Bytes`](bytes::Bytes), reference-counted) and handed to
//! every worker as an [`Arc`]'d batch through its mailbox (`worker/link.rs`); each
//! worker looks the target up in its own subscription index
//! ([`LocalFanout`](super::local::LocalFanout)) and queues the same frame for each local
//! subscriber. Nobody copies the payload per subscriber.
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
//! The reply to a publish says how many local subscribers it reached. Workers report
//! their subscribes and unsubscribes over a channel and the hub folds them in before it
//! counts ([`super::counts`]): the lock below is the admin thread's own, and no worker
//! ever takes it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::value::RawValue;

use super::counts::SubscriberCounts;
use crate::push::protocol::{encode_delivery, encode_user_delivery};
use crate::push::publish::{SeqAllocator, Target};
use crate::worker::link::{Command, Delivery, DeliveryTarget, WorkerLink};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent even if a holder panicked: the counter and the counts
    // are each updated in one statement.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The publish side of fan-out, owned by the admin thread.
#[derive(Debug)]
pub struct Hub {
    workers: Vec<WorkerLink>,
    /// Held while numbering a batch and sending it to every worker (see the module docs).
    order: Mutex<Ordered>,
}

/// What the hub's lock guards.
#[derive(Debug)]
struct Ordered {
    seq: SeqAllocator,
    counts: SubscriberCounts,
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
    /// A hub over these workers, counting the subscribers they report to `counts`.
    pub fn new(workers: Vec<WorkerLink>, counts: SubscriberCounts) -> Hub {
        let seq = SeqAllocator::new();
        Hub {
            workers,
            order: Mutex::new(Ordered { seq, counts }),
        }
    }

    /// Folds the subscriber changes the workers reported since the last publish (the
    /// admin thread calls it every [`FOLD_INTERVAL`](super::counts::FOLD_INTERVAL)).
    pub fn fold_counts(&self) {
        lock(&self.order).counts.fold();
    }

    /// Publishes `items` in order, as one batch: numbers them, encodes each into one
    /// frame, and hands the batch to every worker. Returns one [`Published`] per item.
    pub fn publish(&self, items: &[(Target<'_>, &RawValue)]) -> Vec<Published> {
        let accepted_at = Instant::now();
        let mut results = Vec::with_capacity(items.len());
        let mut batch = Vec::with_capacity(items.len());
        let mut order = lock(&self.order);
        order.counts.fold();
        for (target, data) in items {
            let seq = order.seq.allocate();
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
            let subscribers = order.counts.of(&target);
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
