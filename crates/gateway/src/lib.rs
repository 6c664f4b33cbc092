//! pingwheel: a WebSocket push-notification gateway that holds many mostly idle
//! connections per machine and keeps every one of them alive cheaply.
//!
//! # Architecture (a newcomer's map)
//!
//! | module | what lives there | touches IO? |
//! |---|---|---|
//! | [`server`] | process setup and teardown: binds, starts workers and admin, signals, draining | yes (setup only) |
//! | [`config`] | every setting once: flags, environment, TOML file, defaults; each part's settings | no |
//! | [`worker`] | one `mio` event loop per core: sockets, the slab, the one timer wheel (`mod.rs`); its mailbox [`worker::link`] (`Command`, `WorkerLink`, `Delivery`); its push half (`push.rs`) | **yes** (the only place) |
//! | [`conn`] | re-export of `pingwheel-conn` (`crates/conn`): the sans-IO connection state machine, [`conn::keepalive`], [`conn::clock`], [`conn::timer`] | no |
//! | [`engine`] | the `Engine` seam; **where a publish gets its position** ([`engine::memory`], over the pure [`engine::history`]); positions, namespaces, recovery decisions and merges | no (the memory engine runs on the admin runtime) |
//! | [`fanout`] | [`fanout::local`] is each worker's side (index with watermarks, sessions, subscribes awaiting the engine, queueing deliveries) | no (channels only) |
//! | [`push`] | pure push rules: JWT auth, channel rules, the client protocol, publish and history API parsing | no |
//! | [`admin`] | the hyper admin listener: routing (`mod.rs`), [`admin::http`] helpers, the `/v1/*` routes in [`admin::publish`] | yes (its own thread) |
//! | [`tls`] | built-in TLS: one connection's sans-IO session ([`tls::session`]), certificate files, the rustls config and reload ([`tls::config`]) | no (files at startup and SIGHUP) |
//! | [`listener`] | `SO_REUSEPORT` listening sockets | yes (setup only) |
//! | [`metrics`] | metric names, histogram buckets, per-worker handles | no |
//! | [`token`] | [`token::ConnId`]: slab index + generation, packed in a mio `Token` | no |
//!
//! Each in one step:
//!
//! * **a ping is scheduled** in [`conn::keepalive`]; the worker only sees the
//!   connection's next deadline and files it with [`conn::timer::refile`];
//! * **a publish gets its position** `(epoch, seq)` in [`engine::history::History::publish`],
//!   called under the memory engine's lock by [`engine::memory::MemoryEngine`], which hands
//!   it to the workers;
//! * **a delivery is queued** to a worker's subscribers in
//!   [`fanout::local::LocalFanout::deliver`] and **written** by the worker's `settle`
//!   (`worker/mod.rs`), like every other output.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

pub mod admin;
pub mod config;
pub mod engine;
/// The sans-IO connection state machine, from its own crate (`crates/conn`).
pub use pingwheel_conn as conn;
pub mod fanout;
pub mod listener;
pub mod metrics;
pub mod push;
pub mod server;
pub mod tls;
pub mod token;
pub mod worker;
