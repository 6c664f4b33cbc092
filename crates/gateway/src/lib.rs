//! pingwheel: a WebSocket push-notification gateway that holds many mostly idle
//! connections per machine and keeps every one of them alive cheaply.
//!
//! # Architecture (a newcomer's map)
//!
//! | module | what lives there | touches IO? |
//! |---|---|---|
//! | [`config`] | every setting once: flags, environment, TOML file, defaults; each part's settings | no |
//! | [`clock`] | `Instant` ↔ wheel [`wheel::Tick`], rounding deadlines up | no |
//! | [`conn`] | the sans-IO per-connection state machine: handshake, frames, keepalive, close | no |
//! | [`worker`] | one `mio` event loop per core: sockets, the slab, the one timer wheel; its push half in `worker/push.rs` | **yes** (the only place) |
//! | [`session`] | per-connection push state, each worker's channel → connections index | no |
//! | [`hub`] | cross-worker fan-out: a publish becomes one shared frame sent to every worker | channels + wakers |
//! | [`push`] | JWT auth, channel rules, the client protocol, publish API parsing | no |
//! | [`publish_api`] | the `/v1/*` routes on the admin listener | (admin thread) |
//! | [`listener`] | `SO_REUSEPORT` listening sockets | yes (setup only) |
//! | [`metrics`] | metric names, histogram buckets, per-worker handles | no |
//! | [`admin`] | the hyper admin listener: `/metrics`, `/healthz` | yes (its own thread) |
//! | [`server`] | starts workers and admin, handles signals and draining | yes (setup only) |
//!
//! A ping is scheduled in [`conn::keepalive`]; the worker only sees the connection's
//! next deadline ([`conn::Conn::poll_timeout`]) and files it in its timer wheel.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

pub mod admin;
pub mod clock;
pub mod config;
pub mod conn;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod publish_api;
pub mod push;
pub mod server;
pub mod session;
pub mod token;
pub mod worker;
