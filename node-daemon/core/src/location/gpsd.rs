//! gpsd's JSON protocol (`gpsd_json(5)`), one response line at a time: what the node needs of
//! it, which is the TPV (time-position-velocity) reports and enough of the rest to log.
//!
//! A line is bounded before it is parsed ([`MAX_LINE_BYTES`]), and nothing in it is trusted:
//! a TPV's numbers come out as gpsd wrote them, for the [`Filter`](super::Filter) to judge.
//! Strings a peer sent reach a [`Message`] only truncated ([`MAX_RELEASE_CHARS`]).

use super::{Fix, FixQuality, Observation};
use serde_json::{Map, Value};

/// The longest line [`parse_line`] takes, without its line end. gpsd's own bound on a
/// response (`GPS_JSON_RESPONSE_MAX`) is 10,240 bytes since the u-blox 9's long reports; a SKY
/// report with every satellite in view comes close to it. Beyond this it is not gpsd.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// The most characters of gpsd's `release` a [`Message::Version`] keeps.
pub const MAX_RELEASE_CHARS: usize = 32;

/// One response from gpsd, as far as the node cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A TPV report: a fix, or news that there is none.
    Tpv(Observation),
    /// gpsd's greeting: its release (truncated) and protocol version.
    Version {
        release: String,
        proto_major: u64,
        proto_minor: u64,
    },
    /// The devices gpsd reads: how many. None: no receiver, so no TPV until one appears.
    Devices { count: usize },
    /// The answer to `?WATCH`: whether reports are on.
    Watch { enabled: bool },
    /// Any other class (SKY, DEVICE, GST, ATT, ERROR, ...): nothing the node uses.
    Other,
}

/// Why a line is not a message. Each is the peer's fault (or the line's: a byte lost on a
/// serial link); the client skips the line and goes on.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The line is longer than [`MAX_LINE_BYTES`]; refused before parsing.
    #[error("the line is {len} bytes; at most {MAX_LINE_BYTES} are taken")]
    TooLong { len: usize },
    /// Not JSON (or not UTF-8, or a number JSON cannot hold as an `f64`).
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object: gpsd only sends objects.
    #[error("not a JSON object")]
    NotObject,
    /// An object without a string `class`.
    #[error("no \"class\"")]
    NoClass,
    /// A field of a known class is missing where gpsd always sends it, or holds the wrong
    /// type or an impossible value (a `mode` of 7, a `time` that is no UTC date).
    #[error("field {field:?} is missing or malformed")]
    BadField { field: &'static str },
    /// A TPV says it has a fix (`mode` 2 or 3) but lacks `lat` or `lon`.
    #[error("a TPV with a fix (mode {mode}) but no position")]
    MissingPosition { mode: u8 },
}

impl ParseError {
    /// Every [`as_str`](Self::as_str) value: a metric label's fixed set.
    pub const KINDS: [&'static str; 6] = [
        "too_long",
        "not_json",
        "not_object",
        "no_class",
        "bad_field",
        "missing_position",
    ];

    /// The kind, for a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "too_long",
            Self::NotJson(_) => "not_json",
            Self::NotObject => "not_object",
            Self::NoClass => "no_class",
            Self::BadField { .. } => "bad_field",
            Self::MissingPosition { .. } => "missing_position",
        }
    }
}

/// Parses one line of gpsd's output, without its `\n` (a `\r` before it is fine).
pub fn parse_line(line: &[u8]) -> Result<Message, ParseError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ParseError::TooLong { len: line.len() });
    }
    // serde_json bounds nesting (128 levels), so a hostile line cannot exhaust the stack.
    let value: Value = serde_json::from_slice(line).map_err(ParseError::NotJson)?;
    let Value::Object(object) = value else {
        return Err(ParseError::NotObject);
    };
    let Some(Value::String(class)) = object.get("class") else {
        return Err(ParseError::NoClass);
    };
    Ok(match class.as_str() {
        "TPV" => Message::Tpv(tpv(&object)?),
        "VERSION" => Message::Version {
            release: match object.get("release") {
                Some(Value::String(s)) => s.chars().take(MAX_RELEASE_CHARS).collect(),
                _ => String::new(),
            },
            proto_major: unsigned(&object, "proto_major")?.unwrap_or(0),
            proto_minor: unsigned(&object, "proto_minor")?.unwrap_or(0),
        },
        "DEVICES" => Message::Devices {
            count: match object.get("devices") {
                Some(Value::Array(devices)) => devices.len(),
                None | Some(Value::Null) => 0,
                Some(_) => return Err(ParseError::BadField { field: "devices" }),
            },
        },
        "WATCH" => Message::Watch {
            // gpsd echoes the whole policy; `enable` defaults to true in it.
            enabled: match object.get("enable") {
                Some(Value::Bool(b)) => *b,
                None | Some(Value::Null) => true,
                Some(_) => return Err(ParseError::BadField { field: "enable" }),
            },
        },
        _ => Message::Other,
    })
}

