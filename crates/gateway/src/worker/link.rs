//! The mailbox between a worker and the rest of the process: the only cross-thread
//! path into a worker's event loop.
//!
//! The admin thread (the [`Hub`](crate::fanout::hub::Hub) for publishes, the server for
//! shutdown) holds a [`WorkerLink`] per worker and sends it [`Command`]s; the worker
//! owns the matching [`Inbox`] and drains it when its `mio::Waker` fires. A publish
//! travels as an `Arc`'d batch of [`Delivery`]s: one shared, already-encoded frame
//! each, never copied per worker or per subscriber.
//!
//! # Wake-ups
//!
//! Wake-ups are coalesced: a sender wakes the worker only if no wake-up is pending yet,
//! and the worker clears the flag ([`Inbox::woken`]) *before* draining its channel, so
//! no command is ever left unnoticed and a burst of publishes costs one `eventfd` write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Instant;

use bytes::Bytes;
use mio::Waker;

/// Commands from other threads.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, close every connection with 1001, and return once all are gone
    /// or `deadline` passes.
    Shutdown {
        /// When to give up on closing handshakes.
        deadline: Instant,
    },
    /// Queue these publishes for the local subscribers, in order.
    Deliver(Arc<[Delivery]>),
}

/// A worker's inbox as the other threads see it: its command channel plus its waker.
/// Cheap to clone; the hub holds one per worker. Wake-ups are coalesced (see the
/// module docs).
#[derive(Clone, Debug)]
pub struct WorkerLink {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

impl WorkerLink {
    /// Sends `command` and wakes the worker. Returns false if the worker has exited.
    pub fn send(&self, command: Command) -> bool {
        if self.commands.send(command).is_err() {
            return false;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            return self.waker.wake().is_ok();
        }
        true
    }
}

/// Who a delivery is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryTarget {
    /// Every subscriber of a channel.
    Channel(Box<str>),
    /// Every connection of a user (channel `#user` on the wire).
    User(Box<str>),
}

/// One encoded publish, as every worker receives it.
#[derive(Debug)]
pub struct Delivery {
    /// Who gets it.
    pub target: DeliveryTarget,
    /// The complete WebSocket text frame, shared by every subscriber.
    pub frame: Bytes,
    /// When the publish API accepted it (for `pingwheel_delivery_lag_seconds`).
    pub accepted_at: Instant,
}

/// The receiving end of a [`WorkerLink`], owned by the worker.
#[derive(Debug)]
pub struct Inbox {
    commands: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
}

impl Inbox {
    /// Call when the waker fired, before draining with [`Inbox::try_recv`]: a command
    /// sent from here on wakes the worker again.
    pub fn woken(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// The next command, if one is waiting.
    ///
    /// # Errors
    /// `Empty` when drained; `Disconnected` when every link is gone (the server left
    /// without a shutdown command).
    pub fn try_recv(&self) -> Result<Command, TryRecvError> {
        self.commands.try_recv()
    }
}

/// A new mailbox whose sends wake `waker` (registered with the worker's `Poll`).
pub fn mailbox(waker: Waker) -> (WorkerLink, Inbox) {
    let (commands, receiver) = mpsc::channel();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let link = WorkerLink {
        commands,
        waker: Arc::new(waker),
        wake_pending: Arc::clone(&wake_pending),
    };
    let inbox = Inbox {
        commands: receiver,
        wake_pending,
    };
    (link, inbox)
}
