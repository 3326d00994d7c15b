//! When the node tells the orchestrator where it is. Every report costs uplink bytes (a
//! metered link, a fleet of thousands), and a parked node's receiver wanders by metres all
//! day: the node reports moves that matter, state changes, and a heartbeat.
//!
//! Given the believed observations (out of the [`Filter`](super::Filter)) and `now`, a
//! report is due:
//! - at once when nothing was reported yet and there is something to report (the first
//!   fix, or the config's fallback while the receiver has none);
//! - when the position is more than `distance_m` from the last one reported, when the
//!   receiver got or lost its fix, or when the source changed (the fallback gave way to a
//!   first fix): at the earliest `min_interval` after the last report;
//! - otherwise `max_interval` after the last report, even when nothing changed, so the
//!   orchestrator can tell a node that stands still from one it has lost track of.
//!
//! Reports are therefore never closer than `min_interval`, and never farther apart than
//! `max_interval` as long as the caller polls at [`Reporter::next_due`]. A held-back change
//! goes out at its due time with the position of that moment (so it may have become no
//! change at all, and wait for the heartbeat).
//!
//! A fix is current for [`FIX_STALE_AFTER`]: with no new fix by then (gpsd went silent or
//! away, the receiver was unplugged) the receiver counts as having lost its fix. While it has
//! none, the report carries its last fix with quality [`FixQuality::NoFix`] and that fix's own
//! time, so the orchestrator knows where the node was last seen and when; a receiver that
//! never had a fix reports the config's fallback as [`Source::Fixed`], or nothing without one.

use super::{Fix, FixQuality, Observation, Report, Source, distance_m};
use crate::config::GeoPoint;
use std::ops::RangeInclusive;
use std::time::Duration;

/// How long a fix stays current without another: gpsd sends one a second while the receiver
/// has one, so ten missed in a row mean it has not.
pub const FIX_STALE_AFTER: Duration = Duration::from_secs(10);

/// When a location is worth reporting: the config's `report_distance_m`, `report_min_secs`
/// and `report_max_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportPolicy {
    /// A move farther than this from the last position reported is due (after
    /// `min_interval`). Default 50 m.
    pub distance_m: u32,
    /// Reports are never closer together than this. Default 5 s.
    pub min_interval: Duration,
    /// A report goes at least this often, even when nothing changed. Default 300 s.
    pub max_interval: Duration,
}

impl ReportPolicy {
    /// The bounds of `report_distance_m`.
    pub const DISTANCE_M: RangeInclusive<u32> = 1..=100_000;
    /// The bounds of `report_min_secs`.
    pub const MIN_SECS: RangeInclusive<u64> = 1..=3600;
    /// The bounds of `report_max_secs`, which is also at least `report_min_secs`.
    pub const MAX_SECS: RangeInclusive<u64> = 1..=86_400;
}

impl Default for ReportPolicy {
    fn default() -> Self {
        Self {
            distance_m: 50,
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(300),
        }
    }
}

/// Decides when a location report is due; see the module docs. Nothing here reads the
/// clock: every call takes `now`, a monotonic [`Duration`] since the caller's origin.
#[derive(Debug, Clone)]
pub struct Reporter {
    policy: ReportPolicy,
    /// The config's point, as a report carries it.
    fallback: Option<Fix>,
    /// The receiver's last fix, whether or not it still has it.
    last_fix: Option<Fix>,
    /// When the last fix arrived, while it is current; `None` while the receiver has no fix.
    fixed_at: Option<Duration>,
    /// The last report and when it went.
    sent: Option<(Duration, Report)>,
}

impl Reporter {
    /// A reporter for a receiver, with the config's `fallback` point for while it has never
    /// had a fix; for a fixed location, the point itself and nothing to observe.
    /// A `min_interval` under a second is taken as a second (so a caller that polls at
    /// [`next_due`](Self::next_due) always moves on), and a `max_interval` below it as
    /// `min_interval`.
    pub fn new(policy: ReportPolicy, fallback: Option<GeoPoint>) -> Self {
        let min_interval = policy.min_interval.max(Duration::from_secs(1));
        Self {
            policy: ReportPolicy {
                min_interval,
                max_interval: policy.max_interval.max(min_interval),
                ..policy
            },
            fallback: fallback.map(|p| Fix {
                lat: p.lat,
                lon: p.lon,
                alt_m: p.alt_m,
                accuracy_m: None,
                quality: FixQuality::NoFix,
                time_ms: None,
            }),
            last_fix: None,
            fixed_at: None,
            sent: None,
        }
    }

    pub fn policy(&self) -> ReportPolicy {
        self.policy
    }

    /// A believed observation, arrived at `now`: the report to send now, if one is due.
    pub fn observe(&mut self, now: Duration, observation: Observation) -> Option<Report> {
        match observation {
            Observation::Fix(fix) if fix.quality.has_fix() => {
                self.last_fix = Some(fix);
                self.fixed_at = Some(now);
            }
            Observation::Fix(_) | Observation::NoFix { .. } => self.fixed_at = None,
        }
        self.poll(now)
    }

    /// Time passed with nothing observed: the report to send now, if one is due (a heartbeat,
    /// a change that waited for `min_interval`, a fix gone stale).
    pub fn poll(&mut self, now: Duration) -> Option<Report> {
        if self
            .fixed_at
            .is_some_and(|at| now >= at.saturating_add(FIX_STALE_AFTER))
        {
            self.fixed_at = None;
        }
        if now < self.report_due()? {
            return None;
        }
        let report = self.current()?;
        self.sent = Some((now, report));
        Some(report)
    }

    /// When [`poll`](Self::poll) next has something to do (a report, or a fix going stale),
    /// on the caller's clock; `None`: not until something is observed. A time already past
    /// means now.
    pub fn next_due(&self) -> Option<Duration> {
        let stale = self.fixed_at.map(|at| at.saturating_add(FIX_STALE_AFTER));
        match (self.report_due(), stale) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The location as of the last call: what a report would carry.
    pub fn current(&self) -> Option<Report> {
        match (self.last_fix, self.fixed_at) {
            (Some(fix), Some(_)) => Some(Report {
                source: Source::Gpsd,
                fix,
            }),
            (Some(fix), None) => Some(Report {
                source: Source::Gpsd,
                fix: Fix {
                    quality: FixQuality::NoFix,
                    ..fix
                },
            }),
            (None, _) => self.fallback.map(|fix| Report {
                source: Source::Fixed,
                fix,
            }),
        }
    }

    /// The last report, and when it went.
    pub fn last_sent(&self) -> Option<(Duration, Report)> {
        self.sent
    }

    /// When the current location is due to be reported; `None` with nothing to report.
    fn report_due(&self) -> Option<Duration> {
        let current = self.current()?;
        let Some((at, last)) = &self.sent else {
            return Some(Duration::ZERO);
        };
        let moved = || {
            current.fix.quality.has_fix()
                && distance_m(&last.fix, &current.fix) > f64::from(self.policy.distance_m)
        };
        let changed = last.source != current.source
            || last.fix.quality.has_fix() != current.fix.quality.has_fix()
            || moved();
        Some(at.saturating_add(if changed {
            self.policy.min_interval
        } else {
            self.policy.max_interval
        }))
    }
}
