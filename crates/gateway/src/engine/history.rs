//! Stream positions and bounded history, in memory: the pure heart of the memory engine.
//!
//! [`History`] assigns every publish its [`Position`], keeps the publishes of streams
//! whose namespace keeps history, answers recovery and history reads, and forgets what
//! it may forget. It takes `now` as a parameter and does no IO: tests drive it on a
//! fake clock. The memory engine owns one behind a mutex.
//!
//! # Representation (what a kept message costs)
//!
//! History keeps a message's **data** (the published JSON), not its frame. The data is
//! copied once into the **open block**: a large buffer (64 KiB by default, owned by the
//! history) that data is appended to, so there is no allocation per kept message and
//! one allocator header per block. Its stream's ring gets one [`Entry`] (16 B: block
//! number, offset and length in it, expiry); the seq is implied by the ring position
//! (a stream's kept seqs are consecutive, ending at its top), and the epoch and stream
//! name are the stream's. A kept message therefore costs its data plus 16 B. Data
//! over a quarter of a block gets a block of its own.
//!
//! The delivery frame is encoded by the history's [`FrameEncoder`] once per publish,
//! into an allocation of its own, and handed back in [`Published`]: the fan-out shares
//! that one [`Bytes`] among every subscriber, and its memory goes when the last
//! connection has sent it. A recovery or history read encodes the frames again from
//! the kept data, the position and the stream name: byte for byte what the fan-out
//! sent.
//!
//! A block's memory is returned as soon as no kept entry points into it (nothing else
//! ever references it). Blocks are numbered in creation order and tracked in a FIFO
//! with a count of the kept entries in each.
//!
//! # Bounds
//!
//! * Per stream: at most the namespace's `history_size` entries (the oldest is dropped
//!   on publish), each dropped `history_ttl` after its publish (whole seconds, rounded
//!   up; [`History::tick`] sweeps expired blocks, and every access to a stream drops
//!   its expired entries first).
//! * Globally: [`History::bytes`] — the blocks that still hold a kept entry (whole
//!   blocks: that is what the allocator holds), the entry rings, and the per-stream
//!   state — stays at most [`HistoryLimits::max_bytes`]. To make room, idle stream
//!   states are forgotten first, then the **oldest block is evicted**: every stream
//!   with an unexpired entry in it has lost a message it promised to keep, so it
//!   starts a **new epoch** at seq 0 and drops its other entries (they belong to the
//!   old epoch); clients holding a position of the old epoch get `recovered:false`.
//! * Idle stream state: a stream with no kept entry and no subscriber on this node is
//!   forgotten [`HistoryLimits::idle_forget`] after its last publish or subscription
//!   change (up to twice that, the sweep is lazy); seen again, it starts a new epoch.
//!
//! # Invariants
//!
//! Checked by [`History::check_invariants`] (tests call it after every operation):
//! each stream's entries have consecutive seqs ending at its top; each block's `live`
//! equals the entries pointing into it and every entry lies within its block's data;
//! a block holds memory exactly while it has a live entry or is open, and the byte
//! total counts exactly that memory; the byte and message totals equal the sums they
//! cache; every block with a live entry lists every stream that has one in it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::Stream;
use super::namespace::{NamespaceId, Namespaces};
use super::position::{Epoch, Position, RecoveryDecision, Since, decide};

/// Encodes the delivery frame of one message from its stream, position and data: at
/// publish (the frame the fan-out sends) and again for every recovery and history
/// read, which must get the same bytes. Implemented by the gateway's protocol layer
/// ([`crate::push::protocol::JsonDeliveries`], the JSON envelope), and by tests.
pub trait FrameEncoder: fmt::Debug + Send + Sync {
    /// The frame of `data` at `position` on `stream`, in an exact-size [`Bytes`].
    fn encode(&self, stream: Stream<'_>, position: &Position, data: &[u8]) -> Bytes;
}

/// The global bounds of a [`History`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Bound on [`History::bytes`] (`--history-max-bytes`).
    pub max_bytes: usize,
    /// Idle stream state is forgotten after this (`--channel-idle-forget`).
    pub idle_forget: Duration,
    /// Size of one data block. Data over a quarter of it gets a block of its own.
    pub block_size: usize,
}

/// Default [`HistoryLimits::max_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;
/// Default [`HistoryLimits::idle_forget`]: 10 minutes.
pub const DEFAULT_IDLE_FORGET: Duration = Duration::from_secs(10 * 60);
/// Default [`HistoryLimits::block_size`]: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: usize = 64 << 10;

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            idle_forget: DEFAULT_IDLE_FORGET,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

