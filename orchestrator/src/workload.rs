//! Workload specs: what an operator asks the fleet to run (`edgectl deploy -f FILE` as TOML,
//! `POST /v1/workloads` as JSON), parsed and validated into [`WorkloadSpec`].
//!
//! Both formats are read into the same raw serde structs, which mirror the file and refuse
//! unknown fields at every level (a typo must never fall back to a default silently). The raw
//! structs are then validated into the domain types below, whose values are all known to be
//! good: a [`WorkloadSpec`] can only be built by [`WorkloadSpec::from_toml`] or
//! [`WorkloadSpec::from_json`]. Every error names the field's path, e.g.
//! `resources.memory_bytes: must be at least 1 MiB` or `env."BAD NAME": ...`, so the API can
//! answer 400 with it and `edgectl` can print it as is.
//!
//! A spec serializes (`serde::Serialize`) to JSON in one stable shape for the API and for
//! storage: every key is always present (absent optional values are `null`), and that JSON
//! parses back with [`WorkloadSpec::from_json`] into an equal spec.
//!
//! This module never does I/O and never panics on input: text over [`MAX_SPEC_BYTES`] is
//! refused before parsing, and no error quotes more than a few dozen characters of what the
//! user sent, so a hostile 200 KiB string never ends up in a log line or a response.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// The largest spec we parse, TOML or JSON. Real specs are well under 4 KiB.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Bounds of `replicas`.
pub const REPLICAS: RangeInclusive<i64> = 1..=10_000;
/// Bounds of `resources.cpu_millis`: a thousandth of a CPU up to a thousand CPUs.
pub const CPU_MILLIS: RangeInclusive<i64> = 1..=1_000_000;
/// Bounds of `resources.memory_bytes`: 1 MiB to 1 TiB.
pub const MEMORY_BYTES: RangeInclusive<i64> = MIB..=TIB;
/// Bounds of `resources.disk_bytes` (optional, 0 when not given): up to 16 TiB.
pub const DISK_BYTES: RangeInclusive<i64> = 0..=16 * TIB;
/// Bounds of `health.interval_secs` and `health.timeout_secs`.
pub const HEALTH_SECS: RangeInclusive<i64> = 1..=3600;
/// Bounds of `health.failure_threshold` and `health.success_threshold`.
pub const HEALTH_THRESHOLD: RangeInclusive<i64> = 1..=100;
/// Half the Earth's equatorial circumference: any point is within this of any other.
pub const MAX_RADIUS_KM: f64 = 20_037.0;

/// The most arguments (`args`, `health.exec.args`) and the longest one.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;
/// The most environment variables, the longest name and the longest value.
pub const MAX_ENV: usize = 64;
pub const MAX_ENV_NAME_BYTES: usize = 255;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// The most ports a workload may declare.
pub const MAX_PORTS: usize = 64;
/// The most labels a requirement (and a node) may carry, and the longest key and value: the
/// bounds the node's config and the wire use.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// The most device requirements (a node reports at most 16 accelerators) and the longest
/// device path (the wire's bound).
pub const MAX_DEVICES: usize = 16;
pub const MAX_DEVICE_PATH_BYTES: usize = 96;
/// The longest `version`.
pub const MAX_VERSION_LEN: usize = 64;
/// The longest workload name: a DNS label.
pub const MAX_NAME_LEN: usize = 63;
/// The longest file name (`command`), and the longest path (`working_dir`, `health.exec.command`).
pub const MAX_FILE_NAME_BYTES: usize = 255;
pub const MAX_PATH_BYTES: usize = 4096;
/// The longest HTTP health-check path.
pub const MAX_HTTP_PATH_BYTES: usize = 1024;

const MIB: i64 = 1024 * 1024;
const TIB: i64 = 1024 * 1024 * 1024 * 1024;

/// Health-check defaults when `[health]` leaves a value out.
const DEFAULT_INTERVAL_SECS: u32 = 10;
const DEFAULT_TIMEOUT_SECS: u32 = 2;
const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

/// How much of a user's string an error message may quote.
const SHOWN_CHARS: usize = 40;
/// How long a parser's message may be once it is part of ours.
const MAX_MESSAGE_CHARS: usize = 300;

