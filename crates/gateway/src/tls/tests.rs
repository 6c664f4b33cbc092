//! The TLS room against an in-memory rustls client, with certificates made by rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::config::{ALPN_HTTP1, CertFiles, Listener, ServerTls, TlsFileError};
use super::session::{PLAIN_HTTP_REFUSAL, ReadOutcome, TlsFailure, TlsSession};

/// A key rustls cannot sign with (ECDSA on secp256k1), made with `openssl genpkey`.
const SECP256K1_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGEAgEAMBAGByqGSM49AgEGBSuBBAAKBG0wawIBAQQgX3ndHoesGwT0sO3lhFsf
EIBFUhRej6w+XNuma0F1iLChRANCAAT8kbAXLCjNN/QrM62P5hqbMAJNtG0Wonzr
9m/Dnrld142rEPowh4o1QiYQuwnvPQIXxqcpleRWYOwahOwoxNq+
-----END PRIVATE KEY-----
";

/// A directory of its own under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pingwheel-tls-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed leaf for localhost, as PEM (cert, key), and its DER.
struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn leaf_with(alg: &'static rcgen::SignatureAlgorithm, expired: bool) -> Leaf {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    }
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn leaf() -> Leaf {
    leaf_with(&rcgen::PKCS_ECDSA_P256_SHA256, false)
}

fn files(dir: &TempDir, leaf: &Leaf) -> CertFiles {
    CertFiles {
        listener: Listener::Ws,
        cert: dir.write("cert.pem", &leaf.cert),
        key: dir.write("key.pem", &leaf.key),
    }
}

fn server_tls(leaf: &Leaf) -> (TempDir, ServerTls) {
    let dir = TempDir::new("srv");
    let tls = ServerTls::load(files(&dir, leaf), SystemTime::now()).unwrap();
    (dir, tls)
}

fn client_config(
    leaf: &Leaf,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(leaf.der.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(super::config::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Arc::new(config)
}

/// A server session and an in-memory client, driven like the worker drives a socket.
struct Pair {
    server: TlsSession,
    client: ClientConnection,
    /// Plaintext the server decrypted (the worker's shared plaintext buffer).
    plain: Vec<u8>,
    /// Plaintext the client received.
    received: Vec<u8>,
    now: Instant,
}

impl Pair {
    fn new(tls: &ServerTls, client: Arc<ClientConfig>) -> Pair {
        let now = Instant::now();
        Pair {
            server: TlsSession::new(tls.config(), now).unwrap(),
            client: ClientConnection::new(client, ServerName::try_from("localhost").unwrap())
                .unwrap(),
            plain: Vec::new(),
            received: Vec::new(),
            now,
        }
    }

    /// Everything the client wants to send.
    fn client_bytes(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut bytes).unwrap();
        }
        bytes
    }

    /// One "read": the kept tail, then `bytes`, in a fresh read buffer.
    fn feed(&mut self, bytes: &[u8]) -> ReadOutcome {
        let mut buf = vec![0u8; 64 << 10];
        let kept = self.server.restore_partial(&mut buf);
        buf[kept..kept + bytes.len()].copy_from_slice(bytes);
        self.now += Duration::from_millis(1);
        self.server
            .read_tls(self.now, &mut buf[..kept + bytes.len()], &mut self.plain)
    }

    /// Hands the server's pending ciphertext to the client.
    fn deliver_to_client(&mut self) -> rustls::IoState {
        let bytes = self.server.pending().to_vec();
        self.server.consume(bytes.len());
        let mut slice = &bytes[..];
        let mut state = self.client.process_new_packets().unwrap();
        while !slice.is_empty() {
            self.client.read_tls(&mut slice).unwrap();
            state = self.client.process_new_packets().unwrap();
            // Keep the client's plaintext buffer from filling up.
            let got = self.drain_client();
            self.received.extend(got);
        }
        state
    }

    /// Runs the handshake to completion; returns the server's handshake report.
    fn handshake(&mut self) -> super::Handshake {
        let mut done = None;
        for _ in 0..10 {
            let bytes = self.client_bytes();
            if !bytes.is_empty() {
                let outcome = self.feed(&bytes);
                assert_eq!(outcome.failure, None);
                done = done.or(outcome.handshake);
            }
            self.deliver_to_client();
            if let Some(done) = done
                && !self.client.is_handshaking()
                && !self.client.wants_write()
            {
                return done;
            }
        }
        panic!("handshake did not complete");
    }

    fn client_sends(&mut self, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        self.client.writer().write_all(data).unwrap();
        self.client_bytes()
    }

    fn client_reads(&mut self) -> Vec<u8> {
        let mut got = std::mem::take(&mut self.received);
        got.extend(self.drain_client());
        got
    }

    fn drain_client(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        got
    }
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[test]
fn handshake_and_data_both_ways_over_tls13_and_tls12() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for versions in [TLS13, TLS12] {
        let mut pair = Pair::new(&tls, client_config(&leaf, versions));
        let done = pair.handshake();
        assert!(!done.resumed);
        assert!(done.took > Duration::ZERO);
        assert_eq!(pair.client.alpn_protocol(), Some(ALPN_HTTP1));
        assert_eq!(
            pair.client.protocol_version(),
            Some(versions[0].version),
            "negotiated the version asked for"
        );
        let bytes = pair.client_sends(b"GET /ws HTTP/1.1\r\n\r\n");
        let outcome = pair.feed(&bytes);
        assert_eq!(outcome, ReadOutcome::default());
        assert_eq!(pair.plain, b"GET /ws HTTP/1.1\r\n\r\n");
        pair.server
            .encrypt([&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]])
            .unwrap();
        pair.server.encrypt([&b"\x89\x00"[..]]).unwrap();
        pair.deliver_to_client();
        assert_eq!(
            pair.client_reads(),
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x89\x00"
        );
        // Idle: no buffers of its own left.
        assert_eq!(pair.server.buffered_bytes(), 0, "{versions:?}");
        assert!(!pair.server.is_handshaking());
    }
}

