//! The client protocol: small JSON text messages in, acknowledgements, errors and
//! deliveries out, and the per-connection inbound rate limit.
//!
//! The wire format is specified for client authors in `docs/protocol.md`; this module
//! is its implementation. In short:
//!
//! | client sends | gateway answers |
//! |---|---|
//! | `{"op":"subscribe","channel":"scores","id":1}` | `{"op":"subscribed","channel":"scores","id":1,"seq":41,"epoch":"Xy3kP0aQ"}` |
//! | `{"op":"subscribe","channel":"scores","since":{"seq":40,"epoch":"Xy3kP0aQ"}}` | `{"op":"subscribed",..,"recovered":true}`, then 41… |
//! | `{"op":"unsubscribe","channel":"scores"}` | `{"op":"unsubscribed","channel":"scores"}` |
//! | `{"op":"ping","id":"x"}` | `{"op":"pong","id":"x"}` |
//! | anything wrong | `{"op":"error","code":"bad_json","message":"...","id":...}` |
//!
//! and deliveries are `{"channel":"scores","seq":42,"epoch":"Xy3kP0aQ","data":<the published JSON>}`,
//! with channel [`USER_CHANNEL`] for per-user deliveries; the `subscribed` reply's
//! position comes from the engine (`crate::engine`), so the worker builds it.
//!
//! Every reply is produced as a complete unmasked WebSocket text frame, ready to queue.
//! A delivery frame is built once per publish ([`DeliveryFrame`]) and shared by
//! every subscriber on every worker: [`Bytes`] clones are reference counts.
//!
//! # How the worker uses this module
//!
//! For each complete text message of an open connection:
//!
//! 1. [`InboundRateLimit::check`] — `Limited`: queue [`ClientError::rate_limited`]'s
//!    reply; `Flood`: close the connection with 1008; `Allow`: go on.
//! 2. [`parse_client_message`] — an `Err` is queued as its [`ClientError::reply`].
//! 3. For `Subscribe`, [`authorize_subscribe`] against the session's grant and the
//!    connection's subscription count; for `Unsubscribe` of a channel the connection
//!    is not on, [`ClientError::not_subscribed`].
//! 4. Queue [`ClientRequest::ack`].
//!
//! A binary message is answered with [`ClientError::binary_message`].

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use pingwheel_proto::frame::{self, Data, OpCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::channel::{ChannelGrant, USER_CHANNEL, validate_channel_name};
use super::{PushLimits, json_str};
use crate::engine::Stream;
use crate::engine::history::FrameEncoder;
use crate::engine::position::{EPOCH_LEN, Epoch, Position, Since};

/// The stable error codes of `{"op":"error"}` replies. Clients match on these
/// strings; the `message` next to them is for humans and may change.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message is not valid JSON.
    BadJson,
    /// Valid JSON, but not a valid request: not an object, `op` or `channel` missing
    /// or not a string, an `id` that is neither a string nor a number, a binary message.
    BadRequest,
    /// `op` is not one of `subscribe`, `unsubscribe`, `ping`.
    UnknownOp,
    /// The channel name breaks the channel name rules (including reserved `#` names).
    InvalidChannel,
    /// The connection's token does not grant this channel.
    Forbidden,
    /// The connection is already on `max_subscriptions` channels.
    TooManySubscriptions,
    /// `unsubscribe` from a channel the connection is not subscribed to.
    NotSubscribed,
    /// Over the inbound message rate; the message was dropped unread.
    RateLimited,
    /// The message is longer than `max_client_message`; it was dropped unread.
    MessageTooLarge,
    /// A `subscribe` of this channel by this connection is still waiting for its
    /// reply; wait for it before subscribing the channel again.
    SubscribePending,
    /// The engine could not answer a `subscribe` (its broker is unreachable); the
    /// subscription was not made. Try again later.
    EngineUnavailable,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidChannel,
        ErrorCode::Forbidden,
        ErrorCode::TooManySubscriptions,
        ErrorCode::NotSubscribed,
        ErrorCode::RateLimited,
        ErrorCode::MessageTooLarge,
        ErrorCode::SubscribePending,
        ErrorCode::EngineUnavailable,
    ];

    /// The code as sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::SubscribePending => "subscribe_pending",
            ErrorCode::EngineUnavailable => "engine_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `{"op":"subscribe","channel":..}`: the channel name is valid (checked by
    /// [`parse_client_message`]); whether the token grants it is checked by
    /// [`authorize_subscribe`].
    Subscribe {
        /// The channel name (borrowed unless the JSON string had escapes), or
        /// [`USER_CHANNEL`] for the connection's own user stream.
        channel: Cow<'a, str>,
        /// The client's last position, to recover from (`"since":{"seq":..,"epoch":..}`).
        since: Option<Since>,
    },
    /// `{"op":"unsubscribe","channel":..}`: the channel name is valid.
    Unsubscribe {
        /// The channel name.
        channel: Cow<'a, str>,
    },
    /// `{"op":"ping"}`: an application-level liveness check answered with `pong`
    /// (WebSocket Ping frames are answered separately, by the connection).
    Ping,
}

/// A parsed client message: the op and the optional correlation `id`.
#[derive(Clone, Debug)]
pub struct ClientRequest<'a> {
    /// What the client asked for.
    pub op: ClientOp<'a>,
    /// The client's `id`, a JSON string or number, echoed verbatim in the reply.
    pub id: Option<&'a RawValue>,
}

impl ClientRequest<'_> {
    /// The success reply: `subscribed`, `unsubscribed` or `pong`, with the `id`.
    pub fn ack(&self) -> Reply<'_> {
        match &self.op {
            ClientOp::Subscribe { channel, .. } => Reply::Subscribed {
                channel,
                id: self.id,
                position: None,
                recovered: None,
            },
            ClientOp::Unsubscribe { channel } => Reply::Unsubscribed {
                channel,
                id: self.id,
            },
            ClientOp::Ping => Reply::Pong { id: self.id },
        }
    }
}

