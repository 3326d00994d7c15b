//! A placement scenario: a fleet of node groups, how each behaves, and the workloads that
//! arrive. Scenarios are data (TOML files), so a new one runs without a change to the code.
//!
//! A file is untrusted input, read and checked as route scenarios are
//! ([`crate::scenario::ScenarioError`], the same limits on size): unknown fields are refused
//! and every number is checked before a simulation sees it.
//!
//! ```toml
//! name = "flaky-shops"
//! duration_secs = 7200
//! warmup_secs = 600            # instances placed before this are not counted
//! restart_window_secs = 600    # a crash this soon after starting counts as a restart
//! history_window_secs = 1800   # restarts and refusals the scheduler is told about
//! refuse_ms = 500              # what a refused admission costs before the next node
//!
//! [workloads]
//! rate_per_min = 4             # Poisson arrivals of workloads
//! lifetime_secs = 1800         # exponential; the workload is deleted after it
//! artifacts = 12               # distinct artifacts, drawn with a Zipf skew
//! artifact_skew = 1.0
//! artifact_mb = [5, 80]        # uniform within
//! cpu_millis = [100, 250, 500] # one drawn per workload
//! memory_mb = [32, 64, 128]
//! replicas = [1, 1, 2]
//! near = [{ lat = 52.52, lon = 13.40, radius_km = 300, share = 0.3 }]
//!
//! [[node]]                     # a group of alike nodes
//! name = "pi"
//! count = 8
//! cpus = 4
//! memory_mb = 1024
//! lat = 52.5
//! lon = 13.4
//! spread_km = 50               # placed at random within
//! fetch_mbps = 4               # artifact download speed
//! start_ms = 400               # median start of an instance on an idle node
//! crash_per_hour = 0.2         # per instance, raised by CPU overload
//! refuse = 0.05                # share of admissions refused
//! cache_artifacts = 6          # artifacts kept, least recently used dropped
//! load = { base = 0.2, amplitude = 0.1, period_secs = 900 }   # background CPU
//! ```

use serde::Deserialize;
use std::path::Path;

use crate::scenario::ScenarioError;

/// The most nodes in a scenario.
pub const MAX_NODES: u32 = 2000;
/// The most workloads one run may see arrive (rate times duration).
pub const MAX_WORKLOADS: f64 = 200_000.0;
/// The longest scenario, in seconds (a day).
pub const MAX_DURATION_SECS: f64 = 86_400.0;

/// A placement scenario, as written. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceScenario {
    pub name: String,
    pub duration_secs: f64,
    #[serde(default)]
    pub warmup_secs: f64,
    #[serde(default = "default_restart_window")]
    pub restart_window_secs: f64,
    #[serde(default = "default_history_window")]
    pub history_window_secs: f64,
    #[serde(default = "default_refuse_ms")]
    pub refuse_ms: f64,
    pub workloads: Workloads,
    #[serde(rename = "node")]
    pub groups: Vec<NodeGroup>,
}

fn default_restart_window() -> f64 {
    600.0
}
fn default_history_window() -> f64 {
    1800.0
}
fn default_refuse_ms() -> f64 {
    500.0
}
fn default_replicas() -> Vec<u32> {
    vec![1]
}
fn default_skew() -> f64 {
    1.0
}
fn default_cache() -> u32 {
    8
}

/// What arrives: see the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workloads {
    pub rate_per_min: f64,
    pub lifetime_secs: f64,
    pub artifacts: u32,
    #[serde(default = "default_skew")]
    pub artifact_skew: f64,
    pub artifact_mb: [f64; 2],
    pub cpu_millis: Vec<u64>,
    pub memory_mb: Vec<u64>,
    #[serde(default = "default_replicas")]
    pub replicas: Vec<u32>,
    #[serde(default)]
    pub near: Vec<NearSite>,
}

/// A share of the workloads want to run within `radius_km` of a point.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearSite {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
    pub share: f64,
}

/// A group of alike nodes. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    pub name: String,
    pub count: u32,
    pub cpus: u32,
    pub memory_mb: u64,
    pub lat: f64,
    pub lon: f64,
    #[serde(default)]
    pub spread_km: f64,
    pub fetch_mbps: f64,
    pub start_ms: f64,
    #[serde(default)]
    pub crash_per_hour: f64,
    #[serde(default)]
    pub refuse: f64,
    #[serde(default = "default_cache")]
    pub cache_artifacts: u32,
    #[serde(default)]
    pub load: LoadCurve,
}

/// Background CPU load: `base + amplitude * sin(2 pi (t / period + phase))`, each node of a
/// group with a phase of its own, held to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadCurve {
    pub base: f64,
    #[serde(default)]
    pub amplitude: f64,
    #[serde(default = "default_period")]
    pub period_secs: f64,
}

fn default_period() -> f64 {
    3600.0
}

impl Default for LoadCurve {
    /// No background load.
    fn default() -> Self {
        Self {
            base: 0.0,
            amplitude: 0.0,
            period_secs: default_period(),
        }
    }
}

impl PlaceScenario {
    /// Reads and checks the scenario at `path`.
    pub fn load(path: &Path) -> Result<PlaceScenario, ScenarioError> {
        let (text, shown) = crate::scenario::read(path)?;
        PlaceScenario::parse(&text, &shown)
    }

