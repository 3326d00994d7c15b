//! Which fixes to believe. A receiver's output is mostly right and sometimes wildly wrong: a
//! cold start's first fix at 0°, 0°, multipath in a street canyon, a serial line that flips a
//! digit, or a gpsd on the network that lies. The [`Filter`] refuses what cannot be a place
//! on Earth and what the node cannot have travelled to since its last believed fix.
//!
//! The rules, for each fix, with the monotonic `now` it arrived at:
//! 1. `lat`, `lon` and `alt_m` must be finite ([`Refusal::NotFinite`]) and on the globe:
//!    |lat| <= 90, |lon| <= 180, altitude within [`ALTITUDE_RANGE_M`]
//!    ([`Refusal::OutOfRange`]). The error estimate is advisory: a negative or non-finite
//!    `accuracy_m` is dropped (made `None`) and the fix judged on its position alone.
//! 2. Against the anchor (the last fix accepted), the fix must be reachable: its distance at
//!    most `max_speed_mps` times the time between them (at least [`MIN_INTERVAL`], so two
//!    fixes in one instant may still differ by their noise), plus both error estimates (at
//!    most [`MAX_SLACK_M`] together). Otherwise it is a [`Refusal::Jump`].
//! 3. It never gets stuck. A node that really moved while the filter held on (carried off
//!    while gpsd kept a stale fix, or a glitch taken as the first fix) sends fixes that are
//!    all "jumps" but agree with each other: `relocate_after` of them in a row, each
//!    reachable from the one before by rule 2, make the last one the anchor, and it is
//!    accepted. A refused fix that does not agree with the run before it starts a new run;
//!    an accepted one ends the run. A lone glitch therefore never moves the anchor, and a
//!    real relocation costs `relocate_after - 1` refused fixes (two seconds at gpsd's rate).
//!
//! A node that was off for an hour has a fresh filter, or a time gap that allows for the
//! journey: either way its first fix at the new place is accepted.
//!
//! A no-fix observation (the receiver lost its fix) is never refused: it is passed through,
//! and changes nothing here.

use super::{Fix, FixQuality, Observation, distance_m};
use std::time::Duration;

/// The altitudes the filter believes, in metres above sea level: from below the Dead Sea's
/// shore with a margin for the geoid, to a stratospheric balloon.
pub const ALTITUDE_RANGE_M: std::ops::RangeInclusive<f64> = -2_000.0..=100_000.0;

/// The shortest time the speed bound is applied over.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The most that two fixes' error estimates may add to the distance they are allowed apart:
/// a receiver that claims a 50 km error does not get to jump 50 km.
pub const MAX_SLACK_M: f64 = 1_000.0;

/// How fast the node may move and how many agreeing fixes move its anchor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterPolicy {
    /// The fastest the node is believed to move, in metres per second. Default 300 (an
    /// airliner at cruise is about 250).
    pub max_speed_mps: f64,
    /// How many refused fixes in a row that agree with each other re-anchor the filter.
    /// Default 3; at least 1 (which turns the jump check off).
    pub relocate_after: usize,
}

impl Default for FilterPolicy {
    fn default() -> Self {
        Self {
            max_speed_mps: 300.0,
            relocate_after: 3,
        }
    }
}

/// Why a fix was refused. A fixed set: its [`as_str`](Self::as_str) is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// Latitude, longitude or altitude is NaN or infinite.
    #[error("a coordinate is not a finite number")]
    NotFinite,
    /// Off the globe, or an altitude out of [`ALTITUDE_RANGE_M`].
    #[error("a coordinate is out of range")]
    OutOfRange,
    /// Farther from the last believed fix than the node can have travelled.
    #[error("too far from the last fix for the time between them")]
    Jump,
}

impl Refusal {
    pub const ALL: [Self; 3] = [Self::NotFinite, Self::OutOfRange, Self::Jump];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFinite => "not_finite",
            Self::OutOfRange => "out_of_range",
            Self::Jump => "jump",
        }
    }
}

/// A fix and when it arrived.
#[derive(Debug, Clone, Copy)]
struct Seen {
    fix: Fix,
    at: Duration,
}

/// The filter's state: its anchor, and the run of refused fixes that may replace it. See the
/// module docs for the rules.
#[derive(Debug, Clone)]
pub struct Filter {
    policy: FilterPolicy,
    anchor: Option<Seen>,
    /// Refused jumps in a row, each reachable from the one before; at most
    /// `relocate_after - 1` long.
    run: Vec<Seen>,
}

impl Filter {
    pub fn new(policy: FilterPolicy) -> Self {
        Self {
            policy: FilterPolicy {
                relocate_after: policy.relocate_after.max(1),
                ..policy
            },
            anchor: None,
            run: Vec::new(),
        }
    }

    /// The last fix accepted, if any.
    pub fn anchor(&self) -> Option<&Fix> {
        self.anchor.as_ref().map(|s| &s.fix)
    }

    /// Judges one observation, arrived at `now`: the observation to believe (a fix with any
    /// bad error estimate dropped, or the no-fix as it came), or why not.
    pub fn handle(
        &mut self,
        now: Duration,
        observation: Observation,
    ) -> Result<Observation, Refusal> {
        let mut fix = match observation {
            Observation::NoFix { .. } => return Ok(observation),
            Observation::Fix(fix) if fix.quality == FixQuality::NoFix => {
                return Ok(Observation::NoFix {
                    time_ms: fix.time_ms,
                });
            }
            Observation::Fix(fix) => fix,
        };
        let finite =
            fix.lat.is_finite() && fix.lon.is_finite() && fix.alt_m.is_none_or(f64::is_finite);
        if !finite {
            return Err(Refusal::NotFinite);
        }
        let on_globe = (-90.0..=90.0).contains(&fix.lat)
            && (-180.0..=180.0).contains(&fix.lon)
            && fix.alt_m.is_none_or(|alt| ALTITUDE_RANGE_M.contains(&alt));
        if !on_globe {
            return Err(Refusal::OutOfRange);
        }
        fix.accuracy_m = fix.accuracy_m.filter(|a| a.is_finite() && *a >= 0.0);
        let seen = Seen { fix, at: now };
        let believed = match &self.anchor {
            None => true,
            Some(anchor) => self.reachable(anchor, &seen),
        };
        if !believed {
            if self
                .run
                .last()
                .is_some_and(|last| !self.reachable(last, &seen))
            {
                self.run.clear();
            }
            if self.run.len() + 1 < self.policy.relocate_after {
                self.run.push(seen);
                return Err(Refusal::Jump);
            }
        }
        self.anchor = Some(seen);
        self.run.clear();
        Ok(Observation::Fix(fix))
    }

    /// Whether the node can have got from `from` to `to` in the time between them.
    fn reachable(&self, from: &Seen, to: &Seen) -> bool {
        let between = to.at.saturating_sub(from.at).max(MIN_INTERVAL);
        let slack = (from.fix.accuracy_m.unwrap_or(0.0) + to.fix.accuracy_m.unwrap_or(0.0))
            .min(MAX_SLACK_M);
        distance_m(&from.fix, &to.fix) <= self.policy.max_speed_mps * between.as_secs_f64() + slack
    }
}

impl Default for Filter {
    fn default() -> Self {
        Self::new(FilterPolicy::default())
    }
}
