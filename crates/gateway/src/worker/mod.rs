//! The event loop: the only place that touches client sockets.
//!
//! One [`Worker`] runs per core on its own thread with its own `mio::Poll`, its own
//! `SO_REUSEPORT` listener, its own [`Slab`] of connections and its own timer
//! [`Wheel`]. Nothing is shared with other workers on the per-event path; the only
//! cross-thread input is a command channel paired with a `mio::Waker`: the
//! mailbox in [`link`].
//!
//! # One loop iteration
//!
//! 1. `poll` with the timeout of the wheel's earliest deadline;
//! 2. accept new connections (a bounded batch), run commands, and for each socket
//!    event read into the worker's **one shared read buffer** until `WouldBlock` (or a
//!    short read: with edge-triggered epoll, data that arrives later raises a new event)
//!    and feed the bytes to the connection's state machine;
//! 3. fire due timers (a bounded batch, so a burst of deadlines cannot starve IO);
//! 4. after every state-machine call, *settle* the connection: act on its
//!    events, write its output (`send`/`sendmsg`, until `WouldBlock`), shut down / drop the
//!    socket when the machine says so, and re-file its **single wheel entry** when its
//!    next deadline moved (`pingwheel_conn::timer`: the tick, ping slack included).
//!
//! Sockets are registered once for both readable and writable, edge-triggered: a
//! writable edge only arrives after the kernel's send buffer was full, which is exactly
//! when queued output is waiting. The one re-registration is for writable only, once a
//! connection no longer wants input (an evicted flooder, see `Conn::wants_read`): its
//! bytes are left unread in the kernel, so TCP's window closes on the peer and the
//! worker is not woken for them while the Close frame waits to be written.
//!
//! The push layer's work in the loop (authentication at the upgrade, client ops,
//! deliveries) lives in `worker/push.rs`.
//!
//! # TLS
//!
//! With `--tls-cert`/`--tls-key` every connection gets a [`TlsSession`] between its
//! socket and its `Conn`, boxed in a table beside the slab (`Worker::tls`, same index),
//! so the slot itself does not grow. A read lands in the shared read
//! buffer behind the session's kept partial record; the session decrypts it there and
//! appends the plaintext to the worker's shared plaintext buffer, which goes to
//! `Conn::handle_input`. A flush encrypts `Conn`'s queued frames (at most
//! [`ENCRYPT_BATCH`] at a time, and only once the previous ciphertext is written, so a
//! shared delivery frame stays shared until it is about to go out) into the session's
//! ciphertext queue and writes that. The slow-consumer bound counts the ciphertext queued
//! plus the plaintext not yet encrypted. The handshake deadline is `Conn`'s own
//! (`--open-timeout` from the accept). Before the write half is shut down (after the
//! WebSocket closing handshake, or when the connection ends) close_notify is queued.
//!
//! On Linux each worker thread runs on its own private descriptor table (`worker/fdtable.rs`):
//! its socket syscalls then take the kernel's single-owner path, and the open-files
//! limit applies to each worker separately.

use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Waker};
use slab::Slab;
use tracing::{debug, error, info, warn};
use wheel::{TimerKey, Wheel};

use rustls::ServerConfig;

use self::link::{Command, Inbox, WorkerLink};
use crate::conn::clock::TickClock;
use crate::conn::keepalive::PongOutcome;
use crate::conn::timer;
use crate::conn::{CloseReason, Conn, ConnConfig, ConnEvent, HandshakeFailure, Phase};
use crate::engine::EngineSender;
use crate::fanout::local::LocalFanout;
use crate::fanout::session::Session;
use crate::listener::{AcceptPauses, is_resource_exhaustion};
use crate::metrics::{ApiMetrics, TlsResult, WorkerMetrics};
use crate::push::PushLimits;
use crate::push::auth::Authenticator;
use crate::tls::session::{self, TlsFailure, TlsSession};
use crate::token::{ConnId, LISTENER, WAKER};

mod fdtable;
pub mod link;
mod push;

