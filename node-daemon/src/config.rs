//! The node's configuration file (`edge-node run --config FILE`): parsing and validation.
//!
//! The file is TOML, at most [`MAX_CONFIG_BYTES`]. It is read into a raw serde struct that
//! mirrors the file (unknown fields are an error, so a typo never silently falls back to a
//! default), then validated into [`Config`], whose values are all known to be good: a validated
//! [`Config`] converts to the wire types ([`Config::labels_wire`], [`Config::location_wire`])
//! without truncation. Every validation error names the field path, e.g. `location.lat` or
//! `labels."bad key"`, and never echoes the join token's secret.
//!
//! A packaged node's file leaves out what differs per device (name, orchestrator, join token,
//! location, labels): the join file the operator drops on the boot partition supplies those.
//! [`ConfigFile`] is the file as validated, possibly incomplete; [`ConfigFile::complete`] fills
//! its gaps from a [`JoinFile`] and gives the [`Config`] the daemon runs with. Where both set a
//! value, the config file wins: it is the one an operator edits on purpose.
//!
//! This module never touches the network: the orchestrator address is checked for shape only
//! and resolved by whoever dials it. It reads the one file it is given and writes nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_proto::{Label, List, Location, Text, text};
use node_core::admission::Reserve;
use serde::Deserialize;

/// The largest config file we parse. Real files are well under 1 KiB; the limit keeps a wrong
/// path (a log, a disk image) from being read into memory on a 512 MB node.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The largest join file we parse. A real one is a few hundred bytes.
pub const MAX_JOIN_FILE_BYTES: usize = 16 * 1024;

/// The most places `join_file` may list.
const MAX_JOIN_FILE_PATHS: usize = 8;

/// Config file format versions this build understands.
pub const SUPPORTED_CONFIG_VERSIONS: &[i64] = &[1];

/// The status interval when the file does not set `status_interval_secs`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds of `status_interval_secs`.
const STATUS_INTERVAL_SECS: std::ops::RangeInclusive<i64> = 1..=3600;

/// The most labels a node may carry: the bound of `Capabilities::labels` on the wire.
pub const MAX_LABELS: usize = 32;

/// The longest node name, label key and label value: the bounds of the wire's `Text<63>`.
const MAX_NAME_LEN: usize = 63;
const MAX_LABEL_KEY_LEN: usize = 63;
const MAX_LABEL_VALUE_BYTES: usize = 63;

/// The longest DNS name (RFC 1035), and of one of its labels.
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// Why the config could not be loaded. Nothing here is worth retrying unchanged: the operator
/// has to fix the file (or its permissions).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read, or is not UTF-8.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`]; refused before parsing.
    #[error("config is larger than {max_bytes} bytes; is this the right file?")]
    TooLarge { max_bytes: usize },
    /// The file is not UTF-8 text (a join file saved as UTF-16 by an editor, or a binary file).
    #[error("not UTF-8 text: {0}")]
    NotText(&'static str),
    /// The file is not valid TOML, or a field is missing, unknown or of the wrong type.
    /// The message carries the line and column.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value outside what the node accepts. `field` is the TOML path, e.g.
    /// `location.lat` or `labels."bad key"`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated node configuration. Built only by [`Config::load`] or [`Config::from_toml`], so
/// every value in it has passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    name: String,
    data_dir: PathBuf,
    labels: BTreeMap<String, String>,
    location: Option<GeoPoint>,
    status_interval: Duration,
    orchestrator: OrchestratorAddress,
    local_address: Option<IpAddr>,
    join: Option<JoinSettings>,
    status_listen: Option<SocketAddr>,
    reserve: Reserve,
}

/// A validated config file that may lack what a join file provides. Built only by
/// [`ConfigFile::load`] or [`ConfigFile::from_toml`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    name: Option<String>,
    data_dir: PathBuf,
    labels: Option<BTreeMap<String, String>>,
    location: Option<GeoPoint>,
    status_interval: Duration,
    orchestrator: Option<OrchestratorAddress>,
    local_address: Option<IpAddr>,
    join: Option<JoinSettings>,
    join_files: Vec<PathBuf>,
    status_listen: Option<SocketAddr>,
    reserve: Reserve,
}

/// The join file an operator writes onto the boot partition (FAT, so editable from any PC):
/// everything a freshly flashed node needs to enroll.
///
/// ```toml
/// orchestrator = "orchestrator.example.net:7443"
/// token = "abcdef.0123456789abcdef0123456789abcdef"
/// ca_hash = "sha256:..."
/// name = "shop-berlin-1"                      # optional: else the config file's
/// location = { lat = 52.52, lon = 13.405 }    # optional
/// labels = { site = "berlin" }                # optional
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JoinFile {
    pub orchestrator: OrchestratorAddress,
    pub join: JoinSettings,
    pub name: Option<String>,
    pub location: Option<GeoPoint>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// Where the node is, in WGS84 degrees and metres above sea level. Always finite and on the
/// globe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
}

/// The orchestrator's QUIC endpoint, `host:port`. Not resolved: [`fmt::Display`] gives back a
/// `host:port` string (IPv6 in brackets) for the dialer to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestratorAddress {
    host: Host,
    port: u16,
}

/// The host part of [`OrchestratorAddress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A syntactically valid DNS name, as written (without a trailing dot).
    Dns(String),
}

/// The `[join]` table: how to enroll on first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettings {
    pub token: JoinToken,
    pub ca_hash: CaHash,
}

/// A join token, `ID.SECRET`: a 6-character id and a 32-character secret, both `[a-z0-9]`.
/// Its `Debug` shows the id only, so a logged config never leaks the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

/// The SHA-256 the node expects of the orchestrator's CA, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaHash([u8; 32]);