/// Why a spec was refused. None of these is worth retrying unchanged: the user has to fix the
/// spec. The API answers all of them with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is larger than [`MAX_SPEC_BYTES`]; refused before parsing.
    #[error("spec is {bytes} bytes; at most {max_bytes} are allowed")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The text is not TOML (or JSON) at all. The message carries the line and column.
    #[error("{message}")]
    Syntax { message: String },
    /// A field is missing, unknown, of the wrong type or out of bounds. `field` is its path,
    /// e.g. `resources.memory_bytes`, `args[3]` or `env."BAD NAME"`; empty for the document
    /// itself.
    #[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Invalid { field: String, reason: String },
}

impl SpecError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The path of the field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } if !field.is_empty() => Some(field),
            _ => None,
        }
    }
}

/// A validated workload spec. Built only by [`WorkloadSpec::from_toml`] and
/// [`WorkloadSpec::from_json`], so every value in it is within the bounds documented on its
/// accessor.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    name: String,
    version: String,
    artifact: ArtifactDigest,
    command: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    ports: Vec<u16>,
    placement: Placement,
    resources: Resources,
    requirements: Requirements,
    restart: RestartPolicy,
    health: Option<HealthCheck>,
}

/// The executable, content-addressed: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactDigest([u8; 32]);

/// How many instances run, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This many instances, 1 to 10,000, spread over the nodes that match.
    Replicas(u32),
    /// One instance on every node that matches.
    PerNode,
}

/// An amount of node resources: what a workload asks for, what a node has, what is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// What a node must be or have to run the workload. Empty means any node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Requirements {
    /// One of these architectures; empty means any. Sorted, no duplicates.
    pub arch: Vec<Arch>,
    /// Every one of these labels, with this value.
    pub labels: BTreeMap<String, String>,
    /// Every one of these devices. No duplicates, in the order given.
    pub devices: Vec<DeviceRequirement>,
    /// Within this distance of a point.
    pub near: Option<Near>,
}

/// A CPU architecture, named as Rust's `std::env::consts::ARCH` (and so the node) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
    #[serde(rename = "arm")]
    Arm,
    #[serde(rename = "riscv64")]
    Riscv64,
}

/// A device the node must have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRequirement {
    /// Any accelerator of this kind.
    Kind(DeviceKind),
    /// This device node, e.g. `/dev/video0`: an absolute path under `/dev/`.
    Path(String),
}

/// An accelerator kind, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {
    Gpu,
    Npu,
    Video,
    Gpio,
}

/// "Within `radius_km` of (`lat`, `lon`)", great-circle distance. Coordinates are WGS84
/// degrees, finite and on the globe; the radius is in `(0, MAX_RADIUS_KM]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Near {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
}

/// When the node restarts an exited instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Whatever the exit status. The default.
    #[default]
    Always,
    /// Only after a non-zero exit status or a signal.
    OnFailure,
    Never,
}

/// How the node checks an instance is healthy. `timeout_secs < interval_secs`, both within
/// [`HEALTH_SECS`]; thresholds within [`HEALTH_THRESHOLD`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    /// Consecutive failures before the instance counts as unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes before an unhealthy instance counts as healthy again.
    pub success_threshold: u32,
}

/// One health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET http://127.0.0.1:{port}{path}` answers 2xx or 3xx.
    Http { port: u16, path: String },
    /// A TCP connection to `127.0.0.1:{port}` is accepted.
    Tcp { port: u16 },
    /// The command exits with status 0.
    Exec { command: String, args: Vec<String> },
}