    /// Parses and checks a scenario; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<PlaceScenario, ScenarioError> {
        crate::scenario::parse_checked(text, path, PlaceScenario::validate)
    }

    /// How many nodes the groups hold.
    pub fn nodes(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if self.name.is_empty() || self.name.len() > 100 {
            return Err(("name".into(), "1 to 100 characters".into()));
        }
        range("duration_secs", self.duration_secs, 1.0, MAX_DURATION_SECS)?;
        range("warmup_secs", self.warmup_secs, 0.0, self.duration_secs)?;
        if self.warmup_secs >= self.duration_secs {
            return Err((
                "warmup_secs".into(),
                "must be shorter than duration_secs".into(),
            ));
        }
        range(
            "restart_window_secs",
            self.restart_window_secs,
            0.0,
            MAX_DURATION_SECS,
        )?;
        range(
            "history_window_secs",
            self.history_window_secs,
            0.0,
            MAX_DURATION_SECS,
        )?;
        range("refuse_ms", self.refuse_ms, 0.0, 600_000.0)?;
        let w = &self.workloads;
        range("workloads.rate_per_min", w.rate_per_min, 0.0, 10_000.0)?;
        if w.rate_per_min / 60.0 * self.duration_secs > MAX_WORKLOADS {
            return Err((
                "workloads.rate_per_min".into(),
                format!("over {MAX_WORKLOADS} workloads in one run"),
            ));
        }
        range(
            "workloads.lifetime_secs",
            w.lifetime_secs,
            1.0,
            MAX_DURATION_SECS,
        )?;
        if w.artifacts == 0 || w.artifacts > 10_000 {
            return Err(("workloads.artifacts".into(), "1 to 10000".into()));
        }
        range("workloads.artifact_skew", w.artifact_skew, 0.0, 4.0)?;
        range("workloads.artifact_mb[0]", w.artifact_mb[0], 0.0, 100_000.0)?;
        range(
            "workloads.artifact_mb[1]",
            w.artifact_mb[1],
            w.artifact_mb[0],
            100_000.0,
        )?;
        let list = |field: &str, len: usize| -> Result<(), (String, String)> {
            if len == 0 || len > 1024 {
                return Err((field.to_owned(), "1 to 1024 entries".into()));
            }
            Ok(())
        };
        list("workloads.cpu_millis", w.cpu_millis.len())?;
        list("workloads.memory_mb", w.memory_mb.len())?;
        list("workloads.replicas", w.replicas.len())?;
        for (i, &c) in w.cpu_millis.iter().enumerate() {
            range(
                &format!("workloads.cpu_millis[{i}]"),
                c as f64,
                1.0,
                1_000_000.0,
            )?;
        }
        for (i, &m) in w.memory_mb.iter().enumerate() {
            range(
                &format!("workloads.memory_mb[{i}]"),
                m as f64,
                1.0,
                1_000_000.0,
            )?;
        }
        for (i, &r) in w.replicas.iter().enumerate() {
            range(&format!("workloads.replicas[{i}]"), f64::from(r), 1.0, 64.0)?;
        }
        if w.near.len() > 64 {
            return Err(("workloads.near".into(), "at most 64 sites".into()));
        }
        let mut shares = 0.0;
        for (i, n) in w.near.iter().enumerate() {
            let at = format!("workloads.near[{i}]");
            range(&format!("{at}.lat"), n.lat, -90.0, 90.0)?;
            range(&format!("{at}.lon"), n.lon, -180.0, 180.0)?;
            range(&format!("{at}.radius_km"), n.radius_km, 0.1, 20_100.0)?;
            range(&format!("{at}.share"), n.share, 0.0, 1.0)?;
            shares += n.share;
        }
        if shares > 1.0 + 1e-9 {
            return Err((
                "workloads.near".into(),
                "shares add up to more than 1".into(),
            ));
        }
        if self.groups.is_empty() || self.groups.len() > 256 {
            return Err(("node".into(), "1 to 256 groups".into()));
        }
        if self.nodes() == 0 || self.nodes() > MAX_NODES {
            return Err(("node".into(), format!("1 to {MAX_NODES} nodes in all")));
        }
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("node[{i}]");
            if g.name.is_empty() || g.name.len() > 40 {
                return Err((format!("{at}.name"), "1 to 40 characters".into()));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err((format!("{at}.name"), "names must be unique".into()));
            }
            range(&format!("{at}.cpus"), f64::from(g.cpus), 1.0, 1024.0)?;
            range(
                &format!("{at}.memory_mb"),
                g.memory_mb as f64,
                1.0,
                16_777_216.0,
            )?;
            range(&format!("{at}.lat"), g.lat, -90.0, 90.0)?;
            range(&format!("{at}.lon"), g.lon, -180.0, 180.0)?;
            range(&format!("{at}.spread_km"), g.spread_km, 0.0, 2000.0)?;
            range(&format!("{at}.fetch_mbps"), g.fetch_mbps, 0.001, 100_000.0)?;
            range(&format!("{at}.start_ms"), g.start_ms, 0.0, 600_000.0)?;
            range(
                &format!("{at}.crash_per_hour"),
                g.crash_per_hour,
                0.0,
                100.0,
            )?;
            range(&format!("{at}.refuse"), g.refuse, 0.0, 0.99)?;
            range(
                &format!("{at}.cache_artifacts"),
                f64::from(g.cache_artifacts),
                0.0,
                10_000.0,
            )?;
            range(&format!("{at}.load.base"), g.load.base, 0.0, 1.0)?;
            range(&format!("{at}.load.amplitude"), g.load.amplitude, 0.0, 1.0)?;
            range(
                &format!("{at}.load.period_secs"),
                g.load.period_secs,
                1.0,
                MAX_DURATION_SECS,
            )?;
        }
        Ok(())
    }
}

fn range(field: &str, value: f64, min: f64, max: f64) -> Result<(), (String, String)> {
    if !value.is_finite() {
        return Err((field.to_owned(), format!("{value} is not a number")));
    }
    if value < min || value > max {
        return Err((
            field.to_owned(),
            format!("{value} is not within {min} to {max}"),
        ));
    }
    Ok(())
}
