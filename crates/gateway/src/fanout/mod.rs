//! Fan-out: how one publish reaches every subscriber on this node, in order.
//!
//! ```text
//! admin thread                                each worker
//! engine::Engine::publish ──worker::link──▶  local::LocalFanout::deliver ──▶ Conn::send ──▶ settle writes it
//!   assigns (epoch, seq), keeps history,        finds the local subscribers,    queues the shared frame
//!   encodes one frame                           skips what each already had
//! engine requests ◀──────────────────────── local::LocalFanout (subscribe / unsubscribe / recover)
//! engine answers  ──worker::link──────────▶ local::LocalFanout::complete (reply, recovered, buffered)
//! ```
//!
//! | file | what | runs on |
//! |---|---|---|
//! | [`local`] | one worker's fan-out: keeps index, sessions and the engine's counts in step; waiting subscribes; queues each delivery to the local subscribers | each worker |
//! | [`index`] | the worker's stream → subscribers index, with each subscription's watermark | each worker |
//! | [`session`] | one connection's push session: user, grant, channels, rate limit | each worker |
//!
//! Where a publish gets its position is the engine ([`crate::engine`]); the delivery is
//! *written* by the worker's event loop (`worker/mod.rs`, `settle`), once per connection
//! per batch; nothing here touches a socket.
pub mod index;
pub mod local;
pub mod session;