/// Connections accepted per loop iteration before other work gets a turn.
const ACCEPT_BATCH: usize = 256;
/// Timers fired per loop iteration before IO gets a turn.
const TIMER_BATCH: usize = 4096;
/// Slices per `sendmsg`.
const MAX_IOV: usize = 64;
/// Full reads from one socket per turn (256 KiB with the default 64 KiB buffer, a
/// fraction of a millisecond of parsing): a peer that sends faster than we read gets
/// its next turn after everyone else's events and the due timers. One extra `poll`
/// per 256 KiB costs a flooding peer nothing measurable; a larger turn delays every
/// other connection on the worker (at 4 MiB a debug build missed 1 s pings).
const READS_PER_TURN: usize = 4;
/// Plaintext encrypted per flush step: enough to fill a socket buffer in one
/// `send`, small enough that a backlog of shared delivery frames is not copied into
/// ciphertext long before the socket can take it.
const ENCRYPT_BATCH: usize = 64 << 10;
/// How long to pause accepting after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The close code of a connection whose user the operator disconnected
/// (`POST /v1/disconnect`; docs/protocol.md): a client must not reconnect with the same
/// token.
pub const DISCONNECT_CODE: u16 = 4001;

/// Per-worker settings.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Worker number (thread name, metrics label).
    pub id: usize,
    /// Connection settings.
    pub conn: ConnConfig,
    /// Timer-wheel tick: bounds how late a deadline may fire.
    pub tick: Duration,
    /// Size of the shared read buffer.
    pub read_buffer_size: usize,
    /// The TLS config of the WebSocket listener, if it serves `wss://`; replaced by
    /// [`Command::TlsConfig`] on reload.
    pub tls: Option<Arc<ServerConfig>>,
}

/// What the push layer needs in every worker.
#[derive(Clone, Debug)]
pub struct PushContext {
    /// Checks tokens at the upgrade.
    pub auth: Arc<Authenticator>,
    /// Abuse limits.
    pub limits: PushLimits,
    /// Where subscribes, unsubscribes and recovery requests go (the engine).
    pub engine: EngineSender,
}

/// The other threads' handle on a running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    link: WorkerLink,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl WorkerHandle {
    /// Sends `command` and wakes the worker. Returns false if the worker has exited.
    pub fn send(&self, command: Command) -> bool {
        self.link.send(command)
    }

    /// A clonable inbox for this worker.
    pub fn link(&self) -> WorkerLink {
        self.link.clone()
    }

    /// Waits for the worker thread to end.
    ///
    /// # Errors
    /// The worker's own IO error, or a panic turned into an error.
    pub fn join(mut self) -> io::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("worker thread panicked")),
            None => Ok(()),
        }
    }
}

/// Starts a worker thread serving `listener`; `on_exit` runs on that thread when it
/// ends (returned or panicked).
///
/// `foreign` are the descriptors of the other workers' listeners that are still open
/// in the calling thread's table: the worker closes them in its private copy (see
/// `worker/fdtable.rs`). Returns once the worker thread has made its table private (or failed
/// to); the calling thread then closes its own copies of the worker's epoll and listener.
///
/// # Errors
/// Creating the poller, registering the listener, or spawning the thread.
pub fn spawn(
    settings: WorkerSettings,
    listener: std::net::TcpListener,
    foreign: &[RawFd],
    metrics: WorkerMetrics,
    push: PushContext,
    on_exit: impl FnOnce() + Send + 'static,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let (link, inbox) = link::mailbox(Waker::new(poll.registry(), WAKER)?);
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    // The worker uses these through its table's copies once it has one of its own.
    let spawner_copies = [poll.as_raw_fd(), listener.as_raw_fd()];
    let foreign = foreign.to_vec();
    let (table_tx, table_rx) = mpsc::sync_channel(1);
    let id = settings.id;
    let name = format!("pingwheel-worker-{id}");
    let worker = Worker::new(settings, poll, listener, inbox, metrics, push);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let _exit = OnExit(Some(on_exit));
        let private = match fdtable::make_private(&foreign) {
            fdtable::FdTable::Private => true,
            fdtable::FdTable::Shared(e) => {
                warn!(worker = id, error = %e, "no private descriptor table; sharing the process's");
                false
            }
        };
        let _ = table_tx.send(private);
        worker.run()
    })?;
    if table_rx.recv().unwrap_or(false) {
        for fd in spawner_copies {
            // SAFETY: `fd` is this thread's entry for the worker's epoll or listener; the
            // worker owns the objects and uses its own private copies of them.
            unsafe { libc::close(fd) };
        }
    }
    Ok(WorkerHandle {
        link,
        thread: Some(thread),
    })
}

/// Runs its closure when dropped: when the worker thread ends, however it ends.
struct OnExit<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnExit<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// One connection's slot in the slab.
#[derive(Debug)]
struct Slot {
    sock: TcpStream,
    /// Matches the generation in this connection's `ConnId`.
    generation: u32,
    /// Its single wheel entry, if a deadline is armed.
    timer: Option<TimerKey>,
    /// Deliveries were queued and the connection awaits its one flush of the batch.
    dirty: bool,
    conn: Conn,
    /// Push state; `None` for anonymous dev-mode connections that never subscribed.
    session: Option<Box<Session>>,
}

