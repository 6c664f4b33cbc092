//! Who may connect, and to which channels: JWT verification at the WebSocket upgrade,
//! the `Origin` allowlist, channels given in the URL, and the publish API key.
//!
//! # Client tokens
//!
//! A client presents a JWT in one of three places, looked up in this order (the first
//! one found is the only one checked):
//!
//! 1. `Authorization: Bearer <jwt>` (an `Authorization` header with another scheme is
//!    ignored);
//! 2. the query parameter `?token=<jwt>`;
//! 3. the subprotocol list: browsers cannot set headers, so a browser offers
//!    `new WebSocket(url, ["pingwheel.v1", "bearer." + jwt])`. JWT characters
//!    (base64url and `.`) are all valid subprotocol characters. The gateway never echoes
//!    the token: it answers with exactly one protocol, [`PROTOCOL`], which therefore must
//!    be offered next to the `bearer.` entry (otherwise the browser would fail the
//!    handshake for lack of an echoed protocol, so the gateway refuses it with 400).
//!
//! [`PROTOCOL`] is echoed whenever the client offered it, whatever the token source.
//!
//! The token is verified with the configured keys, each pinned to one algorithm, so
//! neither `alg: none` nor algorithm confusion (an RSA public key used as an HMAC
//! secret) can work:
//!
//! | key | from | algorithm |
//! |---|---|---|
//! | shared secret | `--token-secret` | HS256 |
//! | RSA public key (≥ 2048 bits) | `--token-public-key` PEM | RS256 |
//! | EC P-256 public key | `--token-public-key` PEM | ES256 |
//!
//! The PEM file may hold several public keys (for rotation); a token is accepted if
//! any key of its algorithm verifies it. HMAC verification compares in constant time.
//!
//! Claims: `exp` (required, seconds since the Unix epoch), `nbf` (optional), both
//! between 0 and [`MAX_TOKEN_TIME`] (the end of year 9999), with [`TOKEN_LEEWAY_SECS`]
//! of clock-skew leeway and checked against the `now` the caller passes; `sub`
//! (required, a string: the user id, see [`validate_user_id`]: no control or
//! bidirectional control characters); `channels` (optional list of patterns, see
//! [`ChannelGrant`], at most `--max-token-channels` of them; absent means no channel at
//! all, only per-user deliveries; `["*"]` grants every channel). A token carrying `aud`
//! is refused: pingwheel has no audience of its own to match (RFC 7519 §4.1.3). Other
//! claims are ignored. A token whose header has `crit` is refused: it names
//! extensions the recipient must understand (RFC 7515 §4.1.11), and pingwheel
//! implements none.
//!
//! # Dev mode
//!
//! With neither `--token-secret` nor `--token-public-key`, every client is accepted
//! anonymously with [`ChannelGrant::Any`], whatever token it sends (none is checked). For
//! testing per-user delivery, `?user=<id>` then sets the connection's user; it is
//! ignored outside dev mode.
//!
//! # Order of checks
//!
//! `Origin` (403), subprotocol shape (400), token (401), `?channel=` (403). Each
//! refusal carries an [`AuthFailure`] (the `reason` label of
//! `pingwheel_auth_failures_total`) and a short message for the HTTP body that names
//! the precise problem and never contains the token or a key. The labels are coarse on
//! purpose; the message tells them apart:
//!
//! | label | refusals |
//! |---|---|
//! | `missing` | no token; no publish API key |
//! | `malformed` | not a JWT (including `alg: none`); a `crit` header; bad claims (`sub`/`exp` missing, wrong types, `exp`/`nbf` not a plausible timestamp, a `sub` with a control or bidirectional control character, `aud`, invalid `channels` patterns, more than `--max-token-channels` of them); a `bearer.` subprotocol without `pingwheel.v1`; a bad dev-mode `?user=` |
//! | `bad_signature` | the signature does not verify, or the token's algorithm has no configured key |
//! | `expired` | `exp` passed, or `nbf` not reached (beyond the leeway) |
//! | `forbidden_channel` | a `?channel=` invalid, outside the claim, or too many of them |
//! | `forbidden_origin` | `Origin` missing or not allowed |
//! | `bad_api_key` | a wrong publish API key |

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingwheel_proto::HandshakeFailure;
use pingwheel_proto::handshake::UpgradeRequest;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::channel::{ChannelGrant, USER_CHANNEL, validate_channel_name, validate_user_id};
use crate::engine::position::{Since, parse_url_since};

/// The subprotocol the gateway speaks and echoes when offered.
pub const PROTOCOL: &str = "pingwheel.v1";

/// Prefix of the subprotocol entry that carries a token: `bearer.<jwt>`.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Clock-skew allowance for `exp` and `nbf`, in seconds: a token is accepted until
/// `exp + 30` and from `nbf - 30`.
pub const TOKEN_LEEWAY_SECS: u64 = 30;

/// The latest `exp` or `nbf` accepted, in seconds since the Unix epoch:
/// 9999-12-31T23:59:59Z, the last second most date libraries can represent. A larger
/// value (`1e300`, `2^64`) or a negative one is not a plausible timestamp, and an `exp`
/// like that would mean "never expires", so the token is refused.
pub const MAX_TOKEN_TIME: u64 = 253_402_300_799;
/// Why a client token or a publish-API key was rejected: one value of the `reason` label
/// of `pingwheel_auth_failures_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No token (client) or no `Authorization` header (publish API).
    Missing,
    /// Not a well-formed JWT / bearer header.
    Malformed,
    /// The JWT signature did not verify.
    BadSignature,
    /// The JWT is expired or not yet valid.
    Expired,
    /// A valid token asked for a channel outside its claim.
    ForbiddenChannel,
    /// The `Origin` header is not in `--allowed-origin`.
    ForbiddenOrigin,
    /// The publish API got a wrong API key.
    BadApiKey,
}

impl AuthFailure {
    /// Every failure, in label order.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::BadSignature,
        AuthFailure::Expired,
        AuthFailure::ForbiddenChannel,
        AuthFailure::ForbiddenOrigin,
        AuthFailure::BadApiKey,
    ];

    /// The value of the `reason` label.
    pub const fn as_label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::ForbiddenChannel => "forbidden_channel",
            AuthFailure::ForbiddenOrigin => "forbidden_origin",
            AuthFailure::BadApiKey => "bad_api_key",
        }
    }

    /// Position in [`AuthFailure::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A refused upgrade: the HTTP failure to answer with, the metrics reason, and the
/// response body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", .failure.as_label(), .reason.as_label())]
pub struct AuthRefusal {
    /// `Unauthorized` (401) for token problems, `Forbidden` (403) for origin and
    /// channel problems, `BadRequest` (400) for a malformed subprotocol list or `?user=`.
    pub failure: HandshakeFailure,
    /// The metrics label.
    pub reason: AuthFailure,
    /// The HTTP body: short, and never the token or a key (e.g. "token expired").
    pub message: Cow<'static, str>,
}

impl AuthRefusal {
    fn new(
        failure: HandshakeFailure,
        reason: AuthFailure,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        AuthRefusal {
            failure,
            reason,
            message: message.into(),
        }
    }

    fn unauthorized(reason: AuthFailure, message: impl Into<Cow<'static, str>>) -> Self {
        AuthRefusal::new(HandshakeFailure::Unauthorized, reason, message)
    }

    fn forbidden(reason: AuthFailure, message: impl Into<Cow<'static, str>>) -> Self {
        AuthRefusal::new(HandshakeFailure::Forbidden, reason, message)
    }
}

