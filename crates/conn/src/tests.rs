//! State-machine tests on a fake clock: no sockets, no sleeping.

use std::io::{Cursor, IoSlice};
use std::time::{Duration, Instant};

use pingwheel_proto::frame::encode_client_frame;
use proptest::prelude::*;
use tungstenite::protocol::frame::FrameHeader;

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn request() -> Vec<u8> {
    format!(
        "GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A masked client frame.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    encode_client_frame(
        (u8::from(fin) << 7) | opcode,
        payload,
        [0x37, 0xfa, 0x21, 0x3d],
        &mut f,
    );
    f
}

/// A server frame as seen by a client.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    opcode: u8,
    payload: Vec<u8>,
}

impl Seen {
    fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, 8, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

struct Harness {
    cfg: ConnConfig,
    conn: Conn,
    now: Instant,
    t0: Instant,
    events: Vec<ConnEvent>,
    /// Raw output bytes not yet parsed into frames.
    wire: Vec<u8>,
}

impl Harness {
    fn new(cfg: ConnConfig) -> Harness {
        let t0 = Instant::now(); // an epoch only; never read again
        Harness {
            conn: Conn::new(&cfg, t0),
            cfg,
            now: t0,
            t0,
            events: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// Handshake completed and the 101 drained.
    fn open(cfg: ConnConfig) -> Harness {
        let mut h = Harness::new(cfg);
        h.feed(&request());
        match h.events.pop() {
            Some(ConnEvent::UpgradeRequested(req)) => {
                assert_eq!(req.target, "/chat?x=1");
                let mut ev = Vec::new();
                h.conn.accept(&h.cfg, h.now, &req.key, None, 0.0, &mut ev);
                h.events.extend(ev);
            }
            other => panic!("expected an upgrade request, got {other:?}"),
        }
        assert_eq!(
            h.events.drain(..).collect::<Vec<_>>(),
            vec![ConnEvent::Opened]
        );
        let head = String::from_utf8(h.flush()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains(ACCEPT), "{head}");
        h
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut buf = bytes.to_vec();
        self.conn
            .handle_input(&self.cfg, self.now, &mut buf, &mut self.events);
    }

    /// Writes all output "to the socket" and returns it.
    fn flush(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut iov = [IoSlice::new(&[]); 4];
            let n = self.conn.io_slices(&mut iov);
            if n == 0 {
                break;
            }
            let chunk: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            self.conn.consume_output(chunk.len());
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Server frames written so far.
    fn frames(&mut self) -> Vec<Seen> {
        let bytes = self.flush();
        self.wire.extend_from_slice(&bytes);
        let mut seen = Vec::new();
        loop {
            let mut cur = Cursor::new(&self.wire[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cur).expect("server frames parse")
            else {
                break;
            };
            assert!(header.mask.is_none(), "server frames are never masked");
            let start = cur.position() as usize;
            let end = start + len as usize;
            if self.wire.len() < end {
                break;
            }
            seen.push(Seen {
                opcode: u8::from(header.opcode),
                payload: self.wire[start..end].to_vec(),
            });
            self.wire.drain(..end);
        }
        seen
    }

    fn take_frame(&mut self) -> Seen {
        let mut f = self.frames();
        assert_eq!(f.len(), 1, "expected exactly one frame, got {f:?}");
        f.remove(0)
    }

    fn take_events(&mut self) -> Vec<ConnEvent> {
        std::mem::take(&mut self.events)
    }

    /// Jumps virtual time to the connection's next deadline and fires it.
    fn advance_to_next_deadline(&mut self) {
        let t = self
            .conn
            .poll_timeout(&self.cfg)
            .expect("a deadline should be armed");
        assert!(t >= self.now, "deadlines must not move backwards");
        self.now = t;
        self.conn.handle_timeout(&self.cfg, t, &mut self.events);
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }
}

fn cfg_keepalive(interval: Option<u64>, timeout: Option<u64>) -> ConnConfig {
    ConnConfig {
        keepalive: KeepaliveConfig {
            ping_interval: interval.map(secs),
            ping_timeout: timeout.map(secs),
            ..KeepaliveConfig::default()
        },
        ..ConnConfig::default()
    }
}

#[test]
fn ping_sent_at_interval_and_pong_gives_rtt() {
    let mut h = Harness::open(cfg_keepalive(Some(20), Some(20)));
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), secs(20));
    let ping = h.take_frame();
    assert_eq!(ping.opcode, 9);
    assert_eq!(h.take_events(), vec![ConnEvent::PingSent]);
    h.now += Duration::from_millis(250);
    h.feed(&client_frame(0xA, true, &ping.payload));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Pong(PongOutcome::Acknowledged {
            rtt: Duration::from_millis(250)
        })]
    );
    // The next ping comes one interval after the first.
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), secs(40));
    assert_eq!(h.take_frame().opcode, 9);
}