/// Streams forgotten per [`History::tick`] at most, so one sweep cannot hold the
/// engine's lock for long; the rest wait for the next tick.
pub const FORGET_PER_TICK: usize = 65_536;

/// How many slots a full ring of `capacity` grows by: doubling from 4, never past the
/// namespace's `size`.
fn ring_growth(capacity: usize, size: usize) -> usize {
    (capacity * 2)
        .max(4)
        .min(size.max(1))
        .saturating_sub(capacity)
        .max(1)
}

/// One kept message in its stream's ring (its seq is implied by its place there).
#[derive(Copy, Clone, Debug)]
struct Entry {
    /// Number of the block its data lives in (wrapping).
    block: u32,
    /// Where its data starts in the block.
    offset: u32,
    /// Length of its data.
    len: u32,
    /// Dropped at or after this second of the history's clock.
    expires: u32,
}

impl Entry {
    fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..self.offset as usize + self.len as usize
    }
}

/// What [`History`] accounts for one [`Entry`] slot in a ring.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// One block of kept data, in creation order.
#[derive(Debug)]
struct Block {
    /// The kept data, appended (never past its capacity, so never moved). Its capacity
    /// is the memory the block holds (what [`History::bytes`] counts); freed (an empty
    /// `Vec`) once no live entry points into it and it is not open.
    data: Vec<u8>,
    /// Kept entries whose data is in it.
    live: u32,
    /// The latest expiry of any entry ever written into it.
    max_expires: u32,
    /// Slab indices of the streams that wrote into it (each at least once; stale
    /// indices are harmless, see [`History::evict_oldest_block`]). Emptied once `live`
    /// reaches 0.
    streams: Vec<u32>,
}

/// One stream's state: position, kept entries, subscribers.
#[derive(Debug)]
struct StreamState {
    /// Channel name, or user id for a user stream (shared with the index).
    key: Arc<str>,
    /// Kept messages, oldest first; the last one has seq `top`.
    entries: VecDeque<Entry>,
    top: u64,
    epoch: Epoch,
    /// Distinguishes this state from earlier ones in the same slab slot.
    generation: u32,
    /// Second of the last publish or subscription change.
    last_active: u32,
    /// Subscribers on this node (connections), kept by the engine.
    subscribers: u32,
    /// The block this stream last wrote into (`None`: none yet, or reset).
    last_block: Option<u32>,
    namespace: NamespaceId,
    user: bool,
    /// It has an entry in the idle queue.
    idle_queued: bool,
}

impl StreamState {
    fn forgettable(&self) -> bool {
        self.subscribers == 0 && self.entries.is_empty()
    }

    /// Seq of `entries[0]`.
    fn first_seq(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }

    /// What the history accounts for this state besides its entries: the struct, the
    /// key (with its reference counts), and its map entry.
    fn overhead(&self) -> usize {
        std::mem::size_of::<StreamState>() + 16 + self.key.len() + MAP_ENTRY_BYTES
    }
}

/// A map entry (`Arc<str>` + `u32`, padded) plus the control byte, at a load factor of
/// 7/8 — what one stream costs in its index.
const MAP_ENTRY_BYTES: usize = 32;

/// A stream that may be forgotten once idle long enough.
#[derive(Copy, Clone, Debug)]
struct IdleMark {
    index: u32,
    generation: u32,
    /// Its `last_active` when queued.
    since: u32,
}

/// The answer to a publish.
#[derive(Clone, Debug)]
pub struct Published {
    /// The position the message got.
    pub position: Position,
    /// Its delivery frame, encoded once for every subscriber (history keeps only the
    /// data; a recovery encodes the same bytes again).
    pub frame: Bytes,
    /// Subscribers on this node at the time of the publish.
    pub subscribers: u32,
}

/// The answer to a recovery request.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The stream's current position (the reply's `seq` and `epoch`).
    pub position: Position,
    /// Recovered or not, and why.
    pub decision: RecoveryDecision,
    /// The frames of `from..=to` when recovered, in order; empty otherwise.
    pub frames: Vec<Bytes>,
}

/// The answer to a history read.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// The stream's current position.
    pub position: Position,
    /// Seq of the first frame in `frames` (`position.seq + 1` when empty).
    pub first_seq: u64,
    /// Kept frames, oldest first.
    pub frames: Vec<Bytes>,
}

