//! Go-syntax durations for flags (`--leader-elect-lease-duration=15s`, `1m30s`, `500ms`,
//! `1.5h`), parsed by kube's `metav1.Duration` type ([`kube::core::Duration`]).

use std::time::Duration;

/// Longest duration Go's `time.Duration` holds (2562047h47m16.854775807s).
const GO_MAX: Duration = Duration::from_nanos(i64::MAX as u64);

/// Why a duration flag value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not Go duration syntax.
    #[error("invalid duration {value:?}: {reason}; use a number with a unit (ns, us, ms, s, m, h), e.g. 15s, 1m30s, 500ms")]
    Syntax {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A negative duration where only non-negative ones make sense.
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
    /// Longer than Go's `time.Duration` holds.
    #[error("invalid duration {0:?}: longer than 2562047h, the largest Go duration")]
    TooLong(String),
}

/// Parses a non-negative Go duration, as the clap `value_parser` of duration flags.
///
/// The conversion is kube's [`kube::core::Duration`] parser. It is lenient where Go is strict
/// (it takes `""` and a trailing bare `0`, as in `1s0`) and panics on a sign inside the value
/// or on numbers too large for a [`Duration`], so the value's shape is checked first.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let syntax = |reason: &str| DurationError::Syntax {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if value.len() > 100 {
        return Err(syntax("too long"));
    }
    let (negative, body) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    if body.is_empty() {
        return Err(syntax("empty"));
    }
    if body != "0" {
        check_shape(body).map_err(syntax)?;
    }
    let parsed: kube::core::Duration = body.parse().map_err(
        |e: kube::core::duration::ParseError| DurationError::Syntax {
            value: value.to_string(),
            reason: e.to_string(),
        },
    )?;
    let duration = Duration::from(parsed);
    if negative && !duration.is_zero() {
        return Err(DurationError::Negative(value.to_string()));
    }
    if duration > GO_MAX {
        return Err(DurationError::TooLong(value.to_string()));
    }
    Ok(duration)
}

/// Go's shape: one or more `<number><unit>` pairs, numbers of digits and at most one `.`.
/// Integer parts are kept to 10 digits, which with the length limit keeps every sum far from
/// overflowing a [`Duration`] (longer values are beyond Go's range anyway).
fn check_shape(body: &str) -> Result<(), &'static str> {
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = body;
    while !rest.is_empty() {
        let number_end = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() {
            return Err("expected a number");
        }
        if !number.chars().any(|c| c.is_ascii_digit()) || number.matches('.').count() > 1 {
            return Err("malformed number");
        }
        let integer = number.split('.').next().unwrap_or_default();
        if integer.trim_start_matches('0').len() > 10 {
            return Err("number too large");
        }
        rest = &rest[number_end..];
        let unit_end = rest.find(is_number).unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        if unit.is_empty() {
            return Err("missing unit");
        }
        if unit.contains(['+', '-']) {
            return Err("a sign is allowed only at the start");
        }
        rest = &rest[unit_end..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_duration("5m0s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_duration("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_duration("+3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("-0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", "15", "s", "10x", "1s0", "..5s", ".s", "1e3s", "1 s", "+", "-",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax { .. })),
                "{bad:?}: {:?}",
                parse_duration(bad)
            );
        }
        assert_eq!(
            parse_duration("-5s"),
            Err(DurationError::Negative("-5s".into()))
        );
        assert!(matches!(
            parse_duration("3000000h"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn never_panics_where_the_kube_parser_would() {
        // Each of these panics inside kube's parser (negative or overflowing std Durations).
        for input in [
            "1m-3s".to_string(),
            "1s+-2s".to_string(),
            format!("{}h", "9".repeat(90)),
            format!("{}h", "9".repeat(20)),
            "9999999999h".repeat(9),
        ] {
            assert!(parse_duration(&input).is_err(), "{input}");
        }
    }

    #[test]
    fn works_as_a_clap_value_parser() {
        #[derive(clap::Parser)]
        struct Cli {
            #[arg(long, default_value = "15s", value_parser = parse_duration)]
            wait: Duration,
        }
        use clap::Parser;
        assert_eq!(Cli::parse_from(["x"]).wait, Duration::from_secs(15));
        assert_eq!(
            Cli::parse_from(["x", "--wait=2m"]).wait,
            Duration::from_secs(120)
        );
        let err = Cli::try_parse_from(["x", "--wait=15"]).err().unwrap();
        assert!(err.to_string().contains("missing unit"), "{err}");
    }
}
