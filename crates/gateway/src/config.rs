//! Configuration: command-line flags, an optional TOML file, two environment
//! variables, and embedded defaults, resolved once at start-up into a [`Config`].
//!
//! # Precedence
//!
//! For every setting the first source that has it wins:
//!
//! 1. a command-line flag (`--ping-interval 30s`),
//! 2. an environment variable — only `PINGWHEEL_TOKEN_SECRET` and `PINGWHEEL_API_KEY`,
//! 3. the `--config` TOML file (keys are the flag names with underscores: `ping_interval`),
//! 4. the embedded default ([`Config::default`]).
//!
//! Running with no arguments at all works: every setting has a default.
//!
//! # Value syntax
//!
//! * **Durations**: `20` (seconds), `20s`, `1.5s`, `500ms`, `2m`, `1h`; at most one day.
//!   Settings that can be switched off (`--ping-interval`, `--ping-timeout`,
//!   `--open-timeout`) also take `0` or `off`.
//! * **Sizes**: `1048576` (bytes), `64KiB`, `1MiB`, `16MiB`, `1GiB` (powers of 1024), or
//!   `64KB`, `1MB`, `1GB` (powers of 1000), or `512B`. Units are case-insensitive.
//! * In the TOML file, durations and sizes may be strings (`"20s"`, `"1MiB"`) or integers
//!   (seconds, bytes); a float is read as seconds.
//!
//! # Errors
//!
//! A bad flag is reported by clap and names the flag
//! (`invalid value '20x' for '--ping-interval <DURATION>': expected ...`); a bad file value
//! names the file and the key (`config.toml: ping_interval: invalid value '20x': ...`);
//! unknown keys in the file are errors. [`ConfigError::exit`] prints any of them the way
//! clap does and exits (also for `--help` and `--version`, which clap reports as "errors").
//!
//! Secrets ([`Secret`]) never appear in `Debug` output or error messages.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Environment variable holding the HS256 secret for client JWTs (`--token-secret`).
pub const ENV_TOKEN_SECRET: &str = "PINGWHEEL_TOKEN_SECRET";
/// Environment variable holding the publish-API key (`--api-key`).
pub const ENV_API_KEY: &str = "PINGWHEEL_API_KEY";

/// Longest duration any setting accepts; keeps `Instant + duration` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// `--tick` bounds: the wheel's resolution and therefore the worst timer lateness.
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_secs(1);
/// A frame header alone can be 14 bytes and a control frame carries up to 125 bytes of
/// payload, so a message limit below 125 would refuse legal pings and closes.
const MIN_MAX_MESSAGE_SIZE: usize = 125;
/// Below this a single close frame plus a pong could overflow the outbound queue.
const MIN_MAX_QUEUED_BYTES: usize = 1024;

const DURATION_EXPECTED: &str = "expected a number of seconds, '500ms', '20s', '2m', or '0'/'off'";
const FIXED_DURATION_EXPECTED: &str =
    "expected a number of seconds, '500ms', '20s' or '2m' (this setting cannot be 'off')";
const SIZE_EXPECTED: &str =
    "expected a number of bytes, or a size such as '64KiB', '1MiB', '16MiB', '1GiB' (or KB/MB/GB)";

// ---------------------------------------------------------------------------------------
// The resolved configuration.
// ---------------------------------------------------------------------------------------

/// The fully resolved configuration of one gateway process.
///
/// Build it with [`Config::load`] (real command line and environment),
/// [`Config::load_from`] (given arguments, real environment), or [`Config::default`]
/// (embedded defaults, handy in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `--config` file the values were read from, if any (for logging).
    pub config_file: Option<PathBuf>,
    /// WebSocket listener address (`--listen`); port 0 picks any free port.
    pub listen: SocketAddr,
    /// Admin HTTP listener address (`--admin-listen`): `/metrics`, `/healthz`, publish API.
    pub admin_listen: SocketAddr,
    /// An admin request's body must arrive completely within this of its head, or the
    /// request gets 408 and its connection is closed (`--admin-body-timeout`).
    pub admin_body_timeout: Duration,
    /// Number of event-loop threads (`--workers`), one `mio` loop each.
    pub workers: NonZeroUsize,
    /// Keepalive ping period (`--ping-interval`); `None` sends no pings.
    pub ping_interval: Option<Duration>,
    /// Close with 1011 when no pong arrives within this of a ping (`--ping-timeout`);
    /// `None` waits forever.
    pub ping_timeout: Option<Duration>,
    /// The HTTP upgrade must complete within this of accepting the socket
    /// (`--open-timeout`); `None` waits forever.
    pub open_timeout: Option<Duration>,
    /// How long a closing handshake may take before the socket is dropped (`--close-timeout`).
    pub close_timeout: Duration,
    /// On SIGTERM/SIGINT, how long to wait for closing handshakes before exiting
    /// (`--drain-timeout`).
    pub drain_timeout: Duration,
    /// Largest accepted message (or frame), in bytes; larger closes with 1009
    /// (`--max-message-size`). At least 125.
    pub max_message_size: usize,
    /// Bound on one connection's unsent output, in bytes (`--max-queued-bytes`). At least 1024.
    pub max_queued_bytes: usize,
    /// Largest accepted HTTP upgrade request head, in bytes; larger gets 431
    /// (`--max-handshake-size`).
    pub max_handshake_size: usize,
    /// Echo every data message back to its sender (`--echo`), for Autobahn and load tests.
    pub echo: bool,
    /// Timer-wheel tick (`--tick`), 1 ms..=1 s; bounds how late a timer may fire.
    pub tick: Duration,
    /// Listen backlog of each worker's socket (`--backlog`); the kernel caps it at
    /// `net.core.somaxconn`.
    pub backlog: u32,
    /// `tracing` filter (`--log-level`): a level or an `EnvFilter` directive.
    pub log_level: String,
    /// Push-layer settings (issue 5).
    pub push: PushConfig,
}

/// Settings of the push layer: client authentication, the publish API, and per-connection
/// limits.
///
/// With neither [`token_secret`](Self::token_secret) nor
/// [`token_public_key`](Self::token_public_key) the gateway runs in an insecure dev mode
/// (anonymous clients, any channel) and must say so loudly in its log; see
/// [`PushConfig::is_insecure_dev_mode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// HS256 secret for client JWTs (`--token-secret`, env `PINGWHEEL_TOKEN_SECRET`).
    pub token_secret: Option<Secret>,
    /// PEM public key file (RS256 or ES256) for client JWTs (`--token-public-key`).
    pub token_public_key: Option<PathBuf>,
    /// Key the publish API expects as `Authorization: Bearer <key>` (`--api-key`, env
    /// `PINGWHEEL_API_KEY`). `None` leaves the publish API open only in dev mode.
    pub api_key: Option<Secret>,
    /// Allowed `Origin` values (`--allowed-origin`, repeatable); empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// Most channels one connection may subscribe to (`--max-subscriptions`).
    pub max_subscriptions: usize,
    /// Longest channel name, in bytes (`--max-channel-name`).
    pub max_channel_name: usize,
    /// Client messages per second per connection, burst of the same size
    /// (`--max-inbound-rate`).
    pub max_inbound_rate: u32,
    /// Largest publish-API request body, in bytes; larger gets 413 (`--max-publish-body`).
    pub max_publish_body: usize,
    /// Most patterns a client token's `channels` claim may list; more is refused with 401
    /// (`--max-token-channels`).
    pub max_token_channels: usize,
}

