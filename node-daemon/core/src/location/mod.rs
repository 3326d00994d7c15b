//! Where the node is, live: gpsd's JSON lines parsed ([`gpsd`]), implausible fixes refused
//! ([`Filter`]), and when a position is worth telling the orchestrator ([`Reporter`]).
//!
//! The node-daemon's `location` client moves the bytes: it reads gpsd's socket, hands every
//! line to [`gpsd::parse_line`], every fix to [`Filter::handle`] and every accepted
//! observation to [`Reporter::observe`], wakes at [`Reporter::next_due`], and sends what the
//! reporter returns. A node with a fixed location runs the same [`Reporter`] with nothing to
//! observe: it reports the configured point at once and then every `report_max_secs`.
//!
//! **Invariant.** No I/O and no clock: time comes in as `now`, a monotonic [`Duration`] since
//! an origin of the caller's choosing, and the only wall time here is the receiver's own, as
//! gpsd wrote it into a fix (`time_ms`).
//!
//! [`Duration`]: std::time::Duration

pub mod filter;
pub mod gpsd;
pub mod reporter;

pub use filter::{Filter, FilterPolicy, Refusal};
pub use gpsd::{Message, ParseError, parse_line};
pub use reporter::{FIX_STALE_AFTER, ReportPolicy, Reporter};

/// How good a receiver's fix is, as gpsd's TPV `mode` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixQuality {
    /// No fix (`mode` 0 or 1): the position, if any, is an old one. A point from the config
    /// (a [`Source::Fixed`] report) has this quality too: no receiver fixed it.
    NoFix,
    /// A horizontal fix (`mode` 2): latitude and longitude, no usable altitude.
    TwoD,
    /// A fix in three dimensions (`mode` 3).
    ThreeD,
}

impl FixQuality {
    pub const ALL: [Self; 3] = [Self::NoFix, Self::TwoD, Self::ThreeD];

    /// The quality as the node's status and the wire name it: `none`, `2d` or `3d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoFix => "none",
            Self::TwoD => "2d",
            Self::ThreeD => "3d",
        }
    }

    /// A 2D or 3D fix.
    pub fn has_fix(self) -> bool {
        self != Self::NoFix
    }
}

/// A position: WGS84 degrees, metres above mean sea level, and what the receiver said of it.
/// Out of [`Filter::handle`] every number in it is finite and on the globe; a fix straight
/// from [`gpsd::parse_line`] is what gpsd wrote and may be anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    /// Metres above mean sea level, as the config's `alt_m`; `None` in a 2D fix.
    pub alt_m: Option<f64>,
    /// The horizontal error estimate in metres (gpsd's `eph`, else the larger of `epx` and
    /// `epy`), if the receiver gave one.
    pub accuracy_m: Option<f64>,
    pub quality: FixQuality,
    /// When the receiver took the fix, in Unix milliseconds (gpsd's `time`), if it said.
    /// The receiver's clock, not the node's.
    pub time_ms: Option<u64>,
}

/// What one gpsd TPV report says about the receiver: a fix, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// A 2D or 3D fix.
    Fix(Fix),
    /// The receiver has no fix (TPV `mode` 0 or 1). `time_ms`: the receiver's time, if it
    /// knows it.
    NoFix { time_ms: Option<u64> },
}

/// Where a reported position comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The config's point: a fixed `location`, or the fallback of a `gpsd` one whose
    /// receiver has never had a fix.
    Fixed,
    /// A receiver, through gpsd.
    Gpsd,
}

impl Source {
    pub const ALL: [Self; 2] = [Self::Fixed, Self::Gpsd];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Gpsd => "gpsd",
        }
    }
}

/// A location report for the orchestrator: where the node is and how it knows.
///
/// While a receiver has no fix, `fix` is its last fix with quality [`FixQuality::NoFix`] and
/// that fix's time; a receiver that never had one reports the config's fallback as
/// [`Source::Fixed`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub source: Source,
    pub fix: Fix,
}

impl Report {
    /// Whether the node is where the report says: a fix, or the config's point. A receiver
    /// without a fix may have moved anywhere since its last one.
    pub fn is_current(&self) -> bool {
        self.fix.quality.has_fix() || self.source == Source::Fixed
    }

    /// The report as a point of the node's track on the wire.
    pub fn to_wire(&self) -> edge_proto::LocationReport {
        let f = &self.fix;
        edge_proto::LocationReport {
            location: edge_proto::Location {
                lat: f.lat,
                lon: f.lon,
                alt_m: f.alt_m,
            },
            source: match self.source {
                Source::Fixed => edge_proto::LocationSource::Fixed,
                Source::Gpsd => edge_proto::LocationSource::Gpsd,
            },
            quality: match f.quality {
                FixQuality::NoFix => edge_proto::FixQuality::None,
                FixQuality::TwoD => edge_proto::FixQuality::TwoD,
                FixQuality::ThreeD => edge_proto::FixQuality::ThreeD,
            },
            // Metres in an f32: a millimetre's precision up to a thousand kilometres.
            #[allow(clippy::cast_possible_truncation)]
            accuracy_m: f.accuracy_m.map(|a| a as f32),
            fix_ms: f.time_ms,
        }
    }
}

/// The mean radius of the Earth (IUGG), in metres: what [`distance_m`] measures with.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The great-circle distance between two fixes in metres (haversine, on a sphere of
/// [`EARTH_RADIUS_M`]; within 0.5% of the ellipsoid's, plenty for "has it moved"). Altitude is
/// ignored. NaN in, NaN out.
pub fn distance_m(a: &Fix, b: &Fix) -> f64 {
    let (lat_a, lat_b) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat_b - lat_a;
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    // `h` can exceed 1 by a rounding error for antipodal points; asin would give NaN. (`clamp`, unlike `min`, keeps a NaN.)
    2.0 * EARTH_RADIUS_M * h.sqrt().clamp(0.0, 1.0).asin()
}
