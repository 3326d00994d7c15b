//! A scenario: the backends of one route, how they behave over time, and the traffic sent to
//! them. Scenarios are data (TOML files), so a new one runs without a change to the code.
//!
//! A file is untrusted input: it is read up to [`MAX_SCENARIO_BYTES`], parsed with unknown
//! fields refused, and every number is checked (finite, in its range) before a simulation
//! sees it, so that a malformed, oversized or hostile file is an error naming the field,
//! never a panic nor a simulation that runs for ever.
//!
//! ```toml
//! name = "one-slow"
//! duration_secs = 60
//! warmup_secs = 10           # requests arriving before this are not counted
//! timeout_ms = 1000          # per attempt
//! retries = 1                # 0 or 1: a failed attempt is tried once more
//!
//! [arrivals]
//! rate_per_sec = 400         # Poisson
//! schedule = [{ at_secs = 30, rate_per_sec = 600 }]   # optional: the rate from then on
//!
//! [[backend]]
//! name = "a"
//! workers = 4                # served at once; the rest queue, first come first served
//! service = { median_ms = 10, sigma = 0.4 }          # lognormal service time
//! degrade = { knee = 4, per_request = 0.1 }          # optional: x(1 + 0.1 * (active - 4))
//! distance_km = 300          # 1 ms per 100 km each way, plus jitter
//! local = false
//! failure = 0.01             # refused after ~1 ms
//! host_cpu = 0.5             # optional: the host load the proxy is told
//! host_memory = 0.4
//! speed = [{ at_secs = 20, multiplier = 3.0 }]       # service time x3 from then on
//! down = [{ from_secs = 40, until_secs = 45, mode = "refuse" }]   # or "hang"
//! flap = { period_secs = 20, down_secs = 4, mode = "refuse" }     # optional, periodic
//! ```

use serde::Deserialize;
use std::path::Path;

/// The largest scenario file read, in bytes.
pub const MAX_SCENARIO_BYTES: u64 = 256 * 1024;
/// The most backends in a scenario.
pub const MAX_BACKENDS: usize = 64;
/// The most entries in any one list of a scenario (a rate schedule, speed changes, downs).
pub const MAX_STEPS: usize = 1024;
/// The longest scenario, in seconds.
pub const MAX_DURATION_SECS: f64 = 3600.0;
/// The highest arrival rate, requests per second.
pub const MAX_RATE_PER_SEC: f64 = 100_000.0;
/// The most requests a scenario may send in one run (its highest rate times its duration).
pub const MAX_REQUESTS: f64 = 5_000_000.0;
/// The most workers of one backend.
pub const MAX_WORKERS: u32 = 100_000;
/// The longest time of any kind in a scenario (a timeout, a service time), in milliseconds.
pub const MAX_MS: f64 = 3_600_000.0;
/// The furthest backend, in kilometres (half the Earth's circumference, rounded up).
pub const MAX_DISTANCE_KM: f64 = 20_100.0;

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is over [`MAX_SCENARIO_BYTES`]; it was not parsed.
    #[error("{path}: over the {max} byte limit for a scenario")]
    TooLarge { path: String, max: u64 },
    /// Not TOML, or not the shape of a scenario (a missing or unknown field, a wrong type).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A value out of its range.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
}

/// A scenario, as written. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub duration_secs: f64,
    #[serde(default)]
    pub warmup_secs: f64,
    pub timeout_ms: f64,
    #[serde(default)]
    pub retries: u32,
    pub arrivals: Arrivals,
    #[serde(rename = "backend")]
    pub backends: Vec<Backend>,
}

/// The traffic: a Poisson process whose rate may change over time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub rate_per_sec: f64,
    #[serde(default)]
    pub schedule: Vec<RateStep>,
}

/// From `at_secs` on, the rate is `rate_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateStep {
    pub at_secs: f64,
    pub rate_per_sec: f64,
}

/// One backend of the route. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub workers: u32,
    pub service: Service,
    #[serde(default)]
    pub degrade: Option<Degrade>,
    #[serde(default)]
    pub distance_km: f64,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub failure: f64,
    #[serde(default)]
    pub host_cpu: Option<f32>,
    #[serde(default)]
    pub host_memory: Option<f32>,
    #[serde(default)]
    pub speed: Vec<SpeedStep>,
    #[serde(default)]
    pub down: Vec<Down>,
    #[serde(default)]
    pub flap: Option<Flap>,
}

/// A lognormal service time: half the requests take less than `median_ms`; `sigma` is the
/// standard deviation of its logarithm (0 for a constant time).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub median_ms: f64,
    pub sigma: f64,
}

/// A backend that slows down under load: with `active` requests in service at once, each
/// takes `1 + per_request * max(0, active - knee)` times as long.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Degrade {
    pub knee: u32,
    pub per_request: f64,
}

/// From `at_secs` on, the service time is `multiplier` times the drawn one.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedStep {
    pub at_secs: f64,
    pub multiplier: f64,
}

