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

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{
    ConnectionTrafficSecrets, ContentType, HandshakeKind, ProtocolVersion, ServerConfig,
    SupportedCipherSuite,
};

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

/// Largest ciphertext record accepted: 2^14 bytes of plaintext plus 2 KiB of expansion
/// (RFC 5246's bound; TLS 1.3 allows only 256).
const MAX_CIPHERTEXT: usize = (16 << 10) + 2048;

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

/// One direction's record protection after the handshake: the AEAD key, the static IV
/// and the next sequence number. The AEAD state itself (key schedule, GHASH tables) is
/// built from these for each batch of records and dropped after it: an idle connection
/// keeps 52 bytes per direction instead of the provider's prepared keys.
struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    /// From rustls's extracted secrets; `None` for a key that is not 32 bytes (the
    /// provider offers only AES-256-GCM and ChaCha20-Poly1305, see `config::provider`).
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<(Direction, bool)> {
        let (key, iv, chacha) = match secrets {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (key, iv, false),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv, true),
            _ => return None,
        };
        let key: [u8; 32] = key.as_ref().try_into().ok()?;
        let iv: [u8; 12] = iv.as_ref().try_into().ok()?;
        Some((Direction { key, iv, seq }, chacha))
    }
}

/// The established session's record layer (see [`Direction`]).
struct Keys {
    suite: SupportedCipherSuite,
    /// ChaCha20-Poly1305 (else AES-256-GCM): TLS 1.2 builds their nonces differently.
    chacha: bool,
    tx: Direction,
    rx: Direction,
    /// The peer's close_notify arrived: no more input is read.
    peer_closed: bool,
}

impl Keys {
    fn encrypter(&self) -> Box<dyn MessageEncrypter> {
        let key = AeadKey::from(self.tx.key);
        match self.suite {
            SupportedCipherSuite::Tls13(suite) => {
                suite.aead_alg.encrypter(key, Iv::from(self.tx.iv))
            }
            SupportedCipherSuite::Tls12(suite) if self.chacha => {
                suite.aead_alg.encrypter(key, &self.tx.iv, &[])
            }
            // GCM: a 4-byte salt, and the 8 bytes the explicit nonces start from.
            SupportedCipherSuite::Tls12(suite) => {
                suite
                    .aead_alg
                    .encrypter(key, &self.tx.iv[..4], &self.tx.iv[4..])
            }
        }
    }

    fn decrypter(&self) -> Box<dyn MessageDecrypter> {
        let key = AeadKey::from(self.rx.key);
        match self.suite {
            SupportedCipherSuite::Tls13(suite) => {
                suite.aead_alg.decrypter(key, Iv::from(self.rx.iv))
            }
            SupportedCipherSuite::Tls12(suite) if self.chacha => {
                suite.aead_alg.decrypter(key, &self.rx.iv)
            }
            SupportedCipherSuite::Tls12(suite) => suite.aead_alg.decrypter(key, &self.rx.iv[..4]),
        }
    }

    /// Past the suite's confidentiality limit no more records may use these keys (we do
    /// not rekey: the connection is closed, long after any keepalive traffic gets there).
    fn exhausted(&self) -> bool {
        let limit = match self.suite {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(suite) => suite.common.confidentiality_limit,
        };
        self.tx.seq >= limit || self.rx.seq >= limit
    }
}

