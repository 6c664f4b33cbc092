//! The history API's query and reply: `GET /v1/history` on the admin listener.
//!
//! | parameter | meaning |
//! |---|---|
//! | `channel=NAME` or `user=ID` | the stream (exactly one) |
//! | `since=SEQ&epoch=EPOCH` | only publications after this position (both or neither); ignored when `EPOCH` is not the stream's current epoch |
//! | `limit=N` | at most `N` publications, 1..=[`MAX_HISTORY_LIMIT`] (default [`DEFAULT_HISTORY_LIMIT`]) |
//!
//! The reply is `{"channel":"scores","seq":<top>,"epoch":"…","publications":[…]}` (or
//! `"user":"42"` first), the publications oldest first, each a delivery object exactly
//! as subscribers received it. An unknown stream answers its fresh position and no
//! publications. Anything else is a 400 naming the parameter. The wire format, with a
//! `curl` example, is in `docs/protocol.md`.

use super::PushLimits;
use super::channel::{validate_channel_name, validate_user_id};
use super::protocol::delivery_json;
use super::publish::{PublishError, Target};
use crate::engine::position::{Position, Since};

/// Publications per history reply unless `limit` says otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// A parsed `GET /v1/history` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery<'a> {
    /// The stream.
    pub target: Target<'a>,
    /// Only publications after this (in its epoch).
    pub since: Option<Since>,
    /// At most this many publications.
    pub limit: usize,
}

fn bad(message: impl Into<String>) -> PublishError {
    PublishError::BadRequest(message.into())
}

/// Parses the query string (after `?`) of `GET /v1/history`.
///
/// # Errors
/// A 400 naming the parameter: an unknown or repeated parameter, both or neither of
/// `channel` and `user`, an invalid name or id, `since` without `epoch` (or the other
/// way round), a `since` or `limit` that is not a decimal number in range.
pub fn parse_history_query<'a>(
    query: &'a str,
    limits: &PushLimits,
) -> Result<HistoryQuery<'a>, PublishError> {
    let mut channel = None;
    let mut user = None;
    let mut since = None;
    let mut epoch = None;
    let mut limit = None;
    for (name, value) in pingwheel_proto::handshake::query_pairs(query) {
        let slot = match &*name {
            "channel" => &mut channel,
            "user" => &mut user,
            "since" => &mut since,
            "epoch" => &mut epoch,
            "limit" => &mut limit,
            other => {
                let other: String = other.chars().take(40).collect();
                return Err(bad(format!(
                    "unknown parameter `{other}`; expected channel, user, since, epoch, limit"
                )));
            }
        };
        if slot.is_some() {
            return Err(bad(format!("`{name}` is given twice")));
        }
        *slot = Some(value);
    }
    let target = match (channel, user) {
        (Some(channel), None) => {
            validate_channel_name(&channel, limits.max_channel_name)
                .map_err(|err| bad(format!("`channel`: {err}")))?;
            Target::Channel(channel)
        }
        (None, Some(user)) => {
            validate_user_id(&user).map_err(|err| bad(format!("`user`: {err}")))?;
            Target::User(user)
        }
        (None, None) => return Err(bad("exactly one of `channel` or `user` is required")),
        (Some(_), Some(_)) => return Err(bad("give either `channel` or `user`, not both")),
    };
    let number = |name: &str, value: &str| -> Result<u64, PublishError> {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("`{name}` must be a decimal number")));
        }
        value
            .parse()
            .map_err(|_| bad(format!("`{name}` is too large")))
    };
    let since = match (since, epoch) {
        (Some(seq), Some(epoch)) => Some(Since::new(number("since", &seq)?, &epoch)),
        (None, None) => None,
        (Some(_), None) => return Err(bad("`since` needs `epoch` (the epoch its seq counts in)")),
        (None, Some(_)) => return Err(bad("`epoch` needs `since`")),
    };
    let limit = match limit {
        None => DEFAULT_HISTORY_LIMIT,
        Some(value) => {
            let n = number("limit", &value)?;
            if n == 0 || n > MAX_HISTORY_LIMIT as u64 {
                return Err(bad(format!(
                    "`limit` must be 1 to {MAX_HISTORY_LIMIT}, not {n}"
                )));
            }
            n as usize
        }
    };
    Ok(HistoryQuery {
        target,
        since,
        limit,
    })
}