/// A refused client message: the code, a human-readable message, and the request's
/// `id` when it could be read.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError<'a> {
    /// The stable error code.
    pub code: ErrorCode,
    /// What went wrong, for humans. Never contains secrets.
    pub message: Cow<'static, str>,
    /// The request's `id`, echoed.
    pub id: Option<&'a RawValue>,
}

impl<'a> ClientError<'a> {
    /// An error with this code, message and echoed id.
    pub fn new(
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
        id: Option<&'a RawValue>,
    ) -> Self {
        ClientError {
            code,
            message: message.into(),
            id,
        }
    }

    /// The answer to a message dropped by the inbound rate limit.
    pub fn rate_limited() -> ClientError<'static> {
        ClientError::new(
            ErrorCode::RateLimited,
            "too many messages; this one was dropped, slow down",
            None,
        )
    }

    /// The answer to a binary message (the protocol is JSON text only).
    pub fn binary_message() -> ClientError<'static> {
        ClientError::new(
            ErrorCode::BadRequest,
            "binary messages are not supported; send JSON text messages",
            None,
        )
    }

    /// The answer to `unsubscribe` from a channel the connection is not on.
    pub fn not_subscribed(channel: &str, id: Option<&'a RawValue>) -> Self {
        ClientError::new(
            ErrorCode::NotSubscribed,
            format!("not subscribed to channel {channel}"),
            id,
        )
    }

    /// The answer to a `subscribe` of a channel whose previous `subscribe` still waits.
    pub fn subscribe_pending(channel: &str, id: Option<&'a RawValue>) -> Self {
        ClientError::new(
            ErrorCode::SubscribePending,
            format!("a subscribe to {channel} is still being answered; wait for its reply"),
            id,
        )
    }

    /// The answer to a `subscribe` the engine could not serve.
    pub fn engine_unavailable(
        error: &crate::engine::EngineError,
        id: Option<&'a RawValue>,
    ) -> Self {
        ClientError::new(
            ErrorCode::EngineUnavailable,
            format!("{error}; not subscribed, try again later"),
            id,
        )
    }

    /// The `{"op":"error",..}` reply carrying this error.
    pub fn reply(&self) -> Reply<'_> {
        Reply::Error {
            code: self.code,
            message: &self.message,
            id: self.id,
        }
    }
}

/// The fields of a client message, each kept as raw JSON so a wrong type becomes a
/// precise `bad_request` instead of a generic deserialization error. Unknown fields
/// are ignored, so clients may add their own.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
}

/// `since` as clients send it; any other field is refused, so a typo is not silently
/// a fresh subscribe.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceJson<'a> {
    seq: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

/// The longest `op` quoted back in an `unknown_op` message, in characters.
const MAX_QUOTED_OP_CHARS: usize = 40;

/// Parses one client text message.
///
/// Checks, in order: the size limit (`message_too_large`), JSON syntax (`bad_json`),
/// the shape (`bad_request`: not an object; `op` missing or not a string; `id` not a
/// string or number; `channel` missing or not a string for ops that need one), the op
/// (`unknown_op`), and the channel name rules (`invalid_channel`). The `id` is
/// attached to every error found after it was read. Whether the token grants the
/// channel is the caller's check ([`authorize_subscribe`]).
pub fn parse_client_message<'a>(
    text: &'a str,
    limits: &PushLimits,
) -> Result<ClientRequest<'a>, ClientError<'a>> {
    if text.len() > limits.max_client_message {
        return Err(ClientError::new(
            ErrorCode::MessageTooLarge,
            format!(
                "message is {} bytes, the limit is {}",
                text.len(),
                limits.max_client_message
            ),
            None,
        ));
    }
    let envelope: Envelope<'a> = match serde_json::from_str(text) {
        // serde would also read a struct from a JSON array: insist on an object.
        Ok(_) if !text.trim_start().starts_with('{') => {
            return Err(ClientError::new(
                ErrorCode::BadRequest,
                "a message must be a JSON object",
                None,
            ));
        }
        Ok(envelope) => envelope,
        Err(err) if err.is_data() => {
            let message = if text.trim_start().starts_with('{') {
                Cow::Owned(format!("invalid message: {err}"))
            } else {
                Cow::Borrowed("a message must be a JSON object")
            };
            return Err(ClientError::new(ErrorCode::BadRequest, message, None));
        }
        Err(err) => {
            return Err(ClientError::new(
                ErrorCode::BadJson,
                format!("not valid JSON: {err}"),
                None,
            ));
        }
    };

    let id = match envelope.id {
        None => None,
        Some(raw)
            if matches!(
                raw.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9')
            ) =>
        {
            Some(raw)
        }
        Some(_) => {
            return Err(ClientError::new(
                ErrorCode::BadRequest,
                "`id` must be a string or a number",
                None,
            ));
        }
    };
    let bad_request = |message: &'static str| ClientError::new(ErrorCode::BadRequest, message, id);

    let op = envelope.op.ok_or_else(|| bad_request("missing `op`"))?;
    let op = json_str(op).ok_or_else(|| bad_request("`op` must be a string"))?;
    let needs_channel = match &*op {
        "subscribe" | "unsubscribe" => true,
        "ping" => false,
        other => {
            let mut quoted: String = other.chars().take(MAX_QUOTED_OP_CHARS).collect();
            if quoted.len() < other.len() {
                quoted.push('…');
            }
            return Err(ClientError::new(
                ErrorCode::UnknownOp,
                format!("unknown op {quoted:?}; expected subscribe, unsubscribe or ping"),
                id,
            ));
        }
    };
    if !needs_channel {
        return Ok(ClientRequest {
            op: ClientOp::Ping,
            id,
        });
    }

    let channel = envelope
        .channel
        .ok_or_else(|| bad_request("missing `channel`"))?;
    let channel = json_str(channel).ok_or_else(|| bad_request("`channel` must be a string"))?;
    let subscribe = op == "subscribe";
    if channel == USER_CHANNEL {
        // The user stream is implicit: it can be asked for its position (and be
        // recovered in place) but never left.
        if !subscribe {
            return Err(ClientError::new(
                ErrorCode::InvalidChannel,
                "the user stream #user cannot be unsubscribed",
                id,
            ));
        }
    } else {
        validate_channel_name(&channel, limits.max_channel_name)
            .map_err(|err| ClientError::new(ErrorCode::InvalidChannel, err.to_string(), id))?;
    }
    let op = if subscribe {
        let since = match envelope.since {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let since: SinceJson<'_> = serde_json::from_str(raw.get()).map_err(|_| {
                    bad_request(
                        "`since` must be {\"seq\":<the last seq you have>,\"epoch\":<its epoch>}",
                    )
                })?;
                Some(Since::new(since.seq, &since.epoch))
            }
        };
        ClientOp::Subscribe { channel, since }
    } else {
        ClientOp::Unsubscribe { channel }
    };
    Ok(ClientRequest { op, id })
}

