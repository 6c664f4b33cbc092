//! An incremental reader of client frames (server side of RFC 6455).
//!
//! [`MessageReader::feed`] takes whatever bytes the socket produced, unmasks payloads
//! in place, validates every rule a server must check, and hands complete messages and
//! control frames to a callback as borrowed [`Inbound`] items.
//!
//! # What is enforced, and when
//!
//! Every check runs as soon as the bytes it needs are present, so a bad peer is
//! refused without waiting for the rest of its frame:
//!
//! * from the first header byte: RSV1–3 clear (no extension is ever negotiated),
//!   no reserved opcode (3–7, 0xB–0xF), control frames have FIN set, a continuation
//!   only inside a message and a new Text/Binary only outside one (§5.2, §5.4, §5.5);
//! * from the second byte: the mask bit is set (§5.1) and control payloads are ≤ 125;
//! * from the extended length: the 64-bit length has its top bit clear, the minimal
//!   encoding is used (a 16-bit length is at least 126, a 64-bit one at least 65536;
//!   §5.2: "the minimal number of bytes MUST be used to encode the length"), and
//!   the message size so far plus this frame's length is within
//!   [`Limits::max_message_size`] — before any of the payload is buffered;
//! * while the payload of a Text message is unmasked: UTF-8, failing at the first
//!   invalid byte even if the rest of the frame has not arrived (§8.1). At most three
//!   bytes of an unfinished code point are carried across frames and calls; a message
//!   that ends inside a code point is invalid;
//! * when a Close frame is complete: its payload is empty or at least 2 bytes, its
//!   code is one an endpoint may send (§7.4: 1000–1003, 1007–1014, 3000–4999) and its
//!   reason is UTF-8.
//!
//! # Memory
//!
//! An idle reader is 16 bytes inline and owns no heap (see [`MessageReader`]).

use std::str;

use crate::{
    frame::MAX_CONTROL_PAYLOAD,
    mask::apply_mask,
    reason::CloseReason,
    utf8::{InvalidUtf8, Utf8Validator},
};

/// Longest client frame header: 2 bytes, a 64-bit extended length and a 4-byte mask
/// (RFC 6455 §5.2).
pub const MAX_HEADER_LEN: usize = 14;

/// Size limits applied while reading.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in payload bytes. It applies to a whole message
    /// (all fragments together) and to every single frame, control frames included.
    pub max_message_size: usize,
}

/// A complete message or control frame, borrowed from the input or from the reader.
///
/// Items live only for the duration of the callback that receives them; copy what
/// must outlive it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A complete text message, UTF-8 validated.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A Ping with its payload (≤ 125 bytes), to be answered with a Pong.
    Ping(&'a [u8]),
    /// A Pong with its payload (≤ 125 bytes).
    Pong(&'a [u8]),
    /// A validated Close frame. `code` is `None` iff the payload was empty (then
    /// `reason` is empty too).
    Close {
        /// The status code, a valid one per RFC 6455 §7.4.
        code: Option<u16>,
        /// The UTF-8 reason text (≤ 123 bytes).
        reason: &'a str,
    },
}

/// An owned copy of an [`Inbound`] item, for callers that keep items past the
/// callback (tests, fuzz targets). The reader itself never makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedInbound {
    /// [`Inbound::Text`].
    Text(String),
    /// [`Inbound::Binary`].
    Binary(Vec<u8>),
    /// [`Inbound::Ping`].
    Ping(Vec<u8>),
    /// [`Inbound::Pong`].
    Pong(Vec<u8>),
    /// [`Inbound::Close`]: the code and the reason.
    Close(Option<u16>, String),
}

impl From<Inbound<'_>> for OwnedInbound {
    fn from(item: Inbound<'_>) -> Self {
        match item {
            Inbound::Text(text) => OwnedInbound::Text(text.to_owned()),
            Inbound::Binary(data) => OwnedInbound::Binary(data.to_vec()),
            Inbound::Ping(data) => OwnedInbound::Ping(data.to_vec()),
            Inbound::Pong(data) => OwnedInbound::Pong(data.to_vec()),
            Inbound::Close { code, reason } => OwnedInbound::Close(code, reason.to_owned()),
        }
    }
}

