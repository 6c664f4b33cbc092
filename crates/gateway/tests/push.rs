//! The push layer with tungstenite's client: a Rust client authenticates with a JWT,
//! subscribes and receives what the publish API sends; a forged token gets 401.
//! (The full matrix runs from Python in tests/test_push.py.)

mod common;

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Gateway, http_post};
use jsonwebtoken::{EncodingKey, Header};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket, connect};

const SECRET: &str = "rust-test-token-secret-of-32-bytes!";
const API_KEY: &str = "rust-test-api-key";

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A gateway with a token secret and an API key.
fn push_gateway() -> Gateway {
    Gateway::start_with_env(
        &[],
        &[
            ("PINGWHEEL_TOKEN_SECRET", SECRET),
            ("PINGWHEEL_API_KEY", API_KEY),
        ],
    )
}

/// An HS256 token for `sub` granting `channels`, signed with `secret`.
fn token(secret: &str, sub: &str, channels: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "channels": channels });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a JWT")
}

/// The upgrade request for `url` with `Authorization: Bearer <token>`, offering
/// the `pingwheel.v1` subprotocol.
fn authorized_request(url: &str, token: &str) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().expect("a ws:// URL");
    let headers = request.headers_mut();
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).expect("header value");
    headers.insert("Authorization", bearer);
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("pingwheel.v1"),
    );
    request
}

fn set_read_timeout(ws: &Client, timeout: Duration) {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.set_read_timeout(Some(timeout)).expect("timeout"),
        _ => unreachable!("plain TCP only"),
    }
}

/// The next text message (pings are answered by tungstenite on the way).
fn next_text(ws: &mut Client) -> String {
    loop {
        match ws.read().expect("a message within the read timeout") {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The (first) `epoch` in a JSON text.
fn epoch_of(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
    let epoch = value["epoch"]
        .as_str()
        .or_else(|| value["results"][0]["epoch"].as_str())
        .expect("an epoch");
    assert!(
        epoch.len() == 8 && epoch.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{epoch}"
    );
    epoch.to_owned()
}

/// Publishes `body` to `path` with the API key; returns the 200 reply's body.
fn publish(gw: &Gateway, path: &str, body: &str) -> String {
    let authorization = format!("Authorization: Bearer {API_KEY}");
    let reply = http_post(gw.admin, path, &[&authorization], body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.body
}

#[test]
fn tungstenite_client_subscribes_and_receives() {
    let gw = push_gateway();
    let token = token(SECRET, "ana", &["scores", "team:*"]);
    let url = format!("{}?channel=scores", gw.ws_url());
    let (mut ws, response) = connect(authorized_request(&url, &token)).expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "pingwheel.v1",
        "the subprotocol is echoed"
    );
    set_read_timeout(&ws, Duration::from_secs(5));

    ws.send(Message::text(
        r#"{"op":"subscribe","channel":"team:7","id":1}"#,
    ))
    .expect("send subscribe");
    // Every subscribed reply carries the channel's position: nothing published yet.
    let subscribed = next_text(&mut ws);
    let team_epoch = epoch_of(&subscribed);
    assert_eq!(
        subscribed,
        format!(
            r#"{{"op":"subscribed","channel":"team:7","id":1,"seq":0,"epoch":"{team_epoch}"}}"#
        )
    );

    let reply = publish(
        &gw,
        "/v1/publish",
        r#"{"channel":"scores","data":{"home":2,"away":1}}"#,
    );
    let scores_epoch = epoch_of(&reply);
    assert_eq!(
        reply,
        format!(r#"{{"ok":true,"seq":1,"epoch":"{scores_epoch}","subscribers":1}}"#)
    );
    assert_eq!(
        next_text(&mut ws),
        format!(
            r#"{{"channel":"scores","seq":1,"epoch":"{scores_epoch}","data":{{"home":2,"away":1}}}}"#
        )
    );

    let reply = publish(
        &gw,
        "/v1/batch",
        r#"{"messages":[{"channel":"team:7","data":"goal"},{"user":"ana","data":[1, 2]}]}"#,
    );
    assert!(
        reply.starts_with(r#"{"ok":true,"subscribers":2,"#),
        "{reply}"
    );
    assert_eq!(
        next_text(&mut ws),
        format!(r#"{{"channel":"team:7","seq":1,"epoch":"{team_epoch}","data":"goal"}}"#)
    );
    let user = next_text(&mut ws);
    let user_epoch = epoch_of(&user);
    assert_eq!(
        user,
        format!(r##"{{"channel":"#user","seq":1,"epoch":"{user_epoch}","data":[1, 2]}}"##)
    );
    assert_ne!(user_epoch, team_epoch, "every stream has its own epoch");

    ws.close(None).expect("close");
    while ws.read().is_ok() {} // until the gateway's Close arrives and the socket ends
}

#[test]
fn forged_token_is_refused_with_401() {
    let gw = push_gateway();
    let forged = token("not-the-gateway-secret", "ana", &["*"]);
    let error = connect(authorized_request(&gw.ws_url(), &forged))
        .expect_err("a forged token must not open a WebSocket");
    let tungstenite::Error::Http(response) = error else {
        panic!("expected an HTTP refusal, got {error:?}");
    };
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["WWW-Authenticate"], "Bearer");
    let body = response.body().as_deref().unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(body), "invalid token signature\n");
    assert!(common::wait_until(Duration::from_secs(5), || {
        gw.metric(
            "pingwheel_auth_failures_total",
            &["reason=\"bad_signature\""],
        ) == 1.0
    }));
}
