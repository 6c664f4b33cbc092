//! pingwheel: a WebSocket push-notification gateway that holds many mostly idle
//! connections per machine and keeps every one of them alive cheaply.
//!
//! # Architecture (a newcomer's map)
//!
//! | module | what lives there | touches IO? |
//! |---|---|---|
//! | [`config`] | CLI flags, the TOML file, embedded defaults | no |
//! | [`conn`] | re-export of `pingwheel-conn` (`crates/conn`): the sans-IO per-connection state machine (handshake, frames, keepalive, close), the tick clock, and where a connection's deadline is filed in the wheel | no |
//! | [`worker`] | one `mio` event loop per core: sockets, the slab, the one timer wheel; its mailbox ([`worker::link`]: `Command`, `WorkerLink`, `Delivery`); its push half in `worker/push.rs` | **yes** (the only place) |
//! | [`fanout`] | fan-out: [`fanout::hub`] numbers a publish and sends one shared frame to every worker; [`fanout::local`] is each worker's side (subscription index, push sessions, queueing deliveries); [`fanout::counts`] carries subscriber counts to the hub without locks | channels + wakers |
//! | [`push`] | JWT auth, channel rules, the client protocol, publish API parsing | no |
//! | [`listener`] | `SO_REUSEPORT` listening sockets | yes (setup only) |
//! | [`metrics`] | metric names, histogram buckets, per-worker handles | no |
//! | [`admin`] | the hyper admin listener: `/metrics`, `/healthz`; the `/v1/*` publish routes in [`admin::publish`] | yes (its own thread) |
//! | [`server`] | starts workers and admin, handles signals and draining | yes (setup only) |
//!
//! A ping is scheduled in [`conn::keepalive`]; the worker only sees the connection's
//! next deadline ([`conn::Conn::poll_timeout`]) and files it in its timer wheel with
//! [`conn::timer::refile`].
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

pub mod admin;
pub mod config;
/// The sans-IO connection state machine, from its own crate (`crates/conn`).
pub use pingwheel_conn as conn;
pub mod fanout;
pub mod listener;
pub mod metrics;
pub mod push;
pub mod server;
pub mod token;
pub mod worker;
