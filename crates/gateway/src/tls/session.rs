//! One connection's TLS, sans-IO: ciphertext in, plaintext out, and back.
//!
//! Built on rustls's unbuffered server API (`UnbufferedServerConnection`,
//! `process_tls_records`), so the session owns no read or write buffer of its own:
//!
//! * **In.** The worker reads the socket into its shared read buffer, behind the bytes
//!   of an incomplete record this session kept from the last read
//!   ([`TlsSession::restore_partial`] copies them to the front), and calls
//!   [`TlsSession::read_tls`] on the whole. rustls decrypts each record in place there;
//!   the plaintext is appended to `plain`, a buffer the worker shares between its
//!   connections, which then goes to `Conn::handle_input`. Handshake records produce
//!   the session's answer (queued as ciphertext). What is left of the input after the
//!   last complete record is copied into `partial` (exactly its size); nothing else
//!   stays.
//! * **Out.** [`TlsSession::encrypt`] turns plaintext (the frames `Conn` queued) into
//!   records appended to the ciphertext queue; [`TlsSession::pending`] and
//!   [`TlsSession::consume`] hand it to the socket. The queue's heap is freed the moment
//!   it has all been written.
//! * **End.** [`TlsSession::queue_close_notify`] after the WebSocket closing handshake; a
//!   protocol error queues rustls's fatal alert; a first byte that starts an HTTP request
//!   (`GET /…`) instead of a TLS record gets a plain-text `400 Bad Request` saying the
//!   port speaks TLS ([`PLAIN_HTTP_REFUSAL`]).
//!
//! Invariants: `partial` is empty unless the last input ended inside a record (and
//! then holds exactly that tail); `out[sent..]` is the unsent ciphertext and `out` holds
//! no heap when it is empty; after a failure all further input is discarded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{HandshakeKind, ServerConfig};

/// The answer to a plain-HTTP request on a TLS port (then the connection closes).
pub const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 64\r\n\
Connection: close\r\n\
\r\n\
This port speaks TLS: connect with wss:// (or https://) instead\n";

/// The most a session keeps of an incomplete record (or handshake message spread over
/// records) between reads: a TLS record is at most 16 KiB of plaintext plus 2 KiB of
/// expansion and its header; a handshake message beyond this is refused.
pub const MAX_PARTIAL_BYTES: usize = 20 << 10;

/// The smallest shared read buffer a worker serving TLS may use: room for a kept
/// partial record and a full record behind it.
pub const MIN_READ_BUFFER: usize = 2 * MAX_PARTIAL_BYTES;

/// Per-record overhead reserved when encrypting: header, TLS 1.2 explicit nonce, tag,
/// TLS 1.3 content type (the exact need is asked of rustls if this is short).
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;

/// Largest plaintext per record (TLS's limit).
const MAX_FRAGMENT: usize = 16 << 10;

/// A plaintext fatal `decode_error` alert record (TLS 1.2 framing, which TLS 1.3 peers
/// accept before the handshake is encrypted).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// A completed TLS handshake.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The session was resumed (a ticket or a TLS 1.2 session ID), not a full handshake.
    pub resumed: bool,
    /// From the session's start (the accept) to the handshake's end.
    pub took: Duration,
}

/// Why a session failed; the connection is closed after sending what is queued.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsFailure {
    /// The first bytes were a plain HTTP request: the plain-text 400 is queued.
    PlainHttp,
    /// rustls refused the peer's bytes (garbage, a bad record, a failed handshake);
    /// its fatal alert is queued.
    Protocol(rustls::Error),
    /// An incomplete record or handshake message grew past [`MAX_PARTIAL_BYTES`].
    TooLarge,
    /// Output could not be encrypted (the session cannot send application data).
    Encrypt(String),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFailure::PlainHttp => f.write_str("plain HTTP on the TLS port"),
            TlsFailure::Protocol(e) => write!(f, "TLS: {e}"),
            TlsFailure::TooLarge => f.write_str("TLS record or handshake message too large"),
            TlsFailure::Encrypt(e) => write!(f, "TLS encrypt: {e}"),
        }
    }
}

/// What one [`TlsSession::read_tls`] call found besides plaintext.
#[derive(Debug, Default, PartialEq)]
pub struct ReadOutcome {
    /// The handshake completed during this call.
    pub handshake: Option<Handshake>,
    /// The peer sent close_notify: no more input will come.
    pub peer_closed: bool,
    /// The session failed; the connection must close once [`TlsSession::pending`] is
    /// written.
    pub failure: Option<TlsFailure>,
}

