//! The node's configuration (`edge-node run --config FILE`) and join file: parsing and
//! validation, from text or bytes. Reading the files from disk is the daemon's.
//!
//! A config file is TOML, at most [`MAX_CONFIG_BYTES`]. It is read into raw serde structs that
//! mirror the file (unknown fields are an error, so a typo never silently falls back to a
//! default), then validated into [`Config`], whose values are all known to be good: a
//! validated [`Config`] converts to the wire types ([`Config::labels_wire`],
//! [`Config::location_wire`]) without truncation. Every validation error names the field path,
//! e.g. `location.lat` or `labels."bad key"` (see [`edge_proto::field`]), and never echoes the
//! join token's secret.
//!
//! A packaged node's file leaves out what differs per device (name, orchestrator, join token,
//! location, labels): the join file the operator drops on the boot partition supplies those.
//! [`ConfigFile`] is the file as validated, possibly incomplete; [`ConfigFile::complete`] fills
//! its gaps from a [`JoinFile`] and gives the [`Config`] the daemon runs with. Where both set a
//! value, the config file wins: it is the one an operator edits on purpose.
//!
//! One concern a file: `raw` (the serde structs), `validate` (one check per field), `join`
//! (the join settings and the join file), `address` (the orchestrator's `host:port`, checked
//! for shape only and resolved by whoever dials it), `proxy` (the `[proxy]` table: the caching
//! proxy's listener, limits, cache sizes and static upstreams; none without the table),
//! `location` (a fixed point or a gpsd receiver, and when to report it), `error`. Nothing
//! here touches a file, the network or the clock.

mod address;
mod error;
mod join;
mod liveness;
mod location;
mod proxy;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

pub use address::{Host, OrchestratorAddress};
pub use edge_proto::field::MAX_LABELS;
pub use edge_proto::field::OriginUrl;
pub use error::ConfigError;
pub use join::{CaHash, JoinFile, JoinSettings, JoinToken};
pub use location::{DEFAULT_GPSD_ADDRESS, LocationConfig, LocationSource, MAX_GPSD_ADDRESS_BYTES};
pub use proxy::{
    DEFAULT_CACHE_DISK_BYTES, DEFAULT_CACHE_MAX_OBJECT_BYTES, DEFAULT_CACHE_MEMORY_BYTES,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, MAX_UPSTREAMS,
    ProxyCache, ProxyConfig, Upstream, advertised_peer_addr,
};

use crate::admission::Reserve;
pub use edge_proto::liveness::Liveness;
use edge_proto::{Capabilities, Label, List, Location, MAX_NAME_LEN, Text, text};
use raw::{RawConfig, VersionProbe};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use validate::check_version;

/// The largest config file we parse. Real files are well under 1 KiB; the limit keeps a wrong
/// path (a log, a disk image) from being read into memory on a 512 MB node.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The largest join file we parse. A real one is a few hundred bytes.
pub const MAX_JOIN_FILE_BYTES: usize = 16 * 1024;

/// Config file format versions this build understands.
pub const SUPPORTED_CONFIG_VERSIONS: &[i64] = &[1];

/// The status interval when the file does not set `status_interval_secs`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The status interval when the file does not set `status_interval_secs` and `liveness`
/// keeps alive less often than [`DEFAULT_STATUS_INTERVAL`] (as `"metered"` does).
pub const METERED_STATUS_INTERVAL: Duration = Duration::from_secs(300);

/// A validated node configuration. Built only by [`Config::from_toml`] or
/// [`ConfigFile::complete`], so every value in it has passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    name: String,
    data_dir: PathBuf,
    labels: BTreeMap<String, String>,
    location: Option<LocationConfig>,
    status_interval: Duration,
    liveness: Liveness,
    orchestrator: OrchestratorAddress,
    local_address: Option<IpAddr>,
    join: Option<JoinSettings>,
    status_listen: Option<SocketAddr>,
    ctl: CtlSettings,
    reserve: Reserve,
    outbox: OutboxSettings,
    proxy: Option<ProxyConfig>,
    containers: ContainersConfig,
}

/// The `[containers]` table: how the node runs `driver = "oci"` workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainersConfig {
    /// `runtime`: the OCI runtime's executable (an absolute path). Unset: `crun` or `runc`,
    /// whichever `PATH` has.
    pub runtime: Option<PathBuf>,
}

/// The `[outbox]` table: how much of the disk what waits for the orchestrator may take, and
/// how fast it may drain over the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// `max_bytes`: when full, metrics are thinned, then status coalesced, then the oldest
    /// events dropped (and counted). Default 4 MiB; each board profile sets its own.
    pub max_bytes: u64,
    /// `uplink_bytes_per_sec`: the drain's pace on a metered link; unset, as fast as the
    /// orchestrator acknowledges.
    pub uplink_bytes_per_sec: Option<u64>,
    /// `metrics_window_secs`: the window each summary of the node's load covers (the
    /// outbox's metrics class). Default 300.
    pub metrics_window_secs: u64,
}

