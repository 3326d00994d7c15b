//! From the file as written to the file as the node uses it: one check per part, each naming
//! its field. Names, labels and coordinates follow the fleet-wide rules of
//! [`edge_proto::field`], so what passes here reaches the orchestrator whole.

use super::error::{ConfigError, invalid};
use super::join::validate_join;
use super::liveness::validate_liveness;
use super::location::validate_location_config;
use super::proxy::validate_proxy;
use super::raw::{RawConfig, RawContainers, RawLocation, RawOutbox, RawReserve};
use super::{
    ConfigFile, ContainersConfig, CtlSettings, DEFAULT_STATUS_INTERVAL, GeoPoint,
    METERED_STATUS_INTERVAL, OrchestratorAddress, OutboxSettings, SUPPORTED_CONFIG_VERSIONS,
};
use crate::admission::Reserve;
use edge_proto::field::{self, FieldPath, shown};
use edge_proto::liveness::Liveness;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// The most places `join_file` may list.
const MAX_JOIN_FILE_PATHS: usize = 8;

/// Bounds of `status_interval_secs`.
const STATUS_INTERVAL_SECS: RangeInclusive<i64> = 1..=3600;

impl RawConfig {
    pub(super) fn validate(self) -> Result<ConfigFile, ConfigError> {
        check_version(self.version)?;
        let name = self.name.map(validate_name).transpose()?;
        let data_dir = validate_data_dir(self.data_dir)?;
        let labels = self.labels.map(validate_labels).transpose()?;
        let location = self.location.map(validate_location_config).transpose()?;
        let liveness = validate_liveness(self.liveness)?;
        let status_interval = validate_status_interval(self.status_interval_secs, liveness)?;
        let (address, local_address) = self
            .orchestrator
            .map_or((None, None), |o| (o.address, o.local_address));
        let orchestrator = address
            .map(|a| {
                OrchestratorAddress::parse(&a)
                    .map_err(|reason| invalid("orchestrator.address", reason))
            })
            .transpose()?;
        let local_address = local_address
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| invalid("orchestrator.local_address", "expected an IP address"))
            })
            .transpose()?;
        let join = self
            .join
            .map(|j| validate_join(j, &FieldPath::new("join")))
            .transpose()?;
        let join_files = validate_join_files(self.join_file.unwrap_or_default())?;
        let status_listen = self
            .status_listen
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "status_listen",
                        format!("{} is not IP:port, e.g. 127.0.0.1:7450", shown(&a)),
                    )
                })
            })
            .transpose()?;
        let ctl = validate_ctl(self.ctl_socket, self.ctl_group, &data_dir)?;
        let reserve = validate_reserve(self.reserve)?;
        let outbox = validate_outbox(self.outbox)?;
        let containers = validate_containers(self.containers)?;
        let proxy = self
            .proxy
            .map(|p| validate_proxy(p, status_listen, local_address))
            .transpose()?;
        Ok(ConfigFile {
            name,
            data_dir,
            labels,
            location,
            status_interval,
            liveness,
            orchestrator,
            local_address,
            join,
            join_files,
            status_listen,
            ctl,
            reserve,
            outbox,
            proxy,
            containers,
        })
    }
}

/// The longest path a Unix socket address holds (`sun_path`, less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// The longest group name `ctl_group` takes.
const MAX_GROUP_LEN: usize = 32;

