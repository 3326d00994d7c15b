//! A pre-warming scenario: the node's workloads that scale to zero, what each costs to start
//! and to keep up, and when its requests come. Scenarios are data (TOML files), so a new one
//! runs without a change to the code.
//!
//! A file is untrusted input, read as route scenarios are: at most
//! [`MAX_SCENARIO_BYTES`](crate::scenario::MAX_SCENARIO_BYTES), unknown fields refused, every
//! number checked (finite, in its range, the requests of one run bounded) before a simulation
//! sees it, so that a malformed, oversized or hostile file is an error naming the field, never
//! a panic nor a simulation that runs for ever.
//!
//! ```toml
//! name = "shop"
//! duration_days = 7          # simulated time
//! warmup_days = 2            # requests before this are not counted (histories fill up)
//! tick_secs = 10             # how often the policy is asked (default 10)
//! start_wall_secs = 0        # the time of day the run starts at, in seconds (default 0)
//!
//! [[workload]]
//! name = "menu"
//! cold_start_secs = 4        # from a start to ready
//! memory_mib = 64            # held while up
//! idle_secs = 120            # its scale_to_zero.idle_secs
//! silent = [{ from_secs = 259200, until_secs = 345600 }]   # optional: no requests then
//!
//! # Its requests: the union of these sources.
//! [[workload.traffic]]
//! kind = "poisson"
//! rate_per_hour = 20
//! hours = { from_secs = 32400, until_secs = 64800 }        # optional: only then each day
//! follow = { requests = 3, within_secs = 60 }              # optional: each one brings more
//!
//! [[workload.traffic]]
//! kind = "periodic"          # cron-like: at wall-clock times offset_secs + k * period_secs
//! period_secs = 86400
//! offset_secs = 28800        # 08:00
//! jitter_secs = 300          # each occurrence moved by up to this, either way
//! skip = 0.1                 # optional: the chance that an occurrence does not happen
//! ```

use serde::Deserialize;
use std::path::Path;

use crate::scenario::ScenarioError;

/// The longest scenario, in days.
pub const MAX_DAYS: f64 = 60.0;
/// The most workloads in a scenario.
pub const MAX_WORKLOADS: usize = 64;
/// The most sources of requests of one workload, and silences.
pub const MAX_SOURCES: usize = 32;
/// The most requests one run may make (every source's expected count, summed).
pub const MAX_REQUESTS: f64 = 5_000_000.0;
/// The highest rate of a Poisson source.
pub const MAX_RATE_PER_HOUR: f64 = 360_000.0;
/// The longest cold start, in seconds.
pub const MAX_COLD_START_SECS: f64 = 600.0;
/// The most memory of one instance, in MiB.
pub const MAX_MEMORY_MIB: f64 = 1_048_576.0;
/// The most follow-up requests of one request.
pub const MAX_FOLLOW: u32 = 1000;

const DAY: f64 = 86_400.0;

/// A scenario, as written. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmScenario {
    pub name: String,
    pub duration_days: f64,
    #[serde(default)]
    pub warmup_days: f64,
    #[serde(default = "default_tick")]
    pub tick_secs: f64,
    #[serde(default)]
    pub start_wall_secs: f64,
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
}

fn default_tick() -> f64 {
    10.0
}

/// One workload that scales to zero.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub cold_start_secs: f64,
    pub memory_mib: f64,
    pub idle_secs: u32,
    #[serde(default)]
    pub silent: Vec<Span>,
    pub traffic: Vec<Source>,
}

/// From `from_secs` until `until_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    pub from_secs: f64,
    pub until_secs: f64,
}

/// Each request of a source brings `requests` more, at uniform times within `within_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    pub requests: u32,
    pub within_secs: f64,
}

/// Where a workload's requests come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// At random, `rate_per_hour` on average, within `hours` of each day if given (a span of
    /// the day in seconds; `from_secs > until_secs` wraps over midnight).
    Poisson {
        rate_per_hour: f64,
        #[serde(default)]
        hours: Option<Span>,
        #[serde(default)]
        follow: Option<Follow>,
    },
    /// At wall-clock times `offset_secs + k * period_secs`, each moved by a uniform draw
    /// within `jitter_secs` either way, each missing with probability `skip`.
    Periodic {
        period_secs: f64,
        #[serde(default)]
        offset_secs: f64,
        #[serde(default)]
        jitter_secs: f64,
        #[serde(default)]
        skip: f64,
        #[serde(default)]
        follow: Option<Follow>,
    },
}

impl Source {
    fn follow(&self) -> Option<Follow> {
        match self {
            Source::Poisson { follow, .. } | Source::Periodic { follow, .. } => *follow,
        }
    }

    /// The expected number of requests over `secs` (an upper bound for a window).
    fn expected(&self, secs: f64) -> f64 {
        let events = match self {
            Source::Poisson { rate_per_hour, .. } => rate_per_hour * secs / 3600.0,
            Source::Periodic { period_secs, .. } => secs / period_secs + 1.0,
        };
        events * (1.0 + self.follow().map_or(0.0, |f| f64::from(f.requests)))
    }
}

impl WarmScenario {
    /// Reads and checks the scenario at `path`.
    pub fn load(path: &Path) -> Result<WarmScenario, ScenarioError> {
        let (text, shown) = crate::scenario::read(path)?;
        WarmScenario::parse(&text, &shown)
    }

