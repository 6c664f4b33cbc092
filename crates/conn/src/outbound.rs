//! The per-connection output queue: whole frames waiting for the socket.
//!
//! Every chunk is one complete unit on the wire (the HTTP response, or one WebSocket
//! frame), so the queue can be cut between chunks without corrupting the stream.
//! Chunks are [`Bytes`]: frames built for this connection are owned, push deliveries
//! are shared by every subscriber (reference-counted, never copied per subscriber).
//!
//! Invariant: `queued == sum(chunk.len()) - head_written`, and an empty queue holds
//! no heap memory (the deque is replaced by an unallocated one when it drains).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

/// Frames waiting to be written, oldest first.
#[derive(Debug, Default)]
pub struct Outbound {
    chunks: VecDeque<Bytes>,
    /// Bytes of `chunks[0]` already written.
    head_written: usize,
    /// Unwritten bytes in the whole queue.
    queued: usize,
}

impl Outbound {
    /// Appends a whole frame.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.queued += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Unwritten bytes.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// True when adding `extra` bytes would take a non-empty queue past `limit`.
    ///
    /// An empty queue always admits one frame, however large (its size is bounded
    /// elsewhere: by `max_message_size` for echoes, by the publish body limit for
    /// deliveries), so `limit` bounds the *backlog* a peer leaves unread, and a
    /// queue never holds more than `limit` plus one frame.
    pub fn would_overflow(&self, extra: usize, limit: usize) -> bool {
        self.queued > 0 && self.queued + extra > limit
    }

    /// True when the first chunk has been partly written: cutting the queue must keep it.
    pub fn head_is_partial(&self) -> bool {
        self.head_written > 0
    }

    /// Fills `iov` with the unwritten bytes, oldest first, and returns how many slices
    /// were filled (for one `writev`).
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let bytes = if i == 0 {
                &chunk[self.head_written..]
            } else {
                &chunk[..]
            };
            iov[n] = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Records that the first `written` unwritten bytes went out.
    ///
    /// # Panics
    /// If `written` exceeds [`Outbound::queued_bytes`] (a bug in the caller).
    pub fn consume(&mut self, mut written: usize) {
        assert!(
            written <= self.queued,
            "consumed {written} of {} queued bytes",
            self.queued
        );
        self.queued -= written;
        while written > 0 {
            let head_left = self.chunks[0].len() - self.head_written;
            if written < head_left {
                self.head_written += written;
                break;
            }
            written -= head_left;
            self.chunks.pop_front();
            self.head_written = 0;
        }
        if self.queued == 0 {
            // Give the deque's buffer back: an idle connection holds no heap memory.
            self.chunks = VecDeque::new();
            self.head_written = 0;
        }
        debug_assert_eq!(
            self.queued,
            self.chunks.iter().map(Bytes::len).sum::<usize>() - self.head_written,
            "queued bytes out of sync"
        );
    }

    /// Drops every chunk not yet started, keeping a partly written head so the stream
    /// stays frame-aligned. Returns how many bytes were dropped.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_is_partial());
        let dropped: usize = self.chunks.iter().skip(keep).map(Bytes::len).sum();
        self.chunks.truncate(keep);
        self.queued -= dropped;
        if self.queued == 0 {
            self.chunks = VecDeque::new();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &Outbound) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = o.io_slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"abc"));
        o.push(Bytes::from_static(b"defg"));
        assert_eq!(o.queued_bytes(), 7);
        o.consume(2);
        assert_eq!(drain(&o), b"cdefg");
        assert!(o.head_is_partial());
        o.consume(2);
        assert_eq!(drain(&o), b"efg");
        o.consume(3);
        assert!(o.is_empty());
        assert_eq!(o.chunks.capacity(), 0, "an empty queue holds no heap");
    }

    #[test]
    fn discard_keeps_a_partly_written_frame() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"abc"));
        o.push(Bytes::from_static(b"def"));
        o.consume(1);
        assert_eq!(o.discard_unstarted(), 3);
        assert_eq!(drain(&o), b"bc");
        o.consume(2);
        o.push(Bytes::from_static(b"xyz"));
        assert_eq!(o.discard_unstarted(), 3);
        assert!(o.is_empty());
    }
}