/// The reply body: `{"channel":..,"seq":..,"epoch":..,"publications":[..]}` (or
/// `"user":..`), with each frame's delivery JSON inserted verbatim.
pub fn history_json(target: &Target<'_>, position: Position, frames: &[bytes::Bytes]) -> String {
    let (field, name) = match target {
        Target::Channel(c) => ("channel", c),
        Target::User(u) => ("user", u),
    };
    let name = serde_json::to_string(&**name).unwrap_or_default();
    let size: usize = frames.iter().map(|f| f.len() + 1).sum();
    let mut out = String::with_capacity(80 + name.len() + size);
    out.push_str(&format!(
        r#"{{"{field}":{name},"seq":{},"epoch":"{}","publications":["#,
        position.seq, position.epoch
    ));
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Delivery frames are built from valid UTF-8 (a name and validated JSON).
        out.push_str(&String::from_utf8_lossy(delivery_json(frame)));
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::position::Epoch;
    use crate::push::protocol::DeliveryFrame;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    fn parse(q: &str) -> Result<HistoryQuery<'_>, String> {
        parse_history_query(q, &PushLimits::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn queries() {
        assert_eq!(
            parse("channel=scores").unwrap(),
            HistoryQuery {
                target: Target::Channel(Cow::Borrowed("scores")),
                since: None,
                limit: DEFAULT_HISTORY_LIMIT
            }
        );
        assert_eq!(
            parse("user=a%20b&since=40&epoch=Xy3kP0aQ&limit=5").unwrap(),
            HistoryQuery {
                target: Target::User(Cow::Borrowed("a b")),
                since: Some(Since::new(40, "Xy3kP0aQ")),
                limit: 5
            }
        );
        assert_eq!(
            parse("channel=team%3A7").unwrap().target,
            Target::Channel("team:7".into())
        );
    }

    #[test]
    fn refusals_name_the_parameter() {
        let cases = [
            ("", "exactly one of `channel` or `user` is required"),
            (
                "channel=a&user=b",
                "give either `channel` or `user`, not both",
            ),
            ("channel=a&channel=b", "`channel` is given twice"),
            (
                "channel=a&sine=3",
                "unknown parameter `sine`; expected channel, user, since, epoch, limit",
            ),
            (
                "channel=a%20b",
                "`channel`: channel name has a forbidden byte 0x20 at byte 1 (allowed: printable ASCII without space, '\"', '\\', '*')",
            ),
            ("user=", "`user`: user id is empty"),
            (
                "channel=a&since=3",
                "`since` needs `epoch` (the epoch its seq counts in)",
            ),
            ("channel=a&epoch=x", "`epoch` needs `since`"),
            (
                "channel=a&since=-3&epoch=x",
                "`since` must be a decimal number",
            ),
            (
                "channel=a&since=99999999999999999999&epoch=x",
                "`since` is too large",
            ),
            ("channel=a&limit=0", "`limit` must be 1 to 1000, not 0"),
            (
                "channel=a&limit=1001",
                "`limit` must be 1 to 1000, not 1001",
            ),
            ("channel=a&limit=ten", "`limit` must be a decimal number"),
        ];
        for (q, want) in cases {
            assert_eq!(parse(q).unwrap_err(), want, "{q}");
        }
    }

    #[test]
    fn reply_lists_the_delivery_objects() {
        let p = Position {
            seq: 2,
            epoch: Epoch::parse("Xy3kP0aQ").unwrap(),
        };
        let data = RawValue::from_string(r#"{"a":1}"#.to_owned()).unwrap();
        let frame = |seq| {
            DeliveryFrame {
                channel: "#user",
                data: &data,
            }
            .encode(&Position { seq, ..p })
        };
        let json = history_json(&Target::User("4\"2".into()), p, &[frame(1), frame(2)]);
        assert_eq!(
            json,
            r##"{"user":"4\"2","seq":2,"epoch":"Xy3kP0aQ","publications":[{"channel":"#user","seq":1,"epoch":"Xy3kP0aQ","data":{"a":1}},{"channel":"#user","seq":2,"epoch":"Xy3kP0aQ","data":{"a":1}}]}"##
        );
        let empty = history_json(
            &Target::Channel("nobody".into()),
            Position { seq: 0, ..p },
            &[],
        );
        assert_eq!(
            empty,
            r#"{"channel":"nobody","seq":0,"epoch":"Xy3kP0aQ","publications":[]}"#
        );
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }
}