#[test]
fn records_split_at_every_byte_boundary_reassemble() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let config = client_config(&leaf, TLS13);
    // The handshake flight split at every byte.
    let hello = {
        let mut pair = Pair::new(&tls, Arc::clone(&config));
        pair.client_bytes()
    };
    for cut in 0..=hello.len() {
        let mut pair = Pair::new(&tls, Arc::clone(&config));
        let bytes = pair.client_bytes();
        assert_eq!(bytes.len(), hello.len());
        let first = pair.feed(&bytes[..cut]);
        assert_eq!(first.failure, None, "cut at {cut}");
        let second = pair.feed(&bytes[cut..]);
        assert_eq!(second.failure, None, "cut at {cut}");
        assert!(
            !pair.server.pending().is_empty(),
            "server answers at cut {cut}"
        );
        pair.deliver_to_client();
        assert!(pair.client.wants_write());
    }
    // Application data: two records, split at every byte.
    let mut pair = Pair::new(&tls, config);
    pair.handshake();
    let send_two = |pair: &mut Pair| {
        let mut r = pair.client_sends(b"first message");
        r.extend(pair.client_sends(b"second message, a little longer"));
        r
    };
    let sample = send_two(&mut pair);
    assert_eq!(pair.feed(&sample).failure, None);
    for cut in 0..=sample.len() {
        pair.plain.clear();
        let data = send_two(&mut pair);
        assert_eq!(data.len(), sample.len());
        assert_eq!(pair.feed(&data[..cut]).failure, None);
        assert_eq!(pair.feed(&data[cut..]).failure, None);
        assert_eq!(
            pair.plain, b"first messagesecond message, a little longer",
            "cut {cut}"
        );
        assert_eq!(
            pair.server.buffered_bytes(),
            0,
            "nothing kept after the cut {cut}"
        );
    }
}

#[test]
fn a_byte_at_a_time_works_and_keeps_only_the_partial_record() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut pair = Pair::new(&tls, client_config(&leaf, TLS13));
    pair.handshake();
    let data = pair.client_sends(&[b'x'; 1000]);
    for (i, byte) in data.iter().enumerate() {
        assert_eq!(pair.feed(&[*byte]).failure, None);
        if i + 1 < data.len() {
            assert_eq!(
                pair.server.buffered_bytes(),
                i + 1,
                "exactly the partial record"
            );
        }
    }
    assert_eq!(pair.plain, vec![b'x'; 1000]);
    assert_eq!(pair.server.buffered_bytes(), 0);
}