impl OutboxSettings {
    /// The bounds of `metrics_window_secs`: five seconds to a day.
    pub const METRICS_WINDOW: std::ops::RangeInclusive<u64> = 5..=86_400;
    /// The bounds of `max_bytes`: 64 KiB to 1 GiB.
    pub const MAX_BYTES: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);
    /// The bounds of `uplink_bytes_per_sec`: 1 KiB/s to 1 GiB/s.
    pub const UPLINK: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 20,
            uplink_bytes_per_sec: None,
            metrics_window_secs: 300,
        }
    }
}

/// Where `edge-node ctl` reaches the running node, and who may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlSettings {
    /// `ctl_socket`, by default `DATA_DIR/ctl.sock`.
    pub socket: PathBuf,
    /// `ctl_group`: its members may use the socket too (mode 0660); without it, 0600.
    pub group: Option<String>,
}

impl CtlSettings {
    /// The socket's name in the data dir unless `ctl_socket` says otherwise.
    pub const SOCKET_NAME: &str = "ctl.sock";
}

/// A validated config file that may lack what a join file provides. Built only by
/// [`ConfigFile::from_toml`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    name: Option<String>,
    data_dir: PathBuf,
    labels: Option<BTreeMap<String, String>>,
    location: Option<LocationConfig>,
    status_interval: Duration,
    liveness: Liveness,
    orchestrator: Option<OrchestratorAddress>,
    local_address: Option<IpAddr>,
    join: Option<JoinSettings>,
    join_files: Vec<PathBuf>,
    status_listen: Option<SocketAddr>,
    ctl: CtlSettings,
    reserve: Reserve,
    outbox: OutboxSettings,
    proxy: Option<ProxyConfig>,
    containers: ContainersConfig,
}

/// Where the node is, in WGS84 degrees and metres above sea level. Always finite and on the
/// globe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
}

impl Config {
    /// Parses and validates a complete config from TOML text: one that names the node and the
    /// orchestrator itself.
    pub fn from_toml(contents: &str) -> Result<Self, ConfigError> {
        ConfigFile::from_toml(contents)?.complete(None)
    }

    /// The node's name, unique in the fleet: 1 to 63 of `[a-z0-9-]`, not starting or ending
    /// with `-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as the wire carries it.
    pub fn name_wire(&self) -> Text<MAX_NAME_LEN> {
        // Validation keeps the name within the wire's bound, so nothing is cut.
        text(&self.name)
    }

    /// Where the node keeps its identity and state. Not checked for existence: the daemon
    /// creates it.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The operator's labels, sorted by key.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The fixed location, or a gpsd source's fallback: where the node says it is before a
    /// receiver knows better. `None`: no location, or a receiver with no fallback.
    pub fn location(&self) -> Option<GeoPoint> {
        self.location.as_ref().and_then(LocationConfig::point)
    }

    /// The whole `location`: its source (fixed, or gpsd with a fallback) and when to report
    /// it. A gpsd source without a fallback of its own has the join file's point, if any;
    /// a join file's point alone is a fixed location with the default report policy.
    pub fn location_config(&self) -> Option<&LocationConfig> {
        self.location.as_ref()
    }

    /// How often the node sends its live load.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// How often the node keeps its link alive and how soon a silent one is dead
    /// (`liveness`; [`Liveness::FAST`] by default).
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    pub fn orchestrator(&self) -> &OrchestratorAddress {
        &self.orchestrator
    }

    /// The local IP to dial the orchestrator from, if the file names one.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.local_address
    }

    /// The join settings, if the file has them. Needed only before the node has an identity.
    pub fn join(&self) -> Option<&JoinSettings> {
        self.join.as_ref()
    }

    /// The local status endpoint's address, if any.
    pub fn status_listen(&self) -> Option<SocketAddr> {
        self.status_listen
    }

    /// Where `edge-node ctl` reaches the node.
    pub fn ctl(&self) -> &CtlSettings {
        &self.ctl
    }

    /// What the node keeps for the system and itself when it admits workloads.
    pub fn reserve(&self) -> Reserve {
        self.reserve
    }

    /// The outbox's disk budget and uplink pace.
    pub fn outbox(&self) -> OutboxSettings {
        self.outbox
    }

    /// How containers run here.
    pub fn containers(&self) -> &ContainersConfig {
        &self.containers
    }

    /// The caching proxy's settings; `None` (no `[proxy]` table): no proxy runs.
    pub fn proxy(&self) -> Option<&ProxyConfig> {
        self.proxy.as_ref()
    }

    /// The labels as the wire carries them, sorted by key.
    pub fn labels_wire(&self) -> List<Label, { Capabilities::MAX_LABELS }> {
        let mut out = List::new();
        for (key, value) in &self.labels {
            // Validation keeps the count and every key and value within the wire's bounds,
            // so neither the push nor `text` drops anything; were that ever broken, we'd send
            // fewer labels rather than fail.
            let _ = out.push(Label {
                key: text(key),
                value: text(value),
            });
        }
        out
    }

    /// The location as the wire carries it.
    pub fn location_wire(&self) -> Option<Location> {
        self.location().map(|p| Location {
            lat: p.lat,
            lon: p.lon,
            alt_m: p.alt_m,
        })
    }
}

