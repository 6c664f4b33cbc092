use super::kinds::{Fixed, Kind, Size};
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

fn from_toml(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(Path::new("config.toml"), text)
}

#[track_caller]
fn toml_err(text: &str) -> String {
    match from_toml(text) {
        Ok(config) => panic!("{text:?} unexpectedly parsed: {config:?}"),
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
    assert_eq!(config.max_ping_slack, SEC);
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
    let push = &config;
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
        assert!(Fixed::parse(bad).is_err(), "{bad:?} should not parse");
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
    assert_eq!(
        load(&["--max-ping-slack", "0"]).max_ping_slack,
        Duration::ZERO
    );
    let conn = load(&["--max-ping-slack", "250ms"]).conn();
    assert_eq!(conn.keepalive.ping_slack(), Duration::from_millis(250));
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
        assert_eq!(config.max_publish_body, expected, "{text}");
    }
    for bad in ["", "1.5MiB", "MiB", "12XB", "-5", "99999999999999999999GiB"] {
        assert!(Size::<1>::parse(bad).is_err(), "{bad:?} should not parse");
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
            &["--max-ping-slack", "2s"],
            "'--max-ping-slack <DURATION>'",
            "between 0 and 1s",
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
    let Err(ConfigError::Cli(err)) = Config::load_with_env(["pingwheel", "--help"], no_env) else {
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
        ("--max-ping-slack", "[default: 1s]"),
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
        config.allowed_origins,
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
    assert_eq!(config.allowed_origins, ["https://a.example"]);
    assert_eq!(config.api_key, Some(Secret::new("from-file")));
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
    let config =
        Config::load_with_env(["pingwheel", "--config", file.arg()], lookup).expect("valid config");
    assert_eq!(config.token_secret, Some(Secret::new("env-secret")));
    assert_eq!(config.api_key, Some(Secret::new("env-key")));
    assert!(!config.is_insecure_dev_mode());
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
    assert_eq!(config.token_secret, Some(Secret::new("flag-secret")));
    assert_eq!(config.api_key, Some(Secret::new("env-key")));
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
        config.token_secret.as_ref().map(Secret::expose),
        Some("hunter2-jwt")
    );
    let key = config.api_key.expect("set by flag");
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
const FILE_KEYS: [&str; 37] = [
    "listen",
    "admin_listen",
    "admin_body_timeout",
    "workers",
    "ping_interval",
    "ping_timeout",
    "max_ping_slack",
    "open_timeout",
    "close_timeout",
    "drain_timeout",
    "max_message_size",
    "max_queued_bytes",
    "max_handshake_size",
    "echo",
    "tick",
    "backlog",
    "log_level",
    "tls_cert",
    "tls_key",
    "admin_tls_cert",
    "admin_tls_key",
    "token_secret",
    "token_public_key",
    "api_key",
    "allowed_origins",
    "max_subscriptions",
    "max_channel_name",
    "max_inbound_rate",
    "max_publish_body",
    "max_token_channels",
    "engine",
    "redis_urls",
    "node_name",
    "redis_timeout",
    "history_max_bytes",
    "recovery_max",
    "channel_idle_forget",
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
    let doc = include_str!("../../../../docs/operations.md");
    let start = doc
        .find("```toml\n")
        .expect("docs/operations.md has a ```toml example");
    let body = &doc[start + "```toml\n".len()..];
    let example = &body[..body.find("```").expect("the example is closed")];
    let table: toml::Table = example.parse().expect("the example is valid TOML");
    let mut keys: Vec<&str> = table
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "namespace")
        .collect();
    keys.sort_unstable();
    assert!(table.contains_key("namespace"), "and a [[namespace]] table");
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
            token_secret: None,
            token_public_key: None,
            tls_cert: None,
            tls_key: None,
            admin_tls_cert: None,
            admin_tls_key: None,
            api_key: None,
            allowed_origins: Vec::new(),
            node_name: None,
            namespaces: Vec::new(),
            ..config.clone()
        },
        defaults,
        "the example should show the defaults"
    );
    assert!(config.token_secret.is_some());
    assert!(config.api_key.is_some());
    assert!(!config.allowed_origins.is_empty());
}