#[test]
fn close_notify_both_ways() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut pair = Pair::new(&tls, client_config(&leaf, TLS13));
    pair.handshake();
    pair.server.encrypt([&b"bye"[..]]).unwrap();
    pair.server.queue_close_notify();
    assert!(pair.server.close_notify_queued());
    assert!(!pair.server.can_encrypt());
    let state = pair.deliver_to_client();
    assert!(state.peer_has_closed(), "the client saw close_notify");
    assert_eq!(
        pair.client_reads(),
        b"bye",
        "after the data queued before it"
    );
    pair.client.send_close_notify();
    let bytes = pair.client_bytes();
    let outcome = pair.feed(&bytes);
    assert!(outcome.peer_closed);
    assert_eq!(outcome.failure, None);
}

#[test]
fn the_peers_close_notify_is_reported_after_its_data() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut pair = Pair::new(&tls, client_config(&leaf, TLS12));
    pair.handshake();
    let mut bytes = pair.client_sends(b"last words");
    pair.client.send_close_notify();
    bytes.extend(pair.client_bytes());
    let outcome = pair.feed(&bytes);
    assert!(outcome.peer_closed);
    assert_eq!(pair.plain, b"last words");
}

#[test]
fn garbage_is_refused_with_an_alert() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for garbage in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        &b"\x00\x01\x02\x03\x04\x05\x06\x07"[..],
        &b"\x16\x03\x01\x40\x00"[..], // a handshake record longer than allowed... header only
        &b"\x17\x03\x03\x00\x04abcd"[..], // application data before any handshake
    ] {
        let mut session = TlsSession::new(tls.config(), Instant::now()).unwrap();
        let mut input = garbage.to_vec();
        let mut plain = Vec::new();
        let outcome = session.read_tls(Instant::now(), &mut input, &mut plain);
        if garbage == b"\x16\x03\x01\x40\x00" {
            // Only a header: rustls waits for the rest (bounded by the open timeout).
            assert_eq!(outcome.failure, None);
            continue;
        }
        assert!(
            matches!(outcome.failure, Some(TlsFailure::Protocol(_))),
            "{garbage:?}: {outcome:?}"
        );
        assert!(plain.is_empty());
        assert_eq!(
            session.pending().first(),
            Some(&0x15),
            "an alert record is queued: {garbage:?} {outcome:?}"
        );
        assert!(session.has_failed());
        // Later input is ignored.
        let later = session.read_tls(Instant::now(), &mut b"more".to_vec(), &mut plain);
        assert_eq!(later, ReadOutcome::default());
    }
}

#[test]
fn plain_http_gets_a_plain_400() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /v1 HTTP/1.1\r\n",
        b"G",
    ] {
        let mut session = TlsSession::new(tls.config(), Instant::now()).unwrap();
        let mut plain = Vec::new();
        let outcome = session.read_tls(Instant::now(), &mut request.to_vec(), &mut plain);
        assert_eq!(outcome.failure, Some(TlsFailure::PlainHttp));
        assert_eq!(session.pending(), PLAIN_HTTP_REFUSAL);
    }
    let text = std::str::from_utf8(PLAIN_HTTP_REFUSAL).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(body.contains("wss://"));
}

#[test]
fn sessions_resume_with_tickets_over_tls13_and_tls12() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for versions in [TLS13, TLS12] {
        let config = client_config(&leaf, versions);
        let mut first = Pair::new(&tls, Arc::clone(&config));
        assert!(!first.handshake().resumed);
        // TLS 1.3 tickets come after the handshake: deliver them.
        first.server.encrypt([&b"x"[..]]).unwrap();
        first.deliver_to_client();
        let mut second = Pair::new(&tls, Arc::clone(&config));
        let done = second.handshake();
        assert!(done.resumed, "{versions:?}");
        assert_eq!(
            second.client.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        let bytes = second.client_sends(b"again");
        assert_eq!(second.feed(&bytes).failure, None);
        assert_eq!(second.plain, b"again");
    }
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_sessions_and_tickets_survive() {
    let old = leaf();
    let dir = TempDir::new("reload");
    let mut tls = ServerTls::load(files(&dir, &old), SystemTime::now()).unwrap();
    let config = client_config(&old, TLS13);
    let mut first = Pair::new(&tls, Arc::clone(&config));
    first.handshake();
    first.server.encrypt([&b"x"[..]]).unwrap();
    first.deliver_to_client();
    let before = tls.loaded().serial.clone();

    // A broken pair on disk: the reload fails and the old one stays.
    dir.write("key.pem", "not a key");
    let err = tls.reload(SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("no private key"), "{err}");
    assert_eq!(tls.loaded().serial, before);
    assert!(Pair::new(&tls, Arc::clone(&config)).handshake().resumed);

    let new = leaf();
    dir.write("cert.pem", &new.cert);
    dir.write("key.pem", &new.key);
    let loaded = tls.reload(SystemTime::now()).unwrap();
    assert_ne!(loaded.serial, before);
    let mut fresh = Pair::new(&tls, client_config(&new, TLS13));
    fresh.handshake();
    let served = fresh.client.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, new.der);
    // The session opened before the reload still works.
    first.server.encrypt([&b"still here"[..]]).unwrap();
    first.deliver_to_client();
    assert!(first.client_reads().ends_with(b"still here"));
}

