//! The client protocol, `pingwheel::push::protocol::parse_client_message`, on arbitrary
//! text, and the reply written for its result.
//!
//! Input: a text message (bytes that are not UTF-8 become U+FFFD first: the frame
//! reader only ever hands over valid UTF-8). It is parsed under the default limits and
//! under a small client-message limit.
//!
//! Besides "never panics", it checks that every reply (the ack of a valid op, the
//! error of an invalid one) is a JSON object whose `op` is the expected one, that an
//! ack names the parsed channel, and that an echoed `id` is the client's JSON verbatim.
//! A subscribe (with or without `since`) is also answered the way the gateway answers
//! it once the engine has replied: with a position (`seq`, `epoch`) and, for a `since`,
//! `recovered`; those fields must come back as given.
//!
//! Which messages are valid is for the crate's own tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingwheel::engine::position::{Epoch, Position};
use pingwheel::push::PushLimits;
use pingwheel::push::protocol::{ClientOp, Reply, parse_client_message};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The reply's fields this target looks at.
#[derive(Deserialize)]
struct ReplyFields<'a> {
    op: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
}

/// Parses `reply`'s JSON and checks it against what was expected; returns the fields.
fn check_reply<'j>(
    json: &'j str,
    op: &str,
    channel: Option<&str>,
    id: Option<&RawValue>,
) -> ReplyFields<'j> {
    let fields: ReplyFields<'j> = serde_json::from_str(json).expect("a reply is a JSON object");
    assert_eq!(fields.op, op, "{json}");
    assert_eq!(fields.channel.as_deref(), channel, "{json}");
    assert_eq!(fields.code.is_some(), op == "error", "{json}");
    assert_eq!(
        fields.id.map(RawValue::get),
        id.map(RawValue::get),
        "{json}"
    );
    fields
}

fn check(text: &str, limits: &PushLimits) {
    match parse_client_message(text, limits) {
        Ok(request) => {
            let json = request.ack().to_json();
            match &request.op {
                ClientOp::Subscribe { channel, since } => {
                    let fields = check_reply(&json, "subscribed", Some(channel), request.id);
                    assert_eq!((fields.seq, fields.recovered), (None, None), "{json}");
                    // The engine's answer: the client's own position when it sent one
                    // with a valid epoch, else some position; recovered iff since.
                    let position = Position {
                        seq: since.map_or(7, |s| s.seq),
                        epoch: since
                            .and_then(|s| s.epoch)
                            .or_else(|| Epoch::parse("Ab3dE6g8"))
                            .expect("a valid epoch"),
                    };
                    let recovered = since.map(|s| s.epoch.is_some());
                    let answered = Reply::Subscribed {
                        channel,
                        id: request.id,
                        position: Some(position),
                        recovered,
                    }
                    .to_json();
                    let fields = check_reply(&answered, "subscribed", Some(channel), request.id);
                    assert_eq!(fields.seq, Some(position.seq), "{answered}");
                    assert_eq!(
                        fields.epoch.as_deref(),
                        Some(position.epoch.as_str()),
                        "{answered}"
                    );
                    assert_eq!(fields.recovered, recovered, "{answered}");
                }
                ClientOp::Unsubscribe { channel } => {
                    check_reply(&json, "unsubscribed", Some(channel), request.id);
                }
                ClientOp::Ping => {
                    check_reply(&json, "pong", None, request.id);
                }
            }
        }
        Err(error) => {
            check_reply(&error.reply().to_json(), "error", None, error.id);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text, &PushLimits::default());
    let small = PushLimits {
        max_client_message: 64,
        max_channel_name: 8,
        ..PushLimits::default()
    };
    check(&text, &small);
});
