//! `--print-config`: every setting of [`Config`] as a commented TOML file, written from
//! the same clap definitions as `--help` (doc comment, flag, variable, default), so it
//! cannot drift from the code. `deploy/pingwheel.toml` is its output, and the gateway
//! reads it back to exactly [`Config::default`] (both checked by tests).

use std::fmt::Write as _;

use clap::{Arg, ArgAction, CommandFactory};
use toml::Value;

use super::kinds::{Bool, Kind};
use super::{COMMAND_LINE_ONLY, Config};

/// Comment lines are wrapped to fit this many columns.
const WIDTH: usize = 88;

/// The text `pingwheel --print-config` prints: a TOML file that sets every setting to its
/// default, each under its `--help` text, flag and environment variable. Settings without
/// a default (the secrets and the key file) are commented out, so no secret is ever
/// printed.
pub fn default_toml() -> String {
    let command = Config::command();
    let mut out = String::from(
        "# pingwheel configuration: every setting with its default, as printed by\n\
         # `pingwheel --print-config`. Use it with `pingwheel --config FILE`.\n",
    );
    for line in command
        .get_after_help()
        .map(ToString::to_string)
        .unwrap_or_default()
        .lines()
    {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str(
        "# Settings without a default are commented out; keep secrets in the environment\n\
         # variables named below, or make this file readable by the gateway only.\n",
    );
    let mut heading = None;
    let settings = command.get_arguments().filter(|arg| {
        let id = arg.get_id().as_str();
        let builtin = matches!(arg.get_action(), ArgAction::Help | ArgAction::Version);
        !builtin && !COMMAND_LINE_ONLY.contains(&id)
    });
    for arg in settings {
        if arg.get_help_heading() != heading {
            heading = arg.get_help_heading();
            let _ = write!(out, "\n# --- {} ---\n", heading.unwrap_or("General"));
        }
        out.push('\n');
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        comment(&mut out, &help);
        let mut source = format!("Flag: --{}", arg.get_long().unwrap_or_default());
        if matches!(arg.get_action(), ArgAction::Append) {
            source.push_str(" (repeatable)");
        }
        if let Some(var) = arg.get_env() {
            let _ = write!(source, "; environment variable: {}", var.to_string_lossy());
        }
        comment(&mut out, &source);
        let _ = writeln!(out, "{}", assignment(arg));
    }
    out.push_str(NAMESPACE_EXAMPLE);
    out
}

/// The `[[namespace]]` tables have no flag: the file shows them as a commented example
/// (tables must come after every plain key).
const NAMESPACE_EXAMPLE: &str = "
# History per namespace (file only): the longest matching prefix wins; the empty
# prefix is the default namespace (built in: no history), \"#user\" configures every
# user's personal stream (built in: history_size = 16, history_ttl = \"5m\").
# history_size: messages kept per channel (0 = none); history_ttl: how long each is
# kept (at most 7 days). See docs/operations.md, \"History\".
# [[namespace]]
# prefix = \"chat:\"
# history_size = 100
# history_ttl = \"10m\"
";

/// `key = <default>`, or the key commented out when it has no default.
fn assignment(arg: &Arg) -> String {
    let key = arg.get_id().as_str();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if matches!(arg.get_action(), ArgAction::Append) {
        return format!("{key} = {}", Value::from(defaults));
    }
    let Some(default) = defaults.first() else {
        return format!("# {key} = \"\"");
    };
    let is_bool = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.as_str());
    let value = match (default.parse::<i64>(), Bool::parse(default)) {
        (Ok(n), _) => Value::Integer(n),
        (_, Ok(b)) if is_bool == Some("BOOL") => Value::Boolean(b),
        _ => Value::String(default.clone()),
    };
    format!("{key} = {value}")
}

/// Appends `text` as `# ` comment lines of at most [`WIDTH`] columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            let _ = writeln!(out, "{line}");
            line.truncate(1);
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(out, "{line}");
}