impl Config {
    /// Reads and validates a complete config file at `path`: one that names the node and
    /// the orchestrator itself.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        ConfigFile::load(path)?.complete(None)
    }

    /// Parses and validates a complete config from TOML text.
    pub fn from_toml(contents: &str) -> Result<Self, ConfigError> {
        ConfigFile::from_toml(contents)?.complete(None)
    }

    /// The node's name, unique in the fleet: 1 to 63 of `[a-z0-9-]`, not starting or ending
    /// with `-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as the wire carries it.
    pub fn name_wire(&self) -> Text<63> {
        // Validation keeps the name within 63 ASCII bytes, so nothing is cut.
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

    pub fn location(&self) -> Option<GeoPoint> {
        self.location
    }

    /// How often the node sends its live load.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
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

    /// What the node keeps for the system and itself when it admits workloads.
    pub fn reserve(&self) -> Reserve {
        self.reserve
    }

    /// The labels as the wire carries them, sorted by key.
    pub fn labels_wire(&self) -> List<Label, 32> {
        let mut out = List::new();
        for (key, value) in &self.labels {
            // Validation allows at most 32 labels of at most 63 bytes each, so neither the
            // push nor `text` drops anything; were that ever broken, we'd send fewer labels
            // rather than fail.
            let _ = out.push(Label {
                key: text(key),
                value: text(value),
            });
        }
        out
    }

    /// The location as the wire carries it.
    pub fn location_wire(&self) -> Option<Location> {
        self.location.map(|p| Location {
            lat: p.lat,
            lon: p.lon,
            alt_m: p.alt_m,
        })
    }
}

impl ConfigFile {
    /// Reads and validates the config file at `path`. Refuses files over [`MAX_CONFIG_BYTES`]
    /// without reading them whole.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let contents = read_bounded(path, MAX_CONFIG_BYTES)?;
        let contents = String::from_utf8(contents).map_err(|_| ConfigError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        Self::from_toml(&contents)
    }

    /// Parses and validates a config file from TOML text.
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
    pub fn join_files(&self) -> &[PathBuf] {
        &self.join_files
    }

    /// The local status endpoint's address, if the file sets `status_listen`.
    pub fn status_listen(&self) -> Option<SocketAddr> {
        self.status_listen
    }

    /// The node's name as far as the file alone knows it.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The config the daemon runs with: this file, its gaps filled from `join` (the join file,
    /// if any). Fails naming the first value neither provides.
    pub fn complete(&self, join: Option<&JoinFile>) -> Result<Config, ConfigError> {
        let missing = |field: &str| {
            ConfigError::invalid(
                field,
                if self.join_files.is_empty() {
                    "is not set".to_string()
                } else {
                    "is not set here, and no join file provided it".to_string()
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
            location: self.location.or_else(|| join.and_then(|j| j.location)),
            status_interval: self.status_interval,
            orchestrator,
            local_address: self.local_address,
            join: self.join.clone().or_else(|| join.map(|j| j.join.clone())),
            status_listen: self.status_listen,
            reserve: self.reserve,
        })
    }
}

impl JoinFile {
    /// Parses a join file as an operator's PC may have saved it: UTF-8 with or without a byte
    /// order mark, LF or CRLF line ends. UTF-16 (what some editors write) is refused with a
    /// message saying so.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_JOIN_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                max_bytes: MAX_JOIN_FILE_BYTES,
            });
        }
        if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
            return Err(ConfigError::NotText(
                "the file is UTF-16; save it as UTF-8 (plain text)",
            ));
        }
        let bytes = bytes
            .strip_prefix(b"\xef\xbb\xbf".as_slice())
            .unwrap_or(bytes);
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::NotText("save the file as UTF-8 (plain text)"))?;
        if let Ok(VersionProbe {
            version: Some(version),
        }) = toml::from_str::<VersionProbe>(text)
        {
            check_version(version)?;
        }
        let raw: RawJoinFile = toml::from_str(text)?;
        let orchestrator = parse_address(&raw.orchestrator)
            .map_err(|reason| ConfigError::invalid("orchestrator", reason))?;
        let join = validate_join(
            RawJoin {
                token: raw.token,
                ca_hash: raw.ca_hash,
            },
            "",
        )?;
        Ok(Self {
            orchestrator,
            join,
            name: raw.name.map(validate_name).transpose()?,
            location: raw.location.map(validate_location).transpose()?,
            labels: raw.labels.map(validate_labels).transpose()?,
        })
    }
}

/// Reads at most `max` bytes of `path`, refusing a larger file; from its metadata when
/// possible, so a wrong path (a log, a disk image) is never read whole.
pub(crate) fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > max as u64 {
        return Err(ConfigError::TooLarge { max_bytes: max });
    }
    // The size from metadata can be wrong (a pipe, a file under /proc, a file still being
    // written), so the read itself is bounded too: one byte over the limit is enough to know.
    let mut contents = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut contents)
        .map_err(io_err)?;
    if contents.len() > max {
        return Err(ConfigError::TooLarge { max_bytes: max });
    }
    Ok(contents)
}

impl OrchestratorAddress {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for OrchestratorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl JoinToken {
    /// The token's public id, the part before the `.`.
    pub fn id(&self) -> &str {
        self.0.split_once('.').map_or("", |(id, _)| id)
    }

    /// The whole token, secret included, for the enrollment request. Never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id())
    }
}

impl CaHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaHash({self})")
    }
}

/// Only the version, ignoring everything else; see [`Config::from_toml`].
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<i64>,
}

/// The file as written. Numbers are read wide (`i64`) so that a negative or huge value gets a
/// validation error naming the field rather than a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: i64,
    name: Option<String>,
    data_dir: String,
    labels: Option<BTreeMap<String, String>>,
    location: Option<RawLocation>,
    status_interval_secs: Option<i64>,
    orchestrator: Option<RawOrchestrator>,
    join: Option<RawJoin>,
    /// Where a join file may be, in order of preference.
    join_file: Option<Vec<String>>,
    /// `IP:port` of the local status endpoint.
    status_listen: Option<String>,
    reserve: Option<RawReserve>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReserve {
    memory_bytes: Option<i64>,
    disk_bytes: Option<i64>,
}

