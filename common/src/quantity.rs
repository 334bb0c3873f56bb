//! Resource quantities (`resource.Quantity`: "500m", "128Mi", "1.5", "1e3", "2Pi"), parsed
//! exactly, the one parser both the scheduler and the node agent use so they never read a
//! quantity differently.
//!
//! The grammar is kube's: an optional sign, a decimal number (`1`, `1.5`, `.5`, `1.`), then
//! nothing, a decimal SI suffix (`n u m k M G T P E`), a binary suffix
//! (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`e3`, `E-2`). Values more precise than the
//! unit asked for are rounded up, as `MilliValue` and `Value` do.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in thousandths of its unit, rounded up (as `MilliValue`); `None` if malformed
/// or too large for an `i128`.
pub fn parse_millis(s: &str) -> Option<i128> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() + frac.len() > 30 {
        return None;
    }
    let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
    let mut exp10 = 3 - i32::try_from(frac.len()).ok()?;
    let mut exp2 = 0u32;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        e if e.starts_with(['e', 'E']) => {
            let e: i32 = e[1..].parse().ok()?;
            if e.abs() > 40 {
                return None;
            }
            exp10 += e;
        }
        _ => return None,
    }
    let mut v = mantissa.checked_mul(1i128.checked_shl(exp2)?)?;
    if exp10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp10.unsigned_abs())?)?;
    } else {
        match 10i128.checked_pow(exp10.unsigned_abs()) {
            // Round up, as kube does.
            Some(d) => v = v / d + i128::from(v % d != 0),
            None => v = i128::from(v != 0),
        }
    }
    Some(if negative { -v } else { v })
}

/// Whole units from thousandths, rounded up.
fn whole(millis: i128) -> i128 {
    millis / 1000 + i128::from(millis % 1000 > 0)
}

/// Thousandths of the unit (millicores of `cpu`), rounded up; `None` if malformed, negative
/// or beyond `u64` (what a limit written to the kernel can be).
pub fn parse_milli_value(s: &str) -> Option<u64> {
    parse_millis(s).and_then(|m| u64::try_from(m).ok())
}

/// Whole units (bytes of `memory`), rounded up; `None` if malformed, negative or beyond
/// `u64`.
pub fn parse_value(s: &str) -> Option<u64> {
    parse_millis(s).and_then(|m| u64::try_from(whole(m)).ok())
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v.max(0)).unwrap_or(i64::MAX)
}

/// Millicores (or thousandths of any unit); malformed or negative is 0, too large saturates.
pub fn milli_value(q: &Quantity) -> i64 {
    parse_millis(&q.0).map_or(0, clamp)
}

