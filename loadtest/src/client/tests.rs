//! The client state machine on a fake clock: byte-literal server input, the client's
//! frames unmasked and checked, deadlines reached by jumping time, never by sleeping.

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::Duration;

use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::FrameHeader;

use super::*;
use crate::hist::LatencyHistogram;
use crate::settings::{ChurnLoad, EchoLoad, EngineConfig, PushClients, RecoverPlan, SubscribeMode};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// The fake run starts at this Unix time.
const RUN_START_UNIX_NS: u64 = 1_700_000_000 * SEC;

fn config() -> EngineConfig {
    EngineConfig {
        target: SocketAddr::from(([127, 0, 0, 1], 9)),
        host_header: "127.0.0.1:9".into(),
        path_and_query: "/".into(),
        connections: 10,
        first_index: 0,
        ramp_rate: 1000.0,
        connect_timeout: Duration::from_secs(10),
        sources: Vec::new(),
        tls: None,
        max_message_size: 1 << 20,
        client_ping_interval: None,
        expect_ping_interval: None,
        push: None,
        echo: None,
        churn: None,
        main_latency: MainLatency::Connect,
        timeline_bucket: Duration::from_secs(1),
        run_start_unix_ns: RUN_START_UNIX_NS,
        progress_every: Duration::from_millis(250),
        hard_deadline: Duration::from_secs(3600),
    }
}

fn push_config(subscribe: SubscribeMode) -> EngineConfig {
    EngineConfig {
        path_and_query: "/ws?x=1".into(),
        first_index: 5,
        push: Some(PushClients {
            channels: 4,
            token_secret: b"secret".to_vec(),
            subscribe,
            recover: None,
            publish_delay: Duration::ZERO,
        }),
        main_latency: MainLatency::Push,
        ..config()
    }
}

fn echo_config(message_rate: f64) -> EngineConfig {
    EngineConfig {
        echo: Some(EchoLoad {
            message_size: 32,
            message_rate,
        }),
        main_latency: MainLatency::Echo,
        ..config()
    }
}

