//! Push: client *i* subscribes to channel `lt-{i mod M}` (in the upgrade URL, or with an
//! `{"op":"subscribe"}` after it), then every delivery is checked for order (`seq`
//! strictly increasing per connection) and timed (receive − the publish's `t`).
//!
//! With `--recover-back N` the subscribe carries `since`, N messages before the
//! channel's position after the coordinator's prefill: the reply must say
//! `recovered:true`, and the N recovered messages must arrive as exactly the next seqs,
//! in order; the time from the subscribe to the last of them is the main latency.
//! Recovered messages are not counted as live deliveries.

use std::borrow::Cow;

use serde::Deserialize;

use crate::client::{Now, Shared, State, Transition, Turn};
use crate::codec::{Data, OpCode};
use crate::jwt;
use crate::settings::{EngineConfig, MainLatency, SubscribeMode};

/// A push client's own state (small: every client holds one).
#[derive(Debug, Default)]
pub struct PushState {
    /// Last delivery's `seq + 1` (0: none yet).
    last_seq_plus_one: u64,
    /// `--recover-back` only, until the recovered run is complete.
    recovering: Option<Box<Recovering>>,
}

/// A recovery in progress (`--recover-back`).
#[derive(Debug, Default)]
struct Recovering {
    /// When the subscribe went out (engine ns).
    subscribe_ns: u64,
    /// The next recovered seq expected (0: the answer has not come yet).
    next: u64,
    /// The last recovered seq (the channel's position after the prefill).
    last: u64,
    /// A recovered message was not the next expected one.
    gapped: bool,
}

/// `--recover-back`: the `since` of local client `local_index`, `(seq, epoch)`, and the
/// channel's top, if recovery is on.
fn since_of(cx: &Shared, local_index: u32) -> Option<(u64, &str, u64)> {
    let recover = cx.config.push.as_ref()?.recover.as_ref()?;
    let (top, epoch) = recover.positions.get(channel_of(&cx.config, local_index))?;
    Some((top.saturating_sub(recover.back), epoch, *top))
}

/// The push channel of local client `local_index`.
pub fn channel_of(config: &EngineConfig, local_index: u32) -> usize {
    let channels = config.push.as_ref().map_or(1, |p| p.channels.max(1));
    ((config.first_index + u64::from(local_index)) % u64::from(channels)) as usize
}

/// The request target: the configured one plus the client's token (and channel, unless
/// it subscribes with an op).
pub fn upgrade_path(state: &mut PushState, local_index: u32, now: Now, cx: &Shared) -> String {
    let config = &cx.config;
    let base = &config.path_and_query;
    let Some(push) = &config.push else {
        return base.clone();
    };
    let global = config.first_index + u64::from(local_index);
    let expires = now.unix_ns / 1_000_000_000 + 3600;
    let token = jwt::client_token(&push.token_secret, global, expires);
    let separator = if base.contains('?') { '&' } else { '?' };
    if push.subscribe == SubscribeMode::Op {
        return format!("{base}{separator}token={token}");
    }
    let channel = channel_of(config, local_index);
    if let Some((since, epoch, _)) = since_of(cx, local_index) {
        // The upgrade request is the subscribe.
        state.recovering = Some(Box::new(Recovering {
            subscribe_ns: now.ns,
            ..Recovering::default()
        }));
        return format!("{base}{separator}token={token}&since=lt-{channel}%3A{since}%3A{epoch}");
    }
    format!("{base}{separator}token={token}&channel=lt-{channel}")
}