/// The join file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinFile {
    #[allow(dead_code)] // checked by the version probe
    version: Option<i64>,
    orchestrator: String,
    token: String,
    ca_hash: String,
    name: Option<String>,
    location: Option<RawLocation>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocation {
    lat: f64,
    lon: f64,
    alt_m: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrchestrator {
    /// Optional only because a join file may provide it.
    address: Option<String>,
    /// The local IP to dial from; for hosts with several uplinks, or several nodes on one host.
    local_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoin {
    token: String,
    ca_hash: String,
}

impl RawConfig {
    fn validate(self) -> Result<ConfigFile, ConfigError> {
        check_version(self.version)?;
        let name = self.name.map(validate_name).transpose()?;
        let data_dir = validate_data_dir(self.data_dir)?;
        let labels = self.labels.map(validate_labels).transpose()?;
        let location = self.location.map(validate_location).transpose()?;
        let status_interval = validate_status_interval(self.status_interval_secs)?;
        let (address, local_address) = self
            .orchestrator
            .map_or((None, None), |o| (o.address, o.local_address));
        let orchestrator = address
            .map(|a| {
                parse_address(&a)
                    .map_err(|reason| ConfigError::invalid("orchestrator.address", reason))
            })
            .transpose()?;
        let local_address = local_address
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| {
                    ConfigError::invalid("orchestrator.local_address", "expected an IP address")
                })
            })
            .transpose()?;
        let join = self.join.map(|j| validate_join(j, "join.")).transpose()?;
        let join_files = validate_join_files(self.join_file.unwrap_or_default())?;
        let status_listen = self
            .status_listen
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        "status_listen",
                        format!("{} is not IP:port, e.g. 127.0.0.1:7450", shown(&a)),
                    )
                })
            })
            .transpose()?;
        let reserve = validate_reserve(self.reserve)?;
        Ok(ConfigFile {
            name,
            data_dir,
            labels,
            location,
            status_interval,
            orchestrator,
            local_address,
            join,
            join_files,
            status_listen,
            reserve,
        })
    }
}

fn validate_join_files(paths: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    if paths.len() > MAX_JOIN_FILE_PATHS {
        return Err(ConfigError::invalid(
            "join_file",
            format!(
                "{} paths; at most {MAX_JOIN_FILE_PATHS} are allowed",
                paths.len()
            ),
        ));
    }
    paths
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("join_file[{i}]");
            if !p.starts_with('/') {
                return Err(ConfigError::invalid(field, "must be an absolute path"));
            }
            if p.contains('\0') {
                return Err(ConfigError::invalid(
                    field,
                    "must not contain a NUL character",
                ));
            }
            Ok(PathBuf::from(p))
        })
        .collect()
}

fn validate_reserve(raw: Option<RawReserve>) -> Result<Reserve, ConfigError> {
    let default = Reserve::default();
    let Some(raw) = raw else {
        return Ok(default);
    };
    let bytes = |field: &str, v: Option<i64>, default: u64| match v {
        None => Ok(default),
        Some(v) => u64::try_from(v).map_err(|_| {
            ConfigError::invalid(field, format!("{v} is negative; expected a size in bytes"))
        }),
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

fn check_version(version: i64) -> Result<(), ConfigError> {
    if SUPPORTED_CONFIG_VERSIONS.contains(&version) {
        return Ok(());
    }
    let supported: Vec<String> = SUPPORTED_CONFIG_VERSIONS
        .iter()
        .map(ToString::to_string)
        .collect();
    Err(ConfigError::invalid(
        "version",
        format!(
            "{version} is not supported; this edge-node reads version {}",
            supported.join(", ")
        ),
    ))
}

fn validate_name(name: String) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid("name", reason);
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {len} characters long; at most {MAX_NAME_LEN} are allowed"
        )));
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
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(format!(
            "{} must not start or end with '-'",
            shown(&name)
        )));
    }
    Ok(name)
}

fn validate_data_dir(dir: String) -> Result<PathBuf, ConfigError> {
    if dir.is_empty() {
        return Err(ConfigError::invalid("data_dir", "must not be empty"));
    }
    // TOML strings may hold `\u0000`; no file system accepts it.
    if dir.contains('\0') {
        return Err(ConfigError::invalid(
            "data_dir",
            "must not contain a NUL character",
        ));
    }
    Ok(PathBuf::from(dir))
}

