//! The `pingwheel` binary: parse the configuration, start logging, run the server.
//!
//! With no arguments it serves WebSocket clients on `0.0.0.0:8080` and metrics on
//! `127.0.0.1:9090` (see `pingwheel --help`).

use std::io::IsTerminal;
use std::process::ExitCode;

use pingwheel::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => err.exit(),
    };
    if config.print_config {
        print!("{}", pingwheel::config::default_toml());
        return ExitCode::SUCCESS;
    }
    // `--log-level` was validated while loading.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match pingwheel::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, in the CLI's own style (like clap's errors), not a second copy
            // through the log: both would go to stderr.
            eprintln!("pingwheel: {err}");
            ExitCode::FAILURE
        }
    }
}
