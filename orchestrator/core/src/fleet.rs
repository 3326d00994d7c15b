//! The fleet registry: which nodes exist, what they are, which are online, and the join tokens.
//!
//! Pure state: every method takes `now` and returns the [`Change`]s the caller must persist.
//! It never does I/O and never reads the clock, so the simulation drives it exactly as the
//! server does. Online means "has a live session": the QUIC connection's idle timeout, not a
//! timer here, decides when a silent node is gone.

use crate::events::TrackPoint;
use crate::tokens::{self, TokenError, TokenRecord};
use edge_proto::{Capabilities, LimitsKind, NodeId, RejectCode, RuntimeInfo, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
// An address is data: `core::net` has no sockets (`std::net` is what the core must not use).
use core::net::SocketAddr;

/// Identifies one connection for the lifetime of the process.
pub type SessionId = u64;

/// What a node is, as the orchestrator keeps and shows it (the wire's [`Capabilities`] with
/// plain types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub arch: String,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub hostname: String,
    pub cpus: u16,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub accelerators: Vec<AcceleratorInfo>,
    pub board: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub location: Option<GeoPoint>,
    /// How the node enforces workload limits: `cgroup-v2`, `cgroup-v1` or `rlimit`.
    #[serde(default)]
    pub limits: Option<String>,
    /// The OCI runtimes the node runs containers with (`runc`, `crun`), best first.
    #[serde(default)]
    pub container_runtimes: Vec<String>,
    /// The ONNX operators the node's model reader runs; empty: it runs no models.
    #[serde(default)]
    pub model_operators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceleratorInfo {
    /// `gpu`, `npu`, `video`, `gpio` or `other`.
    pub kind: String,
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_m: Option<f64>,
}

/// A node's newest reported position, and when (its clock) it was reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub point: TrackPoint,
    pub at_ms: u64,
}

impl Position {
    /// Where placement and routing take the node to be: the point while it is current,
    /// else unknown.
    pub fn location(&self) -> Option<GeoPoint> {
        self.point.is_current().then_some(GeoPoint {
            lat: self.point.lat,
            lon: self.point.lon,
            alt_m: self.point.alt_m,
        })
    }
}

/// Live load from the node's last status message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub disk_free_bytes: u64,
    pub uptime_secs: u64,
    pub at_unix: u64,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(with = "hex_id")]
    pub id: NodeId,
    pub name: String,
    pub enrolled_unix: u64,
    pub last_seen_unix: u64,
    pub info: NodeInfo,
    #[serde(default)]
    pub load: Option<NodeLoad>,
    /// The operator asked for no new instances here.
    #[serde(default)]
    pub cordoned: bool,
    /// The newest position the node reported, with its source and fix; `info.location`
    /// follows it while it is current (a fix, or a fixed point).
    #[serde(default)]
    pub position: Option<Position>,
    /// The registry's revision when this version was made: a store never replaces a record
    /// with an older one, whatever order concurrent writes land in.
    #[serde(default)]
    pub rev: u64,
}

/// Another machine presented a node's identity while the node's session was live, and was
/// refused: one identity on two machines, as a copied SD card or data dir makes. Kept in
/// memory only: a clone keeps trying, so a conflict that goes on shows again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    /// When the first and the last session were refused.
    pub first_unix: u64,
    pub last_unix: u64,
    /// Sessions refused since the first.
    pub refused: u64,
    /// Where the last refused session came from, if the caller said.
    pub remote: Option<SocketAddr>,
}

/// How long a conflict is shown after the last session refused for it. A refused node tries
/// again every 5 to 10 minutes, so a conflict that goes on stays in view; one whose copy was
/// enrolled again (or switched off) leaves it after this.
pub const CONFLICT_SHOWN_SECS: u64 = 3600;

/// A record the caller must write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Token(TokenRecord),
    Node(Box<NodeRecord>),
    NodeDeleted(NodeId),
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("node name {0:?} is taken")]
    NameTaken(String),
    #[error("invalid node name {0:?}: use 1-63 of a-z, 0-9 and '-', not at either end")]
    BadName(String),
    #[error("location out of range")]
    BadLocation,
    #[error("{0}")]
    BadCsr(String),
    #[error("{0}")]
    Internal(String),
}