impl Slot {
    /// Puts connection `id` (this slot) on the batch's `dirty` list for its one flush
    /// in [`Worker::flush_deliveries`]. Invariant: `self.dirty` iff `id` is on the list.
    fn mark_dirty(&mut self, id: ConnId, dirty: &mut Vec<ConnId>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(id);
        }
    }
}

/// The slot of connection `id`, if it is still that connection (not a later one that
/// reuses its index).
fn live_slot(conns: &mut Slab<Slot>, id: ConnId) -> Option<&mut Slot> {
    conns
        .get_mut(id.index as usize)
        .filter(|slot| slot.generation == id.generation)
}

/// One event loop. See the module docs.
#[derive(Debug)]
pub struct Worker {
    settings: WorkerSettings,
    poll: Poll,
    listener: Option<TcpListener>,
    /// More connections may be waiting in the backlog (edge-triggered: retry, don't wait).
    accept_pending: bool,
    /// After EMFILE and friends, accepting resumes at this instant.
    accept_resume_at: Option<Instant>,
    /// The current episode of such pauses, logged once at its start and end.
    accept_pauses: AcceptPauses,
    inbox: Inbox,
    conns: Slab<Slot>,
    /// Every deadline of every connection of this worker, one entry per connection.
    wheel: Wheel<ConnId>,
    clock: TickClock,
    /// Shared by every connection: reads land here, nowhere per connection.
    read_buf: Box<[u8]>,
    /// Shared by every TLS connection: the plaintext of one read, for `Conn`.
    plain: Vec<u8>,
    /// Each slot's TLS session, at the slot's index (`None` for a free index; empty on
    /// a plain `ws://` listener). Beside the slab rather than in the [`Slot`], so that a
    /// plain connection's slot does not grow; a TLS connection costs 8 bytes here plus
    /// its boxed session. Invariant: set when a slot is filled, cleared when it is
    /// removed.
    tls: Vec<Option<Box<TlsSession>>>,
    /// Events of the connection being settled (reused, never per connection).
    events: Vec<ConnEvent>,
    /// Timers fired in the current batch (reused).
    fired: Vec<ConnId>,
    /// Connections that used up their read turn with data still waiting (edge-triggered:
    /// no new event will come for it, so they are read again next iteration).
    read_again: Vec<ConnId>,
    next_generation: u32,
    /// Set once shutdown began.
    drain_deadline: Option<Instant>,
    metrics: WorkerMetrics,
    /// Auth failures share the process-wide series of the publish API.
    api_metrics: ApiMetrics,
    push: PushContext,
    /// Channel → connections and user → connections on this worker, kept in step with
    /// the sessions and the engine's counts.
    fanout: LocalFanout,
    /// Connections with deliveries queued in the current command batch (reused).
    dirty: Vec<ConnId>,
}

impl Worker {
    fn new(
        settings: WorkerSettings,
        poll: Poll,
        listener: TcpListener,
        inbox: Inbox,
        metrics: WorkerMetrics,
        push: PushContext,
    ) -> Worker {
        let now = Instant::now();
        let fanout = LocalFanout::new(settings.id, push.engine.clone());
        Worker {
            clock: TickClock::new(now, settings.tick)
                .with_slack(settings.conn.keepalive.ping_slack()),
            wheel: Wheel::with_capacity(wheel::Tick(0), 1024),
            read_buf: vec![0; read_buffer_size(&settings)].into_boxed_slice(),
            plain: Vec::new(),
            tls: Vec::new(),
            settings,
            poll,
            listener: Some(listener),
            accept_pending: true,
            accept_resume_at: None,
            accept_pauses: AcceptPauses::default(),
            inbox,
            conns: Slab::with_capacity(1024),
            events: Vec::with_capacity(16),
            fired: Vec::with_capacity(TIMER_BATCH),
            read_again: Vec::new(),
            next_generation: 0,
            drain_deadline: None,
            metrics,
            api_metrics: ApiMetrics::new(),
            fanout,
            push,
            dirty: Vec::new(),
        }
    }