#[test]
fn the_shared_grammar_takes_microseconds_and_workers_take_auto() {
    let config = load(&["--tick", "1500us", "--ping-timeout", "250000us"]);
    assert_eq!(config.tick, Duration::from_micros(1500));
    assert_eq!(config.ping_timeout, Some(Duration::from_millis(250)));
    let file = TempFile::new("close_timeout = \"500us\"\nworkers = \"auto\"\n");
    let config = load(&["--config", file.arg()]);
    assert_eq!(config.close_timeout, Duration::from_micros(500));
    assert_eq!(config.workers, Config::default().workers);
    assert_eq!(
        load(&["--workers", "AUTO"]).workers,
        Config::default().workers
    );
}

#[test]
fn every_field_but_the_command_line_only_ones_is_a_file_key() {
    let mut ids: Vec<String> = Config::command()
        .get_arguments()
        .map(|arg| arg.get_id().as_str().to_owned())
        .filter(|id| !COMMAND_LINE_ONLY.contains(&id.as_str()))
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = FILE_KEYS.iter().map(|k| (*k).to_owned()).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for key in COMMAND_LINE_ONLY {
        let err = toml_err(&format!("{key} = true"));
        assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
    }
}

#[test]
fn print_config_sets_every_key_and_reads_back_as_the_defaults() {
    let printed = default_toml();
    let table: toml::Table = printed.parse().expect("--print-config prints valid TOML");
    for key in FILE_KEYS {
        let set = table.contains_key(key);
        let commented = printed.contains(&format!("\n# {key} = "));
        assert!(
            set != commented,
            "{key}: set {set}, commented out {commented}"
        );
    }
    let file = TempFile::new(&printed);
    let config = load(&["--config", file.arg()]);
    assert_eq!(
        config,
        Config {
            config_file: Some(file.0.clone()),
            ..Config::default()
        }
    );
}

#[test]
fn print_config_never_prints_a_secret() {
    let env = |name: &str| (name == ENV_API_KEY).then(|| OsString::from("hunter2-env"));
    let config = Config::load_with_env(
        [
            "pingwheel",
            "--print-config",
            "--token-secret",
            "hunter2-flag",
        ],
        env,
    )
    .expect("valid");
    assert!(config.print_config);
    let printed = default_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    for key in [
        "token_secret",
        "api_key",
        "token_public_key",
        "tls_cert",
        "tls_key",
        "admin_tls_cert",
        "admin_tls_key",
    ] {
        assert!(
            printed.contains(&format!("\n# {key} = \"\"\n")),
            "{key}:\n{printed}"
        );
    }
    assert!(
        printed.contains("environment variable: PINGWHEEL_API_KEY"),
        "{printed}"
    );
}

#[test]
fn deploy_example_is_the_print_config_output() {
    let committed = include_str!("../../../../deploy/pingwheel.toml");
    assert!(
        committed == default_toml(),
        "deploy/pingwheel.toml differs from `pingwheel --print-config`; regenerate it with\n  \
         cargo run --bin pingwheel -- --print-config > deploy/pingwheel.toml"
    );
}

#[test]
fn engine_settings_parse_and_hide_redis_passwords() {
    let config = load(&[
        "--engine",
        "redis",
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-url",
        "redis://:hunter2@10.0.0.2:6380/3",
        "--node-name",
        "edge-1",
        "--redis-timeout",
        "250ms",
    ]);
    assert_eq!(config.engine, super::EngineKind::Redis);
    assert_eq!(config.redis_urls.len(), 2);
    assert_eq!(config.node_name.as_deref(), Some("edge-1"));
    assert_eq!(config.redis_timeout, Duration::from_millis(250));
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert_eq!(Config::default().engine, super::EngineKind::Memory);
    for bad in [
        &["--engine", "etcd"][..],
        &["--redis-url", "http://127.0.0.1:6379"],
        &["--node-name", "two words"],
        &["--redis-timeout", "0"],
    ] {
        let err = load_err(bad);
        assert!(err.contains(bad[0]), "{err}");
    }
}