/// Totals for metrics and tests.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Kept messages.
    pub messages: usize,
    /// [`History::bytes`].
    pub bytes: usize,
    /// Streams with state.
    pub streams: usize,
    /// Streams that started a new epoch because the byte bound evicted their messages
    /// (since creation).
    pub evicted_streams: u64,
    /// Idle streams forgotten (since creation).
    pub forgotten_streams: u64,
}

/// Positions and bounded history of every stream. See the module docs.
#[derive(Debug)]
pub struct History {
    namespaces: Namespaces,
    /// Encodes delivery frames, at publish and again from the kept data.
    encoder: Box<dyn FrameEncoder>,
    limits: HistoryLimits,
    idle_secs: u32,
    /// Second 0 of the history's clock.
    base: Instant,
    rng: fastrand::Rng,
    streams: Slab<StreamState>,
    channels: HashMap<Arc<str>, u32>,
    users: HashMap<Arc<str>, u32>,
    next_generation: u32,
    /// Blocks from number `first_block` on, oldest first.
    blocks: VecDeque<Block>,
    first_block: u32,
    /// Number of the open block (the one small data is appended to).
    open_block: Option<u32>,
    idle: VecDeque<IdleMark>,
    /// Kept entries.
    messages: usize,
    /// Σ `size` of the blocks with a live entry, plus the open block.
    block_bytes: usize,
    /// Σ ring capacities, in entries.
    entry_slots: usize,
    /// Σ [`StreamState::overhead`].
    state_bytes: usize,
    evicted_streams: u64,
    forgotten_streams: u64,
}

impl History {
    /// An empty history whose clock starts at `now`; epochs come from a generator
    /// seeded with `seed`. Frames are the gateway's JSON deliveries
    /// ([`crate::push::protocol::JsonDeliveries`]); see [`History::with_encoder`].
    pub fn new(namespaces: Namespaces, limits: HistoryLimits, now: Instant, seed: u64) -> History {
        let idle_secs = u32::try_from(limits.idle_forget.as_secs().max(1)).unwrap_or(u32::MAX);
        History {
            namespaces,
            encoder: Box::new(crate::push::protocol::JsonDeliveries),
            limits,
            idle_secs,
            base: now,
            rng: fastrand::Rng::with_seed(seed),
            streams: Slab::new(),
            channels: HashMap::new(),
            users: HashMap::new(),
            next_generation: 0,
            blocks: VecDeque::new(),
            first_block: 0,
            open_block: None,
            idle: VecDeque::new(),
            messages: 0,
            block_bytes: 0,
            entry_slots: 0,
            state_bytes: 0,
            evicted_streams: 0,
            forgotten_streams: 0,
        }
    }

    /// The same history encoding its frames with `encoder` instead (tests).
    pub fn with_encoder(mut self, encoder: Box<dyn FrameEncoder>) -> History {
        self.encoder = encoder;
        self
    }

    /// The namespaces streams are resolved in.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The bounds.
    pub fn limits(&self) -> &HistoryLimits {
        &self.limits
    }

    /// Bytes held: the data blocks that still hold a kept entry (and the open block),
    /// the entry rings, and the per-stream state. At most [`HistoryLimits::max_bytes`]
    /// after every publish, unless a single message is larger than that.
    pub fn bytes(&self) -> usize {
        self.block_bytes + self.entry_slots * ENTRY_BYTES + self.state_bytes
    }

