//! Sans-IO RFC 6455 building blocks for pingwheel (being written).
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod reason;

pub use reason::{CloseReason, HandshakeFailure};