/// How a backend that is down fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownMode {
    /// Every request is refused at once (a closed port: ~1 ms plus the round trip).
    Refuse,
    /// Every request hangs until the proxy's timeout.
    Hang,
}

/// Down from `from_secs` until `until_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Down {
    pub from_secs: f64,
    pub until_secs: f64,
    pub mode: DownMode,
}

/// Down for `down_secs` at the start of every `period_secs`, shifted by `offset_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    pub period_secs: f64,
    pub down_secs: f64,
    #[serde(default)]
    pub offset_secs: f64,
    pub mode: DownMode,
}

impl Scenario {
    /// Reads and checks the scenario at `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let (text, shown) = read(path)?;
        Scenario::parse(&text, &shown)
    }

    /// Parses and checks a scenario; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        parse_checked(text, path, Scenario::validate)
    }

    /// The highest arrival rate of the scenario.
    pub fn peak_rate(&self) -> f64 {
        self.arrivals
            .schedule
            .iter()
            .map(|s| s.rate_per_sec)
            .fold(self.arrivals.rate_per_sec, f64::max)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let field = |name: &str| name.to_owned();
        if self.name.is_empty() || self.name.len() > 100 {
            return Err((field("name"), "1 to 100 characters".to_owned()));
        }
        range(
            "duration_secs",
            self.duration_secs,
            0.001,
            MAX_DURATION_SECS,
        )?;
        range("warmup_secs", self.warmup_secs, 0.0, self.duration_secs)?;
        if self.warmup_secs >= self.duration_secs {
            return Err((
                field("warmup_secs"),
                "must be shorter than duration_secs".to_owned(),
            ));
        }
        range("timeout_ms", self.timeout_ms, 1.0, MAX_MS)?;
        if self.retries > 1 {
            return Err((field("retries"), "0 or 1".to_owned()));
        }
        range(
            "arrivals.rate_per_sec",
            self.arrivals.rate_per_sec,
            0.0,
            MAX_RATE_PER_SEC,
        )?;
        steps("arrivals.schedule", self.arrivals.schedule.len())?;
        let mut last = f64::NEG_INFINITY;
        for (i, step) in self.arrivals.schedule.iter().enumerate() {
            let at = format!("arrivals.schedule[{i}]");
            range(
                &format!("{at}.at_secs"),
                step.at_secs,
                0.0,
                MAX_DURATION_SECS,
            )?;
            range(
                &format!("{at}.rate_per_sec"),
                step.rate_per_sec,
                0.0,
                MAX_RATE_PER_SEC,
            )?;
            if step.at_secs < last {
                return Err((
                    format!("{at}.at_secs"),
                    "steps must be in time order".into(),
                ));
            }
            last = step.at_secs;
        }
        if self.peak_rate() * self.duration_secs > MAX_REQUESTS {
            return Err((
                field("arrivals"),
                format!("over {MAX_REQUESTS} requests in one run"),
            ));
        }
        if self.backends.is_empty() || self.backends.len() > MAX_BACKENDS {
            return Err((field("backend"), format!("1 to {MAX_BACKENDS} backends")));
        }
        for (i, b) in self.backends.iter().enumerate() {
            b.validate(&format!("backend[{i}]"))?;
            if self.backends[..i].iter().any(|other| other.name == b.name) {
                return Err((format!("backend[{i}].name"), "names must be unique".into()));
            }
        }
        Ok(())
    }
}

/// What one attempt on a backend meets, drawn before it is sent: the simulator and the
/// real-proxy bench draw the same, in the same order, from the same seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// The network's delay each way, milliseconds.
    pub one_way_ms: f64,
    /// The backend refuses it at once.
    pub refused: bool,
    /// The work it takes once a worker has it, milliseconds.
    pub service_ms: f64,
}

impl Backend {
    /// One attempt's draws, from `rng`.
    pub fn draw(&self, rng: &mut fastrand::Rng) -> Draw {
        let base_ms = if self.local { 0.02 } else { 0.2 } + self.distance_km / 100.0;
        let one_way_ms = base_ms * (1.0 + 0.2 * rng.f64());
        let refused = rng.f64() < self.failure;
        let service_ms = self.service.median_ms * (self.service.sigma * normal(rng)).exp();
        Draw {
            one_way_ms,
            refused,
            service_ms,
        }
    }

    /// How long the work of an attempt drawn at `service_ms` takes when a worker starts it at
    /// `t` scenario seconds with `busy` workers busy, itself included: scaled by the speed step
    /// then and by the slowdown under load.
    pub fn served_ms(&self, service_ms: f64, t: f64, busy: u32) -> f64 {
        let speed = self
            .speed
            .iter()
            .rfind(|s| s.at_secs <= t)
            .map_or(1.0, |s| s.multiplier);
        let degrade = self.degrade.map_or(1.0, |d| {
            1.0 + d.per_request * f64::from(busy.saturating_sub(d.knee))
        });
        service_ms * speed * degrade
    }