/// One connection's TLS state. See the module docs.
///
/// Two stages: during the handshake a boxed rustls `UnbufferedServerConnection`; once
/// it completes (and its last records, the session tickets, are encoded), rustls hands
/// over the traffic secrets (`dangerous_into_kernel_connection`, the API made for kTLS)
/// and the whole rustls state is freed. From then on records are protected with the
/// provider's own AEAD implementations (`MessageEncrypter`/`MessageDecrypter`), built
/// per batch from the [`Keys`] this session keeps.
pub struct TlsSession {
    /// The handshake; `None` once it is done.
    handshake: Option<Box<UnbufferedServerConnection>>,
    /// The record layer once established.
    keys: Option<Keys>,
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

impl TlsSession {
    /// A session for a connection accepted at `now`, served with `config` (which must
    /// allow secret extraction: `config::server_config` sets it).
    ///
    /// # Errors
    /// Only if rustls refuses the config (it does not for ours).
    pub fn new(config: Arc<ServerConfig>, now: Instant) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            handshake: Some(Box::new(UnbufferedServerConnection::new(config)?)),
            keys: None,
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
        !self.failed && self.keys.is_some() && !self.close_notify
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
        let used = if self.keys.is_some() {
            self.read_records(input, plain, &mut outcome)
        } else {
            self.read_handshake(now, input, plain, &mut outcome)
        };
        if outcome.failure.is_some() {
            return outcome;
        }
        let left = &input[used..];
        if left.len() > MAX_PARTIAL_BYTES {
            self.fail();
            outcome.failure = Some(TlsFailure::TooLarge);
            return outcome;
        }
        if left.is_empty() || self.keys.as_ref().is_some_and(|k| k.peer_closed) {
            self.partial = Vec::new();
        } else {
            self.partial = left.to_vec();
        }
        outcome
    }