impl PushConfig {
    /// True when no token verification key is configured: clients connect anonymously and
    /// may use any channel. The gateway must log this loudly at start-up.
    pub fn is_insecure_dev_mode(&self) -> bool {
        self.token_secret.is_none() && self.token_public_key.is_none()
    }

    /// True when the publish API accepts unauthenticated requests: dev mode and no
    /// [`api_key`](Self::api_key).
    pub fn is_publish_api_open(&self) -> bool {
        self.is_insecure_dev_mode() && self.api_key.is_none()
    }
}

impl Default for Config {
    /// The embedded defaults, exactly what running `pingwheel` with no arguments gives
    /// (when neither `PINGWHEEL_TOKEN_SECRET` nor `PINGWHEEL_API_KEY` is set).
    fn default() -> Self {
        Config {
            config_file: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_body_timeout: Duration::from_secs(10),
            workers: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            open_timeout: Some(Duration::from_secs(10)),
            close_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_queued_bytes: 1 << 20,
            max_handshake_size: 8 << 10,
            echo: false,
            tick: Duration::from_millis(10),
            backlog: 4096,
            log_level: "info".to_owned(),
            push: PushConfig::default(),
        }
    }
}

impl Default for PushConfig {
    /// The embedded push defaults: no keys (dev mode), any origin, and the documented limits.
    fn default() -> Self {
        PushConfig {
            token_secret: None,
            token_public_key: None,
            api_key: None,
            allowed_origins: Vec::new(),
            max_subscriptions: 64,
            max_channel_name: 128,
            max_inbound_rate: 50,
            max_publish_body: 1 << 20,
            max_token_channels: 256,
        }
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

// ---------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// A command-line problem as clap reports it: a bad flag or value, or `--help` /
    /// `--version`, which are not failures but must end the program. Call
    /// [`ConfigError::exit`] (or `clap::Error::exit`) to print it the way clap does.
    Cli(clap::Error),
    /// The `--config` file could not be read.
    ReadFile {
        /// The file as given on the command line.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, has an unknown key, or holds a bad value.
    File {
        /// The file as given on the command line.
        path: PathBuf,
        /// The offending key, when the problem is one key's value.
        key: Option<String>,
        /// What is wrong (for syntax errors: with line and column).
        message: String,
    },
    /// An environment variable holds a bad value.
    Env {
        /// The variable's name.
        var: &'static str,
        /// What is wrong (never the value itself: these hold secrets).
        message: String,
    },
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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Cli(err) => {
                // clap's rendering starts with "error: " and ends with a newline; keep the
                // message itself so callers can prefix it as they like.
                let rendered = err.render().to_string();
                let trimmed = rendered.trim_end();
                f.write_str(trimmed.strip_prefix("error: ").unwrap_or(trimmed))
            }
            ConfigError::ReadFile { path, source } => {
                write!(f, "{}: cannot read config file: {source}", path.display())
            }
            ConfigError::File {
                path,
                key: Some(key),
                message,
            } => {
                write!(f, "{}: {key}: {message}", path.display())
            }
            ConfigError::File {
                path,
                key: None,
                message,
            } => {
                write!(f, "{}: {message}", path.display())
            }
            ConfigError::Env { var, message } => write!(f, "{var}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Cli(err) => Some(err),
            ConfigError::ReadFile { source, .. } => Some(source),
            ConfigError::File { .. } | ConfigError::Env { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------------------

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
        let cli = Cli::try_parse_from(args).map_err(ConfigError::Cli)?;
        let config_file = cli.config.clone();
        let from_flags = cli.into_layer();
        let from_env = Layer::from_env(&env)?;
        let from_file = match &config_file {
            Some(path) => Layer::from_file(path)?,
            None => Layer::default(),
        };
        let mut config = from_flags
            .or(from_env)
            .or(from_file)
            .resolve(Config::default());
        config.config_file = config_file;
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------
// The command line.
// ---------------------------------------------------------------------------------------

// The command-line flags. Every setting is an `Option` (no clap `default_value`), so
// "not given" is distinguishable from "given the default" and lower layers can fill in.
// (A `//` comment: a doc comment here would replace the crate description in `--help`.)
#[derive(Debug, Parser)]
#[command(
    name = "pingwheel",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = "Precedence: flag > environment variable > --config file > default.\n\
                  Durations: 20 (seconds), 20s, 1.5s, 500ms, 2m, 1h.\n\
                  Sizes: 1048576 (bytes), 64KiB, 1MiB, 1GiB; KB/MB/GB are powers of 1000.\n\
                  Signals: SIGTERM or SIGINT drains (Close 1001 to every client, up to \
                  --drain-timeout) and exits 0; a second one exits at once with status 1.\n\
                  Details: docs/operations.md."
)]
struct Cli {
    /// TOML file with settings; keys are the flag names with underscores
    /// (ping_interval = "20s"). Flags and environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// WebSocket listener address; port 0 picks any free port. [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    listen: Option<SocketAddr>,

    /// Admin HTTP listener address (/metrics, /healthz, publish API).
    /// [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    admin_listen: Option<SocketAddr>,

    /// An admin (publish API) request body must arrive completely within this of the
    /// request head, else 408 and the connection is closed; more than 0. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_body_timeout)]
    admin_body_timeout: Option<Duration>,

    /// Event-loop threads. [default: number of CPU cores]
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    workers: Option<NonZeroUsize>,

    /// Keepalive ping period; '0' or 'off' disables pings. Pings are batched: each may
    /// go out up to min(interval/20, 1s) late. [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration)]
    ping_interval: Option<Toggle>,

    /// Close with 1011 when no pong arrives within this of a ping; '0' or 'off' waits
    /// forever. [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration)]
    ping_timeout: Option<Toggle>,

    /// The HTTP upgrade must complete within this of the TCP accept; '0' or 'off' waits
    /// forever. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_optional_duration)]
    open_timeout: Option<Toggle>,

    /// Time limit for a closing handshake before the socket is dropped. [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_fixed_duration)]
    close_timeout: Option<Duration>,

    /// On SIGTERM/SIGINT: how long to wait for closing handshakes before exiting 0 (a
    /// second signal exits at once with status 1). [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_fixed_duration)]
    drain_timeout: Option<Duration>,

    /// Largest accepted message; larger closes with 1009. At least 125. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_max_message_size)]
    max_message_size: Option<usize>,

    /// Bound on one connection's unsent output. At least 1024. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_max_queued_bytes)]
    max_queued_bytes: Option<usize>,

    /// Largest accepted HTTP upgrade request head; larger gets 431, as does a head of
    /// more than 64 header fields (a fixed limit), the body saying which. [default: 8KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size)]
    max_handshake_size: Option<usize>,

    /// Echo every data message back to its sender ('--echo=false' overrides the file).
    /// [default: off]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_bool
    )]
    echo: Option<bool>,

    /// Timer-wheel tick, 1ms..=1s; timers fire at most one tick late. [default: 10ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_tick)]
    tick: Option<Duration>,

    /// Listen backlog per worker socket (the kernel caps it at net.core.somaxconn).
    /// [default: 4096]
    #[arg(long, value_name = "N", value_parser = parse_backlog)]
    backlog: Option<u32>,

    /// Log filter: error, warn, info, debug, trace, or an EnvFilter directive such as
    /// 'info,pingwheel::worker=debug'. [default: info]
    #[arg(long, value_name = "FILTER", value_parser = parse_log_level)]
    log_level: Option<String>,

    /// HS256 secret for client JWTs. Without this or --token-public-key the gateway runs
    /// in an insecure dev mode (anonymous clients, any channel). [env:
    /// PINGWHEEL_TOKEN_SECRET] [default: none]
    #[arg(long, value_name = "SECRET", value_parser = parse_secret, help_heading = "Push")]
    token_secret: Option<Secret>,

    /// PEM public key file (RS256 or ES256) for client JWTs. [default: none]
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "Push")]
    token_public_key: Option<PathBuf>,

    /// Key for the publish API (Authorization: Bearer <KEY>). Without it, and in dev mode,
    /// the publish API is open. [env: PINGWHEEL_API_KEY] [default: none]
    #[arg(long, value_name = "KEY", value_parser = parse_secret, help_heading = "Push")]
    api_key: Option<Secret>,

    /// Allowed Origin of WebSocket clients; repeat for several. [default: any origin]
    #[arg(long, value_name = "ORIGIN", value_parser = parse_origin, help_heading = "Push")]
    allowed_origin: Vec<String>,

    /// Most channels one connection may subscribe to. [default: 64]
    #[arg(long, value_name = "N", value_parser = parse_count, help_heading = "Push")]
    max_subscriptions: Option<usize>,

    /// Longest channel name in bytes. [default: 128]
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size, help_heading = "Push")]
    max_channel_name: Option<usize>,

    /// Client messages per second per connection (burst of the same size). [default: 50]
    #[arg(long, value_name = "N", value_parser = parse_rate, help_heading = "Push")]
    max_inbound_rate: Option<u32>,

    /// Largest publish-API request body; larger gets 413. [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size, help_heading = "Push")]
    max_publish_body: Option<usize>,

    /// Most patterns a client token's `channels` claim may list; more is refused with 401.
    /// [default: 256]
    #[arg(long, value_name = "N", value_parser = parse_count, help_heading = "Push")]
    max_token_channels: Option<usize>,
}

