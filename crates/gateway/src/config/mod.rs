//! Configuration: every setting written once, in [`Config`], which is at the same time
//! the command line (clap), the `--config` TOML file (serde) and the resolved settings.
//!
//! # Precedence
//!
//! For every setting the first source that has it wins:
//!
//! 1. a command-line flag (`--ping-interval 30s`),
//! 2. an environment variable — only `PINGWHEEL_TOKEN_SECRET` and `PINGWHEEL_API_KEY`,
//! 3. the `--config` TOML file (keys are the field names: `ping_interval`),
//! 4. the embedded default (clap's `default_value`; [`Config::default`]).
//!
//! [`Config::load_with_env`] is the one place that layers them. Running with no arguments
//! at all works: every setting has a default or is optional.
//!
//! # Adding a setting
//!
//! Add one field to [`Config`]: its doc comment is the `--help` text and the comment
//! `--print-config` prints; `#[arg(..)]` gives the flag, its default and its parser (a
//! kind from `config/kinds.rs`); `#[serde(deserialize_with = "<Kind>::deserialize")]`
//! reads the file key with the same parser; `env = "PINGWHEEL_..."` in `#[arg(..)]` adds an
//! environment variable (the loader reads every one it finds there). Then hand the
//! setting to its part in `config/parts.rs`
//! (the one place that builds each part's settings) and regenerate
//! `deploy/pingwheel.toml` (`pingwheel --print-config > deploy/pingwheel.toml`).
//!
//! # Value syntax
//!
//! * **Durations** (the grammar of `pingwheel-units`, shared with the load-test harness):
//!   `20` (seconds), `20s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`; at most one day.
//!   Settings that can be switched off (`--ping-interval`, `--ping-timeout`,
//!   `--open-timeout`) also take `0` or `off`.
//! * **Sizes**: `1048576` (bytes), `64KiB`, `1MiB`, `16MiB`, `1GiB` (powers of 1024), or
//!   `64KB`, `1MB`, `1GB` (powers of 1000), or `512B`. Units are case-insensitive.
//! * In the TOML file, every value may be a string, as on the command line (`"20s"`,
//!   `"1MiB"`), or a number or boolean, read as its TOML spelling (`20` → 20 seconds or
//!   20 bytes; `0.005` → 5 ms).
//!
//! # Errors
//!
//! A bad flag is reported by clap and names the flag
//! (`invalid value '20x' for '--ping-interval <DURATION>': expected ...`); a bad file value
//! names the file and the key (`config.toml: ping_interval: invalid value '20x': ...`), a
//! bad variable its name (`PINGWHEEL_API_KEY: must not be empty`); unknown keys in the file
//! are errors. [`ConfigError::exit`] prints any of them the way clap does and exits (also
//! for `--help` and `--version`, which clap reports as "errors").
//!
//! Secrets ([`Secret`]) never appear in `Debug` output, error messages or `--print-config`.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::engine::namespace::Namespace;

use self::kinds::{
    Addr, Bool, EngineChoice, FilePath, Fixed, Kind, List, LogFilter, NodeName, Opt, Origin,
    PingSlack, Positive, RedisUrlKind, SecretText, Size, Switchable, TickLength, Whole, Workers,
};

mod kinds;
mod parts;
mod print;

pub use self::print::default_toml;

/// Environment variable holding the HS256 secret for client JWTs (`--token-secret`).
pub const ENV_TOKEN_SECRET: &str = "PINGWHEEL_TOKEN_SECRET";
/// Environment variable holding the publish-API key (`--api-key`).
pub const ENV_API_KEY: &str = "PINGWHEEL_API_KEY";

/// Flags that are not settings: no file key, not printed by `--print-config`.
const COMMAND_LINE_ONLY: [&str; 2] = ["config_file", "print_config"];

