//! What an idle `wss://` connection's TLS state costs the gateway: N server sessions
//! ([`pingwheel::tls::TlsSession`], the gateway's own, on its own `ServerConfig`) each
//! taken through a handshake with a rustls client over in-memory byte pipes, then held
//! idle, as the worker holds them. Reports per session the heap bytes still allocated
//! (a counting allocator: exact bytes asked of malloc, no malloc overhead), the RSS
//! growth (with malloc's overhead and fragmentation), and the session's inline size
//! (what it adds to the worker's slot), the RSS growth left after `malloc_trim` (what
//! freed handshake memory that malloc kept accounts for), for a fresh session before any input and after
//! a full or resumed handshake, with each TLS 1.3 cipher suite and with TLS 1.2.
//!
//! `cargo run --release -p pingwheel-benches --bin tls-memory [-- SESSIONS]` (default 10,000)
//!
//! Every case runs in a child process of its own (the binary re-run with `SESSIONS
//! CASE`), so one case's freed memory does not hide the next one's RSS growth. Sessions
//! are held as the worker holds them: `Box<TlsSession>`, so the heap figure includes
//! the session's inline size.
//!
//! The gateway's figure under load (RSS delta ÷ connections at 19,000 idle `wss://`
//! connections) is in docs/benchmarks.md; this one says where it goes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Instant, SystemTime};

use pingwheel::tls::{CertFiles, Listener, ServerTls, TlsSession};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedCipherSuite};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as isize;
    pages * page
}

/// Runs one handshake between `client` and `session` over in-memory pipes, the server
/// side exactly as the worker drives it (restore the partial tail, read, send pending).
fn handshake(
    client: &mut ClientConnection,
    session: &mut TlsSession,
    read_buf: &mut [u8],
) -> Result<(), String> {
    let mut plain = Vec::new();
    let now = Instant::now();
    for _ in 0..32 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
        if !wire.is_empty() {
            let kept = session.restore_partial(read_buf);
            read_buf[kept..kept + wire.len()].copy_from_slice(&wire);
            let outcome = session.read_tls(now, &mut read_buf[..kept + wire.len()], &mut plain);
            if let Some(failure) = outcome.failure {
                return Err(format!("{failure:?}"));
            }
        }
        let back = session.pending().to_vec();
        session.consume(back.len());
        if !back.is_empty() {
            let mut rest = &back[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).expect("client read");
                client.process_new_packets().expect("client accepts");
            }
            let mut sink = [0u8; 256];
            while let Ok(n) = client.reader().read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
        if wire.is_empty() && back.is_empty() && !session.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not complete");
}

struct Case {
    name: &'static str,
    suite: Option<SupportedCipherSuite>,
    tls12: bool,
    resume: bool,
}