/// Whole units, rounded up (bytes of memory, a count of pods); malformed or negative is 0,
/// too large saturates.
pub fn value(q: &Quantity) -> i64 {
    parse_millis(&q.0).map_or(0, |m| clamp(whole(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KI: i128 = 1 << 10;

    #[test]
    fn plain_numbers() {
        let m = |s: &str| parse_millis(s);
        assert_eq!(m("1"), Some(1000));
        assert_eq!(m("0"), Some(0));
        assert_eq!(m("1.5"), Some(1500));
        assert_eq!(m("0.1"), Some(100));
        assert_eq!(m(".5"), Some(500));
        assert_eq!(m("1."), Some(1000));
        assert_eq!(m("+2"), Some(2000));
        assert_eq!(m("-1"), Some(-1000));
        assert_eq!(m("-1.5"), Some(-1500));
        assert_eq!(m("0.0001"), Some(1)); // rounded up to the next milli
        assert_eq!(m("007"), Some(7000));
    }

    #[test]
    fn every_decimal_si_suffix() {
        let m = |s: &str| parse_millis(s);
        assert_eq!(m("1n"), Some(1)); // 1e-9 rounds up to one thousandth
        assert_eq!(m("250n"), Some(1));
        assert_eq!(m("1000000n"), Some(1));
        assert_eq!(m("2000000n"), Some(2));
        assert_eq!(m("1u"), Some(1));
        assert_eq!(m("1500u"), Some(2));
        assert_eq!(m("3000u"), Some(3));
        assert_eq!(m("100m"), Some(100));
        assert_eq!(m("1.5m"), Some(2));
        assert_eq!(m("1k"), Some(1_000_000));
        assert_eq!(m("1.5k"), Some(1_500_000));
        assert_eq!(m("500M"), Some(500_000_000_000));
        assert_eq!(m("1G"), Some(1_000_000_000_000));
        assert_eq!(m("1T"), Some(10i128.pow(15)));
        assert_eq!(m("1P"), Some(10i128.pow(18)));
        assert_eq!(m("2E"), Some(2 * 10i128.pow(21)));
    }

    #[test]
    fn every_binary_suffix() {
        let m = |s: &str| parse_millis(s);
        assert_eq!(m("1Ki"), Some(KI * 1000));
        assert_eq!(m("1.5Ki"), Some(1536 * 1000));
        assert_eq!(m("128Mi"), Some(128 * KI.pow(2) * 1000));
        assert_eq!(m("1Gi"), Some(KI.pow(3) * 1000));
        assert_eq!(m("2Ti"), Some(2 * KI.pow(4) * 1000));
        assert_eq!(m("1Pi"), Some(KI.pow(5) * 1000));
        assert_eq!(m("1Ei"), Some(KI.pow(6) * 1000));
        assert_eq!(m("0.5Gi"), Some(KI.pow(3) / 2 * 1000));
    }

    #[test]
    fn exponents() {
        let m = |s: &str| parse_millis(s);
        assert_eq!(m("1e3"), Some(1_000_000));
        assert_eq!(m("1E3"), Some(1_000_000));
        assert_eq!(m("1e+3"), Some(1_000_000));
        assert_eq!(m("1.5e3"), Some(1_500_000));
        assert_eq!(m("1e-3"), Some(1));
        assert_eq!(m("5e-1"), Some(500));
        assert_eq!(m("1e0"), Some(1000));
        // "E" alone is exa, with digits after it an exponent.
        assert_eq!(m("1E"), Some(10i128.pow(21)));
    }

    #[test]
    fn malformed() {
        for bad in [
            "", "abc", "1.2.3", "1Xi", "m", "1e", "1e999", ".", "-", "1 Mi", "1mi", "1KI", "1K",
            "Mi", "1e3.5", "--1", "0x10", "1Mi1",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn whole_and_milli_values() {
        assert_eq!(value(&Quantity("1.5".into())), 2);
        assert_eq!(value(&Quantity("1Ei".into())), 1 << 60);
        assert_eq!(value(&Quantity("100Ei".into())), i64::MAX); // saturates
        assert_eq!(value(&Quantity("-1".into())), 0);
        assert_eq!(milli_value(&Quantity("garbage".into())), 0);
        assert_eq!(milli_value(&Quantity("250m".into())), 250);

        assert_eq!(parse_value("128Mi"), Some(128 << 20));
        assert_eq!(parse_value("1Pi"), Some(1 << 50));
        assert_eq!(parse_value("1P"), Some(10u64.pow(15)));
        assert_eq!(parse_value("1.0001"), Some(2)); // bytes round up, like kubelet
        assert_eq!(parse_value("100m"), Some(1));
        assert_eq!(parse_value("-1Gi"), None);
        assert_eq!(parse_value("x"), None);
        assert_eq!(parse_value("100Ei"), None);
        assert_eq!(parse_milli_value("500m"), Some(500));
        assert_eq!(parse_milli_value("2"), Some(2000));
        assert_eq!(parse_milli_value("0.0005"), Some(1)); // millicores round up
        assert_eq!(parse_milli_value("1500u"), Some(2));
        assert_eq!(parse_milli_value("-1"), None);
    }
}
