//! `pingwheel-loadtest`: a load generator for WebSocket servers, built to hold hundreds
//! of thousands of mostly idle connections from one machine without being the
//! bottleneck.
//!
//! * [`engine`]: one `mio` event loop per process, connections in a slab, a few hundred
//!   bytes per idle connection; speaks the client side of RFC 6455 ([`codec`],
//!   [`handshake`]).
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
pub mod codec;
pub mod coordinator;
pub mod counters;
pub mod engine;
pub mod fleet;
pub mod handshake;
pub mod hist;
pub mod jwt;
pub mod plan;
pub mod plot;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod sources;
pub mod target;
pub mod units;
