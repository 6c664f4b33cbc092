//! Per-namespace stream options (`[[namespace]]` in the config file), matched by the
//! longest prefix.
//!
//! ```toml
//! [[namespace]]
//! prefix = "chat:"
//! history_size = 100      # messages kept per channel; 0 = no history
//! history_ttl = "10m"     # each kept message expires after this
//! ```
//!
//! A channel takes the options of the longest configured `prefix` it starts with; the
//! empty prefix is the default namespace (built in: no history). The prefix `#user`
//! configures every user's personal stream instead (built in: [`USER_HISTORY_SIZE`]
//! messages for [`USER_HISTORY_TTL`], so a phone that drops for a minute still gets its
//! notifications); channel names never start with `#`, so it matches no channel, and
//! the default namespace does not apply to user streams.
//!
//! Pure data, resolved once at start-up.

use std::fmt;
use std::time::Duration;

use super::Stream;
use crate::push::channel::USER_CHANNEL;

/// Messages kept per user stream unless `#user` is configured.
pub const USER_HISTORY_SIZE: u32 = 16;
/// How long a user stream's messages are kept unless `#user` is configured.
pub const USER_HISTORY_TTL: Duration = Duration::from_secs(5 * 60);
/// The longest `history_ttl` accepted (a week): kept messages are timed in whole
/// seconds, and a bound keeps every deadline far from overflow.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The largest `history_size` accepted.
pub const MAX_HISTORY_SIZE: u32 = 1_000_000;

/// The options of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Channels starting with this belong here (`""`: the default; `#user`: user streams).
    pub prefix: Box<str>,
    /// Messages kept per stream; 0 keeps none (positions are still counted).
    pub history_size: u32,
    /// How long each kept message is kept, rounded up to whole seconds. Unused when
    /// `history_size` is 0.
    pub history_ttl: Duration,
}

impl Namespace {
    /// A namespace that keeps no history.
    pub fn without_history(prefix: &str) -> Namespace {
        Namespace {
            prefix: prefix.into(),
            history_size: 0,
            history_ttl: Duration::ZERO,
        }
    }

    /// Whether streams here keep messages.
    pub fn keeps_history(&self) -> bool {
        self.history_size > 0
    }

    /// The TTL in whole seconds, rounded up.
    pub fn ttl_secs(&self) -> u32 {
        let secs = self.history_ttl.as_secs() + u64::from(self.history_ttl.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// Names one namespace of a [`Namespaces`] (an index; stable for its lifetime).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceId(pub u16);

/// Why a namespace list was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceError {
    /// Two namespaces share a prefix.
    Duplicate(Box<str>),
    /// A prefix no channel name can start with (a forbidden byte, or `#` other than
    /// exactly `#user`).
    BadPrefix(Box<str>),
    /// `history_size` over [`MAX_HISTORY_SIZE`].
    SizeTooLarge(Box<str>),
    /// `history_size` > 0 with a zero `history_ttl`, or a TTL over [`MAX_HISTORY_TTL`].
    BadTtl(Box<str>),
    /// More namespaces than fit a [`NamespaceId`].
    TooMany,
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceError::Duplicate(p) => write!(f, "namespace prefix {p:?} is given twice"),
            NamespaceError::BadPrefix(p) => write!(
                f,
                "namespace prefix {p:?} cannot start a channel name (printable ASCII without space, '\"', '\\', '*', not starting with '#'; or exactly \"#user\")"
            ),
            NamespaceError::SizeTooLarge(p) => write!(
                f,
                "namespace {p:?}: history_size is over the limit of {MAX_HISTORY_SIZE}"
            ),
            NamespaceError::BadTtl(p) => write!(
                f,
                "namespace {p:?}: history_ttl must be more than 0 (when history_size is set) and at most 7 days"
            ),
            NamespaceError::TooMany => f.write_str("too many namespaces"),
        }
    }
}

impl std::error::Error for NamespaceError {}

/// Every namespace, ready for longest-prefix lookups.
///
/// Invariant: `list[0]` is the user namespace, `list[1]` the default channel namespace
/// (prefix `""`), and `channel_order` lists the channel namespaces by prefix length,
/// longest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespaces {
    list: Vec<Namespace>,
    channel_order: Vec<u16>,
}

impl Default for Namespaces {
    /// The built-in options: no channel history, a small per-user history.
    fn default() -> Self {
        Namespaces::new(Vec::new()).unwrap_or_else(|_| unreachable!("no namespaces is valid"))
    }
}

impl Namespaces {
    /// The configured namespaces over the built-in defaults.
    ///
    /// # Errors
    /// A duplicate or impossible prefix, or out-of-range options.
    pub fn new(configured: Vec<Namespace>) -> Result<Namespaces, NamespaceError> {
        let mut list = vec![
            Namespace {
                prefix: USER_CHANNEL.into(),
                history_size: USER_HISTORY_SIZE,
                history_ttl: USER_HISTORY_TTL,
            },
            Namespace::without_history(""),
        ];
        let mut seen: Vec<&str> = Vec::new();
        for ns in &configured {
            if seen.contains(&&*ns.prefix) {
                return Err(NamespaceError::Duplicate(ns.prefix.clone()));
            }
            seen.push(&ns.prefix);
            let prefix_ok = &*ns.prefix == USER_CHANNEL
                || ns.prefix.is_empty()
                || crate::push::channel::validate_channel_name(&ns.prefix, usize::MAX).is_ok();
            if !prefix_ok {
                return Err(NamespaceError::BadPrefix(ns.prefix.clone()));
            }
            if ns.history_size > MAX_HISTORY_SIZE {
                return Err(NamespaceError::SizeTooLarge(ns.prefix.clone()));
            }
            if (ns.keeps_history() && ns.history_ttl.is_zero()) || ns.history_ttl > MAX_HISTORY_TTL
            {
                return Err(NamespaceError::BadTtl(ns.prefix.clone()));
            }
        }
        for ns in configured {
            match &*ns.prefix {
                USER_CHANNEL => list[0] = ns,
                "" => list[1] = ns,
                _ => list.push(ns),
            }
        }
        if list.len() > usize::from(u16::MAX) {
            return Err(NamespaceError::TooMany);
        }
        let mut channel_order: Vec<u16> = (1..list.len() as u16).collect();
        channel_order.sort_by_key(|&i| std::cmp::Reverse(list[usize::from(i)].prefix.len()));
        Ok(Namespaces {
            list,
            channel_order,
        })
    }

