//! The publish API's request bodies and replies.
//!
//! Three endpoints on the admin listener (the wire format, with `curl` examples, is in
//! `docs/protocol.md`):
//!
//! | route | body | reply |
//! |---|---|---|
//! | `POST /v1/publish` | `{"channel":"scores","data":..}` or `{"user":"42","data":..}` | [`PublishReply`] |
//! | `POST /v1/broadcast` | `{"channels":["a","b"],"data":..}` | [`MultiReply`] |
//! | `POST /v1/batch` | `{"messages":[{"channel":..,"data":..},{"user":..,"data":..}]}` | [`MultiReply`] |
//!
//! `data` is any JSON value and is never re-serialized: it is kept as the exact
//! [`RawValue`] text borrowed from the request body and copied once, into the delivery
//! frame ([`super::protocol::encode_delivery`]). Unknown fields are refused, so a typo
//! such as `chanel` is a 400 naming it rather than a silent no-op. `data` may nest
//! arrays and objects at most [`MAX_DATA_DEPTH`] levels deep: relayed verbatim, a
//! deeper value would break the parsers of the subscribers' clients (Python's `json`
//! fails near 1000 levels, others sooner), so it is refused with 400.
//!
//! # Positions
//!
//! Every publish gets the next position `(epoch, seq)` of its stream (a channel, or
//! a user's stream) from the engine (`crate::engine`); the replies carry `seq` and
//! `epoch` per target, and `subscribers` counts this node's local subscribers.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::channel::{validate_channel_name, validate_user_id};
use super::{PushLimits, json_str};
use crate::engine::position::{Epoch, Position};

/// The deepest nesting of arrays and objects accepted in a publish's `data` (`[]` and
/// `{"a":1}` are 1 level, a scalar 0). Far more than real payloads need, and far less
/// than any common JSON parser can take.
pub const MAX_DATA_DEPTH: usize = 64;

/// Whether the JSON text `json` nests arrays and objects more than `max` levels deep.
/// One pass over the bytes, no recursion (the text is valid JSON: serde parsed it).
fn nested_deeper_than(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Refuses `data` nested more than [`MAX_DATA_DEPTH`] levels deep.
fn check_data_depth(data: &RawValue) -> Result<(), String> {
    if nested_deeper_than(data.get(), MAX_DATA_DEPTH) {
        return Err(format!(
            "`data` is nested more than {MAX_DATA_DEPTH} levels deep (arrays and objects), the limit is {MAX_DATA_DEPTH}"
        ));
    }
    Ok(())
}

/// The publish API routes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PublishRoute {
    /// `POST /v1/publish`: one message to one channel or one user.
    Publish,
    /// `POST /v1/broadcast`: one message to several channels.
    Broadcast,
    /// `POST /v1/batch`: many messages, each to one channel or one user.
    Batch,
}

impl PublishRoute {
    /// Every route.
    pub const ALL: [PublishRoute; 3] = [
        PublishRoute::Publish,
        PublishRoute::Broadcast,
        PublishRoute::Batch,
    ];

    /// The route served at `path` (exact match, no trailing slash), if any.
    pub fn from_path(path: &str) -> Option<PublishRoute> {
        PublishRoute::ALL
            .into_iter()
            .find(|route| route.path() == path)
    }

    /// The route's path.
    pub const fn path(self) -> &'static str {
        match self {
            PublishRoute::Publish => "/v1/publish",
            PublishRoute::Broadcast => "/v1/broadcast",
            PublishRoute::Batch => "/v1/batch",
        }
    }
}

/// Who a publish goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every subscriber of this channel (a valid channel name).
    Channel(Cow<'a, str>),
    /// Every connection authenticated as this user (a valid user id), on channel `#user`.
    User(Cow<'a, str>),
}

/// One message to one channel or user.
#[derive(Clone, Debug)]
pub struct Publish<'a> {
    /// Where it goes.
    pub target: Target<'a>,
    /// The payload, exactly as the publisher sent it (valid JSON).
    pub data: &'a RawValue,
}

