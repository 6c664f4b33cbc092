//! The kinds of setting values: how each is read from text, the same way whether the text
//! is a flag, an environment variable or a value in the config file.
//!
//! A field of [`Config`](super::Config) names its kind twice, once for each reader:
//! `value_parser = Kind::parse` (clap) and `deserialize_with = "Kind::deserialize"`
//! (serde). Errors say what is expected; the caller adds the source (`invalid value '..'
//! for '--flag'`, `file: key: ..`, `VARIABLE: ..`).

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Error};
use toml::Value;

use super::Secret;

/// Longest duration any setting accepts; keeps `Instant + duration` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
const DURATION_EXPECTED: &str = "expected a number of seconds, '500ms', '20s', '2m', or '0'/'off'";
const FIXED_DURATION_EXPECTED: &str =
    "expected a number of seconds, '500ms', '20s' or '2m' (this setting cannot be 'off')";
const SIZE_EXPECTED: &str =
    "expected a number of bytes, or a size such as '64KiB', '1MiB', '16MiB', '1GiB' (or KB/MB/GB)";

/// One kind of setting value.
pub trait Kind {
    /// What the setting holds.
    type Value;

    /// Reads the text of a flag, a variable or a file value; the error says what is
    /// expected, not where the text came from.
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// Reads a config-file value: a string as [`Kind::parse`] reads it, a number or
    /// boolean as its TOML spelling (`20` is read as "20").
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self::Value, D::Error> {
        let text = match Value::deserialize(d)? {
            Value::String(s) => s,
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => return Err(found(&other, "a string or a number")),
        };
        Self::parse(&text).map_err(|m| D::Error::custom(format!("invalid value '{text}': {m}")))
    }
}

/// "expected <what>, found <the TOML type of `value`>".
fn found<E: Error>(value: &Value, what: &str) -> E {
    E::custom(format!("expected {what}, found {}", value.type_str()))
}

/// Declares a kind: `Name: Value = |text| <parse>`.
macro_rules! kind {
    ($(#[$doc:meta])* $name:ident: $value:ty = |$text:ident| $parse:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl Kind for $name {
            type Value = $value;
            fn parse($text: &str) -> Result<$value, String> {
                $parse
            }
        }
    };
}

kind!(
    /// A socket address: `0.0.0.0:8080`, `127.0.0.1:0`, `[::]:8080`.
    Addr: SocketAddr = |s| s.trim().parse().map_err(|_| {
        "expected an IP address and port, such as '0.0.0.0:8080', '127.0.0.1:0' or '[::]:8080'"
            .to_owned()
    })
);

kind!(
    /// Worker threads: `auto` (one per CPU core) or a whole number, at least 1.
    Workers: NonZeroUsize = |s| match s.trim() {
        auto if auto.eq_ignore_ascii_case("auto") => {
            Ok(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
        }
        n => match n.parse::<usize>() {
            Ok(n) => NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_owned()),
            Err(_) => Err("expected a whole number of threads, at least 1, or 'auto'".to_owned()),
        },
    }
);

kind!(
    /// A duration that `0` or `off` switches off (`None`).
    Switchable: Option<Duration> = |s| {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let duration = duration(s, DURATION_EXPECTED)?;
        Ok((!duration.is_zero()).then_some(duration))
    }
);

kind!(
    /// A duration that cannot be off (`0` is zero).
    Fixed: Duration = |s| duration(s, FIXED_DURATION_EXPECTED)
);

kind!(
    /// A duration that must be more than 0 (a time limit that cannot be off).
    Positive: Duration = |s| match Fixed::parse(s)? {
        Duration::ZERO => Err("must be more than 0".to_owned()),
        limit => Ok(limit),
    }
);

kind!(
    /// The timer-wheel tick: 1 ms ..= 1 s, so a timer is never more than a second late.
    TickLength: Duration = |s| match Fixed::parse(s)? {
        tick if (Duration::from_millis(1)..=Duration::from_secs(1)).contains(&tick) => Ok(tick),
        _ => Err("must be between 1ms and 1s".to_owned()),
    }
);