/// What the callback of [`MessageReader::feed`] wants next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep decoding the input.
    Continue,
    /// Return now; the bytes after this item stay unconsumed (and untouched).
    Stop,
}

/// Why the peer's input was rejected. Each maps to one close code.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer broke a framing rule of RFC 6455 (close code 1002). The text names
    /// the rule, is ASCII and fits in a close frame.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason was not valid UTF-8 (close code 1007).
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A message or frame is larger than [`Limits::max_message_size`] (close code 1009).
    #[error("WebSocket message over the size limit")]
    TooBig,
}

impl ReadError {
    /// The close code to send for this error: 1002, 1007 or 1009.
    #[must_use]
    pub const fn close_code(&self) -> u16 {
        match self {
            ReadError::Protocol(_) => 1002,
            ReadError::InvalidUtf8 => 1007,
            ReadError::TooBig => 1009,
        }
    }

    /// A short reason for the close frame (ASCII, at most 123 bytes).
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self {
            ReadError::Protocol(rule) => rule,
            ReadError::InvalidUtf8 => "invalid UTF-8",
            ReadError::TooBig => "message too big",
        }
    }

    /// The [`CloseReason`] (metrics label) for this error.
    #[must_use]
    pub const fn close_reason(&self) -> CloseReason {
        match self {
            ReadError::Protocol(_) | ReadError::InvalidUtf8 => CloseReason::ProtocolError,
            ReadError::TooBig => CloseReason::MessageTooBig,
        }
    }
}

/// Whether a peer may send `code` in a Close frame (RFC 6455 §7.4.1 and the IANA
/// registry: 1012–1014 are registered; 1004 is reserved; 1005, 1006 and 1015 must
/// never be sent; 1016–2999 are reserved; 3000–4999 are for libraries and apps).
pub(crate) const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Every way a peer can fail, one byte each so a poisoned reader stays small.
/// [`Fault::error`] maps it to the public error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fault {
    ReservedBits,
    ReservedOpcode,
    FragmentedControl,
    UnexpectedContinuation,
    ExpectedContinuation,
    Unmasked,
    ControlTooLong,
    LengthTopBit,
    NonMinimalLength,
    CloseTooShort,
    InvalidCloseCode,
    InvalidUtf8,
    TooBig,
}

impl Fault {
    const fn error(self) -> ReadError {
        match self {
            Fault::ReservedBits => ReadError::Protocol("reserved bits set"),
            Fault::ReservedOpcode => ReadError::Protocol("reserved opcode"),
            Fault::FragmentedControl => ReadError::Protocol("fragmented control frame"),
            Fault::UnexpectedContinuation => ReadError::Protocol("continuation without a message"),
            Fault::ExpectedContinuation => ReadError::Protocol("new message before the last ended"),
            Fault::Unmasked => ReadError::Protocol("unmasked client frame"),
            Fault::ControlTooLong => ReadError::Protocol("control frame over 125 bytes"),
            Fault::LengthTopBit => ReadError::Protocol("frame length has its top bit set"),
            Fault::NonMinimalLength => ReadError::Protocol("frame length not minimally encoded"),
            Fault::CloseTooShort => ReadError::Protocol("close payload of 1 byte"),
            Fault::InvalidCloseCode => ReadError::Protocol("invalid close code"),
            Fault::InvalidUtf8 => ReadError::InvalidUtf8,
            Fault::TooBig => ReadError::TooBig,
        }
    }
}

impl From<InvalidUtf8> for Fault {
    fn from(_: InvalidUtf8) -> Self {
        Fault::InvalidUtf8
    }
}

/// The control opcodes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ControlKind {
    Close,
    Ping,
    Pong,
}

/// The opcodes a valid client frame can have.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Opcode {
    Continuation,
    Text,
    Binary,
    Control(ControlKind),
}

/// A decoded and validated frame header.
#[derive(Copy, Clone, Debug)]
struct Head {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    payload_len: usize,
    /// Bytes the header occupies on the wire (6, 8 or 14).
    header_len: usize,
}

