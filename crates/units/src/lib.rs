//! The one grammar for durations and sizes that operators type, shared by the gateway
//! (`pingwheel`: flags, environment, config file) and the load-test harness
//! (`pingwheel-loadtest`), which never imports the gateway.
//!
//! * **Durations**: a decimal number and a unit, `20s`, `1.5s`, `.25s`, `500ms`, `250us`
//!   (or `µs`), `100ns`, `2m`, `1h`; a bare number is seconds. Units: `ns`, `us`/`µs`,
//!   `ms`, `s`/`sec`/`secs`, `m`/`min`/`mins`, `h`. Parsing is exact (no floating point):
//!   a value finer than a nanosecond, or with more than nine fraction digits, is refused.
//! * **Sizes**: a whole number and an optional unit, case-insensitive: `1048576` or
//!   `512B` (bytes), `64KiB`, `1MiB`, `1GiB`, `1TiB` (powers of 1024), `64KB`, `1MB`,
//!   `1GB`, `1TB` (powers of 1000).
//!
//! Space around the text and between the number and the unit is allowed. What a value
//! may be (`off`, a range) is for each caller to decide; this crate only reads numbers.
//!
//! ```
//! use std::time::Duration;
//! use pingwheel_units::{format_duration, parse_duration, parse_size};
//!
//! assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
//! assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
//! assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
//! assert_eq!(parse_size("64KiB"), Ok(65_536));
//! assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
//! ```

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

use std::fmt;
use std::time::Duration;

/// Why a duration or size was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    input: String,
    kind: ErrorKind,
}

/// What was wrong with the text.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not a number followed by a unit (empty, a sign, an exponent, two dots, ...).
    Syntax,
    /// The unit is not one of the grammar's.
    UnknownUnit,
    /// A duration finer than a nanosecond, or a fraction in a size.
    TooPrecise,
    /// Larger than the type holds (`u64` seconds, `u64` bytes).
    TooLarge,
}

impl ParseError {
    fn new(input: &str, kind: ErrorKind) -> Self {
        ParseError {
            input: input.trim().to_owned(),
            kind,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Syntax => "expected a number followed by a unit",
            ErrorKind::UnknownUnit => "unknown unit",
            ErrorKind::TooPrecise => "more precise than the unit allows",
            ErrorKind::TooLarge => "too large",
        };
        write!(f, "`{}`: {what}", self.input)
    }
}

impl std::error::Error for ParseError {}

/// Splits `" 1.5 ms "` into `("1.5", "ms")`: the leading digits and dots, and the rest.
fn split(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    (number, unit.trim())
}

/// Parses a duration such as `20s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`, or a bare
/// number of seconds (`20`, `0.5`). See the crate docs for the grammar.
///
/// # Errors
///
/// [`ParseError`], naming the input.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let error = |kind| ParseError::new(text, kind);
    let (number, unit) = split(text);
    let unit_nanos: u128 = match unit {
        "" | "s" | "sec" | "secs" => 1_000_000_000,
        "ms" => 1_000_000,
        "us" | "µs" => 1_000,
        "ns" => 1,
        "m" | "min" | "mins" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ if number.is_empty() => return Err(error(ErrorKind::Syntax)),
        _ => return Err(error(ErrorKind::UnknownUnit)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(error(ErrorKind::Syntax));
    }
    if whole.len() > 20 {
        return Err(error(ErrorKind::TooLarge));
    }
    if fraction.len() > 9 {
        return Err(error(ErrorKind::TooPrecise));
    }
    // Only digits are left (an empty part is zero), at most 20 + 9 of them: no overflow.
    let digits = |d: &str| d.parse::<u128>().unwrap_or(0);
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction_nanos = digits(fraction) * unit_nanos;
    if !fraction_nanos.is_multiple_of(scale) {
        return Err(error(ErrorKind::TooPrecise));
    }
    let nanos = digits(whole) * unit_nanos + fraction_nanos / scale;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| error(ErrorKind::TooLarge))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Prints a duration the way [`parse_duration`] reads it back, in the largest unit