impl Cli {
    fn into_layer(self) -> Layer {
        Layer {
            listen: self.listen,
            admin_listen: self.admin_listen,
            admin_body_timeout: self.admin_body_timeout,
            workers: self.workers,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            open_timeout: self.open_timeout,
            close_timeout: self.close_timeout,
            drain_timeout: self.drain_timeout,
            max_message_size: self.max_message_size,
            max_queued_bytes: self.max_queued_bytes,
            max_handshake_size: self.max_handshake_size,
            echo: self.echo,
            tick: self.tick,
            backlog: self.backlog,
            log_level: self.log_level,
            token_secret: self.token_secret,
            token_public_key: self.token_public_key,
            api_key: self.api_key,
            allowed_origins: (!self.allowed_origin.is_empty()).then_some(self.allowed_origin),
            max_subscriptions: self.max_subscriptions,
            max_channel_name: self.max_channel_name,
            max_inbound_rate: self.max_inbound_rate,
            max_publish_body: self.max_publish_body,
            max_token_channels: self.max_token_channels,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Layers: what one source (flags, env, file) says; `None` = "this source is silent".
// ---------------------------------------------------------------------------------------

/// A duration that can be switched off: `Toggle(None)` is `0`/`off`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Toggle(Option<Duration>);

/// Every setting as one source sees it. Sources are stacked with [`Layer::or`] (the
/// receiver wins) and the result is completed with defaults by [`Layer::resolve`].
#[derive(Debug, Default)]
struct Layer {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    admin_body_timeout: Option<Duration>,
    workers: Option<NonZeroUsize>,
    ping_interval: Option<Toggle>,
    ping_timeout: Option<Toggle>,
    open_timeout: Option<Toggle>,
    close_timeout: Option<Duration>,
    drain_timeout: Option<Duration>,
    max_message_size: Option<usize>,
    max_queued_bytes: Option<usize>,
    max_handshake_size: Option<usize>,
    echo: Option<bool>,
    tick: Option<Duration>,
    backlog: Option<u32>,
    log_level: Option<String>,
    token_secret: Option<Secret>,
    token_public_key: Option<PathBuf>,
    api_key: Option<Secret>,
    allowed_origins: Option<Vec<String>>,
    max_subscriptions: Option<usize>,
    max_channel_name: Option<usize>,
    max_inbound_rate: Option<u32>,
    max_publish_body: Option<usize>,
    max_token_channels: Option<usize>,
}

impl Layer {
    /// Settings present in `self` win; the rest come from `lower`.
    fn or(self, lower: Layer) -> Layer {
        Layer {
            listen: self.listen.or(lower.listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            admin_body_timeout: self.admin_body_timeout.or(lower.admin_body_timeout),
            workers: self.workers.or(lower.workers),
            ping_interval: self.ping_interval.or(lower.ping_interval),
            ping_timeout: self.ping_timeout.or(lower.ping_timeout),
            open_timeout: self.open_timeout.or(lower.open_timeout),
            close_timeout: self.close_timeout.or(lower.close_timeout),
            drain_timeout: self.drain_timeout.or(lower.drain_timeout),
            max_message_size: self.max_message_size.or(lower.max_message_size),
            max_queued_bytes: self.max_queued_bytes.or(lower.max_queued_bytes),
            max_handshake_size: self.max_handshake_size.or(lower.max_handshake_size),
            echo: self.echo.or(lower.echo),
            tick: self.tick.or(lower.tick),
            backlog: self.backlog.or(lower.backlog),
            log_level: self.log_level.or(lower.log_level),
            token_secret: self.token_secret.or(lower.token_secret),
            token_public_key: self.token_public_key.or(lower.token_public_key),
            api_key: self.api_key.or(lower.api_key),
            allowed_origins: self.allowed_origins.or(lower.allowed_origins),
            max_subscriptions: self.max_subscriptions.or(lower.max_subscriptions),
            max_channel_name: self.max_channel_name.or(lower.max_channel_name),
            max_inbound_rate: self.max_inbound_rate.or(lower.max_inbound_rate),
            max_publish_body: self.max_publish_body.or(lower.max_publish_body),
            max_token_channels: self.max_token_channels.or(lower.max_token_channels),
        }
    }

    /// Fills every setting this layer lacks from `defaults`.
    fn resolve(self, defaults: Config) -> Config {
        let push = defaults.push;
        let config = Config {
            config_file: defaults.config_file,
            listen: self.listen.unwrap_or(defaults.listen),
            admin_listen: self.admin_listen.unwrap_or(defaults.admin_listen),
            admin_body_timeout: self
                .admin_body_timeout
                .unwrap_or(defaults.admin_body_timeout),
            workers: self.workers.unwrap_or(defaults.workers),
            ping_interval: self.ping_interval.map_or(defaults.ping_interval, |t| t.0),
            ping_timeout: self.ping_timeout.map_or(defaults.ping_timeout, |t| t.0),
            open_timeout: self.open_timeout.map_or(defaults.open_timeout, |t| t.0),
            close_timeout: self.close_timeout.unwrap_or(defaults.close_timeout),
            drain_timeout: self.drain_timeout.unwrap_or(defaults.drain_timeout),
            max_message_size: self.max_message_size.unwrap_or(defaults.max_message_size),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
            max_handshake_size: self
                .max_handshake_size
                .unwrap_or(defaults.max_handshake_size),
            echo: self.echo.unwrap_or(defaults.echo),
            tick: self.tick.unwrap_or(defaults.tick),
            backlog: self.backlog.unwrap_or(defaults.backlog),
            log_level: self.log_level.unwrap_or(defaults.log_level),
            push: PushConfig {
                token_secret: self.token_secret.or(push.token_secret),
                token_public_key: self.token_public_key.or(push.token_public_key),
                api_key: self.api_key.or(push.api_key),
                allowed_origins: self.allowed_origins.unwrap_or(push.allowed_origins),
                max_subscriptions: self.max_subscriptions.unwrap_or(push.max_subscriptions),
                max_channel_name: self.max_channel_name.unwrap_or(push.max_channel_name),
                max_inbound_rate: self.max_inbound_rate.unwrap_or(push.max_inbound_rate),
                max_publish_body: self.max_publish_body.unwrap_or(push.max_publish_body),
                max_token_channels: self.max_token_channels.unwrap_or(push.max_token_channels),
            },
        };
        debug_assert!(
            (MIN_TICK..=MAX_TICK).contains(&config.tick),
            "tick {:?} escaped validation",
            config.tick
        );
        debug_assert!(config.max_message_size >= MIN_MAX_MESSAGE_SIZE);
        debug_assert!(config.max_queued_bytes >= MIN_MAX_QUEUED_BYTES);
        config
    }

    /// The settings that may come from the environment: the two secrets.
    fn from_env(env: &impl Fn(&str) -> Option<OsString>) -> Result<Layer, ConfigError> {
        let secret = |var: &'static str| -> Result<Option<Secret>, ConfigError> {
            let Some(value) = env(var) else {
                return Ok(None);
            };
            let value = value.into_string().map_err(|_| ConfigError::Env {
                var,
                message: "not valid UTF-8".to_owned(),
            })?;
            // parse_secret's errors never quote the value, so they are safe to show.
            parse_secret(&value)
                .map(Some)
                .map_err(|message| ConfigError::Env { var, message })
        };
        Ok(Layer {
            token_secret: secret(ENV_TOKEN_SECRET)?,
            api_key: secret(ENV_API_KEY)?,
            ..Layer::default()
        })
    }

    /// Reads and validates a `--config` TOML file.
    fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Layer::from_toml(path, &text)
    }

    /// Parses the text of a TOML config file; `path` is only used in error messages.
    fn from_toml(path: &Path, text: &str) -> Result<Layer, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|err| ConfigError::File {
            path: path.to_owned(),
            key: None,
            message: describe_toml_error(text, &err),
        })?;
        let reader = FileReader { path };
        Ok(Layer {
            listen: reader.value("listen", file.listen, parse_socket_addr)?,
            admin_listen: reader.value("admin_listen", file.admin_listen, parse_socket_addr)?,
            admin_body_timeout: reader.value(
                "admin_body_timeout",
                file.admin_body_timeout,
                parse_body_timeout,
            )?,
            workers: reader.value("workers", file.workers, parse_workers)?,
            ping_interval: reader.value(
                "ping_interval",
                file.ping_interval,
                parse_optional_duration,
            )?,
            ping_timeout: reader.value(
                "ping_timeout",
                file.ping_timeout,
                parse_optional_duration,
            )?,
            open_timeout: reader.value(
                "open_timeout",
                file.open_timeout,
                parse_optional_duration,
            )?,
            close_timeout: reader.value(
                "close_timeout",
                file.close_timeout,
                parse_fixed_duration,
            )?,
            drain_timeout: reader.value(
                "drain_timeout",
                file.drain_timeout,
                parse_fixed_duration,
            )?,
            max_message_size: reader.value(
                "max_message_size",
                file.max_message_size,
                parse_max_message_size,
            )?,
            max_queued_bytes: reader.value(
                "max_queued_bytes",
                file.max_queued_bytes,
                parse_max_queued_bytes,
            )?,
            max_handshake_size: reader.value(
                "max_handshake_size",
                file.max_handshake_size,
                parse_nonzero_size,
            )?,
            echo: reader.value("echo", file.echo, parse_bool)?,
            tick: reader.value("tick", file.tick, parse_tick)?,
            backlog: reader.value("backlog", file.backlog, parse_backlog)?,
            log_level: reader.value("log_level", file.log_level, parse_log_level)?,
            token_secret: reader.secret("token_secret", file.token_secret)?,
            token_public_key: reader.value(
                "token_public_key",
                file.token_public_key,
                parse_path,
            )?,
            api_key: reader.secret("api_key", file.api_key)?,
            allowed_origins: reader.list("allowed_origins", file.allowed_origins, parse_origin)?,
            max_subscriptions: reader.value(
                "max_subscriptions",
                file.max_subscriptions,
                parse_count,
            )?,
            max_channel_name: reader.value(
                "max_channel_name",
                file.max_channel_name,
                parse_nonzero_size,
            )?,
            max_inbound_rate: reader.value(
                "max_inbound_rate",
                file.max_inbound_rate,
                parse_rate,
            )?,
            max_publish_body: reader.value(
                "max_publish_body",
                file.max_publish_body,
                parse_nonzero_size,
            )?,
            max_token_channels: reader.value(
                "max_token_channels",
                file.max_token_channels,
                parse_count,
            )?,
        })
    }
}

