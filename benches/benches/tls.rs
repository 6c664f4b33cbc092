//! The TLS room in memory (no sockets): what a full and a resumed TLS 1.3 handshake
//! (ECDSA P-256) cost, and what encrypting and decrypting one small frame (a keepalive
//! Ping out, a Pong in) costs once the session has taken the keys over from rustls.
//!
//! The handshakes are the server session ([`pingwheel::tls::TlsSession`]) and a rustls
//! client in one thread, so their figures include the client's half; the record benches
//! time the server side only.
//!
//! `cargo bench -p pingwheel-benches --bench tls`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use pingwheel::tls::{CertFiles, Listener, ServerTls, TlsSession};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// A P-256 leaf for localhost in a temporary directory, loaded as the server's TLS.
fn server() -> (ServerTls, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("pingwheel-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = CertFiles {
        listener: Listener::Ws,
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let tls = ServerTls::load(files, SystemTime::now()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (tls, cert.der().clone())
}

fn client_config(root: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(pingwheel::tls::config::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Runs one handshake to completion (and hands the client its ticket); returns the
/// established server session and the client.
fn handshake(
    tls: &ServerTls,
    client: &Arc<ClientConfig>,
    read_buf: &mut [u8],
    plain: &mut Vec<u8>,
) -> (TlsSession, ClientConnection) {
    let now = Instant::now();
    let mut server = TlsSession::new(tls.config(), now).unwrap();
    let mut client = ClientConnection::new(
        Arc::clone(client),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut wire = Vec::new();
    for _ in 0..4 {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            let kept = server.restore_partial(read_buf);
            read_buf[kept..kept + wire.len()].copy_from_slice(&wire);
            let outcome = server.read_tls(now, &mut read_buf[..kept + wire.len()], plain);
            assert_eq!(outcome.failure, None);
        }
        let out = server.pending().to_vec();
        server.consume(out.len());
        let mut slice = &out[..];
        while !slice.is_empty() {
            client.read_tls(&mut slice).unwrap();
            client.process_new_packets().unwrap();
        }
        if !server.is_handshaking() && !client.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    assert!(!server.is_handshaking());
    (server, client)
}

fn handshakes(c: &mut Criterion) {
    let (tls, root) = server();
    let mut read_buf = vec![0u8; 64 << 10];
    let mut plain = Vec::new();
    let mut group = c.benchmark_group("tls_handshake");
    group.bench_function("full_tls13_p256", |b| {
        let mut config = (*client_config(&root)).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        b.iter(|| black_box(handshake(&tls, &config, &mut read_buf, &mut plain)));
    });
    group.bench_function("resumed_tls13", |b| {
        let config = client_config(&root);
        // A first handshake leaves a ticket; each resumed one leaves the next.
        handshake(&tls, &config, &mut read_buf, &mut plain);
        b.iter(|| {
            let (server, client) = handshake(&tls, &config, &mut read_buf, &mut plain);
            assert_eq!(
                client.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            );
            black_box(server)
        });
    });
    group.finish();
}

fn records(c: &mut Criterion) {
    let (tls, root) = server();
    let config = client_config(&root);
    let mut read_buf = vec![0u8; 64 << 10];
    let mut plain = Vec::new();
    let mut group = c.benchmark_group("tls_record");
    // A keepalive Ping (a 2-byte frame, empty payload) out: encrypt, hand to the socket.
    group.bench_function("encrypt_ping", |b| {
        let (mut server, _client) = handshake(&tls, &config, &mut read_buf, &mut plain);
        b.iter(|| {
            server.encrypt([&b"\x89\x00"[..]]).unwrap();
            let n = black_box(server.pending()).len();
            server.consume(n);
        });
    });
    // A client's Pong (6-byte masked frame) in: decrypt in place, plaintext out.
    group.bench_function("decrypt_pong", |b| {
        b.iter_custom(|iters| {
            let (mut server, mut client) = handshake(&tls, &config, &mut read_buf, &mut plain);
            let mut records = Vec::with_capacity(iters as usize);
            for _ in 0..iters {
                use std::io::Write;
                client
                    .writer()
                    .write_all(b"\x8a\x80\x11\x22\x33\x44")
                    .unwrap();
                let mut wire = Vec::new();
                client.write_tls(&mut wire).unwrap();
                records.push(wire);
            }
            let now = Instant::now();
            let start = Instant::now();
            for record in &records {
                let buf = &mut read_buf[..record.len()];
                buf.copy_from_slice(record);
                let outcome = server.read_tls(now, buf, &mut plain);
                debug_assert_eq!(outcome.failure, None);
                plain.clear();
            }
            start.elapsed()
        });
    });
    group.finish();
}

fn settings() -> Criterion {
    let quick = std::env::var_os("PINGWHEEL_BENCH_QUICK").is_some();
    Criterion::default()
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 5 }))
        .sample_size(if quick { 10 } else { 50 })
}

criterion_group! {
    name = benches;
    config = settings();
    targets = handshakes, records
}
criterion_main!(benches);