fn validate_ctl(
    socket: Option<String>,
    group: Option<String>,
    data_dir: &std::path::Path,
) -> Result<CtlSettings, ConfigError> {
    let socket = match socket {
        None => data_dir.join(CtlSettings::SOCKET_NAME),
        Some(p) => {
            if !p.starts_with('/') {
                return Err(invalid("ctl_socket", "must be an absolute path"));
            }
            if p.contains('\0') {
                return Err(invalid("ctl_socket", "must not contain a NUL character"));
            }
            if p.len() > MAX_SOCKET_PATH {
                return Err(invalid(
                    "ctl_socket",
                    format!(
                        "is {} bytes; a socket path is at most {MAX_SOCKET_PATH}",
                        p.len()
                    ),
                ));
            }
            PathBuf::from(p)
        }
    };
    if let Some(g) = &group {
        let good = !g.is_empty()
            && g.len() <= MAX_GROUP_LEN
            && g.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            && !g.starts_with('-');
        if !good {
            return Err(invalid(
                "ctl_group",
                format!(
                    "{} is not a group name (1 to {MAX_GROUP_LEN} of a-z, 0-9, _, - and .)",
                    shown(g)
                ),
            ));
        }
    }
    Ok(CtlSettings { socket, group })
}

pub(super) fn check_version(version: i64) -> Result<(), ConfigError> {
    if SUPPORTED_CONFIG_VERSIONS.contains(&version) {
        return Ok(());
    }
    let supported: Vec<String> = SUPPORTED_CONFIG_VERSIONS
        .iter()
        .map(ToString::to_string)
        .collect();
    Err(invalid(
        "version",
        format!(
            "{version} is not supported; this edge-node reads version {}",
            supported.join(", ")
        ),
    ))
}

pub(super) fn validate_name(name: String) -> Result<String, ConfigError> {
    field::check_name(&FieldPath::new("name"), &name)?;
    Ok(name)
}

pub(super) fn validate_labels(
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    field::check_labels(&FieldPath::new("labels"), labels.iter())?;
    Ok(labels)
}

/// A join file's `location`: a fixed point.
pub(super) fn validate_location(raw: RawLocation) -> Result<GeoPoint, ConfigError> {
    let at = FieldPath::new("location");
    let point = validate_point(Some(raw.lat), Some(raw.lon), raw.alt_m, &at)?;
    // Invariant: lat and lon are both given, so there is a point.
    point.ok_or_else(|| invalid(at.field("lat"), "is not set"))
}

/// `lat`, `lon` and `alt_m` under `at`: a point, no point (none of them), or the error of
/// the first that is wrong or missing (lat and lon go together, alt_m only with them).
pub(super) fn validate_point(
    lat: Option<f64>,
    lon: Option<f64>,
    alt_m: Option<f64>,
    at: &FieldPath,
) -> Result<Option<GeoPoint>, ConfigError> {
    let (lat, lon) = match (lat, lon) {
        (Some(lat), Some(lon)) => (lat, lon),
        (None, None) if alt_m.is_none() => return Ok(None),
        (None, None) => return Err(invalid(at.field("alt_m"), "is set without lat and lon")),
        (Some(_), None) => return Err(invalid(at.field("lon"), "is not set; lat needs lon")),
        (None, Some(_)) => return Err(invalid(at.field("lat"), "is not set; lon needs lat")),
    };
    let lat = field::check_latitude(&at.field("lat"), lat)?;
    let lon = field::check_longitude(&at.field("lon"), lon)?;
    let alt_m = alt_m
        .map(|alt| field::check_finite(&at.field("alt_m"), alt))
        .transpose()?;
    Ok(Some(GeoPoint { lat, lon, alt_m }))
}

fn validate_data_dir(dir: String) -> Result<PathBuf, ConfigError> {
    if dir.is_empty() {
        return Err(invalid("data_dir", "must not be empty"));
    }
    // TOML strings may hold `\u0000`; no file system accepts it.
    if dir.contains('\0') {
        return Err(invalid("data_dir", "must not contain a NUL character"));
    }
    Ok(PathBuf::from(dir))
}

