//! The mailbox between a worker and the rest of the process: the only cross-thread
//! path into a worker's event loop.
//!
//! The admin thread (the engine, through [`WorkerOutbox`], for publishes and the
//! answers to subscribes; the server for shutdown) holds a [`WorkerLink`] per worker
//! and sends it [`Command`]s; the worker owns the matching [`Inbox`] and drains it when
//! its `mio::Waker` fires. A publish travels as an `Arc`'d batch of [`Delivery`]s: one
//! shared, already-encoded frame each with its position, never copied per worker or per
//! subscriber. Commands are handled in the order they were sent, which is what lets the
//! memory engine order a recovery's answer between deliveries
//! ([`crate::engine::memory`]).
//!
//! # Wake-ups
//!
//! Wake-ups are coalesced: a sender wakes the worker only if no wake-up is pending yet,
//! and the worker clears the flag ([`Inbox::woken`]) *before* draining its channel, so
//! no command is ever left unnoticed and a burst of publishes costs one `eventfd` write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Instant;

use mio::Waker;

use crate::engine::{Answered, Outbox};

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
    /// The engine lost messages of `stream` up to `position` (Redis: a gap it could
    /// not refill): tell its subscribers `position_lost`.
    PositionLost {
        /// The stream.
        stream: crate::engine::StreamKey,
        /// The newest position the engine knows.
        position: crate::engine::position::Position,
    },
    /// Close every connection of this user with 4001 (`POST /v1/disconnect`).
    Disconnect {
        /// The user id (the token's `sub`).
        user: Arc<str>,
    },
    /// The engine's answers to this worker's subscribes (positions, recovered frames).
    Answers(Vec<Answered>),
    /// Serve new TLS connections with this config (a SIGHUP reload); open ones keep
    /// the one they started with.
    TlsConfig(Arc<rustls::ServerConfig>),
}

/// A worker's inbox as the other threads see it: its command channel plus its waker.
/// Cheap to clone; the engine's outbox holds one per worker. Wake-ups are coalesced (see the
/// module docs).
#[derive(Clone, Debug)]
pub struct WorkerLink {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
}

/// What a worker tells other threads about itself (the node's heartbeat for
/// `GET /v1/nodes`): stored once per loop turn, relaxed; never read on a hot path.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Open client connections.
    pub connections: AtomicU64,
    /// Subscriptions held by its connections.
    pub subscriptions: AtomicU64,
}

impl WorkerLink {
    /// The worker's published numbers.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

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

pub use crate::engine::Delivery;

/// The engine's side of every worker's link: deliveries to all, answers to one.
#[derive(Debug)]
pub struct WorkerOutbox {
    links: Vec<WorkerLink>,
}

impl WorkerOutbox {
    /// An outbox over these workers' links (worker `i` is `links[i]`).
    pub fn new(links: Vec<WorkerLink>) -> WorkerOutbox {
        WorkerOutbox { links }
    }
}

impl Outbox for WorkerOutbox {
    fn deliver(&self, batch: Vec<Delivery>) {
        let batch: Arc<[Delivery]> = batch.into();
        for link in &self.links {
            link.send(Command::Deliver(Arc::clone(&batch)));
        }
    }

    fn answer(&self, worker: usize, answers: Vec<Answered>) {
        if let Some(link) = self.links.get(worker) {
            link.send(Command::Answers(answers));
        }
    }
}

/// The receiving end of a [`WorkerLink`], owned by the worker.
#[derive(Debug)]
pub struct Inbox {
    commands: Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
}

impl Inbox {
    /// Publishes the worker's numbers (see [`WorkerStats`]).
    pub fn publish_stats(&self, connections: usize, subscriptions: usize) {
        self.stats
            .connections
            .store(connections as u64, Ordering::Relaxed);
        self.stats
            .subscriptions
            .store(subscriptions as u64, Ordering::Relaxed);
    }

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
    let stats = Arc::new(WorkerStats::default());
    let link = WorkerLink {
        commands,
        waker: Arc::new(waker),
        wake_pending: Arc::clone(&wake_pending),
        stats: Arc::clone(&stats),
    };
    let inbox = Inbox {
        commands: receiver,
        wake_pending,
        stats,
    };
    (link, inbox)
}