fn refusal(cert: &str, key: &str) -> (TlsFileError, CertFiles) {
    let dir = TempDir::new("bad");
    let files = CertFiles {
        listener: Listener::Ws,
        cert: dir.write("c.pem", cert),
        key: dir.write("k.pem", key),
    };
    (files.load(SystemTime::now()).unwrap_err(), files)
}

fn assert_names(err: &TlsFileError, flag: &str, path: &Path, words: &str) {
    let text = err.to_string();
    assert!(text.contains(flag), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(words), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn bad_files_are_refused_naming_the_flag_the_path_and_the_problem() {
    let good = leaf();
    let other = leaf();

    let missing = CertFiles {
        listener: Listener::Ws,
        cert: PathBuf::from("/nonexistent/pingwheel/cert.pem"),
        key: PathBuf::from("/nonexistent/pingwheel/key.pem"),
    };
    let err = missing.load(SystemTime::now()).unwrap_err();
    assert_names(&err, "--tls-cert", &missing.cert, "cannot read");

    let (err, f) = refusal("hello\n", &good.key);
    assert_names(&err, "--tls-cert", &f.cert, "no certificate");
    let (err, f) = refusal(&good.key, &good.key);
    assert_names(&err, "--tls-cert", &f.cert, "no certificate");
    let (err, f) = refusal(&good.cert, &good.cert);
    assert_names(&err, "--tls-key", &f.key, "no private key");
    let (err, f) = refusal(&good.cert, &other.key);
    assert_names(&err, "--tls-key", &f.key, "does not match");
    let (err, f) = refusal(&good.cert, SECP256K1_KEY);
    assert_names(&err, "--tls-key", &f.key, "unsupported");
    let expired = leaf_with(&rcgen::PKCS_ECDSA_P256_SHA256, true);
    let (err, f) = refusal(&expired.cert, &expired.key);
    assert_names(&err, "--tls-cert", &f.cert, "expired");

    let admin = CertFiles {
        listener: Listener::Admin,
        ..missing
    };
    let err = admin.load(SystemTime::now()).unwrap_err();
    assert_names(&err, "--admin-tls-cert", &admin.cert, "cannot read");
}

#[test]
fn ecdsa_and_ed25519_keys_are_served() {
    for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
        let leaf = leaf_with(alg, false);
        let (_dir, tls) = server_tls(&leaf);
        assert!(tls.loaded().not_after > 0);
        let mut pair = Pair::new(&tls, client_config(&leaf, TLS13));
        pair.handshake();
    }
}

#[test]
fn a_stalled_or_huge_handshake_message_is_bounded() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut session = TlsSession::new(tls.config(), Instant::now()).unwrap();
    // A handshake record announcing the maximum length, fed 32 KiB of zeros in records:
    // either rustls refuses the message or the kept tail hits the bound.
    let mut plain = Vec::new();
    let mut input = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    input.extend(std::iter::repeat_n(0u8, 1 << 14));
    let outcome = session.read_tls(Instant::now(), &mut input, &mut plain);
    assert!(outcome.failure.is_some(), "{outcome:?}");
    assert!(session.buffered_bytes() <= super::session::MAX_PARTIAL_BYTES + 64);
}

#[test]
fn encrypting_before_the_handshake_is_refused() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut session = TlsSession::new(tls.config(), Instant::now()).unwrap();
    assert!(session.encrypt([&b"x"[..]]).is_err());
    session.queue_close_notify();
    assert!(session.pending().is_empty());
}