    /// The namespace of `stream`: `#user` for user streams, the longest matching
    /// prefix for channels.
    pub fn resolve(&self, stream: Stream<'_>) -> NamespaceId {
        match stream {
            Stream::User(_) => NamespaceId(0),
            Stream::Channel(name) => {
                let id = self
                    .channel_order
                    .iter()
                    .copied()
                    .find(|&i| name.starts_with(&*self.list[usize::from(i)].prefix))
                    .unwrap_or(1);
                NamespaceId(id)
            }
        }
    }

    /// The options of `id`.
    ///
    /// # Panics
    /// If `id` is not from this list.
    pub fn get(&self, id: NamespaceId) -> &Namespace {
        &self.list[usize::from(id.0)]
    }

    /// The options of `stream` ([`Namespaces::resolve`] then [`Namespaces::get`]).
    pub fn of(&self, stream: Stream<'_>) -> &Namespace {
        self.get(self.resolve(stream))
    }

    /// Every namespace: the user streams', the default, then the configured prefixes.
    pub fn iter(&self) -> impl Iterator<Item = &Namespace> {
        self.list.iter()
    }

    /// Whether any namespace keeps history.
    pub fn any_history(&self) -> bool {
        self.list.iter().any(Namespace::keeps_history)
    }

    /// The longest TTL of any namespace that keeps history.
    pub fn longest_ttl(&self) -> Duration {
        self.list
            .iter()
            .filter(|ns| ns.keeps_history())
            .map(|ns| ns.history_ttl)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str, size: u32, ttl_secs: u64) -> Namespace {
        Namespace {
            prefix: prefix.into(),
            history_size: size,
            history_ttl: Duration::from_secs(ttl_secs),
        }
    }

    #[test]
    fn defaults_keep_user_history_only() {
        let n = Namespaces::default();
        assert_eq!(n.of(Stream::Channel("scores")).history_size, 0);
        assert_eq!(n.of(Stream::User("42")).history_size, USER_HISTORY_SIZE);
        assert_eq!(n.of(Stream::User("42")).history_ttl, USER_HISTORY_TTL);
        assert!(n.any_history());
        assert_eq!(n.longest_ttl(), USER_HISTORY_TTL);
    }

    #[test]
    fn longest_prefix_wins() {
        let n = Namespaces::new(vec![
            ns("chat:", 100, 600),
            ns("chat:vip:", 1000, 3600),
            ns("", 5, 60),
            ns("c", 1, 1),
            ns("#user", 0, 0),
        ])
        .unwrap();
        let size = |c| n.of(Stream::Channel(c)).history_size;
        assert_eq!(size("chat:1"), 100);
        assert_eq!(size("chat:vip:1"), 1000);
        assert_eq!(size("chat:vi"), 100);
        assert_eq!(size("cha"), 1);
        assert_eq!(size("scores"), 5);
        // `#user` configures user streams only; the default does not apply to them.
        assert_eq!(n.of(Stream::User("chat:1")).history_size, 0);
        assert_eq!(n.iter().count(), 5);
        assert_eq!(n.longest_ttl(), Duration::from_secs(3600));
    }

    #[test]
    fn ttl_rounds_up_to_seconds() {
        let mut n = ns("a", 1, 0);
        n.history_ttl = Duration::from_millis(1500);
        assert_eq!(n.ttl_secs(), 2);
        n.history_ttl = Duration::from_secs(3);
        assert_eq!(n.ttl_secs(), 3);
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                vec![ns("a", 1, 1), ns("a", 2, 2)],
                NamespaceError::Duplicate("a".into()),
            ),
            (vec![ns("#x", 1, 1)], NamespaceError::BadPrefix("#x".into())),
            (
                vec![ns("a b", 1, 1)],
                NamespaceError::BadPrefix("a b".into()),
            ),
            (vec![ns("a*", 1, 1)], NamespaceError::BadPrefix("a*".into())),
            (vec![ns("a", 1, 0)], NamespaceError::BadTtl("a".into())),
            (
                vec![ns("a", 1, 8 * 24 * 3600)],
                NamespaceError::BadTtl("a".into()),
            ),
            (
                vec![ns("a", MAX_HISTORY_SIZE + 1, 1)],
                NamespaceError::SizeTooLarge("a".into()),
            ),
        ];
        for (list, want) in cases {
            let got = Namespaces::new(list).unwrap_err();
            assert_eq!(got, want);
            assert!(!got.to_string().is_empty());
        }
        // No history needs no TTL.
        assert!(Namespaces::new(vec![ns("a", 0, 0)]).is_ok());
    }
}