/// One message to several channels: each channel gets its own delivery and `seq`.
#[derive(Clone, Debug)]
pub struct Broadcast<'a> {
    /// Distinct, valid channel names, in request order.
    pub channels: Vec<Cow<'a, str>>,
    /// The payload.
    pub data: &'a RawValue,
}

/// Many publishes in one request, handled in order.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    /// The publishes, in request order.
    pub messages: Vec<Publish<'a>>,
}

/// A parsed request body of any route.
#[derive(Clone, Debug)]
pub enum PublishRequest<'a> {
    /// From `POST /v1/publish`.
    Publish(Publish<'a>),
    /// From `POST /v1/broadcast`.
    Broadcast(Broadcast<'a>),
    /// From `POST /v1/batch`.
    Batch(Batch<'a>),
}

/// A refused publish request: 400 or 413, with a JSON body naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The body is larger than `max_publish_body`: 413.
    #[error("request body is {len} bytes, the limit is {max}")]
    BodyTooLarge {
        /// The body's length (or its announced `Content-Length`), in bytes.
        len: u64,
        /// The limit, in bytes.
        max: usize,
    },
    /// The body is not a valid request for the route: 400. The message names the
    /// field (and the index within a list) that is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The body did not arrive completely within `--admin-body-timeout`: 408, and the
    /// connection is closed.
    #[error("request body not complete within {after:?} (--admin-body-timeout)")]
    BodyTimeout {
        /// The limit.
        after: std::time::Duration,
    },
}

impl PublishError {
    fn bad(message: impl Into<String>) -> Self {
        PublishError::BadRequest(message.into())
    }

    /// The HTTP status to answer with.
    pub const fn status(&self) -> u16 {
        match self {
            PublishError::BodyTooLarge { .. } => 413,
            PublishError::BadRequest(_) => 400,
            PublishError::BodyTimeout { .. } => 408,
        }
    }

    /// The stable `error` code of the JSON reply.
    pub const fn code(&self) -> &'static str {
        match self {
            PublishError::BodyTooLarge { .. } => "body_too_large",
            PublishError::BadRequest(_) => "bad_request",
            PublishError::BodyTimeout { .. } => "body_timeout",
        }
    }

    /// The JSON reply body: `{"error":"bad_request","message":"..."}`.
    pub fn to_json(&self) -> String {
        error_json(self.code(), &self.to_string())
    }
}

/// `{"error":<code>,"message":<message>}`, the shape of every publish API error reply.
pub fn error_json(code: &str, message: &str) -> String {
    #[derive(Serialize)]
    struct ErrorJson<'a> {
        error: &'a str,
        message: &'a str,
    }
    // Serializing two strings cannot fail.
    serde_json::to_string(&ErrorJson {
        error: code,
        message,
    })
    .unwrap_or_default()
}

/// Refuses a body of `len` bytes (a `Content-Length`, or the bytes read so far) over
/// `max_publish_body`. Call it before buffering, and again while reading when there
/// is no `Content-Length`.
pub fn check_body_len(len: u64, limits: &PushLimits) -> Result<(), PublishError> {
    if len > limits.max_publish_body as u64 {
        return Err(PublishError::BodyTooLarge {
            len,
            max: limits.max_publish_body,
        });
    }
    Ok(())
}

/// Parses the body of `route`.
pub fn parse_request<'a>(
    route: PublishRoute,
    body: &'a [u8],
    limits: &PushLimits,
) -> Result<PublishRequest<'a>, PublishError> {
    Ok(match route {
        PublishRoute::Publish => PublishRequest::Publish(parse_publish(body, limits)?),
        PublishRoute::Broadcast => PublishRequest::Broadcast(parse_broadcast(body, limits)?),
        PublishRoute::Batch => PublishRequest::Batch(parse_batch(body, limits)?),
    })
}

/// Deserializes a present field as `Some(raw)` even when it is `null`, so `"data":
/// null` publishes a JSON null instead of reading as "missing".
fn present<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'a RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishJson<'a> {
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastJson<'a> {
    #[serde(borrow, default)]
    channels: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchJson<'a> {
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
}