/// The TOML file as serde sees it: each key's raw value, checked against the key list
/// (`deny_unknown_fields`). Values are parsed afterwards by the same functions as the
/// flags, so a file error can name its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<toml::Value>,
    admin_listen: Option<toml::Value>,
    admin_body_timeout: Option<toml::Value>,
    workers: Option<toml::Value>,
    ping_interval: Option<toml::Value>,
    ping_timeout: Option<toml::Value>,
    open_timeout: Option<toml::Value>,
    close_timeout: Option<toml::Value>,
    drain_timeout: Option<toml::Value>,
    max_message_size: Option<toml::Value>,
    max_queued_bytes: Option<toml::Value>,
    max_handshake_size: Option<toml::Value>,
    echo: Option<toml::Value>,
    tick: Option<toml::Value>,
    backlog: Option<toml::Value>,
    log_level: Option<toml::Value>,
    token_secret: Option<toml::Value>,
    token_public_key: Option<toml::Value>,
    api_key: Option<toml::Value>,
    allowed_origins: Option<toml::Value>,
    max_subscriptions: Option<toml::Value>,
    max_channel_name: Option<toml::Value>,
    max_inbound_rate: Option<toml::Value>,
    max_publish_body: Option<toml::Value>,
    max_token_channels: Option<toml::Value>,
}