/// A server frame: never masked.
fn server_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    let mut out = Vec::new();
    header.format(payload.len() as u64, &mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

fn text(payload: &str) -> Vec<u8> {
    server_frame(OpCode::Data(Data::Text), true, payload.as_bytes())
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// One client on a fake clock, with the engine state it shares and its outbox.
struct Harness {
    client: Option<Client>,
    cx: Shared,
    out: Outbox,
    now: Now,
}

impl Harness {
    /// A client whose connect started 1 ms into the run.
    fn new(config: EngineConfig) -> Self {
        let mut cx = Shared::new(config, fastrand::Rng::with_seed(1));
        let now = Now {
            ns: MS,
            unix_ns: RUN_START_UNIX_NS + MS,
        };
        let index = cx.start_attempt();
        let client = Client::new(index, now, &mut cx);
        Self {
            client: Some(client),
            cx,
            out: Outbox::new(fastrand::Rng::with_seed(2)),
            now,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the client has not ended")
    }

    fn advance(&mut self, ns: u64) {
        self.now.ns += ns;
        self.now.unix_ns += ns;
    }

    /// The connect completes; returns the upgrade request.
    fn connect(&mut self) -> String {
        let client = self.client.as_mut().unwrap();
        client.handle_connected(self.now, &mut self.cx, &mut self.out);
        let request = String::from_utf8(self.out.bytes().to_vec()).unwrap();
        self.out.clear();
        request
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), End> {
        let client = self.client.as_mut().unwrap();
        client.handle_input(self.now, bytes, &mut self.cx, &mut self.out)
    }

    /// The `101` that accepts `request`.
    fn acceptance(request: &str) -> String {
        let key = request
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .expect("the request carries a key");
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    /// Connects and upgrades 1 ms later; returns the upgrade request.
    fn upgrade(&mut self) -> String {
        let request = self.connect();
        self.advance(MS);
        self.feed(Self::acceptance(&request).as_bytes())
            .expect("a valid 101 is accepted");
        request
    }

    /// Jumps to the client's next deadline and runs it.
    fn advance_to_next_deadline(&mut self) -> Result<(), End> {
        let client = self.client.as_mut().unwrap();
        let deadline = client.poll_timeout();
        assert_ne!(deadline, NEVER, "a deadline should be armed");
        assert!(deadline >= self.now.ns, "deadlines must not move backwards");
        let step = deadline - self.now.ns;
        self.advance(step);
        let client = self.client.as_mut().unwrap();
        client.handle_timeout(self.now, &mut self.cx, &mut self.out)
    }

    /// The frames the client queued since the last call, unmasked.
    fn sent_frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let bytes = self.out.bytes().to_vec();
        self.out.clear();
        let mut frames = Vec::new();
        let mut cursor = Cursor::new(&bytes[..]);
        while (cursor.position() as usize) < bytes.len() {
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final, "the client sends unfragmented frames");
            let mask = header.mask.expect("client frames are masked");
            let start = cursor.position() as usize;
            let mut payload = bytes[start..start + length as usize].to_vec();
            crate::codec::apply_mask(&mut payload, mask);
            cursor.set_position((start + payload.len()) as u64);
            frames.push((header.opcode, payload));
        }
        frames
    }

    /// Runs the client's end-of-run accounting; returns whether it was established.
    fn finish(&mut self) -> bool {
        let client = self.client.as_ref().unwrap();
        client.finish(self.now, &mut self.cx, &mut self.out)
    }

    /// Ends the client the way the loop does.
    fn end(&mut self, end: End) {
        let client = self.client.take().unwrap();
        client.end(self.now, end, &mut self.cx);
    }
}

#[track_caller]
fn assert_one_sample_near(histogram: &LatencyHistogram, us: u64) {
    assert_eq!(histogram.len(), 1);
    let got = histogram.max_us().unwrap();
    assert!(
        got.abs_diff(us) <= us / 500 + 1,
        "recorded {got} µs, expected {us} µs"
    );
}

#[test]
fn idle_client_upgrades_and_answers_every_ping() {
    let mut h = Harness::new(config());
    assert_eq!(h.client().state(), State::Connecting);
    assert_eq!(h.cx.pending(), 1);
    assert_eq!(
        h.client().poll_timeout(),
        MS + 10 * SEC,
        "the connect deadline"
    );

    let request = h.upgrade();
    assert!(request.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
    assert_eq!(h.client().state(), State::Open);
    assert!(h.client().is_established());
    assert_eq!((h.cx.pending(), h.cx.open()), (0, 1));
    assert_eq!(h.cx.report.established, 1);
    assert_one_sample_near(&h.cx.report.connect_latency, 1000);
    assert_eq!(
        h.client().poll_timeout(),
        NEVER,
        "idle: nothing to do unprompted"
    );

    h.feed(&server_frame(OpCode::Control(Control::Ping), true, b"abc"))
        .unwrap();
    assert_eq!(
        h.sent_frames(),
        [(OpCode::Control(Control::Pong), b"abc".to_vec())]
    );
    h.advance(2 * SEC);
    h.feed(&server_frame(OpCode::Control(Control::Ping), true, b""))
        .unwrap();
    assert_eq!(
        h.sent_frames(),
        [(OpCode::Control(Control::Pong), Vec::new())]
    );
    assert_eq!(h.client().pings(), 2);
    assert_eq!(h.cx.report.pings.received, 2);
    assert_one_sample_near(&h.cx.report.pings.interval, 2_000_000);
}

#[test]
fn ping_intervals_after_the_publish_delay_are_kept_apart() {
    let mut config = push_config(SubscribeMode::Url);
    if let Some(push) = config.push.as_mut() {
        push.publish_delay = Duration::from_secs(10);
    }
    let mut h = Harness::new(config);
    h.upgrade();
    let ping = server_frame(OpCode::Control(Control::Ping), true, b"");
    h.feed(&ping).unwrap();
    h.advance(2 * SEC);
    h.feed(&ping).unwrap();
    assert_one_sample_near(&h.cx.report.pings.interval, 2_000_000);
    h.cx.start_hold(h.now);
    assert!(!h.cx.publishing(h.now.ns + 10 * SEC - 1));
    assert!(h.cx.publishing(h.now.ns + 10 * SEC));
    h.advance(3 * SEC);
    h.feed(&ping).unwrap();
    assert_eq!(h.cx.report.pings.interval.len(), 2, "3 s into the hold");
    h.advance(9 * SEC);
    h.feed(&ping).unwrap();
    assert_eq!(h.cx.report.pings.interval.len(), 2);
    assert_one_sample_near(&h.cx.report.pings.interval_after_publish, 9_000_000);
    assert_eq!(h.cx.report.pings.received, 4);

    let mut h = Harness::new(push_config(SubscribeMode::Url));
    h.cx.start_hold(h.now);
    assert!(
        !h.cx.publishing(h.now.ns + 3600 * SEC),
        "no delay: nothing kept apart"
    );
}

#[test]
fn each_pending_state_times_out_with_its_cause() {
    let mut h = Harness::new(config());
    let deadline = h.client().poll_timeout();
    h.advance(deadline - h.now.ns - 1);
    let client = h.client.as_mut().unwrap();
    assert_eq!(
        client.handle_timeout(h.now, &mut h.cx, &mut h.out),
        Ok(()),
        "an early call does nothing"
    );
    assert_eq!(h.advance_to_next_deadline(), Err(End::fault("timeout")));
    h.end(End::fault("timeout"));
    assert_eq!(h.cx.report.failed_by_cause["timeout"], 1);
    assert_eq!(h.cx.pending(), 0);

    let mut h = Harness::new(config());
    h.connect();
    assert_eq!(h.client().state(), State::Handshaking);
    assert_eq!(
        h.advance_to_next_deadline(),
        Err(End::fault("handshake_timeout"))
    );
    assert_eq!(h.now.ns, MS + 10 * SEC, "one deadline from connect start");

    let mut h = Harness::new(push_config(SubscribeMode::UrlAck));
    h.upgrade();
    assert_eq!(h.client().state(), State::Subscribing);
    assert_eq!(
        h.advance_to_next_deadline(),
        Err(End::fault("subscribe_timeout"))
    );
    h.end(End::fault("subscribe_timeout"));
    assert_eq!(
        h.cx.report.lost_by_cause["subscribe_timeout"], 1,
        "established, so lost rather than failed"
    );
    assert_eq!((h.cx.pending(), h.cx.open()), (0, 0));
}

#[test]
fn partial_input_is_buffered_until_complete_then_freed() {
    let mut h = Harness::new(config());
    let request = h.connect();
    let head = Harness::acceptance(&request).into_bytes();
    let ping = server_frame(OpCode::Control(Control::Ping), true, b"p");
    let input = [&head[..], &ping[..]].concat();
    for (i, byte) in input.iter().enumerate() {
        h.feed(std::slice::from_ref(byte)).unwrap();
        let fed = i + 1;
        let partial = if fed < head.len() {
            fed
        } else {
            fed - head.len()
        };
        let expected = if fed == head.len() || fed == input.len() {
            0
        } else {
            partial
        };
        assert_eq!(h.client().buffered_bytes(), expected, "after {fed} bytes");
    }
    assert_eq!(h.client().buffered_bytes(), 0, "nothing kept once complete");
    assert_eq!(h.client().state(), State::Open);
    assert_eq!(
        h.sent_frames(),
        [(OpCode::Control(Control::Pong), b"p".to_vec())]
    );
}

#[test]
fn client_pings_keep_their_schedule_and_time_the_pong() {
    let mut h = Harness::new(EngineConfig {
        client_ping_interval: Some(Duration::from_secs(1)),
        main_latency: MainLatency::ClientRtt,
        ..config()
    });
    h.upgrade();
    let first = h.client().poll_timeout();
    assert!(
        first > h.now.ns && first <= h.now.ns + SEC + 1,
        "jittered within one interval"
    );

    h.advance_to_next_deadline().unwrap();
    let frames = h.sent_frames();
    assert_eq!(
        frames,
        [(OpCode::Control(Control::Ping), first.to_be_bytes().to_vec())]
    );
    assert_eq!(h.cx.report.pings.client_sent, 1);
    assert_eq!(h.client().poll_timeout(), first + SEC);

    h.advance(3 * MS);
    h.feed(&server_frame(
        OpCode::Control(Control::Pong),
        true,
        &frames[0].1,
    ))
    .unwrap();
    assert_one_sample_near(&h.cx.report.pings.client_rtt, 3000);
    assert_eq!(h.cx.report.timeline.series().len(), 1, "the main latency");
}

#[test]
fn a_server_close_is_echoed_and_counts_as_lost() {
    let mut h = Harness::new(config());
    h.upgrade();
    let end = h
        .feed(&server_frame(
            OpCode::Control(Control::Close),
            true,
            &[0x03, 0xE9, b'x'],
        ))
        .unwrap_err();
    assert_eq!(end, End::Fault("closed_by_server_1001".into()));
    let frames = h.sent_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Control(Control::Close));
    assert_eq!(close_code(&frames[0].1), 1001);
    h.end(end);
    assert_eq!(h.cx.report.lost_by_cause["closed_by_server_1001"], 1);
    assert_eq!(h.cx.open(), 0);

    let mut h = Harness::new(config());
    h.upgrade();
    let end = h
        .feed(&server_frame(OpCode::Control(Control::Close), true, b""))
        .unwrap_err();
    assert_eq!(end, End::fault("closed_by_server"));
    assert_eq!(
        h.sent_frames(),
        [(OpCode::Control(Control::Close), Vec::new())]
    );
}

#[test]
fn fragmented_messages_are_reassembled_within_the_limit() {
    let mut h = Harness::new(EngineConfig {
        max_message_size: 6,
        ..config()
    });
    h.upgrade();
    h.feed(&server_frame(OpCode::Data(Data::Text), false, b"ab"))
        .unwrap();
    assert_eq!(h.client().buffered_bytes(), 2);
    h.feed(&server_frame(OpCode::Control(Control::Ping), true, b""))
        .unwrap();
    h.feed(&server_frame(OpCode::Data(Data::Continue), true, b"cd"))
        .unwrap();
    assert_eq!(h.client().buffered_bytes(), 0);
    assert_eq!(h.cx.report.messages_received, 1);
    assert_eq!(h.cx.report.pings.received, 1, "a ping between fragments");

    h.feed(&server_frame(OpCode::Data(Data::Binary), false, b"abcd"))
        .unwrap();
    assert_eq!(
        h.feed(&server_frame(OpCode::Data(Data::Continue), true, b"efg")),
        Err(End::fault("message_too_big"))
    );

    let mut h = Harness::new(config());
    h.upgrade();
    assert_eq!(
        h.feed(&server_frame(OpCode::Data(Data::Continue), true, b"x")),
        Err(End::fault("protocol_error")),
        "a continuation with nothing to continue"
    );
}

#[test]
fn a_bad_acceptance_fails_with_its_cause() {
    let mut h = Harness::new(config());
    h.connect();
    let refused = h.feed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(refused, Err(End::Fault("http_401".into())));
    h.end(refused.unwrap_err());
    assert_eq!(h.cx.report.failed_by_cause["http_401"], 1);
    assert_eq!((h.cx.pending(), h.cx.open()), (0, 0));

    let mut h = Harness::new(config());
    h.connect();
    let wrong = h.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    );
    assert_eq!(wrong, Err(End::Fault("handshake_invalid".into())));
}

#[test]
fn push_url_mode_subscribes_at_the_upgrade() {
    let mut h = Harness::new(push_config(SubscribeMode::Url));
    let request = h.upgrade();
    let target = request.lines().next().unwrap();
    assert!(target.starts_with("GET /ws?x=1&token="), "{target}");
    assert!(
        target.ends_with("&channel=lt-1 HTTP/1.1"),
        "client 5 of 4 channels: {target}"
    );
    assert_eq!(h.client().state(), State::Open);
    assert_eq!(h.cx.live_subscribers, [0, 1, 0, 0]);
    assert!(h.sent_frames().is_empty());
    h.end(End::fault("reset"));
    assert_eq!(h.cx.live_subscribers, [0, 0, 0, 0]);
}

#[test]
fn push_op_mode_subscribes_then_checks_order_and_latency() {
    let mut h = Harness::new(push_config(SubscribeMode::Op));
    let request = h.upgrade();
    assert!(!request.lines().next().unwrap().contains("channel="));
    assert_eq!(
        h.sent_frames(),
        [(
            OpCode::Data(Data::Text),
            br#"{"op":"subscribe","channel":"lt-1"}"#.to_vec()
        )]
    );
    assert_eq!(h.client().state(), State::Subscribing);
    assert_eq!(h.cx.pending(), 1, "not usable before the acknowledgement");

    h.feed(&text(r#"{"op":"subscribed","channel":"lt-2"}"#))
        .unwrap();
    assert_eq!(
        h.client().state(),
        State::Subscribing,
        "someone else's channel"
    );
    h.feed(&text(r#"{"op":"subscribed","channel":"lt-1"}"#))
        .unwrap();
    assert_eq!(h.client().state(), State::Open);
    assert_eq!(h.cx.pending(), 0);
    assert_eq!(h.cx.live_subscribers, [0, 1, 0, 0]);

    let sent = h.now.unix_ns - 2 * MS;
    for seq in [5, 5, 4, 6] {
        let delivery = format!(r#"{{"channel":"lt-1","seq":{seq},"data":{{"t":{sent}}}}}"#);
        h.feed(&text(&delivery)).unwrap();
    }
    h.feed(&text(r#"{"channel":"lt-1","seq":7}"#)).unwrap();
    let push = h.cx.report.push.as_ref().unwrap();
    assert_eq!(
        (push.subscribed, push.acks, push.unexpected),
        (1, 1, 2),
        "the foreign ack and the delivery without `t` are unexpected"
    );
    assert_eq!((push.delivered, push.duplicates, push.reordered), (3, 1, 1));
    assert_eq!(push.latency.len(), 3);
    assert_eq!(push.latency.max_us(), Some(2000));
}

fn recover_config(subscribe: SubscribeMode) -> EngineConfig {
    let mut config = push_config(subscribe);
    let push = config.push.as_mut().unwrap();
    push.recover = Some(RecoverPlan {
        back: 3,
        positions: (0..4).map(|c| (10 + c, format!("EPOCH00{c}"))).collect(),
    });
    config.main_latency = MainLatency::Recover;
    config
}

#[test]
fn recover_mode_subscribes_with_since_and_checks_the_recovered_run() {
    let mut h = Harness::new(recover_config(SubscribeMode::Url));
    let request = h.upgrade();
    let target = request.lines().next().unwrap();
    // Client 5 is on lt-1, whose position is 11: since 11 - 3 = 8.
    assert!(
        target.ends_with("&since=lt-1%3A8%3AEPOCH001 HTTP/1.1"),
        "{target}"
    );
    assert_eq!(
        h.client().state(),
        State::Subscribing,
        "a URL since is answered"
    );
    h.feed(&text(
        r#"{"op":"subscribed","channel":"lt-1","seq":11,"epoch":"EPOCH001","recovered":true}"#,
    ))
    .unwrap();
    assert_eq!(h.client().state(), State::Open);
    let old = h.now.unix_ns - 60 * SEC;
    h.now.ns += 5 * MS;
    for seq in [9, 10, 11, 12] {
        let delivery = format!(r#"{{"channel":"lt-1","seq":{seq},"data":{{"t":{old}}}}}"#);
        h.feed(&text(&delivery)).unwrap();
    }
    let push = h.cx.report.push.as_ref().unwrap();
    assert_eq!(
        (
            push.recovered,
            push.not_recovered,
            push.recovery_complete,
            push.recovery_gaps
        ),
        (1, 0, 1, 0)
    );
    let took = push.recovery.max_us().unwrap();
    assert!(
        (5000..7000).contains(&took),
        "subscribe → seq 11: {took} µs"
    );
    assert_eq!(push.delivered, 1, "only 12 is a live delivery");

    // A gap in the recovered run, and an op-form subscribe that is not recovered.
    let mut h = Harness::new(recover_config(SubscribeMode::Url));
    h.upgrade();
    h.feed(&text(
        r#"{"op":"subscribed","channel":"lt-1","seq":11,"epoch":"EPOCH001","recovered":true}"#,
    ))
    .unwrap();
    for seq in [9, 11] {
        let delivery = format!(r#"{{"channel":"lt-1","seq":{seq},"data":{{"t":1}}}}"#);
        h.feed(&text(&delivery)).unwrap();
    }
    let push = h.cx.report.push.as_ref().unwrap();
    assert_eq!((push.recovery_complete, push.recovery_gaps), (0, 1));
    let mut h = Harness::new(recover_config(SubscribeMode::Op));
    h.upgrade();
    assert_eq!(
        h.sent_frames(),
        [(
            OpCode::Data(Data::Text),
            br#"{"op":"subscribe","channel":"lt-1","since":{"seq":8,"epoch":"EPOCH001"}}"#.to_vec()
        )]
    );
    h.feed(&text(
        r#"{"op":"subscribed","channel":"lt-1","seq":11,"epoch":"OTHER000","recovered":false}"#,
    ))
    .unwrap();
    let push = h.cx.report.push.as_ref().unwrap();
    assert_eq!((push.recovered, push.not_recovered), (0, 1));
}

#[test]
fn echo_sends_on_schedule_during_the_hold_and_verifies_echoes() {
    let mut h = Harness::new(echo_config(10.0));
    h.upgrade();
    assert_eq!(
        h.client().poll_timeout(),
        NEVER,
        "no traffic before the hold"
    );
    h.cx.start_hold(h.now);
    let client = h.client.as_mut().unwrap();
    client.handle_hold(h.now, &mut h.cx);
    let first = h.client().poll_timeout();
    assert!(
        first >= h.now.ns && first < h.now.ns + 100 * MS,
        "within one period"
    );

    h.advance_to_next_deadline().unwrap();
    let frames = h.sent_frames();
    assert_eq!(frames.len(), 1);
    let (opcode, message) = &frames[0];
    assert_eq!((*opcode, message.len()), (OpCode::Data(Data::Binary), 32));
    assert_eq!(
        h.client().poll_timeout(),
        first + 100 * MS,
        "keeps the rate's phase"
    );

    h.advance(MS);
    h.feed(&server_frame(OpCode::Data(Data::Binary), true, message))
        .unwrap();
    let echo = h.cx.report.echo.as_ref().unwrap();
    assert_eq!((echo.sent, echo.received, echo.mismatches), (1, 1, 0));
    assert_one_sample_near(&echo.rtt, 1000);

    h.advance_to_next_deadline().unwrap();
    let mut second = h.sent_frames().remove(0).1;
    second[20] ^= 1;
    h.feed(&server_frame(OpCode::Data(Data::Binary), true, &second))
        .unwrap();
    assert_eq!(h.cx.report.echo.as_ref().unwrap().mismatches, 1);

    h.advance_to_next_deadline().unwrap();
    assert!(h.finish());
    assert_eq!(h.cx.report.echo.as_ref().unwrap().outstanding_at_end, 1);
}

#[test]
fn closed_loop_echo_sends_the_next_message_on_each_echo_until_finishing() {
    let mut h = Harness::new(echo_config(0.0));
    h.cx.start_hold(h.now);
    h.upgrade();
    assert_eq!(
        h.client().poll_timeout(),
        h.now.ns,
        "opened during the hold: at once"
    );
    h.advance_to_next_deadline().unwrap();
    let first = h.sent_frames().remove(0).1;
    assert_eq!(h.client().poll_timeout(), NEVER, "closed loop: no timer");

    h.feed(&server_frame(OpCode::Data(Data::Binary), true, &first))
        .unwrap();
    let second = h.sent_frames().remove(0).1;
    assert_eq!(second[..8], 1u64.to_be_bytes(), "the next sequence number");

    h.cx.finishing = true;
    h.feed(&server_frame(OpCode::Data(Data::Binary), true, &second))
        .unwrap();
    assert!(h.sent_frames().is_empty());
    assert_eq!(h.cx.report.echo.as_ref().unwrap().received, 2);
}

#[test]
fn a_churn_cycle_sends_its_message_closes_and_completes() {
    let churn = EngineConfig {
        churn: Some(ChurnLoad {
            rate: 10.0,
            message_size: 5,
        }),
        ..config()
    };
    let mut h = Harness::new(churn.clone());
    h.upgrade();
    let frames = h.sent_frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], (OpCode::Data(Data::Text), b"xxxxx".to_vec()));
    assert_eq!(frames[1].0, OpCode::Control(Control::Close));
    assert_eq!(close_code(&frames[1].1), 1000);
    assert_eq!(h.client().state(), State::Closing);
    assert_eq!((h.cx.pending(), h.cx.open()), (0, 1));

    h.advance(MS);
    let end = h
        .feed(&server_frame(
            OpCode::Control(Control::Close),
            true,
            &[0x03, 0xE8],
        ))
        .unwrap_err();
    assert_eq!(end, End::Done);
    h.end(end);
    let report = &h.cx.report;
    let cycles = report.churn.as_ref().unwrap();
    assert_eq!((cycles.started, cycles.completed), (1, 1));
    assert_one_sample_near(&cycles.cycle, 2000);
    assert!(report.lost_by_cause.is_empty());

    let mut h = Harness::new(churn);
    h.upgrade();
    assert_eq!(
        h.advance_to_next_deadline(),
        Err(End::fault("close_timeout"))
    );
}

#[test]
fn finish_checks_the_ping_count_and_queues_a_close() {
    let mut h = Harness::new(EngineConfig {
        expect_ping_interval: Some(Duration::from_secs(1)),
        ..config()
    });
    h.upgrade();
    h.advance(SEC);
    h.feed(&server_frame(OpCode::Control(Control::Ping), true, b""))
        .unwrap();
    h.sent_frames();
    h.advance(2 * SEC);
    assert!(h.finish());
    let pings = &h.cx.report.pings;
    assert_eq!(
        (pings.per_connection_min, pings.per_connection_max),
        (Some(1), Some(1))
    );
    assert_eq!(
        (pings.connections_checked, pings.connections_below_expected),
        (1, 1),
        "held 3 s at 1 s pings: at least 2 expected"
    );
    let frames = h.sent_frames();
    assert_eq!(frames[0].0, OpCode::Control(Control::Close));
    assert_eq!(close_code(&frames[0].1), 1000);

    let mut h = Harness::new(config());
    h.connect();
    assert!(!h.finish(), "not established");
    assert!(h.out.is_empty());
    let report = h.cx.take_report(h.now, 1, 1);
    assert_eq!(report.failed_by_cause["not_established_at_end"], 1);
    assert_eq!(
        report.failed_by_cause["not_started"], 9,
        "10 asked for, 1 started"
    );
}

#[test]
fn a_refused_subscribe_fails_the_client_at_once() {
    let mut h = Harness::new(push_config(SubscribeMode::UrlAck));
    h.upgrade();
    assert_eq!(h.client().state(), State::Subscribing);
    let refusal = text(r#"{"op":"error","code":"engine_unavailable","message":"redis down"}"#);
    assert_eq!(h.feed(&refusal), Err(End::fault("subscribe_refused")));
    h.end(End::fault("subscribe_refused"));
    assert_eq!(h.cx.report.lost_by_cause["subscribe_refused"], 1);
    assert_eq!((h.cx.pending(), h.cx.open()), (0, 0));
}