/// `status_interval_secs`, or its default: [`DEFAULT_STATUS_INTERVAL`], or
/// [`METERED_STATUS_INTERVAL`] for a node that keeps alive less often than that default (a
/// node that saves bytes on keep-alives saves them on status reports too).
fn validate_status_interval(
    secs: Option<i64>,
    liveness: Liveness,
) -> Result<Duration, ConfigError> {
    let Some(secs) = secs else {
        return Ok(if liveness.keep_alive > DEFAULT_STATUS_INTERVAL {
            METERED_STATUS_INTERVAL
        } else {
            DEFAULT_STATUS_INTERVAL
        });
    };
    if !STATUS_INTERVAL_SECS.contains(&secs) {
        return Err(invalid(
            "status_interval_secs",
            format!(
                "{secs} is out of range {}..={}",
                STATUS_INTERVAL_SECS.start(),
                STATUS_INTERVAL_SECS.end()
            ),
        ));
    }
    // In range 1..=3600, so non-negative.
    Ok(Duration::from_secs(secs.unsigned_abs()))
}

fn validate_join_files(paths: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    let at = FieldPath::new("join_file");
    field::check_count(&at, paths.len(), MAX_JOIN_FILE_PATHS, "paths")?;
    paths
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if !p.starts_with('/') {
                return Err(invalid(at.index(i), "must be an absolute path"));
            }
            if p.contains('\0') {
                return Err(invalid(at.index(i), "must not contain a NUL character"));
            }
            Ok(PathBuf::from(p))
        })
        .collect()
}

/// The longest `containers.runtime` path.
const MAX_RUNTIME_PATH: usize = 4096;

fn validate_containers(raw: Option<RawContainers>) -> Result<ContainersConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ContainersConfig::default());
    };
    let runtime = match raw.runtime {
        None => None,
        Some(p) => {
            let field = "containers.runtime";
            if !p.starts_with('/') {
                return Err(invalid(
                    field,
                    format!(
                        "{} must be an absolute path, e.g. /usr/sbin/runc",
                        shown(&p)
                    ),
                ));
            }
            if p.contains('\0') {
                return Err(invalid(field, "must not contain a NUL character"));
            }
            if p.len() > MAX_RUNTIME_PATH {
                return Err(invalid(
                    field,
                    format!(
                        "is {} bytes; at most {MAX_RUNTIME_PATH} are allowed",
                        p.len()
                    ),
                ));
            }
            Some(PathBuf::from(p))
        }
    };
    Ok(ContainersConfig { runtime })
}

fn validate_outbox(raw: Option<RawOutbox>) -> Result<OutboxSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(OutboxSettings::default());
    };
    let in_range = |field: &str, v: i64, range: std::ops::RangeInclusive<u64>| {
        u64::try_from(v)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                )
            })
    };
    Ok(OutboxSettings {
        max_bytes: match raw.max_bytes {
            None => OutboxSettings::default().max_bytes,
            Some(v) => in_range("outbox.max_bytes", v, OutboxSettings::MAX_BYTES)?,
        },
        uplink_bytes_per_sec: raw
            .uplink_bytes_per_sec
            .map(|v| in_range("outbox.uplink_bytes_per_sec", v, OutboxSettings::UPLINK))
            .transpose()?,
        metrics_window_secs: match raw.metrics_window_secs {
            None => OutboxSettings::default().metrics_window_secs,
            Some(v) => in_range(
                "outbox.metrics_window_secs",
                v,
                OutboxSettings::METRICS_WINDOW,
            )?,
        },
    })
}

fn validate_reserve(raw: Option<RawReserve>) -> Result<Reserve, ConfigError> {
    let default = Reserve::default();
    let Some(raw) = raw else {
        return Ok(default);
    };
    let bytes = |field: &str, v: Option<i64>, default: u64| match v {
        None => Ok(default),
        Some(v) => u64::try_from(v)
            .map_err(|_| invalid(field, format!("{v} is negative; expected a size in bytes"))),
    };
    Ok(Reserve {
        memory_bytes: bytes(
            "reserve.memory_bytes",
            raw.memory_bytes,
            default.memory_bytes,
        )?,
        disk_bytes: bytes("reserve.disk_bytes", raw.disk_bytes, default.disk_bytes)?,
    })
}