/// that keeps it exact: `2h`, `90s`, `1500ms`, `250us`, `7ns`, `0s`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let units: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    match units
        .iter()
        .find(|(n, _)| nanos != 0 && nanos.is_multiple_of(*n))
    {
        Some((n, unit)) => format!("{}{unit}", nanos / n),
        None => "0s".to_owned(),
    }
}

/// Parses a size in bytes such as `1048576`, `512B`, `64KiB`, `1MiB`, `1GB`. See the
/// crate docs for the grammar.
///
/// # Errors
///
/// [`ParseError`], naming the input.
pub fn parse_size(text: &str) -> Result<u64, ParseError> {
    let error = |kind| ParseError::new(text, kind);
    let (number, unit) = split(text);
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ if number.is_empty() => return Err(error(ErrorKind::Syntax)),
        _ => return Err(error(ErrorKind::UnknownUnit)),
    };
    if number.contains('.') {
        return Err(error(ErrorKind::TooPrecise));
    }
    if number.is_empty() {
        return Err(error(ErrorKind::Syntax));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| error(ErrorKind::TooLarge))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn durations_in_every_unit() {
        let cases: &[(&str, Duration)] = &[
            ("20", 20 * SEC),
            ("20s", 20 * SEC),
            ("20 sec", 20 * SEC),
            ("3secs", 3 * SEC),
            (" 5 s ", 5 * SEC),
            ("1.5s", Duration::from_millis(1500)),
            (".25", Duration::from_millis(250)),
            ("0.1s", Duration::from_millis(100)),
            ("500ms", Duration::from_millis(500)),
            ("2.5ms", Duration::from_micros(2500)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
            ("2m", 120 * SEC),
            ("0.5min", 30 * SEC),
            ("2mins", 120 * SEC),
            ("1h", 3600 * SEC),
            ("0", Duration::ZERO),
            ("0.000000001", Duration::from_nanos(1)),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_say_why_and_name_the_input() {
        let cases: &[(&str, ErrorKind)] = &[
            ("", ErrorKind::Syntax),
            ("s", ErrorKind::Syntax),
            ("ms5", ErrorKind::Syntax),
            ("-1s", ErrorKind::Syntax),
            (".", ErrorKind::Syntax),
            ("1..5s", ErrorKind::Syntax),
            ("20x", ErrorKind::UnknownUnit),
            ("1e3", ErrorKind::UnknownUnit),
            ("20 s s", ErrorKind::UnknownUnit),
            ("5 parsecs", ErrorKind::UnknownUnit),
            ("1.0000000001s", ErrorKind::TooPrecise),
            ("1.5ns", ErrorKind::TooPrecise),
            ("99999999999999999999h", ErrorKind::TooLarge),
            ("123456789012345678901", ErrorKind::TooLarge),
        ];
        for &(text, kind) in cases {
            let err = parse_duration(text).expect_err(text);
            assert_eq!(err.kind(), kind, "{text:?}");
            assert!(
                err.to_string().contains(&format!("`{}`", text.trim())),
                "{err}"
            );
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (2 * 3600 * SEC, "2h"),
            (120 * SEC, "2m"),
            (90 * SEC, "90s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(7), "7us"),
            (Duration::from_nanos(13), "13ns"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn sizes_in_every_unit() {
        let cases: &[(&str, u64)] = &[
            ("1048576", 1_048_576),
            ("512B", 512),
            ("64KiB", 64 << 10),
            ("1MiB", 1 << 20),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("64KB", 64_000),
            ("2MB", 2_000_000),
            ("1GB", 1_000_000_000),
            ("1tb", 1_000_000_000_000),
            ("1mib", 1 << 20),
            (" 4 KiB ", 4096),
            ("0", 0),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        let cases: &[(&str, ErrorKind)] = &[
            ("", ErrorKind::Syntax),
            ("MiB", ErrorKind::Syntax),
            ("-5", ErrorKind::Syntax),
            ("12XB", ErrorKind::UnknownUnit),
            ("1.5MiB", ErrorKind::TooPrecise),
            ("99999999999999999999GiB", ErrorKind::TooLarge),
            ("17179869184GiB", ErrorKind::TooLarge),
        ];
        for &(text, kind) in cases {
            let err = parse_size(text).expect_err(text);
            assert_eq!(err.kind(), kind, "{text:?}");
        }
    }
}