/// Turns raw TOML values into settings, naming the file and key in every error.
struct FileReader<'a> {
    path: &'a Path,
}

impl FileReader<'_> {
    fn error(&self, key: &str, message: String) -> ConfigError {
        ConfigError::File {
            path: self.path.to_owned(),
            key: Some(key.to_owned()),
            message,
        }
    }

    /// A scalar setting: strings are parsed as on the command line; integers, floats and
    /// booleans are parsed from their TOML spelling (`20` → "20" → 20 seconds / bytes).
    fn value<T>(
        &self,
        key: &str,
        value: Option<toml::Value>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = scalar_text(&value).map_err(|message| self.error(key, message))?;
        parse(&text)
            .map(Some)
            .map_err(|message| self.error(key, format!("invalid value '{text}': {message}")))
    }

    /// A secret: must be a non-empty string, and is never quoted in errors.
    fn secret(&self, key: &str, value: Option<toml::Value>) -> Result<Option<Secret>, ConfigError> {
        match value {
            None => Ok(None),
            Some(toml::Value::String(text)) => parse_secret(&text)
                .map(Some)
                .map_err(|message| self.error(key, message)),
            Some(other) => Err(self.error(
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    /// A list setting: an array of strings (a single string is a one-item list).
    fn list<T>(
        &self,
        key: &str,
        value: Option<toml::Value>,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        let items = match value {
            None => return Ok(None),
            Some(toml::Value::Array(items)) => items,
            Some(single @ toml::Value::String(_)) => vec![single],
            Some(other) => {
                return Err(self.error(
                    key,
                    format!("expected an array of strings, found {}", other.type_str()),
                ));
            }
        };
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                toml::Value::String(text) => parse(&text).map_err(|message| {
                    self.error(
                        key,
                        format!("item {index}: invalid value '{text}': {message}"),
                    )
                }),
                other => Err(self.error(
                    key,
                    format!(
                        "item {index}: expected a string, found {}",
                        other.type_str()
                    ),
                )),
            })
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
    }
}

/// The textual form of a scalar TOML value, to run through a flag parser.
fn scalar_text(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// One-line description of a TOML syntax or schema error, with its line and column.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Value parsers, shared by flags (as clap value parsers) and the file. Errors say what is
// expected; the caller adds "invalid value '...' for '--flag'" or "file: key: ...".
// ---------------------------------------------------------------------------------------

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        "expected an IP address and port, such as '0.0.0.0:8080', '127.0.0.1:0' or '[::]:8080'"
            .to_owned()
    })
}

fn parse_workers(s: &str) -> Result<NonZeroUsize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of threads, at least 1".to_owned())?;
    NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_owned())
}

fn parse_optional_duration(s: &str) -> Result<Toggle, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Toggle(None));
    }
    let duration = parse_duration(s).ok_or_else(|| DURATION_EXPECTED.to_owned())?;
    check_max_duration(duration)?;
    Ok(Toggle((!duration.is_zero()).then_some(duration)))
}

fn parse_fixed_duration(s: &str) -> Result<Duration, String> {
    let duration = parse_duration(s.trim()).ok_or_else(|| FIXED_DURATION_EXPECTED.to_owned())?;
    check_max_duration(duration)?;
    Ok(duration)
}

fn parse_body_timeout(s: &str) -> Result<Duration, String> {
    match parse_fixed_duration(s)? {
        Duration::ZERO => Err("must be more than 0".to_owned()),
        timeout => Ok(timeout),
    }
}

fn parse_tick(s: &str) -> Result<Duration, String> {
    let tick = parse_fixed_duration(s)?;
    if !(MIN_TICK..=MAX_TICK).contains(&tick) {
        return Err("must be between 1ms and 1s".to_owned());
    }
    Ok(tick)
}

fn check_max_duration(duration: Duration) -> Result<(), String> {
    if duration > MAX_DURATION {
        return Err("must be at most 24h".to_owned());
    }
    Ok(())
}

/// Parses `20`, `20s`, `1.5s`, `500ms`, `2m`, `1h` exactly (no floating point): the
/// number is a decimal with an optional fraction, the unit defaults to seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" | "min" | "mins" => 60 * 1_000_000_000,
        "h" => 60 * 60 * 1_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || whole.len() > 12
        || fraction.len() > 9
    {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
        fraction.parse::<u128>().ok()? * unit_nanos / scale
    };
    let nanos = whole.checked_mul(unit_nanos)?.checked_add(fraction_nanos)?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let subsec = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, subsec))
}

/// Parses `1048576`, `512B`, `64KiB`, `1MiB`, `1GiB` (1024-based) or `64KB`, `1MB`,
/// `1GB` (1000-based); units are case-insensitive, and only whole numbers are accepted.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(SIZE_EXPECTED.to_owned()),
    };
    let number: u64 = number.parse().map_err(|_| SIZE_EXPECTED.to_owned())?;
    number
        .checked_mul(multiplier)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| "too large".to_owned())
}

fn parse_size_at_least(s: &str, min: usize) -> Result<usize, String> {
    let size = parse_size(s)?;
    if size < min {
        return Err(format!("must be at least {min} bytes"));
    }
    Ok(size)
}

fn parse_max_message_size(s: &str) -> Result<usize, String> {
    parse_size_at_least(s, MIN_MAX_MESSAGE_SIZE)
}