/// Decodes the frame header at the start of `bytes`, running each check as soon as
/// the bytes it needs are present. `Ok(None)`: more bytes are needed.
///
/// `message_len` is `Some(bytes so far)` while a fragmented or spanning data message
/// is being assembled.
///
/// The opcode values are those of tungstenite's `coding::OpCode` (a test checks all
/// 16); they are matched here directly because `OpCode::from` is not inlinable
/// across crates and this runs once per frame.
#[inline(always)]
fn decode_header(
    bytes: &[u8],
    message_len: Option<usize>,
    limits: &Limits,
) -> Result<Option<Head>, Fault> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(Fault::ReservedBits);
    }
    let fin = first & 0x80 != 0;
    let opcode = match first & 0x0F {
        0x0 => Opcode::Continuation,
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        0x8 => Opcode::Control(ControlKind::Close),
        0x9 => Opcode::Control(ControlKind::Ping),
        0xA => Opcode::Control(ControlKind::Pong),
        _ => return Err(Fault::ReservedOpcode),
    };
    let is_control = matches!(opcode, Opcode::Control(_));
    match (opcode, message_len.is_some()) {
        (Opcode::Control(_), _) if !fin => return Err(Fault::FragmentedControl),
        (Opcode::Continuation, false) => return Err(Fault::UnexpectedContinuation),
        (Opcode::Text | Opcode::Binary, true) => return Err(Fault::ExpectedContinuation),
        _ => {}
    }

    let Some(&second) = bytes.get(1) else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err(Fault::Unmasked);
    }
    let length_code = second & 0x7F;
    if is_control && usize::from(length_code) > MAX_CONTROL_PAYLOAD {
        return Err(Fault::ControlTooLong);
    }
    let extended_len = match length_code {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let Some(extended) = bytes.get(2..2 + extended_len) else {
        return Ok(None);
    };
    let length = match *extended {
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c, d, e, f, g, h] => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => u64::from(length_code),
    };
    if length >> 63 != 0 {
        return Err(Fault::LengthTopBit);
    }
    // §5.2: 0..=125 fit the 7-bit field and 126..=65535 the 16-bit one.
    let shortest_for_field = match extended_len {
        2 => 126,
        8 => 1 << 16,
        _ => 0,
    };
    if length < shortest_for_field {
        return Err(Fault::NonMinimalLength);
    }
    let so_far = if is_control {
        0
    } else {
        message_len.unwrap_or(0)
    };
    let payload_len = usize::try_from(length).map_err(|_| Fault::TooBig)?;
    if payload_len > limits.max_message_size.saturating_sub(so_far) {
        return Err(Fault::TooBig);
    }

    let header_len = 2 + extended_len + 4;
    let Some(Ok(mask)) = bytes
        .get(header_len - 4..header_len)
        .map(<[u8; 4]>::try_from)
    else {
        return Ok(None);
    };
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Builds the item for a complete, unmasked control frame, validating Close payloads.
#[inline]
fn control_item(kind: ControlKind, payload: &[u8]) -> Result<Inbound<'_>, Fault> {
    debug_assert!(
        payload.len() <= MAX_CONTROL_PAYLOAD,
        "len={}",
        payload.len()
    );
    Ok(match kind {
        ControlKind::Ping => Inbound::Ping(payload),
        ControlKind::Pong => Inbound::Pong(payload),
        ControlKind::Close => match payload {
            [] => Inbound::Close {
                code: None,
                reason: "",
            },
            [_] => return Err(Fault::CloseTooShort),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !is_valid_close_code(code) {
                    return Err(Fault::InvalidCloseCode);
                }
                let reason = str::from_utf8(reason).map_err(|_| Fault::InvalidUtf8)?;
                Inbound::Close {
                    code: Some(code),
                    reason,
                }
            }
        },
    })
}

/// The first bytes of a frame header that arrived without the rest.
///
/// Invariant: `len < MAX_HEADER_LEN` (a complete header is never stored).
#[derive(Copy, Clone, Debug, Default)]
struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN - 1],
    len: u8,
}