impl EnrollError {
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::Token(t) => t.reject_code(),
            Self::NameTaken(_) => RejectCode::NameTaken,
            Self::BadName(_) | Self::BadLocation => RejectCode::Malformed,
            Self::BadCsr(_) => RejectCode::BadCsr,
            Self::Internal(_) => RejectCode::Internal,
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: BTreeMap<NodeId, NodeRecord>,
    names: HashMap<String, NodeId>,
    tokens: BTreeMap<String, TokenRecord>,
    /// Each live session, and the protocol version it negotiated.
    sessions: HashMap<NodeId, (SessionId, u16)>,
    conflicts: HashMap<NodeId, IdentityConflict>,
    /// Grows with every change; stamped on the record the change carries.
    rev: u64,
}

impl Fleet {
    /// The registry as it was stored. Every node starts offline.
    pub fn new(tokens: Vec<TokenRecord>, nodes: Vec<NodeRecord>) -> Self {
        let mut fleet = Self {
            rev: tokens
                .iter()
                .map(|t| t.rev)
                .chain(nodes.iter().map(|n| n.rev))
                .max()
                .unwrap_or(0),
            ..Self::default()
        };
        for t in tokens {
            fleet.tokens.insert(t.id.clone(), t);
        }
        for n in nodes {
            fleet.names.insert(n.name.clone(), n.id);
            fleet.nodes.insert(n.id, n);
        }
        fleet
    }

    pub fn add_token(&mut self, mut token: TokenRecord) -> Change {
        token.rev = self.stamp();
        self.tokens.insert(token.id.clone(), token.clone());
        Change::Token(token)
    }

    fn stamp(&mut self) -> u64 {
        self.rev += 1;
        self.rev
    }