impl WorkloadSpec {
    /// Parses and validates a spec written as TOML (`edgectl deploy -f FILE`).
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        check_size(text.len())?;
        let de = toml::Deserializer::parse(text).map_err(|e| SpecError::Syntax {
            message: toml_message(&e, text),
        })?;
        let Table(raw): Table<RawSpec> = serde_path_to_error::deserialize(de).map_err(|e| {
            let message = toml_message(e.inner(), text);
            field_error(e.path(), &message)
        })?;
        raw.validate()
    }

    /// Parses and validates a spec sent as JSON (`POST /v1/workloads`), or stored: the JSON
    /// this type serializes to parses back into an equal spec.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        check_size(bytes.len())?;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let Table(raw): Table<RawSpec> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let message = clip(&e.inner().to_string());
                if e.inner().is_syntax() || e.inner().is_eof() {
                    SpecError::Syntax { message }
                } else {
                    field_error(e.path(), &message)
                }
            })?;
        de.end().map_err(|e| SpecError::Syntax {
            message: clip(&e.to_string()),
        })?;
        raw.validate()
    }

    /// The workload's name, unique in the fleet: a DNS label (1 to 63 of `[a-z0-9-]`, not
    /// starting or ending with `-`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1 to 64 printable ASCII characters, no spaces.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn artifact(&self) -> ArtifactDigest {
        self.artifact
    }

    /// The file to run inside the artifact's directory: a plain file name (no `/`). `None`
    /// means the artifact itself is the executable.
    pub fn command(&self) -> Option<&str> {
        self.command.as_deref()
    }

    /// At most [`MAX_ARGS`], each at most [`MAX_ARG_BYTES`], no NUL.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Names match `[A-Za-z_][A-Za-z0-9_]*`; values have no NUL.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// An absolute path, if given.
    pub fn working_dir(&self) -> Option<&str> {
        self.working_dir.as_deref()
    }

    /// TCP ports the workload listens on: 1 to 65535, unique, in the order given. Two
    /// instances that share a port cannot share a node.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// What one instance needs. `cpu_millis` within [`CPU_MILLIS`], `memory_bytes` within
    /// [`MEMORY_BYTES`], `disk_bytes` within [`DISK_BYTES`].
    pub fn resources(&self) -> Resources {
        self.resources
    }

    pub fn requirements(&self) -> &Requirements {
        &self.requirements
    }

    pub fn restart(&self) -> RestartPolicy {
        self.restart
    }

    pub fn health(&self) -> Option<&HealthCheck> {
        self.health.as_ref()
    }
}

impl Serialize for WorkloadSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Restart {
            policy: RestartPolicy,
        }
        let (replicas, placement) = match self.placement {
            Placement::Replicas(n) => (Some(n), None),
            Placement::PerNode => (None, Some("per-node")),
        };
        let mut st = s.serialize_struct("WorkloadSpec", 14)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("artifact", &self.artifact)?;
        st.serialize_field("command", &self.command)?;
        st.serialize_field("args", &self.args)?;
        st.serialize_field("env", &self.env)?;
        st.serialize_field("working_dir", &self.working_dir)?;
        st.serialize_field("ports", &self.ports)?;
        st.serialize_field("replicas", &replicas)?;
        st.serialize_field("placement", &placement)?;
        st.serialize_field("resources", &self.resources)?;
        st.serialize_field("requirements", &self.requirements)?;
        st.serialize_field(
            "restart",
            &Restart {
                policy: self.restart,
            },
        )?;
        st.serialize_field("health", &self.health)?;
        st.end()
    }
}

impl ArtifactDigest {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        crate::artifacts::parse_digest(s).map(Self)
    }
}

impl fmt::Display for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::artifacts::format_digest(&self.0))
    }
}

impl fmt::Debug for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactDigest({self})")
    }
}

impl Serialize for ArtifactDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Arm, Arch::Riscv64];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Arm => "arm",
            Self::Riscv64 => "riscv64",
        }
    }

    /// The architecture a node reports, if it is one we know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 4] = [Self::Gpu, Self::Npu, Self::Video, Self::Gpio];

    /// The name the node reports for accelerators of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gpu => "gpu",
            Self::Npu => "npu",
            Self::Video => "video",
            Self::Gpio => "gpio",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl DeviceRequirement {
    /// The kind's name or the path: what a node lists among its devices when it has it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Kind(k) => k.as_str(),
            Self::Path(p) => p,
        }
    }
}

impl fmt::Display for DeviceRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeviceRequirement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for HealthCheck {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Http<'a> {
            port: u16,
            path: &'a str,
        }
        #[derive(Serialize)]
        struct Tcp {
            port: u16,
        }
        #[derive(Serialize)]
        struct Exec<'a> {
            command: &'a str,
            args: &'a [String],
        }
        let (mut http, mut tcp, mut exec) = (None, None, None);
        match &self.probe {
            Probe::Http { port, path } => http = Some(Http { port: *port, path }),
            Probe::Tcp { port } => tcp = Some(Tcp { port: *port }),
            Probe::Exec { command, args } => exec = Some(Exec { command, args }),
        }
        let mut st = s.serialize_struct("HealthCheck", 7)?;
        st.serialize_field("http", &http)?;
        st.serialize_field("tcp", &tcp)?;
        st.serialize_field("exec", &exec)?;
        st.serialize_field("interval_secs", &self.interval_secs)?;
        st.serialize_field("timeout_secs", &self.timeout_secs)?;
        st.serialize_field("failure_threshold", &self.failure_threshold)?;
        st.serialize_field("success_threshold", &self.success_threshold)?;
        st.end()
    }
}

