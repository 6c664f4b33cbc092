//! The worker's side of subscribes against a scripted engine: requests are read off
//! the channel and answered by hand, so every interleaving of answers and live
//! deliveries can be set up.

use super::*;
use crate::engine::position::Epoch;
use crate::engine::recovery::Answer;
use crate::engine::{EngineRequests, request_channel};
use crate::push::PushLimits;
use crate::push::channel::ChannelGrant;
use crate::push::protocol::InboundRateLimit;

fn id(i: u32) -> ConnId {
    ConnId {
        index: i,
        generation: 7,
    }
}

fn session(user: Option<&str>) -> Box<Session> {
    let rate = InboundRateLimit::new(0, &PushLimits::default());
    Box::new(Session::new(user.map(Box::from), ChannelGrant::any(), rate))
}

fn epoch() -> Epoch {
    Epoch::parse("AAAAAAAA").unwrap()
}

fn at(seq: u64) -> Position {
    Position {
        seq,
        epoch: epoch(),
    }
}

fn frame(seq: u64) -> Bytes {
    Bytes::from(seq.to_string())
}

fn delivery(stream: StreamKey, seq: u64) -> Delivery {
    Delivery {
        stream,
        position: at(seq),
        frame: frame(seq),
        accepted_at: Instant::now(),
    }
}

fn channel(name: &str) -> StreamKey {
    StreamKey::Channel(name.into())
}

fn requests(r: &EngineRequests) -> Vec<Request> {
    std::iter::from_fn(|| r.try_recv()).collect()
}

/// Answers a Recover request: the position `top`, recovered frames from `since + 1`.
fn answer(request: &Request, top: u64, recovered: bool) -> Answered {
    let Request::Recover(r) = request else {
        panic!("not a recover: {request:?}")
    };
    let since = r.since;
    Answered {
        conn: r.conn,
        ticket: r.ticket,
        stream: r.stream.clone(),
        answer: Ok(Answer {
            position: at(top),
            recovered: since.map(|_| recovered),
            frames: match since {
                Some(s) if recovered => (s.seq + 1..=top).map(frame).collect(),
                _ => Vec::new(),
            },
            first_seq: since.map_or(top + 1, |s| s.seq + 1),
        }),
    }
}

fn seqs(frames: &[Bytes]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| std::str::from_utf8(f).unwrap().parse().unwrap())
        .collect()
}

fn deliver(fanout: &mut LocalFanout, batch: &[Delivery]) -> Vec<(u32, u64)> {
    let mut got = Vec::new();
    fanout.deliver(batch, |id, frame| {
        got.push((id.index, seqs(&[frame])[0]));
        true
    });
    got
}

fn complete(fanout: &mut LocalFanout, answers: Vec<Answered>) -> Vec<Completed> {
    let mut done = Vec::new();
    fanout.complete(answers, |c| done.push(c));
    done
}

#[test]
fn a_subscribe_counts_first_then_asks_and_buffers_until_the_answer() {
    let (sender, engine) = request_channel();
    let mut fanout = LocalFanout::new(3, sender);
    let mut s = session(Some("42"));
    fanout.join(id(1), &mut s, &[], &[], None);
    assert!(
        matches!(&requests(&engine)[..], [Request::Subscribe(StreamKey::User(u))] if &**u == "42")
    );

    let since = Since {
        seq: 4,
        epoch: Some(epoch()),
    };
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("c"), Some(since), None)
        .unwrap();
    let sent = requests(&engine);
    assert!(matches!(&sent[0], Request::Subscribe(k) if *k == channel("c")));
    let Request::Recover(r) = &sent[1] else {
        panic!()
    };
    assert_eq!((r.worker, r.conn, r.since), (3, id(1), Some(since)));
    assert_eq!(
        fanout.subscribe(id(1), &mut s, Stream::Channel("c"), None, None),
        Err(SubscribeError::Busy)
    );
    // Live deliveries before the answer are held back: 6 was read, 7 and 8 were not.
    assert!(
        deliver(
            &mut fanout,
            &[delivery(channel("c"), 6), delivery(channel("c"), 7)]
        )
        .is_empty()
    );
    let done = complete(&mut fanout, vec![answer(&sent[1], 6, true)]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, Ok(at(6)));
    assert_eq!(done[0].recovered, Some(true));
    assert_eq!(seqs(&done[0].frames), [5, 6, 7]);
    assert_eq!(done[0].recovered_count, 2);
    // From now on live, once each.
    assert_eq!(
        deliver(
            &mut fanout,
            &[delivery(channel("c"), 7), delivery(channel("c"), 8)]
        ),
        [(1, 8)]
    );
    // A second answer for the same ticket is stale.
    assert!(complete(&mut fanout, vec![answer(&sent[1], 6, true)]).is_empty());
}