/// The configuration of one gateway process: its command line, its config file's schema
/// and, once loaded, the resolved settings.
///
/// Build it with [`Config::load`] (real command line and environment),
/// [`Config::load_from`] (given arguments, real environment), or [`Config::default`]
/// (embedded defaults, handy in tests). Each part of the gateway gets its own settings
/// from it: [`Config::conn`], [`Config::worker`], [`Config::push_limits`],
/// [`Config::auth`].
#[derive(Clone, Debug, PartialEq, Eq, Parser, Deserialize)]
#[command(
    name = "pingwheel",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = "Precedence: flag > environment variable > --config file > default.\n\
                  Durations: 20 (seconds), 20s, 1.5s, 500ms, 250us, 2m, 1h.\n\
                  Sizes: 1048576 (bytes), 64KiB, 1MiB, 1GiB; KB/MB/GB are powers of 1000.\n\
                  Signals: SIGTERM or SIGINT drains (Close 1001 to every client, up to \
                  --drain-timeout) and exits 0; a second one exits at once with status 1. \
                  SIGHUP reloads the TLS certificate and key files.\n\
                  Details: docs/operations.md; every setting: pingwheel --print-config."
)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TOML file with settings; keys are the flag names with underscores
    /// (ping_interval = "20s"). Flags and environment variables override it.
    #[arg(long = "config", value_name = "FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,

    /// Print every setting with its default as a commented TOML file (the gateway reads
    /// it back with --config) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// WebSocket listener address; port 0 picks any free port.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080", value_parser = Addr::parse)]
    #[serde(deserialize_with = "Addr::deserialize")]
    pub listen: SocketAddr,

    /// Admin HTTP listener address (/metrics, /healthz, publish API).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090", value_parser = Addr::parse)]
    #[serde(deserialize_with = "Addr::deserialize")]
    pub admin_listen: SocketAddr,

    /// An admin (publish API) request body must arrive completely within this of the
    /// request head, else 408 and the connection is closed; more than 0.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Positive::parse)]
    #[serde(deserialize_with = "Positive::deserialize")]
    pub admin_body_timeout: Duration,

    /// Event-loop threads, one mio loop each; 'auto' is one per CPU core.
    /// [default: number of CPU cores]
    #[arg(long, value_name = "N", default_value = "auto", hide_default_value = true,
          value_parser = Workers::parse)]
    #[serde(deserialize_with = "Workers::deserialize")]
    pub workers: NonZeroUsize,

    /// Keepalive ping period; '0' or 'off' disables pings. Pings are batched: each may
    /// go out up to min(interval/20, --max-ping-slack) late.
    // `std::option::Option` spelled out: clap then parses 'off' to `None` instead of
    // treating the flag as optional.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = Switchable::parse)]
    #[serde(deserialize_with = "Switchable::deserialize")]
    pub ping_interval: std::option::Option<Duration>,

    /// Close with 1011 when no pong arrives within this of a ping; '0' or 'off' waits
    /// forever.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = Switchable::parse)]
    #[serde(deserialize_with = "Switchable::deserialize")]
    pub ping_timeout: std::option::Option<Duration>,

    /// The most a ping may go out late (0..=1s): each goes out up to
    /// min(ping_interval/20, this) late, so the pings due within one window share a
    /// wake-up. '0' sends each ping in its own tick: a shorter delivery-latency tail
    /// while pings are due, for a little more keepalive CPU.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = PingSlack::parse)]
    #[serde(deserialize_with = "PingSlack::deserialize")]
    pub max_ping_slack: Duration,

    /// The HTTP upgrade must complete within this of the TCP accept; '0' or 'off' waits
    /// forever.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Switchable::parse)]
    #[serde(deserialize_with = "Switchable::deserialize")]
    pub open_timeout: std::option::Option<Duration>,

    /// Time limit for a closing handshake before the socket is dropped.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Fixed::parse)]
    #[serde(deserialize_with = "Fixed::deserialize")]
    pub close_timeout: Duration,

    /// On SIGTERM/SIGINT: how long to wait for closing handshakes before exiting 0 (a
    /// second signal exits at once with status 1).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = Fixed::parse)]
    #[serde(deserialize_with = "Fixed::deserialize")]
    pub drain_timeout: Duration,

    /// Largest accepted message; larger closes with 1009. At least 125 (a control frame).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = Size::<125>::parse)]
    #[serde(deserialize_with = "Size::<125>::deserialize")]
    pub max_message_size: usize,

    /// Bound on one connection's unsent output. At least 1024 (a close frame and a pong).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = Size::<1024>::parse)]
    #[serde(deserialize_with = "Size::<1024>::deserialize")]
    pub max_queued_bytes: usize,

    /// Largest accepted HTTP upgrade request head; larger gets 431, as does a head of
    /// more than 64 header fields (a fixed limit), the body saying which.
    #[arg(long, value_name = "BYTES", default_value = "8KiB", value_parser = Size::<1>::parse)]
    #[serde(deserialize_with = "Size::<1>::deserialize")]
    pub max_handshake_size: usize,

    /// Echo every data message back to its sender ('--echo=false' overrides the file).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "off", action = clap::ArgAction::Set,
          value_parser = Bool::parse)]
    #[serde(deserialize_with = "Bool::deserialize")]
    pub echo: bool,

    /// Timer-wheel tick, 1ms..=1s; timers fire at most one tick late.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = TickLength::parse)]
    #[serde(deserialize_with = "TickLength::deserialize")]
    pub tick: Duration,

    /// Listen backlog per worker socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, value_name = "N", default_value = "4096", value_parser = Whole::<u32, 0>::parse)]
    #[serde(deserialize_with = "Whole::<u32, 0>::deserialize")]
    pub backlog: u32,

    /// Log filter: error, warn, info, debug, trace, or an EnvFilter directive such as
    /// 'info,pingwheel::worker=debug'.
    #[arg(long, value_name = "FILTER", default_value = "info", value_parser = LogFilter::parse)]
    #[serde(deserialize_with = "LogFilter::deserialize")]
    pub log_level: String,

    /// PEM certificate chain (leaf first) for the WebSocket listener: with --tls-key it
    /// serves wss:// (TLS 1.2 and 1.3, ALPN http/1.1); SIGHUP reloads both files.
    /// [default: none, plain ws://]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse,
          help_heading = "TLS")]
    #[serde(deserialize_with = "Opt::<FilePath>::deserialize")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (RSA, ECDSA P-256 or Ed25519) of --tls-cert. [default: none]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse,
          help_heading = "TLS")]
    #[serde(deserialize_with = "Opt::<FilePath>::deserialize")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate chain for the admin listener: with --admin-tls-key it serves
    /// https://; SIGHUP reloads both files. [default: none, plain http://]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse,
          help_heading = "TLS")]
    #[serde(deserialize_with = "Opt::<FilePath>::deserialize")]
    pub admin_tls_cert: Option<PathBuf>,

    /// PEM private key of --admin-tls-cert. [default: none]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse,
          help_heading = "TLS")]
    #[serde(deserialize_with = "Opt::<FilePath>::deserialize")]
    pub admin_tls_key: Option<PathBuf>,

    /// HS256 secret for client JWTs. Without this or --token-public-key the gateway runs
    /// in an insecure dev mode (anonymous clients, any channel). [default: none]
    #[arg(long, value_name = "SECRET", env = ENV_TOKEN_SECRET, hide_env_values = true,
          value_parser = SecretText::parse, help_heading = "Push")]
    #[serde(deserialize_with = "Opt::<SecretText>::deserialize")]
    pub token_secret: Option<Secret>,

    /// PEM public key file (RS256 or ES256) for client JWTs. [default: none]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "Push")]
    #[serde(deserialize_with = "Opt::<FilePath>::deserialize")]
    pub token_public_key: Option<PathBuf>,

    /// Key for the publish API (Authorization: Bearer <KEY>). Without it, and in dev mode,
    /// the publish API is open. [default: none]
    #[arg(long, value_name = "KEY", env = ENV_API_KEY, hide_env_values = true,
          value_parser = SecretText::parse, help_heading = "Push")]
    #[serde(deserialize_with = "Opt::<SecretText>::deserialize")]
    pub api_key: Option<Secret>,

    /// Allowed Origin of WebSocket clients; repeat the flag (or list them in the file) for
    /// several. [default: any origin]
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_parser = Origin::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "List::<Origin>::deserialize")]
    pub allowed_origins: Vec<String>,

    /// Most channels one connection may subscribe to.
    #[arg(long, value_name = "N", default_value = "64", value_parser = Whole::<usize, 0>::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "Whole::<usize, 0>::deserialize")]
    pub max_subscriptions: usize,

    /// Longest channel name in bytes.
    #[arg(long, value_name = "BYTES", default_value = "128", value_parser = Size::<1>::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "Size::<1>::deserialize")]
    pub max_channel_name: usize,

    /// Client messages per second per connection (burst of the same size).
    #[arg(long, value_name = "N", default_value = "50", value_parser = Whole::<u32, 1>::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "Whole::<u32, 1>::deserialize")]
    pub max_inbound_rate: u32,

    /// Largest publish-API request body; larger gets 413.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = Size::<1>::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "Size::<1>::deserialize")]
    pub max_publish_body: usize,

    /// Most patterns a client token's `channels` claim may list; more is refused with 401.
    #[arg(long, value_name = "N", default_value = "256", value_parser = Whole::<usize, 0>::parse,
          help_heading = "Push")]
    #[serde(deserialize_with = "Whole::<usize, 0>::deserialize")]
    pub max_token_channels: usize,

    /// Bound on all kept history (frames, their index and per-channel state); at the
    /// bound idle channel state goes first, then the oldest messages, and a channel that
    /// loses messages it still had to keep starts a new epoch. At least 1MiB.
    #[arg(long, value_name = "BYTES", default_value = "256MiB",
          value_parser = Size::<{ 1 << 20 }>::parse, help_heading = "History")]
    #[serde(deserialize_with = "Size::<{ 1 << 20 }>::deserialize")]
    pub history_max_bytes: usize,

    /// Most messages one recovery (a subscribe with since) hands out; more missing
    /// answers recovered:false.
    #[arg(long, value_name = "N", default_value = "300", value_parser = Whole::<u64, 0>::parse,
          help_heading = "History")]
    #[serde(deserialize_with = "Whole::<u64, 0>::deserialize")]
    pub recovery_max: u64,

    /// A channel's (or user stream's) position is forgotten this long after its last
    /// publish once it has no subscriber here and no kept message; it then starts a new
    /// epoch.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = Fixed::parse,
          help_heading = "History")]
    #[serde(deserialize_with = "Fixed::deserialize")]
    pub channel_idle_forget: Duration,

    /// History per namespace: `[[namespace]]` tables in the file only (prefix,
    /// history_size, history_ttl), matched by the longest prefix. Validated as a whole.
    #[arg(skip)]
    #[serde(rename = "namespace", deserialize_with = "kinds::namespaces")]
    pub namespaces: Vec<Namespace>,
    /// Where positions, history and fan-out between nodes live: 'memory' (this process
    /// alone) or 'redis' (many nodes sharing --redis-url).
    #[arg(long, value_name = "ENGINE", default_value = "memory", value_parser = EngineChoice::parse,
          help_heading = "Engine")]
    #[serde(deserialize_with = "EngineChoice::deserialize")]
    pub engine: EngineKind,

    /// A Redis instance for --engine redis: redis://HOST:PORT[/DB], optionally
    /// redis://:PASSWORD@HOST:PORT. Repeat for several: streams are spread over them by a
    /// stable hash of their name, so give every node the same list in the same order.
    /// [default: none]
    #[arg(long = "redis-url", value_name = "URL", value_parser = RedisUrlKind::parse,
          help_heading = "Engine")]
    #[serde(deserialize_with = "List::<RedisUrlKind>::deserialize")]
    pub redis_urls: Vec<RedisUrl>,

    /// This node's name in logs, heartbeats and GET /v1/nodes.
    /// [default: the host name and a random suffix]
    #[arg(long, value_name = "NAME", value_parser = NodeName::parse, help_heading = "Engine")]
    #[serde(deserialize_with = "Opt::<NodeName>::deserialize")]
    pub node_name: Option<String>,

    /// A Redis call (a publish's scripts, a read) must answer within this, else it fails
    /// (a publish answers 503) and the connection is probed at once.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = Positive::parse,
          help_heading = "Engine")]
    #[serde(deserialize_with = "Positive::deserialize")]
    pub redis_timeout: Duration,
}

