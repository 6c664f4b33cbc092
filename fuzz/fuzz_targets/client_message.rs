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
//!
//! Which messages are valid is for the crate's own tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
}

/// Parses `reply`'s JSON and checks it against what was expected.
fn check_reply(reply: &Reply<'_>, op: &str, channel: Option<&str>, id: Option<&RawValue>) {
    let json = reply.to_json();
    let fields: ReplyFields<'_> = serde_json::from_str(&json).expect("a reply is a JSON object");
    assert_eq!(fields.op, op, "{json}");
    assert_eq!(fields.channel.as_deref(), channel, "{json}");
    assert_eq!(fields.code.is_some(), op == "error", "{json}");
    assert_eq!(
        fields.id.map(RawValue::get),
        id.map(RawValue::get),
        "{json}"
    );
}

fn check(text: &str, limits: &PushLimits) {
    match parse_client_message(text, limits) {
        Ok(request) => {
            let reply = request.ack();
            match &request.op {
                ClientOp::Subscribe { channel } => {
                    check_reply(&reply, "subscribed", Some(channel), request.id);
                }
                ClientOp::Unsubscribe { channel } => {
                    check_reply(&reply, "unsubscribed", Some(channel), request.id);
                }
                ClientOp::Ping => check_reply(&reply, "pong", None, request.id),
            }
        }
        Err(error) => check_reply(&error.reply(), "error", None, error.id),
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