#[test]
fn unanswered_ping_closes_with_1011() {
    let mut h = Harness::open(cfg_keepalive(Some(20), Some(20)));
    h.advance_to_next_deadline();
    assert_eq!(h.take_frame().opcode, 9);
    h.take_events();
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), secs(40));
    assert_eq!(h.take_frame().close_code(), Some(1011));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::PingTimeout)]
    );
    assert!(h.conn.is_done());
    assert_eq!(h.conn.poll_timeout(&h.cfg), None);
}

#[test]
fn unsolicited_pong_is_ignored() {
    let mut h = Harness::open(cfg_keepalive(Some(20), Some(20)));
    h.feed(&client_frame(0xA, true, b"hello"));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Pong(PongOutcome::Unsolicited)]
    );
    assert!(h.frames().is_empty());
    assert!(h.conn.is_open());
}

#[test]
fn client_ping_is_answered_with_pong() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&client_frame(0x9, true, b"are you there"));
    assert_eq!(
        h.take_frame(),
        Seen {
            opcode: 0xA,
            payload: b"are you there".to_vec()
        }
    );
}

#[test]
fn disabled_keepalive_never_pings() {
    let mut h = Harness::open(cfg_keepalive(None, Some(20)));
    assert_eq!(h.conn.poll_timeout(&h.cfg), None);
    h.now += secs(3600);
    h.conn.handle_timeout(&h.cfg, h.now, &mut h.events);
    assert!(h.frames().is_empty());
    assert!(h.conn.is_open());
}

#[test]
fn disabled_timeout_keeps_pinging_without_closing() {
    let mut h = Harness::open(cfg_keepalive(Some(5), None));
    for i in 1..=5 {
        h.advance_to_next_deadline();
        assert_eq!(h.elapsed(), secs(5 * i));
        assert_eq!(h.take_frame().opcode, 9);
    }
    assert!(h.conn.is_open());
}

#[test]
fn early_and_repeated_timeouts_are_harmless() {
    let mut h = Harness::open(cfg_keepalive(Some(20), Some(20)));
    for s in [0, 1, 19] {
        h.conn.handle_timeout(&h.cfg, h.t0 + secs(s), &mut h.events);
    }
    assert!(h.frames().is_empty());
    h.advance_to_next_deadline();
    h.conn.handle_timeout(&h.cfg, h.now, &mut h.events);
    assert_eq!(h.frames().len(), 1, "one ping, not two");
}

#[test]
fn echo_mode_echoes_text_and_binary() {
    let mut h = Harness::open(ConnConfig {
        echo: true,
        ..ConnConfig::default()
    });
    h.feed(&client_frame(0x1, true, "héllo".as_bytes()));
    h.feed(&client_frame(0x2, true, &[0, 1, 2]));
    assert_eq!(
        h.frames(),
        vec![
            Seen {
                opcode: 1,
                payload: "héllo".as_bytes().to_vec()
            },
            Seen {
                opcode: 2,
                payload: vec![0, 1, 2]
            }
        ]
    );
}