fn parse_max_queued_bytes(s: &str) -> Result<usize, String> {
    parse_size_at_least(s, MIN_MAX_QUEUED_BYTES)
}

fn parse_nonzero_size(s: &str) -> Result<usize, String> {
    parse_size_at_least(s, 1)
}

fn parse_backlog(s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a whole number from 0 to {}", u32::MAX))
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a whole number".to_owned())
}

fn parse_rate(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(rate) => Ok(rate),
        Err(_) => Err("expected a whole number of messages per second, at least 1".to_owned()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err("expected 'true' or 'false'".to_owned()),
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(
            "expected a level (error, warn, info, debug, trace) or an EnvFilter directive"
                .to_owned(),
        );
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|err| {
        format!(
            "expected a level (error, warn, info, debug, trace) or an EnvFilter directive: {err}"
        )
    })?;
    Ok(s.to_owned())
}

/// Never quotes the value in its error: it is a secret.
fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(Secret::new(s))
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("expected a file path".to_owned());
    }
    Ok(PathBuf::from(s))
}

/// An `Origin` header value as browsers send it: `scheme://host[:port]`, no path.
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err("expected an origin such as 'https://example.com'".to_owned());
    }
    if s.ends_with('/') {
        return Err(
            "an origin has no path or trailing '/': browsers send 'https://example.com'".to_owned(),
        );
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SEC: Duration = Duration::from_secs(1);

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[track_caller]
    fn load(args: &[&str]) -> Config {
        let argv = std::iter::once("pingwheel").chain(args.iter().copied());
        match Config::load_with_env(argv, no_env) {
            Ok(config) => config,
            Err(err) => panic!("load({args:?}) failed: {err}"),
        }
    }

    #[track_caller]
    fn load_err(args: &[&str]) -> String {
        let argv = std::iter::once("pingwheel").chain(args.iter().copied());
        match Config::load_with_env(argv, no_env) {
            Ok(config) => panic!("load({args:?}) unexpectedly succeeded: {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// A config file under the system temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "pingwheel-config-test-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).expect("temp dir is writable");
            TempFile(path)
        }

        fn arg(&self) -> &str {
            self.0.to_str().expect("temp path is UTF-8")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn from_toml(text: &str) -> Result<Layer, ConfigError> {
        Layer::from_toml(Path::new("config.toml"), text)
    }

    #[track_caller]
    fn toml_err(text: &str) -> String {
        match from_toml(text) {
            Ok(layer) => panic!("{text:?} unexpectedly parsed: {layer:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn no_arguments_gives_the_documented_defaults() {
        let config = load(&[]);
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            config.workers,
            std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
        );
        assert_eq!(config.ping_interval, Some(20 * SEC));
        assert_eq!(config.ping_timeout, Some(20 * SEC));
        assert_eq!(config.open_timeout, Some(10 * SEC));
        assert_eq!(config.close_timeout, 10 * SEC);
        assert_eq!(config.drain_timeout, 10 * SEC);
        assert_eq!(config.admin_body_timeout, 10 * SEC);
        assert_eq!(config.max_message_size, 1_048_576);
        assert_eq!(config.max_queued_bytes, 1_048_576);
        assert_eq!(config.max_handshake_size, 8192);
        assert!(!config.echo);
        assert_eq!(config.tick, Duration::from_millis(10));
        assert_eq!(config.backlog, 4096);
        assert_eq!(config.log_level, "info");
        assert_eq!(config.config_file, None);
        let push = &config.push;
        assert_eq!(push.token_secret, None);
        assert_eq!(push.token_public_key, None);
        assert_eq!(push.api_key, None);
        assert!(push.allowed_origins.is_empty());
        assert_eq!(push.max_subscriptions, 64);
        assert_eq!(push.max_channel_name, 128);
        assert_eq!(push.max_inbound_rate, 50);
        assert_eq!(push.max_publish_body, 1_048_576);
        assert_eq!(push.max_token_channels, 256);
        assert!(push.is_insecure_dev_mode());
        assert!(push.is_publish_api_open());
    }

    #[test]
    fn duration_forms() {
        let cases: &[(&str, Duration)] = &[
            ("20", 20 * SEC),
            ("20s", 20 * SEC),
            ("500ms", Duration::from_millis(500)),
            ("2m", 120 * SEC),
            ("1.5s", Duration::from_millis(1500)),
            ("0.1s", Duration::from_millis(100)),
            (".25", Duration::from_millis(250)),
            ("1h", 3600 * SEC),
            ("0.5m", 30 * SEC),
            ("2.5ms", Duration::from_micros(2500)),
            (" 7s ", 7 * SEC),
        ];
        for &(text, expected) in cases {
            let config = load(&["--ping-interval", text, "--close-timeout", text]);
            assert_eq!(
                config.ping_interval,
                Some(expected),
                "--ping-interval {text}"
            );
            assert_eq!(config.close_timeout, expected, "--close-timeout {text}");
        }
        for bad in [
            "",
            "s",
            "20x",
            "-1",
            "1..5s",
            "1e3",
            "20 s s",
            "1.0000000001s",
            "ms5",
        ] {
            assert_eq!(parse_duration(bad.trim()), None, "{bad:?} should not parse");
        }
    }

    #[test]
    fn off_and_zero_disable_optional_durations() {
        for off in ["off", "OFF", "0", "0s", "0ms"] {
            let config = load(&[
                "--ping-interval",
                off,
                "--ping-timeout",
                off,
                "--open-timeout",
                off,
            ]);
            assert_eq!(config.ping_interval, None, "{off}");
            assert_eq!(config.ping_timeout, None, "{off}");
            assert_eq!(config.open_timeout, None, "{off}");
        }
        let err = load_err(&["--close-timeout", "off"]);
        assert!(err.contains("'--close-timeout <DURATION>'"), "{err}");
        assert!(err.contains("cannot be 'off'"), "{err}");
        assert_eq!(
            load(&["--drain-timeout", "0"]).drain_timeout,
            Duration::ZERO
        );
        assert_eq!(
            load(&["--admin-body-timeout", "500ms"]).admin_body_timeout,
            Duration::from_millis(500)
        );
        let err = load_err(&["--admin-body-timeout", "0"]);
        assert!(err.contains("'--admin-body-timeout <DURATION>'"), "{err}");
        assert!(err.contains("must be more than 0"), "{err}");
    }

    #[test]
    fn size_forms() {
        let cases: &[(&str, usize)] = &[
            ("1048576", 1_048_576),
            ("512B", 512),
            ("64KiB", 64 * 1024),
            ("1MiB", 1 << 20),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("64KB", 64_000),
            ("2MB", 2_000_000),
            ("1GB", 1_000_000_000),
            ("1mib", 1 << 20),
            ("4 KiB", 4096),
        ];
        for &(text, expected) in cases {
            let config = load(&["--max-message-size", text, "--max-publish-body", text]);
            assert_eq!(config.max_message_size, expected, "{text}");
            assert_eq!(config.push.max_publish_body, expected, "{text}");
        }
        for bad in ["", "1.5MiB", "MiB", "12XB", "-5", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = load_err(&["--ping-interval", "20x"]);
        assert!(
            err.contains(
                "invalid value '20x' for '--ping-interval <DURATION>': expected a number of \
                 seconds, '500ms', '20s', '2m', or '0'/'off'"
            ),
            "{err}"
        );
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--tick", "0"],
                "'--tick <DURATION>'",
                "between 1ms and 1s",
            ),
            (
                &["--tick", "2s"],
                "'--tick <DURATION>'",
                "between 1ms and 1s",
            ),
            (
                &["--max-message-size", "124"],
                "'--max-message-size <BYTES>'",
                "at least 125",
            ),
            (
                &["--max-queued-bytes", "1023"],
                "'--max-queued-bytes <BYTES>'",
                "at least 1024",
            ),
            (&["--workers", "0"], "'--workers <N>'", "at least 1"),
            (&["--workers", "many"], "'--workers <N>'", "whole number"),
            (
                &["--listen", "localhost"],
                "'--listen <ADDR>'",
                "IP address and port",
            ),
            (
                &["--token-secret", ""],
                "'--token-secret <SECRET>'",
                "must not be empty",
            ),
            (&["--api-key", ""], "'--api-key <KEY>'", "must not be empty"),
            (
                &["--ping-timeout", "25h"],
                "'--ping-timeout <DURATION>'",
                "at most 24h",
            ),
            (
                &["--max-inbound-rate", "0"],
                "'--max-inbound-rate <N>'",
                "at least 1",
            ),
            (
                &["--log-level", "info,x=loud"],
                "'--log-level <FILTER>'",
                "EnvFilter",
            ),
            (
                &["--allowed-origin", "https://a.example/"],
                "'--allowed-origin <ORIGIN>'",
                "trailing '/'",
            ),
        ];
        for &(args, flag, expected) in cases {
            let err = load_err(args);
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        let err = load_err(&["--no-such-flag"]);
        assert!(err.contains("--no-such-flag"), "{err}");
    }

    #[test]
    fn help_and_version_are_reported_as_clap_errors() {
        for (flag, kind) in [
            ("--help", clap::error::ErrorKind::DisplayHelp),
            ("--version", clap::error::ErrorKind::DisplayVersion),
        ] {
            match Config::load_with_env(["pingwheel", flag], no_env) {
                Err(ConfigError::Cli(err)) => assert_eq!(err.kind(), kind),
                other => panic!("{flag}: expected a clap error, got {other:?}"),
            }
        }
    }

    #[test]
    fn help_documents_every_flag_with_its_default() {
        let Err(ConfigError::Cli(err)) = Config::load_with_env(["pingwheel", "--help"], no_env)
        else {
            panic!("--help should be reported as a clap error");
        };
        let help = err.render().to_string();
        let flags_and_defaults = [
            ("--config", ""),
            ("--listen", "[default: 0.0.0.0:8080]"),
            ("--admin-listen", "[default: 127.0.0.1:9090]"),
            ("--admin-body-timeout", "[default: 10s]"),
            ("--workers", "[default: number of CPU cores]"),
            ("--ping-interval", "[default: 20s]"),
            ("--ping-timeout", "[default: 20s]"),
            ("--open-timeout", "[default: 10s]"),
            ("--close-timeout", "[default: 10s]"),
            ("--drain-timeout", "[default: 10s]"),
            ("--max-message-size", "[default: 1MiB]"),
            ("--max-queued-bytes", "[default: 1MiB]"),
            ("--max-handshake-size", "[default: 8KiB]"),
            ("--echo", "[default: off]"),
            ("--tick", "[default: 10ms]"),
            ("--backlog", "[default: 4096]"),
            ("--log-level", "[default: info]"),
            ("--token-secret", "PINGWHEEL_TOKEN_SECRET"),
            ("--token-public-key", "[default: none]"),
            ("--api-key", "PINGWHEEL_API_KEY"),
            ("--allowed-origin", "[default: any origin]"),
            ("--max-subscriptions", "[default: 64]"),
            ("--max-channel-name", "[default: 128]"),
            ("--max-inbound-rate", "[default: 50]"),
            ("--max-publish-body", "[default: 1MiB]"),
            ("--max-token-channels", "[default: 256]"),
        ];
        // clap may wrap a default onto the next line; compare with whitespace collapsed.
        let collapsed = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            collapsed.contains("a second one exits at once with status 1"),
            "help lacks the second signal:\n{help}"
        );
        for (flag, default) in flags_and_defaults {
            assert!(help.contains(flag), "help lacks {flag}:\n{help}");
            assert!(
                collapsed.contains(default),
                "help lacks {default:?}:\n{help}"
            );
        }
    }

    #[test]
    fn echo_flag_forms() {
        assert!(load(&["--echo"]).echo);
        assert!(load(&["--echo=true"]).echo);
        assert!(!load(&["--echo=false"]).echo);
    }

    #[test]
    fn repeated_allowed_origin_collects() {
        let config = load(&[
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "http://localhost:3000",
        ]);
        assert_eq!(
            config.push.allowed_origins,
            ["https://a.example", "http://localhost:3000"]
        );
    }

    #[test]
    fn file_values_and_flag_precedence() {
        let file = TempFile::new(
            r#"
            listen = "127.0.0.1:7000"
            workers = 3
            ping_interval = "30s"
            ping_timeout = 5
            open_timeout = "off"
            max_message_size = "64KiB"
            max_queued_bytes = 4096
            echo = true
            tick = 0.005
            allowed_origins = ["https://a.example"]
            api_key = "from-file"
            "#,
        );
        let config = load(&[
            "--config",
            file.arg(),
            "--ping-interval",
            "45s",
            "--workers",
            "2",
        ]);
        assert_eq!(config.config_file.as_deref(), Some(file.0.as_path()));
        // Flags win over the file...
        assert_eq!(config.ping_interval, Some(45 * SEC));
        assert_eq!(config.workers.get(), 2);
        // ...the file wins over defaults...
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.ping_timeout, Some(5 * SEC));
        assert_eq!(config.open_timeout, None);
        assert_eq!(config.max_message_size, 64 * 1024);
        assert_eq!(config.max_queued_bytes, 4096);
        assert!(config.echo);
        assert_eq!(config.tick, Duration::from_millis(5));
        assert_eq!(config.push.allowed_origins, ["https://a.example"]);
        assert_eq!(config.push.api_key, Some(Secret::new("from-file")));
        // ...and the rest are defaults.
        assert_eq!(config.close_timeout, Config::default().close_timeout);
        assert_eq!(config.admin_listen, Config::default().admin_listen);
        // `--echo=false` overrides `echo = true` in the file.
        assert!(!load(&["--config", file.arg(), "--echo=false"]).echo);
    }

    #[test]
    fn environment_overrides_file_and_flag_overrides_environment() {
        let file = TempFile::new("token_secret = \"file-secret\"\napi_key = \"file-key\"\n");
        let env: HashMap<&str, &str> = [(ENV_TOKEN_SECRET, "env-secret"), (ENV_API_KEY, "env-key")]
            .into_iter()
            .collect();
        let lookup = |name: &str| env.get(name).map(OsString::from);
        let config = Config::load_with_env(["pingwheel", "--config", file.arg()], lookup)
            .expect("valid config");
        assert_eq!(config.push.token_secret, Some(Secret::new("env-secret")));
        assert_eq!(config.push.api_key, Some(Secret::new("env-key")));
        assert!(!config.push.is_insecure_dev_mode());
        let config = Config::load_with_env(
            [
                "pingwheel",
                "--config",
                file.arg(),
                "--token-secret",
                "flag-secret",
            ],
            lookup,
        )
        .expect("valid config");
        assert_eq!(config.push.token_secret, Some(Secret::new("flag-secret")));
        assert_eq!(config.push.api_key, Some(Secret::new("env-key")));
    }

    #[test]
    fn empty_secret_in_environment_is_an_error_that_does_not_leak() {
        let err = Config::load_with_env(["pingwheel"], |name: &str| {
            (name == ENV_API_KEY).then(|| OsString::from(""))
        })
        .expect_err("empty key must be rejected");
        assert_eq!(err.to_string(), "PINGWHEEL_API_KEY: must not be empty");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = load(&["--token-secret", "hunter2-jwt", "--api-key", "hunter2-api"]);
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("Secret(<redacted>)"), "{debug}");
        assert_eq!(
            config.push.token_secret.as_ref().map(Secret::expose),
            Some("hunter2-jwt")
        );
        let key = config.push.api_key.expect("set by flag");
        assert!(key.matches(b"hunter2-api"));
        assert!(!key.matches(b"hunter2-apx"));
        assert!(!key.matches(b"hunter2"));
    }

    #[test]
    fn file_errors_name_the_file_and_the_key() {
        assert_eq!(
            toml_err("ping_interval = \"20x\""),
            "config.toml: ping_interval: invalid value '20x': expected a number of seconds, \
             '500ms', '20s', '2m', or '0'/'off'"
        );
        assert_eq!(
            toml_err("tick = \"5s\""),
            "config.toml: tick: invalid value '5s': must be between 1ms and 1s"
        );
        assert_eq!(
            toml_err("max_message_size = 100"),
            "config.toml: max_message_size: invalid value '100': must be at least 125 bytes"
        );
        assert_eq!(
            toml_err("workers = 0"),
            "config.toml: workers: invalid value '0': must be at least 1"
        );
        assert_eq!(
            toml_err("listen = [1, 2]"),
            "config.toml: listen: expected a string or a number, found array"
        );
        assert_eq!(
            toml_err("api_key = \"\""),
            "config.toml: api_key: must not be empty"
        );
        assert_eq!(
            toml_err("allowed_origins = [\"https://ok.example\", 7]"),
            "config.toml: allowed_origins: item 1: expected a string, found integer"
        );
        assert_eq!(
            toml_err("close_timeout = \"off\""),
            "config.toml: close_timeout: invalid value 'off': expected a number of seconds, \
             '500ms', '20s' or '2m' (this setting cannot be 'off')"
        );
    }

    #[test]
    fn unknown_keys_and_syntax_errors_in_the_file() {
        let err = toml_err("echo = true\npingg_interval = \"20s\"\n");
        assert!(
            err.starts_with("config.toml: line 2, column 1: unknown field `pingg_interval`"),
            "{err}"
        );
        assert!(
            err.contains("`ping_interval`"),
            "the message lists the known keys: {err}"
        );
        let err = toml_err("[push]\nmax_subscriptions = 3\n");
        assert!(err.contains("unknown field `push`"), "{err}");
        let err = toml_err("listen = \n");
        assert!(err.starts_with("config.toml: line 1, column"), "{err}");
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = load_err(&["--config", "/nonexistent/pingwheel.toml"]);
        assert!(
            err.starts_with("/nonexistent/pingwheel.toml: cannot read config file:"),
            "{err}"
        );
    }

    /// Every key the file accepts; `FileConfig` must have exactly these fields.
    const FILE_KEYS: [&str; 25] = [
        "listen",
        "admin_listen",
        "workers",
        "ping_interval",
        "ping_timeout",
        "open_timeout",
        "close_timeout",
        "drain_timeout",
        "admin_body_timeout",
        "max_message_size",
        "max_queued_bytes",
        "max_handshake_size",
        "echo",
        "tick",
        "backlog",
        "log_level",
        "token_secret",
        "token_public_key",
        "api_key",
        "allowed_origins",
        "max_subscriptions",
        "max_channel_name",
        "max_inbound_rate",
        "max_publish_body",
        "max_token_channels",
    ];

    #[test]
    fn every_documented_key_is_accepted() {
        for key in FILE_KEYS {
            // A value of the wrong type proves the key is known: the error names the key
            // instead of calling it an unknown field.
            let err = toml_err(&format!("{key} = {{ nested = 1 }}"));
            assert!(err.starts_with(&format!("config.toml: {key}: ")), "{err}");
        }
    }

    /// The complete example in docs/operations.md uses every key, loads, and shows the
    /// embedded defaults for every setting that has one.
    #[test]
    fn operations_doc_example_uses_every_key_and_the_defaults() {
        let doc = include_str!("../../../docs/operations.md");
        let start = doc
            .find("```toml\n")
            .expect("docs/operations.md has a ```toml example");
        let body = &doc[start + "```toml\n".len()..];
        let example = &body[..body.find("```").expect("the example is closed")];
        let table: toml::Table = example.parse().expect("the example is valid TOML");
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = FILE_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(
            keys, expected,
            "the example must set every key exactly once"
        );

        let file = TempFile::new(example);
        let config = load(&["--config", file.arg()]);
        let defaults = Config::default();
        assert_eq!(
            Config {
                config_file: None,
                workers: defaults.workers,
                push: PushConfig {
                    token_secret: None,
                    token_public_key: None,
                    api_key: None,
                    allowed_origins: Vec::new(),
                    ..config.push.clone()
                },
                ..config.clone()
            },
            defaults,
            "the example should show the defaults"
        );
        assert!(config.push.token_secret.is_some());
        assert!(config.push.api_key.is_some());
        assert!(!config.push.allowed_origins.is_empty());
    }
}