/// Decides a `subscribe` to `channel` (already a valid name) by a connection holding
/// `grant` and currently on `subscriptions` channels.
///
/// Subscribing again to a channel the connection is already on succeeds (and is
/// acknowledged again) without counting twice, so pass `already_subscribed`.
pub fn authorize_subscribe<'a>(
    grant: &ChannelGrant,
    channel: &str,
    already_subscribed: bool,
    subscriptions: usize,
    limits: &PushLimits,
    id: Option<&'a RawValue>,
) -> Result<(), ClientError<'a>> {
    if already_subscribed {
        return Ok(());
    }
    if !grant.allows(channel) {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            format!("your token does not grant channel {channel}"),
            id,
        ));
    }
    if subscriptions >= limits.max_subscriptions {
        return Err(ClientError::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "already subscribed to {subscriptions} channels, the limit is {}",
                limits.max_subscriptions
            ),
            id,
        ));
    }
    Ok(())
}

/// A message from the gateway to a client (other than a delivery).
#[derive(Copy, Clone, Debug)]
pub enum Reply<'a> {
    /// `{"op":"subscribed","channel":..,"id":..,"seq":..,"epoch":..,"recovered":..}`
    Subscribed {
        /// The channel now subscribed (`#user` for the user stream).
        channel: &'a str,
        /// The request's id.
        id: Option<&'a RawValue>,
        /// The stream's current position (every reply from the engine has one).
        position: Option<Position>,
        /// With `since`: whether the missed messages follow (`None`: no `since`).
        recovered: Option<bool>,
    },
    /// `{"op":"position_lost","channel":..,"seq":..,"epoch":..}`: the gateway could
    /// not deliver every message of the subscription; the client resubscribes with
    /// `since` set to its last position (and is recovered, or told to reload).
    PositionLost {
        /// The channel.
        channel: &'a str,
        /// The stream's position as the gateway knows it.
        position: Position,
    },
    /// `{"op":"unsubscribed","channel":..,"id":..}`
    Unsubscribed {
        /// The channel left.
        channel: &'a str,
        /// The request's id.
        id: Option<&'a RawValue>,
    },
    /// `{"op":"pong","id":..}`
    Pong {
        /// The request's id.
        id: Option<&'a RawValue>,
    },
    /// `{"op":"error","code":..,"message":..,"id":..}`
    Error {
        /// The stable code.
        code: ErrorCode,
        /// For humans.
        message: &'a str,
        /// The request's id, when it could be read.
        id: Option<&'a RawValue>,
    },
}

/// The JSON shape of every [`Reply`]; absent fields are omitted.
#[derive(Serialize)]
struct ReplyJson<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<Epoch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

impl<'a> Reply<'a> {
    fn json(&self) -> ReplyJson<'a> {
        let blank = ReplyJson {
            op: "",
            channel: None,
            code: None,
            message: None,
            id: None,
            seq: None,
            epoch: None,
            recovered: None,
        };
        match *self {
            Reply::Subscribed {
                channel,
                id,
                position,
                recovered,
            } => ReplyJson {
                op: "subscribed",
                channel: Some(channel),
                id,
                seq: position.map(|p| p.seq),
                epoch: position.map(|p| p.epoch),
                recovered,
                ..blank
            },
            Reply::PositionLost { channel, position } => ReplyJson {
                op: "position_lost",
                channel: Some(channel),
                seq: Some(position.seq),
                epoch: Some(position.epoch),
                ..blank
            },
            Reply::Unsubscribed { channel, id } => ReplyJson {
                op: "unsubscribed",
                channel: Some(channel),
                id,
                ..blank
            },
            Reply::Pong { id } => ReplyJson {
                op: "pong",
                id,
                ..blank
            },
            Reply::Error { code, message, id } => ReplyJson {
                op: "error",
                code: Some(code.as_str()),
                message: Some(message),
                id,
                ..blank
            },
        }
    }

    /// The reply's JSON text (the payload of the frame [`encode_reply`] builds).
    pub fn to_json(&self) -> String {
        // Serializing &str, &'static str and already-valid RawValue into a String
        // cannot fail: there is no map with non-string keys and no IO.
        serde_json::to_string(&self.json()).unwrap_or_default()
    }
}

/// Encodes `reply` as one complete, unmasked WebSocket text frame (header + JSON).
pub fn encode_reply(reply: &Reply<'_>) -> Vec<u8> {
    text_frame(reply.to_json().as_bytes())
}

/// One complete unmasked text frame carrying `payload`, in a Vec of exactly its size.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::frame_len(payload.len()));
    frame::encode_frame(OpCode::Data(Data::Text), payload, &mut out);
    out
}