#[test]
fn an_in_place_recovery_starts_after_what_was_delivered() {
    let (sender, engine) = request_channel();
    let mut fanout = LocalFanout::new(0, sender);
    let mut s = session(None);
    fanout.join(id(1), &mut s, &["c".into()], &[], None);
    requests(&engine);
    assert_eq!(
        deliver(
            &mut fanout,
            &[delivery(channel("c"), 1), delivery(channel("c"), 2)]
        ),
        [(1, 1), (1, 2)]
    );
    let since = Since {
        seq: 0,
        epoch: Some(epoch()),
    };
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("c"), Some(since), None)
        .unwrap();
    let sent = requests(&engine);
    assert_eq!(
        sent.len(),
        1,
        "no second count for an existing subscription"
    );
    let Request::Recover(r) = &sent[0] else {
        panic!()
    };
    assert_eq!(
        r.since.unwrap().seq,
        2,
        "after the later of since and the mark"
    );
    let done = complete(&mut fanout, vec![answer(&sent[0], 3, true)]);
    assert_eq!(seqs(&done[0].frames), [3]);
    // A plain in-place subscribe only asks for the position: delivery goes on.
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("c"), None, None)
        .unwrap();
    let sent = requests(&engine);
    assert_eq!(deliver(&mut fanout, &[delivery(channel("c"), 4)]), [(1, 4)]);
    let done = complete(&mut fanout, vec![answer(&sent[0], 4, false)]);
    assert_eq!(
        (done[0].outcome.clone(), done[0].recovered),
        (Ok(at(4)), None)
    );
    assert!(done[0].frames.is_empty());
}

#[test]
fn url_since_joins_pending_and_plain_url_channels_join_live() {
    let (sender, engine) = request_channel();
    let mut fanout = LocalFanout::new(0, sender);
    let mut s = session(Some("u"));
    let since = Since {
        seq: 1,
        epoch: Some(epoch()),
    };
    fanout.join(
        id(1),
        &mut s,
        &["a".into(), "b".into()],
        &[("b".into(), since)],
        Some(since),
    );
    let sent = requests(&engine);
    let recovers: Vec<&RecoverRequest> = sent
        .iter()
        .filter_map(|r| match r {
            Request::Recover(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(recovers.len(), 2, "the user stream and b");
    assert_eq!(s.subscription_count(), 2);
    // a is live at once, b waits.
    assert_eq!(
        deliver(
            &mut fanout,
            &[delivery(channel("a"), 5), delivery(channel("b"), 2)]
        ),
        [(1, 5)]
    );
    let answers = sent
        .iter()
        .filter(|r| matches!(r, Request::Recover(_)))
        .map(|r| answer(r, 2, true))
        .collect();
    let done = complete(&mut fanout, answers);
    assert_eq!(done.len(), 2);
    let user = done.iter().find(|d| &*d.channel == "#user").unwrap();
    assert_eq!(seqs(&user.frames), [2]);
    let b = done.iter().find(|d| &*d.channel == "b").unwrap();
    assert_eq!((b.reply_id.is_none(), seqs(&b.frames)), (true, vec![2]));
}

#[test]
fn unsubscribe_and_leave_drop_waiting_subscribes_and_are_counted() {
    let (sender, engine) = request_channel();
    let mut fanout = LocalFanout::new(0, sender);
    let mut s = session(Some("u"));
    fanout.join(id(1), &mut s, &[], &[], None);
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("c"), None, None)
        .unwrap();
    assert_eq!(fanout.waiting_count(), 1);
    assert!(fanout.unsubscribe(id(1), &mut s, "c"));
    assert!(!fanout.unsubscribe(id(1), &mut s, "c"));
    assert_eq!(fanout.waiting_count(), 0);
    let sent = requests(&engine);
    let recover = sent
        .iter()
        .find(|r| matches!(r, Request::Recover(_)))
        .unwrap();
    assert!(complete(&mut fanout, vec![answer(recover, 0, false)]).is_empty());
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("d"), None, None)
        .unwrap();
    fanout.leave(id(1), *s);
    assert_eq!(fanout.waiting_count(), 0);
    let sent = requests(&engine);
    let (mut plus, mut minus) = (0, 0);
    for r in &sent {
        match r {
            Request::Subscribe(_) => plus += 1,
            Request::Unsubscribe(_) => minus += 1,
            Request::Recover(_) => {}
        }
    }
    assert_eq!((plus, minus), (1, 2), "d +1, then d and u -1");
    assert_eq!(
        (fanout.channel_count(), fanout.subscription_count()),
        (0, 0)
    );
}

#[test]
fn an_engine_error_undoes_a_fresh_subscription_and_restores_one_in_place() {
    let (sender, engine) = request_channel();
    let mut fanout = LocalFanout::new(0, sender);
    let mut s = session(None);
    fanout
        .subscribe(id(1), &mut s, Stream::Channel("c"), None, None)
        .unwrap();
    let sent = requests(&engine);
    let Request::Recover(r) = &sent[1] else {
        panic!()
    };
    let failed = Answered {
        conn: r.conn,
        ticket: r.ticket,
        stream: r.stream.clone(),
        answer: Err(EngineError::Unavailable("broker down".into())),
    };
    let done = complete(&mut fanout, vec![failed]);
    assert!(done[0].undo && done[0].outcome.is_err());
}