// ---------------------------------------------------------------------------------------------
// The spec as written. Integers are read wide (`i64`) so that a negative or huge value gets an
// error naming its bounds rather than a type error; enums are read as strings for the same
// reason.

/// A table and nothing else. serde's derived structs also accept a sequence of their fields in
/// order, so `resources = [250, 33554432]` would parse; a spec is written with names.
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
            .map(Table)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    version: String,
    artifact: String,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    ports: Vec<i64>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    placement: Option<String>,
    resources: Table<RawResources>,
    #[serde(default)]
    requirements: Option<Table<RawRequirements>>,
    #[serde(default)]
    restart: Option<Table<RawRestart>>,
    #[serde(default)]
    health: Option<Table<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu_millis: i64,
    memory_bytes: i64,
    #[serde(default)]
    disk_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequirements {
    #[serde(default)]
    arch: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    near: Option<Table<RawNear>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNear {
    lat: f64,
    lon: f64,
    radius_km: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    http: Option<Table<RawHttp>>,
    #[serde(default)]
    tcp: Option<Table<RawTcp>>,
    #[serde(default)]
    exec: Option<Table<RawExec>>,
    #[serde(default)]
    interval_secs: Option<i64>,
    #[serde(default)]
    timeout_secs: Option<i64>,
    #[serde(default)]
    failure_threshold: Option<i64>,
    #[serde(default)]
    success_threshold: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    port: i64,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    port: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: String,
    #[serde(default)]
    args: Vec<String>,
}

impl RawSpec {
    fn validate(self) -> Result<WorkloadSpec, SpecError> {
        let name = validate_name(self.name)?;
        let version = validate_version(self.version)?;
        let artifact = ArtifactDigest::parse(&self.artifact).ok_or_else(|| {
            SpecError::invalid(
                "artifact",
                format!(
                    "{} is not \"sha256:\" followed by 64 lowercase hex digits",
                    shown(&self.artifact)
                ),
            )
        })?;
        let command = self
            .command
            .map(|c| validate_file_name("command", c))
            .transpose()?;
        let args = validate_args("args", self.args)?;
        let env = validate_env(self.env)?;
        let working_dir = self
            .working_dir
            .map(|d| validate_absolute_path("working_dir", d))
            .transpose()?;
        let ports = validate_ports(&self.ports)?;
        let placement = validate_placement(self.replicas, self.placement)?;
        let resources = validate_resources(&self.resources.0)?;
        let requirements =
            validate_requirements(self.requirements.map(|t| t.0).unwrap_or_default())?;
        let restart = validate_restart(self.restart.map(|t| t.0))?;
        let health = self.health.map(|t| validate_health(t.0)).transpose()?;
        Ok(WorkloadSpec {
            name,
            version,
            artifact,
            command,
            args,
            env,
            working_dir,
            ports,
            placement,
            resources,
            requirements,
            restart,
            health,
        })
    }
}

fn check_size(bytes: usize) -> Result<(), SpecError> {
    if bytes > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge {
            bytes,
            max_bytes: MAX_SPEC_BYTES,
        });
    }
    Ok(())
}

fn validate_name(name: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid("name", reason);
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(format!(
            "{} contains {c:?}; use lowercase letters, digits and '-'",
            shown(&name)
        )));
    }
    // ASCII only from here on, so bytes are characters.
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(format!(
            "{} must not start or end with '-'",
            shown(&name)
        )));
    }
    Ok(name)
}

fn validate_version(version: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid("version", reason);
    if version.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if let Some(c) = version.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{} contains {c:?}; use printable ASCII characters without spaces",
            shown(&version)
        )));
    }
    if version.len() > MAX_VERSION_LEN {
        return Err(invalid(format!(
            "is {} characters long; at most {MAX_VERSION_LEN} are allowed",
            version.len()
        )));
    }
    Ok(version)
}