/// Upgraded: subscribed already (`url`), or wait for the acknowledgement, sending the
/// subscribe op first (`op`).
pub fn on_upgraded(state: &mut PushState, turn: &mut Turn<'_>) -> Transition {
    let Some(push) = &turn.cx.config.push else {
        return Transition::Open;
    };
    let recovering = push.recover.is_some();
    match push.subscribe {
        // A URL `since` is answered: wait for it.
        SubscribeMode::Url if recovering => Transition::Subscribe,
        SubscribeMode::Url => {
            subscribed(turn.local_index, turn.cx);
            Transition::Open
        }
        SubscribeMode::UrlAck => Transition::Subscribe,
        SubscribeMode::Op => {
            let channel = channel_of(&turn.cx.config, turn.local_index);
            let op = match since_of(turn.cx, turn.local_index) {
                Some((since, epoch, _)) => {
                    state.recovering = Some(Box::new(Recovering {
                        subscribe_ns: turn.now.ns,
                        ..Recovering::default()
                    }));
                    format!(
                        r#"{{"op":"subscribe","channel":"lt-{channel}","since":{{"seq":{since},"epoch":"{epoch}"}}}}"#
                    )
                }
                None => format!(r#"{{"op":"subscribe","channel":"lt-{channel}"}}"#),
            };
            turn.out.frame(OpCode::Data(Data::Text), op.as_bytes());
            Transition::Subscribe
        }
    }
}

/// A text message: an acknowledgement (which opens a subscribing client) or a
/// delivery; anything else counts as `unexpected`.
pub fn on_message(state: &mut PushState, turn: &mut Turn<'_>, payload: &[u8]) -> Transition {
    let cx = &mut *turn.cx;
    let channel = channel_of(&cx.config, turn.local_index);
    let Some(push) = cx.report.push.as_mut() else {
        return Transition::Stay;
    };
    let Ok(message) = serde_json::from_slice::<PushMessage<'_>>(payload) else {
        push.unexpected += 1;
        return Transition::Stay;
    };
    let ours = message
        .channel
        .as_deref()
        .and_then(|name| name.strip_prefix("lt-"))
        .and_then(|n| n.parse::<usize>().ok())
        == Some(channel);
    if message.op.as_deref() == Some("subscribed") && ours {
        push.acks += 1;
        if let Some((since, _, top)) = since_of(cx, turn.local_index)
            && turn.state == State::Subscribing
        {
            let push = cx.report.push.as_mut().expect("push counters");
            match state.recovering.as_mut() {
                Some(r) if message.recovered == Some(true) && message.seq == Some(top) => {
                    push.recovered += 1;
                    r.next = since + 1;
                    r.last = top;
                    state.last_seq_plus_one = since + 1;
                }
                _ => {
                    push.not_recovered += 1;
                    state.recovering = None;
                    state.last_seq_plus_one = message.seq.map_or(0, |seq| seq + 1);
                }
            }
        }
        if turn.state == State::Subscribing {
            subscribed(turn.local_index, cx);
            return Transition::Open;
        }
        return Transition::Stay;
    }
    if turn.state == State::Subscribing {
        if message.op.as_deref() == Some("error") {
            // The subscribe was refused (e.g. `engine_unavailable`): no acknowledgement
            // will come, so the client fails now instead of at `--connect-timeout`.
            return Transition::Fail("subscribe_refused");
        }
        push.unexpected += 1;
        return Transition::Stay;
    }
    let (Some(seq), Some(sent_unix_ns)) = (message.seq, message.data.and_then(|d| d.t)) else {
        push.unexpected += 1;
        return Transition::Stay;
    };
    if !ours {
        push.unexpected += 1;
        return Transition::Stay;
    }
    if let Some(r) = state.recovering.as_mut()
        && r.next != 0
        && seq <= r.last
    {
        // A recovered message: exactly the next one, or a gap.
        if seq == r.next {
            r.next += 1;
        } else {
            push.recovery_gaps += 1;
            r.gapped = true;
            r.next = seq + 1;
        }
        state.last_seq_plus_one = seq + 1;
        if seq == r.last {
            let latency_us = turn.now.ns.saturating_sub(r.subscribe_ns) / 1000;
            push.recovery.record_us(latency_us);
            if !r.gapped {
                push.recovery_complete += 1;
            }
            state.recovering = None;
            cx.record_main(MainLatency::Recover, latency_us, turn.now.unix_ns);
        }
        return Transition::Stay;
    }
    let latest = state.last_seq_plus_one;
    if latest != 0 && seq + 1 == latest {
        push.duplicates += 1;
        return Transition::Stay;
    }
    if latest != 0 && seq + 1 < latest {
        push.reordered += 1;
    } else {
        state.last_seq_plus_one = seq + 1;
    }
    push.delivered += 1;
    let latency_us = turn.now.unix_ns.saturating_sub(sent_unix_ns) / 1000;
    push.latency.record_us(latency_us);
    cx.record_main(MainLatency::Push, latency_us, sent_unix_ns);
    Transition::Stay
}

/// A client that ended open was a live subscriber of its channel.
pub fn on_end(state: State, local_index: u32, cx: &mut Shared) {
    if state == State::Open {
        let channel = channel_of(&cx.config, local_index);
        cx.live_subscribers[channel] -= 1;
    }
}

/// The client became a subscriber of its channel.
fn subscribed(local_index: u32, cx: &mut Shared) {
    let channel = channel_of(&cx.config, local_index);
    cx.live_subscribers[channel] += 1;
    if let Some(push) = cx.report.push.as_mut() {
        push.subscribed += 1;
    }
}

/// A server text message in the push protocol: an acknowledgement or a delivery.
#[derive(Debug, Deserialize)]
struct PushMessage<'a> {
    #[serde(borrow)]
    op: Option<Text<'a>>,
    #[serde(borrow)]
    channel: Option<Text<'a>>,
    seq: Option<u64>,
    recovered: Option<bool>,
    data: Option<PushData>,
}

/// A JSON string borrowed from the message when it has no escapes (serde borrows a
/// bare `Cow` but not one inside an `Option`, hence this newtype).
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[derive(Debug, Deserialize)]
struct PushData {
    t: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_messages_parse_without_copying_names() {
        let ack: PushMessage<'_> =
            serde_json::from_slice(br#"{"op":"subscribed","channel":"lt-3"}"#).unwrap();
        assert_eq!(ack.op.as_deref(), Some("subscribed"));
        assert!(matches!(ack.channel, Some(Text(Cow::Borrowed("lt-3")))));
        let escaped: PushMessage<'_> =
            serde_json::from_slice(br#"{"channel":"lt-\u0033"}"#).unwrap();
        assert_eq!(escaped.channel.as_deref(), Some("lt-3"));
        let delivery: PushMessage<'_> = serde_json::from_slice(
            br#"{"channel":"lt-3","seq":17,"data":{"t":1700000000000000000,"i":4,"pad":"xx"}}"#,
        )
        .unwrap();
        assert_eq!(delivery.seq, Some(17));
        assert_eq!(
            delivery.data.and_then(|d| d.t),
            Some(1_700_000_000_000_000_000)
        );
    }
}