/// An accepted client: who it is, what it may subscribe to, and what to put in the
/// 101 response. The worker answers the upgrade with it and builds the connection's
/// push session (`fanout::session::Session`) from it, subscribing `initial_channels`
/// before any delivery can arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The token's `sub` (or dev mode's `?user=`); `None` for an anonymous dev-mode
    /// client. Per-user deliveries go to every connection with this user.
    pub user: Option<Box<str>>,
    /// The channels the client may subscribe to.
    pub grant: ChannelGrant,
    /// The distinct `?channel=` values and the channels of `?since=`, in URL order:
    /// valid, granted, and at most `max_subscriptions` of them. Subscribe to them before
    /// any delivery.
    pub initial_channels: Vec<Box<str>>,
    /// The streams to recover at connect (`?since=CHANNEL:SEQ:EPOCH`): channels, each
    /// also in `initial_channels`, and `#user` for the user stream (only with a user).
    pub since: Box<[(Box<str>, Since)]>,
    /// The subprotocol to echo in the 101 (`Sec-WebSocket-Protocol`), if any.
    pub protocol: Option<&'static str>,
}

/// The authentication settings, in plain values; built from the gateway's
/// configuration by `Config::auth`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// The HS256 secret (`--token-secret`).
    pub token_secret: Option<Vec<u8>>,
    /// A PEM file of RS256/ES256 public keys (`--token-public-key`).
    pub token_public_key: Option<PathBuf>,
    /// Allowed `Origin` values; empty allows any (and a missing `Origin`).
    pub allowed_origins: Vec<String>,
    /// Longest channel name in bytes (also bounds pattern prefixes in tokens).
    pub max_channel_name: usize,
    /// Most `?channel=` values one URL may carry.
    pub max_subscriptions: usize,
    /// Most patterns a token's `channels` claim may list.
    pub max_token_channels: usize,
}

/// Why the authentication keys could not be set up (at startup).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthSetupError {
    /// What is wrong, naming the file or flag.
    pub message: String,
}

/// Verifies client upgrades. Built once at startup (keys are read and parsed then, so
/// a bad key file stops the gateway instead of refusing every client) and shared by
/// all workers (`Sync`).
#[derive(Debug)]
pub struct Authenticator {
    /// The HS256 secret.
    hmac: Option<DecodingKey>,
    /// RS256 public keys, as (n, e) components.
    rsa: Vec<DecodingKey>,
    /// ES256 (P-256) public keys.
    ec: Vec<DecodingKey>,
    /// One validation per algorithm: that algorithm only, no library time checks (we
    /// check `exp`/`nbf` against the caller's `now`), `aud` refused.
    validations: [Validation; 3],
    allowed_origins: Box<[Box<str>]>,
    max_channel_name: usize,
    max_subscriptions: usize,
    max_token_channels: usize,
}

/// The claims pingwheel reads. Types are loose where a wrong type should give a
/// precise message rather than a generic JSON error.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
}

/// The algorithms with a key slot, in `Authenticator::validations` order.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

/// The shortest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