impl HeaderBuf {
    fn held(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn extend(&mut self, more: &[u8]) {
        let start = usize::from(self.len);
        debug_assert!(
            start + more.len() < MAX_HEADER_LEN,
            "held={start} more={}",
            more.len()
        );
        self.bytes[start..start + more.len()].copy_from_slice(more);
        self.len = (start + more.len()) as u8;
    }
}

/// The payload of a control frame that arrived without all of it.
///
/// Invariant: `len <= MAX_CONTROL_PAYLOAD`.
#[derive(Copy, Clone, Debug)]
struct ControlBuf {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl Default for ControlBuf {
    fn default() -> Self {
        ControlBuf {
            bytes: [0; MAX_CONTROL_PAYLOAD],
            len: 0,
        }
    }
}

impl ControlBuf {
    fn held(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn extend(&mut self, more: &[u8]) {
        let start = usize::from(self.len);
        debug_assert!(
            start + more.len() <= MAX_CONTROL_PAYLOAD,
            "held={start} more={}",
            more.len()
        );
        self.bytes[start..start + more.len()].copy_from_slice(more);
        self.len = (start + more.len()) as u8;
    }
}

/// A data message being assembled from several frames or several `feed` calls.
#[derive(Debug)]
struct Assembly {
    text: bool,
    /// Unmasked payload so far. Its capacity never exceeds the message size the
    /// headers announced so far, which the header check keeps ≤ `max_message_size`.
    data: Vec<u8>,
    utf8: Utf8Validator,
}

impl Assembly {
    /// Smallest allocation made for a message, to avoid many tiny reallocations.
    const MIN_CAPACITY: usize = 256;

    /// Appends `chunk`, the next bytes of a frame of which `frame_remaining` bytes
    /// (including `chunk`) are still to come.
    fn append(&mut self, chunk: &[u8], frame_remaining: usize) {
        debug_assert!(chunk.len() <= frame_remaining);
        let needed = self.data.len() + chunk.len();
        if needed > self.data.capacity() {
            // Grow geometrically, but never past the end of the current frame: the
            // header check bounded that by `max_message_size`.
            let frame_end = self.data.len() + frame_remaining;
            let target = (self.data.capacity() * 2)
                .max(Self::MIN_CAPACITY)
                .clamp(needed, frame_end);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(chunk);
    }
}

/// What kind of payload a partly read frame carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Pending {
    /// Part of the message in [`Partial::message`]; `fin` ends it.
    Data { fin: bool },
    /// A control frame, collected in [`Partial::control`].
    Control(ControlKind),
}

/// A frame whose header has been read but whose payload has not fully arrived.
#[derive(Copy, Clone, Debug)]
struct FrameProgress {
    kind: Pending,
    mask: [u8; 4],
    /// Payload bytes already read (the mask phase of the next byte).
    read: usize,
    /// Payload bytes still to come.
    remaining: usize,
}

/// Everything a reader holds while a message or frame is unfinished. Boxed, and
/// dropped as soon as nothing is unfinished.
///
/// Invariants: at least one of `message`, `frame`, `header` is non-empty (else the
/// box is dropped); `header` is non-empty only while `frame` is `None`; `control`
/// is non-empty only while `frame` is a control frame.
#[derive(Debug, Default)]
struct Partial {
    message: Option<Assembly>,
    frame: Option<FrameProgress>,
    header: HeaderBuf,
    control: ControlBuf,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.frame.is_none() && self.header.len == 0
    }
}

/// The reader's state. Kept to 16 bytes: the inline header buffer is 14 bytes.
#[derive(Debug)]
enum State {
    /// Between frames, nothing held.
    Idle,
    /// Between messages, with the first bytes of the next frame header.
    Header(HeaderBuf),
    /// A message or frame is unfinished.
    Busy(Box<Partial>),
    /// A Close frame was delivered; nothing more is read.
    Closed,
    /// The peer broke the protocol; every later call reports the same error.
    Failed(Fault),
}

/// What happened when a message was finished or a frame continued.
enum Outcome {
    /// Keep reading (after delivering an item or not).
    Read,
    /// The callback asked to stop.
    Stop,
    /// A Close frame was delivered.
    Closed,
    /// The input is exhausted in the middle of a frame.
    NeedInput,
}

impl From<Flow> for Outcome {
    fn from(flow: Flow) -> Self {
        match flow {
            Flow::Continue => Outcome::Read,
            Flow::Stop => Outcome::Stop,
        }
    }
}

/// Decodes client frames incrementally and reassembles messages.
///
/// # Memory
///
/// The reader lives in every connection, so it is small: `size_of` is at most 16
/// bytes and an idle reader owns no heap. A frame header split across reads is kept
/// inline. Only a message or frame that spans [`feed`](Self::feed) calls, or a
/// fragmented message, allocates: a boxed partial state whose assembly buffer grows
/// with the data that actually arrived (never past the announced size, itself bounded
/// by [`Limits::max_message_size`]). The box is dropped as soon as its message has
/// been delivered, and on Close or error.
///
/// # Examples
///
/// ```
/// use pingwheel_proto::inbound::{Flow, Inbound, Limits, MessageReader};
///
/// let limits = Limits { max_message_size: 1 << 16 };
/// let mut reader = MessageReader::new();
/// // RFC 6455 §5.7: a masked text frame "Hello", arriving in two reads.
/// let mut first = [0x81, 0x85, 0x37, 0xfa, 0x21];
/// let mut second = [0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// let mut texts = Vec::new();
/// let mut collect = |item: Inbound<'_>| {
///     if let Inbound::Text(text) = item {
///         texts.push(text.to_owned());
///     }
///     Flow::Continue
/// };
/// assert_eq!(reader.feed(&mut first, &limits, &mut collect), Ok(5));
/// assert!(!reader.is_idle());
/// assert_eq!(reader.feed(&mut second, &limits, &mut collect), Ok(6));
/// assert!(reader.is_idle());
/// assert_eq!(texts, ["Hello"]);
/// ```
#[derive(Debug)]
pub struct MessageReader {
    state: State,
}

const _: () = assert!(
    size_of::<MessageReader>() <= 16,
    "MessageReader lives in every connection"
);

impl Default for MessageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReader {
    /// A reader at the start of a WebSocket stream.
    #[must_use]
    pub const fn new() -> Self {
        MessageReader { state: State::Idle }
    }

