//! The files as written: serde structs that mirror them, before any value is checked.
//!
//! Unknown fields are an error at every level, so a typo never silently falls back to a
//! default. Numbers are read wide (`i64`) so that a negative or huge value gets a validation
//! error naming the field rather than a type error.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Only the version, ignoring everything else: checked before the strict parse, so that a file
/// written for a newer format says "unsupported version" rather than "unknown field".
#[derive(Deserialize)]
pub(super) struct VersionProbe {
    pub version: Option<i64>,
}

/// The config file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub version: i64,
    pub name: Option<String>,
    pub data_dir: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub location: Option<RawConfigLocation>,
    pub status_interval_secs: Option<i64>,
    /// `"fast"`, `"metered"` or a table: checked by hand, so that each wrong shape gets an
    /// error naming the field.
    pub liveness: Option<toml::Value>,
    pub orchestrator: Option<RawOrchestrator>,
    pub join: Option<RawJoin>,
    /// Where a join file may be, in order of preference.
    pub join_file: Option<Vec<String>>,
    /// `IP:port` of the local status endpoint.
    pub status_listen: Option<String>,
    /// The path of the local control socket (`edge-node ctl`).
    pub ctl_socket: Option<String>,
    /// A group whose members may use the control socket too.
    pub ctl_group: Option<String>,
    pub reserve: Option<RawReserve>,
    pub proxy: Option<RawProxy>,
    pub outbox: Option<RawOutbox>,
    pub containers: Option<RawContainers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainers {
    pub runtime: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub max_bytes: Option<i64>,
    pub uplink_bytes_per_sec: Option<i64>,
    pub metrics_window_secs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReserve {
    pub memory_bytes: Option<i64>,
    pub disk_bytes: Option<i64>,
}

/// The join file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJoinFile {
    #[allow(dead_code)] // checked by the version probe
    pub version: Option<i64>,
    pub orchestrator: String,
    pub token: String,
    pub ca_hash: String,
    pub name: Option<String>,
    pub location: Option<RawLocation>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// A join file's `location`: a fixed point only (the receiver, if any, is the config file's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLocation {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
}

/// The config file's `location`: a fixed point, or `source = "gpsd"` with an optional
/// fallback point. Which fields go with which source is checked in validation, so that each
/// mistake names its field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfigLocation {
    /// `"fixed"` (the default) or `"gpsd"`.
    pub source: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub alt_m: Option<f64>,
    /// `HOST:PORT` of gpsd.
    pub gpsd: Option<String>,
    pub report_distance_m: Option<i64>,
    pub report_min_secs: Option<i64>,
    pub report_max_secs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrchestrator {
    /// Optional only because a join file may provide it.
    pub address: Option<String>,
    /// The local IP to dial from; for hosts with several uplinks, or several nodes on one host.
    pub local_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJoin {
    pub token: String,
    pub ca_hash: String,
}

/// The `[proxy]` table: the node's caching reverse proxy. No table, no proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// `IP:port` to serve on.
    pub listen: String,
    /// `IP:port` to serve other nodes on, over mutual TLS.
    pub peer_listen: Option<String>,
    pub stale_if_offline_secs: Option<i64>,
    pub max_connections: Option<i64>,
    pub header_timeout_secs: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub route_samples_interval_secs: Option<i64>,
    pub prewarm: Option<bool>,
    pub prewarm_threshold_percent: Option<i64>,
    pub cache: Option<RawProxyCache>,
    pub upstream: Option<Vec<RawUpstream>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyCache {
    pub memory_bytes: Option<i64>,
    pub disk_bytes: Option<i64>,
    pub max_object_bytes: Option<i64>,
}

/// One `[[proxy.upstream]]`: a static origin and what it serves.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub origin: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub timeout_secs: Option<i64>,
    pub retries: Option<i64>,
    pub cache: Option<bool>,
    pub stale_if_offline_secs: Option<i64>,
    pub balance: Option<String>,
}
