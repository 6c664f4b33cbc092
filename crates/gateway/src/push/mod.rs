//! The push layer: who may connect and subscribe to what, the client protocol, and
//! the publish API.
//!
//! Everything here is pure (no sockets, no threads, no clock reads: `now` is passed
//! in), so the worker and the admin listener call it and tests drive it directly.
//! The wire formats are specified for clients and operators in `docs/protocol.md`.
//!
//! | module | what | who calls it |
//! |---|---|---|
//! | [`auth`] | JWT checks at the upgrade, `Origin` allowlist, `?channel=`, API keys | worker (handshake), admin (publish) |
//! | [`channel`] | channel name rules, [`channel::ChannelGrant`] patterns, `#user` | all of the below |
//! | [`protocol`] | client JSON ops in, replies and delivery frames out, inbound rate limit | worker |
//! | [`publish`] | publish API bodies and replies, `seq` allocation | admin |
//! | [`history`] | the history API's query and reply | admin |

use std::borrow::Cow;

use serde_json::value::RawValue;

pub mod auth;
pub mod channel;
pub mod history;
pub mod protocol;
pub mod publish;

/// The abuse limits of the push layer, with the defaults of the matching flags.
///
/// The gateway builds one from its configuration at startup; the pure functions of
/// this module take it by reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushLimits {
    /// Most channels one connection may be subscribed to (`--max-subscriptions`, 64).
    /// Channels given in the URL count too.
    pub max_subscriptions: usize,
    /// Longest channel name in bytes (`--max-channel-name`, 128).
    pub max_channel_name: usize,
    /// Inbound client messages per second per connection, sustained
    /// (`--max-inbound-rate`, 50).
    pub inbound_rate_per_sec: u32,
    /// Inbound client messages a connection may send back to back before the rate
    /// applies (50).
    pub inbound_burst: u32,
    /// After this many consecutive rate-limited messages the connection is closed with
    /// 1008 (policy violation) instead of being answered (100).
    pub flood_close_after: u16,
    /// Longest client message (a JSON op) in bytes; longer ones are answered with
    /// `message_too_large` without being parsed (4096).
    pub max_client_message: usize,
    /// Largest publish API request body in bytes (`--max-publish-body`, 1 MiB): 413 above.
    pub max_publish_body: usize,
    /// Most messages in one `POST /v1/batch`, and most channels in one
    /// `POST /v1/broadcast` (1000).
    pub max_batch: usize,
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_subscriptions: 64,
            max_channel_name: 128,
            inbound_rate_per_sec: 50,
            inbound_burst: 50,
            flood_close_after: 100,
            max_client_message: 4096,
            max_publish_body: 1 << 20,
            max_batch: 1000,
        }
    }
}

/// The string a raw JSON value holds, borrowed when it has no escapes; `None` if the
/// value is not a JSON string.
pub(crate) fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .ok()
            .map(Cow::Owned),
    }
}

/// Checks the examples of `docs/protocol.md` that this module alone can answer: the
/// exact client error replies, delivery and reply shapes, and the publish API errors.
#[cfg(test)]
mod protocol_md {
    use super::PushLimits;
    use super::auth::{ApiKeyRefusal, check_api_key};
    use super::channel::ChannelGrant;
    use super::protocol::{
        ClientError, ClientOp, DeliveryFrame, authorize_subscribe, parse_client_message,
    };
    use super::publish::{
        MultiReply, PublishReply, PublishResult, PublishRoute, Target, check_body_len,
        parse_request,
    };
    use crate::engine::position::{Epoch, Position};
    use serde_json::Value;
    use serde_json::value::RawValue;

    const DOC: &str = include_str!("../../../../docs/protocol.md");

