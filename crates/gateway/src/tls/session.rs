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

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
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

/// The AEAD an established session protects its records with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Aead {
    /// AES-128-GCM, sealed and opened with aws-lc-rs directly ([`seal_aes128`],
    /// [`open_aes128`]): rustls's public `AeadKey` is built from 32 bytes only.
    Aes128Gcm,
    /// AES-256-GCM, through the provider's `MessageEncrypter`/`MessageDecrypter`.
    Aes256Gcm,
    /// ChaCha20-Poly1305, likewise; TLS 1.2 builds its nonces unlike GCM's.
    Chacha20Poly1305,
}

/// AES-GCM's and ChaCha20-Poly1305's tag length.
const TAG_LEN: usize = 16;

/// One direction's record protection after the handshake: the AEAD key, the static IV
/// and the next sequence number. The AEAD state itself (key schedule, GHASH tables) is
/// built from these for each batch of records and dropped after it: an idle connection
/// keeps 52 bytes per direction instead of the provider's prepared keys.
///
/// Invariant: `key` holds the suite's key from its start; for AES-128-GCM that is the
/// first 16 bytes and the rest are zero.
struct Direction {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    /// From rustls's extracted secrets; `None` for a suite the provider does not offer
    /// (see `config::provider`) or a key or IV of the wrong size.
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Option<(Direction, Aead)> {
        let (key, iv, aead, key_len) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (key, iv, Aead::Aes128Gcm, 16),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (key, iv, Aead::Aes256Gcm, 32),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (key, iv, Aead::Chacha20Poly1305, 32)
            }
            _ => return None,
        };
        if key.as_ref().len() != key_len {
            return None;
        }
        let mut raw = [0u8; 32];
        raw[..key_len].copy_from_slice(key.as_ref());
        let iv: [u8; 12] = iv.as_ref().try_into().ok()?;
        Some((Direction { key: raw, iv, seq }, aead))
    }

    /// The TLS 1.3 nonce of record `seq`: the IV XOR the sequence number (RFC 8446 §5.3);
    /// also TLS 1.2 GCM's salt and explicit part, which rustls derives the same way.
    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// The established session's record layer (see [`Direction`]).
struct Keys {
    suite: SupportedCipherSuite,
    aead: Aead,
    tx: Direction,
    rx: Direction,
    /// The peer's close_notify arrived: no more input is read.
    peer_closed: bool,
}

/// One batch's record opener, built from [`Keys`] and dropped after the batch.
enum Opener {
    Provider(Box<dyn MessageDecrypter>),
    Aes128(LessSafeKey),
}

impl Keys {
    fn tls13(&self) -> bool {
        matches!(self.suite, SupportedCipherSuite::Tls13(_))
    }

    /// The AES-128-GCM key of `direction` (`None` for the other AEADs).
    fn aes128(&self, direction: &Direction) -> Result<Option<LessSafeKey>, rustls::Error> {
        if self.aead != Aead::Aes128Gcm {
            return Ok(None);
        }
        UnboundKey::new(&AES_128_GCM, &direction.key[..16])
            .map(|key| Some(LessSafeKey::new(key)))
            .map_err(|_| rustls::Error::General("bad AES-128-GCM key".to_owned()))
    }

