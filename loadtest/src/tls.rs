//! TLS for `wss://` targets: the client configuration a run uses ([`client_config`]:
//! whom to trust, whether to resume), the session store that lets a reconnecting
//! client resume ([`TicketStore`]), and [`TlsConn`], one connection's TLS layer as a
//! sans-IO state machine: ciphertext in, plaintext out and back, no socket, no clock.
//!
//! The engine ([`crate::engine`]) is what puts bytes through it: it reads ciphertext
//! into its shared read buffer, hands it to [`TlsConn::read_tls`], takes plaintext
//! out with [`TlsConn::read_plaintext`] into a second shared buffer for the
//! WebSocket client, and encrypts the client's output with [`TlsConn::encrypt`] before
//! it writes it. The WebSocket client ([`crate::client::Client`]) never knows.
//!
//! # Memory
//!
//! This is rustls's buffered `ClientConnection` (tens of KiB while it has buffers
//! allocated; the harness is not what is measured). Output is drained into the
//! engine's shared buffer right after every write, so plaintext or ciphertext does
//! not wait in it between events.
//!
//! # Resumption
//!
//! Unless `--no-tls-resume`, every connection of an engine shares one [`TicketStore`]:
//! the tickets the server hands a connection are what the next connection (a churn
//! cycle's successor, a client reconnecting) resumes with. TLS 1.3 tickets are single
//! use, so the store keeps up to [`TICKETS_PER_SERVER`] of them per server, newest
//! first.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup,
    RootCertStore, SignatureScheme,
};

use crate::client::End;

/// Most TLS 1.3 tickets the store keeps per server (oldest dropped first).
pub const TICKETS_PER_SERVER: usize = 4096;

/// Where the trust anchors come from when neither `--ca-file` nor `--insecure` is given.
const SYSTEM_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// How a run's connections do TLS; built from the command line by
/// [`crate::plan::Plan::new`].
#[derive(Clone)]
pub struct TlsTarget {
    /// The client configuration every connection of the engine shares.
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate is checked against (the URL's host).
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .field("resumption", &self.config.resumption)
            .finish_non_exhaustive()
    }
}

/// What the command line says about TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions<'a> {
    /// `--ca-file`: trust exactly the certificates in this PEM file.
    pub ca_file: Option<&'a Path>,
    /// `--insecure`: accept any certificate (signatures are still checked).
    pub insecure: bool,
    /// Resume sessions (`false` with `--no-tls-resume`).
    pub resume: bool,
    /// `--tls-groups`: key-exchange groups to offer, in order (empty: the provider's).
    pub groups: &'a [String],
}

/// Builds the client configuration for `host`: ALPN `http/1.1`, TLS 1.2 and 1.3 with
/// rustls's default provider (aws-lc-rs). The error is a usage message.
pub fn client_config(host: &str, options: &TlsOptions<'_>) -> Result<TlsTarget, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !options.groups.is_empty() {
        let mut chosen = Vec::new();
        for name in options.groups {
            let group = provider
                .kx_groups
                .iter()
                .find(|g| group_name(g.name()).eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    let known: Vec<_> = provider
                        .kx_groups
                        .iter()
                        .map(|g| group_name(g.name()))
                        .collect();
                    format!(
                        "--tls-groups: unknown group `{name}` (known: {})",
                        known.join(", ")
                    )
                })?;
            chosen.push(*group);
        }
        provider.kx_groups = chosen;
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(trust_anchors(options.ca_file)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if options.resume {
        Resumption::store(Arc::new(TicketStore::default()))
    } else {
        Resumption::disabled()
    };
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))?;
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name,
    })
}

/// The lower-case name `--tls-groups` knows a group by (`x25519`, `secp256r1`, ...).
fn group_name(group: NamedGroup) -> String {
    format!("{group:?}").to_ascii_lowercase()
}

