//! Durations in flags, as Kubernetes' components take them: Go's `time.ParseDuration`
//! syntax (`40s`, `5m`, `1h30m`, `500ms`, `1.5h`, `300us`, `0`), and for compatibility with
//! skiff's older flags a bare number in the flag's old unit.
//!
//! Use [`seconds_or_duration`] as a clap `value_parser`.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse; the text follows Go's `time.ParseDuration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidDuration(String);

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidDuration {}

/// The largest duration Go can represent (`math.MaxInt64` nanoseconds, about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    })
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers, each with an optional fraction
/// and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5h`, `300ms`; `0`
/// alone needs no unit. A negative duration is an error (no flag means one).
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(format!("time: invalid duration {s:?}"));
    let mut rest = s;
    let mut negative = false;
    if let Some(r) = rest.strip_prefix('-') {
        negative = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The number: digits, optionally a '.' and more digits (at least one digit overall).
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        // The unit: everything up to the next digit or '.'.
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(InvalidDuration(format!(
                "time: missing unit in duration {s:?}"
            )));
        }
        let Some(per) = unit_nanos(unit) else {
            return Err(InvalidDuration(format!(
                "time: unknown unit {unit:?} in duration {s:?}"
            )));
        };
        // Exact integer arithmetic; like Go, a fraction finer than a nanosecond is dropped.
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let mut nanos = whole.checked_mul(per).ok_or_else(invalid)?;
        // Digits beyond 20 are far below a nanosecond even for hours; keep the product in range.
        let frac = &frac[..frac.len().min(20)];
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(frac.len() as u32);
            // f < scale <= 1e20 and per <= 3.6e12: the product fits in a u128.
            nanos += f * per / scale;
        }
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        if total > MAX_NANOS {
            return Err(invalid());
        }
        rest = after;
    }
    if negative && total > 0 {
        return Err(InvalidDuration(format!(
            "time: invalid duration {s:?}: negative durations are not allowed"
        )));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A bare non-negative decimal number (`10`, `2.5`), if `s` is one.
fn bare_number(s: &str) -> Option<f64> {
    let digits = s.strip_prefix('+').unwrap_or(s);
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().filter(|&b| b == b'.').count() <= 1;
    ok.then(|| digits.parse().ok()).flatten()
}

fn bare_in(s: &str, unit: Duration) -> Option<Result<Duration, InvalidDuration>> {
    let n = bare_number(s)?;
    Some(
        Duration::try_from_secs_f64(n * unit.as_secs_f64())
            .ok()
            .filter(|d| d.as_nanos() <= MAX_NANOS)
            .ok_or_else(|| InvalidDuration(format!("time: invalid duration {s:?}"))),
    )
}

/// A clap `value_parser` for a flag that took bare seconds: `30` and `2.5` are seconds as
/// before; anything else is a Go duration (`30s`, `5m`, `1h30m`, `500ms`).
pub fn seconds_or_duration(s: &str) -> Result<Duration, InvalidDuration> {
    bare_in(s, Duration::from_secs(1)).unwrap_or_else(|| parse_duration(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn go_durations() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("40s"), Duration::from_secs(40));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h0m0s"), Duration::from_secs(3600));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("300us"), Duration::from_micros(300));
        assert_eq!(ok("300\u{b5}s"), Duration::from_micros(300));
        assert_eq!(ok("300\u{3bc}s"), Duration::from_micros(300));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("+2m"), Duration::from_secs(120));
        assert_eq!(ok("1m30s500ms"), Duration::from_millis(90_500));
        assert_eq!(ok("2h45m"), Duration::from_secs(2 * 3600 + 45 * 60));
        // Go drops what is finer than a nanosecond.
        assert_eq!(ok("1.0000000009s"), Duration::from_secs(1));
        assert_eq!(ok("0.000000000000000000000000000000001h"), Duration::ZERO);
    }

    #[test]
    fn go_errors() {
        let err = |s: &str| parse_duration(s).unwrap_err().to_string();
        assert_eq!(err("x"), r#"time: invalid duration "x""#);
        assert_eq!(err(""), r#"time: invalid duration """#);
        assert_eq!(err("-"), r#"time: invalid duration "-""#);
        assert_eq!(err("."), r#"time: invalid duration ".""#);
        assert_eq!(err(".s"), r#"time: invalid duration ".s""#);
        assert_eq!(err("s"), r#"time: invalid duration "s""#);
        assert_eq!(err("1"), r#"time: missing unit in duration "1""#);
        assert_eq!(err("1h30"), r#"time: missing unit in duration "1h30""#);
        assert_eq!(err("3d"), r#"time: unknown unit "d" in duration "3d""#);
        assert_eq!(err("1 s"), r#"time: unknown unit " s" in duration "1 s""#);
        assert_eq!(err("5M"), r#"time: unknown unit "M" in duration "5M""#);
        assert_eq!(
            err("-5s"),
            r#"time: invalid duration "-5s": negative durations are not allowed"#
        );
        assert_eq!(
            err("9999999999h"),
            r#"time: invalid duration "9999999999h""#
        );
        assert!(parse_duration("2562047h").is_ok());
        assert!(parse_duration("2562048h").is_err()); // beyond Go's int64 nanoseconds
    }

    #[test]
    fn bare_numbers_keep_their_unit() {
        let secs = |s: &str| seconds_or_duration(s).unwrap();
        assert_eq!(secs("40"), Duration::from_secs(40));
        assert_eq!(secs("0"), Duration::ZERO);
        assert_eq!(secs("2.5"), Duration::from_millis(2500));
        assert_eq!(secs("10m"), Duration::from_secs(600));
        assert_eq!(secs("1h30m"), Duration::from_secs(5400));
        assert_eq!(secs("500ms"), Duration::from_millis(500));
        assert_eq!(
            seconds_or_duration("ten").unwrap_err().to_string(),
            r#"time: invalid duration "ten""#
        );
        assert!(seconds_or_duration("-3").is_err());
        assert!(seconds_or_duration("1.2.3").is_err());
        assert!(seconds_or_duration("1e3").is_err());
    }
}