#[test]
fn fragmented_message_is_reassembled_with_control_frames_between() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&client_frame(0x1, false, b"Hel"));
    h.feed(&client_frame(0x9, true, b"p"));
    h.feed(&client_frame(0x0, false, b"lo, "));
    h.feed(&client_frame(0x0, true, b"world"));
    let events = h.take_events();
    assert_eq!(
        events,
        vec![ConnEvent::Message(Message {
            text: true,
            data: b"Hello, world".to_vec()
        })]
    );
    assert_eq!(h.take_frame().opcode, 0xA);
    assert_eq!(
        h.conn.buffered_input_bytes(),
        0,
        "no heap once the message is delivered"
    );
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&client_frame(0x1, true, b"ok \xff"));
    assert_eq!(h.take_frame().close_code(), Some(1007));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::ProtocolError)]
    );
    assert_eq!(h.conn.phase(), Phase::Draining);
}

#[test]
fn invalid_utf8_across_fragments_closes_with_1007() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&client_frame(0x1, false, b"\xce"));
    assert!(h.frames().is_empty());
    h.feed(&client_frame(0x0, true, b"\x41"));
    assert_eq!(h.take_frame().close_code(), Some(1007));
}

#[test]
fn oversize_message_closes_with_1009_before_buffering() {
    let mut h = Harness::open(ConnConfig {
        max_message_size: 1000,
        ..ConnConfig::default()
    });
    let frame = client_frame(0x2, true, &[7; 2000]);
    h.feed(&frame[..20]); // only the header and a little payload
    assert_eq!(h.take_frame().close_code(), Some(1009));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::MessageTooBig)]
    );
    assert!(h.conn.buffered_input_bytes() < 1000);
}

#[test]
fn unmasked_frame_closes_with_1002() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(h.take_frame().close_code(), Some(1002));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::ProtocolError)]
    );
}

#[test]
fn reserved_bits_and_opcodes_close_with_1002() {
    for first in [0x80 | 0x40 | 0x1, 0x80 | 0x10 | 0x2, 0x80 | 0x3, 0x80 | 0xB] {
        let mut h = Harness::open(ConnConfig::default());
        let mut f = client_frame(0x1, true, b"x");
        f[0] = first;
        h.feed(&f);
        assert_eq!(
            h.take_frame().close_code(),
            Some(1002),
            "first byte {first:#x}"
        );
    }
}

#[test]
fn peer_close_is_echoed_then_drained() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&client_frame(0x8, true, &[0x03, 0xe8, b'b', b'y', b'e']));
    assert_eq!(h.take_frame().close_code(), Some(1000));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::Normal)]
    );
    assert!(h.conn.wants_write_shutdown());
    h.conn.on_write_shutdown();
    assert!(!h.conn.wants_write_shutdown());
    // The closing handshake is complete: no lingering.
    assert!(h.conn.is_done());
    h.conn.handle_eof(&mut h.events);
    assert!(h.take_events().is_empty(), "Closed is emitted once");
}

#[test]
fn server_close_waits_for_the_peer_then_times_out() {
    let mut h = Harness::open(ConnConfig::default());
    h.conn
        .close(&h.cfg, h.now, CloseReason::Shutdown, 1001, &mut h.events);
    assert_eq!(h.take_frame().close_code(), Some(1001));
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::Shutdown)]
    );
    // Data after our Close is discarded; no pong either.
    h.feed(&client_frame(0x9, true, b"p"));
    assert!(h.frames().is_empty());
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), secs(10));
    assert!(h.conn.is_done());
}

#[test]
fn server_close_completes_when_the_peer_answers() {
    let mut h = Harness::open(ConnConfig::default());
    h.conn
        .close(&h.cfg, h.now, CloseReason::Shutdown, 1001, &mut h.events);
    h.frames();
    h.feed(&client_frame(0x8, true, &[0x03, 0xe9]));
    assert!(h.frames().is_empty(), "no second Close");
    assert_eq!(h.conn.phase(), Phase::Draining);
    h.conn.on_write_shutdown();
    assert!(h.conn.is_done());
}

#[test]
fn a_failed_connection_lingers_until_the_peer_leaves() {
    let mut h = Harness::open(ConnConfig::default());
    h.feed(&[0x81, 0x02, b'h', b'i']); // unmasked
    assert_eq!(h.take_frame().close_code(), Some(1002));
    h.conn.on_write_shutdown();
    assert_eq!(h.conn.phase(), Phase::Draining);
    h.feed(&client_frame(0x1, true, b"ignored"));
    assert!(h.frames().is_empty());
    h.conn.handle_eof(&mut h.events);
    assert!(h.conn.is_done());
}