    /// The provider's encrypter (AES-256-GCM, ChaCha20-Poly1305).
    fn encrypter(&self) -> Box<dyn MessageEncrypter> {
        let key = AeadKey::from(self.tx.key);
        match self.suite {
            SupportedCipherSuite::Tls13(suite) => {
                suite.aead_alg.encrypter(key, Iv::from(self.tx.iv))
            }
            SupportedCipherSuite::Tls12(suite) if self.aead == Aead::Chacha20Poly1305 => {
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

    fn opener(&self) -> Result<Opener, rustls::Error> {
        if let Some(key) = self.aes128(&self.rx)? {
            return Ok(Opener::Aes128(key));
        }
        let key = AeadKey::from(self.rx.key);
        Ok(Opener::Provider(match self.suite {
            SupportedCipherSuite::Tls13(suite) => {
                suite.aead_alg.decrypter(key, Iv::from(self.rx.iv))
            }
            SupportedCipherSuite::Tls12(suite) if self.aead == Aead::Chacha20Poly1305 => {
                suite.aead_alg.decrypter(key, &self.rx.iv)
            }
            SupportedCipherSuite::Tls12(suite) => suite.aead_alg.decrypter(key, &self.rx.iv[..4]),
        }))
    }

    /// Opens the record with `header` and `payload` (decrypted in place) at `rx.seq`:
    /// its content type and plaintext.
    fn open<'a>(
        &self,
        opener: &mut Opener,
        header: [u8; 5],
        payload: &'a mut [u8],
    ) -> Result<(ContentType, &'a [u8]), rustls::Error> {
        match opener {
            Opener::Provider(d) => {
                let typ = ContentType::from(header[0]);
                let version = ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]]));
                let message = d.decrypt(
                    InboundOpaqueMessage::new(typ, version, payload),
                    self.rx.seq,
                )?;
                Ok((message.typ, message.payload))
            }
            Opener::Aes128(key) => open_aes128(key, self.tls13(), &self.rx, header, payload),
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
/// provider's own AEAD implementations (`MessageEncrypter`/`MessageDecrypter`) for
/// AES-256-GCM and ChaCha20-Poly1305, and with aws-lc-rs's AES-128-GCM directly (rustls's
/// `AeadKey` takes 32 bytes only), built per batch from the [`Keys`] this session keeps.
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
        let (tx, aead) = Direction::new(secrets.tx.0, secrets.tx.1).ok_or_else(unsupported)?;
        let (rx, _) = Direction::new(secrets.rx.0, secrets.rx.1).ok_or_else(unsupported)?;
        self.keys = Some(Keys {
            suite,
            aead,
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
        let mut opener: Option<Opener> = None;
        let mut at = 0;
        let mut alert = None;
        while input.len() - at >= 5 {
            let header: [u8; 5] = [
                input[at],
                input[at + 1],
                input[at + 2],
                input[at + 3],
                input[at + 4],
            ];
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
            let opener = match &mut opener {
                Some(opener) => opener,
                None => match keys.opener() {
                    Ok(made) => opener.insert(made),
                    Err(e) => {
                        alert = Some((80, e)); // internal_error
                        break;
                    }
                },
            };
            let (typ, payload) = match keys.open(opener, header, &mut input[at + 5..at + 5 + len]) {
                Ok(opened) => opened,
                Err(e) => {
                    alert = Some((20, e)); // bad_record_mac
                    break;
                }
            };
            keys.rx.seq += 1;
            at += 5 + len;
            match typ {
                ContentType::ApplicationData => plain.extend_from_slice(payload),
                ContentType::Alert if payload.get(1) == Some(&0) => {
                    // close_notify: what follows is not read.
                    keys.peer_closed = true;
                    outcome.peer_closed = true;
                    return input.len();
                }
                ContentType::Alert => {
                    alert = Some((
                        0,
                        rustls::Error::AlertReceived(rustls::AlertDescription::from(
                            payload.get(1).copied().unwrap_or(0),
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
                            "unsupported {typ:?} record after the handshake"
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
        let aes128 = keys
            .aes128(&keys.tx)
            .map_err(|e| TlsFailure::Encrypt(e.to_string()))?;
        for part in parts {
            for chunk in part.chunks(MAX_FRAGMENT) {
                if keys.exhausted() {
                    return Err(TlsFailure::Encrypt(
                        "confidentiality limit reached".to_owned(),
                    ));
                }
                if let Some(key) = &aes128 {
                    seal_aes128(key, keys.tls13(), &keys.tx, typ, chunk, &mut self.out)
                        .map_err(|e| TlsFailure::Encrypt(e.to_string()))?;
                    keys.tx.seq += 1;
                    continue;
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

/// Appends one AES-128-GCM record of `typ` carrying `chunk` (at most 16 KiB), sealed
/// with `key` at `direction.seq`, to `out`.
///
/// TLS 1.3 (RFC 8446 §5.2): an application-data header, then `chunk || typ` sealed with
/// the header as AAD and [`Direction::nonce`]. TLS 1.2 (RFC 5288): the explicit nonce
/// (the nonce's last 8 bytes, as rustls makes it), then the sealed `chunk`, with
/// `seq || typ || version || chunk length` as AAD.
fn seal_aes128(
    key: &LessSafeKey,
    tls13: bool,
    direction: &Direction,
    typ: ContentType,
    chunk: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let nonce = direction.nonce();
    let start = out.len();
    let sealed = if tls13 {
        let [hi, lo] = record_len(chunk.len() + 1 + TAG_LEN)?;
        let header = [u8::from(ContentType::ApplicationData), 3, 3, hi, lo];
        out.extend_from_slice(&header);
        out.extend_from_slice(chunk);
        out.push(u8::from(typ));
        key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut out[start + 5..],
        )
    } else {
        let [hi, lo] = record_len(8 + chunk.len() + TAG_LEN)?;
        out.extend_from_slice(&[u8::from(typ), 3, 3, hi, lo]);
        out.extend_from_slice(&nonce[4..]);
        out.extend_from_slice(chunk);
        key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(tls12_aad(direction.seq, typ, chunk.len())),
            &mut out[start + 13..],
        )
    };
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(tag.as_ref());
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(rustls::Error::EncryptError)
        }
    }
}

/// Opens one AES-128-GCM record (its 5-byte `header`, its `payload` decrypted in place)
/// at `direction.seq`: its content type and plaintext. The inverse of [`seal_aes128`],
/// with rustls's checks (a TLS 1.3 inner plaintext with no content type, a plaintext
/// over 16 KiB).
fn open_aes128<'a>(
    key: &LessSafeKey,
    tls13: bool,
    direction: &Direction,
    header: [u8; 5],
    payload: &'a mut [u8],
) -> Result<(ContentType, &'a [u8]), rustls::Error> {
    if tls13 {
        if payload.len() < TAG_LEN {
            return Err(rustls::Error::DecryptError);
        }
        // The AAD is the header as rustls makes it (the outer type is always 23).
        let aad = [
            u8::from(ContentType::ApplicationData),
            3,
            3,
            header[3],
            header[4],
        ];
        let inner = key
            .open_in_place(
                Nonce::assume_unique_for_key(direction.nonce()),
                Aad::from(aad),
                payload,
            )
            .map_err(|_| rustls::Error::DecryptError)?;
        // data || content type || zero padding
        let Some(at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(rustls::PeerMisbehaved::IllegalTlsInnerPlaintext.into());
        };
        if at > MAX_FRAGMENT {
            return Err(rustls::Error::PeerSentOversizedRecord);
        }
        Ok((ContentType::from(inner[at]), &inner[..at]))
    } else {
        if payload.len() < 8 + TAG_LEN {
            return Err(rustls::Error::DecryptError);
        }
        let typ = ContentType::from(header[0]);
        let mut nonce = direction.iv;
        nonce[4..].copy_from_slice(&payload[..8]);
        let aad = tls12_aad(direction.seq, typ, payload.len() - 8 - TAG_LEN);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut payload[8..],
            )
            .map_err(|_| rustls::Error::DecryptError)?;
        if plain.len() > MAX_FRAGMENT {
            return Err(rustls::Error::PeerSentOversizedRecord);
        }
        Ok((typ, plain))
    }
}

/// TLS 1.2's AEAD additional data: `seq || type || version || plaintext length`.
fn tls12_aad(seq: u64, typ: ContentType, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = u8::from(typ);
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    aad
}

/// A record length field.
fn record_len(len: usize) -> Result<[u8; 2], rustls::Error> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| rustls::Error::EncryptError)
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