    /// Decodes frames from `input`, unmasking payloads in place, and calls `on_item`
    /// for each complete message or control frame, in order.
    ///
    /// Returns how many bytes of `input` were consumed: all of them, unless `on_item`
    /// returned [`Flow::Stop`] or a Close frame was delivered. Then the count ends
    /// right after that item, and the bytes after it are left untouched, so the
    /// caller can feed them again later. Incomplete frames and messages are kept in
    /// the reader and completed by later calls. Consumed bytes are modified
    /// (unmasked) and belong to the reader's items only during the callback.
    ///
    /// After a Close frame has been delivered, the reader reads nothing more: later
    /// calls return `Ok(0)`.
    ///
    /// # Errors
    ///
    /// A [`ReadError`] as soon as the peer breaks a rule (see the
    /// [module docs](self)). Items before the offending one have been delivered. The
    /// reader is then poisoned: it drops any partial data, and later calls return the
    /// same error without reading.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        mut on_item: impl FnMut(Inbound<'_>) -> Flow,
    ) -> Result<usize, ReadError> {
        match self.state {
            State::Failed(fault) => return Err(fault.error()),
            State::Closed => return Ok(0),
            State::Idle | State::Header(_) | State::Busy(_) => {}
        }
        self.run(input, limits, &mut on_item).map_err(|fault| {
            self.state = State::Failed(fault);
            fault.error()
        })
    }

    /// Whether the reader holds no partial frame or message (and so no heap). Also
    /// true after a Close or an error, which drop any partial data.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle | State::Closed | State::Failed(_))
    }