    /// The node's record, stamped with a new revision, to persist.
    fn node_change(&mut self, id: NodeId) -> Option<Change> {
        let rev = self.stamp();
        let node = self.nodes.get_mut(&id)?;
        node.rev = rev;
        Some(Change::Node(Box::new(node.clone())))
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Redeems the join token, checks the name and the node's report, and lets `sign` issue the
    /// certificate for `id`. Nothing is spent or recorded unless all of it succeeds.
    pub fn enroll<C>(
        &mut self,
        token: &str,
        name: &str,
        caps: &Capabilities,
        id: NodeId,
        now_unix: u64,
        sign: impl FnOnce(NodeId) -> Result<C, EnrollError>,
    ) -> Result<(C, Vec<Change>), EnrollError> {
        let (token_id, secret) = tokens::parse(token)?;
        let mut record = self.tokens.get(token_id).ok_or(TokenError::Bad)?.clone();
        record.redeem(secret, now_unix)?;
        if !valid_name(name) {
            return Err(EnrollError::BadName(name.to_owned()));
        }
        if self.names.contains_key(name) {
            return Err(EnrollError::NameTaken(name.to_owned()));
        }
        if caps.location.is_some_and(|l| !l.is_valid()) {
            return Err(EnrollError::BadLocation);
        }
        if self.nodes.contains_key(&id) {
            return Err(EnrollError::Internal("node id collision".into()));
        }
        let cert = sign(id)?;
        record.rev = self.stamp();
        let node = NodeRecord {
            id,
            name: name.to_owned(),
            enrolled_unix: now_unix,
            last_seen_unix: now_unix,
            info: NodeInfo::from(caps),
            load: None,
            cordoned: false,
            position: None,
            rev: self.stamp(),
        };
        self.tokens.insert(record.id.clone(), record.clone());
        self.names.insert(node.name.clone(), id);
        self.nodes.insert(id, node.clone());
        Ok((
            cert,
            vec![Change::Token(record), Change::Node(Box::new(node))],
        ))
    }

    /// The node's live session, if it has one.
    pub fn session_of(&self, id: NodeId) -> Option<SessionId> {
        self.sessions.get(&id).map(|(session, _)| *session)
    }

    /// A node with a valid certificate opened a session. Returns the session it replaces, which
    /// the caller must close: one process per identity. The caller decides first whether the
    /// node's live session, if any, may be replaced (see `session`). `version` is the
    /// protocol version the session negotiated ([`Fleet::protocol`]).
    pub fn open_session(
        &mut self,
        id: NodeId,
        session: SessionId,
        version: u16,
        now_unix: u64,
    ) -> Result<Option<SessionId>, RejectCode> {
        let node = self.nodes.get_mut(&id).ok_or(RejectCode::UnknownNode)?;
        node.last_seen_unix = now_unix;
        Ok(self
            .sessions
            .insert(id, (session, version))
            .map(|(old, _)| old))
    }

    /// The protocol version `id`'s live session negotiated.
    pub fn protocol(&self, id: NodeId) -> Option<u16> {
        self.sessions.get(&id).map(|(_, version)| *version)
    }

    /// The session ended. The node goes offline unless a newer session already replaced this
    /// one. Returns the record to persist (its last-seen time).
    pub fn close_session(
        &mut self,
        id: NodeId,
        session: SessionId,
        now_unix: u64,
    ) -> Option<Change> {
        if self.sessions.get(&id).map(|(s, _)| *s) != Some(session) {
            return None;
        }
        self.sessions.remove(&id);
        self.nodes.get_mut(&id)?.last_seen_unix = now_unix;
        self.node_change(id)
    }

    /// A session of `id` was refused because its live session is another machine's. Returns
    /// the conflict as it stands now; `None` if there is no such node.
    pub fn record_conflict(
        &mut self,
        id: NodeId,
        now_unix: u64,
        remote: Option<SocketAddr>,
    ) -> Option<&IdentityConflict> {
        if !self.nodes.contains_key(&id) {
            return None;
        }
        let conflict = self
            .conflicts
            .entry(id)
            .and_modify(|c| {
                c.last_unix = now_unix;
                c.refused += 1;
                c.remote = remote;
            })
            .or_insert(IdentityConflict {
                first_unix: now_unix,
                last_unix: now_unix,
                refused: 1,
                remote,
            });
        Some(conflict)
    }

    /// The node's identity conflict, if a session was refused for one within
    /// [`CONFLICT_SHOWN_SECS`] of `now_unix`.
    pub fn conflict(&self, id: NodeId, now_unix: u64) -> Option<&IdentityConflict> {
        self.conflicts
            .get(&id)
            .filter(|c| now_unix.saturating_sub(c.last_unix) <= CONFLICT_SHOWN_SECS)
    }

    /// New capabilities from a node. A change is returned for persisting only when the node is
    /// something else now (live disk free space alone is not worth a write).
    pub fn update_capabilities(
        &mut self,
        id: NodeId,
        caps: &Capabilities,
        now_unix: u64,
    ) -> Result<Option<Change>, RejectCode> {
        if caps.location.is_some_and(|l| !l.is_valid()) {
            return Err(RejectCode::Malformed);
        }
        let node = self.nodes.get_mut(&id).ok_or(RejectCode::UnknownNode)?;
        node.last_seen_unix = now_unix;
        let info = NodeInfo {
            limits: node.info.limits.clone(),
            container_runtimes: node.info.container_runtimes.clone(),
            model_operators: node.info.model_operators.clone(),
            // A node that reports positions is where it last said, not where its config's
            // fallback puts it.
            location: match &node.position {
                Some(p) => p.location(),
                None => NodeInfo::from(caps).location,
            },
            ..NodeInfo::from(caps)
        };
        let changed = NodeInfo {
            disk_free_bytes: node.info.disk_free_bytes,
            ..info.clone()
        } != node.info;
        node.info = info;
        Ok(if changed { self.node_change(id) } else { None })
    }

    /// A position from the node's outbox, reported at `at_ms` on its clock. Kept only when
    /// newer than the one held (a track synced after an outage arrives oldest first, and a
    /// resent batch again); the change is returned for persisting.
    pub fn update_position(
        &mut self,
        id: NodeId,
        point: &TrackPoint,
        at_ms: u64,
    ) -> Option<Change> {
        let node = self.nodes.get_mut(&id)?;
        if node.position.as_ref().is_some_and(|p| p.at_ms >= at_ms) {
            return None;
        }
        let position = Position {
            point: point.clone(),
            at_ms,
        };
        node.info.location = position.location();
        node.position = Some(position);
        self.node_change(id)
    }

    /// How the node enforces limits, which container runtimes it has and which model
    /// operators it runs. A change is returned for persisting.
    pub fn update_runtime(&mut self, id: NodeId, info: RuntimeInfo) -> Option<Change> {
        let node = self.nodes.get_mut(&id)?;
        let limits = Some(
            match info.limits {
                LimitsKind::CgroupV2 => "cgroup-v2",
                LimitsKind::CgroupV1 => "cgroup-v1",
                LimitsKind::Rlimit => "rlimit",
            }
            .to_owned(),
        );
        let runtimes: Vec<String> = info
            .container_runtimes
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect();
        let operators: Vec<String> = info
            .model_operators
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect();
        if node.info.limits == limits
            && node.info.container_runtimes == runtimes
            && node.info.model_operators == operators
        {
            return None;
        }
        node.info.limits = limits;
        node.info.container_runtimes = runtimes;
        node.info.model_operators = operators;
        self.node_change(id)
    }

    /// A status report. Kept in memory only: it is stale within one interval anyway.
    pub fn update_status(&mut self, id: NodeId, status: &Status, now_unix: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.last_seen_unix = now_unix;
            node.info.disk_free_bytes = status.disk_free_bytes;
            node.load = Some(NodeLoad {
                cpu_percent: status.cpu_percent.clamp(0.0, 100.0),
                memory_used_bytes: status.memory_used_bytes,
                disk_free_bytes: status.disk_free_bytes,
                uptime_secs: status.uptime_secs,
                at_unix: now_unix,
            });
        }
    }

