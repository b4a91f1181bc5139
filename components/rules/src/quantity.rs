//! Resource quantities (`100m`, `1.5`, `128Mi`, `1e3`) as exact integers, rounded up like
//! `Quantity.MilliValue()` / `Value()`.
//!
//! k8s-openapi's `Quantity` is an opaque string and no maintained crate parses it for
//! k8s-openapi 0.29, so this implements the API's quantity grammar (decimal and binary SI
//! suffixes, exponents) in integer arithmetic, never through floats.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "1e3", "2k") into thousandths of a
/// unit, rounded up. `None` when the string is not a valid quantity or overflows.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().ok()?;
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))?;
            (exp.parse::<i32>().ok()?, 0)
        }
    };
    // value * 1000 = mantissa * 10^(exp10 + 3 - frac digits) * 2^exp2
    let scale = exp10.checked_add(3)?.checked_sub(frac_part.len() as i32)?;
    let mut value = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    if scale >= 0 {
        value = value.checked_mul(10i128.checked_pow(scale as u32)?)?;
    } else {
        let div = 10i128.checked_pow(scale.unsigned_abs())?;
        value = value.checked_add(div - 1)? / div;
    }
    Some(if negative { -value } else { value })
}

fn clamp(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn round_up_to_units(milli: i128) -> i128 {
    if milli >= 0 {
        (milli + 999) / 1000
    } else {
        milli / 1000
    }
}

/// The milli-value of a quantity string (CPU in millicores), rounded up; `None` when invalid.
pub fn parse_milli_value(s: &str) -> Option<i64> {
    parse_milli(s).map(clamp)
}

/// The integer value of a quantity string (bytes of memory), rounded up; `None` when invalid.
pub fn parse_value(s: &str) -> Option<i64> {
    parse_milli(s).map(|v| clamp(round_up_to_units(v)))
}

/// The milli-value of a quantity; invalid quantities count as 0 (the API server validates them).
pub fn milli_value(q: &Quantity) -> i64 {
    parse_milli_value(&q.0).unwrap_or(0)
}

/// The integer value of a quantity, rounded up (e.g. bytes of memory); invalid ones count as 0.
pub fn value(q: &Quantity) -> i64 {
    parse_value(&q.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    // Moved from the scheduler's resource tests.
    #[test]
    fn parses_quantities_like_the_api() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2k"), Some(2_000_000));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1E3"), Some(1_000_000));
        assert_eq!(parse_milli("1E"), Some(10i128.pow(21)));
        assert_eq!(parse_milli("129e6"), Some(129_000_000_000));
        assert_eq!(parse_milli("1n"), Some(1), "rounds up to one milli");
        assert_eq!(parse_milli("-1"), Some(-1000));
        assert_eq!(parse_milli(".5"), Some(500));
        for bad in ["", "m", "1.2.3", "1Zi", "abc", "1e", "."] {
            assert_eq!(parse_milli(bad), None, "{bad}");
        }
    }

    // Moved from the scheduler's resource tests.
    #[test]
    fn value_rounds_up() {
        assert_eq!(value(&q("1500m")), 2);
        assert_eq!(value(&q("1Gi")), 1 << 30);
        assert_eq!(milli_value(&q("250m")), 250);
        assert_eq!(milli_value(&q("garbage")), 0);
    }

    // Moved from the agent's quantity tests (its float parser is gone).
    #[test]
    fn parses() {
        assert_eq!(parse_milli_value("250m"), Some(250));
        assert_eq!(parse_milli_value("1.5"), Some(1500));
        assert_eq!(parse_milli_value("2"), Some(2000));
        assert_eq!(parse_value("128Mi"), Some(128 << 20));
        assert_eq!(parse_value("1G"), Some(1_000_000_000));
        assert_eq!(parse_value("1e3"), Some(1000));
        assert_eq!(parse_value("100"), Some(100));
        assert_eq!(parse_value("x"), None);
    }

    #[test]
    fn exact_where_floats_are_not() {
        // 2^53 + 1 bytes is not representable as f64.
        assert_eq!(parse_value("9007199254740993"), Some(9_007_199_254_740_993));
        assert_eq!(parse_value("7.1Ei").map(|v| v > 0), Some(true));
        assert_eq!(
            parse_milli_value("0.0001"),
            Some(1),
            "rounds up like MilliValue"
        );
        assert_eq!(
            parse_milli("1e99999999999"),
            None,
            "exponent overflow is invalid"
        );
    }
}
