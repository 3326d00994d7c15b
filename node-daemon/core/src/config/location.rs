//! The `location` key: a fixed point, or a receiver read through gpsd, and when to report it.
//!
//! ```toml
//! location = { lat = 52.52, lon = 13.405 }               # fixed (source = "fixed" may be written)
//! location = { source = "gpsd" }                         # live, from gpsd on 127.0.0.1:2947
//! location = { source = "gpsd", gpsd = "10.0.0.2:2947", lat = 52.52, lon = 13.405,
//!              report_distance_m = 100, report_min_secs = 10, report_max_secs = 600 }
//! ```
//!
//! A gpsd source's `lat`, `lon` and `alt_m` are its fallback, reported while the receiver has
//! never had a fix; without them a join file's `location` serves as the fallback.

use super::GeoPoint;
use super::error::{ConfigError, invalid};
use super::raw::RawConfigLocation;
use super::validate::validate_point;
use crate::location::ReportPolicy;
use edge_proto::field::{self, FieldPath, shown};
use std::time::Duration;

/// Where gpsd listens unless `location.gpsd` says otherwise: its default port on the node.
pub const DEFAULT_GPSD_ADDRESS: &str = "127.0.0.1:2947";

/// The longest `location.gpsd`: a host name of [`field::MAX_HOST_LEN`], or a bracketed IPv6
/// address, and a port.
pub const MAX_GPSD_ADDRESS_BYTES: usize = field::MAX_HOST_LEN + "[]:65535".len();

/// How `location.gpsd` is written, for error messages.
const GPSD_EXAMPLE: &str = "expected HOST:PORT, e.g. 127.0.0.1:2947 or [::1]:2947";

/// The validated `location`: where the position comes from, and when it is reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationConfig {
    pub source: LocationSource,
    /// `report_distance_m`, `report_min_secs`, `report_max_secs`. A fixed location uses
    /// the heartbeat (`report_max_secs`) only.
    pub report: ReportPolicy,
}

/// Where the node's position comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum LocationSource {
    /// `lat`/`lon` (and `alt_m`), as written: the node does not move.
    Fixed(GeoPoint),
    /// `source = "gpsd"`: a receiver, through gpsd.
    Gpsd {
        /// `gpsd`: `host:port` ([`DEFAULT_GPSD_ADDRESS`] unless set), checked for shape and
        /// written back in one form (a name in lower case, an IPv6 address in brackets); the
        /// client resolves it.
        address: String,
        /// `lat`/`lon`/`alt_m` of a gpsd source: reported while the receiver has never had
        /// a fix.
        fallback: Option<GeoPoint>,
    },
}

impl LocationConfig {
    /// The fixed point, or a gpsd source's fallback: what the node says before it knows
    /// better.
    pub fn point(&self) -> Option<GeoPoint> {
        match &self.source {
            LocationSource::Fixed(point) => Some(*point),
            LocationSource::Gpsd { fallback, .. } => *fallback,
        }
    }

    /// A fixed location with the default report policy (a join file's `location`).
    pub fn fixed(point: GeoPoint) -> Self {
        Self {
            source: LocationSource::Fixed(point),
            report: ReportPolicy::default(),
        }
    }

    /// This location, a gpsd source without a fallback taking `join`'s point (the join file's
    /// `location`) as its fallback.
    pub(super) fn with_join_point(&self, join: Option<GeoPoint>) -> Self {
        match &self.source {
            LocationSource::Gpsd {
                address,
                fallback: None,
            } => Self {
                source: LocationSource::Gpsd {
                    address: address.clone(),
                    fallback: join,
                },
                report: self.report,
            },
            _ => self.clone(),
        }
    }
}

