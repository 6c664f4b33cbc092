//! Channel names, the reserved per-user channel, and the channel patterns a token
//! may grant.
//!
//! # Channel name rules
//!
//! A channel name is 1 to `max_channel_name` bytes (default 128) of printable ASCII
//! (`0x21..=0x7E`) with three exceptions:
//!
//! * no `"` and no `\`, so a name is its own JSON string and needs no escaping;
//! * no `*`, the wildcard of [`ChannelGrant`] patterns, so a subscription can never be
//!   mistaken for a wildcard subscription (there are none);
//! * it must not start with `#`: that prefix is reserved for gateway-defined channels,
//!   of which there is one today, [`USER_CHANNEL`].
//!
//! Spaces and control characters are excluded by "printable ASCII". Names are
//! case-sensitive: `Scores` and `scores` are different channels.
//!
//! # Patterns
//!
//! A token's `channels` claim lists patterns; [`ChannelGrant::allows`] matches a name
//! against them:
//!
//! | pattern | matches |
//! |---|---|
//! | `*` | every channel |
//! | `team:*` (a prefix followed by one `*` at the end) | every channel that starts with `team:` |
//! | `scores` | exactly `scores` |
//!
//! A prefix must itself be a valid name prefix (same byte rules, no leading `#`); a `*`
//! anywhere but at the end is not a pattern.

use std::collections::HashSet;

/// The channel of per-user deliveries (`POST /v1/publish {"user": ..}`): every
/// connection authenticated as that user receives them under this channel name.
/// Clients never subscribe to it; it is implicit for an authenticated connection.
pub const USER_CHANNEL: &str = "#user";

/// The longest user id (a token's `sub`, or the `user` of a publish), in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Why a string is not a valid channel name (see the module docs for the rules).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("channel name is {len} bytes, the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// The name starts with the reserved `#`.
    #[error("channel names starting with '#' are reserved")]
    Reserved,
    /// The name contains a byte outside the allowed set.
    #[error("{}", forbidden_byte(*.index, *.byte))]
    InvalidByte {
        /// Byte offset of the first offending byte.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
}

/// The message of [`ChannelNameError::InvalidByte`]: the character itself when it is
/// printable, else its value and the allowed set.
fn forbidden_byte(index: usize, byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!(
            "channel name has a forbidden character '{}' at byte {index}",
            byte as char
        )
    } else {
        format!(
            "channel name has a forbidden byte 0x{byte:02x} at byte {index} (allowed: printable ASCII without space, '\"', '\\', '*')"
        )
    }
}

/// Whether `byte` may appear in a channel name (anywhere; `#` is only refused first).
const fn is_name_byte(byte: u8) -> bool {
    matches!(byte, 0x21..=0x7e) && byte != b'"' && byte != b'\\' && byte != b'*'
}

/// Checks `name` against the channel name rules in the module docs.
///
/// # Examples
///
/// ```
/// use pingwheel::push::channel::{validate_channel_name, ChannelNameError};
/// assert_eq!(validate_channel_name("team:7", 128), Ok(()));
/// assert_eq!(validate_channel_name("#user", 128), Err(ChannelNameError::Reserved));
/// ```
pub fn validate_channel_name(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    validate_name_bytes(name.as_bytes(), max_len, false)
}

/// The shared check behind names and pattern prefixes. A prefix may be empty (the
/// pattern `*`); a name may not.
fn validate_name_bytes(
    bytes: &[u8],
    max_len: usize,
    empty_ok: bool,
) -> Result<(), ChannelNameError> {
    if bytes.is_empty() && !empty_ok {
        return Err(ChannelNameError::Empty);
    }
    if bytes.len() > max_len {
        return Err(ChannelNameError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    if bytes.first() == Some(&b'#') {
        return Err(ChannelNameError::Reserved);
    }
    match bytes.iter().position(|&b| !is_name_byte(b)) {
        Some(index) => Err(ChannelNameError::InvalidByte {
            index,
            byte: bytes[index],
        }),
        None => Ok(()),
    }
}

/// Why a string is not a valid user id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The id is empty.
    #[error("user id is empty")]
    Empty,
    /// The id is longer than [`MAX_USER_ID_BYTES`].
    #[error("user id is {len} bytes, the limit is {max}", max = MAX_USER_ID_BYTES)]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id contains a control character (U+0000..U+001F or U+007F..U+009F).
    #[error("user id contains a control character")]
    ControlCharacter,
    /// The id contains a Unicode bidirectional control (see [`is_bidi_control`]), which
    /// would reorder the text around it wherever the id is shown (logs, dashboards).
    #[error(
        "user id contains a Unicode bidirectional control character (U+{:04X})",
        u32::from(*character)
    )]
    BidiControl {
        /// The offending character.
        character: char,
    },
}

