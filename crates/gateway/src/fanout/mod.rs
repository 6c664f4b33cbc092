//! Fan-out: how one publish reaches every subscriber, in order.
//!
//! ```text
//! admin thread                         each worker
//! hub::Hub::publish ──worker::link──▶  local::LocalFanout::deliver ──▶ Conn::send ──▶ settle writes it
//!   numbers (seq), encodes one frame     finds the local subscribers      queues the shared frame
//!   counts::SubscriberCounts  ◀─────── counts::CountSender (subscribe / unsubscribe / leave)
//! ```
//!
//! | file | what | runs on |
//! |---|---|---|
//! | [`hub`] | **where a publish is numbered and handed to the workers**: one shared frame per message, one batch per request | admin thread |
//! | [`counts`] | subscriber counts for the publish replies: workers send changes, the hub folds them (no lock on the workers' side) | both ends |
//! | [`local`] | one worker's fan-out: keeps index, sessions and counts in step; queues each delivery to the local subscribers | each worker |
//! | [`index`] | the worker's channel → connections and user → connections index | each worker |
//! | [`session`] | one connection's push session: user, grant, channels, rate limit | each worker |
//!
//! The delivery is *written* by the worker's event loop (`worker/mod.rs`, `settle`),
//! once per connection per batch; nothing here touches a socket.
pub mod counts;
pub mod hub;
pub mod index;
pub mod local;
pub mod session;