/// `--engine`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Positions, history and fan-out in this process alone.
    Memory,
    /// Many nodes over Redis (`--redis-url`).
    Redis,
}

/// A `--redis-url`. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RedisUrl({})",
            crate::engine::redis::instance::redact(&self.0)
        )
    }
}

impl Default for Config {
    /// The embedded defaults (clap's `default_value`s), exactly what running `pingwheel`
    /// with no arguments gives when neither `PINGWHEEL_TOKEN_SECRET` nor
    /// `PINGWHEEL_API_KEY` is set.
    fn default() -> Self {
        let matches = quiet_command()
            .try_get_matches_from(["pingwheel"])
            .expect("no arguments always parse");
        Config::from_arg_matches(&matches).expect("the embedded defaults are valid")
    }
}

/// A secret string (JWT secret, API key) that is never printed.
///
/// `Debug` shows `Secret(<redacted>)`; there is no `Display`. Comparison (`==` and
/// [`Secret::matches`]) runs in time independent of where the inputs differ, so it is safe
/// for checking a presented API key.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value. Configuration parsing rejects empty secrets; this does not.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a JWT library. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` equals the secret, compared in constant time (only the length
    /// can leak).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.0.as_bytes())
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A command-line problem as clap reports it: a bad flag or value, or `--help` /
    /// `--version`, which are not failures but must end the program. Call
    /// [`ConfigError::exit`] (or `clap::Error::exit`) to print it the way clap does.
    #[error("{}", clap_message(.0))]
    Cli(#[source] clap::Error),
    /// The `--config` file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    ReadFile {
        /// The file as given on the command line.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, has an unknown key, or holds a bad value.
    #[error("{path}: {}{message}", key.as_ref().map_or(String::new(), |k| format!("{k}: ")))]
    File {
        /// The file as given on the command line.
        path: PathBuf,
        /// The offending key, when the problem is one key's value.
        key: Option<String>,
        /// What is wrong (for syntax errors and unknown keys: with line and column).
        message: String,
    },
    /// An environment variable holds a bad value.
    #[error("{var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong (never the value itself: these hold secrets).
        message: String,
    },
}

