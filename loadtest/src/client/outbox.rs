//! [`Outbox`]: where a client puts the bytes it wants sent.

use crate::codec::{self, Control, OpCode};
use crate::handshake;

/// The bytes one client call wants sent, already framed and masked. The loop owns
/// one `Outbox` for all its clients: it hands it (empty) to a [`super::Client`] call,
/// writes [`Outbox::bytes`] to that client's socket afterwards and clears it, so an
/// idle client holds no output buffer of its own.
///
/// Every frame gets a fresh mask from the outbox's own random source (RFC 6455 §5.3
/// wants a mask the server cannot predict; a cheap PRNG is enough for a load
/// generator).
#[derive(Debug)]
pub struct Outbox {
    bytes: Vec<u8>,
    rng: fastrand::Rng,
}

impl Outbox {
    /// An empty outbox drawing masks from `rng`.
    pub fn new(rng: fastrand::Rng) -> Self {
        Self {
            bytes: Vec::with_capacity(4096),
            rng,
        }
    }

    /// Everything queued since the last [`Outbox::clear`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Forgets what was queued (the buffer's capacity stays for the next client).
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Queues the HTTP upgrade request (see [`handshake::write_request`]).
    pub fn upgrade_request(&mut self, host_header: &str, path_and_query: &str, nonce: [u8; 16]) {
        handshake::write_request(&mut self.bytes, host_header, path_and_query, nonce);
    }

    /// Queues one masked, final frame.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask = self.mask();
        codec::encode_frame(&mut self.bytes, opcode, payload, mask);
    }

    /// Queues a masked close frame with `code`, or with an empty payload for `None`.
    pub fn close(&mut self, code: Option<u16>) {
        let mask = self.mask();
        match code {
            Some(code) => codec::encode_close(&mut self.bytes, code, mask),
            None => {
                codec::encode_frame(&mut self.bytes, OpCode::Control(Control::Close), &[], mask)
            }
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        self.rng.u32(..).to_ne_bytes()
    }
}