/// A TPV object. `mode` decides: 0 (nothing seen yet) and 1 are no fix, 2 and 3 a fix that
/// must carry `lat` and `lon`.
fn tpv(object: &Map<String, Value>) -> Result<Observation, ParseError> {
    let mode = match unsigned(object, "mode")? {
        Some(m @ 0..=3) => m as u8,
        _ => return Err(ParseError::BadField { field: "mode" }),
    };
    let time_ms = match object.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(parse_utc_ms(s).ok_or(ParseError::BadField { field: "time" })?)
        }
        // Protocol 3.1 (gpsd before 2.96) wrote seconds since the epoch.
        Some(Value::Number(n)) => Some(
            n.as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e15)
                .map(|s| (s * 1000.0) as u64)
                .ok_or(ParseError::BadField { field: "time" })?,
        ),
        Some(_) => return Err(ParseError::BadField { field: "time" }),
    };
    let quality = match mode {
        2 => FixQuality::TwoD,
        3 => FixQuality::ThreeD,
        _ => return Ok(Observation::NoFix { time_ms }),
    };
    let (Some(lat), Some(lon)) = (number(object, "lat")?, number(object, "lon")?) else {
        return Err(ParseError::MissingPosition { mode });
    };
    // Above mean sea level, as the config's `alt_m`: `altMSL`, else the legacy `alt` (which
    // was MSL), else the ellipsoid's height less the geoid's separation when gpsd gives it.
    let alt_m = match (number(object, "altMSL")?, number(object, "alt")?) {
        (Some(msl), _) | (None, Some(msl)) => Some(msl),
        (None, None) => match number(object, "altHAE")? {
            Some(hae) => Some(hae - number(object, "geoidSep")?.unwrap_or(0.0)),
            None => None,
        },
    };
    let accuracy_m = match number(object, "eph")? {
        Some(eph) => Some(eph),
        None => match (number(object, "epx")?, number(object, "epy")?) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        },
    };
    Ok(Observation::Fix(Fix {
        lat,
        lon,
        // gpsd may carry a 3D receiver's last altitude into a 2D fix; it is not current.
        alt_m: alt_m.filter(|_| quality == FixQuality::ThreeD),
        accuracy_m,
        quality,
        time_ms,
    }))
}

/// An optional number field: absent or `null` is `None`, anything but a number is an error.
fn number(object: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, ParseError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(ParseError::BadField { field }),
        Some(_) => Err(ParseError::BadField { field }),
    }
}

/// An optional non-negative integer field.
fn unsigned(object: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, ParseError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(ParseError::BadField { field }),
        Some(_) => Err(ParseError::BadField { field }),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (also `+00:00` for the `Z`), UTC, as gpsd writes its
/// `time`, in Unix milliseconds; the fraction may have any number of digits and is cut to
/// milliseconds. A leap second (`:60`) counts as the second after it. `None` for anything
/// else, or a date before 1970 or after 9999.
pub fn parse_utc_ms(s: &str) -> Option<u64> {
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))?
        .as_bytes();
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[10] != b'T' {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = &s[range];
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match &s[19..] {
        [] => 0,
        [b'.', fraction @ ..] if !fraction.is_empty() && fraction.len() <= 9 => {
            if !fraction.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // The first three digits, padded: ".5" is 500 ms, ".123456" is 123 ms.
            (0..3).fold(0u64, |ms, i| {
                ms * 10 + fraction.get(i).map_or(0, |d| u64::from(d - b'0'))
            })
        }
        _ => return None,
    };
    if year < 1970 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs * 1000 + millis)
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date, for years from 1970 (the civil calendar as a count of
/// days; Howard Hinnant's `days_from_civil`, on unsigned numbers since nothing here is
/// before 1970).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    // Years start in March, so the leap day is the last day of a year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let m = (month + 9) % 12; // March is 0
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_utc_ms("2026-12-07T09:10:11.000Z"),
            Some(1_796_634_611_000)
        );
        assert_eq!(
            parse_utc_ms("2000-02-29T23:59:59.999999999Z"),
            Some(951_868_799_999)
        );
        assert_eq!(
            parse_utc_ms("2016-12-31T23:59:60Z"),
            parse_utc_ms("2017-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_utc_ms("2024-03-01T00:00:00+00:00"),
            Some(1_709_251_200_000)
        );
        for bad in [
            "",
            "Z",
            "2026-12-07T09:10:11",
            "2026-12-07 09:10:11Z",
            "2026-13-07T09:10:11Z",
            "2026-02-29T09:10:11Z",
            "1900-02-28T09:10:11Z",
            "1969-12-31T23:59:59Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T09:60:00Z",
            "2026-12-07T09:10:61Z",
            "2026-12-07T09:10:11.Z",
            "2026-12-07T09:10:11.1234567890Z",
            "2026-12-07T09:10:11,5Z",
            "+026-12-07T09:10:11Z",
            "2026-12-07T09:10:11.5+01:00",
            "２026-12-07T09:10:11Z",
        ] {
            assert_eq!(parse_utc_ms(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_utc_ms("9999-12-31T23:59:59.999Z"),
            Some(253_402_300_799_999)
        );
    }

    #[test]
    fn days_match_a_walk_through_the_calendar() {
        let mut days = 0;
        for year in 1970..2401 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_since_epoch(year, month, day), days);
                    days += 1;
                }
            }
        }
    }
}