/// clap's rendering without its leading "error: " and trailing newline, so callers can
/// prefix it as they like.
fn clap_message(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let trimmed = rendered.trim_end();
    trimmed
        .strip_prefix("error: ")
        .unwrap_or(trimmed)
        .to_owned()
}

impl ConfigError {
    /// Prints the error (or the help/version text) and exits the process: clap's own exit
    /// codes for [`ConfigError::Cli`] (0 for `--help`/`--version`, 2 for usage errors), 2
    /// for everything else.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(err) => err.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

impl Config {
    /// Loads the configuration from the process's command line and environment.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`]; `main` should call [`ConfigError::exit`].
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// Loads the configuration from `args` (the first item is the program name, as in
    /// `std::env::args_os()`) and the process environment.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`].
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Config::load_with_env(args, |name| std::env::var_os(name))
    }

    /// Like [`Config::load_from`], but environment variables are looked up through `env`
    /// instead of the process environment, so tests stay hermetic.
    ///
    /// This is the one place where the sources are layered: the file (or the defaults)
    /// first, then each environment variable, then the flags, each overwriting only the
    /// settings it names.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`].
    pub fn load_with_env<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        // Variables first, each parsed alone as if it were its flag, so that a bad one is
        // reported under its own name (and never with its value).
        let mut layers = Vec::new();
        let quiet = quiet_command();
        for arg in Config::command().get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env().and_then(|v| v.to_str()), arg.get_long())
            else {
                continue;
            };
            if let Some(value) = env(var) {
                let mut flag = OsString::from(format!("--{long}="));
                flag.push(value);
                let layer = typed_only(&quiet, ["pingwheel".into(), flag]).map_err(|err| {
                    let message = std::error::Error::source(&err)
                        .map_or_else(|| err.kind().to_string(), ToString::to_string);
                    ConfigError::Env {
                        var: var.to_owned(),
                        message,
                    }
                })?;
                layers.push(layer);
            }
        }
        // clap shows the variables in --help only if this parse can read them; what it
        // reads is dropped by `typed_only` (`env` above, the same environment in
        // production, already validated it).
        let flags = typed_only(&Config::command(), args).map_err(ConfigError::Cli)?;
        let mut config = match flags.get_one::<PathBuf>("config_file") {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        layers.push(flags);
        for layer in &layers {
            config
                .update_from_arg_matches(layer)
                .map_err(ConfigError::Cli)?;
        }
        config.check_pairs()?;
        Ok(config)
    }

    /// A certificate without its key (or a key without its certificate), from whichever
    /// source (so that half a pair in the file may be completed by a flag): a
    /// command-line error naming the missing flag.
    fn check_pairs(&self) -> Result<(), ConfigError> {
        let pairs = [
            (&self.tls_cert, "--tls-cert", &self.tls_key, "--tls-key"),
            (
                &self.admin_tls_cert,
                "--admin-tls-cert",
                &self.admin_tls_key,
                "--admin-tls-key",
            ),
        ];
        for (a, a_flag, b, b_flag) in pairs {
            let missing = match (a.is_some(), b.is_some()) {
                (true, false) => Some((b_flag, a_flag)),
                (false, true) => Some((a_flag, b_flag)),
                _ => None,
            };
            if let Some((missing, given)) = missing {
                return Err(ConfigError::Cli(Config::command().error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("{given} needs {missing} <FILE> as well (the pair is required)"),
                )));
            }
        }
        Ok(())
    }

    /// Reads a `--config` TOML file; settings it does not name keep their defaults.
    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(path, &text)
    }

    /// Parses the text of a TOML config file; `path` is only used in error messages.
    fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let message = err.message().trim_end().to_owned();
            let at = err.span().map_or(0, |span| span.start);
            // A bad value: name its key (toml's message does not). Anything else (syntax,
            // an unknown key): say where.
            let key = toml::de::DeTable::parse(text).ok().and_then(|table| {
                let table = table.into_inner();
                let (key, _) = table.iter().find(|(_, v)| v.span().contains(&at))?;
                Some(key.get_ref().to_string())
            });
            let message = match key {
                Some(_) => message,
                None => {
                    let before = text.get(..at).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}: {message}")
                }
            };
            ConfigError::File {
                path: path.to_owned(),
                key,
                message,
            }
        })
    }
}

/// The command without environment variables: for the defaults and the environment
/// layer, which must not see what the process environment holds.
fn quiet_command() -> Command {
    Config::command().mut_args(|arg| arg.env(None::<&'static str>))
}

/// Parses `args` and keeps only the settings they name: clap's defaults, and what it took
/// from the process environment, are dropped so that lower layers show through.
fn typed_only<I, T>(command: &Command, args: I) -> Result<ArgMatches, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut matches = command.clone().try_get_matches_from(args)?;
    let implied: Vec<String> = matches
        .ids()
        .map(|id| id.as_str().to_owned())
        .filter(|id| matches.value_source(id) != Some(ValueSource::CommandLine))
        .collect();
    for id in implied {
        let _ = matches.try_clear_id(&id); // cannot fail: the id came from these matches
    }
    Ok(matches)
}

#[cfg(test)]
mod tests;