#[test]
fn handshake_timeout_sends_408_and_closes() {
    let mut h = Harness::new(ConnConfig::default());
    h.feed(b"GET / HTTP/1.1\r\n");
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), secs(10));
    let out = String::from_utf8(h.flush()).unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert_eq!(
        h.take_events(),
        vec![
            ConnEvent::HandshakeFailed(HandshakeFailure::Timeout),
            ConnEvent::Closed(CloseReason::HandshakeTimeout)
        ]
    );
    assert!(h.conn.is_done());
}

#[test]
fn bad_handshake_is_refused_with_its_status() {
    let cases: [(&[u8], &str); 3] = [
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 426"),
        (b"GARBAGE\x00\r\n\r\n", "HTTP/1.1 400"),
    ];
    for (req, status) in cases {
        let mut h = Harness::new(ConnConfig::default());
        h.feed(req);
        let out = String::from_utf8(h.flush()).unwrap();
        assert!(out.starts_with(status), "{out}");
        assert!(matches!(
            h.take_events()[..],
            [
                ConnEvent::HandshakeFailed(_),
                ConnEvent::Closed(CloseReason::Rejected)
            ]
        ));
        assert_eq!(h.conn.phase(), Phase::Draining);
    }
}

#[test]
fn oversized_request_head_gets_431() {
    let mut h = Harness::new(ConnConfig {
        max_handshake_size: 256,
        ..ConnConfig::default()
    });
    h.feed(b"GET / HTTP/1.1\r\n");
    for _ in 0..20 {
        h.feed(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let out = String::from_utf8(h.flush()).unwrap();
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(h.conn.buffered_input_bytes() == 0);
}

#[test]
fn request_split_byte_by_byte_then_frames_in_the_same_read() {
    let mut h = Harness::new(ConnConfig::default());
    let req = request();
    for b in &req[..req.len() - 1] {
        h.feed(&[*b]);
    }
    assert!(h.take_events().is_empty());
    // The last byte arrives with a pipelined ping.
    let mut last = vec![req[req.len() - 1]];
    last.extend(client_frame(0x9, true, b"early"));
    h.feed(&last);
    let Some(ConnEvent::UpgradeRequested(r)) = h.events.pop() else {
        panic!("no request")
    };
    let mut ev = Vec::new();
    h.conn
        .accept(&h.cfg, h.now, &r.key, Some("chat"), 0.0, &mut ev);
    assert_eq!(ev, vec![ConnEvent::Opened]);
    let out = h.flush();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Sec-WebSocket-Protocol: chat"), "{text}");
    assert!(
        out.ends_with(&[0x8A, 5, b'e', b'a', b'r', b'l', b'y']),
        "the early ping is answered"
    );
    assert_eq!(h.conn.buffered_input_bytes(), 0);
}

#[test]
fn eof_while_open_is_abnormal_and_eof_while_handshaking_is_a_failure() {
    let mut h = Harness::open(ConnConfig::default());
    h.conn.handle_eof(&mut h.events);
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::Abnormal)]
    );
    let mut h = Harness::new(ConnConfig::default());
    h.conn.handle_eof(&mut h.events);
    assert_eq!(
        h.take_events(),
        vec![
            ConnEvent::HandshakeFailed(HandshakeFailure::Disconnected),
            ConnEvent::Closed(CloseReason::Abnormal)
        ]
    );
}

