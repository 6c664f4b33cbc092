//! Built-in TLS (`wss://`, and `https://` on the admin listener): a room of its own, with
//! no IO.
//!
//! * [`session`]: one connection's TLS, sans-IO, over rustls's *unbuffered* server API.
//!   The worker hands it the ciphertext it read into its shared read buffer; the session
//!   decrypts the records there (rustls decrypts in place) and appends the plaintext to a
//!   second buffer the worker shares between all its connections, which then goes to
//!   `Conn::handle_input`. Going out, the worker encrypts `Conn`'s queued frames into
//!   the session's ciphertext buffer, which exists only while ciphertext is unsent. A
//!   session keeps per-connection bytes only for an incomplete record and unsent
//!   ciphertext; rustls frees its handshake state when the handshake ends.
//! * [`config`]: the certificate and key files (PEM) checked at startup and on SIGHUP,
//!   with refusals that name the flag, the file and the problem; the rustls
//!   `ServerConfig` built from them (TLS 1.2 and 1.3, ALPN `http/1.1`, session tickets
//!   and a session cache shared across reloads); the leaf's expiry.
//!
//! The worker (`worker/mod.rs`) stays the only code that touches client sockets; the
//! admin listener uses tokio-rustls with the same `ServerConfig` builder.

pub mod config;
pub mod session;

#[cfg(test)]
mod tests;

pub use self::config::{CertFiles, Listener, ServerTls, TlsFileError};
pub use self::session::{Handshake, ReadOutcome, TlsFailure, TlsSession};