/// Deserializes a JSON object into `T`, turning serde's errors into messages about
/// `what` (e.g. "request body", "`messages[3]`").
fn parse_object<'a, T: Deserialize<'a>>(json: &'a [u8], what: &str) -> Result<T, PublishError> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(PublishError::bad(format!("{what} is empty")));
    }
    let starts_with_brace = json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = serde_json::from_slice(json);
    // serde would also read a struct from a JSON array: insist on an object.
    if parsed.is_ok() && !starts_with_brace {
        return Err(PublishError::bad(format!("{what} must be a JSON object")));
    }
    parsed.map_err(|err| {
        if err.is_data() && !starts_with_brace {
            PublishError::bad(format!("{what} must be a JSON object"))
        } else if err.is_data() {
            PublishError::bad(format!("{what}: {err}"))
        } else {
            PublishError::bad(format!("{what} is not valid JSON: {err}"))
        }
    })
}

/// Parses a `POST /v1/publish` body: `{"channel":..,"data":..}` or `{"user":..,"data":..}`.
pub fn parse_publish<'a>(body: &'a [u8], limits: &PushLimits) -> Result<Publish<'a>, PublishError> {
    let json: PublishJson<'a> = parse_object(body, "request body")?;
    publish_from_json(json, limits).map_err(|problem| PublishError::bad(problem.into_owned()))
}

/// Validates one publish object; the error is a message without location prefix.
fn publish_from_json<'a>(
    json: PublishJson<'a>,
    limits: &PushLimits,
) -> Result<Publish<'a>, Cow<'static, str>> {
    let target = match (json.channel, json.user) {
        (Some(channel), None) => {
            let channel = json_str(channel).ok_or("`channel` must be a string")?;
            validate_channel_name(&channel, limits.max_channel_name)
                .map_err(|err| format!("`channel`: {err}"))?;
            Target::Channel(channel)
        }
        (None, Some(user)) => {
            let user = json_str(user).ok_or("`user` must be a string")?;
            validate_user_id(&user).map_err(|err| format!("`user`: {err}"))?;
            Target::User(user)
        }
        (None, None) => return Err("exactly one of `channel` or `user` is required".into()),
        (Some(_), Some(_)) => return Err("give either `channel` or `user`, not both".into()),
    };
    let data = json.data.ok_or("missing `data`")?;
    check_data_depth(data)?;
    Ok(Publish { target, data })
}

/// Splits a raw JSON array named `field` into its elements, enforcing 1..=`max` entries.
fn array_of<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
    what: &str,
    max: usize,
) -> Result<Vec<&'a RawValue>, PublishError> {
    let raw = raw.ok_or_else(|| PublishError::bad(format!("missing `{field}`")))?;
    let items: Vec<&'a RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| PublishError::bad(format!("`{field}` must be an array of {what}")))?;
    if items.is_empty() {
        return Err(PublishError::bad(format!("`{field}` is empty")));
    }
    if items.len() > max {
        return Err(PublishError::bad(format!(
            "`{field}` has {} entries, the limit is {max}",
            items.len()
        )));
    }
    Ok(items)
}

/// Parses a `POST /v1/broadcast` body: `{"channels":["a","b"],"data":..}`. At most
/// `max_batch` channels, each a valid name, no duplicates.
pub fn parse_broadcast<'a>(
    body: &'a [u8],
    limits: &PushLimits,
) -> Result<Broadcast<'a>, PublishError> {
    let json: BroadcastJson<'a> = parse_object(body, "request body")?;
    let items = array_of(json.channels, "channels", "strings", limits.max_batch)?;
    let mut channels = Vec::with_capacity(items.len());
    let mut seen = HashSet::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let channel = json_str(item)
            .ok_or_else(|| PublishError::bad(format!("`channels[{index}]` must be a string")))?;
        validate_channel_name(&channel, limits.max_channel_name)
            .map_err(|err| PublishError::bad(format!("`channels[{index}]`: {err}")))?;
        if !seen.insert(channel.clone()) {
            return Err(PublishError::bad(format!(
                "`channels[{index}]`: duplicate channel {channel}"
            )));
        }
        channels.push(channel);
    }
    let data = json
        .data
        .ok_or_else(|| PublishError::bad("missing `data`"))?;
    check_data_depth(data).map_err(PublishError::bad)?;
    Ok(Broadcast { channels, data })
}

