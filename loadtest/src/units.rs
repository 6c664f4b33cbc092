//! Parsing and printing of the quantities operators type on the command line:
//! durations (`30s`, `250ms`, `1.5m`, `100us`), sizes (`4096`, `64KiB`) and rates
//! (`5000/s`, `300/m`, `20`). Durations and sizes follow the grammar of the shared
//! `pingwheel-units` crate, so a value means the same here as in the gateway's flags;
//! rates are the harness's own.

use std::fmt;
use std::time::Duration;

/// Why a duration, size or rate on the command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Splits `"1.5ms"` into `(1.5, "ms")` (the count of a rate).
fn split_number(text: &str) -> Result<(f64, &str), ParseError> {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let value: f64 = number
        .parse()
        .map_err(|_| ParseError(format!("`{text}`: expected a number followed by a unit")))?;
    if !value.is_finite() {
        return Err(ParseError(format!("`{text}`: not a finite number")));
    }
    Ok((value, unit.trim()))
}

/// Parses a duration such as `30s`, `250ms`, `1.5m`, `2h`, `100us` or `0`, in the
/// grammar the gateway also uses ([`pingwheel_units`]).
///
/// A bare number is read as seconds (`--duration 30` is `30s`), because that is what
/// operators mean most often.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    pingwheel_units::parse_duration(text).map_err(|e| {
        ParseError(format!(
            "{e} (expected a duration such as 30s, 250ms, 100us or 1.5m; a bare number is seconds)"
        ))
    })
}

/// Parses a size in bytes such as `4096`, `64KiB`, `1MiB` or `1MB`, in the grammar the
/// gateway also uses ([`pingwheel_units`]).
pub fn parse_size(text: &str) -> Result<u64, ParseError> {
    pingwheel_units::parse_size(text).map_err(|e| {
        ParseError(format!(
            "{e} (expected a size in bytes such as 4096, 64KiB or 1MiB)"
        ))
    })
}

/// Parses a rate such as `5000/s`, `300/m`, `10/ms` or a bare `20` (per second) into
/// events per second. Zero is allowed; callers decide what zero means.
pub fn parse_rate(text: &str) -> Result<f64, ParseError> {
    let (count, per) = match text.split_once('/') {
        Some((count, per)) => (count, per.trim()),
        None => (text, "s"),
    };
    let (value, unit) = split_number(count)?;
    if !unit.is_empty() {
        return Err(ParseError(format!(
            "`{text}`: expected a rate like 5000/s, 300/m or 20"
        )));
    }
    let per_seconds = match per {
        "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            // `5000/2s` style: a count per duration.
            parse_duration(other)
                .map_err(|_| ParseError(format!("`{text}`: unknown rate unit `/{other}`")))?
                .as_secs_f64()
        }
    };
    if per_seconds <= 0.0 {
        return Err(ParseError(format!(
            "`{text}`: rate period must be positive"
        )));
    }
    Ok(value / per_seconds)
}

pub use pingwheel_units::format_duration;

/// Prints a byte count with a binary unit (`1.5 MiB`).
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.5m", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("100us", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            ("0", Duration::ZERO),
            (" 5 s ", Duration::from_secs(5)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_the_input_named() {
        for text in ["", "s", "5 parsecs", "-1s", "1e400s", "1..2s"] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.to_string().contains(text.trim()), "{error}");
        }
    }

    #[test]
    fn sizes_share_the_gateways_grammar() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        let error = parse_size("1.5MiB").expect_err("sizes are whole");
        assert!(error.to_string().contains("1.5MiB"), "{error}");
    }

    #[test]
    fn rates_in_every_unit() {
        let cases = [
            ("5000/s", 5000.0),
            ("5000", 5000.0),
            ("300/m", 5.0),
            ("10/ms", 10_000.0),
            ("3600/h", 1.0),
            ("10/2s", 5.0),
            ("0", 0.0),
            ("0.5/s", 0.5),
        ];
        for (text, expected) in cases {
            let rate = parse_rate(text).expect(text);
            assert!((rate - expected).abs() < 1e-9, "{text}: {rate}");
        }
    }

    #[test]
    fn bad_rates_are_rejected() {
        for text in ["", "fast", "5/parsec", "5ms/s", "5/0s"] {
            assert!(parse_rate(text).is_err(), "{text}");
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        for duration in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(1500),
            Duration::from_micros(7),
            Duration::from_nanos(13),
        ] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
    }

    #[test]
    fn bytes_pick_a_binary_unit() {
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(1536.0), "1.5 KiB");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