    /// The body of the first code block after `<!-- {kind}: {name} -->`.
    fn block(kind: &str, name: &str) -> &'static str {
        let marker = format!("<!-- {kind}: {name} -->");
        let start = DOC
            .find(&marker)
            .unwrap_or_else(|| panic!("no {marker} in protocol.md"));
        let after = &DOC[start + marker.len()..];
        let fence = after.find("```").expect("a code fence after the marker");
        let body_start = fence + after[fence..].find('\n').expect("fence line") + 1;
        let body_len = after[body_start..].find("```").expect("closing fence");
        &after[body_start..body_start + body_len]
    }

    /// The `-d '...'` body and the path of a curl example.
    fn curl_request(name: &str) -> (PublishRoute, String) {
        let example = block("example", name);
        let url_start = example.find("http://127.0.0.1:9090").expect("admin URL");
        let path = example[url_start + "http://127.0.0.1:9090".len()..]
            .split_whitespace()
            .next()
            .expect("path");
        let route = PublishRoute::from_path(path).expect("a publish route");
        let body_start = example.find("-d '").expect("a -d body") + 4;
        let body_len = example[body_start..].find('\'').expect("closing quote");
        (route, example[body_start..body_start + body_len].to_owned())
    }

    #[test]
    fn client_error_examples_are_exact() {
        let limits = PushLimits::default();
        let grant = ChannelGrant::from_patterns(&["scores", "team:*"], 128).unwrap();
        let subscribed = ["scores", "team:7"];
        let lines: Vec<&str> = block("example", "client-errors").lines().collect();
        assert!(lines.len() >= 12, "client-errors should show six exchanges");
        for pair in lines.chunks(2) {
            let request = pair[0].strip_prefix("> ").expect("a request line");
            let want = pair[1].strip_prefix("< ").expect("a reply line");
            let got = match parse_client_message(request, &limits) {
                Err(err) => err.reply().to_json(),
                Ok(req) => match &req.op {
                    ClientOp::Subscribe { channel, .. } => {
                        let already = subscribed.contains(&&**channel);
                        match authorize_subscribe(&grant, channel, already, 2, &limits, req.id) {
                            Err(err) => err.reply().to_json(),
                            Ok(()) => req.ack().to_json(),
                        }
                    }
                    ClientOp::Unsubscribe { channel } if !subscribed.contains(&&**channel) => {
                        ClientError::not_subscribed(channel, req.id)
                            .reply()
                            .to_json()
                    }
                    _ => req.ack().to_json(),
                },
            };
            assert_eq!(got, want, "request {request}");
        }
    }

    #[test]
    fn delivery_example_is_what_the_delivery_frame_writes() {
        #[derive(serde::Deserialize)]
        struct Delivery<'a> {
            channel: &'a str,
            seq: u64,
            epoch: &'a str,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let doc = block("example", "delivery").trim();
        let delivery: Delivery<'_> = serde_json::from_str(doc).unwrap();
        let position = Position {
            seq: delivery.seq,
            epoch: Epoch::parse(delivery.epoch).expect("an epoch"),
        };
        let frame = DeliveryFrame {
            channel: delivery.channel,
            data: delivery.data,
        }
        .encode(&position);
        assert_eq!(&frame[2..], doc.as_bytes());
    }

    /// The position in a reply object (`seq` and `epoch`).
    fn position_in(reply: &Value) -> Position {
        Position {
            seq: reply["seq"].as_u64().unwrap(),
            epoch: Epoch::parse(reply["epoch"].as_str().unwrap()).unwrap(),
        }
    }

    #[test]
    fn publish_examples_parse_and_replies_have_our_shape() {
        let limits = PushLimits::default();
        for name in [
            "curl-publish",
            "curl-publish-user",
            "curl-broadcast",
            "curl-batch",
        ] {
            let (route, body) = curl_request(name);
            assert!(
                parse_request(route, body.as_bytes(), &limits).is_ok(),
                "{name}: {body}"
            );
            let want = block("reply", name).trim();
            let reply: Value = serde_json::from_str(want).unwrap();
            let got = if route == PublishRoute::Publish {
                PublishReply::new(position_in(&reply), reply["subscribers"].as_u64().unwrap())
                    .to_json()
            } else {
                let targets: Vec<Target<'_>> = reply["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| match (r["channel"].as_str(), r["user"].as_str()) {
                        (Some(channel), None) => Target::Channel(channel.into()),
                        (None, Some(user)) => Target::User(user.into()),
                        _ => panic!("{name}: result without channel or user"),
                    })
                    .collect();
                let results = reply["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(&targets)
                    .map(|(r, target)| {
                        PublishResult::new(
                            target,
                            position_in(r),
                            r["subscribers"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                MultiReply::new(results).to_json()
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn publish_error_examples_are_exact() {
        let limits = PushLimits::default();
        for name in ["curl-error-bad-field", "curl-error-batch-index"] {
            let (route, body) = curl_request(name);
            let err = parse_request(route, body.as_bytes(), &limits).unwrap_err();
            let got = format!("{}\n{}\n", err.to_json(), err.status());
            assert_eq!(got, block("reply", name), "{name}");
        }

        let refusal = check_api_key(Some(b"change-me-api-key"), false, Some("Bearer wrong-key"));
        assert_eq!(refusal, Err(ApiKeyRefusal::Wrong));
        let got = format!(
            "{}\n{}\n",
            ApiKeyRefusal::Wrong.to_json(),
            ApiKeyRefusal::Wrong.status()
        );
        assert_eq!(got, block("reply", "curl-error-unauthorized"));

        // printf '{"channel":"scores","data":"%s"}' with 1 MiB of x.
        let len = r#"{"channel":"scores","data":""}"#.len() as u64 + (1 << 20);
        let err = check_body_len(len, &limits).unwrap_err();
        let got = format!("{}\n{}\n", err.to_json(), err.status());
        assert_eq!(got, block("reply", "curl-error-too-large"));
    }

    #[test]
    fn every_example_has_a_block() {
        let mut names = 0;
        for (index, _) in DOC.match_indices("<!-- example: ") {
            let name = DOC[index + 14..].split(" -->").next().unwrap();
            assert!(!block("example", name).trim().is_empty(), "{name}");
            names += 1;
        }
        assert!(names >= 14, "found {names} examples");
    }
}