/// The certificates of `--ca-file`, or of the system bundle without it.
fn trust_anchors(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let path = match ca_file {
        Some(path) => path,
        None => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or("wss:// needs --ca-file FILE or --insecure (no system CA bundle found)")?,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--ca-file {}: cannot read: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--ca-file {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(roots)
}

/// `--insecure`: every certificate is accepted; handshake signatures are still checked
/// with the provider's algorithms (so the handshake costs what a verifying client's
/// does, minus the chain check).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The sessions of one server: its last TLS 1.2 session, its TLS 1.3 tickets (newest
/// at the back) and the key-exchange group it chose last.
#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

/// A session store shared by an engine's connections (see the module docs). Unlike
/// rustls's in-memory cache (8 tickets per server) it keeps enough tickets for a
/// reconnect storm where many handshakes are in flight at once.
#[derive(Debug, Default)]
pub struct TicketStore {
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

impl TicketStore {
    /// TLS 1.3 tickets held for `server_name` right now.
    pub fn tickets(&self, server_name: &ServerName<'_>) -> usize {
        self.with(server_name, |s| s.map_or(0, |s| s.tls13.len()))
    }

    fn with<T>(
        &self,
        server_name: &ServerName<'_>,
        f: impl FnOnce(Option<&mut ServerSessions>) -> T,
    ) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(servers.get_mut(&server_name.to_owned()))
    }

    fn entry<T>(
        &self,
        server_name: ServerName<'static>,
        f: impl FnOnce(&mut ServerSessions) -> T,
    ) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        f(servers.entry(server_name).or_default())
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.entry(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(server_name, |s| s.and_then(|s| s.kx_hint))
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.entry(server_name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(server_name, |s| s.and_then(|s| s.tls12.clone()))
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.with(server_name, |s| {
            if let Some(s) = s {
                s.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.entry(server_name, |s| {
            if s.tls13.len() == TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.with(server_name, |s| s.and_then(|s| s.tls13.pop_back()))
    }
}

/// How a completed handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake (certificate sent and verified).
    Full,
    /// The server accepted a ticket or session id.
    Resumed,
}

/// One connection's TLS layer (see the module docs). Call order: after the TCP
/// connect, [`TlsConn::take_ciphertext`] (the ClientHello); then for every chunk read
/// [`TlsConn::read_tls`], [`TlsConn::read_plaintext`] until it returns 0, and
/// [`TlsConn::take_ciphertext`]; [`TlsConn::handshake_done`] once after each
/// `read_tls` says whether the handshake just completed.
pub struct TlsConn {
    conn: ClientConnection,
    /// Engine nanoseconds when the TCP connect completed: the handshake's start.
    started_ns: u64,
    /// The handshake completed and [`TlsConn::handshake_done`] reported it.
    reported: bool,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.conn.is_handshaking())
            .field("started_ns", &self.started_ns)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// A client connection to `target` whose TCP connect completed at `now_ns`; its
    /// ClientHello waits in [`TlsConn::take_ciphertext`].
    pub fn new(target: &TlsTarget, now_ns: u64) -> Result<Self, End> {
        let mut conn = ClientConnection::new(target.config.clone(), target.server_name.clone())
            .map_err(|e| End::Fault(cause(&e).into()))?;
        // No limit on queued ciphertext: [`TlsConn::encrypt`] must take every byte (a
        // limited writer takes part and refuses the rest), and the engine drains it at
        // once, bounding what waits by its own backlog limit.
        conn.set_buffer_limit(None);
        Ok(Self {
            conn,
            started_ns: now_ns,
            reported: false,
        })
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feeds ciphertext. Consumes from the front of `ciphertext` as much as rustls
    /// takes in one go (call again while it is not empty, draining plaintext in
    /// between) and processes the records. A TLS error ends the connection with a
    /// `tls_*` cause; the alert rustls queued for the server is in
    /// [`TlsConn::take_ciphertext`].
    pub fn read_tls(&mut self, ciphertext: &mut &[u8]) -> Result<(), End> {
        match self.conn.read_tls(ciphertext) {
            Ok(_) => {}
            Err(e) => return Err(End::Fault(format!("tls_{}", io_kind(&e)).into())),
        }
        self.conn
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| End::Fault(cause(&e).into()))
    }

    /// When the handshake has completed since the last call: how it went and how long
    /// it took (ns since the TCP connect). Reports once per connection.
    pub fn handshake_done(&mut self, now_ns: u64) -> Option<(Handshake, u64)> {
        if self.reported || self.conn.is_handshaking() {
            return None;
        }
        self.reported = true;
        let kind = match self.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        };
        Some((kind, now_ns.saturating_sub(self.started_ns)))
    }

    /// Moves decrypted bytes into `buf`; 0 when there are none right now. The
    /// server's close_notify ends the connection (`eof`, as a TCP FIN does).
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> Result<usize, End> {
        match self.conn.reader().read(buf) {
            Ok(0) => Err(End::fault("eof")),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(End::fault("tls_truncated")),
            Err(e) => Err(End::Fault(format!("tls_{}", io_kind(&e)).into())),
        }
    }

    /// Encrypts `plaintext` for sending (queued inside until the handshake completes).
    pub fn encrypt(&mut self, plaintext: &[u8]) {
        // Without a buffer limit (see `new`) the writer takes everything; it fails only
        // when the connection is closed for sending, and then there is nothing left to
        // send it on.
        let _ = self.conn.writer().write_all(plaintext);
    }

    /// Queues a close_notify alert.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// Appends every ciphertext byte waiting to be sent to `into`.
    pub fn take_ciphertext(&mut self, into: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(into).is_err() {
                break;
            }
        }
    }
}

/// The cause label of a TLS error (`tls_unknown_issuer`, `tls_alert_handshake_failure`,
/// ...).
pub fn cause(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let detail = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer".to_owned(),
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "bad_name".to_owned()
        }
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "expired".to_owned()
        }
        Error::InvalidCertificate(_) => "bad_certificate".to_owned(),
        Error::AlertReceived(alert) => format!("alert_{}", snake(&format!("{alert:?}"))),
        Error::NoApplicationProtocol => "no_alpn".to_owned(),
        Error::PeerIncompatible(_) => "incompatible".to_owned(),
        Error::PeerMisbehaved(_) => "misbehaved".to_owned(),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "bad_message".to_owned(),
        Error::DecryptError => "decrypt".to_owned(),
        _ => "error".to_owned(),
    };
    format!("tls_{detail}")
}

fn io_kind(error: &io::Error) -> String {
    snake(&format!("{:?}", error.kind()))
}

/// `HandshakeFailure` → `handshake_failure`.
fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The provider the harness uses, for tests and callers that build servers.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::ServerConnection;
    use rustls::pki_types::PrivateKeyDer;

    /// A CA and a leaf for localhost/127.0.0.1 signed by it (ECDSA P-256), as PEM.
    struct TestPki {
        ca_pem: String,
        leaf_pem: String,
        key_pem: String,
    }

    fn pki(ca_name: &str) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "pingwheel-loadtest-tls-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn server_config(pki: &TestPki) -> Arc<rustls::ServerConfig> {
        let chain = CertificateDer::pem_slice_iter(pki.leaf_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        Arc::new(config)
    }

    /// Moves bytes both ways until neither side has anything to send; returns the
    /// client's outcome of the last `read_tls` and the plaintext it decrypted.
    fn pump(client: &mut TlsConn, server: &mut ServerConnection) -> (Result<(), End>, Vec<u8>) {
        let mut plain = Vec::new();
        for _ in 0..20 {
            let mut wire = Vec::new();
            client.take_ciphertext(&mut wire);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                server.read_tls(&mut rest).unwrap();
                if server.process_new_packets().is_err() {
                    break;
                }
            }
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            if wire.is_empty() && back.is_empty() {
                break;
            }
            let mut rest = &back[..];
            while !rest.is_empty() {
                if let Err(end) = client.read_tls(&mut rest) {
                    return (Err(end), plain);
                }
                let mut buf = [0u8; 4096];
                loop {
                    match client.read_plaintext(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => plain.extend_from_slice(&buf[..n]),
                        Err(end) => return (Err(end), plain),
                    }
                }
            }
        }
        (Ok(()), plain)
    }

    fn options(ca: &Path, resume: bool) -> TlsOptions<'_> {
        TlsOptions {
            ca_file: Some(ca),
            resume,
            ..TlsOptions::default()
        }
    }

    #[test]
    fn full_handshake_then_resumed_with_a_ticket_from_the_store() {
        let pki = pki("test CA");
        let ca = write_temp("ca-resume.pem", &pki.ca_pem);
        let target = client_config("localhost", &options(&ca, true)).unwrap();
        let server_config = server_config(&pki);
        for (round, expected) in [
            (0, Handshake::Full),
            (1, Handshake::Resumed),
            (2, Handshake::Resumed),
        ] {
            let mut client = TlsConn::new(&target, 1_000).unwrap();
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            assert!(client.is_handshaking());
            let (result, _) = pump(&mut client, &mut server);
            result.unwrap();
            let (kind, ns) = client.handshake_done(5_000).expect("handshake completed");
            assert_eq!((round, kind, ns), (round, expected, 4_000));
            assert_eq!(client.handshake_done(6_000), None, "reported once");
            // Plaintext both ways.
            client.encrypt(b"GET / HTTP/1.1\r\n\r\n");
            server.writer().write_all(b"HTTP/1.1 101 ").unwrap();
            let (result, plain) = pump(&mut client, &mut server);
            result.unwrap();
            assert_eq!(plain, b"HTTP/1.1 101 ");
            let mut got = [0u8; 64];
            let n = server.reader().read(&mut got).unwrap();
            assert_eq!(&got[..n], b"GET / HTTP/1.1\r\n\r\n");
        }
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn encrypt_takes_every_byte_of_a_large_message() {
        let pki = pki("test CA");
        let ca = write_temp("ca-large.pem", &pki.ca_pem);
        let target = client_config("localhost", &options(&ca, true)).unwrap();
        let mut client = TlsConn::new(&target, 0).unwrap();
        let mut server = ServerConnection::new(server_config(&pki)).unwrap();
        pump(&mut client, &mut server).0.unwrap();
        let message = vec![7u8; 300 * 1024];
        client.encrypt(&message);
        let mut wire = Vec::new();
        client.take_ciphertext(&mut wire);
        let mut rest = &wire[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            server.read_tls(&mut rest).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = server.reader().read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got.len(), message.len());
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn no_resume_means_every_handshake_is_full() {
        let pki = pki("test CA");
        let ca = write_temp("ca-noresume.pem", &pki.ca_pem);
        let target = client_config("127.0.0.1", &options(&ca, false)).unwrap();
        let server_config = server_config(&pki);
        for _ in 0..2 {
            let mut client = TlsConn::new(&target, 0).unwrap();
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            pump(&mut client, &mut server).0.unwrap();
            assert_eq!(client.handshake_done(1).map(|h| h.0), Some(Handshake::Full));
        }
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn an_unknown_issuer_fails_with_a_cause_and_an_alert_and_insecure_accepts_it() {
        let (trusted, served) = (pki("trusted CA"), pki("other CA"));
        let ca = write_temp("ca-other.pem", &trusted.ca_pem);
        let target = client_config("localhost", &options(&ca, true)).unwrap();
        let mut client = TlsConn::new(&target, 0).unwrap();
        let mut server = ServerConnection::new(server_config(&served)).unwrap();
        let (result, _) = pump(&mut client, &mut server);
        assert_eq!(result, Err(End::fault("tls_unknown_issuer")));
        let mut alert = Vec::new();
        client.take_ciphertext(&mut alert);
        // TLS 1.3: the alert goes out encrypted (after a compatibility ChangeCipherSpec).
        assert!(!alert.is_empty(), "an alert for the server");

        let insecure = TlsOptions {
            insecure: true,
            resume: true,
            ..TlsOptions::default()
        };
        let target = client_config("not-the-name.example", &insecure).unwrap();
        let mut client = TlsConn::new(&target, 0).unwrap();
        let mut server = ServerConnection::new(server_config(&served)).unwrap();
        pump(&mut client, &mut server).0.unwrap();
        assert!(client.handshake_done(1).is_some());
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn close_notify_from_the_server_ends_the_connection_as_eof() {
        let pki = pki("test CA");
        let ca = write_temp("ca-close.pem", &pki.ca_pem);
        let target = client_config("localhost", &options(&ca, true)).unwrap();
        let mut client = TlsConn::new(&target, 0).unwrap();
        let mut server = ServerConnection::new(server_config(&pki)).unwrap();
        pump(&mut client, &mut server).0.unwrap();
        server.send_close_notify();
        assert_eq!(pump(&mut client, &mut server).0, Err(End::fault("eof")));
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn bad_trust_and_group_settings_are_usage_errors() {
        let empty = write_temp("empty.pem", "");
        let err = client_config("h", &options(&empty, true)).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        let err = client_config("h", &options(Path::new("/nonexistent/ca.pem"), true)).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let groups = ["secp256r1".to_owned(), "X25519".to_owned()];
        let target = client_config(
            "h",
            &TlsOptions {
                insecure: true,
                groups: &groups,
                ..TlsOptions::default()
            },
        )
        .unwrap();
        let names: Vec<_> = target
            .config
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| group_name(g.name()))
            .collect();
        assert_eq!(names, ["secp256r1", "x25519"]);
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn cause_labels_are_snake_case() {
        assert_eq!(snake("HandshakeFailure"), "handshake_failure");
        assert_eq!(
            cause(&rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            )),
            "tls_alert_bad_certificate"
        );
        assert_eq!(
            cause(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "tls_unknown_issuer"
        );
    }
}