/// One connection's TLS state. See the module docs.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext for the socket; `out[sent..]` is unsent. No heap when all is sent.
    out: Vec<u8>,
    sent: usize,
    /// The tail of the last input that did not complete a record.
    partial: Vec<u8>,
    /// When the session started, until the handshake completes.
    started: Option<Instant>,
    /// Some input has been seen (the plain-HTTP check looks at the first byte only).
    seen_input: bool,
    /// Failed (or refused plain HTTP): input is ignored, only `out` is still written.
    failed: bool,
    /// close_notify is queued (or was sent).
    close_notify: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("pending", &self.queued_bytes())
            .field("partial", &self.partial.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What a step of the output-only loop decided.
enum Step<R> {
    Continue,
    Done(R),
    Stop,
}

impl TlsSession {
    /// A session for a connection accepted at `now`, served with `config`.
    ///
    /// # Errors
    /// Only if rustls refuses the config (it does not for ours).
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            out: Vec::new(),
            sent: 0,
            partial: Vec::new(),
            started: Some(now),
            seen_input: false,
            failed: false,
            close_notify: false,
        })
    }

    /// True until the handshake has completed (also after a failed one).
    pub fn is_handshaking(&self) -> bool {
        self.started.is_some()
    }

    /// True once the session failed (or refused plain HTTP).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// True once close_notify has been queued.
    pub fn close_notify_queued(&self) -> bool {
        self.close_notify
    }

    /// True while application data can be encrypted.
    pub fn can_encrypt(&self) -> bool {
        !self.failed && !self.is_handshaking() && !self.close_notify
    }

    /// Copies the kept tail of an incomplete record to the front of `buf` (the worker's
    /// read buffer) and returns its length; the caller reads the socket into the rest and
    /// passes the whole to [`TlsSession::read_tls`]. The tail stays kept until then (a
    /// read that would block loses nothing).
    pub fn restore_partial(&self, buf: &mut [u8]) -> usize {
        let n = self.partial.len().min(buf.len());
        buf[..n].copy_from_slice(&self.partial[..n]);
        n
    }

    /// Processes `input` (the restored tail followed by the bytes just read; decrypted
    /// in place) at `now`: appends application data to `plain`, queues handshake answers
    /// and alerts as ciphertext, and keeps the tail of an incomplete record.
    pub fn read_tls(&mut self, now: Instant, input: &mut [u8], plain: &mut Vec<u8>) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        if self.failed {
            return outcome;
        }
        if !self.seen_input && !input.is_empty() {
            self.seen_input = true;
            // A TLS record starts with its content type (0x14..=0x18); a request line
            // with an upper-case method.
            if input[0].is_ascii_uppercase() {
                self.fail();
                self.out.extend_from_slice(PLAIN_HTTP_REFUSAL);
                outcome.failure = Some(TlsFailure::PlainHttp);
                return outcome;
            }
        }
        let mut used = 0;
        let mut error: Option<rustls::Error> = None;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut input[used..]);
            let mut extra = 0;
            let stop = match state {
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut bad = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                extra += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                bad = Some(e);
                                break;
                            }
                        }
                    }
                    let stop = bad.is_some();
                    error = bad;
                    stop
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, &mut self.out);
                    false
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The records are in `out`; the worker writes them.
                    transmit.done();
                    false
                }
                Ok(ConnectionState::PeerClosed) => {
                    outcome.peer_closed = true;
                    false
                }
                Ok(ConnectionState::Closed) => {
                    outcome.peer_closed = true;
                    true
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => true,
                // Early data is never enabled (`max_early_data_size` stays 0).
                Ok(_) => true,
                Err(e) => {
                    error = Some(e);
                    true
                }
            };
            used += discard + extra;
            if stop {
                break;
            }
        }
        if let Some(e) = error {
            self.queue_alert(&mut input[used..]);
            self.fail();
            outcome.failure = Some(TlsFailure::Protocol(e));
            return outcome;
        }
        let left = &input[used..];
        if left.len() > MAX_PARTIAL_BYTES {
            self.fail();
            outcome.failure = Some(TlsFailure::TooLarge);
            return outcome;
        }
        if left.is_empty() {
            self.partial = Vec::new();
        } else {
            self.partial = left.to_vec();
        }
        if let Some(started) = self.started
            && !self.conn.is_handshaking()
        {
            self.started = None;
            outcome.handshake = Some(Handshake {
                resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
                took: now.saturating_duration_since(started),
            });
        }
        outcome
    }

    /// Encrypts `plaintext` as application data, appending the records to the
    /// ciphertext queue.
    ///
    /// # Errors
    /// When application data cannot be sent (still handshaking, failed, closed).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<(), TlsFailure> {
        if !self.can_encrypt() {
            return Err(TlsFailure::Encrypt("not established".to_owned()));
        }
        if plaintext.is_empty() {
            return Ok(());
        }
        let result = self.with_write_traffic(|traffic, out| {
            let records = plaintext.len().div_ceil(MAX_FRAGMENT);
            let mut room = plaintext.len() + records * RECORD_OVERHEAD;
            let start = out.len();
            loop {
                out.resize(start + room, 0);
                match traffic.encrypt(plaintext, &mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) if required_size > room => room = required_size,
                    Err(e) => {
                        out.truncate(start);
                        return Err(TlsFailure::Encrypt(e.to_string()));
                    }
                }
            }
        });
        result.unwrap_or_else(|| Err(TlsFailure::Encrypt("no write state".to_owned())))
    }

    /// Queues close_notify (once), after everything queued so far. Does nothing before
    /// the handshake completed or after a failure.
    pub fn queue_close_notify(&mut self) {
        if self.close_notify || self.failed || self.is_handshaking() {
            return;
        }
        self.close_notify = true;
        let _ = self.with_write_traffic(|traffic, out| {
            let start = out.len();
            out.resize(start + 64, 0);
            match traffic.queue_close_notify(&mut out[start..]) {
                Ok(n) => out.truncate(start + n),
                Err(_) => out.truncate(start),
            }
        });
    }

    /// The ciphertext waiting for the socket.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Unsent ciphertext bytes (the slow-consumer bound counts these).
    pub fn queued_bytes(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Records that `written` bytes of [`TlsSession::pending`] went to the socket;
    /// frees the queue once all of it has.
    pub fn consume(&mut self, written: usize) {
        self.sent = (self.sent + written).min(self.out.len());
        if self.sent == self.out.len() {
            self.out = Vec::new();
            self.sent = 0;
        }
    }

    /// Drops the unsent ciphertext (the socket failed).
    pub fn discard_output(&mut self) {
        self.out = Vec::new();
        self.sent = 0;
    }

    /// Heap bytes this session holds in its own buffers (not rustls's state).
    pub fn buffered_bytes(&self) -> usize {
        self.out.capacity() + self.partial.capacity()
    }

    /// After rustls reported an error it has queued its fatal alert: encode it. One
    /// pass only, over the input left (rustls hands out queued records before it looks
    /// at input, and a second pass would deframe, and alert, again).
    fn queue_alert(&mut self, rest: &mut [u8]) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        let before = self.out.len();
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            encode_into(&mut encode, &mut self.out);
        }
        // Some refusals (a handshake message over rustls's size limit, records
        // interleaved with a handshake message) come without an alert: during the
        // handshake, send a plaintext decode_error so the peer learns why.
        if self.out.len() == before && self.is_handshaking() {
            self.out.extend_from_slice(&DECODE_ERROR_ALERT);
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.partial = Vec::new();
    }

    /// Runs the output-only states (encoding queued handshake records, such as TLS 1.3
    /// tickets) until rustls offers `WriteTraffic`, then `f` on it. `None` if it never
    /// does (handshaking, failed).
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        // The kept tail is handed back so that rustls's view of a message joined across
        // records stays consistent; it holds no complete record, so nothing is consumed.
        for _ in 0..16 {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial[..]);
            let step = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, &mut self.out);
                    Step::Continue
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Step::Continue
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match f.take() {
                    Some(f) => Step::Done(f(&mut traffic, &mut self.out)),
                    None => Step::Stop,
                },
                _ => Step::Stop,
            };
            if discard > 0 {
                self.partial.drain(..discard.min(self.partial.len()));
                if self.partial.is_empty() {
                    self.partial = Vec::new();
                }
            }
            match step {
                Step::Continue => {}
                Step::Done(r) => return Some(r),
                Step::Stop => return None,
            }
        }
        None
    }
}

/// Encodes one queued handshake record (or alert) at the end of `out`.
fn encode_into(encode: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match encode.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}