#[test]
fn a_large_frame_is_split_into_records() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut pair = Pair::new(&tls, client_config(&leaf, TLS12));
    pair.handshake();
    let big = vec![7u8; 100_000];
    pair.server.encrypt([&big[..]]).unwrap();
    assert!(pair.server.queued_bytes() > big.len());
    pair.deliver_to_client();
    assert_eq!(pair.client_reads(), big);
    assert_eq!(pair.server.buffered_bytes(), 0);
}

/// Heap bytes allocated and not yet freed by the current thread (the tests run on
/// many threads; each counts its own).
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    /// Counts every allocation of the thread that makes it.
    pub struct Counting;

    // SAFETY: forwards to the system allocator; the count is a thread-local integer.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
            // SAFETY: the caller's layout is passed on unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
            // SAFETY: `ptr` came from `alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            let _ = LIVE.try_with(|l| l.set(l.get() + new as isize - layout.size() as isize));
            // SAFETY: as for `alloc` and `dealloc`.
            unsafe { System.realloc(ptr, layout, new) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// The thread's live heap bytes.
    pub fn live() -> isize {
        LIVE.with(Cell::get)
    }
}

#[test]
fn an_idle_tls_session_is_small() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for versions in [TLS13, TLS12] {
        let config = client_config(&leaf, versions);
        let mut sessions = Vec::new();
        let before = heap::live();
        for _ in 0..50 {
            let mut pair = Pair::new(&tls, Arc::clone(&config));
            pair.handshake();
            let bytes = pair.client_sends(b"GET / HTTP/1.1\r\n\r\n");
            pair.feed(&bytes);
            pair.server
                .encrypt([&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]])
                .unwrap();
            pair.deliver_to_client();
            sessions.push(Box::new(pair.server));
        }
        let per_session = (heap::live() - before) / 50;
        println!(
            "{versions:?}: {per_session} B of heap per idle session (TlsSession itself {} B)",
            std::mem::size_of::<TlsSession>()
        );
        assert!(per_session < 512, "{per_session} B per idle session");
    }
}

#[test]
fn every_offered_suite_carries_data_after_the_takeover() {
    use rustls::CipherSuite as S;
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    for (suite, versions) in [
        (S::TLS13_AES_256_GCM_SHA384, TLS13),
        (S::TLS13_CHACHA20_POLY1305_SHA256, TLS13),
        (S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS12),
        (S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS12),
    ] {
        let mut provider = (*super::config::provider()).clone();
        provider.cipher_suites.retain(|s| s.suite() == suite);
        let mut roots = RootCertStore::empty();
        roots.add(leaf.der.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut pair = Pair::new(&tls, Arc::new(config));
        pair.handshake();
        assert_eq!(
            pair.client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
        // Several records each way, in one batch and one read.
        let mut bytes = Vec::new();
        for i in 0..5u8 {
            bytes.extend(pair.client_sends(&[i; 100]));
        }
        assert_eq!(pair.feed(&bytes).failure, None, "{suite:?}");
        assert_eq!(pair.plain.len(), 500);
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 20_000]).collect();
        pair.server
            .encrypt(frames.iter().map(Vec::as_slice))
            .unwrap();
        pair.deliver_to_client();
        assert_eq!(pair.client_reads(), frames.concat(), "{suite:?}");
        // A record tampered with is refused with an alert.
        let mut bad = pair.client_sends(b"tampered");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let outcome = pair.feed(&bad);
        assert!(
            matches!(outcome.failure, Some(TlsFailure::Protocol(_))),
            "{outcome:?}"
        );
        assert!(!pair.server.pending().is_empty(), "an alert is queued");
    }
}

#[test]
fn a_key_update_from_the_peer_closes_the_connection() {
    let leaf = leaf();
    let (_dir, tls) = server_tls(&leaf);
    let mut pair = Pair::new(&tls, client_config(&leaf, TLS13));
    pair.handshake();
    pair.client.refresh_traffic_keys().unwrap();
    let bytes = pair.client_bytes();
    let outcome = pair.feed(&bytes);
    assert!(
        matches!(outcome.failure, Some(TlsFailure::Protocol(_))),
        "{outcome:?}"
    );
}