/// Whether `s` can be written between JSON quotes as is (no `"`, `\` or control byte).
fn needs_no_json_escape(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// One delivery's frame, `{"channel":<channel>,"seq":<seq>,"epoch":<epoch>,"data":<data>}`
/// (field order fixed), as a complete unmasked WebSocket text frame. The engine's
/// history encodes it once per publish with [`JsonDeliveries`] (every subscriber on
/// every worker is sent that same [`Bytes`]) and again, from the kept data, for each
/// recovery and history read: byte for byte the same frame.
///
/// `channel` is JSON-escaped (valid channel names never need it; [`USER_CHANNEL`] is
/// used for per-user deliveries); `data` is inserted verbatim, so it must be the JSON
/// that was validated when it was published.
#[derive(Copy, Clone, Debug)]
pub struct DeliveryFrame<'a> {
    /// The channel as it goes on the wire (`#user` for a user's stream), unescaped.
    pub channel: &'a str,
    /// The published JSON.
    pub data: &'a RawValue,
}

const DELIVERY_HEAD: &[u8] = br#"{"channel":""#;
const DELIVERY_SEQ: &[u8] = br#"","seq":"#;
const DELIVERY_EPOCH: &[u8] = br#","epoch":""#;
const DELIVERY_DATA: &[u8] = br#"","data":"#;
const DELIVERY_TAIL: &[u8] = b"}";

/// `channel` as it appears between the JSON quotes.
fn channel_json(channel: &str) -> Cow<'_, str> {
    if needs_no_json_escape(channel) {
        Cow::Borrowed(channel)
    } else {
        // Serializing a str into a String cannot fail.
        let quoted = serde_json::to_string(channel).unwrap_or_default();
        Cow::Owned(quoted[1..quoted.len() - 1].to_owned())
    }
}

fn delivery_payload_len(channel_json: &str, seq: u64, data_len: usize) -> usize {
    DELIVERY_HEAD.len()
        + channel_json.len()
        + DELIVERY_SEQ.len()
        + itoa::Buffer::new().format(seq).len()
        + DELIVERY_EPOCH.len()
        + EPOCH_LEN
        + DELIVERY_DATA.len()
        + data_len
        + DELIVERY_TAIL.len()
}

/// The exact length of the delivery frame of `data` at `position` on `channel`.
fn delivery_frame_len(channel: &str, position: &Position, data: &[u8]) -> usize {
    frame::frame_len(delivery_payload_len(
        &channel_json(channel),
        position.seq,
        data.len(),
    ))
}

/// Appends the delivery frame of `data` at `position` on `channel` to `out`.
fn write_delivery(channel: &str, position: &Position, data: &[u8], out: &mut BytesMut) {
    let channel_json = channel_json(channel);
    let payload_len = delivery_payload_len(&channel_json, position.seq, data.len());
    let start = out.len();
    let (header, header_len) = frame::header(OpCode::Data(Data::Text), payload_len);
    let mut digits = itoa::Buffer::new();
    out.reserve(header_len + payload_len);
    out.extend_from_slice(&header[..header_len]);
    out.extend_from_slice(DELIVERY_HEAD);
    out.extend_from_slice(channel_json.as_bytes());
    out.extend_from_slice(DELIVERY_SEQ);
    out.extend_from_slice(digits.format(position.seq).as_bytes());
    out.extend_from_slice(DELIVERY_EPOCH);
    out.extend_from_slice(position.epoch.as_bytes());
    out.extend_from_slice(DELIVERY_DATA);
    out.extend_from_slice(data);
    out.extend_from_slice(DELIVERY_TAIL);
    debug_assert_eq!(
        out.len() - start,
        frame::frame_len(payload_len),
        "delivery frame size mismatch: channel={channel:?} position={position:?} data_len={}",
        data.len()
    );
}

impl DeliveryFrame<'_> {
    /// The exact length of the frame for `position`.
    pub fn frame_len(&self, position: &Position) -> usize {
        delivery_frame_len(self.channel, position, self.data.get().as_bytes())
    }

    /// The frame as a new exact-size [`Bytes`].
    pub fn encode(&self, position: &Position) -> Bytes {
        encode_delivery(self.channel, position, self.data.get().as_bytes())
    }
}

/// The delivery frame of `data` at `position` on `channel` as a new exact-size
/// [`Bytes`] (`write_delivery` reserves exactly its length in the empty buffer).
fn encode_delivery(channel: &str, position: &Position, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    write_delivery(channel, position, data, &mut out);
    out.freeze()
}

/// The gateway's [`FrameEncoder`]: a stream's message is the [`DeliveryFrame`] of its
/// data on the stream's wire channel (`#user` for a user's stream). The data must be
/// the JSON validated at publish (history keeps exactly those bytes).
#[derive(Copy, Clone, Debug, Default)]
pub struct JsonDeliveries;

impl FrameEncoder for JsonDeliveries {
    fn encode(&self, stream: Stream<'_>, position: &Position, data: &[u8]) -> Bytes {
        encode_delivery(stream.wire_channel(), position, data)
    }
}

/// The JSON text of a delivery frame (its payload, after the WebSocket header): what
/// the history API lists. `frame` must be an unmasked frame as [`DeliveryFrame`] builds.
pub fn delivery_json(frame: &[u8]) -> &[u8] {
    let header_len = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header_len..).unwrap_or_default()
}

/// What to do with an inbound client message, from [`InboundRateLimit::check`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the rate: handle the message.
    Allow,
    /// Over the rate: drop the message and answer [`ClientError::rate_limited`].
    Limited,
    /// `flood_close_after` consecutive messages were over the rate: drop it and close
    /// the connection with 1008 (policy violation).
    Flood,
}

/// Milli-messages: the token bucket counts in thousandths of a message so that a
/// refill of `rate` messages per second is exactly `rate` units per millisecond.
const MILLI: u64 = 1000;

