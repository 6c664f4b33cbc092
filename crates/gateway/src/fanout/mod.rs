//! Fan-out: how one publish reaches every subscriber, in order.
//!
//! | file | what | runs on |
//! |---|---|---|
//! | [`hub`] | numbers a publish, encodes it into one shared frame, hands it to every worker | admin thread |
//! | [`index`] | each worker's channel → connections and user → connections index; per-connection push state | each worker |
pub mod hub;
pub mod index;