fn validate_labels(
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    if labels.len() > MAX_LABELS {
        return Err(ConfigError::invalid(
            "labels",
            format!("{} labels; at most {MAX_LABELS} are allowed", labels.len()),
        ));
    }
    for (key, value) in &labels {
        let field = || label_path(key);
        if key.is_empty() {
            return Err(ConfigError::invalid(field(), "the key must not be empty"));
        }
        let key_len = key.chars().count();
        if key_len > MAX_LABEL_KEY_LEN {
            return Err(ConfigError::invalid(
                field(),
                format!(
                    "the key is {key_len} characters long; at most {MAX_LABEL_KEY_LEN} are allowed"
                ),
            ));
        }
        if let Some(c) = key.chars().find(|c| !is_label_key_char(*c)) {
            return Err(ConfigError::invalid(
                field(),
                format!("the key contains {c:?}; use letters, digits and . _ / -"),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err(ConfigError::invalid(
                field(),
                format!(
                    "the value is {} bytes long; at most {MAX_LABEL_VALUE_BYTES} are allowed",
                    value.len()
                ),
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                field(),
                format!("the value contains the control character {c:?}"),
            ));
        }
    }
    Ok(labels)
}

fn is_label_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')
}

/// The TOML path of a label: `labels.site`, or `labels."example.com/zone"` when the key is not
/// a bare TOML key.
fn label_path(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare && key.len() <= MAX_LABEL_KEY_LEN {
        format!("labels.{key}")
    } else {
        format!("labels.{}", shown(key))
    }
}

fn validate_location(raw: RawLocation) -> Result<GeoPoint, ConfigError> {
    fn coordinate(field: &str, v: f64, bound: f64) -> Result<f64, ConfigError> {
        if !v.is_finite() {
            return Err(ConfigError::invalid(
                field,
                format!("{v} is not a finite number"),
            ));
        }
        if !(-bound..=bound).contains(&v) {
            return Err(ConfigError::invalid(
                field,
                format!("{v} is out of range -{bound}..={bound}"),
            ));
        }
        Ok(v)
    }
    let lat = coordinate("location.lat", raw.lat, 90.0)?;
    let lon = coordinate("location.lon", raw.lon, 180.0)?;
    if let Some(alt) = raw.alt_m
        && !alt.is_finite()
    {
        return Err(ConfigError::invalid(
            "location.alt_m",
            format!("{alt} is not a finite number"),
        ));
    }
    Ok(GeoPoint {
        lat,
        lon,
        alt_m: raw.alt_m,
    })
}

fn validate_status_interval(secs: Option<i64>) -> Result<Duration, ConfigError> {
    let Some(secs) = secs else {
        return Ok(DEFAULT_STATUS_INTERVAL);
    };
    if !STATUS_INTERVAL_SECS.contains(&secs) {
        return Err(ConfigError::invalid(
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

/// `prefix` is where the fields sit: `join.` in the config file, nothing in a join file.
fn validate_join(raw: RawJoin, prefix: &str) -> Result<JoinSettings, ConfigError> {
    let token = parse_join_token(raw.token, prefix)?;
    let ca_hash = parse_ca_hash(&raw.ca_hash).ok_or_else(|| {
        ConfigError::invalid(
            format!("{prefix}ca_hash"),
            "expected sha256: followed by 64 hex digits",
        )
    })?;
    Ok(JoinSettings { token, ca_hash })
}

/// Checks the token's shape. The reasons never include the token: it is a secret.
fn parse_join_token(token: String, prefix: &str) -> Result<JoinToken, ConfigError> {
    const ID_LEN: usize = 6;
    const SECRET_LEN: usize = 32;
    let invalid = |reason: &str| {
        ConfigError::invalid(
            format!("{prefix}token"),
            format!(
                "{reason}; expected ID.SECRET, {ID_LEN} and {SECRET_LEN} lowercase letters or digits (as printed by `edgectl token create`)"
            ),
        )
    };
    let part_ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let Some((id, secret)) = token.split_once('.') else {
        return Err(invalid("no '.' between ID and SECRET"));
    };
    if !part_ok(id, ID_LEN) {
        return Err(invalid("the ID part is malformed"));
    }
    if !part_ok(secret, SECRET_LEN) {
        return Err(invalid("the SECRET part is malformed"));
    }
    Ok(JoinToken(token))
}

fn parse_ca_hash(s: &str) -> Option<CaHash> {
    let hex = s.strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        // Both digits are < 16, so this fits in a byte.
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(CaHash(out))
}

/// Parses `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port in
/// 1..=65535. Returns the reason on failure.
fn parse_address(s: &str) -> Result<OrchestratorAddress, String> {
    const EXAMPLE: &str = "e.g. orchestrator.example.net:7443 or [2001:db8::1]:7443";
    if s.is_empty() {
        return Err(format!("must not be empty; expected host:port, {EXAMPLE}"));
    }
    if s.len() > MAX_DNS_NAME_LEN + ":65535".len() {
        return Err(format!("is {} bytes long; too long for host:port", s.len()));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "{} has a scheme; drop {} and write host:port, {EXAMPLE}",
            shown(s),
            shown(&format!("{scheme}://"))
        ));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(format!("{} has '[' without ']'", shown(s)));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!(
                "{} has no port; expected [IPv6]:port, {EXAMPLE}",
                shown(s)
            ));
        };
        let ip: std::net::Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("{} is not an IPv6 address", shown(inner)))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "{} has no port; expected host:port, {EXAMPLE}",
                shown(s)
            ));
        };
        if host.contains(':') {
            return Err(format!(
                "{} looks like an IPv6 address without brackets; write it as [address]:port, {EXAMPLE}",
                shown(s)
            ));
        }
        (parse_host(host)?, port)
    };
    let port = parse_port(port)?;
    Ok(OrchestratorAddress { host, port })
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port is empty; expected host:port with a port in 1..=65535".into());
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed; expected 1..=65535".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {} is not a number in 1..=65535", shown(port))),
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("the host is empty; expected host:port".into());
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let bad = || format!("host {} is not a valid DNS name or IP address", shown(host));
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err(bad());
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok {
        return Err(bad());
    }
    // An all-numeric last label is no DNS name (RFC 3696 §2): this is a mistyped IPv4 address.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("host {} is not a valid IPv4 address", shown(host)));
    }
    Ok(Host::Dns(name.to_owned()))
}

