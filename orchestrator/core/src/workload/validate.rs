//! The spec as written, and its validation into the types of the parent module. Integers are
//! read wide (`i64`) so that a negative or huge value gets an error naming its bounds rather
//! than a type error; enums are read as strings for the same reason. Unknown fields are
//! refused at every level.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;

use serde::Deserialize;

use edge_proto::field::{self, FieldPath, shown};

use super::parse_error::{clip, field_error, toml_message};
use super::*;

/// Parses and validates TOML text (see [`WorkloadSpec::from_toml`]).
pub(super) fn from_toml(text: &str) -> Result<WorkloadSpec, SpecError> {
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

/// Parses and validates JSON (see [`WorkloadSpec::from_json`]).
pub(super) fn from_json(bytes: &[u8]) -> Result<WorkloadSpec, SpecError> {
    check_size(bytes.len())?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Table(raw): Table<RawSpec> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
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
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    allow_setuid: Option<bool>,
    #[serde(default)]
    read_only_root: Option<bool>,
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
    #[serde(default)]
    expose: Vec<Table<RawExpose>>,
    #[serde(default)]
    scale_to_zero: Option<Table<RawScaleToZero>>,
    #[serde(default)]
    max_disconnect_secs: Option<i64>,
    #[serde(default)]
    reconcile: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpose {
    port: i64,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    timeout_secs: Option<i64>,
    #[serde(default)]
    retries: Option<i64>,
    #[serde(default)]
    cache: Option<bool>,
    #[serde(default)]
    stale_if_offline_secs: Option<i64>,
    #[serde(default)]
    balance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScaleToZero {
    idle_secs: i64,
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
    #[serde(default)]
    follow_near: Option<bool>,
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
        let (driver, artifact) = validate_driver(self.driver, self.artifact, self.image)?;
        let allow_setuid = match (driver, self.allow_setuid) {
            (Driver::Exec, Some(true)) => {
                return Err(SpecError::invalid(
                    "allow_setuid",
                    "only for driver \"oci\": an executable's own file modes are the node's",
                ));
            }
            (_, allowed) => allowed.unwrap_or(false),
        };
        let read_only_root = match (driver, self.read_only_root) {
            (Driver::Exec, Some(true)) => {
                return Err(SpecError::invalid(
                    "read_only_root",
                    "only for driver \"oci\": an executable runs on the node's own filesystem",
                ));
            }
            (_, asked) => asked.unwrap_or(false),
        };
        if driver == Driver::Oci && self.command.is_some() {
            return Err(SpecError::invalid(
                "command",
                "a container runs its image's entrypoint; set args to change its command",
            ));
        }
        let command = self
            .command
            .map(|c| validate_file_name(&FieldPath::new("command"), c))
            .transpose()?;
        let args = validate_args(&FieldPath::new("args"), self.args)?;
        let env = validate_env(self.env)?;
        let working_dir = self
            .working_dir
            .map(|d| validate_absolute_path(&FieldPath::new("working_dir"), d))
            .transpose()?;
        let expose = validate_expose(self.expose.into_iter().map(|t| t.0).collect())?;
        let ports = validate_ports(&self.ports, &expose)?;
        let scale_to_zero = self
            .scale_to_zero
            .map(|t| validate_scale_to_zero(&t.0, &expose))
            .transpose()?;
        let placement = validate_placement(self.replicas, self.placement)?;
        let replacement =
            validate_replacement(self.max_disconnect_secs, self.reconcile, placement)?;
        let resources = validate_resources(&self.resources.0)?;
        let requirements =
            validate_requirements(self.requirements.map(|t| t.0).unwrap_or_default())?;
        let restart = validate_restart(self.restart.map(|t| t.0))?;
        let health = self.health.map(|t| validate_health(t.0)).transpose()?;
        Ok(WorkloadSpec {
            name,
            version,
            driver,
            artifact,
            image_arch: Vec::new(),
            allow_setuid,
            read_only_root,
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
            expose,
            scale_to_zero,
            replacement,
        })
    }
}

/// `driver` and the digest it runs: `artifact` for `exec` (the default), `image` for `oci`,
/// never both.
fn validate_driver(
    driver: Option<String>,
    artifact: Option<String>,
    image: Option<String>,
) -> Result<(Driver, ArtifactDigest), SpecError> {
    let driver = match driver {
        None => Driver::Exec,
        Some(d) => Driver::parse(&d).ok_or_else(|| {
            SpecError::invalid(
                "driver",
                format!("{} is not one of \"exec\", \"oci\"", shown(&d)),
            )
        })?,
    };
    let (field, digest, other) = match driver {
        Driver::Exec => ("artifact", artifact, image.map(|_| "image")),
        Driver::Oci => ("image", image, artifact.map(|_| "artifact")),
    };
    if let Some(other) = other {
        return Err(SpecError::invalid(
            other,
            format!(
                "driver \"{}\" runs {field}; {other} is for driver \"{}\"",
                driver.as_str(),
                match driver {
                    Driver::Exec => "oci",
                    Driver::Oci => "exec",
                }
            ),
        ));
    }
    let digest = digest.ok_or_else(|| {
        SpecError::invalid(
            field,
            format!("missing: driver \"{}\" needs one", driver.as_str()),
        )
    })?;
    let parsed = ArtifactDigest::parse(&digest).ok_or_else(|| {
        SpecError::invalid(
            field,
            format!(
                "{} is not \"sha256:\" followed by 64 lowercase hex digits",
                shown(&digest)
            ),
        )
    })?;
    Ok((driver, parsed))
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
    field::check_name(&FieldPath::new("name"), &name)?;
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
fn validate_file_name(field: &FieldPath, name: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid(field.clone(), reason);
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

fn validate_absolute_path(field: &FieldPath, path: String) -> Result<String, SpecError> {
    let invalid = |reason: String| SpecError::invalid(field.clone(), reason);
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

fn validate_args(field: &FieldPath, args: Vec<String>) -> Result<Vec<String>, SpecError> {
    field::check_count(field, args.len(), MAX_ARGS, "arguments")?;
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES {
            return Err(SpecError::invalid(
                field.index(i),
                format!(
                    "is {} bytes long; at most {MAX_ARG_BYTES} are allowed",
                    arg.len()
                ),
            ));
        }
        if arg.contains('\0') {
            return Err(SpecError::invalid(
                field.index(i),
                "must not contain a NUL character",
            ));
        }
    }
    Ok(args)
}

fn validate_env(env: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, SpecError> {
    field::check_count(&FieldPath::new("env"), env.len(), MAX_ENV, "variables")?;
    for (name, value) in &env {
        let field = || FieldPath::new("env").key(name);
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

/// The ports given, then those of `expose` not among them: an exposed port is one the
/// workload listens on, and two instances that listen on one port cannot share a node. The
/// bound counts both, so the spec as stored (which lists them all) parses back.
fn validate_ports(ports: &[i64], expose: &[Expose]) -> Result<Vec<u16>, SpecError> {
    let at = FieldPath::new("ports");
    field::check_count(&at, ports.len(), MAX_PORTS, "ports")?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ports.len() + expose.len());
    for (i, &p) in ports.iter().enumerate() {
        let field = at.index(i);
        let port = port(&field, p)?;
        if !seen.insert(port) {
            return Err(SpecError::invalid(field, format!("{port} is listed twice")));
        }
        out.push(port);
    }
    out.extend(
        expose
            .iter()
            .filter_map(|e| seen.insert(e.port).then_some(e.port)),
    );
    if out.len() > MAX_PORTS {
        return Err(SpecError::invalid(
            at,
            format!(
                "{} ports with those of [[expose]]; at most {MAX_PORTS} are allowed",
                out.len()
            ),
        ));
    }
    Ok(out)
}

fn validate_expose(raw: Vec<RawExpose>) -> Result<Vec<Expose>, SpecError> {
    let list = FieldPath::new("expose");
    field::check_count(&list, raw.len(), MAX_EXPOSE, "routes")?;
    let mut out: Vec<Expose> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = list.index(i);
        let port = port(&at.field("port"), r.port)?;
        let host = r
            .host
            .map(|h| field::check_host(&at.field("host"), &h))
            .transpose()?;
        let path_prefix = r
            .path_prefix
            .map(|p| field::check_path_prefix(&at.field("path_prefix"), &p).map(|()| p))
            .transpose()?;
        if host.is_none() && path_prefix.is_none() {
            return Err(SpecError::invalid(
                at,
                "give host, path_prefix or both: what the route matches",
            ));
        }
        if let Some(j) = out
            .iter()
            .position(|e| e.host == host && e.path_prefix == path_prefix)
        {
            return Err(SpecError::invalid(
                at,
                format!("matches the same host and path_prefix as expose[{j}]"),
            ));
        }
        let weight = opt_int(&at.field("weight"), r.weight, &ROUTE_WEIGHT)?
            .map_or(DEFAULT_ROUTE_WEIGHT, |v| {
                u16::try_from(v).unwrap_or(u16::MAX)
            });
        let timeout_secs = opt_int(
            &at.field("timeout_secs"),
            r.timeout_secs,
            &ROUTE_TIMEOUT_SECS,
        )?
        .map_or(DEFAULT_ROUTE_TIMEOUT_SECS, |v| {
            u32::try_from(v).unwrap_or(u32::MAX)
        });
        let retries = opt_int(&at.field("retries"), r.retries, &ROUTE_RETRIES)?
            .map_or(DEFAULT_ROUTE_RETRIES, |v| {
                u8::try_from(v).unwrap_or(u8::MAX)
            });
        let stale_if_offline_secs = opt_int(
            &at.field("stale_if_offline_secs"),
            r.stale_if_offline_secs,
            &STALE_IF_OFFLINE_SECS,
        )?
        .map_or(DEFAULT_STALE_IF_OFFLINE_SECS, |v| {
            u32::try_from(v).unwrap_or(u32::MAX)
        });
        let balance = match r.balance {
            None => Balance::default(),
            Some(b) => Balance::parse(&b).ok_or_else(|| {
                SpecError::invalid(
                    at.field("balance"),
                    format!(
                        "{} is not a balance; use peak-ewma, round-robin or least-requests",
                        shown(&b)
                    ),
                )
            })?,
        };
        out.push(Expose {
            port,
            host,
            path_prefix,
            weight,
            timeout_secs,
            retries,
            cache: r.cache.unwrap_or(true),
            stale_if_offline_secs,
            balance,
        });
    }
    Ok(out)
}

fn validate_scale_to_zero(
    raw: &RawScaleToZero,
    expose: &[Expose],
) -> Result<ScaleToZero, SpecError> {
    let idle_secs = int_in(
        &FieldPath::new("scale_to_zero.idle_secs"),
        raw.idle_secs,
        &SCALE_TO_ZERO_IDLE_SECS,
    )?;
    if expose.is_empty() {
        return Err(SpecError::invalid(
            "scale_to_zero",
            "needs at least one [[expose]]: only a request through the node's proxy starts a \
             workload scaled to zero",
        ));
    }
    Ok(ScaleToZero {
        // Within SCALE_TO_ZERO_IDLE_SECS, so it fits.
        idle_secs: u32::try_from(idle_secs).unwrap_or(u32::MAX),
    })
}

fn port(field: &FieldPath, v: i64) -> Result<u16, SpecError> {
    u16::try_from(int_in(field, v, &(1..=65535))?)
        .map_err(|_| SpecError::invalid(field.clone(), format!("{v} out of range 1..=65535")))
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
            let n = int_in(&FieldPath::new("replicas"), n, &REPLICAS)?;
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

/// `max_disconnect_secs` and `reconcile`: the second only with the first (alone it would
/// decide nothing), and neither with per-node placement, whose instance belongs to its node.
fn validate_replacement(
    max_disconnect_secs: Option<i64>,
    reconcile: Option<String>,
    placement: Placement,
) -> Result<Option<Replacement>, SpecError> {
    let reconcile = match reconcile {
        None => None,
        Some(r) => Some(Reconcile::parse(&r).ok_or_else(|| {
            SpecError::invalid(
                "reconcile",
                format!(
                    "{} is not a rule; use \"keep_original\" or \"keep_replacement\"",
                    shown(&r)
                ),
            )
        })?),
    };
    let Some(secs) = max_disconnect_secs else {
        if reconcile.is_some() {
            return Err(SpecError::invalid(
                "reconcile",
                "only with max_disconnect_secs: without it nothing is ever replaced",
            ));
        }
        return Ok(None);
    };
    let secs = int_in(
        &FieldPath::new("max_disconnect_secs"),
        secs,
        &MAX_DISCONNECT_SECS,
    )?;
    if placement == Placement::PerNode {
        return Err(SpecError::invalid(
            "max_disconnect_secs",
            "not with placement = \"per-node\": a per-node instance belongs to its node and \
             is never placed elsewhere",
        ));
    }
    Ok(Some(Replacement {
        // Within MAX_DISCONNECT_SECS, so it fits.
        max_disconnect_secs: u32::try_from(secs).unwrap_or(u32::MAX),
        reconcile: reconcile.unwrap_or_default(),
    }))
}

fn validate_resources(raw: &RawResources) -> Result<Resources, SpecError> {
    let cpu_millis = int_in(
        &FieldPath::new("resources.cpu_millis"),
        raw.cpu_millis,
        &CPU_MILLIS,
    )?;
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
        &FieldPath::new("resources.disk_bytes"),
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
        let field = FieldPath::new("requirements.arch").index(i);
        let parsed = Arch::parse(a).ok_or_else(|| {
            SpecError::invalid(
                field.clone(),
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
    field::check_count(
        &FieldPath::new("requirements.devices"),
        raw.devices.len(),
        MAX_DEVICES,
        "devices",
    )?;
    let mut devices: Vec<DeviceRequirement> = Vec::with_capacity(raw.devices.len());
    for (i, d) in raw.devices.into_iter().enumerate() {
        let field = FieldPath::new("requirements.devices").index(i);
        let device = validate_device(&field, d)?;
        if devices.contains(&device) {
            return Err(SpecError::invalid(
                field.clone(),
                format!("{device} is listed twice"),
            ));
        }
        devices.push(device);
    }
    let near = raw.near.map(|t| validate_near(t.0)).transpose()?;
    let follow_near = raw.follow_near.unwrap_or(false);
    if follow_near && near.is_none() {
        return Err(SpecError::invalid(
            "requirements.follow_near",
            "only with requirements.near: without a radius there is nothing to follow",
        ));
    }
    Ok(Requirements {
        arch,
        labels,
        devices,
        near,
        follow_near,
    })
}

fn validate_device(field: &FieldPath, d: String) -> Result<DeviceRequirement, SpecError> {
    if let Some(kind) = DeviceKind::parse(&d) {
        return Ok(DeviceRequirement::Kind(kind));
    }
    let invalid = |reason: String| SpecError::invalid(field.clone(), reason);
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
    let at = FieldPath::new("requirements.near");
    let lat = field::check_latitude(&at.field("lat"), raw.lat)?;
    let lon = field::check_longitude(&at.field("lon"), raw.lon)?;
    let radius = at.field("radius_km");
    let r = field::check_finite(&radius, raw.radius_km)?;
    if r <= 0.0 || r > MAX_RADIUS_KM {
        return Err(SpecError::invalid(
            radius,
            format!("{r} out of range; must be above 0 and at most {MAX_RADIUS_KM}"),
        ));
    }
    Ok(Near {
        lat,
        lon,
        radius_km: r,
    })
}

fn validate_labels(
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    field::check_labels(&FieldPath::new("requirements.labels"), labels.iter())?;
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
            let port = port(&FieldPath::new("health.http.port"), http.port)?;
            let path = http.path.unwrap_or_else(|| "/".to_owned());
            let field = FieldPath::new("health.http.path");
            if !path.starts_with('/') {
                return Err(SpecError::invalid(
                    field.clone(),
                    format!("{} must start with '/'", shown(&path)),
                ));
            }
            if path.len() > MAX_HTTP_PATH_BYTES {
                return Err(SpecError::invalid(
                    field.clone(),
                    format!(
                        "is {} bytes long; at most {MAX_HTTP_PATH_BYTES} are allowed",
                        path.len()
                    ),
                ));
            }
            if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(SpecError::invalid(
                    field.clone(),
                    format!("{} contains {c:?}; percent-encode it", shown(&path)),
                ));
            }
            Probe::Http { port, path }
        }
        (None, Some(Table(tcp)), None) => Probe::Tcp {
            port: port(&FieldPath::new("health.tcp.port"), tcp.port)?,
        },
        (None, None, Some(Table(exec))) => {
            let command = if exec.command.starts_with('/') {
                validate_absolute_path(&FieldPath::new("health.exec.command"), exec.command)?
            } else {
                validate_file_name(&FieldPath::new("health.exec.command"), exec.command)?
            };
            let args = validate_args(&FieldPath::new("health.exec.args"), exec.args)?;
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
            Some(v) => Ok(
                u32::try_from(int_in(&FieldPath::new(field), v, &HEALTH_SECS)?).unwrap_or(u32::MAX),
            ),
        }
    };
    let threshold = |field: &str, v: Option<i64>, default: u32| -> Result<u32, SpecError> {
        match v {
            None => Ok(default),
            Some(v) => Ok(
                u32::try_from(int_in(&FieldPath::new(field), v, &HEALTH_THRESHOLD)?)
                    .unwrap_or(u32::MAX),
            ),
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

/// An optional value within `range`. The ranges callers give fit the types they convert to.
fn opt_int(
    field: &FieldPath,
    v: Option<i64>,
    range: &RangeInclusive<i64>,
) -> Result<Option<i64>, SpecError> {
    v.map(|v| int_in(field, v, range)).transpose()
}

fn int_in(field: &FieldPath, v: i64, range: &RangeInclusive<i64>) -> Result<i64, SpecError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(SpecError::invalid(
            field.clone(),
            format!("{v} out of range {}..={}", range.start(), range.end()),
        ))
    }
}