    /// Bytes held for unfinished data: the capacity of the message assembly buffer,
    /// plus any held frame-header bytes (≤ 13) or control-frame payload (≤ 125).
    ///
    /// At most `max_message_size + 125`; `max_message_size + 13` unless a control
    /// frame is split inside a message.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        match &self.state {
            State::Header(header) => header.held().len(),
            State::Busy(partial) => {
                partial.header.held().len()
                    + partial.control.held().len()
                    + partial.message.as_ref().map_or(0, |m| m.data.capacity())
            }
            State::Idle | State::Closed | State::Failed(_) => 0,
        }
    }

    /// The decoding loop of [`feed`](Self::feed), reporting peer faults.
    fn run<F>(&mut self, input: &mut [u8], limits: &Limits, on_item: &mut F) -> Result<usize, Fault>
    where
        F: FnMut(Inbound<'_>) -> Flow,
    {
        let mut pos = 0;
        loop {
            if let State::Busy(partial) = &mut self.state
                && partial.frame.is_some()
            {
                match Self::continue_frame(partial, input, &mut pos, on_item)? {
                    Outcome::Read => {
                        self.drop_partial_if_empty();
                        continue;
                    }
                    Outcome::Stop => {
                        self.drop_partial_if_empty();
                        return Ok(pos);
                    }
                    Outcome::Closed => {
                        self.state = State::Closed;
                        return Ok(pos);
                    }
                    Outcome::NeedInput => return Ok(pos),
                }
            }
            if pos == input.len() {
                return Ok(pos);
            }
            let Some(head) = self.read_header(input, &mut pos, limits)? else {
                debug_assert_eq!(pos, input.len());
                return Ok(pos);
            };

            let available = input.len() - pos;
            match head.opcode {
                // A whole control frame in the input: unmask and deliver in place.
                Opcode::Control(kind) if head.payload_len <= available => {
                    let payload = &mut input[pos..pos + head.payload_len];
                    pos += head.payload_len;
                    apply_mask(payload, head.mask, 0);
                    let flow = on_item(control_item(kind, payload)?);
                    if kind == ControlKind::Close {
                        self.state = State::Closed;
                        return Ok(pos);
                    }
                    if flow == Flow::Stop {
                        return Ok(pos);
                    }
                }
                // A whole single-frame message in the input: zero-copy fast path.
                Opcode::Text | Opcode::Binary if head.fin && head.payload_len <= available => {
                    debug_assert!(
                        !matches!(self.state, State::Busy(_)),
                        "state={:?}",
                        self.state
                    );
                    let payload = &mut input[pos..pos + head.payload_len];
                    pos += head.payload_len;
                    apply_mask(payload, head.mask, 0);
                    let item = if head.opcode == Opcode::Text {
                        Inbound::Text(str::from_utf8(payload).map_err(|_| Fault::InvalidUtf8)?)
                    } else {
                        Inbound::Binary(payload)
                    };
                    if on_item(item) == Flow::Stop {
                        return Ok(pos);
                    }
                }
                // Anything else is assembled in the boxed partial state.
                _ => self.start_buffered_frame(&head),
            }
        }
    }

    /// Reads the next frame header from the held header bytes plus `input[*pos..]`.
    /// On `Ok(None)` all of the input has been stashed and `*pos == input.len()`.
    ///
    /// Inlined into the loop: returning the header through memory costs a
    /// store-forwarding stall per frame.
    #[inline(always)]
    fn read_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        limits: &Limits,
    ) -> Result<Option<Head>, Fault> {
        let rest = &input[*pos..];
        // Borrow the held bytes rather than copying the buffer: the common case has
        // none, and copying 14 unaligned bytes per frame costs a store-forwarding stall.
        let (held, message_len) = match &self.state {
            State::Header(header) => (header.held(), None),
            State::Busy(partial) => (
                partial.header.held(),
                partial.message.as_ref().map(|m| m.data.len()),
            ),
            State::Idle | State::Closed | State::Failed(_) => (&[][..], None),
        };
        let held_len = held.len();
        let decoded = if held_len == 0 {
            decode_header(rest, message_len, limits)?
        } else {
            let mut joined = [0u8; MAX_HEADER_LEN];
            let take = rest.len().min(MAX_HEADER_LEN - held_len);
            joined[..held_len].copy_from_slice(held);
            joined[held_len..held_len + take].copy_from_slice(&rest[..take]);
            decode_header(&joined[..held_len + take], message_len, limits)?
        };
        match decoded {
            Some(head) => {
                debug_assert!(head.header_len > held_len, "head={head:?} held={held_len}");
                *pos += head.header_len - held_len;
                match &mut self.state {
                    State::Header(_) => self.state = State::Idle,
                    State::Busy(partial) => partial.header = HeaderBuf::default(),
                    State::Idle | State::Closed | State::Failed(_) => {}
                }
                Ok(Some(head))
            }
            None => {
                match &mut self.state {
                    State::Header(header) => header.extend(rest),
                    State::Busy(partial) => partial.header.extend(rest),
                    State::Idle => {
                        let mut header = HeaderBuf::default();
                        header.extend(rest);
                        self.state = State::Header(header);
                    }
                    State::Closed | State::Failed(_) => {
                        debug_assert!(false, "read_header in state {:?}", self.state);
                    }
                }
                *pos = input.len();
                Ok(None)
            }
        }
    }

    /// Records a frame whose payload is not wholly in the input, or which belongs to
    /// a multi-frame message; [`continue_frame`](Self::continue_frame) reads its payload.
    fn start_buffered_frame(&mut self, head: &Head) {
        let (kind, starts_message) = match head.opcode {
            Opcode::Control(kind) => (Pending::Control(kind), None),
            Opcode::Continuation => (Pending::Data { fin: head.fin }, None),
            Opcode::Text => (Pending::Data { fin: head.fin }, Some(true)),
            Opcode::Binary => (Pending::Data { fin: head.fin }, Some(false)),
        };
        let frame = FrameProgress {
            kind,
            mask: head.mask,
            read: 0,
            remaining: head.payload_len,
        };
        let fill = |partial: &mut Partial| {
            debug_assert!(
                partial.frame.is_none() && partial.header.len == 0,
                "{partial:?}"
            );
            partial.frame = Some(frame);
            if let Some(text) = starts_message {
                debug_assert!(
                    partial.message.is_none(),
                    "header check allows no nested message"
                );
                partial.message = Some(Assembly {
                    text,
                    data: Vec::new(),
                    utf8: Utf8Validator::default(),
                });
            }
        };
        match &mut self.state {
            State::Busy(partial) => fill(partial),
            State::Idle | State::Header(_) | State::Closed | State::Failed(_) => {
                debug_assert!(matches!(self.state, State::Idle), "state={:?}", self.state);
                let mut partial = Box::<Partial>::default();
                fill(&mut partial);
                self.state = State::Busy(partial);
            }
        }
    }

    /// Reads the payload of the frame in progress from `input[*pos..]`, unmasking and
    /// validating it as it arrives, and delivers the item if the frame (and for data,
    /// the message) is now complete.
    fn continue_frame<F>(
        partial: &mut Partial,
        input: &mut [u8],
        pos: &mut usize,
        on_item: &mut F,
    ) -> Result<Outcome, Fault>
    where
        F: FnMut(Inbound<'_>) -> Flow,
    {
        let Some(frame) = partial.frame.as_mut() else {
            debug_assert!(false, "continue_frame without a frame");
            return Ok(Outcome::Read);
        };
        let n = frame.remaining.min(input.len() - *pos);
        let chunk = &mut input[*pos..*pos + n];
        apply_mask(chunk, frame.mask, frame.read);
        match frame.kind {
            Pending::Control(_) => partial.control.extend(chunk),
            Pending::Data { .. } => {
                let Some(message) = partial.message.as_mut() else {
                    debug_assert!(false, "data frame without a message");
                    return Err(Fault::UnexpectedContinuation);
                };
                if message.text {
                    message.utf8.push(chunk)?;
                }
                message.append(chunk, frame.remaining);
            }
        }
        *pos += n;
        frame.read += n;
        frame.remaining -= n;
        if frame.remaining > 0 {
            debug_assert_eq!(*pos, input.len());
            return Ok(Outcome::NeedInput);
        }

        let kind = frame.kind;
        partial.frame = None;
        match kind {
            Pending::Control(kind) => {
                let flow = on_item(control_item(kind, partial.control.held())?);
                partial.control.len = 0;
                Ok(if kind == ControlKind::Close {
                    Outcome::Closed
                } else {
                    flow.into()
                })
            }
            Pending::Data { fin: false } => Ok(Outcome::Read),
            Pending::Data { fin: true } => {
                let Some(message) = partial.message.take() else {
                    debug_assert!(false, "final data frame without a message");
                    return Err(Fault::UnexpectedContinuation);
                };
                let item = if message.text {
                    message.utf8.finish()?;
                    // Already validated piece by piece; checked again rather than
                    // trusted, which costs one pass over a message that spanned reads.
                    Inbound::Text(str::from_utf8(&message.data).map_err(|_| Fault::InvalidUtf8)?)
                } else {
                    Inbound::Binary(&message.data)
                };
                Ok(on_item(item).into())
            }
        }
    }

    /// Frees the boxed partial state once nothing in it is unfinished.
    fn drop_partial_if_empty(&mut self) {
        if let State::Busy(partial) = &self.state
            && partial.is_empty()
        {
            self.state = State::Idle;
        }
    }
}

#[cfg(test)]
mod tests;