/// A user-supplied string for an error message: quoted and escaped (a newline shows as `\n`),
/// and cut to a few dozen characters so a hostile value cannot flood the log.
fn shown(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version = 1
name = "shop-berlin-1"
data_dir = "/var/lib/edge-node"
labels = { site = "berlin" }
location = { lat = 52.52, lon = 13.405 }
status_interval_secs = 10
[orchestrator]
address = "orchestrator.example.net:7443"
[join]
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;

    /// The example with line `from` replaced by `to`. Panics if `from` is not in it, so a test
    /// never silently checks the unmodified example.
    fn example_with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "example has no {from:?}");
        EXAMPLE.replacen(from, to, 1)
    }

    /// Asserts the text is rejected as `Invalid` for `field`, and returns the reason.
    fn invalid_field(toml: &str, field: &str) -> String {
        match Config::from_toml(toml) {
            Err(ConfigError::Invalid { field: f, reason }) => {
                assert_eq!(f, field, "wrong field; reason: {reason}");
                reason
            }
            other => panic!("expected Invalid {{ field: {field} }}, got {other:?}"),
        }
    }

    fn parse_error(toml: &str) -> String {
        match Config::from_toml(toml) {
            Err(e @ ConfigError::Parse(_)) => e.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn example_parses() {
        let c = Config::from_toml(EXAMPLE).expect("the documented example is valid");
        assert_eq!(c.name(), "shop-berlin-1");
        assert_eq!(c.name_wire().as_str(), "shop-berlin-1");
        assert_eq!(c.data_dir(), Path::new("/var/lib/edge-node"));
        assert_eq!(c.labels().get("site").map(String::as_str), Some("berlin"));
        assert_eq!(
            c.location(),
            Some(GeoPoint {
                lat: 52.52,
                lon: 13.405,
                alt_m: None
            })
        );
        assert_eq!(c.status_interval(), Duration::from_secs(10));
        assert_eq!(
            c.orchestrator().host(),
            &Host::Dns("orchestrator.example.net".into())
        );
        assert_eq!(c.orchestrator().port(), 7443);
        assert_eq!(
            c.orchestrator().to_string(),
            "orchestrator.example.net:7443"
        );
        let join = c.join().expect("example has [join]");
        assert_eq!(join.token.id(), "abcdef");
        assert_eq!(
            join.token.as_str(),
            "abcdef.0123456789abcdef0123456789abcdef"
        );
        assert_eq!(join.ca_hash.as_bytes()[0], 0x00);
        assert_eq!(join.ca_hash.as_bytes()[1], 0x11);
        assert_eq!(join.ca_hash.as_bytes()[31], 0xff);
        assert_eq!(
            join.ca_hash.to_string(),
            "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        );
    }

    #[test]
    fn product_md_example_parses() {
        // The contract in PRODUCT.md, with a real token and hash.
        let toml = r#"
version = 1
name = "shop-berlin-1"
data_dir = "/var/lib/edge-node"
labels = { site = "berlin" }
location = { lat = 52.52, lon = 13.405 }
[orchestrator]
address = "orchestrator.example.net:7443"
[join]                 # used on first start only
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"
"#;
        Config::from_toml(toml).expect("PRODUCT.md example is valid");
    }

    #[test]
    fn optional_fields_default() {
        let toml = r#"
version = 1
name = "n1"
data_dir = "/d"
[orchestrator]
address = "10.0.0.1:7443"
"#;
        let c = Config::from_toml(toml).expect("minimal config is valid");
        assert!(c.labels().is_empty());
        assert!(c.labels_wire().is_empty());
        assert_eq!(c.location(), None);
        assert_eq!(c.location_wire(), None);
        assert_eq!(c.status_interval(), DEFAULT_STATUS_INTERVAL);
        assert!(c.join().is_none());
        assert_eq!(
            c.orchestrator().host(),
            &Host::Ip(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)))
        );
    }

    #[test]
    fn wire_conversions() {
        let toml = example_with(
            r#"labels = { site = "berlin" }"#,
            r#"labels = { zone = "a", site = "berlin", "example.com/tier" = "edge" }"#,
        )
        .replace(
            "location = { lat = 52.52, lon = 13.405 }",
            "location = { lat = -33, lon = 151.2, alt_m = 58.5 }",
        );
        let c = Config::from_toml(&toml).expect("valid");
        let labels = c.labels_wire();
        let keys: Vec<&str> = labels.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["example.com/tier", "site", "zone"], "sorted by key");
        assert_eq!(labels[1].value.as_str(), "berlin");
        let loc = c.location_wire().expect("has a location");
        assert_eq!((loc.lat, loc.lon, loc.alt_m), (-33.0, 151.2, Some(58.5)));
        assert!(loc.is_valid());
    }

    #[test]
    fn full_label_set_fits_the_wire() {
        let mut labels = String::from("[labels]\n");
        for i in 0..MAX_LABELS {
            let key = format!("k{i:0>62}");
            labels.push_str(&format!("{key} = \"{}\"\n", "v".repeat(63)));
        }
        let toml = example_with(r#"labels = { site = "berlin" }"#, "")
            .replace("[orchestrator]", &format!("{labels}[orchestrator]"));
        let c = Config::from_toml(&toml).expect("32 labels of maximal size are valid");
        let wire = c.labels_wire();
        assert_eq!(wire.len(), MAX_LABELS);
        assert!(
            wire.iter()
                .all(|l| l.key.len() == 63 && l.value.len() == 63)
        );
    }

    #[test]
    fn version_must_be_supported() {
        let reason = invalid_field(&example_with("version = 1", "version = 2"), "version");
        assert!(reason.contains("version 1"), "{reason}");
        invalid_field(&example_with("version = 1", "version = 0"), "version");
        invalid_field(&example_with("version = 1", "version = -1"), "version");
    }

    #[test]
    fn newer_version_with_new_fields_says_version() {
        let toml = example_with("version = 1", "version = 2\nsome_new_field = true");
        invalid_field(&toml, "version");
    }

    #[test]
    fn missing_version_is_a_parse_error() {
        let msg = parse_error(&example_with("version = 1", ""));
        assert!(msg.contains("version"), "{msg}");
    }

    #[test]
    fn bad_names() {
        for bad in [
            "", "Shop", "shop_1", "-shop", "shop-", "shöp", "shop 1", "shop\n1",
        ] {
            let toml = example_with(
                r#"name = "shop-berlin-1""#,
                &format!("name = {}", toml_str(bad)),
            );
            invalid_field(&toml, "name");
        }
        let ok = "a".repeat(63);
        let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{ok}\""));
        Config::from_toml(&toml).expect("63 characters is the limit, inclusive");
    }

    #[test]
    fn ten_thousand_char_name_is_refused_briefly() {
        let long = "a".repeat(10_000);
        let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{long}\""));
        let reason = invalid_field(&toml, "name");
        assert!(reason.contains("10000"), "{reason}");
        assert!(reason.len() < 200, "the value is not echoed: {reason}");
        let long = "A".repeat(50);
        let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{long}\""));
        let reason = invalid_field(&toml, "name");
        assert!(reason.contains('…'), "long values are cut: {reason}");
    }

    #[test]
    fn bad_data_dir() {
        invalid_field(
            &example_with(r#"data_dir = "/var/lib/edge-node""#, r#"data_dir = """#),
            "data_dir",
        );
        invalid_field(
            &example_with(
                r#"data_dir = "/var/lib/edge-node""#,
                r#"data_dir = "/var/\u0000x""#,
            ),
            "data_dir",
        );
    }

    #[test]
    fn bad_label_keys_and_values() {
        let cases = [
            (r#"labels = { "bad key" = "x" }"#, r#"labels."bad key""#),
            (r#"labels = { "" = "x" }"#, r#"labels."""#),
            (r#"labels = { "a\nb" = "x" }"#, r#"labels."a\nb""#),
            (r#"labels = { "ключ" = "x" }"#, r#"labels."ключ""#),
            (r#"labels = { "a:b" = "x" }"#, r#"labels."a:b""#),
            (r#"labels = { site = "a\u0007b" }"#, "labels.site"),
            (r#"labels = { site = "line\nbreak" }"#, "labels.site"),
        ];
        for (line, field) in cases {
            invalid_field(
                &example_with(r#"labels = { site = "berlin" }"#, line),
                field,
            );
        }
        let long_key = format!(r#"labels = {{ {} = "x" }}"#, "k".repeat(64));
        invalid_field(
            &example_with(r#"labels = { site = "berlin" }"#, &long_key),
            &(format!("labels.{:?}", "k".repeat(40)) + "…"),
        );
        // 63 bytes is the limit, counted in bytes: 32 two-byte characters are 64 bytes.
        let long_value = format!(r#"labels = {{ site = "{}" }}"#, "é".repeat(32));
        let reason = invalid_field(
            &example_with(r#"labels = { site = "berlin" }"#, &long_value),
            "labels.site",
        );
        assert!(reason.contains("64 bytes"), "{reason}");
        let ok = r#"labels = { "example.com/zone_a-1" = "Berlin Mitte, 2nd floor", empty = "" }"#;
        Config::from_toml(&example_with(r#"labels = { site = "berlin" }"#, ok))
            .expect("dotted keys with / _ - and empty values are valid");
    }

    #[test]
    fn label_key_with_newline_is_escaped_in_the_error() {
        let toml = example_with(
            r#"labels = { site = "berlin" }"#,
            r#"labels = { "evil\nkey" = "x" }"#,
        );
        let err = Config::from_toml(&toml).expect_err("newline in key");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "no raw newline in {msg:?}");
        assert!(msg.starts_with(r#"labels."evil\nkey": "#), "{msg}");
    }

    #[test]
    fn thirty_three_labels() {
        let mut labels = String::from("[labels]\n");
        for i in 0..33 {
            labels.push_str(&format!("k{i} = \"v\"\n"));
        }
        let toml = example_with(r#"labels = { site = "berlin" }"#, "")
            .replace("[orchestrator]", &format!("{labels}[orchestrator]"));
        let reason = invalid_field(&toml, "labels");
        assert!(reason.contains("33"), "{reason}");
    }

    #[test]
    fn bad_locations() {
        let loc = "location = { lat = 52.52, lon = 13.405 }";
        let reason = invalid_field(
            &example_with(loc, "location = { lat = 91, lon = 0 }"),
            "location.lat",
        );
        assert_eq!(reason, "91 is out of range -90..=90");
        invalid_field(
            &example_with(loc, "location = { lat = -90.0001, lon = 0 }"),
            "location.lat",
        );
        invalid_field(
            &example_with(loc, "location = { lat = 0, lon = 180.5 }"),
            "location.lon",
        );
        invalid_field(
            &example_with(loc, "location = { lat = 0, lon = -181 }"),
            "location.lon",
        );
        for nonfinite in ["nan", "+inf", "-inf", "-nan"] {
            invalid_field(
                &example_with(loc, &format!("location = {{ lat = {nonfinite}, lon = 0 }}")),
                "location.lat",
            );
            invalid_field(
                &example_with(loc, &format!("location = {{ lat = 0, lon = {nonfinite} }}")),
                "location.lon",
            );
            invalid_field(
                &example_with(
                    loc,
                    &format!("location = {{ lat = 0, lon = 0, alt_m = {nonfinite} }}"),
                ),
                "location.alt_m",
            );
        }
        // The edges are on the globe.
        Config::from_toml(&example_with(
            loc,
            "location = { lat = -90, lon = 180, alt_m = -430.5 }",
        ))
        .expect("poles and antimeridian are valid");
        // lat without lon is a parse error naming the missing field.
        let msg = parse_error(&example_with(loc, "location = { lat = 1 }"));
        assert!(msg.contains("lon"), "{msg}");
    }

    #[test]
    fn bad_status_interval() {
        let line = "status_interval_secs = 10";
        for bad in ["0", "-1", "3601", "9223372036854775807"] {
            invalid_field(
                &example_with(line, &format!("status_interval_secs = {bad}")),
                "status_interval_secs",
            );
        }
        let c = Config::from_toml(&example_with(line, "status_interval_secs = 3600"))
            .expect("3600 is the limit, inclusive");
        assert_eq!(c.status_interval(), Duration::from_secs(3600));
    }

    #[test]
    fn addresses() {
        let line = r#"address = "orchestrator.example.net:7443""#;
        let parse = |addr: &str| {
            Config::from_toml(&example_with(
                line,
                &format!("address = {}", toml_str(addr)),
            ))
        };
        for (good, shown) in [
            (
                "orchestrator.example.net:7443",
                "orchestrator.example.net:7443",
            ),
            (
                "orchestrator.example.net.:7443",
                "orchestrator.example.net:7443",
            ),
            ("localhost:1", "localhost:1"),
            ("192.0.2.10:65535", "192.0.2.10:65535"),
            ("[2001:db8::1]:7443", "[2001:db8::1]:7443"),
            ("[::1]:7443", "[::1]:7443"),
            ("xn--bcher-kva.example:443", "xn--bcher-kva.example:443"),
        ] {
            let c = parse(good).unwrap_or_else(|e| panic!("{good} is valid: {e}"));
            assert_eq!(c.orchestrator().to_string(), shown);
        }
        for bad in [
            "",
            "orchestrator.example.net",
            "orchestrator.example.net:",
            "orchestrator.example.net:0",
            "orchestrator.example.net:65536",
            "orchestrator.example.net:-1",
            "orchestrator.example.net:https",
            ":7443",
            "2001:db8::1:7443",
            "[2001:db8::1]",
            "[2001:db8::1:7443",
            "[not-ip]:7443",
            "bad_host.example:7443",
            "-bad.example:7443",
            "a..b:7443",
            "300.1.2.3:7443",
            "1.2.3:7443",
            "host name:7443",
            "quic://orchestrator.example.net:7443",
        ] {
            match parse(bad) {
                Err(ConfigError::Invalid { field, reason }) => {
                    assert_eq!(field, "orchestrator.address", "{bad}: {reason}");
                }
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
        let reason = invalid_field(
            &example_with(line, r#"address = "orchestrator.example.net""#),
            "orchestrator.address",
        );
        assert!(reason.contains("no port"), "{reason}");
        let reason = invalid_field(
            &example_with(line, r#"address = "orchestrator.example.net:0""#),
            "orchestrator.address",
        );
        assert!(reason.contains("port 0"), "{reason}");
        let reason = invalid_field(
            &example_with(line, r#"address = "quic://orchestrator.example.net:7443""#),
            "orchestrator.address",
        );
        assert!(reason.contains(r#"drop "quic://""#), "{reason}");
        let reason = invalid_field(
            &example_with(line, r#"address = "2001:db8::1:7443""#),
            "orchestrator.address",
        );
        assert!(reason.contains("brackets"), "{reason}");
        let long = format!("address = \"{}.example:7443\"", "a".repeat(10_000));
        let reason = invalid_field(&example_with(line, &long), "orchestrator.address");
        assert!(reason.len() < 200, "{reason}");
    }

    #[test]
    fn bad_join_tokens_never_echo_the_secret() {
        let line = r#"token = "abcdef.0123456789abcdef0123456789abcdef""#;
        let secret = "0123456789abcdef0123456789abcdeZ";
        for bad in [
            "".to_owned(),
            "abcdef0123456789abcdef0123456789abcdef".to_owned(),
            format!("abcde.{secret}"),
            format!("ABCDEF.{secret}"),
            "abcdef.0123456789abcdef0123456789abcde".to_owned(),
            format!("abcdef.{secret}"),
            "abcdef.0123456789abcdef0123456789abcdef.x".to_owned(),
            "abcdef.0123456789abcdef0123456789abcdef ".to_owned(),
        ] {
            let toml = example_with(line, &format!("token = {}", toml_str(&bad)));
            let reason = invalid_field(&toml, "join.token");
            assert!(!reason.contains("0123456789"), "secret echoed: {reason}");
            assert!(reason.contains("ID.SECRET"), "{reason}");
        }
    }

    #[test]
    fn join_token_debug_is_redacted() {
        let c = Config::from_toml(EXAMPLE).expect("valid");
        let debug = format!("{c:?}");
        assert!(debug.contains("abcdef.<redacted>"), "{debug}");
        assert!(
            !debug.contains("0123456789abcdef"),
            "secret in Debug: {debug}"
        );
    }

    #[test]
    fn bad_ca_hashes() {
        let line = r#"ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff""#;
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for bad in [
            String::new(),
            hex64.to_owned(),
            format!("sha1:{hex64}"),
            format!("SHA256:{hex64}"),
            format!("sha256:{}", &hex64[..63]),
            format!("sha256:{hex64}0"),
            format!("sha256:{}g", &hex64[..63]),
            format!("sha256: {}", &hex64[..63]),
            format!("sha256:{}é", &hex64[..62]),
        ] {
            let toml = example_with(line, &format!("ca_hash = {}", toml_str(&bad)));
            let reason = invalid_field(&toml, "join.ca_hash");
            assert_eq!(reason, "expected sha256: followed by 64 hex digits");
        }
    }

    #[test]
    fn join_needs_both_fields() {
        let msg = parse_error(&example_with(
            r#"token = "abcdef.0123456789abcdef0123456789abcdef""#,
            "",
        ));
        assert!(msg.contains("token"), "{msg}");
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let msg = parse_error(&example_with(
            r#"name = "shop-berlin-1""#,
            r#"name = "unterminated"#,
        ));
        assert!(msg.contains("line"), "{msg}");
        let msg = parse_error("version = 1\nname = \n");
        assert!(msg.contains("line 2"), "{msg}");
        parse_error("");
        parse_error("\u{0}\u{1}binary garbage");
        // A duplicate key is malformed TOML, not a silent overwrite.
        parse_error(&example_with(
            r#"name = "shop-berlin-1""#,
            "name = \"a\"\nname = \"b\"",
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let msg = parse_error(&example_with(
            r#"name = "shop-berlin-1""#,
            "name = \"shop-berlin-1\"\nnmae = \"typo\"",
        ));
        assert!(msg.contains("nmae"), "{msg}");
        let msg = parse_error(&example_with(
            "location = { lat = 52.52, lon = 13.405 }",
            "location = { lat = 52.52, lon = 13.405, altitude = 3 }",
        ));
        assert!(msg.contains("altitude"), "{msg}");
        let msg = parse_error(&example_with(
            r#"address = "orchestrator.example.net:7443""#,
            "address = \"orchestrator.example.net:7443\"\nport = 1",
        ));
        assert!(msg.contains("port"), "{msg}");
        parse_error(&format!("{EXAMPLE}\n[extra]\nx = 1\n"));
    }

    #[test]
    fn wrong_types_are_parse_errors() {
        parse_error(&example_with(r#"name = "shop-berlin-1""#, "name = 5"));
        parse_error(&example_with(
            r#"labels = { site = "berlin" }"#,
            "labels = { site = 5 }",
        ));
        parse_error(&example_with(
            "location = { lat = 52.52, lon = 13.405 }",
            r#"location = { lat = "52.52", lon = 13.405 }"#,
        ));
        parse_error(&example_with("version = 1", r#"version = "1""#));
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        // Not valid TOML, so a parse would fail differently: the size check comes first.
        let big = "#".repeat(MAX_CONFIG_BYTES + 1);
        assert!(matches!(
            Config::from_toml(&big),
            Err(ConfigError::TooLarge { .. })
        ));
        // Exactly at the limit is parsed.
        let padded = format!("{EXAMPLE}{}", "#".repeat(MAX_CONFIG_BYTES - EXAMPLE.len()));
        assert_eq!(padded.len(), MAX_CONFIG_BYTES);
        Config::from_toml(&padded).expect("a file of exactly the limit is accepted");
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("edge-node-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_from_file() {
        let dir = Scratch::new("load");
        let path = dir.0.join("node.toml");
        std::fs::write(&path, EXAMPLE).expect("write config");
        let c = Config::load(&path).expect("the example loads");
        assert_eq!(c, Config::from_toml(EXAMPLE).expect("valid"));
    }

    #[test]
    fn load_refuses_oversized_file() {
        let dir = Scratch::new("large");
        let path = dir.0.join("node.toml");
        std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES + 1]).expect("write config");
        let err = Config::load(&path).expect_err("too large");
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("65536"), "{err}");
    }

    #[test]
    fn load_missing_or_binary_file_is_io_error_with_path() {
        let dir = Scratch::new("missing");
        let path = dir.0.join("absent.toml");
        let err = Config::load(&path).expect_err("missing file");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.toml"), "{err}");

        let path = dir.0.join("binary.toml");
        std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).expect("write config");
        let err = Config::load(&path).expect_err("not UTF-8");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");

        let err = Config::load(&dir.0).expect_err("a directory");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    }

    #[test]
    fn fixtures_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let good = Config::load(&dir.join("node-pi.toml")).expect("fixture is valid");
        assert_eq!(good.name(), "farm-pi-07");
        assert_eq!(good.status_interval(), Duration::from_secs(30));
        assert!(good.join().is_none(), "an enrolled node needs no [join]");
        let err = Config::load(&dir.join("node-bad-location.toml")).expect_err("invalid");
        assert_eq!(err.to_string(), "location.lat: 91 is out of range -90..=90");
    }

    proptest::proptest! {
        /// Whatever the text, parsing returns; it never panics.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = Config::from_toml(&s);
        }

        /// Any value for any field of the example gives Ok or an error, never a panic.
        #[test]
        fn arbitrary_field_values_never_panic(
            line in proptest::sample::select(vec![
                r#"name = "shop-berlin-1""#,
                r#"address = "orchestrator.example.net:7443""#,
                r#"token = "abcdef.0123456789abcdef0123456789abcdef""#,
                r#"labels = { site = "berlin" }"#,
                r#"data_dir = "/var/lib/edge-node""#,
            ]),
            value in "\\PC{0,80}",
        ) {
            let key = line.split_once(" = ").map_or("", |(k, _)| k);
            let replacement = if key == "labels" {
                format!("labels = {{ {} = {} }}", toml_str(&value), toml_str(&value))
            } else {
                format!("{key} = {}", toml_str(&value))
            };
            let _ = Config::from_toml(&example_with(line, &replacement));
        }
    }

    /// `s` as a TOML basic string.
    fn toml_str(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A packaged config: the device-specific values come from a join file.
    const PACKAGED: &str = r#"
version = 1
data_dir = "/var/lib/edge-node"
join_file = ["/boot/firmware/edge-join.toml", "/boot/edge-join.toml"]
status_listen = "127.0.0.1:7450"
[reserve]
memory_bytes = 100663296
"#;

    const JOIN: &str = r#"
orchestrator = "orch.example.net:7443"
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
name = "pi-7"
location = { lat = 48.1, lon = 11.6 }
labels = { site = "munich" }
"#;

    #[test]
    fn packaged_config_is_completed_by_the_join_file() {
        let file = ConfigFile::from_toml(PACKAGED).expect("valid");
        assert_eq!(file.join_files().len(), 2);
        assert_eq!(
            file.status_listen(),
            Some("127.0.0.1:7450".parse().expect("addr"))
        );
        let err = file.complete(None).expect_err("no name yet").to_string();
        assert_eq!(err, "name: is not set here, and no join file provided it");

        let join = JoinFile::from_bytes(JOIN.as_bytes()).expect("valid join file");
        let c = file.complete(Some(&join)).expect("complete");
        assert_eq!(c.name(), "pi-7");
        assert_eq!(c.orchestrator().to_string(), "orch.example.net:7443");
        assert_eq!(c.labels()["site"], "munich");
        assert_eq!(c.location().map(|l| l.lat), Some(48.1));
        assert_eq!(c.join().map(|j| j.token.id()), Some("abcdef"));
        assert_eq!(c.reserve().memory_bytes, 100_663_296);
        assert_eq!(
            c.reserve().disk_bytes,
            Reserve::default().disk_bytes,
            "unset fields keep their default"
        );
    }

    #[test]
    fn the_config_file_wins_over_the_join_file() {
        let join = JoinFile::from_bytes(JOIN.as_bytes()).expect("valid join file");
        let c = ConfigFile::from_toml(EXAMPLE)
            .expect("valid")
            .complete(Some(&join))
            .expect("complete");
        assert_eq!(c.name(), "shop-berlin-1");
        assert_eq!(c.labels()["site"], "berlin");
        assert_eq!(
            c.orchestrator().to_string(),
            "orchestrator.example.net:7443"
        );
    }

    #[test]
    fn a_complete_config_without_a_join_file_says_what_is_missing() {
        let no_name = EXAMPLE.replace("name = \"shop-berlin-1\"\n", "");
        assert_eq!(invalid_field(&no_name, "name"), "is not set");
        let no_address = EXAMPLE.replace("address = \"orchestrator.example.net:7443\"\n", "");
        assert_eq!(
            invalid_field(&no_address, "orchestrator.address"),
            "is not set"
        );
    }

    #[test]
    fn bad_provisioning_fields() {
        let field = |toml: &str| match ConfigFile::from_toml(toml) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        };
        let with = |from: &str, to: &str| {
            assert!(PACKAGED.contains(from));
            PACKAGED.replacen(from, to, 1)
        };
        assert_eq!(
            field(&with("\"/boot/edge-join.toml\"", "\"boot/edge-join.toml\"")),
            "join_file[1]"
        );
        assert_eq!(
            field(&with("\"/boot/edge-join.toml\"", "\"/boot/\\u0000\"")),
            "join_file[1]"
        );
        let many = format!("join_file = [{}]", ["\"/a\""; 9].join(", "));
        assert_eq!(
            field(&with(
                "join_file = [\"/boot/firmware/edge-join.toml\", \"/boot/edge-join.toml\"]",
                &many
            )),
            "join_file"
        );
        assert_eq!(
            field(&with("127.0.0.1:7450", "localhost:7450")),
            "status_listen"
        );
        assert_eq!(
            field(&with("memory_bytes = 100663296", "memory_bytes = -1")),
            "reserve.memory_bytes"
        );
        assert!(matches!(
            ConfigFile::from_toml(&with("memory_bytes", "memroy_bytes")),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn join_file_errors_name_the_field_and_keep_the_secret() {
        let bad = |from: &str, to: &str| {
            assert!(JOIN.contains(from));
            match JoinFile::from_bytes(JOIN.replacen(from, to, 1).as_bytes()) {
                Err(ConfigError::Invalid { field, reason }) => {
                    assert!(!reason.contains("0123456789abcdef0123"), "{reason}");
                    field
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        };
        assert_eq!(bad("abcdef.0123", "abcdef_0123"), "token");
        assert_eq!(bad("sha256:0011", "sha256:zz11"), "ca_hash");
        assert_eq!(
            bad("orch.example.net:7443", "orch.example.net"),
            "orchestrator"
        );
        assert_eq!(bad("pi-7", "-pi-7"), "name");
        assert_eq!(bad("lat = 48.1", "lat = nan"), "location.lat");
        assert_eq!(bad("site = ", "\"s i t e\" = "), "labels.\"s i t e\"");
        assert!(matches!(
            JoinFile::from_bytes(b"token = \"x\""),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            JoinFile::from_bytes(format!("version = 9\n{JOIN}").as_bytes()),
            Err(ConfigError::Invalid { field, .. }) if field == "version"
        ));
        assert!(matches!(
            JoinFile::from_bytes(&vec![b'#'; MAX_JOIN_FILE_BYTES + 1]),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_join_files_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = JoinFile::from_bytes(&bytes);
        }
    }
}