/// A per-connection token bucket on inbound client messages (12 bytes).
///
/// The bucket holds up to `inbound_burst` messages and refills at
/// `inbound_rate_per_sec`; each message takes one. Time is the caller's millisecond
/// clock as a wrapping `u32` (any epoch, e.g. the worker's start): differences are
/// taken with wrapping arithmetic, so only gaps over ~24.8 days are misread, and then
/// only as "no time passed" — at worst one extra `Limited` for a connection that was
/// both silent that long and out of tokens when it went silent.
///
/// Invariant: `milli_tokens <= inbound_burst * 1000`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InboundRateLimit {
    /// The caller's clock at the last check, in milliseconds.
    last_ms: u32,
    /// Tokens left, in thousandths of a message.
    milli_tokens: u32,
    /// Messages refused in a row since the last allowed one.
    consecutive_limited: u16,
}

impl InboundRateLimit {
    /// A full bucket at `now_ms`.
    pub fn new(now_ms: u32, limits: &PushLimits) -> Self {
        InboundRateLimit {
            last_ms: now_ms,
            milli_tokens: Self::capacity(limits),
            consecutive_limited: 0,
        }
    }

    fn capacity(limits: &PushLimits) -> u32 {
        let capacity = u64::from(limits.inbound_burst.max(1)) * MILLI;
        u32::try_from(capacity).unwrap_or(u32::MAX)
    }