    /// The handshake stage of [`TlsSession::read_tls`]; returns the input bytes used.
    fn read_handshake(
        &mut self,
        now: Instant,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        outcome: &mut ReadOutcome,
    ) -> usize {
        let Some(conn) = self.handshake.as_deref_mut() else {
            return 0;
        };
        let mut used = 0;
        let mut error: Option<rustls::Error> = None;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut input[used..]);
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
            return used;
        }
        if let Some(started) = self.started
            && !conn.is_handshaking()
        {
            self.started = None;
            outcome.handshake = Some(Handshake {
                resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                took: now.saturating_duration_since(started),
            });
            if let Err(failure) = self.take_over_records() {
                self.fail();
                outcome.failure = Some(failure);
            }
        }
        used
    }

    /// The handshake is over and its last records are encoded: takes the traffic
    /// secrets from rustls and frees its state.
    fn take_over_records(&mut self) -> Result<(), TlsFailure> {
        let Some(conn) = self.handshake.take() else {
            return Ok(());
        };
        let suite = conn
            .negotiated_cipher_suite()
            .ok_or_else(|| TlsFailure::Encrypt("no cipher suite".to_owned()))?;
        let (secrets, _kernel) = (*conn)
            .dangerous_into_kernel_connection()
            .map_err(|e| TlsFailure::Encrypt(format!("cannot take over the keys: {e}")))?;
        let unsupported = || TlsFailure::Encrypt(format!("unsupported suite {suite:?}"));
        let (tx, chacha) = Direction::new(secrets.tx.0, secrets.tx.1).ok_or_else(unsupported)?;
        let (rx, _) = Direction::new(secrets.rx.0, secrets.rx.1).ok_or_else(unsupported)?;
        self.keys = Some(Keys {
            suite,
            chacha,
            tx,
            rx,
            peer_closed: false,
        });
        Ok(())
    }

    /// The established stage of [`TlsSession::read_tls`]: decrypts every complete record
    /// in place; returns the input bytes used.
    fn read_records(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        outcome: &mut ReadOutcome,
    ) -> usize {
        let Some(keys) = self.keys.as_mut() else {
            return 0;
        };
        if keys.peer_closed {
            return input.len();
        }
        let mut decrypter: Option<Box<dyn MessageDecrypter>> = None;
        let mut at = 0;
        let mut alert = None;
        while input.len() - at >= 5 {
            let header = &input[at..at + 5];
            let typ = ContentType::from(header[0]);
            let version = ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]]));
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len > MAX_CIPHERTEXT {
                alert = Some((22, rustls::Error::PeerSentOversizedRecord)); // record_overflow
                break;
            }
            if input.len() - at - 5 < len {
                break; // the rest is an incomplete record: kept
            }
            if keys.exhausted() {
                alert = Some((0, rustls::Error::EncryptError));
                break;
            }
            let d = decrypter.get_or_insert_with(|| keys.decrypter());
            let record = InboundOpaqueMessage::new(typ, version, &mut input[at + 5..at + 5 + len]);
            let message = match d.decrypt(record, keys.rx.seq) {
                Ok(message) => message,
                Err(e) => {
                    alert = Some((20, e)); // bad_record_mac
                    break;
                }
            };
            keys.rx.seq += 1;
            at += 5 + len;
            match message.typ {
                ContentType::ApplicationData => plain.extend_from_slice(message.payload),
                ContentType::Alert if message.payload.get(1) == Some(&0) => {
                    // close_notify: what follows is not read.
                    keys.peer_closed = true;
                    outcome.peer_closed = true;
                    return input.len();
                }
                ContentType::Alert => {
                    alert = Some((
                        0,
                        rustls::Error::AlertReceived(rustls::AlertDescription::from(
                            message.payload.get(1).copied().unwrap_or(0),
                        )),
                    ));
                    break;
                }
                // Post-handshake handshake messages (a TLS 1.3 KeyUpdate, a TLS 1.2
                // renegotiation) are not supported: the connection is closed.
                _ => {
                    alert = Some((
                        10,
                        rustls::Error::General(format!(
                            "unsupported {:?} record after the handshake",
                            message.typ
                        )),
                    ));
                    break;
                }
            }
        }
        if let Some((description, error)) = alert {
            if description != 0 {
                let _ = self.encrypt_records(ContentType::Alert, [&[2, description][..]]);
            }
            self.fail();
            outcome.failure = Some(TlsFailure::Protocol(error));
        }
        at
    }

    /// Encrypts `parts` as application data (one record each, split at 16 KiB),
    /// appending the records to the ciphertext queue.
    ///
    /// # Errors
    /// When application data cannot be sent (still handshaking, failed, closed).
    pub fn encrypt<'a>(
        &mut self,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), TlsFailure> {
        if !self.can_encrypt() {
            return Err(TlsFailure::Encrypt("not established".to_owned()));
        }
        self.encrypt_records(ContentType::ApplicationData, parts)
    }

    fn encrypt_records<'a>(
        &mut self,
        typ: ContentType,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), TlsFailure> {
        let Some(keys) = self.keys.as_mut() else {
            return Err(TlsFailure::Encrypt("not established".to_owned()));
        };
        for part in parts {
            for chunk in part.chunks(MAX_FRAGMENT) {
                if keys.exhausted() {
                    return Err(TlsFailure::Encrypt(
                        "confidentiality limit reached".to_owned(),
                    ));
                }
                // One sealing key per record: aws-lc's TLS sealing keys insist that the
                // nonces one key seals with count up from its first, which a key made
                // for a batch that starts mid-sequence does not satisfy past one record.
                let mut e = keys.encrypter();
                let message = OutboundPlainMessage {
                    typ,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(chunk),
                };
                let record = e
                    .encrypt(message, keys.tx.seq)
                    .map_err(|e| TlsFailure::Encrypt(e.to_string()))?;
                keys.tx.seq += 1;
                self.out.extend_from_slice(&record.encode());
            }
        }
        Ok(())
    }

    /// Queues close_notify (once), after everything queued so far. Does nothing before
    /// the handshake completed or after a failure.
    pub fn queue_close_notify(&mut self) {
        if self.close_notify || self.failed || self.keys.is_none() {
            return;
        }
        self.close_notify = true;
        let _ = self.encrypt_records(ContentType::Alert, [&[1u8, 0][..]]);
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
        let Some(conn) = self.handshake.as_deref_mut() else {
            return;
        };
        let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
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
        // Nothing more will be read or encrypted: free the handshake state at once.
        self.handshake = None;
        self.keys = None;
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