/// Whether `c` is one of Unicode's bidirectional formatting controls: ALM (U+061C),
/// LRM and RLM (U+200E, U+200F), the embeddings and overrides LRE, RLE, PDF, LRO, RLO
/// (U+202A..U+202E) and the isolates LRI, RLI, FSI, PDI (U+2066..U+2069). Shown in a
/// log line or a dashboard, they reorder the text that follows ("Trojan Source").
pub const fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks a user id (a token's `sub`, a publish's `user`): 1 to [`MAX_USER_ID_BYTES`]
/// bytes of UTF-8 without control characters or bidirectional controls
/// ([`is_bidi_control`]). Any other character is allowed; ids are compared byte for
/// byte.
pub fn validate_user_id(user: &str) -> Result<(), UserIdError> {
    if user.is_empty() {
        return Err(UserIdError::Empty);
    }
    if user.len() > MAX_USER_ID_BYTES {
        return Err(UserIdError::TooLong { len: user.len() });
    }
    if user.chars().any(char::is_control) {
        return Err(UserIdError::ControlCharacter);
    }
    if let Some(character) = user.chars().find(|&c| is_bidi_control(c)) {
        return Err(UserIdError::BidiControl { character });
    }
    Ok(())
}

/// The set of channels a connection may subscribe to, from its token's `channels`
/// claim (see the module docs for the pattern syntax).
///
/// Kept compact because every connection holds one: [`ChannelGrant::Any`] is free,
/// and a pattern list is a single heap string with the patterns separated by one space
/// (a byte no pattern can contain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelGrant {
    /// Every channel (the pattern `*`, or dev mode).
    Any,
    /// Only channels matching one of these space-separated patterns. An empty string
    /// grants nothing (the client receives only its per-user deliveries).
    Patterns(Box<str>),
}

/// Why a pattern in a `channels` claim was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channels[{index}] is not a valid channel pattern: {problem}")]
pub struct PatternError {
    /// Position of the pattern in the claim list.
    pub index: usize,
    /// What is wrong with it.
    pub problem: ChannelNameError,
}

impl ChannelGrant {
    /// A grant of every channel.
    pub const fn any() -> ChannelGrant {
        ChannelGrant::Any
    }

    /// A grant of no channel at all.
    pub fn none() -> ChannelGrant {
        ChannelGrant::Patterns(Box::from(""))
    }

    /// Builds a grant from a claim's patterns, validating each. A list containing `*`
    /// collapses to [`ChannelGrant::Any`]; duplicate patterns are kept once.
    ///
    /// A pattern prefix obeys the same byte rules and `max_len` as a channel name.
    ///
    /// Linear in the total length of the patterns (duplicates are found with a hash
    /// set, not by rescanning the list): this runs on a worker's loop for every
    /// upgrade, so its cost per pattern must stay flat however long the claim is
    /// (`benches/benches/grant.rs`). The caller bounds the number of patterns.
    pub fn from_patterns<S: AsRef<str>>(
        patterns: &[S],
        max_len: usize,
    ) -> Result<ChannelGrant, PatternError> {
        let mut joined = String::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(patterns.len());
        let mut any = false;
        for (index, pattern) in patterns.iter().enumerate() {
            let pattern = pattern.as_ref();
            let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
            validate_name_bytes(prefix.as_bytes(), max_len, prefix.len() < pattern.len())
                .map_err(|problem| PatternError { index, problem })?;
            if pattern == "*" {
                any = true;
            } else if seen.insert(pattern) {
                if !joined.is_empty() {
                    joined.push(' ');
                }
                joined.push_str(pattern);
            }
        }
        if any {
            return Ok(ChannelGrant::Any);
        }
        debug_assert!(
            !joined.contains("  ") && !joined.starts_with(' '),
            "patterns={joined:?}"
        );
        Ok(ChannelGrant::Patterns(joined.into_boxed_str()))
    }