/// A plain file name: no `/`, no NUL, not `.` or `..`.
fn validate_file_name(field: &str, name: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid(field, reason);
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_FILE_NAME_BYTES} are allowed",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(invalid("must not contain a NUL character".into()));
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(invalid(format!(
            "{} must be a file name inside the artifact's directory, without '/'",
            shown(&name)
        )));
    }
    Ok(name)
}

fn validate_absolute_path(field: &str, path: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid(field, reason);
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        )));
    }
    if path.contains('\0') {
        return Err(invalid("must not contain a NUL character".into()));
    }
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "{} must be an absolute path",
            shown(&path)
        )));
    }
    Ok(path)
}

fn validate_args(field: &str, args: Vec<String>) -> Result<Vec<String>, SpecError> {
    if args.len() > MAX_ARGS {
        return Err(SpecError::invalid(
            field,
            format!("{} arguments; at most {MAX_ARGS} are allowed", args.len()),
        ));
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES {
            return Err(SpecError::invalid(
                format!("{field}[{i}]"),
                format!(
                    "is {} bytes long; at most {MAX_ARG_BYTES} are allowed",
                    arg.len()
                ),
            ));
        }
        if arg.contains('\0') {
            return Err(SpecError::invalid(
                format!("{field}[{i}]"),
                "must not contain a NUL character",
            ));
        }
    }
    Ok(args)
}