/// Parses a `POST /v1/batch` body: `{"messages":[<publish>, ..]}` with 1..=`max_batch`
/// publish objects, each as for `POST /v1/publish`. Errors name the index.
pub fn parse_batch<'a>(body: &'a [u8], limits: &PushLimits) -> Result<Batch<'a>, PublishError> {
    let json: BatchJson<'a> = parse_object(body, "request body")?;
    let items = array_of(json.messages, "messages", "objects", limits.max_batch)?;
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let what = format!("`messages[{index}]`");
        let json: PublishJson<'a> = parse_object(item.get().as_bytes(), &what)?;
        let publish = publish_from_json(json, limits)
            .map_err(|problem| PublishError::bad(format!("{what}: {problem}")))?;
        messages.push(publish);
    }
    Ok(Batch { messages })
}

/// The reply to `POST /v1/publish`: `{"ok":true,"seq":17,"epoch":"Xy3kP0aQ","subscribers":3}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublishReply {
    /// Always `true` (errors use another shape).
    pub ok: bool,
    /// The `seq` of the delivery in its stream.
    pub seq: u64,
    /// The epoch that `seq` counts in.
    pub epoch: Epoch,
    /// How many local connections the delivery was queued for.
    pub subscribers: u64,
}

impl PublishReply {
    /// A success reply.
    pub fn new(position: Position, subscribers: u64) -> Self {
        PublishReply {
            ok: true,
            seq: position.seq,
            epoch: position.epoch,
            subscribers,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One publish's outcome within a [`MultiReply`]:
/// `{"channel":"a","seq":18,"epoch":"Xy3kP0aQ","subscribers":2}`
/// or `{"user":"42","seq":19,"epoch":"Xy3kP0aQ","subscribers":1}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PublishResult<'a> {
    /// The channel, for a channel publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    /// The user, for a per-user publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The `seq` of the delivery in its stream.
    pub seq: u64,
    /// The epoch that `seq` counts in.
    pub epoch: Epoch,
    /// How many local connections the delivery was queued for.
    pub subscribers: u64,
}

impl<'a> PublishResult<'a> {
    /// The result for a publish to `target`.
    pub fn new(target: &'a Target<'_>, position: Position, subscribers: u64) -> Self {
        let (channel, user) = match target {
            Target::Channel(channel) => (Some(&**channel), None),
            Target::User(user) => (None, Some(&**user)),
        };
        PublishResult {
            channel,
            user,
            seq: position.seq,
            epoch: position.epoch,
            subscribers,
        }
    }
}

/// The reply to `POST /v1/broadcast` and `POST /v1/batch`: one result per delivery in
/// request order, and their subscriber total.
///
/// `{"ok":true,"subscribers":3,"results":[{"channel":"a","seq":18,"epoch":"Xy3kP0aQ","subscribers":2},..]}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MultiReply<'a> {
    /// Always `true`.
    pub ok: bool,
    /// The sum of every result's `subscribers` (a connection on two of the channels
    /// counts twice: it receives two deliveries).
    pub subscribers: u64,
    /// One per channel (broadcast) or per message (batch), in request order.
    pub results: Vec<PublishResult<'a>>,
}

impl<'a> MultiReply<'a> {
    /// A success reply over `results`.
    pub fn new(results: Vec<PublishResult<'a>>) -> Self {
        let subscribers = results.iter().map(|result| result.subscribers).sum();
        MultiReply {
            ok: true,
            subscribers,
            results,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PushLimits {
        PushLimits::default()
    }

    fn publish(body: &str) -> Result<Publish<'_>, PublishError> {
        parse_publish(body.as_bytes(), &limits())
    }

    fn bad(result: Result<impl std::fmt::Debug, PublishError>) -> String {
        match result {
            Err(PublishError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            PublishRoute::from_path("/v1/publish"),
            Some(PublishRoute::Publish)
        );
        assert_eq!(
            PublishRoute::from_path("/v1/broadcast"),
            Some(PublishRoute::Broadcast)
        );
        assert_eq!(
            PublishRoute::from_path("/v1/batch"),
            Some(PublishRoute::Batch)
        );
        assert_eq!(PublishRoute::from_path("/v1/publish/"), None);
        assert_eq!(PublishRoute::from_path("/metrics"), None);
    }

    #[test]
    fn publish_to_channel_keeps_data_verbatim() {
        let body = r#"{"channel":"scores","data":{"home": 2, "away":1.50}}"#;
        let p = publish(body).unwrap();
        assert_eq!(p.target, Target::Channel("scores".into()));
        assert_eq!(p.data.get(), r#"{"home": 2, "away":1.50}"#);
        assert!(matches!(p.target, Target::Channel(Cow::Borrowed(_))));
    }

    #[test]
    fn publish_to_user() {
        let p = publish(r#"{"data":"hi","user":"42"}"#).unwrap();
        assert_eq!(p.target, Target::User("42".into()));
        assert_eq!(p.data.get(), r#""hi""#);
    }

    #[test]
    fn null_data_is_data() {
        let p = publish(r#"{"channel":"a","data":null}"#).unwrap();
        assert_eq!(p.data.get(), "null");
    }

    #[test]
    fn malformed_publish_bodies_name_the_problem() {
        let cases = [
            ("", "request body is empty"),
            ("  \n", "request body is empty"),
            ("[]", "request body must be a JSON object"),
            ("\"x\"", "request body must be a JSON object"),
            (
                r#"{"data":1}"#,
                "exactly one of `channel` or `user` is required",
            ),
            (
                r#"{"channel":"a","user":"b","data":1}"#,
                "give either `channel` or `user`, not both",
            ),
            (r#"{"channel":"a"}"#, "missing `data`"),
            (r#"{"channel":7,"data":1}"#, "`channel` must be a string"),
            (r#"{"user":[],"data":1}"#, "`user` must be a string"),
            (r#"{"user":"","data":1}"#, "`user`: user id is empty"),
            (
                r##"{"channel":"#user","data":1}"##,
                "`channel`: channel names starting with '#' are reserved",
            ),
            (
                r#"{"channel":"a b","data":1}"#,
                "`channel`: channel name has a forbidden byte 0x20 at byte 1 (allowed: printable ASCII without space, '\"', '\\', '*')",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(bad(publish(body)), want, "{body:?}");
        }
        let message = bad(publish(r#"{"chanel":"a","data":1}"#));
        assert!(
            message.starts_with("request body: unknown field `chanel`"),
            "{message}"
        );
        let message = bad(publish(r#"{"channel":"a","data":}"#));
        assert!(
            message.starts_with("request body is not valid JSON: "),
            "{message}"
        );
        let message = bad(publish(r#"{"channel":"a","data":1} {}"#));
        assert!(
            message.starts_with("request body is not valid JSON: trailing characters"),
            "{message}"
        );
        let long = "c".repeat(129);
        assert_eq!(
            bad(publish(&format!(r#"{{"channel":"{long}","data":1}}"#))),
            "`channel`: channel name is 129 bytes, the limit is 128"
        );
    }

    #[test]
    fn data_nesting_is_bounded() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let at_limit = format!(r#"{{"channel":"a","data":{}}}"#, nested(MAX_DATA_DEPTH));
        assert_eq!(publish(&at_limit).unwrap().data.get(), nested(64));
        let refused =
            "`data` is nested more than 64 levels deep (arrays and objects), the limit is 64";
        let over = format!(r#"{{"channel":"a","data":{}}}"#, nested(MAX_DATA_DEPTH + 1));
        assert_eq!(bad(publish(&over)), refused);
        // 100,000 deep: serde keeps it as raw text without recursing, and so does the check.
        let deep = format!(r#"{{"channel":"a","data":{}}}"#, nested(100_000));
        assert_eq!(bad(publish(&deep)), refused);
        let objects = format!(
            r#"{{"channel":"a","data":{}1{}}}"#,
            r#"{"k":"#.repeat(65),
            "}".repeat(65)
        );
        assert_eq!(bad(publish(&objects)), refused);
        let broadcast = format!(r#"{{"channels":["a"],"data":{}}}"#, nested(65));
        assert_eq!(
            bad(parse_broadcast(broadcast.as_bytes(), &limits())),
            refused
        );
        let batch = format!(
            r#"{{"messages":[{{"channel":"a","data":1}},{{"channel":"b","data":{}}}]}}"#,
            nested(65)
        );
        assert_eq!(
            bad(parse_batch(batch.as_bytes(), &limits())),
            format!("`messages[1]`: {refused}")
        );
        // Brackets inside strings (escaped quotes included) are not nesting.
        let text = format!(
            r#"{{"channel":"a","data":["\"{}", {{"x":"]]]"}}]}}"#,
            "[".repeat(200)
        );
        assert!(publish(&text).is_ok());
        assert!(!nested_deeper_than(r#""\\" "#, 0));
        assert!(nested_deeper_than(r#"["\\",[]]"#, 1));
    }

    #[test]
    fn broadcast() {
        let body = br#"{"channels":["a","team:7"],"data":[1,2]}"#;
        let b = parse_broadcast(body, &limits()).unwrap();
        assert_eq!(b.channels, ["a", "team:7"]);
        assert_eq!(b.data.get(), "[1,2]");
    }

    #[test]
    fn malformed_broadcasts() {
        let cases = [
            (r#"{"data":1}"#, "missing `channels`"),
            (
                r#"{"channels":"a","data":1}"#,
                "`channels` must be an array of strings",
            ),
            (r#"{"channels":[],"data":1}"#, "`channels` is empty"),
            (
                r#"{"channels":["a",3],"data":1}"#,
                "`channels[1]` must be a string",
            ),
            (
                r#"{"channels":["a",""],"data":1}"#,
                "`channels[1]`: channel name is empty",
            ),
            (
                r#"{"channels":["a","b","a"],"data":1}"#,
                "`channels[2]`: duplicate channel a",
            ),
            (r#"{"channels":["a"]}"#, "missing `data`"),
        ];
        for (body, want) in cases {
            assert_eq!(
                bad(parse_broadcast(body.as_bytes(), &limits())),
                want,
                "{body}"
            );
        }
        let too_many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
        let body = serde_json::json!({"channels": too_many, "data": 1}).to_string();
        assert_eq!(
            bad(parse_broadcast(body.as_bytes(), &limits())),
            "`channels` has 1001 entries, the limit is 1000"
        );
    }

    #[test]
    fn batch() {
        let body = br#"{"messages":[{"channel":"a","data":1},{"user":"42","data":{"x":true}}]}"#;
        let b = parse_batch(body, &limits()).unwrap();
        assert_eq!(b.messages.len(), 2);
        assert_eq!(b.messages[0].target, Target::Channel("a".into()));
        assert_eq!(b.messages[1].target, Target::User("42".into()));
        assert_eq!(b.messages[1].data.get(), r#"{"x":true}"#);
    }

    #[test]
    fn malformed_batches_name_the_index() {
        let cases = [
            (r#"{}"#, "missing `messages`"),
            (
                r#"{"messages":{}}"#,
                "`messages` must be an array of objects",
            ),
            (r#"{"messages":[]}"#, "`messages` is empty"),
            (
                r#"{"messages":[{"channel":"a","data":1},7]}"#,
                "`messages[1]` must be a JSON object",
            ),
            (
                r#"{"messages":[{"channel":"a","data":1},{"channel":"b"}]}"#,
                "`messages[1]`: missing `data`",
            ),
            (
                r#"{"messages":[{"data":1}]}"#,
                "`messages[0]`: exactly one of `channel` or `user` is required",
            ),
            (
                r#"{"messages":[{"user":"x","data":1},{"user":"a\u0000","data":1}]}"#,
                "`messages[1]`: `user`: user id contains a control character",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(bad(parse_batch(body.as_bytes(), &limits())), want, "{body}");
        }
        let message = bad(parse_batch(
            br#"{"messages":[{"channel":"a","data":1,"extra":2}]}"#,
            &limits(),
        ));
        assert!(
            message.starts_with("`messages[0]`: unknown field `extra`"),
            "{message}"
        );
        let message = bad(parse_batch(br#"{"messages":[],"data":1}"#, &limits()));
        assert!(
            message.starts_with("request body: unknown field `data`"),
            "{message}"
        );
    }

    #[test]
    fn batch_over_the_limit() {
        let limits = PushLimits {
            max_batch: 3,
            ..limits()
        };
        let item = serde_json::json!({"channel": "a", "data": 1});
        let body = serde_json::json!({"messages": [item, item, item, item]}).to_string();
        assert_eq!(
            bad(parse_batch(body.as_bytes(), &limits)),
            "`messages` has 4 entries, the limit is 3"
        );
        let body = serde_json::json!({"messages": [item, item, item]}).to_string();
        assert_eq!(
            parse_batch(body.as_bytes(), &limits)
                .unwrap()
                .messages
                .len(),
            3
        );
    }

    #[test]
    fn parse_request_dispatches_by_route() {
        let body = br#"{"channel":"a","data":1}"#;
        assert!(matches!(
            parse_request(PublishRoute::Publish, body, &limits()),
            Ok(PublishRequest::Publish(_))
        ));
        assert!(parse_request(PublishRoute::Broadcast, body, &limits()).is_err());
        assert!(parse_request(PublishRoute::Batch, body, &limits()).is_err());
    }

    #[test]
    fn body_limit() {
        let limits = limits();
        assert_eq!(check_body_len(1 << 20, &limits), Ok(()));
        let err = check_body_len((1 << 20) + 1, &limits).unwrap_err();
        assert_eq!(err.status(), 413);
        assert_eq!(
            err.to_json(),
            r#"{"error":"body_too_large","message":"request body is 1048577 bytes, the limit is 1048576"}"#
        );
    }

    #[test]
    fn body_timeout_reply() {
        let err = PublishError::BodyTimeout {
            after: std::time::Duration::from_secs(10),
        };
        assert_eq!(err.status(), 408);
        assert_eq!(
            err.to_json(),
            r#"{"error":"body_timeout","message":"request body not complete within 10s (--admin-body-timeout)"}"#
        );
    }

    #[test]
    fn error_json_shape() {
        let err = publish(r#"{"data":1}"#).unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(
            err.to_json(),
            r#"{"error":"bad_request","message":"exactly one of `channel` or `user` is required"}"#
        );
    }

    #[test]
    fn replies() {
        let epoch = Epoch::parse("Xy3kP0aQ").unwrap();
        let at = |seq| Position { seq, epoch };
        assert_eq!(
            PublishReply::new(at(17), 3).to_json(),
            r#"{"ok":true,"seq":17,"epoch":"Xy3kP0aQ","subscribers":3}"#
        );
        let channel = Target::Channel("a".into());
        let user = Target::User("42".into());
        let reply = MultiReply::new(vec![
            PublishResult::new(&channel, at(18), 2),
            PublishResult::new(&user, at(1), 1),
        ]);
        assert_eq!(
            reply.to_json(),
            r#"{"ok":true,"subscribers":3,"results":[{"channel":"a","seq":18,"epoch":"Xy3kP0aQ","subscribers":2},{"user":"42","seq":1,"epoch":"Xy3kP0aQ","subscribers":1}]}"#
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
                for route in PublishRoute::ALL {
                    if let Err(err) = parse_request(route, &body, &limits()) {
                        prop_assert_eq!(err.status(), 400);
                        let json: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
                        prop_assert_eq!(&json["error"], "bad_request");
                    }
                }
            }

            #[test]
            fn valid_publishes_keep_data_byte_for_byte(
                channel in "[a-z0-9:._-]{1,40}",
                data in prop_oneof![
                    Just("null".to_owned()),
                    Just("[1, 2.50, {\"k\" : \"v\"}]".to_owned()),
                    any::<i64>().prop_map(|n| n.to_string()),
                    "\\PC{0,50}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                ],
            ) {
                let body = format!("{{\"data\": {data}, \"channel\": \"{channel}\"}}");
                let publish = parse_publish(body.as_bytes(), &limits()).unwrap();
                prop_assert_eq!(publish.target, Target::Channel(channel.as_str().into()));
                prop_assert_eq!(publish.data.get(), data.as_str());
            }
        }
    }
}