impl Authenticator {
    /// Builds the authenticator, reading and parsing `--token-public-key` if given.
    ///
    /// # Errors
    ///
    /// An empty secret, an unreadable key file, or a file without a usable public key
    /// (the message names the file and the PEM block).
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthSetupError> {
        let pem = match &settings.token_public_key {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|err| AuthSetupError {
                    message: format!("--token-public-key {}: {err}", path.display()),
                })?;
                Some((path.as_path(), bytes))
            }
            None => None,
        };
        Self::with_public_key_pem(
            settings,
            pem.as_ref().map(|(path, bytes)| (*path, &bytes[..])),
        )
    }

    /// Like [`Authenticator::new`], with the public key file's contents given (as
    /// `(path for messages, bytes)`) instead of read.
    pub fn with_public_key_pem(
        settings: &AuthSettings,
        public_key_pem: Option<(&Path, &[u8])>,
    ) -> Result<Self, AuthSetupError> {
        let hmac = match &settings.token_secret {
            Some(secret) if secret.is_empty() => {
                return Err(AuthSetupError {
                    message: "--token-secret is empty".to_owned(),
                });
            }
            Some(secret) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let (rsa, ec) = match public_key_pem {
            Some((path, pem)) => parse_public_keys(path, pem)?,
            None => (Vec::new(), Vec::new()),
        };
        // Pin the RustCrypto backend explicitly: if feature unification ever enabled
        // jsonwebtoken's other backend too, its automatic choice would panic on first
        // use. Installing twice is refused harmlessly, hence the ignored result.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
        let validations = ALGORITHMS.map(|alg| {
            let mut validation = Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.leeway = 0;
            // `validate_aud` stays on with no audience configured: a token with `aud`
            // is refused.
            validation
        });
        Ok(Authenticator {
            hmac,
            rsa,
            ec,
            validations,
            allowed_origins: settings
                .allowed_origins
                .iter()
                .map(|o| o.as_str().into())
                .collect(),
            max_channel_name: settings.max_channel_name,
            max_subscriptions: settings.max_subscriptions,
            max_token_channels: settings.max_token_channels,
        })
    }

    /// True when no key is configured: clients are accepted anonymously with any
    /// channel. The gateway must log this loudly.
    pub fn dev_mode(&self) -> bool {
        self.hmac.is_none() && self.rsa.is_empty() && self.ec.is_empty()
    }

    /// Decides an upgrade request at `now_unix_secs` (seconds since the Unix epoch).
    /// See the module docs for the rules and their order.
    pub fn authenticate(
        &self,
        req: &UpgradeRequest,
        now_unix_secs: u64,
    ) -> Result<Admission, AuthRefusal> {
        self.check_origin(req.origin.as_deref())?;

        let protocol = req
            .protocols
            .iter()
            .any(|p| p == PROTOCOL)
            .then_some(PROTOCOL);
        let protocol_token = req
            .protocols
            .iter()
            .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX));
        if protocol_token.is_some() && protocol.is_none() {
            return Err(AuthRefusal::new(
                HandshakeFailure::BadRequest,
                AuthFailure::Malformed,
                "offer the subprotocol pingwheel.v1 together with bearer.<token>",
            ));
        }

        let mut query_token = None;
        let mut query_user = None;
        let mut channels: Vec<Box<str>> = Vec::new();
        let mut since: Vec<(Box<str>, Since)> = Vec::new();
        for (name, value) in req.query_pairs() {
            match &*name {
                "token" if query_token.is_none() => query_token = Some(value),
                "user" if query_user.is_none() => query_user = Some(value),
                "channel" if !channels.iter().any(|c| **c == *value) => {
                    channels.push(value.into());
                }
                "since" => {
                    let (channel, position) = parse_url_since(&value).map_err(|err| {
                        let shown: String = value.chars().take(64).collect();
                        AuthRefusal::new(
                            HandshakeFailure::BadRequest,
                            AuthFailure::Malformed,
                            format!("{err}: {shown}"),
                        )
                    })?;
                    if since.iter().any(|(c, _)| **c == *channel) {
                        let shown: String = channel.chars().take(64).collect();
                        return Err(AuthRefusal::new(
                            HandshakeFailure::BadRequest,
                            AuthFailure::Malformed,
                            format!("since for channel {shown} is given twice"),
                        ));
                    }
                    since.push((channel.into(), position));
                    if channel != USER_CHANNEL && !channels.iter().any(|c| **c == *channel) {
                        channels.push(channel.into());
                    }
                }
                _ => {}
            }
        }

        let (user, grant) = if self.dev_mode() {
            let user = match query_user {
                Some(user) => {
                    validate_user_id(&user).map_err(|err| {
                        AuthRefusal::new(
                            HandshakeFailure::BadRequest,
                            AuthFailure::Malformed,
                            format!("?user=: {err}"),
                        )
                    })?;
                    Some(Box::from(&*user))
                }
                None => None,
            };
            (user, ChannelGrant::Any)
        } else {
            let header_token = req.authorization.as_deref().and_then(bearer_credentials);
            let token = header_token
                .or(query_token.as_deref())
                .or(protocol_token)
                .ok_or_else(|| AuthRefusal::unauthorized(AuthFailure::Missing, "missing token"))?;
            let (user, grant) = self.verify_token(token, now_unix_secs)?;
            (Some(user), grant)
        };

        self.check_channels(&channels, &grant)?;
        if user.is_none() && since.iter().any(|(c, _)| &**c == USER_CHANNEL) {
            return Err(AuthRefusal::forbidden(
                AuthFailure::ForbiddenChannel,
                "since=#user needs a user: this connection has none (dev mode without ?user=)",
            ));
        }
        Ok(Admission {
            user,
            grant,
            initial_channels: channels,
            since: since.into_boxed_slice(),
            protocol,
        })
    }

    fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthRefusal> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        let origin = origin.ok_or_else(|| {
            AuthRefusal::forbidden(AuthFailure::ForbiddenOrigin, "Origin header required")
        })?;
        if self
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            Ok(())
        } else {
            Err(AuthRefusal::forbidden(
                AuthFailure::ForbiddenOrigin,
                "origin not allowed",
            ))
        }
    }

    fn check_channels(
        &self,
        channels: &[Box<str>],
        grant: &ChannelGrant,
    ) -> Result<(), AuthRefusal> {
        if channels.len() > self.max_subscriptions {
            return Err(AuthRefusal::forbidden(
                AuthFailure::ForbiddenChannel,
                format!(
                    "{} channels in the URL, the limit is {}",
                    channels.len(),
                    self.max_subscriptions
                ),
            ));
        }
        for channel in channels {
            if let Err(err) = validate_channel_name(channel, self.max_channel_name) {
                // Quote at most a prefix of an overlong or odd name.
                let shown: String = channel.chars().take(64).collect();
                return Err(AuthRefusal::forbidden(
                    AuthFailure::ForbiddenChannel,
                    format!("invalid channel {shown:?}: {err}"),
                ));
            }
            if !grant.allows(channel) {
                return Err(AuthRefusal::forbidden(
                    AuthFailure::ForbiddenChannel,
                    format!("token does not grant channel {channel}"),
                ));
            }
        }
        Ok(())
    }

    /// Verifies `token` and returns its user and grant.
    fn verify_token(&self, token: &str, now: u64) -> Result<(Box<str>, ChannelGrant), AuthRefusal> {
        use AuthFailure as R;
        let malformed = || AuthRefusal::unauthorized(R::Malformed, "malformed token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        // RFC 7515 §4.1.11: a recipient that does not understand every extension named
        // in `crit` must reject the token. pingwheel understands none (and `[]` is
        // itself invalid there), so any `crit` is refused.
        if header.crit.is_some() {
            return Err(AuthRefusal::unauthorized(
                R::Malformed,
                "token header has a crit parameter; pingwheel supports no critical extensions",
            ));
        }
        let (slot, keys): (usize, &[DecodingKey]) = match header.alg {
            Algorithm::HS256 => (0, self.hmac.as_slice()),
            Algorithm::RS256 => (1, &self.rsa),
            Algorithm::ES256 => (2, &self.ec),
            _ => (usize::MAX, &[]),
        };
        if keys.is_empty() {
            return Err(AuthRefusal::unauthorized(
                R::BadSignature,
                format!("token algorithm {:?} not accepted", header.alg),
            ));
        }
        debug_assert_eq!(self.validations[slot].algorithms, [header.alg]);
        let mut outcome = Err(AuthRefusal::unauthorized(
            R::BadSignature,
            "invalid token signature",
        ));
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validations[slot]) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(err) => match err.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::InvalidAudience => {
                        outcome = Err(AuthRefusal::unauthorized(
                            R::Malformed,
                            "token has an aud claim; pingwheel accepts tokens without one",
                        ));
                        break;
                    }
                    // Claims that did not deserialize (the signature was good).
                    ErrorKind::Json(_) => {
                        outcome = Err(AuthRefusal::unauthorized(
                            R::Malformed,
                            "token claims have the wrong types (sub: string, exp/nbf: number, channels: list of strings)",
                        ));
                        break;
                    }
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                        outcome = Err(malformed());
                        break;
                    }
                    _ => {
                        outcome = Err(AuthRefusal::unauthorized(
                            R::BadSignature,
                            "invalid token signature",
                        ));
                        break;
                    }
                },
            }
        }
        let claims = outcome?;

        let exp = claims
            .exp
            .ok_or_else(|| AuthRefusal::unauthorized(R::Malformed, "token has no exp claim"))?;
        for (name, time) in [("exp", Some(exp)), ("nbf", claims.nbf)] {
            if time.is_some_and(|t| !(0.0..=MAX_TOKEN_TIME as f64).contains(&t)) {
                return Err(AuthRefusal::unauthorized(
                    R::Malformed,
                    format!(
                        "token {name} claim is not a plausible timestamp \
                         (0 to {MAX_TOKEN_TIME}, the end of year 9999)"
                    ),
                ));
            }
        }
        // `as` saturates: a negative or fractional NumericDate rounds toward zero.
        if now > (exp as u64).saturating_add(TOKEN_LEEWAY_SECS) {
            return Err(AuthRefusal::unauthorized(R::Expired, "token expired"));
        }
        if let Some(nbf) = claims.nbf
            && (nbf as u64) > now.saturating_add(TOKEN_LEEWAY_SECS)
        {
            return Err(AuthRefusal::unauthorized(R::Expired, "token not yet valid"));
        }
        let user = claims
            .sub
            .ok_or_else(|| AuthRefusal::unauthorized(R::Malformed, "token has no sub claim"))?;
        validate_user_id(&user).map_err(|err| {
            AuthRefusal::unauthorized(R::Malformed, format!("token sub claim: {err}"))
        })?;
        let grant = match &claims.channels {
            Some(patterns) if patterns.len() > self.max_token_channels => {
                return Err(AuthRefusal::unauthorized(
                    R::Malformed,
                    format!(
                        "token channels claim has {} patterns, the limit is {}",
                        patterns.len(),
                        self.max_token_channels
                    ),
                ));
            }
            Some(patterns) => ChannelGrant::from_patterns(patterns, self.max_channel_name)
                .map_err(|err| {
                    AuthRefusal::unauthorized(R::Malformed, format!("token claim {err}"))
                })?,
            None => ChannelGrant::none(),
        };
        Ok((user.into_boxed_str(), grant))
    }
}