    /// Parses and checks a scenario; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<WarmScenario, ScenarioError> {
        crate::scenario::parse_checked(text, path, WarmScenario::validate)
    }

    /// The simulated time, in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.duration_days * DAY
    }

    /// When counting starts, in seconds.
    pub fn warmup_secs(&self) -> f64 {
        self.warmup_days * DAY
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.name.is_empty() || self.name.len() > 100 {
            return Err(("name".to_owned(), "1 to 100 characters".to_owned()));
        }
        range("duration_days", self.duration_days, 0.001, MAX_DAYS)?;
        range("warmup_days", self.warmup_days, 0.0, self.duration_days)?;
        if self.warmup_days >= self.duration_days {
            return Err((
                "warmup_days".to_owned(),
                "must be shorter than duration_days".to_owned(),
            ));
        }
        range("tick_secs", self.tick_secs, 1.0, 3600.0)?;
        range("start_wall_secs", self.start_wall_secs, 0.0, DAY)?;
        if self.workloads.is_empty() || self.workloads.len() > MAX_WORKLOADS {
            return Err((
                "workload".to_owned(),
                format!("1 to {MAX_WORKLOADS} workloads"),
            ));
        }
        let secs = self.duration_secs();
        let mut requests = 0.0;
        for (i, w) in self.workloads.iter().enumerate() {
            let at = format!("workload[{i}]");
            w.validate(&at, secs)?;
            if self.workloads[..i].iter().any(|other| other.name == w.name) {
                return Err((format!("{at}.name"), "names must be unique".to_owned()));
            }
            requests += w.traffic.iter().map(|s| s.expected(secs)).sum::<f64>();
        }
        if requests > MAX_REQUESTS {
            return Err((
                "workload".to_owned(),
                format!("over {MAX_REQUESTS} requests in one run"),
            ));
        }
        Ok(())
    }
}

impl Workload {
    fn validate(&self, at: &str, secs: f64) -> Result<(), (String, String)> {
        if self.name.is_empty() || self.name.len() > 63 {
            return Err((format!("{at}.name"), "1 to 63 characters".to_owned()));
        }
        range(
            &format!("{at}.cold_start_secs"),
            self.cold_start_secs,
            0.0,
            MAX_COLD_START_SECS,
        )?;
        range(
            &format!("{at}.memory_mib"),
            self.memory_mib,
            0.0,
            MAX_MEMORY_MIB,
        )?;
        if !(1..=86_400).contains(&self.idle_secs) {
            return Err((format!("{at}.idle_secs"), "1 to 86400".to_owned()));
        }
        if self.silent.len() > MAX_SOURCES {
            return Err((format!("{at}.silent"), format!("at most {MAX_SOURCES}")));
        }
        for (j, span) in self.silent.iter().enumerate() {
            let at = format!("{at}.silent[{j}]");
            range(&format!("{at}.from_secs"), span.from_secs, 0.0, secs)?;
            range(
                &format!("{at}.until_secs"),
                span.until_secs,
                span.from_secs,
                secs,
            )?;
        }
        if self.traffic.is_empty() || self.traffic.len() > MAX_SOURCES {
            return Err((
                format!("{at}.traffic"),
                format!("1 to {MAX_SOURCES} sources"),
            ));
        }
        for (j, source) in self.traffic.iter().enumerate() {
            source.validate(&format!("{at}.traffic[{j}]"))?;
        }
        Ok(())
    }
}

impl Source {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        match self {
            Source::Poisson {
                rate_per_hour,
                hours,
                ..
            } => {
                range(
                    &format!("{at}.rate_per_hour"),
                    *rate_per_hour,
                    0.0,
                    MAX_RATE_PER_HOUR,
                )?;
                if let Some(hours) = hours {
                    range(&format!("{at}.hours.from_secs"), hours.from_secs, 0.0, DAY)?;
                    range(
                        &format!("{at}.hours.until_secs"),
                        hours.until_secs,
                        0.0,
                        DAY,
                    )?;
                }
            }
            Source::Periodic {
                period_secs,
                offset_secs,
                jitter_secs,
                skip,
                ..
            } => {
                range(&format!("{at}.period_secs"), *period_secs, 1.0, 7.0 * DAY)?;
                range(&format!("{at}.offset_secs"), *offset_secs, 0.0, 7.0 * DAY)?;
                range(
                    &format!("{at}.jitter_secs"),
                    *jitter_secs,
                    0.0,
                    *period_secs / 2.0,
                )?;
                range(&format!("{at}.skip"), *skip, 0.0, 1.0)?;
            }
        }
        if let Some(follow) = self.follow() {
            if follow.requests > MAX_FOLLOW {
                return Err((
                    format!("{at}.follow.requests"),
                    format!("at most {MAX_FOLLOW}"),
                ));
            }
            range(
                &format!("{at}.follow.within_secs"),
                follow.within_secs,
                0.0,
                DAY,
            )?;
        }
        Ok(())
    }
}

fn range(field: &str, value: f64, min: f64, max: f64) -> Result<(), (String, String)> {
    if !value.is_finite() || value < min || value > max {
        return Err((field.to_owned(), format!("must be from {min} to {max}")));
    }
    Ok(())
}