    /// Forgets a node. Its certificate stops working at its next connect; the live session, if
    /// any, is returned for the caller to close.
    pub fn delete_node(&mut self, id: NodeId) -> Option<(Change, Option<SessionId>)> {
        let node = self.nodes.remove(&id)?;
        self.names.remove(&node.name);
        self.conflicts.remove(&id);
        let session = self.sessions.remove(&id).map(|(session, _)| session);
        Some((Change::NodeDeleted(id), session))
    }

    /// Cordons or uncordons a node. Returns the record to persist; `None` if there is no such
    /// node.
    pub fn set_cordoned(&mut self, id: NodeId, cordoned: bool) -> Option<Change> {
        self.nodes.get_mut(&id)?.cordoned = cordoned;
        self.node_change(id)
    }

    pub fn is_online(&self, id: NodeId) -> bool {
        self.sessions.contains_key(&id)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// A node by name or by id.
    pub fn find(&self, name_or_id: &str) -> Option<&NodeRecord> {
        self.names
            .get(name_or_id)
            .copied()
            .or_else(|| NodeId::parse(name_or_id))
            .and_then(|id| self.nodes.get(&id))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// (online, offline)
    pub fn counts(&self) -> (usize, usize) {
        let online = self.sessions.len();
        (online, self.nodes.len() - online)
    }
}

/// A DNS label: 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl From<&Capabilities> for NodeInfo {
    fn from(c: &Capabilities) -> Self {
        use edge_proto::AcceleratorKind as K;
        Self {
            arch: c.arch.to_string(),
            os: c.os.to_string(),
            os_version: c.os_version.to_string(),
            kernel: c.kernel.to_string(),
            hostname: c.hostname.to_string(),
            cpus: c.cpus,
            cpu_model: c.cpu_model.to_string(),
            memory_bytes: c.memory_bytes,
            disk_bytes: c.disk_bytes,
            disk_free_bytes: c.disk_free_bytes,
            accelerators: c
                .accelerators
                .iter()
                .map(|a| AcceleratorInfo {
                    kind: match a.kind {
                        K::Gpu => "gpu",
                        K::Npu => "npu",
                        K::Video => "video",
                        K::Gpio => "gpio",
                        K::Other => "other",
                    }
                    .to_owned(),
                    name: a.name.to_string(),
                    path: a.path.to_string(),
                })
                .collect(),
            board: c.board.as_ref().map(|b| b.to_string()),
            labels: c
                .labels
                .iter()
                .map(|l| (l.key.to_string(), l.value.to_string()))
                .collect(),
            location: c.location.map(|l| GeoPoint {
                lat: l.lat,
                lon: l.lon,
                alt_m: l.alt_m,
            }),
            limits: None,
            container_runtimes: Vec::new(),
            model_operators: Vec::new(),
        }
    }
}

/// Node ids as 32 hex digits in JSON.
pub mod hex_id {
    use edge_proto::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let s = <&str>::deserialize(d)?;
        NodeId::parse(s).ok_or_else(|| serde::de::Error::custom("node id must be 32 hex digits"))
    }
}
