//! The cluster routes on the admin listener: `GET /readyz`, `GET /v1/nodes`,
//! `POST /v1/disconnect`.
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /readyz` | none | 200 `ready`; 503 `engine unavailable` while the engine cannot take publishes (Redis unreachable), 503 `draining` while draining. For load balancers: `/healthz` stays liveness. |
//! | `GET /v1/nodes` | API key | `{"nodes":[{"name","connections","subscriptions","heartbeat_ms"}]}`: every live node (memory engine: this one) |
//! | `POST /v1/disconnect` | API key | body `{"user":"42"}`: every connection of the user, on every node, is closed with 4001; `{"ok":true,"nodes":N}` (N: nodes that received the order) |
//!
//! With the Redis engine the node list comes from the heartbeats and the disconnect
//! travels over the control channel ([`crate::engine::redis::nodes`]); when Redis is
//! unreachable both answer 503 `engine_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::http::{AdminBody, BodyError, method_not_allowed, plain, respond};
use crate::config::Secret;
use crate::engine::redis::node::RedisNode;
use crate::engine::redis::nodes::{self, Control, NodeInfo};
use crate::metrics::ApiMetrics;
use crate::push::auth::check_api_key;
use crate::push::publish::error_json;
use crate::worker::link::{Command, WorkerLink};

const JSON: &str = "application/json";
/// Largest `/v1/disconnect` body.
const MAX_BODY: usize = 4096;

/// Where cluster-wide operations go.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// One process (`--engine memory`): this node is the cluster.
    Local,
    /// Many nodes over Redis.
    Redis(Arc<RedisNode>),
}

/// Everything the cluster routes need.
#[derive(Debug)]
pub struct ClusterApi {
    /// Memory or Redis.
    pub cluster: Cluster,
    /// This node's name (`--node-name`).
    pub name: String,
    /// Every worker's mailbox (local disconnects, local counts).
    pub links: Vec<WorkerLink>,
    /// `--api-key`.
    pub api_key: Option<Secret>,
    /// No token secret or key: open in dev mode.
    pub dev_mode: bool,
    /// `--admin-body-timeout`.
    pub body_timeout: Duration,
    /// Auth-failure counters (shared series with the publish API).
    pub metrics: ApiMetrics,
}

/// Closes every local connection of `user`: one command per worker.
pub fn disconnect_locally(links: &[WorkerLink], user: &str) {
    let user: Arc<str> = Arc::from(user);
    for link in links {
        link.send(Command::Disconnect {
            user: Arc::clone(&user),
        });
    }
}

/// This node's open connections and subscriptions, from the workers' published numbers.
pub fn local_counts(links: &[WorkerLink]) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    links.iter().fold((0, 0), |(c, s), link| {
        let stats = link.stats();
        (
            c + stats.connections.load(Relaxed),
            s + stats.subscriptions.load(Relaxed),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
}

fn json(status: StatusCode, body: String) -> Response<AdminBody> {
    respond(status, JSON, body)
}

fn unavailable(message: &str) -> Response<AdminBody> {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        error_json("engine_unavailable", message),
    )
}

impl ClusterApi {
    /// Whether the engine can take publishes now.
    pub fn ready(&self) -> bool {
        match &self.cluster {
            Cluster::Local => true,
            Cluster::Redis(node) => node.is_up(),
        }
    }

    /// Answers `GET /readyz`.
    pub fn readyz(&self, draining: bool) -> Response<AdminBody> {
        if draining {
            plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if self.ready() {
            plain(StatusCode::OK, "ready\n")
        } else {
            plain(StatusCode::SERVICE_UNAVAILABLE, "engine unavailable\n")
        }
    }

    /// The refusal to answer, unless the request carries the API key.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<AdminBody>> {
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let configured = self.api_key.as_ref().map(|key| key.expose().as_bytes());
        check_api_key(configured, self.dev_mode, authorization)
            .err()
            .map(|refusal| {
                if let Some(reason) = refusal.reason() {
                    self.metrics.auth_failed(reason).increment(1);
                }
                let status =
                    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                let mut response = json(status, refusal.to_json());
                if let Some(challenge) = refusal.www_authenticate() {
                    response
                        .headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                }
                response
            })
    }

    /// Answers `GET /v1/nodes`.
    pub async fn nodes(&self, request: Request<Incoming>) -> Response<AdminBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        if let Some(refused) = self.refusal(&request) {
            return refused;
        }
        let list: Vec<NodeInfo> = match &self.cluster {
            Cluster::Local => {
                let (connections, subscriptions) = local_counts(&self.links);
                vec![NodeInfo {
                    name: self.name.clone(),
                    connections,
                    subscriptions,
                    heartbeat_ms: nodes::unix_ms(),
                }]
            }
            Cluster::Redis(node) => match node.nodes().await {
                Ok(list) => list,
                Err(e) => return unavailable(&e.to_string()),
            },
        };
        let body = serde_json::json!({ "nodes": list }).to_string();
        json(StatusCode::OK, body)
    }

    /// Answers `POST /v1/disconnect`.
    pub async fn disconnect(&self, request: Request<Incoming>) -> Response<AdminBody> {
        if request.method() != Method::POST {
            return method_not_allowed("POST");
        }
        if let Some(refused) = self.refusal(&request) {
            return refused;
        }
        let body =
            match super::http::read_body(request.into_body(), MAX_BODY, self.body_timeout).await {
                Ok(body) => body,
                Err(e @ BodyError::TooLarge { .. }) => {
                    return json(e.status(), error_json("body_too_large", &e.to_string()));
                }
                Err(e) => return json(e.status(), error_json("bad_request", &e.to_string())),
            };
        let user = match serde_json::from_slice::<DisconnectBody>(&body) {
            Ok(DisconnectBody { user }) if !user.is_empty() => user,
            Ok(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    error_json("bad_request", "user: must not be empty"),
                );
            }
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    error_json("bad_request", &format!("expected {{\"user\":\"…\"}}: {e}")),
                );
            }
        };
        let nodes = match &self.cluster {
            Cluster::Local => {
                disconnect_locally(&self.links, &user);
                1
            }
            Cluster::Redis(node) => match node.send_control(&Control::Disconnect { user }).await {
                Ok(n) => n,
                Err(e) => return unavailable(&e.to_string()),
            },
        };
        json(
            StatusCode::OK,
            serde_json::json!({ "ok": true, "nodes": nodes }).to_string(),
        )
    }
}
