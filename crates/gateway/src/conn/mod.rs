//! The sans-IO per-connection WebSocket state machine (being written).
//!
//! Bytes and `now` go in; bytes to send, the next deadline and events come out.
//! Nothing here reads a clock or touches a socket.

pub use pingwheel_proto::{CloseReason, HandshakeFailure};