    /// Whether it is down at `t` scenario seconds, and how.
    pub fn down_at(&self, t: f64) -> Option<DownMode> {
        if let Some(down) = self
            .down
            .iter()
            .find(|d| d.from_secs <= t && t < d.until_secs)
        {
            return Some(down.mode);
        }
        let flap = self.flap?;
        let phase = (t - flap.offset_secs).rem_euclid(flap.period_secs);
        (phase < flap.down_secs).then_some(flap.mode)
    }

    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        if self.name.is_empty() || self.name.len() > 100 {
            return Err((format!("{at}.name"), "1 to 100 characters".to_owned()));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err((format!("{at}.workers"), format!("1 to {MAX_WORKERS}")));
        }
        range(
            &format!("{at}.service.median_ms"),
            self.service.median_ms,
            0.001,
            MAX_MS,
        )?;
        range(&format!("{at}.service.sigma"), self.service.sigma, 0.0, 3.0)?;
        if let Some(degrade) = self.degrade {
            if degrade.knee > MAX_WORKERS {
                return Err((format!("{at}.degrade.knee"), format!("0 to {MAX_WORKERS}")));
            }
            range(
                &format!("{at}.degrade.per_request"),
                degrade.per_request,
                0.0,
                100.0,
            )?;
        }
        range(
            &format!("{at}.distance_km"),
            self.distance_km,
            0.0,
            MAX_DISTANCE_KM,
        )?;
        range(&format!("{at}.failure"), self.failure, 0.0, 1.0)?;
        for (name, value) in [
            ("host_cpu", self.host_cpu),
            ("host_memory", self.host_memory),
        ] {
            if let Some(value) = value {
                range(&format!("{at}.{name}"), f64::from(value), 0.0, 1.0)?;
            }
        }
        steps(&format!("{at}.speed"), self.speed.len())?;
        let mut last = f64::NEG_INFINITY;
        for (i, step) in self.speed.iter().enumerate() {
            let s = format!("{at}.speed[{i}]");
            range(
                &format!("{s}.at_secs"),
                step.at_secs,
                0.0,
                MAX_DURATION_SECS,
            )?;
            range(&format!("{s}.multiplier"), step.multiplier, 0.001, 1000.0)?;
            if step.at_secs < last {
                return Err((format!("{s}.at_secs"), "steps must be in time order".into()));
            }
            last = step.at_secs;
        }
        steps(&format!("{at}.down"), self.down.len())?;
        for (i, down) in self.down.iter().enumerate() {
            let s = format!("{at}.down[{i}]");
            range(
                &format!("{s}.from_secs"),
                down.from_secs,
                0.0,
                MAX_DURATION_SECS,
            )?;
            range(
                &format!("{s}.until_secs"),
                down.until_secs,
                down.from_secs,
                MAX_DURATION_SECS,
            )?;
        }
        if let Some(flap) = self.flap {
            let s = format!("{at}.flap");
            range(
                &format!("{s}.period_secs"),
                flap.period_secs,
                0.001,
                MAX_DURATION_SECS,
            )?;
            range(
                &format!("{s}.down_secs"),
                flap.down_secs,
                0.0,
                flap.period_secs,
            )?;
            range(
                &format!("{s}.offset_secs"),
                flap.offset_secs,
                0.0,
                flap.period_secs,
            )?;
        }
        Ok(())
    }
}

/// `value` is a number within `[min, max]`.
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

fn steps(field: &str, len: usize) -> Result<(), (String, String)> {
    if len > MAX_STEPS {
        return Err((field.to_owned(), format!("more than {MAX_STEPS} entries")));
    }
    Ok(())
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The text of the scenario file at `path`, at most [`MAX_SCENARIO_BYTES`] of it read, and the
/// path as errors name it.
pub(crate) fn read(path: &Path) -> Result<(String, String), ScenarioError> {
    use std::io::Read as _;
    let shown = path.display().to_string();
    let io = |source| ScenarioError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_SCENARIO_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge {
            path: shown,
            max: MAX_SCENARIO_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| ScenarioError::Parse {
        path: shown.clone(),
        message: "not UTF-8".to_owned(),
    })?;
    Ok((text, shown))
}

/// A scenario of any kind from `text`, checked by `validate` (which names the field it
/// refuses); `path` names it in errors.
pub(crate) fn parse_checked<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &str,
    validate: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ScenarioError> {
    if text.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge {
            path: path.to_owned(),
            max: MAX_SCENARIO_BYTES,
        });
    }
    let scenario: T = toml::from_str(text).map_err(|error| ScenarioError::Parse {
        path: path.to_owned(),
        // toml's message quotes the offending line: keep it short.
        message: error.to_string().chars().take(500).collect(),
    })?;
    validate(&scenario).map_err(|(field, reason)| ScenarioError::Invalid {
        path: path.to_owned(),
        field,
        reason,
    })?;
    Ok(scenario)
}
