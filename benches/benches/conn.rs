//! The per-connection state machine without sockets: what one keepalive round trip,
//! one echoed message and one queued delivery cost in user space. (The load runs in
//! docs/benchmarks.md measure the whole process, kernel included.)
//!
//! `cargo bench -p pingwheel-benches --bench conn`

use std::hint::black_box;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use pingwheel_conn::{Conn, ConnConfig, ConnEvent};
use pingwheel_proto::frame::encode_client_frame;

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    encode_client_frame(0x80 | opcode, payload, [0x11, 0x22, 0x33, 0x44], &mut f);
    f
}

/// Writes everything out "to the socket"; returns the bytes.
fn drain(conn: &mut Conn) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = conn.io_slices(&mut iov);
        if n == 0 {
            return out;
        }
        let len: usize = iov[..n].iter().map(|s| s.len()).sum();
        for s in &iov[..n] {
            out.extend_from_slice(s);
        }
        conn.consume_output(len);
    }
}

fn open(cfg: &ConnConfig, now: Instant) -> Conn {
    let mut conn = Conn::new(cfg, now);
    let mut events = Vec::new();
    conn.handle_input(cfg, now, &mut REQUEST.to_vec(), &mut events);
    let Some(ConnEvent::UpgradeRequested(req)) = events.pop() else {
        panic!("no upgrade request")
    };
    conn.accept(cfg, now, &req.key, None, 0.0, &mut events);
    drain(&mut conn);
    conn
}

fn keepalive_round_trip(c: &mut Criterion) {
    let cfg = ConnConfig::default();
    let t0 = Instant::now();
    let mut conn = open(&cfg, t0);
    let mut events = Vec::with_capacity(8);
    let mut now = t0;
    c.bench_function("conn/keepalive round trip (ping out, pong in)", |b| {
        b.iter(|| {
            now = conn.poll_timeout(&cfg).expect("next ping armed");
            conn.handle_timeout(&cfg, now, &mut events);
            let ping = drain(&mut conn);
            // The pong echoes the ping's 4-byte payload.
            let mut pong = client_frame(0xA, &ping[2..6]);
            now += Duration::from_micros(50);
            conn.handle_input(&cfg, now, &mut pong, &mut events);
            black_box(events.drain(..).count());
        })
    });
}

fn echo_message(c: &mut Criterion) {
    let cfg = ConnConfig {
        echo: true,
        ..ConnConfig::default()
    };
    let now = Instant::now();
    let mut conn = open(&cfg, now);
    let frame = client_frame(0x1, &[b'x'; 1024]);
    let mut events = Vec::with_capacity(8);
    c.bench_function("conn/echo one 1 KiB text message", |b| {
        b.iter(|| {
            let mut input = frame.clone();
            conn.handle_input(&cfg, now, &mut input, &mut events);
            black_box(drain(&mut conn).len());
            events.clear();
        })
    });
}

fn queue_delivery(c: &mut Criterion) {
    let cfg = ConnConfig::default();
    let now = Instant::now();
    let mut conn = open(&cfg, now);
    let shared = Bytes::from(vec![0x81; 100]);
    let mut events = Vec::new();
    c.bench_function("conn/queue and write one shared 100 B delivery", |b| {
        b.iter(|| {
            conn.send(&cfg, now, shared.clone(), &mut events);
            let mut iov = [IoSlice::new(&[]); 8];
            let n = conn.io_slices(&mut iov);
            let len: usize = iov[..n].iter().map(|s| s.len()).sum();
            conn.consume_output(black_box(len));
        })
    });
}

criterion_group!(benches, keepalive_round_trip, echo_message, queue_delivery);
criterion_main!(benches);