/// Splits one PEM file into its public keys: (RS256 keys, ES256 keys).
fn parse_public_keys(
    path: &Path,
    file: &[u8],
) -> Result<(Vec<DecodingKey>, Vec<DecodingKey>), AuthSetupError> {
    let fail = |message: String| AuthSetupError {
        message: format!("--token-public-key {}: {message}", path.display()),
    };
    let text = std::str::from_utf8(file).map_err(|_| fail("not a PEM text file".to_owned()))?;
    let blocks = pem::parse_many(text).map_err(|err| fail(format!("malformed PEM: {err}")))?;
    // `parse_many` stops quietly at a block without its END line: name it instead.
    if text.matches("-----BEGIN ").count() > blocks.len() {
        let number = blocks.len() + 1;
        return Err(fail(format!("PEM block {number}: no -----END line")));
    }
    let provider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    let (mut rsa, mut ec) = (Vec::new(), Vec::new());
    for (index, block) in blocks.iter().enumerate() {
        let number = index + 1;
        let label = block.tag();
        let what = format!("PEM block {number} ({label})");
        match label {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                return Err(fail(format!(
                    "{what} is a private key; give the public key (openssl pkey -pubout)"
                )));
            }
            _ => {
                return Err(fail(format!(
                    "{what} is not a public key; give a PUBLIC KEY block (RSA or EC P-256)"
                )));
            }
        }
        // jsonwebtoken reads keys from PEM text; each block is handed over on its own.
        let block = pem::encode(block);
        if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
            let der = key
                .try_get_as_bytes()
                .map_err(|_| fail(format!("{what}: unreadable RSA key")))?;
            let (n, e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|err| fail(format!("{what}: invalid RSA public key ({err})")))?;
            let bits = n.iter().position(|&b| b != 0).map_or(0, |first| {
                (n.len() - first) * 8 - n[first].leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return Err(fail(format!(
                    "{what}: RSA key has {bits} bits, at least {MIN_RSA_BITS} are required"
                )));
            }
            rsa.push(DecodingKey::from_rsa_raw_components(&n, &e));
        } else if let Ok(key) = DecodingKey::from_ec_pem(block.as_bytes()) {
            (provider.verifier_factory)(&Algorithm::ES256, &key).map_err(|_| {
                fail(format!(
                    "{what}: EC key is not on curve P-256 (only ES256 is supported)"
                ))
            })?;
            ec.push(key);
        } else {
            return Err(fail(format!("{what}: neither an RSA nor an EC public key")));
        }
    }
    if blocks.is_empty() {
        return Err(fail(
            "no PEM block found (expected -----BEGIN PUBLIC KEY-----)".to_owned(),
        ));
    }
    Ok((rsa, ec))
}

/// The credentials of an `Authorization: Bearer <credentials>` value (scheme
/// case-insensitive, surrounding whitespace trimmed); `None` for another scheme.
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    let authorization = authorization.trim();
    let (scheme, rest) = authorization
        .split_once([' ', '\t'])
        .unwrap_or((authorization, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Why a publish API request was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum ApiKeyRefusal {
    /// No `Authorization: Bearer` header: 401 with `WWW-Authenticate: Bearer`.
    Missing,
    /// The key does not match: 401 with `WWW-Authenticate: Bearer`.
    Wrong,
    /// No API key is configured and the gateway is not in dev mode: 403. (Not 503:
    /// retrying will not help, the operator must configure `--api-key`.)
    Disabled,
}

impl ApiKeyRefusal {
    /// The HTTP status.
    pub const fn status(self) -> u16 {
        match self {
            ApiKeyRefusal::Missing | ApiKeyRefusal::Wrong => 401,
            ApiKeyRefusal::Disabled => 403,
        }
    }

    /// The `WWW-Authenticate` header value to send, if any (RFC 9110 requires one on 401).
    pub const fn www_authenticate(self) -> Option<&'static str> {
        match self {
            ApiKeyRefusal::Missing | ApiKeyRefusal::Wrong => Some("Bearer"),
            ApiKeyRefusal::Disabled => None,
        }
    }

    /// The `pingwheel_auth_failures_total` label to count, if any: a disabled API is
    /// the operator's configuration, not a caller's failure, and is not counted there
    /// (it shows as `pingwheel_publish_requests_total{status="403"}`).
    pub const fn reason(self) -> Option<AuthFailure> {
        match self {
            ApiKeyRefusal::Missing => Some(AuthFailure::Missing),
            ApiKeyRefusal::Wrong => Some(AuthFailure::BadApiKey),
            ApiKeyRefusal::Disabled => None,
        }
    }

    /// The stable `error` code of the JSON reply.
    pub const fn code(self) -> &'static str {
        match self {
            ApiKeyRefusal::Missing | ApiKeyRefusal::Wrong => "unauthorized",
            ApiKeyRefusal::Disabled => "publish_api_disabled",
        }
    }

    /// A human-readable explanation.
    pub const fn message(self) -> &'static str {
        match self {
            ApiKeyRefusal::Missing => "missing API key: send Authorization: Bearer <key>",
            ApiKeyRefusal::Wrong => "wrong API key",
            ApiKeyRefusal::Disabled => {
                "the publish API is disabled: start the gateway with --api-key (or PINGWHEEL_API_KEY)"
            }
        }
    }

    /// The JSON reply body: `{"error":"unauthorized","message":"wrong API key"}`.
    pub fn to_json(self) -> String {
        super::publish::error_json(self.code(), self.message())
    }
}

