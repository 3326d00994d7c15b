//! Durations as requests give them (`90s`, `15m`, `1h`, `7d`) and dates as responses show
//! them (RFC 3339, UTC).

use super::error::ApiError;
use time::format_description::well_known::Rfc3339;

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

/// Parses `90s`, `15m`, `1h`, `7d` (or plain seconds) into seconds: digits, then at most one
/// unit, nothing else (no spaces), as the OpenAPI document's pattern says.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{} is not a duration; use a number with s, m, h or d, e.g. 1h",
            edge_proto::field::shown(text)
        )
    };
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

/// The latest instant RFC 3339 can write: its years have four digits.
const LAST_RFC3339_UNIX: i64 = 253_402_300_799;

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-25T22:30:09Z`. A time past the year 9999,
/// which RFC 3339 cannot write, shows as its last second.
pub fn rfc3339(unix: u64) -> String {
    let secs = i64::try_from(unix).map_or(LAST_RFC3339_UNIX, |s| s.min(LAST_RFC3339_UNIX));
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        // Invariant: every second from 1970 to the end of 9999 formats.
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
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
    fn dates_past_what_rfc3339_writes_show_its_last_second() {
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
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
            " 1h",
            "1h ",
            "1 h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