kind!(
    /// The cap on the ping slack: 0 ..= 1 s.
    PingSlack: Duration = |s| match Fixed::parse(s)? {
        cap if cap <= crate::conn::keepalive::MAX_PING_SLACK => Ok(cap),
        _ => Err("must be between 0 and 1s".to_owned()),
    }
);

kind!(
    /// `true`/`on`/`yes`/`1` or `false`/`off`/`no`/`0`.
    Bool: bool = |s| match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err("expected 'true' or 'false'".to_owned()),
    }
);

kind!(
    /// A `tracing` level or `EnvFilter` directive.
    LogFilter: String = |s| {
        let expected = "expected a level (error, warn, info, debug, trace) or an EnvFilter directive";
        match tracing_subscriber::EnvFilter::try_new(s.trim()) {
            _ if s.trim().is_empty() => Err(expected.to_owned()),
            Ok(_) => Ok(s.trim().to_owned()),
            Err(err) => Err(format!("{expected}: {err}")),
        }
    }
);

kind!(
    /// A file path (not checked for existence here).
    FilePath: PathBuf = |s| match s {
        "" => Err("expected a file path".to_owned()),
        path => Ok(PathBuf::from(path)),
    }
);

kind!(
    /// An `Origin` header value as browsers send it: `scheme://host[:port]`, no path.
    Origin: String = |s| match s.trim() {
        o if o.is_empty() || o.contains(char::is_whitespace) => {
            Err("expected an origin such as 'https://example.com'".to_owned())
        }
        o if o.ends_with('/') => Err(
            "an origin has no path or trailing '/': browsers send 'https://example.com'".to_owned(),
        ),
        o => Ok(o.to_owned()),
    }
);

kind!(
    /// `--engine`: `memory` or `redis`.
    EngineChoice: super::EngineKind = |s| match s.trim() {
        "memory" => Ok(super::EngineKind::Memory),
        "redis" => Ok(super::EngineKind::Redis),
        _ => Err("expected 'memory' or 'redis'".to_owned()),
    }
);

kind!(
    /// A Redis URL: `redis://HOST:PORT[/DB]`, with an optional `:PASSWORD@` (or
    /// `rediss://` for TLS is refused: this build has no TLS for Redis).
    RedisUrlKind: super::RedisUrl = |s| {
        let s = s.trim();
        if !s.starts_with("redis://") {
            return Err("expected a URL such as 'redis://127.0.0.1:6379' or 'redis://host:6379/2'".to_owned());
        }
        match redis::Client::open(s) {
            Ok(_) => Ok(super::RedisUrl(s.to_owned())),
            Err(e) => Err(format!("not a Redis URL: {e}")),
        }
    }
);

kind!(
    /// A node name: 1 to 64 printable ASCII characters without spaces.
    NodeName: String = |s| {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            Err("expected 1 to 64 printable ASCII characters without spaces".to_owned())
        } else {
            Ok(s.to_owned())
        }
    }
);

/// A duration of at most a day, in the shared grammar (`pingwheel-units`).
fn duration(s: &str, expected: &str) -> Result<Duration, String> {
    match pingwheel_units::parse_duration(s) {
        Ok(duration) if duration > MAX_DURATION => Err("must be at most 24h".to_owned()),
        Ok(duration) => Ok(duration),
        Err(_) => Err(expected.to_owned()),
    }
}

/// A whole number of type `T`, at least `MIN`.
pub struct Whole<T, const MIN: u64>(PhantomData<T>);

impl<T: FromStr + PartialOrd + TryFrom<u64>, const MIN: u64> Kind for Whole<T, MIN> {
    type Value = T;
    fn parse(s: &str) -> Result<T, String> {
        let n: T = s.trim().parse().map_err(|_| match MIN {
            0 => "expected a whole number".to_owned(),
            _ => format!("expected a whole number, at least {MIN}"),
        })?;
        match T::try_from(MIN) {
            Ok(min) if n < min => Err(format!("must be at least {MIN}")),
            _ => Ok(n),
        }
    }
}

/// A size in bytes, at least `MIN`, in the shared grammar (`pingwheel-units`).
pub struct Size<const MIN: usize>;

