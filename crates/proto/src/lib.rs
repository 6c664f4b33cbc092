//! Sans-IO RFC 6455 building blocks for pingwheel.
//!
//! This crate holds the WebSocket protocol logic of the gateway and nothing else: it
//! never touches a socket and never reads a clock. Callers hand it bytes and get back
//! parsed values or bytes to write.
//!
//! | module | what | RFC 6455 rules enforced there |
//! |---|---|---|
//! | [`handshake`] | the HTTP/1.1 upgrade request and the 101 / error responses | §4.2.1 (GET, HTTP/1.1, `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a 16-byte base64 `Sec-WebSocket-Key`), §4.2.2 (the accept key) |
//! | [`inbound`] | an incremental reader of client frames: unmasking, reassembly, validation | §5.1 (client frames are masked), §5.2 (RSV bits, reserved opcodes, 63-bit lengths), §5.4 (fragmentation order, control frames between fragments), §5.5 (control frames: FIN set, payload ≤ 125), §5.5.1 and §7.4 (close payloads and codes), §8.1 (UTF-8 in text messages and close reasons, failing fast) |
//! | [`frame`] | encoding server frames (unmasked, FIN set) | §5.2 (minimal length encoding), §5.5 (control payload ≤ 125) |
//! | [`reason`] | why a connection closed or a handshake was refused | |
//!
//! # No heap while idle
//!
//! A connection that is between messages holds no heap memory here: the
//! [`inbound::MessageReader`] is at most 16 bytes inline, keeps a split frame header in
//! an inline array, and allocates only while a message or frame spans several
//! [`inbound::MessageReader::feed`] calls (or several fragments). It frees that
//! allocation as soon as the message has been delivered. [`handshake::UpgradeRequest`]
//! is owned but meant to be dropped once the response is written.
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub mod frame;
pub mod handshake;
pub mod inbound;
mod mask;
pub mod reason;
mod utf8;

pub use reason::{CloseReason, HandshakeFailure};