#[test]
fn a_peer_that_stops_reading_is_closed_at_the_queue_limit() {
    let cfg = ConnConfig {
        echo: true,
        max_queued_bytes: 4096,
        ..ConnConfig::default()
    };
    let mut h = Harness::open(cfg);
    for _ in 0..3 {
        h.feed(&client_frame(0x2, true, &[1; 1000]));
    }
    assert!(h.conn.is_open());
    h.feed(&client_frame(0x2, true, &[1; 2000]));
    let events = h.take_events();
    assert_eq!(
        events.last(),
        Some(&ConnEvent::Closed(CloseReason::WriteOverflow))
    );
    // Evicted: nothing more is read; the Close goes out, then FIN, and the socket goes
    // after the grace, not after close_timeout.
    assert_eq!(h.conn.phase(), Phase::Evicting);
    assert!(!h.conn.wants_read());
    let frames = h.frames();
    assert_eq!(frames.last().unwrap().close_code(), Some(1008));
    assert!(h.conn.wants_write_shutdown());
    h.conn.on_write_shutdown();
    assert!(!h.conn.wants_write_shutdown());
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), EVICTION_GRACE);
    assert!(h.conn.is_done());
}

#[test]
fn overflowed_closes_an_open_connection_as_a_slow_consumer_and_nothing_else() {
    let cfg = ConnConfig {
        echo: true,
        ..ConnConfig::default()
    };
    let mut h = Harness::open(cfg.clone());
    h.feed(&client_frame(0x2, true, &[1; 100]));
    h.take_events();
    let mut events = Vec::new();
    h.conn.overflowed(&cfg, h.now, &mut events);
    assert_eq!(events, vec![ConnEvent::Closed(CloseReason::SlowConsumer)]);
    let frames = h.frames();
    assert_eq!(frames.last().unwrap().close_code(), Some(1013));
    // Once closing, it does nothing more.
    h.conn.overflowed(&cfg, h.now, &mut events);
    assert_eq!(events.len(), 1);
}

#[test]
fn a_ping_flooder_that_never_reads_is_evicted_and_dropped_after_the_grace() {
    let cfg = ConnConfig {
        max_queued_bytes: 4096,
        ..ConnConfig::default()
    };
    let mut h = Harness::open(cfg);
    let ping = client_frame(0x9, true, &[7; 125]);
    let mut sent = 0;
    while h.conn.is_open() {
        h.feed(&ping);
        sent += 1;
        assert!(sent < 100, "the pongs must overflow 4 KiB");
    }
    assert_eq!(
        h.take_events().last(),
        Some(&ConnEvent::Closed(CloseReason::WriteOverflow))
    );
    assert_eq!(h.conn.phase(), Phase::Evicting);
    assert!(!h.conn.wants_read());
    // Input that still arrives is not even looked at (no more events, no more output).
    let queued = h.conn.queued_bytes();
    assert!(queued <= 4096, "queued {queued} B");
    h.feed(&ping.repeat(50));
    assert_eq!(h.conn.queued_bytes(), queued);
    assert!(h.take_events().is_empty());
    // The peer never reads: the socket goes after the grace, not after close_timeout.
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), EVICTION_GRACE);
    assert!(h.conn.is_done());
    assert!(!h.conn.wants_write_shutdown());
}

#[test]
fn evict_sends_1008_and_respects_a_shorter_close_timeout() {
    let cfg = ConnConfig {
        close_timeout: Duration::from_millis(300),
        ..ConnConfig::default()
    };
    let mut h = Harness::open(cfg);
    h.conn.evict(
        &h.cfg,
        h.now,
        CloseReason::PolicyViolation,
        1008,
        &mut h.events,
    );
    assert_eq!(
        h.take_events(),
        vec![ConnEvent::Closed(CloseReason::PolicyViolation)]
    );
    // Not written yet (the peer's socket is full): the deadline is close_timeout.
    assert_eq!(
        h.conn.poll_timeout(&h.cfg),
        Some(h.now + Duration::from_millis(300))
    );
    assert_eq!(h.take_frame().close_code(), Some(1008));
    // A second decision changes nothing; neither does close().
    h.conn.evict(
        &h.cfg,
        h.now,
        CloseReason::PolicyViolation,
        1008,
        &mut h.events,
    );
    h.conn
        .close(&h.cfg, h.now, CloseReason::Shutdown, 1001, &mut h.events);
    assert!(h.take_events().is_empty());
    assert!(h.frames().is_empty());
    h.conn.on_write_shutdown();
    h.advance_to_next_deadline();
    assert_eq!(h.elapsed(), Duration::from_millis(300));
    assert!(h.conn.is_done());
}

