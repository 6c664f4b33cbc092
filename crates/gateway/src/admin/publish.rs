//! The publish API on the admin listener: `POST /v1/publish`, `/v1/broadcast`, `/v1/batch`.
//!
//! Each request is checked in this order: the method (405 unless `POST`), the API key
//! (401/403), the announced `Content-Length` (413 before reading anything), the body
//! read with a size limit (413) and a time limit (`--admin-body-timeout`: 408, and the
//! connection is closed), the JSON (400, naming the field). Then [`Hub::publish`]
//! numbers, encodes and fans out the messages, and the reply says how many local
//! subscribers each reached. The wire format is in `docs/protocol.md`.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::value::RawValue;

use super::http::{AdminBody, BodyError, close_after, read_body, respond};
use crate::config::Secret;
use crate::fanout::hub::Hub;
use crate::metrics::ApiMetrics;
use crate::push::PushLimits;
use crate::push::auth::check_api_key;
use crate::push::publish::{
    MultiReply, PublishError, PublishReply, PublishRequest, PublishResult, PublishRoute, Target,
    check_body_len, error_json, parse_request,
};

const JSON: &str = "application/json";

/// Everything the publish routes need.
#[derive(Debug)]
pub struct PublishApi {
    /// Fans publishes out to the workers.
    pub hub: Hub,
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

    async fn answer(&self, route: PublishRoute, request: Request<Incoming>) -> Response<AdminBody> {
        if request.method() != Method::POST {
            let body = error_json("method_not_allowed", "use POST");
            let mut response = respond(StatusCode::METHOD_NOT_ALLOWED, JSON, body);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let configured = self.api_key.as_ref().map(|key| key.expose().as_bytes());
        if let Err(refusal) = check_api_key(configured, self.dev_mode, authorization) {
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
            return response;
        }
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = announced
            && let Err(error) = check_body_len(len, &self.limits)
        {
            return error_response(&error);
        }
        let body = request.into_body();
        let body = match read_body(body, self.limits.max_publish_body, self.body_timeout).await {
            Ok(body) => body,
            Err(BodyError::TimedOut { after }) => {
                let mut response = error_response(&PublishError::BodyTimeout { after });
                close_after(&mut response);
                return response;
            }
            Err(BodyError::TooLarge { limit }) => {
                let len = limit as u64 + 1;
                return error_response(&PublishError::BodyTooLarge { len, max: limit });
            }
            Err(error @ BodyError::Read(_)) => {
                return error_response(&PublishError::BadRequest(error.to_string()));
            }
        };
        let parsed = match parse_request(route, &body, &self.limits) {
            Ok(parsed) => parsed,
            Err(error) => return error_response(&error),
        };
        let json = match &parsed {
            PublishRequest::Publish(publish) => {
                let published = self.hub.publish(&[(publish.target.clone(), publish.data)]);
                let first = published[0];
                PublishReply::new(first.seq, first.subscribers).to_json()
            }
            PublishRequest::Broadcast(broadcast) => {
                let targets: Vec<Target<'_>> = broadcast
                    .channels
                    .iter()
                    .map(|c| Target::Channel(c.clone()))
                    .collect();
                let items: Vec<(Target<'_>, &RawValue)> = targets
                    .iter()
                    .map(|t| (t.clone(), broadcast.data))
                    .collect();
                let published = self.hub.publish(&items);
                let results = targets
                    .iter()
                    .zip(&published)
                    .map(|(t, p)| PublishResult::new(t, p.seq, p.subscribers))
                    .collect();
                MultiReply::new(results).to_json()
            }
            PublishRequest::Batch(batch) => {
                let items: Vec<(Target<'_>, &RawValue)> = batch
                    .messages
                    .iter()
                    .map(|m| (m.target.clone(), m.data))
                    .collect();
                let published = self.hub.publish(&items);
                let results = batch
                    .messages
                    .iter()
                    .zip(&published)
                    .map(|(m, p)| PublishResult::new(&m.target, p.seq, p.subscribers))
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

fn error_response(error: &PublishError) -> Response<AdminBody> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    respond(status, JSON, error.to_json())
}