impl<const MIN: usize> Kind for Size<MIN> {
    type Value = usize;
    fn parse(s: &str) -> Result<usize, String> {
        let bytes = pingwheel_units::parse_size(s).map_err(|e| match e.kind() {
            pingwheel_units::ErrorKind::TooLarge => "too large".to_owned(),
            _ => SIZE_EXPECTED.to_owned(),
        })?;
        match usize::try_from(bytes) {
            Ok(bytes) if bytes < MIN => Err(format!("must be at least {MIN} bytes")),
            Ok(bytes) => Ok(bytes),
            Err(_) => Err("too large".to_owned()),
        }
    }
}

/// A non-empty secret. Its errors never quote the value, and a file must hold it as a
/// string.
pub struct SecretText;

impl Kind for SecretText {
    type Value = Secret;
    fn parse(s: &str) -> Result<Secret, String> {
        match s {
            "" => Err("must not be empty".to_owned()),
            secret => Ok(Secret::new(secret)),
        }
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Self::parse(&text).map_err(D::Error::custom),
            other => Err(found(&other, "a string")),
        }
    }
}

/// A setting without a default: a file value is `Some`.
pub struct Opt<K>(PhantomData<K>);

impl<K: Kind> Opt<K> {
    /// Reads the file value as `K` does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<K::Value>, D::Error> {
        K::deserialize(d).map(Some)
    }
}

/// A repeatable flag: in the file, an array of strings (a single string is a one-item
/// list).
pub struct List<K>(PhantomData<K>);

impl<K: Kind> List<K> {
    /// Reads each item as `K` does, naming the item in errors.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<K::Value>, D::Error> {
        let items = match Value::deserialize(d)? {
            Value::Array(items) => items,
            single @ Value::String(_) => vec![single],
            other => return Err(found(&other, "an array of strings")),
        };
        let item = |(i, item): (usize, Value)| match item {
            Value::String(text) => K::parse(&text)
                .map_err(|m| D::Error::custom(format!("item {i}: invalid value '{text}': {m}"))),
            other => Err(D::Error::custom(format!(
                "item {i}: expected a string, found {}",
                other.type_str()
            ))),
        };
        items.into_iter().enumerate().map(item).collect()
    }
}

/// The `[[namespace]]` tables: `prefix` (required), `history_size` (default 0) and
/// `history_ttl` (a duration, at most 7 days; required when `history_size` is set),
/// checked together (duplicate prefixes and the rest of
/// [`Namespaces::new`](crate::engine::namespace::Namespaces::new)).
pub fn namespaces<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::engine::namespace::Namespace>, D::Error> {
    use crate::engine::namespace::{MAX_HISTORY_TTL, Namespace, Namespaces};

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        prefix: String,
        #[serde(default)]
        history_size: u32,
        #[serde(default)]
        history_ttl: Option<Value>,
    }
    let tables = match Value::deserialize(d)? {
        Value::Array(items) => items,
        other => return Err(found(&other, "[[namespace]] tables")),
    };
    let mut list = Vec::with_capacity(tables.len());
    for (i, table) in tables.into_iter().enumerate() {
        let table: Table = table.try_into().map_err(|e: toml::de::Error| {
            D::Error::custom(format!("[[namespace]] {i}: {}", e.message().trim_end()))
        })?;
        let ttl = match table.history_ttl {
            None => Duration::ZERO,
            Some(value) => {
                let text = match value {
                    Value::String(s) => s,
                    Value::Integer(n) => n.to_string(),
                    Value::Float(f) => f.to_string(),
                    other => return Err(found(&other, "a duration such as '10m'")),
                };
                match pingwheel_units::parse_duration(&text) {
                    Ok(ttl) if ttl <= MAX_HISTORY_TTL => ttl,
                    Ok(_) => {
                        return Err(D::Error::custom(format!(
                            "[[namespace]] {i}: history_ttl '{text}' is over 7 days"
                        )));
                    }
                    Err(_) => {
                        return Err(D::Error::custom(format!(
                            "[[namespace]] {i}: invalid history_ttl '{text}': {FIXED_DURATION_EXPECTED}"
                        )));
                    }
                }
            }
        };
        list.push(Namespace {
            prefix: table.prefix.into(),
            history_size: table.history_size,
            history_ttl: ttl,
        });
    }
    Namespaces::new(list.clone()).map_err(|e| D::Error::custom(e.to_string()))?;
    Ok(list)
}