    /// Totals.
    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            messages: self.messages,
            bytes: self.bytes(),
            streams: self.streams.len(),
            evicted_streams: self.evicted_streams,
            forgotten_streams: self.forgotten_streams,
        }
    }

    /// Whole seconds since the history's clock started, saturating.
    fn secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.base).as_secs()).unwrap_or(u32::MAX)
    }

    /// The slab index of `stream`, creating its state (a fresh epoch at seq 0) if it
    /// has none.
    fn lookup_or_create(&mut self, stream: Stream<'_>, t: u32) -> usize {
        let (map, key, user) = match stream {
            Stream::Channel(name) => (&mut self.channels, name, false),
            Stream::User(id) => (&mut self.users, id, true),
        };
        if let Some(&index) = map.get(key) {
            return index as usize;
        }
        let key: Arc<str> = Arc::from(key);
        let state = StreamState {
            key: Arc::clone(&key),
            entries: VecDeque::new(),
            top: 0,
            epoch: Epoch::random(&mut self.rng),
            generation: self.next_generation,
            last_active: t,
            subscribers: 0,
            last_block: None,
            namespace: self.namespaces.resolve(stream),
            user,
            idle_queued: false,
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        self.state_bytes += state.overhead();
        let index = self.streams.insert(state);
        let index32 = u32::try_from(index).unwrap_or_else(|_| panic!("over 2^32 streams"));
        map.insert(key, index32);
        // Stream state counts towards the bound too (millions of one-off channels).
        self.make_room(t, index, |_| 0);
        index
    }

    fn lookup(&self, stream: Stream<'_>) -> Option<usize> {
        match stream {
            Stream::Channel(name) => self.channels.get(name),
            Stream::User(id) => self.users.get(id),
        }
        .map(|&i| i as usize)
    }

    /// The position of `stream`, creating its state if it has none (so the epoch a
    /// subscriber is told is the one the next publish counts in).
    pub fn position(&mut self, stream: Stream<'_>, now: Instant) -> Position {
        self.read_access(stream, now).1
    }

    /// What every read of a stream does first: finds its state (creating it with a
    /// fresh epoch if it has none), drops its expired messages and queues it for idle
    /// forgetting if nobody holds it. Returns its index and its position.
    fn read_access(&mut self, stream: Stream<'_>, now: Instant) -> (usize, Position) {
        let t = self.secs(now);
        let index = self.lookup_or_create(stream, t);
        self.expire_stream(index, t);
        self.maybe_queue_idle(index);
        let s = &self.streams[index];
        let position = Position {
            seq: s.top,
            epoch: s.epoch,
        };
        (index, position)
    }

    /// The position of `stream` if it has state (no side effects).
    pub fn peek(&self, stream: Stream<'_>) -> Option<Position> {
        self.lookup(stream).map(|i| {
            let s = &self.streams[i];
            Position {
                seq: s.top,
                epoch: s.epoch,
            }
        })
    }

    /// One more subscriber of `stream` on this node: its state is kept while it has
    /// any. Returns the position.
    pub fn subscribe(&mut self, stream: Stream<'_>, now: Instant) -> Position {
        let t = self.secs(now);
        let index = self.lookup_or_create(stream, t);
        let s = &mut self.streams[index];
        s.subscribers += 1;
        s.last_active = t;
        Position {
            seq: s.top,
            epoch: s.epoch,
        }
    }

    /// One subscriber fewer of `stream` on this node.
    pub fn unsubscribe(&mut self, stream: Stream<'_>, now: Instant) {
        let t = self.secs(now);
        let Some(index) = self.lookup(stream) else {
            debug_assert!(false, "unsubscribe from a stream without state: {stream:?}");
            return;
        };
        let s = &mut self.streams[index];
        debug_assert!(s.subscribers > 0, "unsubscribe below zero: {stream:?}");
        s.subscribers = s.subscribers.saturating_sub(1);
        s.last_active = t;
        self.maybe_queue_idle(index);
    }

    /// Subscribers of `stream` on this node.
    pub fn subscribers(&self, stream: Stream<'_>) -> u32 {
        self.lookup(stream)
            .map_or(0, |i| self.streams[i].subscribers)
    }

    /// Publishes one message of `data` (the published JSON) to `stream`: assigns the
    /// next position, encodes the delivery frame, and keeps the data when the
    /// stream's namespace keeps history (making room under the byte bound first, which
    /// may start a new epoch for `stream` itself — the message is then seq 1 of it).
    pub fn publish(&mut self, stream: Stream<'_>, now: Instant, data: &[u8]) -> Published {
        let t = self.secs(now);
        let index = self.lookup_or_create(stream, t);
        let ns = self.namespaces.get(self.streams[index].namespace);
        let (size, ttl) = (ns.history_size as usize, ns.ttl_secs());
        if size > 0 {
            self.expire_stream(index, t);
            while self.streams[index].entries.len() >= size {
                self.pop_oldest(index);
            }
            // Evicting may reset this very stream: the cost is recomputed each round.
            self.make_room(t, index, |h| h.keep_cost(index, data.len()));
        }
        let s = &mut self.streams[index];
        s.top += 1;
        s.last_active = t;
        let position = Position {
            seq: s.top,
            epoch: s.epoch,
        };
        let subscribers = s.subscribers;
        let frame = self.encoder.encode(stream, &position, data);
        if size == 0 {
            self.maybe_queue_idle(index);
        } else {
            let expires = t.saturating_add(ttl);
            let entry = self.store(data, expires);
            self.keep(index, entry);
        }
        Published {
            position,
            frame,
            subscribers,
        }
    }

    /// The bytes keeping `len` more bytes of data for stream `index` would add: a new
    /// block when the data does not fit the open one (or a block of its own when
    /// large), and ring growth.
    fn keep_cost(&self, index: usize, len: usize) -> usize {
        let s = &self.streams[index];
        let block = if len > self.limits.block_size / 4 {
            len
        } else if self.open_spare() < len {
            self.limits.block_size
        } else {
            0
        };
        let ring = if s.entries.len() == s.entries.capacity() {
            let size = self.namespaces.get(s.namespace).history_size as usize;
            ring_growth(s.entries.capacity(), size) * ENTRY_BYTES
        } else {
            0
        };
        block + ring
    }

    /// Room left in the open block (0 when there is none).
    fn open_spare(&self) -> usize {
        self.open_block.map_or(0, |number| {
            let at = number.wrapping_sub(self.first_block) as usize;
            let data = &self.blocks[at].data;
            data.capacity() - data.len()
        })
    }

    /// Copies `data` into the open block (opening one when it does not fit), or into a
    /// block of its own when large, and returns its entry. The caller keeps it.
    fn store(&mut self, data: &[u8], expires: u32) -> Entry {
        let len = u32::try_from(data.len()).unwrap_or_else(|_| panic!("a message over 4 GiB"));
        if data.len() > self.limits.block_size / 4 {
            let block = self.push_block(data.to_vec());
            return Entry {
                block,
                offset: 0,
                len,
                expires,
            };
        }
        if self.open_spare() < data.len() {
            self.seal_open_block();
            let number = self.push_block(Vec::with_capacity(self.limits.block_size));
            self.open_block = Some(number);
        }
        let Some(number) = self.open_block else {
            unreachable!("a block was just opened")
        };
        let block = self.block_mut(number);
        let offset = block.data.len();
        debug_assert!(block.data.capacity() - offset >= data.len());
        block.data.extend_from_slice(data);
        Entry {
            block: number,
            offset: offset as u32,
            len,
            expires,
        }
    }

    /// Appends a block holding `data` (with its capacity) to the FIFO and counts it;
    /// returns its number.
    fn push_block(&mut self, data: Vec<u8>) -> u32 {
        let number = self.first_block.wrapping_add(self.blocks.len() as u32);
        let size = data.capacity();
        self.blocks.push_back(Block {
            data,
            live: 0,
            max_expires: 0,
            streams: Vec::new(),
        });
        self.block_bytes += size;
        number
    }

    /// Closes the open block: no more data goes into it; it stays (and stays counted)
    /// while it has a live entry.
    fn seal_open_block(&mut self) {
        let Some(number) = self.open_block.take() else {
            return;
        };
        let block = self.block_mut(number);
        if block.live == 0 {
            let size = block.data.capacity();
            block.data = Vec::new();
            block.streams = Vec::new();
            self.block_bytes -= size;
            self.pop_dead_blocks();
        }
    }

    /// The frames of stream `index`'s entries from ring position `skip` on, at most
    /// `limit`, encoded again from the kept data: the bytes the fan-out sent.
    fn frames(&self, index: usize, skip: usize, limit: usize) -> Vec<Bytes> {
        let s = &self.streams[index];
        let stream = if s.user {
            Stream::User(&s.key)
        } else {
            Stream::Channel(&s.key)
        };
        let first = s.first_seq() + skip as u64;
        s.entries
            .range(skip..)
            .take(limit)
            .zip(first..)
            .map(|(e, seq)| {
                let at = e.block.wrapping_sub(self.first_block) as usize;
                let data = &self.blocks[at].data[e.range()];
                let position = Position {
                    seq,
                    epoch: s.epoch,
                };
                self.encoder.encode(stream, &position, data)
            })
            .collect()
    }

    fn block_mut(&mut self, number: u32) -> &mut Block {
        let at = number.wrapping_sub(self.first_block) as usize;
        &mut self.blocks[at]
    }

    /// Adds `entry` (the next seq) to stream `index`, growing its ring no further than
    /// the namespace's `history_size`.
    fn keep(&mut self, index: usize, entry: Entry) {
        let s = &mut self.streams[index];
        let size = self.namespaces.get(s.namespace).history_size as usize;
        if s.entries.len() == s.entries.capacity() {
            let before = s.entries.capacity();
            s.entries.reserve_exact(ring_growth(before, size));
            self.entry_slots += s.entries.capacity() - before;
        }
        let number = entry.block;
        let expires = entry.expires;
        let new_in_block = s.last_block != Some(number);
        s.last_block = Some(number);
        s.entries.push_back(entry);
        self.messages += 1;
        let block = self.block_mut(number);
        block.live += 1;
        block.max_expires = block.max_expires.max(expires);
        if new_in_block {
            block.streams.push(index as u32);
        }
    }

    /// Drops entry `entry` (already removed from its ring) from the block counts.
    fn release(&mut self, entry: &Entry) {
        self.messages -= 1;
        let open = self.open_block == Some(entry.block);
        let block = self.block_mut(entry.block);
        debug_assert!(block.live > 0, "block {} live underflow", entry.block);
        block.live -= 1;
        if block.live == 0 && !open {
            let size = block.data.capacity();
            block.data = Vec::new();
            block.streams = Vec::new();
            self.block_bytes -= size;
        }
    }

    /// Drops the oldest entry of stream `index`.
    fn pop_oldest(&mut self, index: usize) {
        if let Some(entry) = self.streams[index].entries.pop_front() {
            self.release(&entry);
        }
        self.after_entries_removed(index);
    }

    /// Frees the ring of a stream that has no entries left, queues it as idle, and
    /// pops the blocks that died off the front.
    fn after_entries_removed(&mut self, index: usize) {
        let s = &mut self.streams[index];
        if s.entries.is_empty() && s.entries.capacity() > 0 {
            self.entry_slots -= s.entries.capacity();
            s.entries = VecDeque::new();
        }
        self.maybe_queue_idle(index);
        self.pop_dead_blocks();
    }

    /// Drops the expired entries of stream `index` (a prefix: expiries only grow
    /// within a stream).
    fn expire_stream(&mut self, index: usize, t: u32) {
        let mut dropped = false;
        while self.streams[index]
            .entries
            .front()
            .is_some_and(|e| e.expires <= t)
        {
            if let Some(entry) = self.streams[index].entries.pop_front() {
                self.release(&entry);
                dropped = true;
            }
        }
        if dropped {
            self.after_entries_removed(index);
        }
    }

    /// Starts a new epoch at seq 0 for stream `index`, dropping its entries.
    fn reset(&mut self, index: usize) {
        let entries = std::mem::take(&mut self.streams[index].entries);
        self.entry_slots -= entries.capacity();
        for entry in &entries {
            self.release(entry);
        }
        let s = &mut self.streams[index];
        s.epoch = Epoch::random_other_than(&mut self.rng, s.epoch);
        s.top = 0;
        s.last_block = None;
        self.evicted_streams += 1;
        self.maybe_queue_idle(index);
        self.pop_dead_blocks();
    }

    /// Pops blocks with no live entry off the front of the FIFO.
    fn pop_dead_blocks(&mut self) {
        while let Some(front) = self.blocks.front() {
            if front.live > 0 || self.open_block == Some(self.first_block) {
                break;
            }
            self.blocks.pop_front();
            self.first_block = self.first_block.wrapping_add(1);
        }
    }

    /// Frees memory until `cost(self)` more bytes fit under the bound: forgets idle
    /// streams (never `keep`), then evicts the oldest blocks. Stops when nothing is left
    /// to free.
    fn make_room(&mut self, t: u32, keep: usize, cost: impl Fn(&History) -> usize) {
        while self.bytes() + cost(self) > self.limits.max_bytes {
            if self.forget_one_idle(keep) {
                continue;
            }
            if !self.evict_oldest_block(t) {
                break;
            }
        }
    }

    /// Forgets the longest-queued idle stream other than `keep`, whatever its age (the
    /// byte bound is reached). False when there is none.
    fn forget_one_idle(&mut self, keep: usize) -> bool {
        let mut skipped_keep = None;
        let mut forgot = false;
        while let Some(mark) = self.idle.pop_front() {
            let Some(s) = self.streams.get_mut(mark.index as usize) else {
                continue;
            };
            if s.generation != mark.generation {
                continue;
            }
            if mark.index as usize == keep {
                skipped_keep = Some(mark);
                continue;
            }
            s.idle_queued = false;
            if s.forgettable() {
                self.forget(mark.index as usize);
                forgot = true;
                break;
            }
        }
        if let Some(mark) = skipped_keep {
            self.idle.push_front(mark);
        }
        forgot
    }

    /// Evicts the oldest block that holds a live entry. False when no block does.
    ///
    /// Every stream with an entry in it is listed in its `streams` (a stale index, of a
    /// stream forgotten since and its slot reused, names a stream that has no entry in
    /// the block: checking it costs a scan and changes nothing).
    fn evict_oldest_block(&mut self, t: u32) -> bool {
        self.pop_dead_blocks();
        let Some(at) = self.blocks.iter().position(|b| b.live > 0) else {
            return false;
        };
        let number = self.first_block.wrapping_add(at as u32);
        let streams = std::mem::take(&mut self.blocks[at].streams);
        for index in streams {
            let index = index as usize;
            if !self.streams.contains(index) {
                continue;
            }
            self.expire_stream(index, t);
            if self.streams[index]
                .entries
                .iter()
                .any(|e| e.block == number)
            {
                self.reset(index);
            }
        }
        let at = number.wrapping_sub(self.first_block) as usize;
        debug_assert!(
            self.blocks.get(at).is_none_or(|b| b.live == 0),
            "block {number} evicted but still live"
        );
        if self.open_block == Some(number) {
            self.seal_open_block();
        }
        self.pop_dead_blocks();
        true
    }

    /// Queues stream `index` for idle forgetting if it is forgettable and not queued.
    fn maybe_queue_idle(&mut self, index: usize) {
        let s = &mut self.streams[index];
        if s.idle_queued || !s.forgettable() {
            return;
        }
        s.idle_queued = true;
        self.idle.push_back(IdleMark {
            index: index as u32,
            generation: s.generation,
            since: s.last_active,
        });
    }

    /// Removes stream `index`'s state (it has no entries).
    fn forget(&mut self, index: usize) {
        let s = self.streams.remove(index);
        debug_assert!(s.entries.is_empty(), "forgot a stream with entries");
        self.state_bytes -= s.overhead();
        if s.user {
            self.users.remove(&s.key);
        } else {
            self.channels.remove(&s.key);
        }
        self.forgotten_streams += 1;
    }

    /// Recovers `stream` from `since`: the decision of
    /// [`super::position::decide`] with at most `max_missing` messages, and the frames
    /// when recovered. Creates the stream's state if it has none (a fresh epoch: the
    /// answer is then not recovered, with the position to hold from now on).
    pub fn recover(
        &mut self,
        stream: Stream<'_>,
        since: Since,
        max_missing: u64,
        now: Instant,
    ) -> Recovery {
        let (index, position) = self.read_access(stream, now);
        let s = &self.streams[index];
        let decision = decide(since, position, s.first_seq(), max_missing);
        let frames = match decision {
            RecoveryDecision::Recover { from, to } if from <= to => {
                let skip = (from - s.first_seq()) as usize;
                self.frames(index, skip, usize::MAX)
            }
            _ => Vec::new(),
        };
        Recovery {
            position,
            decision,
            frames,
        }
    }

    /// Reads up to `limit` kept messages of `stream` as frames, oldest first: those after
    /// `since.seq` when `since` is in the current epoch, otherwise from the oldest kept.
    /// Creates the stream's state if it has none.
    pub fn read(
        &mut self,
        stream: Stream<'_>,
        since: Option<Since>,
        limit: usize,
        now: Instant,
    ) -> HistoryPage {
        let (index, position) = self.read_access(stream, now);
        let s = &self.streams[index];
        let first_kept = s.first_seq();
        let after = match since {
            Some(since) if since.epoch == Some(s.epoch) => since.seq.min(s.top),
            _ => 0,
        };
        let first_seq = first_kept.max(after + 1);
        let skip = (first_seq - first_kept) as usize;
        let top = s.top;
        let frames = self.frames(index, skip, limit);
        HistoryPage {
            position,
            first_seq: if frames.is_empty() {
                top + 1
            } else {
                first_seq
            },
            frames,
        }
    }

    /// Timer work at `now` (the engine calls it about once a second): drops expired
    /// messages block by block, and forgets streams idle for
    /// [`HistoryLimits::idle_forget`] (at most [`FORGET_PER_TICK`] per call).
    pub fn tick(&mut self, now: Instant) {
        let t = self.secs(now);
        let first = self.first_block;
        let due: Vec<u32> = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.live > 0 && b.max_expires <= t)
            .map(|(at, _)| first.wrapping_add(at as u32))
            .collect();
        for number in due {
            // Blocks before this one may have been popped while expiring earlier ones.
            let at = number.wrapping_sub(self.first_block) as usize;
            let Some(block) = self.blocks.get_mut(at) else {
                continue;
            };
            for index in std::mem::take(&mut block.streams) {
                if self.streams.contains(index as usize) {
                    self.expire_stream(index as usize, t);
                }
            }
            let at = number.wrapping_sub(self.first_block) as usize;
            debug_assert!(
                self.blocks.get(at).is_none_or(|b| b.live == 0),
                "an expired block kept a live entry"
            );
        }
        // An open block nobody's entry is in any more: give its memory back (and its
        // stream list, emptied above, can never miss a writer).
        if let Some(number) = self.open_block
            && self.block_mut(number).live == 0
        {
            self.seal_open_block();
        }
        self.pop_dead_blocks();
        let mut forgotten = 0;
        while forgotten < FORGET_PER_TICK {
            let Some(mark) = self.idle.front().copied() else {
                break;
            };
            if mark.since.saturating_add(self.idle_secs) > t {
                break;
            }
            self.idle.pop_front();
            let Some(s) = self.streams.get_mut(mark.index as usize) else {
                continue;
            };
            if s.generation != mark.generation {
                continue;
            }
            s.idle_queued = false;
            if !s.forgettable() {
                continue; // queued again when it becomes forgettable
            }
            if s.last_active.saturating_add(self.idle_secs) <= t {
                self.forget(mark.index as usize);
                forgotten += 1;
            } else {
                // Active since it was queued: queue it again from its last activity.
                self.maybe_queue_idle(mark.index as usize);
            }
        }
    }

    /// Checks every invariant of the module docs; panics with the state on a violation.
    /// For tests (it walks everything).
    pub fn check_invariants(&self) {
        let mut live = vec![0u32; self.blocks.len()];
        let mut messages = 0;
        let mut slots = 0;
        let mut state = 0;
        for (index, s) in &self.streams {
            messages += s.entries.len();
            slots += s.entries.capacity();
            state += s.overhead();
            assert!(
                s.entries.len() as u64 <= s.top,
                "{} more entries than seqs",
                s.key
            );
            let size = self.namespaces.get(s.namespace).history_size as usize;
            assert!(
                s.entries.len() <= size,
                "{}: {} entries",
                s.key,
                s.entries.len()
            );
            assert!(
                s.entries.capacity() <= size.max(4),
                "{}: ring capacity {}",
                s.key,
                s.entries.capacity()
            );
            let map = if s.user { &self.users } else { &self.channels };
            assert_eq!(
                map.get(&s.key).copied(),
                Some(index as u32),
                "{} not indexed",
                s.key
            );
            let mut last_expiry = 0;
            for e in &s.entries {
                let at = e.block.wrapping_sub(self.first_block) as usize;
                assert!(at < self.blocks.len(), "{}: entry in a popped block", s.key);
                assert!(
                    e.range().end <= self.blocks[at].data.len(),
                    "{}: entry past its block's data",
                    s.key
                );
                live[at] += 1;
                assert!(
                    self.blocks[at].streams.contains(&(index as u32)),
                    "block {} does not list {}",
                    e.block,
                    s.key
                );
                assert!(e.expires >= last_expiry, "{}: expiries out of order", s.key);
                last_expiry = e.expires;
            }
        }
        assert_eq!(
            self.channels.len() + self.users.len(),
            self.streams.len(),
            "index size"
        );
        let mut block_bytes = 0;
        for (at, b) in self.blocks.iter().enumerate() {
            assert_eq!(b.live, live[at], "block {} live count", at);
            let number = self.first_block.wrapping_add(at as u32);
            if b.live > 0 || self.open_block == Some(number) {
                block_bytes += b.data.capacity();
            } else {
                assert_eq!(b.data.capacity(), 0, "dead block {number} holds memory");
            }
        }
        if let Some(front) = self.blocks.front() {
            assert!(
                front.live > 0 || self.open_block == Some(self.first_block),
                "a dead block at the front"
            );
        }
        assert_eq!(messages, self.messages, "message count");
        assert_eq!(slots, self.entry_slots, "entry slots");
        assert_eq!(state, self.state_bytes, "state bytes");
        assert_eq!(block_bytes, self.block_bytes, "block bytes");
    }
}

#[cfg(test)]
mod tests;
