//! `pingwheel-loadtest`: a load generator for WebSocket servers, built to hold hundreds
//! of thousands of mostly idle connections from one machine without being the
//! bottleneck.
//!
//! * [`engine`]: one `mio` event loop per process, connections in a slab, a few hundred
//!   bytes per idle connection; the only code that touches client sockets, which it
//!   sets up with [`socket`]; for `wss://` it puts the bytes through [`tls`], one
//!   sans-IO rustls layer per connection.
//! * [`client`]: the sans-IO client state machine the loop feeds (bytes and `now` in;
//!   frames to send, measurements, the next deadline and how it ended out); speaks the
//!   client side of RFC 6455 ([`codec`], [`handshake`]).
//! * [`scenario`]: what idle, push, echo and churn clients do beyond that, as hooks on
//!   the client; their settings are in [`settings`], their schedules in [`pace`].
//! * [`fleet`]: spreads the connections over child processes when one process may not
//!   open them all, and speaks the line protocol between parent and children.
//! * [`coordinator`]: walks the engines through ramp → settle → hold → finish and
//!   samples the server ([`procfs`]) at the boundaries.
//! * [`report`] and [`plot`]: the summary table, the JSON report, the SVG plot.
//!
//! The command line is in [`cli`]; docs/loadtest.md documents it and the JSON schema.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]

pub mod cli;
pub mod client;
pub mod codec;
pub mod coordinator;
pub mod counters;
pub mod engine;
pub mod fleet;
pub mod handshake;
pub mod hist;
pub mod jwt;
pub mod pace;
pub mod plan;
pub mod plot;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod settings;
pub mod socket;
pub mod sources;
pub mod target;
pub mod tls;
pub mod units;