impl ConfigFile {
    /// Parses and validates a config file from TOML text. Text over [`MAX_CONFIG_BYTES`] is
    /// refused before parsing.
    pub fn from_toml(contents: &str) -> Result<Self, ConfigError> {
        if contents.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                max_bytes: MAX_CONFIG_BYTES,
            });
        }
        // Check the version before the strict parse, so that a file written for a newer format
        // says "unsupported version" rather than "unknown field".
        if let Ok(VersionProbe {
            version: Some(version),
        }) = toml::from_str::<VersionProbe>(contents)
        {
            check_version(version)?;
        }
        let raw: RawConfig = toml::from_str(contents)?;
        raw.validate()
    }

    /// Where the node keeps its identity and state.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where to look for a join file, in order; empty when the file does not use one.
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    pub fn join_files(&self) -> &[PathBuf] {
        &self.join_files
    }

    /// The local status endpoint's address, if the file sets `status_listen`.
    pub fn status_listen(&self) -> Option<SocketAddr> {
        self.status_listen
    }

    /// Where `edge-node ctl` reaches the node.
    pub fn ctl(&self) -> &CtlSettings {
        &self.ctl
    }

    /// The node's name as far as the file alone knows it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The orchestrator, if the file names it.
    pub fn orchestrator(&self) -> Option<&OrchestratorAddress> {
        self.orchestrator.as_ref()
    }

    /// The labels, if the file sets them.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.labels.as_ref()
    }

    /// The fixed location or a gpsd source's fallback, if the file sets one.
    pub fn location(&self) -> Option<GeoPoint> {
        self.location.as_ref().and_then(LocationConfig::point)
    }

    /// The file's `location`, if it has one.
    pub fn location_config(&self) -> Option<&LocationConfig> {
        self.location.as_ref()
    }

    /// The local IP to dial the orchestrator from, if the file names one.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.local_address
    }

    /// The `[join]` table, if the file has one.
    pub fn join(&self) -> Option<&JoinSettings> {
        self.join.as_ref()
    }

    /// How containers run here.
    pub fn containers(&self) -> &ContainersConfig {
        &self.containers
    }

    /// The caching proxy's settings; `None` (no `[proxy]` table): no proxy runs.
    pub fn proxy(&self) -> Option<&ProxyConfig> {
        self.proxy.as_ref()
    }

    /// The outbox's disk budget and uplink pace.
    pub fn outbox(&self) -> OutboxSettings {
        self.outbox
    }

    /// The config the daemon runs with: this file, its gaps filled from `join` (the join file,
    /// if any). Fails naming the first value neither provides.
    pub fn complete(&self, join: Option<&JoinFile>) -> Result<Config, ConfigError> {
        let missing = |field: &str| {
            error::invalid(
                field,
                if self.join_files.is_empty() {
                    "is not set"
                } else {
                    "is not set here, and no join file provided it"
                },
            )
        };
        let name = self
            .name
            .clone()
            .or_else(|| join.and_then(|j| j.name.clone()))
            .ok_or_else(|| missing("name"))?;
        let orchestrator = self
            .orchestrator
            .clone()
            .or_else(|| join.map(|j| j.orchestrator.clone()))
            .ok_or_else(|| missing("orchestrator.address"))?;
        Ok(Config {
            name,
            data_dir: self.data_dir.clone(),
            labels: self
                .labels
                .clone()
                .or_else(|| join.and_then(|j| j.labels.clone()))
                .unwrap_or_default(),
            location: {
                let joined = join.and_then(|j| j.location);
                match &self.location {
                    Some(location) => Some(location.with_join_point(joined)),
                    None => joined.map(LocationConfig::fixed),
                }
            },
            status_interval: self.status_interval,
            liveness: self.liveness,
            orchestrator,
            local_address: self.local_address,
            join: self.join.clone().or_else(|| join.map(|j| j.join.clone())),
            status_listen: self.status_listen,
            ctl: self.ctl.clone(),
            reserve: self.reserve,
            outbox: self.outbox,
            proxy: self.proxy.clone(),
            containers: self.containers.clone(),
        })
    }
}