#[test]
fn history_settings_and_namespace_tables() {
    let config = load(&["--history-max-bytes", "64MiB", "--recovery-max", "0"]);
    assert_eq!(
        (config.history_max_bytes, config.recovery_max),
        (64 << 20, 0)
    );
    assert_eq!(config.channel_idle_forget, Duration::from_secs(600));
    assert!(config.namespaces.is_empty());
    let file = TempFile::new(
        "channel_idle_forget = \"1h\"\n\
         [[namespace]]\nprefix = \"chat:\"\nhistory_size = 100\nhistory_ttl = \"10m\"\n\
         [[namespace]]\nprefix = \"#user\"\nhistory_size = 50\nhistory_ttl = \"168h\"\n\
         [[namespace]]\nprefix = \"\"\n",
    );
    let config = load(&["--config", file.arg(), "--recovery-max", "20"]);
    assert_eq!(config.recovery_max, 20, "a flag still overrides the file");
    assert_eq!(config.channel_idle_forget, Duration::from_secs(3600));
    let ns = config.namespaces();
    use crate::engine::Stream;
    assert_eq!(ns.of(Stream::Channel("chat:1")).history_size, 100);
    assert_eq!(
        ns.of(Stream::Channel("chat:1")).history_ttl,
        Duration::from_secs(600)
    );
    assert_eq!(
        ns.of(Stream::User("42")).history_ttl,
        Duration::from_secs(7 * 24 * 3600)
    );
    assert_eq!(ns.of(Stream::Channel("other")).history_size, 0);
    assert_eq!(
        config.history_limits().idle_forget,
        Duration::from_secs(3600)
    );
}

#[test]
fn bad_history_settings_name_the_setting() {
    let err = load_err(&["--history-max-bytes", "1KiB"]);
    assert!(
        err.contains("--history-max-bytes") && err.contains("at least 1048576"),
        "{err}"
    );
    let cases = [
        (
            "[[namespace]]\nprefix = \"a\"\nprefix = \"b\"\n",
            "duplicate key",
        ),
        (
            "[[namespace]]\nprefix = \"a\"\nhistory_size = 5\n",
            "namespace \"a\": history_ttl must be more than 0",
        ),
        (
            "[[namespace]]\nprefix = \"a\"\nhistory_size = 5\nhistory_ttl = \"169h\"\n",
            "namespace: [[namespace]] 0: history_ttl '169h' is over 7 days",
        ),
        (
            "[[namespace]]\nprefix = \"a\"\nhistory_size = 5\nhistory_ttl = \"soon\"\n",
            "invalid history_ttl 'soon'",
        ),
        (
            "[[namespace]]\nprefix = \"a\"\n[[namespace]]\nprefix = \"a\"\n",
            "namespace prefix \"a\" is given twice",
        ),
        (
            "[[namespace]]\nprefix = \"#x\"\n",
            "namespace prefix \"#x\" cannot start a channel name",
        ),
        (
            "[[namespace]]\nprefix = \"a\"\nhistory_sise = 5\n",
            "unknown field `history_sise`",
        ),
        ("namespace = 3\n", "expected [[namespace]] tables"),
    ];
    for (text, want) in cases {
        let err = toml_err(text);
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn tls_files_come_in_pairs_and_the_error_names_the_missing_flag() {
    let config = load(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
    assert_eq!(config.tls_cert.as_deref(), Some(Path::new("c.pem")));
    assert_eq!(config.tls_key.as_deref(), Some(Path::new("k.pem")));
    assert_eq!(config.admin_tls_cert, None);
    for (args, missing) in [
        (&["--tls-cert", "c.pem"][..], "--tls-key"),
        (&["--tls-key", "k.pem"][..], "--tls-cert"),
        (&["--admin-tls-cert", "c.pem"][..], "--admin-tls-key"),
        (&["--admin-tls-key", "k.pem"][..], "--admin-tls-cert"),
    ] {
        let mut argv = vec!["pingwheel"];
        argv.extend_from_slice(args);
        let err = Config::load_with_env(argv, |_| None).unwrap_err();
        assert!(matches!(err, ConfigError::Cli(_)), "{err}");
        assert!(err.to_string().contains(missing), "{args:?}: {err}");
    }
    // Half a pair in the file is refused the same way; the other half on the command
    // line completes it.
    let file = TempFile::new("tls_cert = \"c.pem\"\n");
    let err = Config::load_with_env(["pingwheel", "--config", file.arg()], |_| None).unwrap_err();
    assert!(err.to_string().contains("--tls-key"), "{err}");
    let config = load(&["--config", file.arg(), "--tls-key", "k.pem"]);
    assert_eq!(config.tls_key.as_deref(), Some(Path::new("k.pem")));
}