#[test]
fn slow_consumer_is_closed_with_1013() {
    let cfg = ConnConfig {
        max_queued_bytes: 1000,
        ..ConnConfig::default()
    };
    let mut h = Harness::open(cfg);
    let frame = Bytes::from(
        vec![0x81, 100]
            .into_iter()
            .chain([b'x'; 100])
            .collect::<Vec<u8>>(),
    );
    let mut ev = Vec::new();
    let mut accepted = 0;
    while h.conn.send(&h.cfg, h.now, frame.clone(), &mut ev) {
        accepted += 1;
    }
    assert_eq!(accepted, 9);
    assert_eq!(ev, vec![ConnEvent::Closed(CloseReason::SlowConsumer)]);
    assert_eq!(h.frames().last().unwrap().close_code(), Some(1013));
}

#[test]
fn idle_open_connection_holds_no_heap_and_stays_small() {
    let mut h = Harness::open(cfg_keepalive(Some(20), Some(20)));
    h.advance_to_next_deadline();
    let ping = h.take_frame();
    h.feed(&client_frame(0xA, true, &ping.payload));
    assert_eq!(h.conn.buffered_input_bytes(), 0);
    assert_eq!(h.conn.queued_bytes(), 0);
    assert!(
        std::mem::size_of::<Conn>() <= 160,
        "Conn is {} bytes",
        std::mem::size_of::<Conn>()
    );
}

// ---- properties ----

/// Drives a fresh connection with `chunks` (after the upgrade) and returns what a
/// client would see plus the events.
fn run_chunks(cfg: &ConnConfig, chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<ConnEvent>, Phase) {
    let mut h = Harness::open(cfg.clone());
    for c in chunks {
        h.feed(c);
    }
    let out = h.flush();
    (out, h.take_events(), h.conn.phase())
}

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(bytes[prev..p].to_vec());
        prev = p;
    }
    out.push(bytes[prev..].to_vec());
    out
}

fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(fin, p)| client_frame(0x2, fin, &p)),
        "[a-zé😀]{0,40}".prop_map(|s| client_frame(0x1, true, s.as_bytes())),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|p| client_frame(0x0, true, &p)),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|p| client_frame(0x9, true, &p)),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|p| client_frame(0xA, true, &p)),
        Just(client_frame(0x8, true, &[0x03, 0xe8])),
        proptest::collection::vec(any::<u8>(), 1..30),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_the_input_gives_the_same_output_and_events(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        echo in any::<bool>(),
    ) {
        let cfg = ConnConfig { echo, max_message_size: 512, ..ConnConfig::default() };
        let bytes: Vec<u8> = frames.concat();
        let whole = run_chunks(&cfg, std::slice::from_ref(&bytes));
        let pieces = run_chunks(&cfg, &split(&bytes, &cuts));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn random_bytes_never_panic_and_end_in_a_defined_close(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let cfg = ConnConfig { max_message_size: 1024, ..ConnConfig::default() };
        let mut h = Harness::open(cfg);
        for c in split(&bytes, &cuts) {
            h.feed(&c);
        }
        h.flush();
        // Whatever happened, closing then running out the clock ends the connection.
        h.conn.close(&h.cfg, h.now, CloseReason::Shutdown, 1001, &mut h.events);
        h.flush();
        for _ in 0..4 {
            if h.conn.is_done() { break; }
            if h.conn.poll_timeout(&h.cfg).is_some() { h.advance_to_next_deadline(); } else { h.conn.handle_eof(&mut h.events); }
            h.flush();
        }
        prop_assert!(h.conn.is_done());
        let closed: Vec<_> = h.events.iter().filter(|e| matches!(e, ConnEvent::Closed(_))).collect();
        prop_assert_eq!(closed.len(), 1, "exactly one Closed event: {:?}", h.events);
    }

    #[test]
    fn random_request_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut h = Harness::new(ConnConfig { max_handshake_size: 512, ..ConnConfig::default() });
        h.feed(&bytes);
        h.flush();
        prop_assert!(h.conn.buffered_input_bytes() <= 2048);
    }
}
