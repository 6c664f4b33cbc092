//! The publish API on the admin listener: `POST /v1/publish`, `/v1/broadcast`,
//! `/v1/batch`, and `GET /v1/history`.
//!
//! Each publish request is checked in this order: the method (405 unless `POST`), the
//! API key (401/403), the announced `Content-Length` (413 before reading anything), the
//! body read with a size limit (413) and a time limit (`--admin-body-timeout`: 408, and
//! the connection is closed), the JSON (400, naming the field). Then
//! [`Engine::publish`] gives each message its position, keeps it when its namespace
//! keeps history, and fans it out; the reply carries each position and how many local
//! subscribers each reached. An engine that cannot take the publish answers 503
//! `engine_unavailable` (never a 200 for a message that was not stored and sent). The
//! history route checks the key, then the query (400), then reads the engine. The wire
//! format is in `docs/protocol.md`.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::value::RawValue;

use super::http::{AdminBody, BodyError, close_after, read_body, respond};
use crate::config::Secret;
use crate::engine::{Engine, EngineError, Published, Stream};
use crate::metrics::{ApiMetrics, EngineMetrics};
use crate::push::PushLimits;
use crate::push::auth::check_api_key;
use crate::push::history::{history_json, parse_history_query};
use crate::push::publish::{
    MultiReply, PublishError, PublishReply, PublishRequest, PublishResult, PublishRoute, Target,
    check_body_len, error_json, parse_request,
};

const JSON: &str = "application/json";

/// Everything the publish routes need.
#[derive(Debug)]
pub struct PublishApi {
    /// Assigns positions, keeps history, fans publishes out to the workers.
    pub engine: std::sync::Arc<dyn Engine>,
    /// `--api-key`; `None` means open in dev mode, refused otherwise.
    pub api_key: Option<Secret>,
    /// No token secret or key: the gateway is in insecure dev mode.
    pub dev_mode: bool,
    /// Body and batch limits.
    pub limits: PushLimits,
    /// How long a request body may take to arrive (`--admin-body-timeout`).
    pub body_timeout: Duration,
    /// `pingwheel_publishes_total`, auth failures, requests by status.
    pub metrics: ApiMetrics,
    /// `pingwheel_engine_publish_seconds` (timed here, around the engine call).
    pub engine_metrics: EngineMetrics,
}

impl PublishApi {
    /// Answers one request on `route`'s path, whatever its method, and counts the
    /// answer in `pingwheel_publish_requests_total{status}`.
    pub async fn handle(
        &self,
        route: PublishRoute,
        request: Request<Incoming>,
    ) -> Response<AdminBody> {
        let response = self.answer(route, request).await;
        self.metrics.publish_request(response.status().as_u16());
        response
    }