fn client_config(ca: &[u8], case: &Case) -> Arc<ClientConfig> {
    let mut provider: CryptoProvider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(suite) = case.suite {
        provider.cipher_suites = vec![suite];
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = if case.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !case.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// The cases, by index (the child's `CASE` argument; 0 is a fresh session).
const CASES: usize = 6;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("SESSIONS [CASE]: numbers"))
        .collect();
    let sessions = args.first().copied().unwrap_or(10_000);
    let Some(&only) = args.get(1) else {
        println!(
            "{sessions} sessions per case; TlsSession inline: {} B (boxed in the worker's slot)",
            std::mem::size_of::<TlsSession>()
        );
        println!(
            "| case | negotiated | heap B/session | RSS B/session | RSS B/session after malloc_trim |"
        );
        println!("|---|---|---:|---:|---:|");
        let me = std::env::current_exe().expect("own path");
        for case in 0..CASES {
            let status = std::process::Command::new(&me)
                .args([sessions.to_string(), case.to_string()])
                .status()
                .expect("the child runs");
            assert!(status.success(), "case {case} failed");
        }
        return;
    };

    // An ECDSA P-256 CA and leaf for 127.0.0.1, as files for the gateway's loader.
    let dir = std::env::temp_dir().join(format!("pingwheel-tls-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tls-memory CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = CertFiles {
        listener: Listener::Ws,
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let server = ServerTls::load(files, SystemTime::now()).expect("the gateway loads the pair");
    let _ = std::fs::remove_dir_all(&dir);
    let config = server.config();
    let ca_pem = ca.pem();

    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut read_buf = vec![0u8; 64 << 10];
    let per = |a: isize, b: isize| (b - a) as f64 / sessions as f64;
    if only == 0 {
        // A fresh session: accepted, before its first byte.
        let (heap0, rss0) = (live(), rss_bytes());
        let fresh: Vec<Box<TlsSession>> = (0..sessions)
            .map(|_| Box::new(TlsSession::new(config.clone(), Instant::now()).unwrap()))
            .collect();
        let rss = rss_bytes();
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        println!(
            "| fresh (accepted, no input yet) | — | {:.0} | {:.0} | {:.0} |",
            per(heap0, live()),
            per(rss0, rss),
            per(rss0, rss_bytes())
        );
        drop(fresh);
        return;
    }

    let s = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let cases = [
        Case {
            name: "TLS 1.3 full, server's choice",
            suite: None,
            tls12: false,
            resume: false,
        },
        Case {
            name: "TLS 1.3 resumed, server's choice",
            suite: None,
            tls12: false,
            resume: true,
        },
        Case {
            name: "TLS 1.3 full, AES-128-GCM",
            suite: Some(s),
            tls12: false,
            resume: false,
        },
        Case {
            name: "TLS 1.3 full, ChaCha20-Poly1305",
            suite: Some(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256),
            tls12: false,
            resume: false,
        },
        Case {
            name: "TLS 1.2 full, server's choice",
            suite: None,
            tls12: true,
            resume: false,
        },
    ];
    {
        let case = &cases[only - 1];
        let client_config = client_config(ca_pem.as_bytes(), case);
        // Warm up: the first handshakes fill the client's ticket store and any lazily
        // built server state, which is not per connection.
        let mut negotiated = String::new();
        for _ in 0..16 {
            let mut client = ClientConnection::new(client_config.clone(), name.clone()).unwrap();
            let mut session = TlsSession::new(config.clone(), Instant::now()).unwrap();
            if let Err(why) = handshake(&mut client, &mut session, &mut read_buf) {
                println!(
                    "| {} | refused by the server: {why} | — | — | — |",
                    case.name
                );
                return;
            }
            negotiated = format!(
                "{:?} {:?}{}",
                client.protocol_version().unwrap(),
                client.negotiated_cipher_suite().unwrap().suite(),
                match client.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => ", resumed",
                    _ => "",
                }
            );
        }
        let mut held = Vec::with_capacity(sessions);
        let (heap0, rss0) = (live(), rss_bytes());
        for _ in 0..sessions {
            let mut client = ClientConnection::new(client_config.clone(), name.clone()).unwrap();
            let mut session = Box::new(TlsSession::new(config.clone(), Instant::now()).unwrap());
            handshake(&mut client, &mut session, &mut read_buf).expect("as in the warm-up");
            // The client goes; the server's session stays, idle, as in the worker.
            client.send_close_notify();
            let _ = client.writer().flush();
            drop(client);
            held.push(session);
        }
        let rss = rss_bytes();
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        // The session's own buffers (unsent ciphertext, a partial record) are empty
        // while idle: all the heap above is rustls's state.
        let buffered: usize = held.iter().map(|s| s.buffered_bytes()).sum();
        assert_eq!(buffered, 0, "idle sessions keep no record bytes");
        println!(
            "| {} | {negotiated} | {:.0} | {:.0} | {:.0} |",
            case.name,
            per(heap0, live()),
            per(rss0, rss),
            per(rss0, rss_bytes())
        );
        drop(held);
    }
}