    /// Accounts for one inbound message at `now_ms` and says what to do with it.
    pub fn check(&mut self, now_ms: u32, limits: &PushLimits) -> RateDecision {
        let capacity = Self::capacity(limits);
        let elapsed = now_ms.wrapping_sub(self.last_ms);
        // A clock that stepped back (or a gap over 2^31 ms) reads as no time passed.
        let elapsed = if elapsed > i32::MAX as u32 {
            0
        } else {
            elapsed
        };
        let refill = u64::from(elapsed) * u64::from(limits.inbound_rate_per_sec);
        let tokens = (u64::from(self.milli_tokens) + refill).min(u64::from(capacity));
        self.last_ms = now_ms;
        let decision = if tokens >= MILLI {
            self.milli_tokens = (tokens - MILLI) as u32;
            self.consecutive_limited = 0;
            RateDecision::Allow
        } else {
            self.milli_tokens = tokens as u32;
            self.consecutive_limited = self.consecutive_limited.saturating_add(1);
            if self.consecutive_limited >= limits.flood_close_after.max(1) {
                RateDecision::Flood
            } else {
                RateDecision::Limited
            }
        };
        debug_assert!(
            self.milli_tokens <= capacity,
            "milli_tokens={} capacity={capacity}",
            self.milli_tokens
        );
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;

    fn limits() -> PushLimits {
        PushLimits::default()
    }

    fn parse(text: &str) -> Result<ClientRequest<'_>, ClientError<'_>> {
        parse_client_message(text, &limits())
    }

    fn err_code(text: &str) -> (ErrorCode, String, Option<String>) {
        let err = parse(text).expect_err(text);
        (
            err.code,
            err.message.into_owned(),
            err.id.map(|id| id.get().to_owned()),
        )
    }

    /// Decodes a server frame with tungstenite's header parser: (opcode, fin, masked, payload).
    fn decode_frame(frame: &[u8]) -> (OpCode, bool, bool, &[u8]) {
        let mut cursor = Cursor::new(frame);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(
            start as u64 + len,
            frame.len() as u64,
            "frame has trailing or missing bytes"
        );
        (
            header.opcode,
            header.is_final,
            header.mask.is_some(),
            &frame[start..],
        )
    }

    fn reply_json(reply: &Reply<'_>) -> String {
        let frame = encode_reply(reply);
        let (opcode, fin, masked, payload) = decode_frame(&frame);
        assert_eq!(opcode, OpCode::Data(Data::Text));
        assert!(fin && !masked);
        String::from_utf8(payload.to_vec()).unwrap()
    }

    #[test]
    fn parses_subscribe_unsubscribe_ping() {
        let req = parse(r#"{"op":"subscribe","channel":"scores"}"#).unwrap();
        assert_eq!(
            req.op,
            ClientOp::Subscribe {
                channel: "scores".into(),
                since: None,
            }
        );
        assert!(req.id.is_none());
        let req = parse(r#" {"channel":"team:7", "op":"unsubscribe", "extra":[1,2]} "#).unwrap();
        assert_eq!(
            req.op,
            ClientOp::Unsubscribe {
                channel: "team:7".into()
            }
        );
        let req = parse(r#"{"op":"ping"}"#).unwrap();
        assert_eq!(req.op, ClientOp::Ping);
    }

    #[test]
    fn channel_with_escapes_is_decoded() {
        let req = parse(r#"{"op":"subscribe","channel":"a\u003ab"}"#).unwrap();
        assert_eq!(
            req.op,
            ClientOp::Subscribe {
                channel: "a:b".into(),
                since: None,
            }
        );
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        for id in [r#""abc""#, "7", "-1.5e3", r#""\u00e9""#] {
            let text = format!(r#"{{"op":"ping","id":{id}}}"#);
            let req = parse(&text).unwrap();
            assert_eq!(
                reply_json(&req.ack()),
                format!(r#"{{"op":"pong","id":{id}}}"#)
            );
        }
        let req = parse(r#"{"op":"subscribe","channel":"s","id":42}"#).unwrap();
        assert_eq!(
            reply_json(&req.ack()),
            r#"{"op":"subscribed","channel":"s","id":42}"#
        );
        let req = parse(r#"{"op":"unsubscribe","channel":"s"}"#).unwrap();
        assert_eq!(
            reply_json(&req.ack()),
            r#"{"op":"unsubscribed","channel":"s"}"#
        );
        // `"id": null` is the same as no id.
        assert!(parse(r#"{"op":"ping","id":null}"#).unwrap().id.is_none());
    }

    #[test]
    fn subscribe_with_since_and_the_user_stream() {
        let req = parse(
            r#"{"op":"subscribe","channel":"scores","since":{"seq":40,"epoch":"Xy3kP0aQ"},"id":1}"#,
        )
        .unwrap();
        assert_eq!(
            req.op,
            ClientOp::Subscribe {
                channel: "scores".into(),
                since: Some(Since::new(40, "Xy3kP0aQ")),
            }
        );
        // Any epoch text is taken: one that is not an epoch matches no stream.
        let req =
            parse(r#"{"op":"subscribe","channel":"s","since":{"epoch":"","seq":0}}"#).unwrap();
        assert_eq!(
            req.op,
            ClientOp::Subscribe {
                channel: "s".into(),
                since: Some(Since {
                    seq: 0,
                    epoch: None
                }),
            }
        );
        let req = parse(r##"{"op":"subscribe","channel":"#user","since":null}"##).unwrap();
        assert_eq!(
            req.op,
            ClientOp::Subscribe {
                channel: "#user".into(),
                since: None,
            }
        );
        for bad in [
            r#"{"op":"subscribe","channel":"s","since":40,"id":2}"#,
            r#"{"op":"subscribe","channel":"s","since":{"seq":40},"id":2}"#,
            r#"{"op":"subscribe","channel":"s","since":{"seq":-1,"epoch":"x"},"id":2}"#,
            r#"{"op":"subscribe","channel":"s","since":{"seq":"40","epoch":"x"},"id":2}"#,
            r#"{"op":"subscribe","channel":"s","since":{"seq":4,"epoch":"x","sqe":1},"id":2}"#,
        ] {
            let (code, message, id) = err_code(bad);
            assert_eq!(code, ErrorCode::BadRequest, "{bad}");
            assert_eq!(
                message,
                r#"`since` must be {"seq":<the last seq you have>,"epoch":<its epoch>}"#
            );
            assert_eq!(id.as_deref(), Some("2"));
        }
    }

    #[test]
    fn subscribed_and_position_lost_replies() {
        let p = position(42);
        let id = RawValue::from_string("1".to_owned()).unwrap();
        let reply = Reply::Subscribed {
            channel: "scores",
            id: Some(&id),
            position: Some(p),
            recovered: Some(true),
        };
        assert_eq!(
            reply_json(&reply),
            r#"{"op":"subscribed","channel":"scores","id":1,"seq":42,"epoch":"Xy3kP0aQ","recovered":true}"#
        );
        let reply = Reply::Subscribed {
            channel: "#user",
            id: None,
            position: Some(p),
            recovered: None,
        };
        assert_eq!(
            reply_json(&reply),
            r##"{"op":"subscribed","channel":"#user","seq":42,"epoch":"Xy3kP0aQ"}"##
        );
        let reply = Reply::PositionLost {
            channel: "scores",
            position: p,
        };
        assert_eq!(
            reply_json(&reply),
            r#"{"op":"position_lost","channel":"scores","seq":42,"epoch":"Xy3kP0aQ"}"#
        );
    }

    #[test]
    fn bad_ids_are_bad_requests() {
        for id in ["{}", "[1]", "true"] {
            let (code, message, echoed) = err_code(&format!(r#"{{"op":"ping","id":{id}}}"#));
            assert_eq!(
                (code, message.as_str(), echoed),
                (
                    ErrorCode::BadRequest,
                    "`id` must be a string or a number",
                    None
                )
            );
        }
    }

    #[test]
    fn malformed_json_is_bad_json() {
        for text in [
            "",
            "{",
            "not json",
            r#"{"op":"ping",}"#,
            r#"{"op":"ping"} trailing"#,
        ] {
            let (code, message, _) = err_code(text);
            assert_eq!(code, ErrorCode::BadJson, "{text:?}");
            assert!(message.starts_with("not valid JSON: "), "{message}");
        }
    }

    #[test]
    fn wrong_shapes_are_bad_requests() {
        let cases = [
            ("[1,2]", "a message must be a JSON object", None),
            ("42", "a message must be a JSON object", None),
            (r#""subscribe""#, "a message must be a JSON object", None),
            (r#"{"channel":"s"}"#, "missing `op`", None),
            (r#"{"op":null,"id":1}"#, "missing `op`", Some("1")),
            (r#"{"op":5}"#, "`op` must be a string", None),
            (
                r#"{"op":"subscribe","id":"q"}"#,
                "missing `channel`",
                Some(r#""q""#),
            ),
            (
                r#"{"op":"unsubscribe","channel":7}"#,
                "`channel` must be a string",
                None,
            ),
        ];
        for (text, want_message, want_id) in cases {
            let (code, message, id) = err_code(text);
            assert_eq!(code, ErrorCode::BadRequest, "{text}");
            assert_eq!(message, want_message, "{text}");
            assert_eq!(id.as_deref(), want_id, "{text}");
        }
        let (code, message, _) = err_code(r#"{"op":"ping","op":"ping"}"#);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("duplicate field `op`"), "{message}");
    }

    #[test]
    fn unknown_op_names_it_and_keeps_the_id() {
        let (code, message, id) = err_code(r#"{"op":"publish","id":3}"#);
        assert_eq!(code, ErrorCode::UnknownOp);
        assert_eq!(
            message,
            r#"unknown op "publish"; expected subscribe, unsubscribe or ping"#
        );
        assert_eq!(id.as_deref(), Some("3"));
        let long = "x".repeat(500);
        let (_, message, _) = err_code(&format!(r#"{{"op":"{long}"}}"#));
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn invalid_channels() {
        let (code, message, id) = err_code(r##"{"op":"subscribe","channel":"#news","id":1}"##);
        assert_eq!(code, ErrorCode::InvalidChannel);
        assert_eq!(message, "channel names starting with '#' are reserved");
        assert_eq!(id.as_deref(), Some("1"));
        let (code, message, _) = err_code(r##"{"op":"unsubscribe","channel":"#user"}"##);
        assert_eq!(code, ErrorCode::InvalidChannel);
        assert_eq!(message, "the user stream #user cannot be unsubscribed");
        let (code, _, _) = err_code(r#"{"op":"subscribe","channel":""}"#);
        assert_eq!(code, ErrorCode::InvalidChannel);
        let long = "c".repeat(129);
        let (code, message, _) = err_code(&format!(r#"{{"op":"subscribe","channel":"{long}"}}"#));
        assert_eq!(code, ErrorCode::InvalidChannel);
        assert_eq!(message, "channel name is 129 bytes, the limit is 128");
        let (code, _, _) = err_code(r#"{"op":"unsubscribe","channel":"a b"}"#);
        assert_eq!(code, ErrorCode::InvalidChannel);
    }

    #[test]
    fn oversized_messages_are_not_parsed() {
        let text = format!(r#"{{"op":"ping","pad":"{}"}}"#, "p".repeat(5000));
        let (code, message, _) = err_code(&text);
        assert_eq!(code, ErrorCode::MessageTooLarge);
        assert_eq!(
            message,
            format!("message is {} bytes, the limit is 4096", text.len())
        );
    }

    #[test]
    fn subscribe_authorization() {
        let limits = PushLimits {
            max_subscriptions: 2,
            ..limits()
        };
        let grant = ChannelGrant::from_patterns(&["team:*"], 128).unwrap();
        assert!(authorize_subscribe(&grant, "team:1", false, 0, &limits, None).is_ok());
        let err = authorize_subscribe(&grant, "scores", false, 0, &limits, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert_eq!(err.message, "your token does not grant channel scores");
        let err = authorize_subscribe(&grant, "team:3", false, 2, &limits, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManySubscriptions);
        assert_eq!(
            err.message,
            "already subscribed to 2 channels, the limit is 2"
        );
        // Re-subscribing is idempotent even at the limit.
        assert!(authorize_subscribe(&grant, "team:1", true, 2, &limits, None).is_ok());
    }

    #[test]
    fn error_replies() {
        let id = RawValue::from_string("9".to_owned()).unwrap();
        let err = ClientError::not_subscribed("scores", Some(&id));
        assert_eq!(
            reply_json(&err.reply()),
            r#"{"op":"error","code":"not_subscribed","message":"not subscribed to channel scores","id":9}"#
        );
        assert_eq!(
            reply_json(&ClientError::rate_limited().reply()),
            r#"{"op":"error","code":"rate_limited","message":"too many messages; this one was dropped, slow down"}"#
        );
        let err = parse("{").unwrap_err();
        let json: serde_json::Value = serde_json::from_str(&reply_json(&err.reply())).unwrap();
        assert_eq!(json["op"], "error");
        assert_eq!(json["code"], "bad_json");
        assert!(json.get("id").is_none());
    }

    #[test]
    fn error_codes_are_stable() {
        let codes: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "bad_json",
                "bad_request",
                "unknown_op",
                "invalid_channel",
                "forbidden",
                "too_many_subscriptions",
                "not_subscribed",
                "rate_limited",
                "message_too_large",
                "subscribe_pending",
                "engine_unavailable"
            ]
        );
    }

    fn position(seq: u64) -> Position {
        Position {
            seq,
            epoch: crate::engine::position::Epoch::parse("Xy3kP0aQ").unwrap(),
        }
    }

    #[test]
    fn delivery_frame_bytes_are_exact() {
        let data = RawValue::from_string(r#"{"home":2,"away":1}"#.to_owned()).unwrap();
        let d = DeliveryFrame {
            channel: "scores",
            data: &data,
        };
        let frame = d.encode(&position(42));
        let payload =
            br#"{"channel":"scores","seq":42,"epoch":"Xy3kP0aQ","data":{"home":2,"away":1}}"#;
        let mut want = vec![0x81, payload.len() as u8];
        want.extend_from_slice(payload);
        assert_eq!(&frame[..], &want[..]);
        assert_eq!(d.frame_len(&position(42)), want.len());
        assert_eq!(delivery_json(&frame), payload);
    }

    #[test]
    fn delivery_frames_of_every_length_class_parse_back() {
        // 71 bytes of envelope around the data here (20 digits of seq, the quotes).
        for (data_len, header_len) in [(0, 2), (54, 2), (55, 4), (65_464, 4), (65_465, 10)] {
            let data = RawValue::from_string(format!("\"{}\"", "d".repeat(data_len))).unwrap();
            let frame = DeliveryFrame {
                channel: "c",
                data: &data,
            }
            .encode(&position(u64::MAX));
            let (opcode, fin, masked, payload) = decode_frame(&frame);
            assert_eq!(
                (opcode, fin, masked),
                (OpCode::Data(Data::Text), true, false)
            );
            assert_eq!(payload.len(), data_len + 71, "data_len={data_len}");
            assert_eq!(
                frame.len() - payload.len(),
                header_len,
                "data_len={data_len}"
            );
            assert_eq!(delivery_json(&frame), payload);
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(json["seq"], u64::MAX);
            assert_eq!(json["epoch"], "Xy3kP0aQ");
        }
    }

    #[test]
    fn delivery_escapes_odd_channels() {
        let data = RawValue::from_string("null".to_owned()).unwrap();
        let d = DeliveryFrame {
            channel: "we\"ird\\\n",
            data: &data,
        };
        let frame = d.encode(&position(0));
        assert_eq!(d.frame_len(&position(0)), frame.len());
        let (_, _, _, payload) = decode_frame(&frame);
        assert_eq!(
            payload,
            br#"{"channel":"we\"ird\\\n","seq":0,"epoch":"Xy3kP0aQ","data":null}"#
        );
    }

    #[test]
    fn delivery_seq_is_written_in_decimal_at_every_width() {
        let data = RawValue::from_string("1".to_owned()).unwrap();
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let frame = DeliveryFrame {
                channel: "c",
                data: &data,
            }
            .encode(&position(n));
            let (_, _, _, payload) = decode_frame(&frame);
            assert_eq!(
                payload,
                format!(r#"{{"channel":"c","seq":{n},"epoch":"Xy3kP0aQ","data":1}}"#).as_bytes()
            );
        }
    }

    #[test]
    fn rate_limit_allows_burst_then_rate() {
        let limits = PushLimits {
            inbound_rate_per_sec: 10,
            inbound_burst: 5,
            flood_close_after: 4,
            ..limits()
        };
        let mut bucket = InboundRateLimit::new(1_000, &limits);
        for _ in 0..5 {
            assert_eq!(bucket.check(1_000, &limits), RateDecision::Allow);
        }
        assert_eq!(bucket.check(1_000, &limits), RateDecision::Limited);
        // 10/s: one message every 100 ms.
        assert_eq!(bucket.check(1_099, &limits), RateDecision::Limited);
        assert_eq!(bucket.check(1_100, &limits), RateDecision::Allow);
        assert_eq!(bucket.check(1_150, &limits), RateDecision::Limited);
        assert_eq!(bucket.check(1_200, &limits), RateDecision::Allow);
        // A long pause refills to the burst, not beyond.
        let mut allowed = 0;
        while bucket.check(100_000, &limits) == RateDecision::Allow {
            allowed += 1;
        }
        assert_eq!(allowed, 5);
    }

    #[test]
    fn rate_limit_flood_closes_after_consecutive_refusals() {
        let limits = PushLimits {
            inbound_rate_per_sec: 1,
            inbound_burst: 1,
            flood_close_after: 3,
            ..limits()
        };
        let mut bucket = InboundRateLimit::new(0, &limits);
        assert_eq!(bucket.check(0, &limits), RateDecision::Allow);
        assert_eq!(bucket.check(1, &limits), RateDecision::Limited);
        assert_eq!(bucket.check(2, &limits), RateDecision::Limited);
        // An allowed message resets the run.
        assert_eq!(bucket.check(1_002, &limits), RateDecision::Allow);
        assert_eq!(bucket.check(1_003, &limits), RateDecision::Limited);
        assert_eq!(bucket.check(1_004, &limits), RateDecision::Limited);
        assert_eq!(bucket.check(1_005, &limits), RateDecision::Flood);
    }

    #[test]
    fn rate_limit_survives_clock_wrap_and_steps_back() {
        let limits = PushLimits {
            inbound_rate_per_sec: 1,
            inbound_burst: 1,
            ..limits()
        };
        let mut bucket = InboundRateLimit::new(u32::MAX - 10, &limits);
        assert_eq!(bucket.check(u32::MAX - 10, &limits), RateDecision::Allow);
        // 1000 ms later, across the u32 wrap.
        assert_eq!(bucket.check(989, &limits), RateDecision::Allow);
        // A clock step backwards adds nothing.
        assert_eq!(bucket.check(500, &limits), RateDecision::Limited);
    }

    #[test]
    fn rate_limit_is_small() {
        assert!(std::mem::size_of::<InboundRateLimit>() <= 12);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics_and_errors_render(text in "\\PC{0,200}") {
                if let Err(err) = parse_client_message(&text, &limits()) {
                    let json: serde_json::Value = serde_json::from_str(&err.reply().to_json()).unwrap();
                    prop_assert_eq!(&json["op"], "error");
                }
            }

            #[test]
            fn parse_of_json_shaped_input_never_panics(
                op in prop_oneof![Just("subscribe".to_owned()), Just("unsubscribe".to_owned()), Just("ping".to_owned()), "\\PC{0,10}"],
                channel in "\\PC{0,20}",
                id in prop_oneof![Just("1".to_owned()), Just("\"x\"".to_owned()), Just("[]".to_owned()), Just("null".to_owned())],
            ) {
                let text = serde_json::json!({"op": op, "channel": channel}).to_string();
                let text = format!("{},\"id\":{id}}}", &text[..text.len() - 1]);
                match parse_client_message(&text, &limits()) {
                    Ok(req) => {
                        let reply = req.ack().to_json();
                        prop_assert!(serde_json::from_str::<serde_json::Value>(&reply).is_ok());
                    }
                    Err(err) => prop_assert!(!err.message.is_empty()),
                }
            }

            #[test]
            fn deliveries_round_trip(channel in "\\PC{0,40}", seq: u64, text in "\\PC{0,300}") {
                let data = RawValue::from_string(serde_json::to_string(&text).unwrap()).unwrap();
                let d = DeliveryFrame { channel: &channel, data: &data };
                let frame = d.encode(&position(seq));
                prop_assert_eq!(frame.len(), d.frame_len(&position(seq)));
                let (opcode, fin, masked, payload) = decode_frame(&frame);
                prop_assert_eq!((opcode, fin, masked), (OpCode::Data(Data::Text), true, false));
                let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
                prop_assert_eq!(json["channel"].as_str(), Some(channel.as_str()));
                prop_assert_eq!(json["seq"].as_u64(), Some(seq));
                prop_assert_eq!(json["epoch"].as_str(), Some("Xy3kP0aQ"));
                prop_assert_eq!(json["data"].as_str(), Some(text.as_str()));
            }

            #[test]
            fn rate_limit_never_exceeds_burst_plus_refill(
                rate in 1u32..100,
                burst in 1u32..100,
                gaps in proptest::collection::vec(0u32..200, 1..300),
            ) {
                let limits = PushLimits { inbound_rate_per_sec: rate, inbound_burst: burst, flood_close_after: u16::MAX, ..limits() };
                let mut bucket = InboundRateLimit::new(0, &limits);
                let mut now = 0u32;
                let mut allowed = 0u64;
                for gap in gaps {
                    now += gap;
                    if bucket.check(now, &limits) == RateDecision::Allow {
                        allowed += 1;
                    }
                    // Over [0, now]: at most the burst plus the refill.
                    let bound = u64::from(burst) + u64::from(now) * u64::from(rate) / 1000;
                    prop_assert!(allowed <= bound, "allowed {} > bound {}", allowed, bound);
                }
            }
        }
    }
}