    /// The refusal for a request without the right API key, if it has none.
    fn check_key(&self, request: &Request<Incoming>) -> Option<Response<AdminBody>> {
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let configured = self.api_key.as_ref().map(|key| key.expose().as_bytes());
        let refusal = check_api_key(configured, self.dev_mode, authorization).err()?;
        if let Some(reason) = refusal.reason() {
            self.metrics.auth_failed(reason).increment(1);
        }
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut response = respond(status, JSON, refusal.to_json());
        if let Some(challenge) = refusal.www_authenticate() {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        Some(response)
    }

    /// Answers `GET /v1/history?…`.
    pub async fn history(&self, request: Request<Incoming>) -> Response<AdminBody> {
        if let Some(refusal) = self.check_key(&request) {
            return refusal;
        }
        let query = request.uri().query().unwrap_or("");
        let query = match parse_history_query(query, &self.limits) {
            Ok(query) => query,
            Err(error) => return error_response(&error),
        };
        let stream = Stream::of(&query.target);
        match self.engine.history(stream, query.since, query.limit).await {
            Ok(read) => respond(
                StatusCode::OK,
                JSON,
                history_json(&query.target, read.position, &read.frames),
            ),
            Err(error) => unavailable(&error),
        }
    }

    async fn answer(&self, route: PublishRoute, request: Request<Incoming>) -> Response<AdminBody> {
        if let Some(mut refusal) = self.refuse_head(&request) {
            // A response sent before the body is read whole ends the connection: hyper
            // closes it rather than read the rest, so say so (`Connection: close`), or a
            // client may send its next request on a connection that is going away.
            if has_body(&request) {
                close_after(&mut refusal);
            }
            return refusal;
        }
        let body = request.into_body();
        let body = match read_body(body, self.limits.max_publish_body, self.body_timeout).await {
            Ok(body) => body,
            Err(error) => {
                let mut response = error_response(&match error {
                    BodyError::TimedOut { after } => PublishError::BodyTimeout { after },
                    BodyError::TooLarge { limit } => PublishError::BodyTooLarge {
                        len: limit as u64 + 1,
                        max: limit,
                    },
                    error @ BodyError::Read(_) => PublishError::BadRequest(error.to_string()),
                });
                close_after(&mut response);
                return response;
            }
        };
        let parsed = match parse_request(route, &body, &self.limits) {
            Ok(parsed) => parsed,
            Err(error) => return error_response(&error),
        };
        let targets: Vec<Target<'_>> = match &parsed {
            PublishRequest::Publish(publish) => vec![publish.target.clone()],
            PublishRequest::Broadcast(broadcast) => broadcast
                .channels
                .iter()
                .map(|c| Target::Channel(c.clone()))
                .collect(),
            PublishRequest::Batch(batch) => {
                batch.messages.iter().map(|m| m.target.clone()).collect()
            }
        };
        let items: Vec<(Target<'_>, &RawValue)> = match &parsed {
            PublishRequest::Publish(publish) => vec![(publish.target.clone(), publish.data)],
            PublishRequest::Broadcast(broadcast) => targets
                .iter()
                .map(|t| (t.clone(), broadcast.data))
                .collect(),
            PublishRequest::Batch(batch) => batch
                .messages
                .iter()
                .map(|m| (m.target.clone(), m.data))
                .collect(),
        };
        let started = std::time::Instant::now();
        let outcome = self.engine.publish(&items).await;
        self.engine_metrics
            .publish_seconds
            .record(started.elapsed());
        let published: Vec<Published> = match outcome {
            Ok(published) => published,
            Err(error) => return unavailable(&error),
        };
        let json = match &parsed {
            PublishRequest::Publish(_) => {
                let first = published[0];
                PublishReply::new(first.position, first.subscribers).to_json()
            }
            PublishRequest::Broadcast(_) | PublishRequest::Batch(_) => {
                let results = targets
                    .iter()
                    .zip(&published)
                    .map(|(t, p)| PublishResult::new(t, p.position, p.subscribers))
                    .collect();
                MultiReply::new(results).to_json()
            }
        };
        let count = match &parsed {
            PublishRequest::Publish(_) => 1,
            PublishRequest::Broadcast(b) => b.channels.len(),
            PublishRequest::Batch(b) => b.messages.len(),
        };
        self.metrics.publishes.increment(count as u64);
        respond(StatusCode::OK, JSON, json)
    }
}

impl PublishApi {
    /// The refusal a request earns from its head alone (method, API key, announced
    /// length), if any: sent before its body is read.
    fn refuse_head(&self, request: &Request<Incoming>) -> Option<Response<AdminBody>> {
        if request.method() != Method::POST {
            let body = error_json("method_not_allowed", "use POST");
            let mut response = respond(StatusCode::METHOD_NOT_ALLOWED, JSON, body);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return Some(response);
        }
        if let Some(refusal) = self.check_key(request) {
            return Some(refusal);
        }
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let len = announced?;
        check_body_len(len, &self.limits)
            .err()
            .map(|error| error_response(&error))
    }
}

/// Whether `request` announces a body (a non-zero `Content-Length`, or chunks).
fn has_body(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// 503 `{"error":"engine_unavailable",..}`: nothing was published.
fn unavailable(error: &EngineError) -> Response<AdminBody> {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        JSON,
        error_json("engine_unavailable", &error.to_string()),
    )
}

fn error_response(error: &PublishError) -> Response<AdminBody> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    respond(status, JSON, error.to_json())
}