pub(super) fn validate_location_config(
    raw: RawConfigLocation,
) -> Result<LocationConfig, ConfigError> {
    let at = FieldPath::new("location");
    let gpsd = match raw.source.as_deref() {
        None | Some("fixed") => false,
        Some("gpsd") => true,
        Some(other) => {
            return Err(invalid(
                at.field("source"),
                format!(
                    "{} is not a source; expected \"fixed\" or \"gpsd\"",
                    shown(other)
                ),
            ));
        }
    };
    let point = validate_point(raw.lat, raw.lon, raw.alt_m, &at)?;
    let report = validate_report(&raw, &at)?;
    let source = if gpsd {
        let address = validate_gpsd_address(
            raw.gpsd.as_deref().unwrap_or(DEFAULT_GPSD_ADDRESS),
            &at.field("gpsd"),
        )?;
        LocationSource::Gpsd {
            address,
            fallback: point,
        }
    } else {
        if raw.gpsd.is_some() {
            return Err(invalid(
                at.field("gpsd"),
                "is for source = \"gpsd\"; a fixed location reads no receiver",
            ));
        }
        let point = point.ok_or_else(|| {
            invalid(
                at.field("lat"),
                "is not set; a fixed location needs lat and lon (or write source = \"gpsd\")",
            )
        })?;
        LocationSource::Fixed(point)
    };
    Ok(LocationConfig { source, report })
}

fn validate_report(raw: &RawConfigLocation, at: &FieldPath) -> Result<ReportPolicy, ConfigError> {
    let default = ReportPolicy::default();
    let in_range = |name: &str, v: i64, range: &std::ops::RangeInclusive<u64>| {
        u64::try_from(v)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                invalid(
                    at.field(name),
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                )
            })
    };
    let distance_m = match raw.report_distance_m {
        None => default.distance_m,
        Some(v) => {
            let range = u64::from(*ReportPolicy::DISTANCE_M.start())
                ..=u64::from(*ReportPolicy::DISTANCE_M.end());
            let metres = in_range("report_distance_m", v, &range)?;
            // In range, so within u32.
            u32::try_from(metres).unwrap_or(u32::MAX)
        }
    };
    let min_secs = match raw.report_min_secs {
        None => default.min_interval.as_secs(),
        Some(v) => in_range("report_min_secs", v, &ReportPolicy::MIN_SECS)?,
    };
    let max_secs = match raw.report_max_secs {
        None => default.max_interval.as_secs(),
        Some(v) => in_range("report_max_secs", v, &ReportPolicy::MAX_SECS)?,
    };
    if max_secs < min_secs {
        // Name the field the operator wrote: the maximum, or the minimum raised past the
        // default maximum.
        let (name, message) = if raw.report_max_secs.is_some() {
            (
                "report_max_secs",
                format!("{max_secs} is less than report_min_secs ({min_secs})"),
            )
        } else {
            (
                "report_min_secs",
                format!(
                    "{min_secs} is more than report_max_secs (default {max_secs}); raise that too"
                ),
            )
        };
        return Err(invalid(at.field(name), message));
    }
    Ok(ReportPolicy {
        distance_m,
        min_interval: Duration::from_secs(min_secs),
        max_interval: Duration::from_secs(max_secs),
    })
}

/// `host:port` where gpsd listens: a host name or IPv4 address, or an IPv6 address in
/// brackets, and a port in 1..=65535. Returned in one form for the client to resolve.
fn validate_gpsd_address(s: &str, path: &FieldPath) -> Result<String, ConfigError> {
    let refuse = |message: String| Err(invalid(path.clone(), message));
    if s.is_empty() {
        return refuse(format!("must not be empty; {GPSD_EXAMPLE}"));
    }
    if s.len() > MAX_GPSD_ADDRESS_BYTES {
        return refuse(format!(
            "is {} bytes long; at most {MAX_GPSD_ADDRESS_BYTES} are allowed",
            s.len()
        ));
    }
    if s.contains("://") {
        return refuse(format!("{} has a scheme; {GPSD_EXAMPLE}", shown(s)));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return refuse(format!("{} has no port; {GPSD_EXAMPLE}", shown(s)));
    };
    if host.is_empty() {
        return refuse(format!("{} has no host; {GPSD_EXAMPLE}", shown(s)));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return refuse(format!(
            "{} looks like an IPv6 address without brackets; write [ADDRESS]:PORT",
            shown(s)
        ));
    }
    let host = field::check_host(path, host)?;
    let port = match port.parse::<u16>() {
        Ok(0) => return refuse("port 0 is not allowed; expected 1..=65535".into()),
        Ok(port) => port,
        Err(_) => {
            return refuse(format!("port {} is not a number in 1..=65535", shown(port)));
        }
    };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}