/// Checks a publish API request's `Authorization` header.
///
/// * A configured key is always required (even in dev mode); the presented credentials
///   are compared with [`subtle::ConstantTimeEq`], so the time taken does not depend
///   on where they differ. Only the key's *length* can leak (slices of different
///   lengths compare unequal at once); that tells an attacker nothing that helps guess
///   the bytes of a long random key.
/// * With no key configured the API is open in dev mode and refused otherwise.
pub fn check_api_key(
    configured: Option<&[u8]>,
    dev_mode: bool,
    authorization_header: Option<&str>,
) -> Result<(), ApiKeyRefusal> {
    let Some(configured) = configured else {
        return if dev_mode {
            Ok(())
        } else {
            Err(ApiKeyRefusal::Disabled)
        };
    };
    let presented = authorization_header
        .and_then(bearer_credentials)
        .ok_or(ApiKeyRefusal::Missing)?;
    if bool::from(configured.ct_eq(presented.as_bytes())) {
        Ok(())
    } else {
        Err(ApiKeyRefusal::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const SECRET: &[u8] = b"test-only-secret-0123456789abcdef";
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/data/test-only-rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/data/test-only-rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/data/test-only-ec-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/data/test-only-ec-public.pem");
    const EC_P384_PUBLIC: &[u8] = include_bytes!("../../tests/data/test-only-ec-p384-public.pem");
    const RSA_1024_PUBLIC: &[u8] = include_bytes!("../../tests/data/test-only-rsa1024-public.pem");

    fn settings() -> AuthSettings {
        AuthSettings {
            token_secret: Some(SECRET.to_vec()),
            token_public_key: None,
            allowed_origins: Vec::new(),
            max_channel_name: 128,
            max_subscriptions: 4,
            max_token_channels: 8,
        }
    }

    fn hs256() -> Authenticator {
        Authenticator::new(&settings()).unwrap()
    }

    fn with_pem(pem: &[u8]) -> Result<Authenticator, AuthSetupError> {
        Authenticator::with_public_key_pem(
            &AuthSettings {
                token_secret: None,
                ..settings()
            },
            Some((Path::new("keys.pem"), pem)),
        )
    }

    fn claims(sub: &str, channels: &[&str]) -> serde_json::Value {
        json!({ "sub": sub, "exp": NOW + 3600, "channels": channels })
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs_token(claims: &serde_json::Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn request(target: &str) -> UpgradeRequest {
        UpgradeRequest {
            target: target.to_owned(),
            key: "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
            origin: None,
            protocols: Vec::new(),
            authorization: None,
            host: Some("localhost".to_owned()),
        }
    }

    fn with_bearer(token: &str) -> UpgradeRequest {
        UpgradeRequest {
            authorization: Some(format!("Bearer {token}")),
            ..request("/")
        }
    }

    #[track_caller]
    fn refused(result: Result<Admission, AuthRefusal>) -> (HandshakeFailure, AuthFailure, String) {
        let refusal = result.expect_err("expected a refusal");
        (
            refusal.failure,
            refusal.reason,
            refusal.message.into_owned(),
        )
    }

    /// A token whose signature part is replaced by `signature`.
    fn with_signature(token: &str, signature: &str) -> String {
        let (unsigned, _) = token.rsplit_once('.').unwrap();
        format!("{unsigned}.{signature}")
    }

    fn b64(json: &serde_json::Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn valid_token_via_authorization_header() {
        let token = hs_token(&claims("42", &["scores", "team:*"]));
        let session = hs256().authenticate(&with_bearer(&token), NOW).unwrap();
        assert_eq!(session.user.as_deref(), Some("42"));
        assert!(session.grant.allows("scores"));
        assert!(session.grant.allows("team:9"));
        assert!(!session.grant.allows("other"));
        assert_eq!(session.protocol, None);
        assert!(session.initial_channels.is_empty());
        // Scheme is case-insensitive.
        let req = UpgradeRequest {
            authorization: Some(format!("bearer  {token} ")),
            ..request("/")
        };
        assert!(hs256().authenticate(&req, NOW).is_ok());
    }

    #[test]
    fn valid_token_via_query() {
        let token = hs_token(&claims("u1", &["*"]));
        let session = hs256()
            .authenticate(
                &request(&format!("/?token={token}&channel=a&channel=b&channel=a")),
                NOW,
            )
            .unwrap();
        assert_eq!(session.user.as_deref(), Some("u1"));
        assert_eq!(session.grant, ChannelGrant::Any);
        assert_eq!(session.initial_channels, [Box::from("a"), Box::from("b")]);
    }

    #[test]
    fn valid_token_via_subprotocol_echoes_only_pingwheel_v1() {
        let token = hs_token(&claims("u1", &["scores"]));
        let req = UpgradeRequest {
            protocols: vec![PROTOCOL.to_owned(), format!("bearer.{token}")],
            ..request("/?channel=scores")
        };
        let session = hs256().authenticate(&req, NOW).unwrap();
        assert_eq!(session.protocol, Some("pingwheel.v1"));
        assert_eq!(session.initial_channels, [Box::from("scores")]);
        // The bearer entry without pingwheel.v1 could not be answered: refused.
        let req = UpgradeRequest {
            protocols: vec![format!("bearer.{token}")],
            ..request("/")
        };
        assert_eq!(
            refused(hs256().authenticate(&req, NOW)),
            (
                HandshakeFailure::BadRequest,
                AuthFailure::Malformed,
                "offer the subprotocol pingwheel.v1 together with bearer.<token>".to_owned()
            )
        );
        // pingwheel.v1 is echoed whatever the token source.
        let req = UpgradeRequest {
            protocols: vec!["other".to_owned(), PROTOCOL.to_owned()],
            ..with_bearer(&token)
        };
        assert_eq!(
            hs256().authenticate(&req, NOW).unwrap().protocol,
            Some(PROTOCOL)
        );
    }

    #[test]
    fn header_wins_over_query_and_protocol() {
        let good = hs_token(&claims("header", &[]));
        let req = UpgradeRequest {
            protocols: vec![PROTOCOL.to_owned(), "bearer.garbage".to_owned()],
            ..with_bearer(&good)
        };
        let req = UpgradeRequest {
            target: "/?token=garbage".to_owned(),
            ..req
        };
        assert_eq!(
            hs256().authenticate(&req, NOW).unwrap().user.as_deref(),
            Some("header")
        );
        // A non-Bearer Authorization header is not a token source.
        let req = UpgradeRequest {
            authorization: Some("Basic dXNlcjpwYXNz".to_owned()),
            ..request(&format!("/?token={good}"))
        };
        assert_eq!(
            hs256().authenticate(&req, NOW).unwrap().user.as_deref(),
            Some("header")
        );
    }

    #[test]
    fn missing_token() {
        assert_eq!(
            refused(hs256().authenticate(&request("/?channel=a"), NOW)),
            (
                HandshakeFailure::Unauthorized,
                AuthFailure::Missing,
                "missing token".to_owned()
            )
        );
    }

    #[test]
    fn expired_and_not_yet_valid_with_leeway() {
        let exp = NOW;
        let token = hs_token(&json!({"sub": "u", "exp": exp}));
        let auth = hs256();
        assert!(
            auth.authenticate(&with_bearer(&token), exp + TOKEN_LEEWAY_SECS)
                .is_ok()
        );
        assert_eq!(
            refused(auth.authenticate(&with_bearer(&token), exp + TOKEN_LEEWAY_SECS + 1)),
            (
                HandshakeFailure::Unauthorized,
                AuthFailure::Expired,
                "token expired".to_owned()
            )
        );
        let token = hs_token(&json!({"sub": "u", "exp": NOW + 100, "nbf": NOW + 60}));
        assert!(auth.authenticate(&with_bearer(&token), NOW + 30).is_ok());
        assert_eq!(
            refused(auth.authenticate(&with_bearer(&token), NOW + 29)),
            (
                HandshakeFailure::Unauthorized,
                AuthFailure::Expired,
                "token not yet valid".to_owned()
            )
        );
        // Fractional NumericDates are accepted.
        let token = hs_token(&json!({"sub": "u", "exp": (NOW as f64) + 0.5}));
        assert!(auth.authenticate(&with_bearer(&token), NOW).is_ok());
        // The latest plausible exp is accepted.
        let token = hs_token(&json!({"sub": "u", "exp": MAX_TOKEN_TIME}));
        assert!(auth.authenticate(&with_bearer(&token), NOW).is_ok());
    }

    #[test]
    fn forged_signature() {
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"not-the-secret"),
            &claims("42", &["*"]),
        );
        let (failure, reason, message) = refused(hs256().authenticate(&with_bearer(&forged), NOW));
        assert_eq!(
            (failure, reason),
            (HandshakeFailure::Unauthorized, AuthFailure::BadSignature)
        );
        assert_eq!(message, "invalid token signature");
        // Claims altered after signing.
        let good = hs_token(&claims("42", &[]));
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims("admin", &["*"])),
            parts[2]
        );
        let (_, reason, _) = refused(hs256().authenticate(&with_bearer(&tampered), NOW));
        assert_eq!(reason, AuthFailure::BadSignature);
    }

    #[test]
    fn wrong_algorithm_is_refused() {
        // HS512 with the right secret: only HS256 is pinned to the secret.
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET),
            &claims("u", &[]),
        );
        assert_eq!(
            refused(hs256().authenticate(&with_bearer(&token), NOW)),
            (
                HandshakeFailure::Unauthorized,
                AuthFailure::BadSignature,
                "token algorithm HS512 not accepted".to_owned()
            )
        );
        // RS256 when only a secret is configured.
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
        let token = sign(Algorithm::RS256, &rsa, &claims("u", &[]));
        let (_, reason, _) = refused(hs256().authenticate(&with_bearer(&token), NOW));
        assert_eq!(reason, AuthFailure::BadSignature);
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // The classic attack: HS256 signed with the RSA *public* key bytes as the secret,
        // sent to a gateway that has only the public key.
        let auth = with_pem(RSA_PUBLIC).unwrap();
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC),
            &claims("u", &["*"]),
        );
        let (_, reason, _) = refused(auth.authenticate(&with_bearer(&token), NOW));
        assert_eq!(reason, AuthFailure::BadSignature);
    }

    #[test]
    fn alg_none_is_refused() {
        let header = json!({"alg": "none", "typ": "JWT"});
        for signature in ["", "AAAA"] {
            let token = format!("{}.{}.{signature}", b64(&header), b64(&claims("u", &["*"])));
            let (failure, reason, message) =
                refused(hs256().authenticate(&with_bearer(&token), NOW));
            assert_eq!(failure, HandshakeFailure::Unauthorized);
            assert_eq!(reason, AuthFailure::Malformed);
            assert_eq!(message, "malformed token");
        }
    }

    #[test]
    fn malformed_tokens() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.%%%.sig",
        ] {
            let (failure, reason, _) = refused(hs256().authenticate(&with_bearer(token), NOW));
            assert_eq!(failure, HandshakeFailure::Unauthorized, "{token:?}");
            assert!(
                matches!(reason, AuthFailure::Malformed | AuthFailure::BadSignature),
                "{token:?}: {reason:?}"
            );
        }
    }

    #[test]
    fn crit_header_is_refused() {
        for crit in [json!(["exp"]), json!(["b64"]), json!([])] {
            let mut header = Header::new(Algorithm::HS256);
            header.crit = serde_json::from_value(crit.clone()).unwrap();
            let token = jsonwebtoken::encode(
                &header,
                &claims("u", &["*"]),
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(
                refused(hs256().authenticate(&with_bearer(&token), NOW)),
                (
                    HandshakeFailure::Unauthorized,
                    AuthFailure::Malformed,
                    "token header has a crit parameter; pingwheel supports no critical extensions"
                        .to_owned()
                ),
                "{crit}"
            );
        }
    }

    #[test]
    fn claim_problems() {
        let auth = hs256();
        let cases = [
            (json!({"exp": NOW + 60}), "token has no sub claim"),
            (json!({"sub": "u"}), "token has no exp claim"),
            (
                json!({"sub": 42, "exp": NOW + 60}),
                "token claims have the wrong types (sub: string, exp/nbf: number, channels: list of strings)",
            ),
            (
                json!({"sub": "u", "exp": "soon"}),
                "token claims have the wrong types (sub: string, exp/nbf: number, channels: list of strings)",
            ),
            (
                json!({"sub": "", "exp": NOW + 60}),
                "token sub claim: user id is empty",
            ),
            (
                json!({"sub": "u", "exp": NOW + 60, "channels": ["ok", "bad*pattern"]}),
                "token claim channels[1] is not a valid channel pattern: channel name has a forbidden character '*' at byte 3",
            ),
            (
                json!({"sub": "u", "exp": NOW + 60, "aud": "someone"}),
                "token has an aud claim; pingwheel accepts tokens without one",
            ),
            (
                json!({"sub": "u", "exp": 1e300}),
                "token exp claim is not a plausible timestamp (0 to 253402300799, the end of year 9999)",
            ),
            (
                json!({"sub": "u", "exp": 18_446_744_073_709_551_616.0_f64}),
                "token exp claim is not a plausible timestamp (0 to 253402300799, the end of year 9999)",
            ),
            (
                json!({"sub": "u", "exp": u64::MAX}),
                "token exp claim is not a plausible timestamp (0 to 253402300799, the end of year 9999)",
            ),
            (
                json!({"sub": "u", "exp": -1}),
                "token exp claim is not a plausible timestamp (0 to 253402300799, the end of year 9999)",
            ),
            (
                json!({"sub": "u", "exp": NOW + 60, "nbf": 1e300}),
                "token nbf claim is not a plausible timestamp (0 to 253402300799, the end of year 9999)",
            ),
            (
                json!({"sub": "admin\u{202E}gnp.exe", "exp": NOW + 60}),
                "token sub claim: user id contains a Unicode bidirectional control character (U+202E)",
            ),
            (
                json!({"sub": "u", "exp": NOW + 60, "channels": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}),
                "token channels claim has 9 patterns, the limit is 8",
            ),
        ];
        for (claims, want) in cases {
            let token = hs_token(&claims);
            let (failure, reason, message) = refused(auth.authenticate(&with_bearer(&token), NOW));
            assert_eq!(
                (failure, reason),
                (HandshakeFailure::Unauthorized, AuthFailure::Malformed),
                "{claims}"
            );
            assert_eq!(message, want, "{claims}");
        }
    }

    #[test]
    fn channels_claim_at_the_pattern_limit_is_accepted() {
        let patterns = ["a", "b", "c", "d", "e", "f", "g", "h*"];
        let token = hs_token(&claims("u", &patterns));
        let session = hs256().authenticate(&with_bearer(&token), NOW).unwrap();
        assert_eq!(session.grant.patterns().count(), 8);
        assert!(session.grant.allows("h:1"));
    }

    #[test]
    fn token_minted_by_the_protocol_md_python_snippet_is_accepted() {
        // `mint_token("change-me-token-secret", "42", ["scores", "team:*"])` from
        // docs/protocol.md, run with time.time() pinned to 1_800_000_000.
        const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MTgwMDAwMzYwMCwiY2hhbm5lbHMiOlsic2NvcmVzIiwidGVhbToqIl19.ydaU6Cs8sYefDlOyrz2IHS0PgAUa52M9pG6jC1C7xqU";
        let auth = Authenticator::new(&AuthSettings {
            token_secret: Some(b"change-me-token-secret".to_vec()),
            ..settings()
        })
        .unwrap();
        let session = auth
            .authenticate(&with_bearer(TOKEN), 1_800_000_000)
            .unwrap();
        assert_eq!(session.user.as_deref(), Some("42"));
        assert!(session.grant.allows("team:7"));
        assert_eq!(
            refused(auth.authenticate(&with_bearer(TOKEN), 1_800_003_631)).1,
            AuthFailure::Expired
        );
    }

    #[test]
    fn absent_channels_claim_grants_nothing() {
        let token = hs_token(&json!({"sub": "u", "exp": NOW + 60}));
        let session = hs256().authenticate(&with_bearer(&token), NOW).unwrap();
        assert_eq!(session.grant, ChannelGrant::none());
        assert!(!session.grant.allows("scores"));
    }

    #[test]
    fn url_channels_outside_the_claim_are_forbidden() {
        let token = hs_token(&claims("u", &["scores", "team:*"]));
        let auth = hs256();
        let req = |query: &str| UpgradeRequest {
            target: format!("/{query}"),
            ..with_bearer(&token)
        };
        assert!(
            auth.authenticate(&req("?channel=scores&channel=team:1"), NOW)
                .is_ok()
        );
        // Percent-encoded names are decoded first.
        let session = auth.authenticate(&req("?channel=team%3A2"), NOW).unwrap();
        assert_eq!(session.initial_channels, [Box::from("team:2")]);
        assert_eq!(
            refused(auth.authenticate(&req("?channel=scores&channel=admin"), NOW)),
            (
                HandshakeFailure::Forbidden,
                AuthFailure::ForbiddenChannel,
                "token does not grant channel admin".to_owned()
            )
        );
        assert_eq!(
            refused(auth.authenticate(&req("?channel=a+b"), NOW)),
            (
                HandshakeFailure::Forbidden,
                AuthFailure::ForbiddenChannel,
                "invalid channel \"a b\": channel name has a forbidden byte 0x20 at byte 1 (allowed: printable ASCII without space, '\"', '\\', '*')".to_owned()
            )
        );
        let (_, reason, message) = refused(auth.authenticate(&req("?channel=%23user"), NOW));
        assert_eq!(reason, AuthFailure::ForbiddenChannel);
        assert!(message.contains("reserved"), "{message}");
        // More than max_subscriptions (4) distinct channels.
        let (failure, reason, message) = refused(auth.authenticate(
            &req("?channel=team:1&channel=team:2&channel=team:3&channel=team:4&channel=team:5"),
            NOW,
        ));
        assert_eq!(
            (failure, reason),
            (HandshakeFailure::Forbidden, AuthFailure::ForbiddenChannel)
        );
        assert_eq!(message, "5 channels in the URL, the limit is 4");
    }

    #[test]
    fn origin_allowlist() {
        let auth = Authenticator::new(&AuthSettings {
            allowed_origins: vec![
                "https://app.example.com".to_owned(),
                "http://localhost:3000".to_owned(),
            ],
            ..settings()
        })
        .unwrap();
        let token = hs_token(&claims("u", &[]));
        let req = |origin: Option<&str>| UpgradeRequest {
            origin: origin.map(str::to_owned),
            ..with_bearer(&token)
        };
        assert!(
            auth.authenticate(&req(Some("https://app.example.com")), NOW)
                .is_ok()
        );
        assert!(
            auth.authenticate(&req(Some("HTTPS://APP.EXAMPLE.COM")), NOW)
                .is_ok()
        );
        assert!(
            auth.authenticate(&req(Some("http://localhost:3000")), NOW)
                .is_ok()
        );
        assert_eq!(
            refused(auth.authenticate(&req(Some("https://evil.example.com")), NOW)),
            (
                HandshakeFailure::Forbidden,
                AuthFailure::ForbiddenOrigin,
                "origin not allowed".to_owned()
            )
        );
        assert_eq!(
            refused(auth.authenticate(&req(None), NOW)),
            (
                HandshakeFailure::Forbidden,
                AuthFailure::ForbiddenOrigin,
                "Origin header required".to_owned()
            )
        );
        // The origin is checked before the token.
        let no_token = UpgradeRequest {
            origin: Some("https://evil.example.com".to_owned()),
            ..request("/")
        };
        assert_eq!(
            refused(auth.authenticate(&no_token, NOW)).1,
            AuthFailure::ForbiddenOrigin
        );
        // No allowlist: any origin, or none.
        assert!(
            hs256()
                .authenticate(&req(Some("https://evil.example.com")), NOW)
                .is_ok()
        );
    }

    #[test]
    fn rs256_and_es256_public_keys() {
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
        let both = [RSA_PUBLIC, b"\n", EC_PUBLIC].concat();
        let auth = with_pem(&both).unwrap();
        assert!(!auth.dev_mode());
        let token = sign(Algorithm::RS256, &rsa, &claims("rsa-user", &[]));
        assert_eq!(
            auth.authenticate(&with_bearer(&token), NOW)
                .unwrap()
                .user
                .as_deref(),
            Some("rsa-user")
        );
        let token = sign(Algorithm::ES256, &ec, &claims("ec-user", &[]));
        assert_eq!(
            auth.authenticate(&with_bearer(&token), NOW)
                .unwrap()
                .user
                .as_deref(),
            Some("ec-user")
        );
        // A key of the right type but not ours.
        let rsa_only = with_pem(RSA_PUBLIC).unwrap();
        let (_, reason, _) = refused(rsa_only.authenticate(&with_bearer(&token), NOW));
        assert_eq!(reason, AuthFailure::BadSignature);
        // A signature of one key type pasted onto a token claiming another.
        let rs_token = sign(Algorithm::RS256, &rsa, &claims("u", &[]));
        let es_token = sign(Algorithm::ES256, &ec, &claims("u", &[]));
        let swapped = with_signature(&es_token, rs_token.rsplit_once('.').unwrap().1);
        assert_eq!(
            refused(auth.authenticate(&with_bearer(&swapped), NOW)).1,
            AuthFailure::BadSignature
        );
        // Secret and public key together: HS256 still works.
        let auth =
            Authenticator::with_public_key_pem(&settings(), Some((Path::new("k.pem"), EC_PUBLIC)))
                .unwrap();
        assert!(
            auth.authenticate(&with_bearer(&hs_token(&claims("u", &[]))), NOW)
                .is_ok()
        );
        let token = sign(Algorithm::ES256, &ec, &claims("u", &[]));
        assert!(auth.authenticate(&with_bearer(&token), NOW).is_ok());
    }

    #[test]
    fn a_truncated_or_mismatched_block_is_refused_not_skipped() {
        let truncated = [EC_PUBLIC, b"-----BEGIN PUBLIC KEY-----\nAAAA\n"].concat();
        assert_eq!(
            with_pem(&truncated).unwrap_err().message,
            "--token-public-key keys.pem: PEM block 2: no -----END line"
        );
        let mismatched = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let message = with_pem(mismatched).unwrap_err().message;
        assert!(
            message.starts_with("--token-public-key keys.pem: malformed PEM: "),
            "{message}"
        );
    }

    #[test]
    fn bad_key_files_name_the_file_and_block() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"",
                "--token-public-key keys.pem: no PEM block found (expected -----BEGIN PUBLIC KEY-----)",
            ),
            (
                b"hello",
                "--token-public-key keys.pem: no PEM block found (expected -----BEGIN PUBLIC KEY-----)",
            ),
            (
                EC_PRIVATE,
                "--token-public-key keys.pem: PEM block 1 (PRIVATE KEY) is a private key; give the public key (openssl pkey -pubout)",
            ),
            (
                EC_P384_PUBLIC,
                "--token-public-key keys.pem: PEM block 1 (PUBLIC KEY): EC key is not on curve P-256 (only ES256 is supported)",
            ),
            (
                RSA_1024_PUBLIC,
                "--token-public-key keys.pem: PEM block 1 (PUBLIC KEY): RSA key has 1024 bits, at least 2048 are required",
            ),
            (
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "--token-public-key keys.pem: PEM block 1 (PUBLIC KEY): neither an RSA nor an EC public key",
            ),
        ];
        for (pem, want) in cases {
            assert_eq!(with_pem(pem).unwrap_err().message, want);
        }
        let both = [
            EC_PUBLIC,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ]
        .concat();
        assert_eq!(
            with_pem(&both).unwrap_err().message,
            "--token-public-key keys.pem: PEM block 2 (CERTIFICATE) is not a public key; give a PUBLIC KEY block (RSA or EC P-256)"
        );
        let missing = Authenticator::new(&AuthSettings {
            token_public_key: Some(PathBuf::from("/nonexistent/pingwheel-key.pem")),
            ..settings()
        })
        .unwrap_err();
        assert!(
            missing
                .message
                .starts_with("--token-public-key /nonexistent/pingwheel-key.pem: "),
            "{missing}"
        );
        let empty = Authenticator::new(&AuthSettings {
            token_secret: Some(Vec::new()),
            ..settings()
        });
        assert_eq!(empty.unwrap_err().message, "--token-secret is empty");
    }

    #[test]
    fn key_file_is_read_from_disk() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/test-only-ec-public.pem"
        );
        let auth = Authenticator::new(&AuthSettings {
            token_secret: None,
            token_public_key: Some(PathBuf::from(path)),
            ..settings()
        })
        .unwrap();
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
        let token = sign(Algorithm::ES256, &ec, &claims("u", &[]));
        assert!(auth.authenticate(&with_bearer(&token), NOW).is_ok());
    }

    #[test]
    fn url_since_subscribes_and_recovers() {
        let token = hs_token(&claims("u1", &["team:*"]));
        let with = |query: &str| UpgradeRequest {
            authorization: Some(format!("Bearer {token}")),
            ..request(query)
        };
        let admission = hs256()
            .authenticate(
                &with("/?channel=team:1&since=team%3Aa%3Ab:40:Xy3kP0aQ&since=%23user:0:"),
                NOW,
            )
            .unwrap();
        assert_eq!(
            admission.initial_channels,
            [Box::from("team:1"), Box::from("team:a:b")],
            "a since subscribes its channel; #user is no channel"
        );
        assert_eq!(
            &*admission.since,
            [
                (Box::from("team:a:b"), Since::new(40, "Xy3kP0aQ")),
                (Box::from("#user"), Since::new(0, "")),
            ]
        );
        let cases = [
            (
                "/?since=team:1",
                HandshakeFailure::BadRequest,
                "since must be CHANNEL:SEQ:EPOCH: team:1",
            ),
            (
                "/?since=team:1:x:Xy3kP0aQ",
                HandshakeFailure::BadRequest,
                "the seq in since must be a decimal number: team:1:x:Xy3kP0aQ",
            ),
            (
                "/?since=team:1:1:a&since=team:1:2:a",
                HandshakeFailure::BadRequest,
                "since for channel team:1 is given twice",
            ),
            (
                "/?since=admin:1:a",
                HandshakeFailure::Forbidden,
                "token does not grant channel admin",
            ),
        ];
        for (query, failure, message) in cases {
            let (got_failure, _, got) = refused(hs256().authenticate(&with(query), NOW));
            assert_eq!((got_failure, got.as_str()), (failure, message), "{query}");
        }
        // Dev mode without ?user= has no user stream to recover.
        let dev = Authenticator::new(&AuthSettings {
            token_secret: None,
            ..settings()
        })
        .unwrap();
        let (failure, _, message) = refused(dev.authenticate(&request("/?since=%23user:0:"), NOW));
        assert_eq!(failure, HandshakeFailure::Forbidden);
        assert!(message.starts_with("since=#user needs a user"), "{message}");
        assert!(
            dev.authenticate(&request("/?user=7&since=%23user:0:"), NOW)
                .is_ok()
        );
    }

    #[test]
    fn dev_mode_accepts_anyone() {
        let auth = Authenticator::new(&AuthSettings {
            token_secret: None,
            ..settings()
        })
        .unwrap();
        assert!(auth.dev_mode());
        let session = auth
            .authenticate(&request("/?channel=anything"), NOW)
            .unwrap();
        assert_eq!(session.user, None);
        assert_eq!(session.grant, ChannelGrant::Any);
        assert_eq!(session.initial_channels, [Box::from("anything")]);
        // Tokens are not checked in dev mode; ?user= names the connection.
        let req = UpgradeRequest {
            authorization: Some("Bearer junk".to_owned()),
            ..request("/?user=42")
        };
        assert_eq!(
            auth.authenticate(&req, NOW).unwrap().user.as_deref(),
            Some("42")
        );
        let (failure, reason, message) = refused(auth.authenticate(&request("/?user=a%0Ab"), NOW));
        assert_eq!(
            (failure, reason),
            (HandshakeFailure::BadRequest, AuthFailure::Malformed)
        );
        assert_eq!(message, "?user=: user id contains a control character");
        // Channel names are still checked.
        assert_eq!(
            refused(auth.authenticate(&request("/?channel=%23x"), NOW)).1,
            AuthFailure::ForbiddenChannel
        );
        // ?user= outside dev mode is ignored.
        let token = hs_token(&claims("real", &[]));
        let req = UpgradeRequest {
            target: "/?user=fake".to_owned(),
            ..with_bearer(&token)
        };
        assert_eq!(
            hs256().authenticate(&req, NOW).unwrap().user.as_deref(),
            Some("real")
        );
    }

    #[test]
    fn refusal_messages_never_contain_the_token() {
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"other"),
            &claims("u", &[]),
        );
        for req in [with_bearer(&token), request(&format!("/?token={token}"))] {
            let refusal = hs256().authenticate(&req, NOW).unwrap_err();
            assert!(!refusal.message.contains(&token[..20]));
            assert!(!refusal.to_string().contains(&token[..20]));
        }
    }

    #[test]
    fn api_key_check() {
        let key = Some(&b"k3y-0123456789"[..]);
        assert_eq!(
            check_api_key(key, false, Some("Bearer k3y-0123456789")),
            Ok(())
        );
        assert_eq!(
            check_api_key(key, false, Some("bearer   k3y-0123456789 ")),
            Ok(())
        );
        assert_eq!(
            check_api_key(key, false, Some("Bearer k3y-0123456780")),
            Err(ApiKeyRefusal::Wrong)
        );
        assert_eq!(
            check_api_key(key, false, Some("Bearer k3y")),
            Err(ApiKeyRefusal::Wrong)
        );
        assert_eq!(
            check_api_key(key, false, Some("Bearer ")),
            Err(ApiKeyRefusal::Wrong)
        );
        assert_eq!(check_api_key(key, false, None), Err(ApiKeyRefusal::Missing));
        assert_eq!(
            check_api_key(key, false, Some("Basic azNrk")),
            Err(ApiKeyRefusal::Missing)
        );
        // A configured key is enforced in dev mode too.
        assert_eq!(check_api_key(key, true, None), Err(ApiKeyRefusal::Missing));
        // No key: open only in dev mode.
        assert_eq!(check_api_key(None, true, None), Ok(()));
        assert_eq!(
            check_api_key(None, false, Some("Bearer anything")),
            Err(ApiKeyRefusal::Disabled)
        );
    }

    #[test]
    fn api_key_refusal_replies() {
        assert_eq!(ApiKeyRefusal::Missing.status(), 401);
        assert_eq!(ApiKeyRefusal::Wrong.www_authenticate(), Some("Bearer"));
        assert_eq!(ApiKeyRefusal::Disabled.status(), 403);
        assert_eq!(ApiKeyRefusal::Disabled.www_authenticate(), None);
        assert_eq!(
            ApiKeyRefusal::Wrong.to_json(),
            r#"{"error":"unauthorized","message":"wrong API key"}"#
        );
        assert_eq!(ApiKeyRefusal::Missing.reason(), Some(AuthFailure::Missing));
        assert_eq!(ApiKeyRefusal::Wrong.reason(), Some(AuthFailure::BadApiKey));
        assert_eq!(ApiKeyRefusal::Disabled.reason(), None);
    }

    #[test]
    fn bearer_credentials_parsing() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_credentials("Bearer"), Some(""));
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearerabc"), None);
    }

    #[test]
    fn admission_is_compact() {
        assert_eq!(std::mem::size_of::<ChannelGrant>(), 16);
        // 88: the boxed `since` list (empty and unallocated without `since=`).
        assert!(
            std::mem::size_of::<Admission>() <= 88,
            "{}",
            std::mem::size_of::<Admission>()
        );
    }

    #[test]
    fn authenticator_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
    }
}