    /// Runs until shutdown completes.
    ///
    /// # Errors
    /// Only if polling itself fails.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        debug!(worker = self.settings.id, "worker started");
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(worker = self.settings.id, error = %e, "poll failed");
                return Err(e);
            }
            let now = Instant::now();
            // Each event is a connection's state the CPU has most likely not seen for
            // seconds: ask for all of them first, so the misses overlap.
            for event in events.iter() {
                self.prefetch(event.token());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => self.run_commands(now),
                    token => self.socket_event(ConnId::from_token(token), event, now),
                }
            }
            if self.accept_resume_at.is_some_and(|t| now >= t) {
                self.accept_resume_at = None;
                self.accept_pending = true;
            }
            if self.accept_pending {
                self.accept(now);
            }
            for id in std::mem::take(&mut self.read_again) {
                if self
                    .conns
                    .get(id.index as usize)
                    .is_some_and(|s| s.generation == id.generation)
                {
                    self.read(id, now, false);
                    self.settle(id, now);
                }
            }
            self.fire_timers(now);
            self.metrics.connections.set(self.conns.len() as f64);
            self.metrics.timers.set(self.wheel.len() as f64);
            self.metrics
                .subscriptions
                .set(self.fanout.subscription_count() as f64);
            self.metrics
                .channels
                .set(self.fanout.channel_count() as f64);
            self.inbox
                .publish_stats(self.conns.len(), self.fanout.subscription_count());
            if let Some(deadline) = self.drain_deadline
                && (self.conns.is_empty() || now >= deadline)
            {
                break;
            }
        }
        let left = self.conns.len();
        if left > 0 {
            info!(
                worker = self.settings.id,
                connections = left,
                "drain timeout: dropping remaining connections"
            );
        }
        self.metrics.connections.set(0.0);
        self.metrics.timers.set(0.0);
        self.metrics.subscriptions.set(0.0);
        self.metrics.channels.set(0.0);
        debug!(worker = self.settings.id, "worker stopped");
        Ok(())
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if (self.accept_pending && self.listener.is_some()) || !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut deadline = self
            .wheel
            .next_expiry()
            .map(|tick| self.clock.instant(tick));
        for extra in [self.accept_resume_at, self.drain_deadline]
            .into_iter()
            .flatten()
        {
            deadline = Some(deadline.map_or(extra, |d| d.min(extra)));
        }
        deadline.map(|d| d.saturating_duration_since(now))
    }

    // ---- accepting ----

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                self.accept_pending = false;
                return;
            };
            match listener.accept() {
                Ok((sock, _peer)) => self.admit(sock, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The backlog is empty with descriptors to spare: only now is an
                    // episode of pauses over. (One accept that works between two that
                    // fail, as each closing connection frees a descriptor, is not.)
                    self.accepting_again(now);
                    self.accept_pending = false;
                    return;
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    self.metrics.accept_pauses.increment(1);
                    if self.accept_pauses.paused(now) {
                        warn!(
                            worker = self.settings.id,
                            error = %e,
                            "cannot accept: out of resources (raise the open-files limit); \
                             pausing accepts for {ACCEPT_BACKOFF:?} at a time until one works \
                             (counted in pingwheel_accept_pauses_total, logged again when it does)"
                        );
                    }
                    self.accept_pending = false;
                    self.accept_resume_at = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                // Aborted handshakes and the like concern one peer only.
                Err(e) => debug!(worker = self.settings.id, error = %e, "accept failed"),
            }
        }
        // Batch used up: `accept_pending` stays set, so the next poll does not block.
    }

    /// Ends an episode of accept pauses, if one was running, with one line.
    fn accepting_again(&mut self, now: Instant) {
        if let Some((pauses, lasted)) = self.accept_pauses.resumed(now) {
            info!(
                worker = self.settings.id,
                pauses, "accepting again after {pauses} accept pauses over {lasted:.1?}"
            );
        }
    }

    fn admit(&mut self, mut sock: TcpStream, now: Instant) {
        let entry = self.conns.vacant_entry();
        let Ok(index) = u32::try_from(entry.key()) else {
            warn!(worker = self.settings.id, "connection table full");
            return;
        };
        let id = ConnId {
            index,
            generation: self.next_generation,
        };
        // u32::MAX is never handed out, so tokens never equal LISTENER or WAKER.
        self.next_generation = self.next_generation.wrapping_add(1) % u32::MAX;
        if let Err(e) = sock.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY failed");
        }
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!(worker = self.settings.id, error = %e, "cannot register connection");
            return;
        }
        let conn = Conn::new(&self.settings.conn, now);
        let tls = match &self.settings.tls {
            Some(config) => match TlsSession::new(Arc::clone(config), now) {
                Ok(tls) => Some(Box::new(tls)),
                Err(e) => {
                    warn!(worker = self.settings.id, error = %e, "cannot start TLS");
                    return;
                }
            },
            None => None,
        };
        entry.insert(Slot {
            sock,
            generation: id.generation,
            timer: None,
            dirty: false,
            conn,
            session: None,
        });
        if let Some(tls) = tls {
            let index = id.index as usize;
            if self.tls.len() <= index {
                self.tls.resize_with(index + 1, || None);
            }
            self.tls[index] = Some(tls);
        }
        self.metrics.connections_opened.increment(1);
        self.settle(id, now);
    }

    // ---- commands ----

    fn run_commands(&mut self, now: Instant) {
        self.inbox.woken();
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Shutdown { deadline }) => self.begin_drain(now, deadline),
                Ok(Command::Deliver(batch)) => self.deliver(&batch, now),
                Ok(Command::Disconnect { user }) => self.disconnect_user(&user, now),
                Ok(Command::PositionLost { stream, position }) => {
                    self.position_lost(&stream, position, now);
                }
                Ok(Command::Answers(answers)) => self.answered(answers, now),
                Ok(Command::TlsConfig(config)) => {
                    if self.settings.tls.is_some() {
                        self.settings.tls = Some(config);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The server is gone without saying so: shut down promptly.
                    if self.drain_deadline.is_none() {
                        self.begin_drain(now, now + self.settings.conn.close_timeout);
                    }
                    break;
                }
            }
        }
        self.flush_deliveries();
    }

    /// Closes every connection of `user` on this worker with [`DISCONNECT_CODE`].
    fn disconnect_user(&mut self, user: &str, now: Instant) {
        let ids = self.fanout.user_connections(user);
        for id in ids {
            match self.conns.get_mut(id.index as usize) {
                Some(slot) if slot.generation == id.generation => slot.conn.close(
                    &self.settings.conn,
                    now,
                    CloseReason::Revoked,
                    DISCONNECT_CODE,
                    &mut self.events,
                ),
                _ => continue,
            }
            self.settle(id, now);
        }
    }

    fn begin_drain(&mut self, now: Instant, deadline: Instant) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_pending = false;
        self.accept_resume_at = None;
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .map(|(index, slot)| ConnId {
                index: index as u32,
                generation: slot.generation,
            })
            .collect();
        info!(
            worker = self.settings.id,
            connections = ids.len(),
            "draining"
        );
        for id in ids {
            let slot = &mut self.conns[id.index as usize];
            slot.conn.close(
                &self.settings.conn,
                now,
                CloseReason::Shutdown,
                1001,
                &mut self.events,
            );
            self.settle(id, now);
        }
    }

    // ---- socket IO ----

    fn socket_event(&mut self, id: ConnId, event: &Event, now: Instant) {
        match self.conns.get(id.index as usize) {
            Some(slot) if slot.generation == id.generation => {}
            // A stale event for a connection that is gone.
            _ => return,
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            let slot = &mut self.conns[id.index as usize];
            if slot.conn.wants_read() {
                self.read(id, now, event.is_read_closed());
            } else if !slot.conn.is_done() {
                // Input is no longer wanted: stop being woken for it (edge-triggered,
                // so this runs once, on the first readable edge after the decision).
                let registry = self.poll.registry();
                if let Err(e) = registry.reregister(&mut slot.sock, id.token(), Interest::WRITABLE)
                {
                    debug!(worker = self.settings.id, error = %e, "reregister failed");
                }
            }
        }
        self.settle(id, now);
    }

    /// Reads until `WouldBlock`, a short read, EOF or an error, feeding each chunk to
    /// the connection and settling it between full reads; at most [`READS_PER_TURN`]
    /// full reads, then the connection waits in `read_again` for its next turn. The
    /// caller settles the connection afterwards (once: a Pong is one short read, and
    /// costs one settle).
    fn read(&mut self, id: ConnId, now: Instant, read_closed: bool) {
        let index = id.index as usize;
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.conns.get_mut(index) else {
                return;
            };
            // Also stops mid-turn once the connection is evicted or done.
            if !slot.conn.wants_read() {
                return;
            }
            // A TLS connection's incomplete record goes first; the read lands behind it.
            let tls = self.tls.get_mut(index).and_then(Option::as_deref_mut);
            let kept = tls
                .as_ref()
                .map_or(0, |tls| tls.restore_partial(&mut self.read_buf));
            match slot.sock.read(&mut self.read_buf[kept..]) {
                Ok(0) => {
                    slot.conn.handle_eof(&mut self.events);
                    return;
                }
                Ok(n) => {
                    self.metrics.bytes_received.increment(n as u64);
                    let input = &mut self.read_buf[..kept + n];
                    match tls {
                        None => slot.conn.handle_input(
                            &self.settings.conn,
                            now,
                            input,
                            &mut self.events,
                        ),
                        Some(tls) => tls_input(
                            tls,
                            &mut slot.conn,
                            &self.settings.conn,
                            now,
                            input,
                            &mut self.plain,
                            &mut self.events,
                            &self.metrics,
                        ),
                    }
                    if kept + n < self.read_buf.len() && !read_closed {
                        return; // drained: the caller settles
                    }
                    self.settle(id, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    slot.conn.handle_io_error(&e, &mut self.events);
                    return;
                }
            }
        }
        // Turn used up with data left: come back after the other connections.
        self.read_again.push(id);
    }

    /// Writes queued output until it is gone or the socket would block.
    fn flush(&mut self, index: usize, now: Instant) {
        if self.tls.get(index).is_some_and(Option::is_some) {
            self.flush_tls(index);
            // The bound counts ciphertext, so only TLS connections check it here; a plain
            // connection's queue is bounded by `Conn` itself.
            self.check_ciphertext_bound(index, now);
            return;
        }
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        while slot.conn.wants_write() {
            let result = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = slot.conn.io_slices(&mut iov);
                // send(2)/sendmsg(2) rather than write(2)/writev(2): sockets only, so the
                // VFS layer (file position locking and all) is skipped on every write.
                let sock = socket2::SockRef::from(&slot.sock);
                if n == 1 {
                    sock.send_with_flags(&iov[0], libc::MSG_NOSIGNAL)
                } else {
                    sock.send_vectored_with_flags(&iov[..n], libc::MSG_NOSIGNAL)
                }
            };
            match result {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    slot.conn.handle_io_error(&e, &mut self.events);
                }
                Ok(n) => {
                    slot.conn.consume_output(n);
                    self.metrics.bytes_sent.increment(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => slot.conn.handle_io_error(&e, &mut self.events),
            }
        }
    }

    /// [`Worker::flush`] for a TLS connection: writes the ciphertext queued, and when it
    /// is all out encrypts the next batch of `Conn`'s frames, until nothing is left or
    /// the socket would block.
    fn flush_tls(&mut self, index: usize) {
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let Slot { sock, conn, .. } = slot;
        let Some(tls) = self.tls.get_mut(index).and_then(Option::as_deref_mut) else {
            return;
        };
        loop {
            if tls.queued_bytes() == 0 {
                if !conn.wants_write() {
                    return;
                }
                if !tls.can_encrypt() {
                    if conn.is_done() || tls.has_failed() {
                        // Plaintext that can never be sent (a 408 while the TLS
                        // handshake was still running): drop it.
                        conn.consume_output(conn.queued_bytes());
                    }
                    return;
                }
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = conn.io_slices(&mut iov);
                // Whole frames, up to the batch (at least one).
                let mut taken = 0;
                let mut count = 0;
                for slice in &iov[..n] {
                    if taken >= ENCRYPT_BATCH {
                        break;
                    }
                    taken += slice.len();
                    count += 1;
                }
                let result = tls.encrypt(iov[..count].iter().map(|s| &**s));
                conn.consume_output(taken);
                if let Err(e) = result {
                    debug!(worker = self.settings.id, error = %e, "TLS encrypt failed");
                    conn.handle_io_error(&io::Error::other(e.to_string()), &mut self.events);
                    return;
                }
            }
            let result =
                socket2::SockRef::from(&*sock).send_with_flags(tls.pending(), libc::MSG_NOSIGNAL);
            match result {
                Ok(0) => {
                    tls.discard_output();
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    conn.handle_io_error(&e, &mut self.events);
                    return;
                }
                Ok(n) => {
                    tls.consume(n);
                    self.metrics.bytes_sent.increment(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tls.discard_output();
                    conn.handle_io_error(&e, &mut self.events);
                    return;
                }
            }
        }
    }

    /// The slow-consumer bound of a TLS connection, in ciphertext: the ciphertext waiting
    /// for the socket plus the frames not yet encrypted. As for plain connections, only a
    /// backlog counts (a single large frame still goes out whole).
    fn check_ciphertext_bound(&mut self, index: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let Some(tls) = self.tls.get(index).and_then(Option::as_deref) else {
            return;
        };
        let plain = slot.conn.queued_bytes();
        if plain > 0
            && slot.conn.is_open()
            && tls.queued_bytes() + plain > self.settings.conn.max_queued_bytes
        {
            slot.conn
                .overflowed(&self.settings.conn, now, &mut self.events);
        }
    }

    /// Brings connection `id` to rest after any state-machine call: handles its events,
    /// writes its output, closes or drops it when due, and re-files its wheel entry
    /// only if its next deadline moved.
    fn settle(&mut self, id: ConnId, now: Instant) {
        let index = id.index as usize;
        loop {
            self.handle_events(id, now);
            self.flush(index, now);
            if self.events.is_empty() {
                break;
            }
        }
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        if slot.conn.wants_write_shutdown() || slot.conn.is_done() {
            // TLS: close_notify goes after the last frame, before the FIN.
            if let Some(tls) = self.tls.get_mut(index).and_then(Option::as_deref_mut)
                && !tls.close_notify_queued()
                && !tls.is_handshaking()
                && !tls.has_failed()
            {
                tls.queue_close_notify();
                self.flush(index, now);
            }
        }
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let ciphertext_out = self
            .tls
            .get(index)
            .and_then(Option::as_deref)
            .is_none_or(|tls| tls.queued_bytes() == 0);
        if slot.conn.wants_write_shutdown() && ciphertext_out {
            // Our Close is out: send FIN and wait (bounded) for the peer's, so unread
            // input never turns our close into a reset that destroys the Close frame.
            let _ = slot.sock.shutdown(Shutdown::Write);
            slot.conn.on_write_shutdown();
        }
        if slot.conn.is_done() {
            let slot = self.conns.remove(index);
            if let Some(tls) = self.tls.get_mut(index) {
                *tls = None;
            }
            if let Some(key) = slot.timer {
                self.wheel.cancel(key);
            }
            if let Some(session) = slot.session {
                self.fanout.leave(id, *session);
            }
            // Dropping the socket closes it and removes it from epoll.
            return;
        }
        // Ping deadlines are filed on the ping-slack grid, so many connections' pings
        // go out in one wake-up; the wheel is touched only when the tick moved.
        let due = timer::due_tick(&slot.conn, &self.settings.conn, &self.clock, now);
        timer::refile(&mut self.wheel, &mut slot.timer, due, id);
    }

    /// Acts on the events the connection pushed (and any they lead to).
    fn handle_events(&mut self, id: ConnId, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            self.handle_event(id, event, now);
        }
        if self.events.is_empty() {
            self.events = events; // keep the allocation
        }
    }

    fn handle_event(&mut self, id: ConnId, event: ConnEvent, now: Instant) {
        let m = &self.metrics;
        match event {
            ConnEvent::UpgradeRequested(request) => self.upgrade(id, &request, now),
            ConnEvent::Opened => {}
            ConnEvent::HandshakeFailed(failure) => {
                m.handshake_failures[failure.index()].increment(1);
                // A TLS handshake still running when the connection gives up.
                if live_slot(&mut self.conns, id).is_some()
                    && self
                        .tls
                        .get(id.index as usize)
                        .and_then(Option::as_deref)
                        .is_some_and(TlsSession::is_handshaking)
                {
                    m.tls_handshake(match failure {
                        HandshakeFailure::Timeout => TlsResult::Timeout,
                        _ => TlsResult::Failed,
                    });
                }
            }
            ConnEvent::Message(message) => {
                m.messages_received.increment(1);
                self.client_message(id, message, now);
            }
            ConnEvent::Echoed { .. } => {
                m.messages_received.increment(1);
                m.messages_sent.increment(1);
            }
            ConnEvent::PingSent => m.pings_sent.increment(1),
            ConnEvent::Pong(outcome) => {
                m.pongs_received.increment(1);
                if let PongOutcome::Acknowledged { rtt } = outcome {
                    m.ping_rtt.record(rtt.as_secs_f64());
                }
            }
            ConnEvent::Closed(reason) => count_closed(m, reason),
        }
    }

    // ---- timers ----

    /// Fires due timers, at most one batch per call: the rest fire next iteration
    /// (the poll timeout is then zero).
    fn fire_timers(&mut self, now: Instant) {
        let now_tick = self.clock.now_tick(now);
        let Some(first) = self.wheel.next_expiry() else {
            return;
        };
        if first > now_tick {
            return;
        }
        self.metrics.event_loop_lag.record(
            now.saturating_duration_since(self.clock.instant(first))
                .as_secs_f64(),
        );
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel
            .advance(now_tick, TIMER_BATCH, |_key, id| fired.push(id));
        for id in &fired {
            self.prefetch(id.token());
        }
        for id in fired.drain(..) {
            let Some(slot) = self.conns.get_mut(id.index as usize) else {
                continue;
            };
            if slot.generation != id.generation {
                debug_assert!(false, "a removed connection's timer is cancelled");
                continue;
            }
            slot.timer = None; // the entry fired and is gone
            slot.conn
                .handle_timeout(&self.settings.conn, now, &mut self.events);
            self.settle(id, now);
        }
        self.fired = fired;
    }
}