    /// Whether `channel` matches one of the granted patterns. The caller checks the
    /// name rules separately ([`validate_channel_name`]); a reserved name such as
    /// [`USER_CHANNEL`] is never granted by a pattern other than through `Any`.
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            ChannelGrant::Any => true,
            ChannelGrant::Patterns(patterns) => {
                !patterns.is_empty()
                    && patterns
                        .split(' ')
                        .any(|pattern| match pattern.strip_suffix('*') {
                            Some(prefix) => channel.starts_with(prefix),
                            None => channel == pattern,
                        })
            }
        }
    }

    /// The granted patterns, in claim order (`["*"]` for [`ChannelGrant::Any`]).
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        let patterns: &str = match self {
            ChannelGrant::Any => "*",
            ChannelGrant::Patterns(patterns) => patterns,
        };
        patterns.split(' ').filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in [
            "scores",
            "team:7",
            "a",
            "UPPER-lower_0.9~!$%&'()+,/:;<=>?@[]^`{|}",
            "x#y",
        ] {
            assert_eq!(validate_channel_name(name, 128), Ok(()), "{name:?}");
        }
        let longest = "a".repeat(128);
        assert_eq!(validate_channel_name(&longest, 128), Ok(()));
    }

    #[test]
    fn invalid_names() {
        let too_long = "a".repeat(129);
        let cases: &[(&str, ChannelNameError)] = &[
            ("", ChannelNameError::Empty),
            (&too_long, ChannelNameError::TooLong { len: 129, max: 128 }),
            ("#user", ChannelNameError::Reserved),
            ("#", ChannelNameError::Reserved),
            (
                "a b",
                ChannelNameError::InvalidByte {
                    index: 1,
                    byte: b' ',
                },
            ),
            (
                "a\"b",
                ChannelNameError::InvalidByte {
                    index: 1,
                    byte: b'"',
                },
            ),
            (
                "a\\b",
                ChannelNameError::InvalidByte {
                    index: 1,
                    byte: b'\\',
                },
            ),
            (
                "team:*",
                ChannelNameError::InvalidByte {
                    index: 5,
                    byte: b'*',
                },
            ),
            (
                "tab\t",
                ChannelNameError::InvalidByte {
                    index: 3,
                    byte: b'\t',
                },
            ),
            (
                "é",
                ChannelNameError::InvalidByte {
                    index: 0,
                    byte: 0xc3,
                },
            ),
            (
                "del\u{7f}",
                ChannelNameError::InvalidByte {
                    index: 3,
                    byte: 0x7f,
                },
            ),
        ];
        for (name, want) in cases {
            assert_eq!(validate_channel_name(name, 128), Err(*want), "{name:?}");
        }
    }

    #[test]
    fn name_error_messages_name_the_problem() {
        assert_eq!(
            ChannelNameError::InvalidByte {
                index: 1,
                byte: b'"'
            }
            .to_string(),
            "channel name has a forbidden character '\"' at byte 1"
        );
        assert_eq!(
            ChannelNameError::TooLong { len: 200, max: 128 }.to_string(),
            "channel name is 200 bytes, the limit is 128"
        );
        assert!(
            ChannelNameError::InvalidByte {
                index: 0,
                byte: b' '
            }
            .to_string()
            .contains("0x20")
        );
    }

    #[test]
    fn user_ids() {
        assert_eq!(validate_user_id("42"), Ok(()));
        assert_eq!(validate_user_id("Zoë Ünïcode 🙂"), Ok(()));
        assert_eq!(validate_user_id(""), Err(UserIdError::Empty));
        assert_eq!(validate_user_id("a\nb"), Err(UserIdError::ControlCharacter));
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
        ] {
            let id = format!("admin{c}txt.exe");
            assert_eq!(
                validate_user_id(&id),
                Err(UserIdError::BidiControl { character: c }),
                "{c:?}"
            );
        }
        assert_eq!(
            UserIdError::BidiControl {
                character: '\u{202E}'
            }
            .to_string(),
            "user id contains a Unicode bidirectional control character (U+202E)"
        );
        // Right-to-left text itself is fine; only the invisible controls are refused.
        assert_eq!(validate_user_id("\u{05E9}\u{05DC}\u{05D5}\u{05DD}"), Ok(()));
        assert!(!is_bidi_control('\u{2065}') && !is_bidi_control('\u{206A}'));
        assert!(!is_bidi_control('\u{2029}') && !is_bidi_control('\u{202F}'));
        let long = "u".repeat(MAX_USER_ID_BYTES + 1);
        assert_eq!(
            validate_user_id(&long),
            Err(UserIdError::TooLong { len: 257 })
        );
    }

    #[test]
    fn grant_exact() {
        let grant = ChannelGrant::from_patterns(&["scores"], 128).unwrap();
        assert!(grant.allows("scores"));
        assert!(!grant.allows("scores2"));
        assert!(!grant.allows("score"));
        assert!(!grant.allows("Scores"));
    }

    #[test]
    fn grant_prefix() {
        let grant = ChannelGrant::from_patterns(&["team:*", "scores"], 128).unwrap();
        assert!(grant.allows("team:7"));
        assert!(grant.allows("team:"));
        assert!(grant.allows("scores"));
        assert!(!grant.allows("team"));
        assert!(!grant.allows("teams:7"));
        assert!(!grant.allows("other"));
        assert_eq!(grant.patterns().collect::<Vec<_>>(), ["team:*", "scores"]);
    }

    #[test]
    fn grant_any() {
        assert_eq!(
            ChannelGrant::from_patterns(&["a", "*"], 128),
            Ok(ChannelGrant::Any)
        );
        assert!(ChannelGrant::any().allows("anything"));
        assert_eq!(ChannelGrant::any().patterns().collect::<Vec<_>>(), ["*"]);
    }

    #[test]
    fn grant_denied() {
        let none = ChannelGrant::from_patterns::<&str>(&[], 128).unwrap();
        assert_eq!(none, ChannelGrant::none());
        assert!(!none.allows("scores"));
        assert!(!none.allows(""));
        assert_eq!(none.patterns().count(), 0);
        let grant = ChannelGrant::from_patterns(&["a"], 128).unwrap();
        assert!(!grant.allows(""));
        assert!(!grant.allows(USER_CHANNEL));
    }

    #[test]
    fn grant_deduplicates() {
        let grant = ChannelGrant::from_patterns(&["a", "b*", "a", "b*"], 128).unwrap();
        assert_eq!(grant, ChannelGrant::Patterns("a b*".into()));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_index() {
        for (patterns, index) in [
            (&["ok", "a*b"][..], 1),
            (&["**"][..], 0),
            (&["#user"][..], 0),
            (&["#*"][..], 0),
            (&["x", "y", ""][..], 2),
            (&["a b"][..], 0),
        ] {
            let err = ChannelGrant::from_patterns(patterns, 128).unwrap_err();
            assert_eq!(err.index, index, "{patterns:?}");
        }
        let err = ChannelGrant::from_patterns(&["a*b"], 128).unwrap_err();
        assert_eq!(
            err.to_string(),
            "channels[0] is not a valid channel pattern: channel name has a forbidden character '*' at byte 1"
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// The pattern semantics, written the obvious way.
        fn model_allows(patterns: &[String], channel: &str) -> bool {
            patterns.iter().any(|p| {
                p == "*"
                    || p.strip_suffix('*')
                        .map_or(p == channel, |prefix| channel.starts_with(prefix))
            })
        }

        proptest! {
            #[test]
            fn grant_matches_the_model(
                patterns in proptest::collection::vec("[ab:]{0,3}\\*?", 0..5),
                channels in proptest::collection::vec("[ab:]{1,4}", 1..10),
            ) {
                match ChannelGrant::from_patterns(&patterns, 128) {
                    Ok(grant) => {
                        for channel in &channels {
                            prop_assert_eq!(grant.allows(channel), model_allows(&patterns, channel), "{:?} {}", patterns, channel);
                        }
                    }
                    // Only the empty pattern is invalid in this alphabet.
                    Err(err) => prop_assert!(patterns[err.index].is_empty()),
                }
            }

            #[test]
            fn name_validation_never_panics(name in "\\PC{0,200}") {
                if validate_channel_name(&name, 128).is_ok() {
                    prop_assert!(!name.is_empty() && name.len() <= 128 && !name.starts_with('#'));
                    prop_assert!(name.bytes().all(|b| (0x21..=0x7e).contains(&b) && !b"\"\\*".contains(&b)));
                }
            }
        }
    }
}
