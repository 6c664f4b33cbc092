//! Why a connection ended or a handshake was refused: one enum each, and each
//! variant maps to exactly one close code (or HTTP status) and one metrics label.

/// Why a connection was closed. Each reason is one value of the `reason` label of
/// `pingwheel_connections_closed_total`, and (where a close frame is sent) one close code.
///
/// A "connection" is an accepted TCP connection, from `accept` to the socket being
/// dropped, whether or not its upgrade succeeded: every accepted connection ends with
/// exactly one reason, so `opened_total - sum(closed_total) == connections`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// A completed closing handshake started by the peer or by us (1000, or the peer's code).
    Normal,
    /// No Pong within `ping_timeout` of a Ping: closed with 1011.
    PingTimeout,
    /// The HTTP upgrade did not complete within `open_timeout`.
    HandshakeTimeout,
    /// The upgrade request was refused with an HTTP error (see `HandshakeFailure` for why).
    Rejected,
    /// The peer broke RFC 6455 (1002), or sent invalid UTF-8 in a text message or close reason (1007).
    ProtocolError,
    /// A message or frame over `max_message_size` (1009), detected from the frame header.
    MessageTooBig,
    /// The peer kept sending without reading our answers, and they passed
    /// `max_queued_bytes`: closed with 1008 and evicted (no more reads).
    WriteOverflow,
    /// A push subscriber fell behind its outbound queue bound: closed with 1013 (try again later).
    SlowConsumer,
    /// The client kept flooding past its inbound message rate: closed with 1008 and
    /// evicted (no more reads).
    PolicyViolation,
    /// The gateway is shutting down: closed with 1001 (going away).
    Shutdown,
    /// The peer vanished without a closing handshake (EOF or reset before a Close frame: 1006).
    Abnormal,
    /// A socket error other than a plain disconnect.
    IoError,
    /// The operator closed every connection of the user (`POST /v1/disconnect`: a
    /// log-out, a revoked session): closed with 4001.
    Revoked,
}

impl CloseReason {
    /// Every reason, in label order (for registering one counter handle per reason).
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Normal,
        CloseReason::PingTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::Rejected,
        CloseReason::ProtocolError,
        CloseReason::MessageTooBig,
        CloseReason::WriteOverflow,
        CloseReason::SlowConsumer,
        CloseReason::PolicyViolation,
        CloseReason::Shutdown,
        CloseReason::Abnormal,
        CloseReason::IoError,
        CloseReason::Revoked,
    ];

    /// The value of the `reason` metrics label.
    pub const fn as_label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Rejected => "rejected",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::WriteOverflow => "write_overflow",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PolicyViolation => "policy_violation",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Abnormal => "abnormal",
            CloseReason::IoError => "io_error",
            CloseReason::Revoked => "revoked",
        }
    }

    /// Position in [`CloseReason::ALL`], for indexing per-reason handle arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Why an HTTP upgrade request was refused. Each is one value of the `reason` label of
/// `pingwheel_handshake_failures_total` and one HTTP status.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// Malformed HTTP, a missing or bad `Sec-WebSocket-Key`, HTTP/1.0, a body: 400.
    BadRequest,
    /// A method other than GET: 405 (with `Allow: GET`).
    MethodNotAllowed,
    /// Missing `Upgrade: websocket` / `Connection: Upgrade`, or a version other than 13:
    /// 426 (with `Sec-WebSocket-Version: 13`).
    UpgradeRequired,
    /// The request head exceeded the size limit, or had more than 64 header fields: 431.
    HeaderTooLarge,
    /// A missing, forged or expired token: 401.
    Unauthorized,
    /// An `Origin` outside the allowlist, or a channel outside the token's claim: 403.
    Forbidden,
    /// The request head did not arrive within `open_timeout`: the socket is closed
    /// (a 408 is attempted first).
    Timeout,
    /// The peer closed or reset the socket before finishing its request.
    Disconnected,
}

impl HandshakeFailure {
    /// Every failure, in label order.
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::BadRequest,
        HandshakeFailure::MethodNotAllowed,
        HandshakeFailure::UpgradeRequired,
        HandshakeFailure::HeaderTooLarge,
        HandshakeFailure::Unauthorized,
        HandshakeFailure::Forbidden,
        HandshakeFailure::Timeout,
        HandshakeFailure::Disconnected,
    ];

    /// The value of the `reason` metrics label.
    pub const fn as_label(self) -> &'static str {
        match self {
            HandshakeFailure::BadRequest => "bad_request",
            HandshakeFailure::MethodNotAllowed => "method_not_allowed",
            HandshakeFailure::UpgradeRequired => "upgrade_required",
            HandshakeFailure::HeaderTooLarge => "header_too_large",
            HandshakeFailure::Unauthorized => "unauthorized",
            HandshakeFailure::Forbidden => "forbidden",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Disconnected => "disconnected",
        }
    }

    /// The HTTP status sent back, if any is sent.
    pub const fn status(self) -> Option<u16> {
        match self {
            HandshakeFailure::BadRequest => Some(400),
            HandshakeFailure::MethodNotAllowed => Some(405),
            HandshakeFailure::UpgradeRequired => Some(426),
            HandshakeFailure::HeaderTooLarge => Some(431),
            HandshakeFailure::Unauthorized => Some(401),
            HandshakeFailure::Forbidden => Some(403),
            HandshakeFailure::Timeout => Some(408),
            HandshakeFailure::Disconnected => None,
        }
    }

    /// Position in [`HandshakeFailure::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_all_order() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
