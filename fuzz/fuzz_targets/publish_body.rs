//! The publish API body parser, `pingwheel::push::publish::parse_request`, on
//! arbitrary bytes, and what the gateway builds from its result.
//!
//! Input: `[route, body...]`. `route` picks `POST /v1/publish`, `/v1/broadcast` or
//! `/v1/batch`; the body is parsed under the default limits and under small ones.
//!
//! Besides "never panics", it checks:
//! * every error renders as the documented `{"error":..,"message":..}` JSON, with
//!   status 400 (the size check is the caller's, before parsing);
//! * every accepted message encodes to a delivery frame whose payload is
//!   `{"channel":..,"seq":..,"epoch":..,"data":..}` carrying the channel, the position
//!   and the published `data` byte for byte, and whose length is the one computed
//!   beforehand (`DeliveryFrame::frame_len`, what the allocation is sized by).
//!
//! Which bodies are accepted (e.g. how deeply `data` may nest) is for the crate's own
//! tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingwheel::engine::position::{Epoch, Position};
use pingwheel::push::PushLimits;
use pingwheel::push::channel::USER_CHANNEL;
use pingwheel::push::protocol::{DeliveryFrame, delivery_json};
use pingwheel::push::publish::{PublishRequest, PublishRoute, Target, parse_request};
use serde::Deserialize;
use serde_json::value::RawValue;

const ROUTES: [PublishRoute; 3] = [
    PublishRoute::Publish,
    PublishRoute::Broadcast,
    PublishRoute::Batch,
];

/// The publish API's error body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorBody {
    error: String,
    message: String,
}

/// A delivery's payload. `data` stays raw: parsing it into a value would impose
/// serde_json's recursion limit, which raw values do not have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryBody<'a> {
    channel: String,
    seq: u64,
    epoch: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Encodes a delivery of `data` on `channel` and checks its payload.
fn check_delivery(channel: &str, seq: u64, data: &RawValue) {
    let epoch = Epoch::parse("Xy3kP0aQ").expect("a valid epoch");
    let position = Position { seq, epoch };
    let delivery = DeliveryFrame { channel, data };
    let frame = delivery.encode(&position);
    assert_eq!(
        frame.len(),
        delivery.frame_len(&position),
        "reserved length"
    );
    // An unmasked text frame with the shortest length encoding.
    assert_eq!(frame[0], 0x81, "a final text frame");
    let (len, header) = match frame[1] {
        n @ 0..=125 => (usize::from(n), 2),
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => {
            let bytes: [u8; 8] = frame[2..10].try_into().expect("8 bytes");
            (
                usize::try_from(u64::from_be_bytes(bytes)).expect("fits"),
                10,
            )
        }
        other => panic!("a masked or invalid length byte {other:#x}"),
    };
    assert_eq!(frame.len(), header + len, "frame length");
    let payload = &frame[header..];
    assert_eq!(delivery_json(&frame), payload, "the history API's view");
    let body: DeliveryBody<'_> = serde_json::from_slice(payload).unwrap_or_else(|err| {
        panic!(
            "delivery is not JSON ({err}): {:?}",
            String::from_utf8_lossy(payload)
        )
    });
    assert_eq!(body.channel, channel);
    assert_eq!(body.seq, seq);
    assert_eq!(body.epoch, epoch.as_str());
    assert_eq!(
        body.data.get(),
        data.get(),
        "data is passed through verbatim"
    );
}

fn check_target(target: &Target<'_>, seq: u64, data: &RawValue) {
    match target {
        Target::Channel(channel) => check_delivery(channel, seq, data),
        Target::User(_) => check_delivery(USER_CHANNEL, seq, data),
    }
}

fn check(route: PublishRoute, body: &[u8], limits: &PushLimits) {
    match parse_request(route, body, limits) {
        Ok(PublishRequest::Publish(publish)) => check_target(&publish.target, 1, publish.data),
        Ok(PublishRequest::Broadcast(broadcast)) => {
            assert!(!broadcast.channels.is_empty() && broadcast.channels.len() <= limits.max_batch);
            for (index, channel) in broadcast.channels.iter().enumerate() {
                check_delivery(channel, u64::MAX - index as u64, broadcast.data);
            }
        }
        Ok(PublishRequest::Batch(batch)) => {
            assert!(!batch.messages.is_empty() && batch.messages.len() <= limits.max_batch);
            for (index, publish) in batch.messages.iter().enumerate() {
                check_target(&publish.target, index as u64, publish.data);
            }
        }
        Err(error) => {
            assert_eq!(error.status(), 400, "{error}");
            let json = error.to_json();
            let body: ErrorBody = serde_json::from_str(&json).expect("error body is JSON");
            assert_eq!(body.error, error.code());
            assert_eq!(body.message, error.to_string());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [route, body @ ..] = data else {
        return;
    };
    let route = ROUTES[usize::from(*route) % ROUTES.len()];
    check(route, body, &PushLimits::default());
    let small = PushLimits {
        max_channel_name: 8,
        max_batch: 2,
        ..PushLimits::default()
    };
    check(route, body, &small);
});