fn validate_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, SpecError> {
    if env.len() > MAX_ENV {
        return Err(SpecError::invalid(
            "env",
            format!("{} variables; at most {MAX_ENV} are allowed", env.len()),
        ));
    }
    for (name, value) in &env {
        let field = || key_path("env", name);
        if name.is_empty() {
            return Err(SpecError::invalid(field(), "the name must not be empty"));
        }
        if name.len() > MAX_ENV_NAME_BYTES {
            return Err(SpecError::invalid(
                field(),
                format!(
                    "the name is {} bytes long; at most {MAX_ENV_NAME_BYTES} are allowed",
                    name.len()
                ),
            ));
        }
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SpecError::invalid(
                field(),
                "the name must match [A-Za-z_][A-Za-z0-9_]*",
            ));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(SpecError::invalid(
                field(),
                format!(
                    "the value is {} bytes long; at most {MAX_ENV_VALUE_BYTES} are allowed",
                    value.len()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(SpecError::invalid(
                field(),
                "the value must not contain a NUL character",
            ));
        }
    }
    Ok(env)
}

fn validate_ports(ports: &[i64]) -> Result<Vec<u16>, SpecError> {
    if ports.len() > MAX_PORTS {
        return Err(SpecError::invalid(
            "ports",
            format!("{} ports; at most {MAX_PORTS} are allowed", ports.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for (i, &p) in ports.iter().enumerate() {
        let port = port(&format!("ports[{i}]"), p)?;
        if !seen.insert(port) {
            return Err(SpecError::invalid(
                format!("ports[{i}]"),
                format!("{port} is listed twice"),
            ));
        }
        out.push(port);
    }
    Ok(out)
}

fn port(field: &str, v: i64) -> Result<u16, SpecError> {
    u16::try_from(int_in(field, v, &(1..=65535))?)
        .map_err(|_| SpecError::invalid(field, format!("{v} out of range 1..=65535")))
}

fn validate_placement(
    replicas: Option<i64>,
    placement: Option<String>,
) -> Result<Placement, SpecError> {
    match (replicas, placement) {
        (Some(_), Some(_)) => Err(SpecError::invalid(
            "replicas",
            "give either replicas or placement = \"per-node\", not both",
        )),
        (None, None) => Ok(Placement::Replicas(1)),
        (Some(n), None) => {
            let n = int_in("replicas", n, &REPLICAS)?;
            // REPLICAS fits in u32.
            Ok(Placement::Replicas(u32::try_from(n).unwrap_or(u32::MAX)))
        }
        (None, Some(p)) if p == "per-node" => Ok(Placement::PerNode),
        (None, Some(p)) => Err(SpecError::invalid(
            "placement",
            format!(
                "{} is not a placement; use \"per-node\", or replicas = N",
                shown(&p)
            ),
        )),
    }
}

fn validate_resources(raw: &RawResources) -> Result<Resources, SpecError> {
    let cpu_millis = int_in("resources.cpu_millis", raw.cpu_millis, &CPU_MILLIS)?;
    let memory_bytes = raw.memory_bytes;
    if memory_bytes < *MEMORY_BYTES.start() {
        return Err(SpecError::invalid(
            "resources.memory_bytes",
            format!("must be at least 1 MiB ({MIB}); got {memory_bytes}"),
        ));
    }
    if memory_bytes > *MEMORY_BYTES.end() {
        return Err(SpecError::invalid(
            "resources.memory_bytes",
            format!("must be at most 1 TiB ({TIB}); got {memory_bytes}"),
        ));
    }
    let disk_bytes = int_in(
        "resources.disk_bytes",
        raw.disk_bytes.unwrap_or(0),
        &DISK_BYTES,
    )?;
    // All three bounds are non-negative, so the conversions are exact.
    Ok(Resources {
        cpu_millis: cpu_millis.unsigned_abs(),
        memory_bytes: memory_bytes.unsigned_abs(),
        disk_bytes: disk_bytes.unsigned_abs(),
    })
}

fn validate_requirements(raw: RawRequirements) -> Result<Requirements, SpecError> {
    let mut arch = Vec::with_capacity(raw.arch.len());
    for (i, a) in raw.arch.iter().enumerate() {
        let field = format!("requirements.arch[{i}]");
        let parsed = Arch::parse(a).ok_or_else(|| {
            SpecError::invalid(
                &field,
                format!(
                    "{} is not an architecture we know; use x86_64, aarch64, arm or riscv64",
                    shown(a)
                ),
            )
        })?;
        if arch.contains(&parsed) {
            return Err(SpecError::invalid(field, format!("{a} is listed twice")));
        }
        arch.push(parsed);
    }
    arch.sort_unstable();
    let labels = validate_labels(raw.labels)?;
    if raw.devices.len() > MAX_DEVICES {
        return Err(SpecError::invalid(
            "requirements.devices",
            format!(
                "{} devices; at most {MAX_DEVICES} are allowed",
                raw.devices.len()
            ),
        ));
    }
    let mut devices: Vec<DeviceRequirement> = Vec::with_capacity(raw.devices.len());
    for (i, d) in raw.devices.into_iter().enumerate() {
        let field = format!("requirements.devices[{i}]");
        let device = validate_device(&field, d)?;
        if devices.contains(&device) {
            return Err(SpecError::invalid(
                field,
                format!("{device} is listed twice"),
            ));
        }
        devices.push(device);
    }
    let near = raw.near.map(|t| validate_near(t.0)).transpose()?;
    Ok(Requirements {
        arch,
        labels,
        devices,
        near,
    })
}

fn validate_device(field: &str, d: String) -> Result<DeviceRequirement, SpecError> {
    if let Some(kind) = DeviceKind::parse(&d) {
        return Ok(DeviceRequirement::Kind(kind));
    }
    let invalid = |reason: String| SpecError::invalid(field, reason);
    if !d.starts_with("/dev/") {
        return Err(invalid(format!(
            "{} is neither an accelerator kind (gpu, npu, video, gpio) nor a path under /dev/",
            shown(&d)
        )));
    }
    if d.len() > MAX_DEVICE_PATH_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_DEVICE_PATH_BYTES} are allowed",
            d.len()
        )));
    }
    if let Some(c) = d.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{} contains {c:?}; device paths are printable ASCII",
            shown(&d)
        )));
    }
    if d.split('/').any(|part| part == "..") || d.len() == "/dev/".len() {
        return Err(invalid(format!(
            "{} must name a device under /dev/",
            shown(&d)
        )));
    }
    Ok(DeviceRequirement::Path(d))
}

fn validate_near(raw: RawNear) -> Result<Near, SpecError> {
    let lat = coordinate("requirements.near.lat", raw.lat, 90.0)?;
    let lon = coordinate("requirements.near.lon", raw.lon, 180.0)?;
    let r = raw.radius_km;
    let field = "requirements.near.radius_km";
    if !r.is_finite() {
        return Err(SpecError::invalid(
            field,
            format!("{r} is not a finite number"),
        ));
    }
    if r <= 0.0 || r > MAX_RADIUS_KM {
        return Err(SpecError::invalid(
            field,
            format!("{r} out of range; must be above 0 and at most {MAX_RADIUS_KM}"),
        ));
    }
    Ok(Near {
        lat,
        lon,
        radius_km: r,
    })
}