impl Worker {
    /// Starts loading the slot of the connection behind `token` into the cache (a hint:
    /// nothing else happens). The loop does this for a whole batch of events or fired
    /// timers before handling the first, so that their cache misses, which are most of
    /// the gateway's own time per keepalive round trip, overlap instead of coming one
    /// after another.
    #[inline]
    fn prefetch(&self, token: mio::Token) {
        if let Some(slot) = self.conns.get(ConnId::from_token(token).index as usize) {
            prefetch_lines(slot);
        }
    }
}

/// Hints the CPU to load every cache line of `value`. Only a hint: it changes nothing
/// the program computes (a no-op off x86-64).
#[inline(always)]
fn prefetch_lines<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = (value as *const T).cast::<i8>();
        let size = std::mem::size_of::<T>();
        for offset in (0..size).step_by(64).chain(size.checked_sub(1)) {
            // SAFETY: a prefetch never faults and reads nothing the program sees; SSE
            // (which has it) is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The shared read buffer's size: the setting, at least 4 KiB, and with TLS at least
/// room for a kept partial record and a whole record behind it.
fn read_buffer_size(settings: &WorkerSettings) -> usize {
    let min = if settings.tls.is_some() {
        session::MIN_READ_BUFFER
    } else {
        4096
    };
    settings.read_buffer_size.max(min)
}

/// Feeds one read of ciphertext (`input`, in the shared read buffer) through the
/// connection's TLS session, and the plaintext it yields (in the shared `plain`) to
/// `conn`; acts on a completed handshake, the peer's close_notify, or a failure.
#[allow(clippy::too_many_arguments)]
fn tls_input(
    tls: &mut TlsSession,
    conn: &mut Conn,
    cfg: &ConnConfig,
    now: Instant,
    input: &mut [u8],
    plain: &mut Vec<u8>,
    events: &mut Vec<ConnEvent>,
    m: &WorkerMetrics,
) {
    let handshaking = tls.is_handshaking();
    let outcome = tls.read_tls(now, input, plain);
    if let Some(done) = outcome.handshake {
        m.tls_handshake(if done.resumed {
            TlsResult::Resumed
        } else {
            TlsResult::Full
        });
        m.tls_handshake_seconds.record(done.took.as_secs_f64());
    }
    if !plain.is_empty() {
        conn.handle_input(cfg, now, plain, events);
        plain.clear();
    }
    if let Some(failure) = outcome.failure {
        debug!(error = %failure, "TLS connection refused");
        if handshaking {
            m.tls_handshake(TlsResult::Failed);
        }
        if matches!(conn.phase(), Phase::Handshake | Phase::AwaitingDecision) {
            // Not counted again as a failed upgrade: what is queued (the alert, or the
            // plain-text 400) goes out, then the socket closes.
            let reason = match failure {
                TlsFailure::PlainHttp => CloseReason::Rejected,
                _ => CloseReason::ProtocolError,
            };
            conn.close(cfg, now, reason, 1002, events);
        } else {
            let e = io::Error::new(io::ErrorKind::InvalidData, failure.to_string());
            conn.handle_io_error(&e, events);
        }
    } else if outcome.peer_closed {
        conn.handle_eof(events);
    }
}

/// Counts a connection's close under its reason.
fn count_closed(m: &WorkerMetrics, reason: CloseReason) {
    m.connections_closed[reason.index()].increment(1);
    match reason {
        CloseReason::PingTimeout => m.ping_timeouts.increment(1),
        CloseReason::SlowConsumer => m.slow_consumer_disconnects.increment(1),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything an idle connection costs in user space is its slab slot plus one
    /// wheel entry; keep the slot small (see docs/benchmarks.md for the measured total).
    #[test]
    fn an_idle_connection_is_one_small_slot() {
        // slab's entry adds an enum tag (and padding) to the slot.
        let slot = std::mem::size_of::<Slot>();
        println!(
            "slot {slot} B, of which Conn {} B",
            std::mem::size_of::<Conn>()
        );
        assert!(slot <= 200, "slot is {slot} bytes");
    }
}
