//! The JSON forms of the apimachinery types that have their own `MarshalJSON` in Go:
//! `metav1.Time`, `metav1.MicroTime` and `metav1.Duration`.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix seconds of Go's zero `time.Time` (year 1): Go writes such a time as JSON `null`.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// `metav1.Time` from its protobuf seconds/nanos: `None` for the zero time (JSON `null`), else
/// RFC 3339 in UTC with whole seconds (`2006-01-02T15:04:05Z`), as `Time.MarshalJSON` writes it.
pub(crate) fn time(seconds: i64, nanos: i32, micro: bool) -> Result<Option<String>, String> {
    if seconds == GO_ZERO_TIME_UNIX && nanos == 0 {
        return Ok(None);
    }
    let nanos_total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos_total)
        .map_err(|e| format!("time {seconds}s {nanos}ns is out of range: {e}"))?;
    // Go truncates to the printed precision.
    let (t, fraction) = if micro {
        let micros = t.nanosecond() / 1000;
        (
            t.replace_nanosecond(0).map_err(|e| e.to_string())?,
            Some(micros),
        )
    } else {
        (t.replace_nanosecond(0).map_err(|e| e.to_string())?, None)
    };
    let whole = t
        .format(&Rfc3339)
        .map_err(|e| format!("time {seconds}s cannot be written as RFC 3339: {e}"))?;
    Ok(Some(match fraction {
        // "…:05Z" → "…:05.000000Z"
        Some(micros) => format!("{}.{micros:06}Z", whole.trim_end_matches('Z')),
        None => whole,
    }))
}

/// Go's `time.Duration.String()` of `nanos` ("1h2m3.5s", "1.5ms", "0s"), the JSON form of
/// `metav1.Duration`. No maintained crate writes Go's exact format, so it is done here.
pub(crate) fn go_duration(nanos: i64) -> String {
    let negative = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u == 0 {
        return "0s".into();
    }
    if u < 1_000_000_000 {
        // below one second: the largest unit that fits, with a fraction
        let (unit, precision) = if u < 1_000 {
            ("ns", 0)
        } else if u < 1_000_000 {
            ("µs", 3)
        } else {
            ("ms", 6)
        };
        let (fraction, whole) = fraction(u, precision);
        out.push_str(&whole.to_string());
        out.push_str(&fraction);
        out.push_str(unit);
    } else {
        let (fraction, seconds) = fraction(u, 9);
        u = seconds;
        let secs = u % 60;
        u /= 60;
        let mins = u % 60;
        let hours = u / 60;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        if hours > 0 || mins > 0 {
            out.push_str(&format!("{mins}m"));
        }
        out.push_str(&format!("{secs}{fraction}s"));
    }
    if negative {
        out.insert(0, '-');
    }
    out
}

/// Splits `v` into `v / 10^precision` and its decimal fraction (".25", trailing zeros and the
/// point left out when zero).
fn fraction(v: u64, precision: u32) -> (String, u64) {
    let divisor = 10u64.pow(precision);
    let frac = v % divisor;
    if frac == 0 {
        return (String::new(), v / divisor);
    }
    let digits = format!("{frac:0width$}", width = precision as usize);
    (format!(".{}", digits.trim_end_matches('0')), v / divisor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        let s = 1_000_000_000i64;
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1), "1ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(s), "1s");
        assert_eq!(go_duration(90 * s), "1m30s");
        assert_eq!(go_duration(3600 * s), "1h0m0s");
        assert_eq!(go_duration(3723 * s + 500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(-2 * s), "-2s");
        assert_eq!(go_duration(i64::MIN), "-2562047h47m16.854775808s");
    }

    #[test]
    fn times_like_go() {
        assert_eq!(time(GO_ZERO_TIME_UNIX, 0, false).unwrap(), None);
        assert_eq!(
            time(1_700_000_000, 999_999_999, false).unwrap().unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            time(1_700_000_000, 123_456_789, true).unwrap().unwrap(),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            time(0, 0, true).unwrap().unwrap(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert!(time(i64::MAX, 0, false).is_err());
    }
}