fn coordinate(field: &str, v: f64, bound: f64) -> Result<f64, SpecError> {
    if !v.is_finite() {
        return Err(SpecError::invalid(
            field,
            format!("{v} is not a finite number"),
        ));
    }
    if !(-bound..=bound).contains(&v) {
        return Err(SpecError::invalid(
            field,
            format!("{v} out of range -{bound}..={bound}"),
        ));
    }
    Ok(v)
}

fn validate_labels(
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    const FIELD: &str = "requirements.labels";
    if labels.len() > MAX_LABELS {
        return Err(SpecError::invalid(
            FIELD,
            format!("{} labels; at most {MAX_LABELS} are allowed", labels.len()),
        ));
    }
    for (key, value) in &labels {
        let field = || key_path(FIELD, key);
        if key.is_empty() {
            return Err(SpecError::invalid(field(), "the key must not be empty"));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
        {
            return Err(SpecError::invalid(
                field(),
                format!("the key contains {c:?}; use letters, digits and . _ / -"),
            ));
        }
        // ASCII only from here on, so bytes are characters.
        if key.len() > MAX_LABEL_KEY_LEN {
            return Err(SpecError::invalid(
                field(),
                format!(
                    "the key is {} characters long; at most {MAX_LABEL_KEY_LEN} are allowed",
                    key.len()
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(SpecError::invalid(
                field(),
                format!(
                    "the value is {} bytes long; at most {MAX_LABEL_VALUE_BYTES} are allowed",
                    value.len()
                ),
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(SpecError::invalid(
                field(),
                format!("the value contains the control character {c:?}"),
            ));
        }
    }
    Ok(labels)
}

fn validate_restart(raw: Option<RawRestart>) -> Result<RestartPolicy, SpecError> {
    let Some(policy) = raw.and_then(|r| r.policy) else {
        return Ok(RestartPolicy::default());
    };
    match policy.as_str() {
        "always" => Ok(RestartPolicy::Always),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(SpecError::invalid(
            "restart.policy",
            format!(
                "{} is not a policy; use always, on-failure or never",
                shown(&policy)
            ),
        )),
    }
}

fn validate_health(raw: RawHealth) -> Result<HealthCheck, SpecError> {
    let probe = match (raw.http, raw.tcp, raw.exec) {
        (Some(Table(http)), None, None) => {
            let port = port("health.http.port", http.port)?;
            let path = http.path.unwrap_or_else(|| "/".to_owned());
            let field = "health.http.path";
            if !path.starts_with('/') {
                return Err(SpecError::invalid(
                    field,
                    format!("{} must start with '/'", shown(&path)),
                ));
            }
            if path.len() > MAX_HTTP_PATH_BYTES {
                return Err(SpecError::invalid(
                    field,
                    format!(
                        "is {} bytes long; at most {MAX_HTTP_PATH_BYTES} are allowed",
                        path.len()
                    ),
                ));
            }
            if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(SpecError::invalid(
                    field,
                    format!("{} contains {c:?}; percent-encode it", shown(&path)),
                ));
            }
            Probe::Http { port, path }
        }
        (None, Some(Table(tcp)), None) => Probe::Tcp {
            port: port("health.tcp.port", tcp.port)?,
        },
        (None, None, Some(Table(exec))) => {
            let command = if exec.command.starts_with('/') {
                validate_absolute_path("health.exec.command", exec.command)?
            } else {
                validate_file_name("health.exec.command", exec.command)?
            };
            let args = validate_args("health.exec.args", exec.args)?;
            Probe::Exec { command, args }
        }
        _ => {
            return Err(SpecError::invalid(
                "health",
                "give exactly one of http, tcp, exec",
            ));
        }
    };
    let secs = |field: &str, v: Option<i64>, default: u32| -> Result<u32, SpecError> {
        match v {
            None => Ok(default),
            Some(v) => Ok(u32::try_from(int_in(field, v, &HEALTH_SECS)?).unwrap_or(u32::MAX)),
        }
    };
    let threshold = |field: &str, v: Option<i64>, default: u32| -> Result<u32, SpecError> {
        match v {
            None => Ok(default),
            Some(v) => Ok(u32::try_from(int_in(field, v, &HEALTH_THRESHOLD)?).unwrap_or(u32::MAX)),
        }
    };
    let interval_secs = secs(
        "health.interval_secs",
        raw.interval_secs,
        DEFAULT_INTERVAL_SECS,
    )?;
    let timeout_secs = secs(
        "health.timeout_secs",
        raw.timeout_secs,
        DEFAULT_TIMEOUT_SECS,
    )?;
    if timeout_secs >= interval_secs {
        let default = if raw.timeout_secs.is_none() {
            " (the default)"
        } else {
            ""
        };
        return Err(SpecError::invalid(
            "health.timeout_secs",
            format!(
                "{timeout_secs}{default} must be less than health.interval_secs ({interval_secs})"
            ),
        ));
    }
    Ok(HealthCheck {
        probe,
        interval_secs,
        timeout_secs,
        failure_threshold: threshold(
            "health.failure_threshold",
            raw.failure_threshold,
            DEFAULT_FAILURE_THRESHOLD,
        )?,
        success_threshold: threshold(
            "health.success_threshold",
            raw.success_threshold,
            DEFAULT_SUCCESS_THRESHOLD,
        )?,
    })
}

fn int_in(field: &str, v: i64, range: &RangeInclusive<i64>) -> Result<i64, SpecError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(SpecError::invalid(
            field,
            format!("{v} out of range {}..={}", range.start(), range.end()),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Error text.

/// The path of a map entry: `env.GREETING`, or `env."BAD NAME"` when the key is not a bare
/// TOML key.
fn key_path(parent: &str, key: &str) -> String {
    if is_bare_key(key) {
        format!("{parent}.{key}")
    } else {
        format!("{parent}.{}", shown(key))
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= SHOWN_CHARS
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A user's string as an error message may quote it: Debug-escaped (so newlines and NULs are
/// visible and cannot forge a log line) and cut after [`SHOWN_CHARS`] characters.
fn shown(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(SHOWN_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// A parser's message, cut to about [`MAX_MESSAGE_CHARS`]. serde quotes whole strings in
/// "invalid type: string \"...\", expected i64": the user's string is cut, what was
/// expected is kept.
fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    match message.rfind(", expected ") {
        Some(i) => format!(
            "{}{}",
            cut(&message[..i], SHOWN_CHARS * 2),
            cut(&message[i..], MAX_MESSAGE_CHARS)
        ),
        None => cut(message, MAX_MESSAGE_CHARS),
    }
}

fn cut(s: &str, max_chars: usize) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// An error from deserializing, at `path`. serde reports a missing field at the struct that
/// lacks it; we name the field itself, so `resources` + "missing field `cpu_millis`" becomes
/// `resources.cpu_millis: missing`.
fn field_error(path: &serde_path_to_error::Path, message: &str) -> SpecError {
    let mut field = String::new();
    for segment in path {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                field = if field.is_empty() {
                    if is_bare_key(key) {
                        key.clone()
                    } else {
                        shown(key)
                    }
                } else {
                    key_path(&field, key)
                }
            }
            Segment::Enum { .. } => {}
            Segment::Unknown => field.push_str(if field.is_empty() { "?" } else { ".?" }),
        }
    }
    let named = |prefix: &str| -> Option<(String, String)> {
        let rest = message.strip_prefix(prefix)?;
        let (key, tail) = rest.split_once('`')?;
        let path = if field.is_empty() {
            if is_bare_key(key) {
                key.to_owned()
            } else {
                shown(key)
            }
        } else {
            key_path(&field, key)
        };
        Some((path, tail.to_owned()))
    };
    if let Some((path, tail)) = named("missing field `") {
        return SpecError::invalid(path, format!("missing{tail}"));
    }
    if let Some((path, tail)) = named("unknown field `") {
        // serde_path_to_error has already stepped into the unknown key.
        let path = if field.is_empty() { path } else { field };
        let tail = tail.trim_start_matches(',').trim_start();
        let reason = if tail.is_empty() {
            "unknown field".to_owned()
        } else {
            format!("unknown field; {tail}")
        };
        return SpecError::invalid(path, reason);
    }
    SpecError::invalid(field, message)
}

/// A TOML error as one line: `line L, column C: message`.
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let message = clip(e.message().trim());
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
