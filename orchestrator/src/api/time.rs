//! Durations as requests give them (`90s`, `15m`, `1h`, `7d`) and dates as responses show
//! them (RFC 3339, UTC).

use super::error::ApiError;

/// The lifetime a request asks for: `ttl` (a duration) or `ttl_secs`, else `default`; between
/// 1 second and `max`.
pub(super) fn ttl_from(
    ttl: Option<&str>,
    ttl_secs: Option<u64>,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let (field, secs) = match (ttl, ttl_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "ttl: give ttl or ttl_secs, not both".into(),
            ));
        }
        (Some(text), None) => (
            "ttl",
            parse_duration(text).map_err(|e| ApiError::BadRequest(format!("ttl: {e}")))?,
        ),
        (None, Some(secs)) => ("ttl_secs", secs),
        (None, None) => return Ok(default),
    };
    if secs == 0 {
        return Err(ApiError::BadRequest(format!("{field}: must be positive")));
    }
    if secs > max {
        return Err(ApiError::BadRequest(format!(
            "{field}: {secs}s is over the maximum of {max}s ({}d)",
            max / 86_400
        )));
    }
    Ok(secs)
}

/// Parses `90s`, `15m`, `1h`, `7d` (or plain seconds) into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration; use a number with s, m, h or d, e.g. 1h");
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(bad)
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-25T22:30:09Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_645_809), "2026-11-25T22:30:09Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(68_256_000), "1972-03-01T00:00:00Z");
    }

    #[test]
    fn dates_agree_with_a_day_by_day_walk() {
        let mut ymd = (1970u64, 1u64, 1u64);
        for days in 0..200_000u64 {
            assert_eq!(civil_from_days(days), ymd, "day {days}");
            let (y, m, d) = ymd;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            ymd = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("120"), Ok(120));
        for bad in [
            "",
            "h",
            "banana",
            "1x",
            "1.5h",
            "-1h",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
