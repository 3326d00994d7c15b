//! What the API shows and takes: the JSON views and request bodies. Public, so that `edgectl`
//! speaks the same types.

use crate::auth::Role;
use edge_proto::digest::{Digest, to_prefixed};
use orchestrator_core::access::ApiTokenRecord;
use orchestrator_core::fleet::{AcceleratorInfo, GeoPoint, IdentityConflict, NodeRecord};
use orchestrator_core::tokens::TokenRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::time::rfc3339;

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// 32 hex digits, from the node's certificate.
    pub id: String,
    pub name: String,
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
    /// The newest position the node reported (the last fix while its receiver has none),
    /// else its config's.
    pub location: Option<GeoPoint>,
    /// Where `location` comes from and how good and how old it is; absent without one.
    #[serde(default)]
    pub location_fix: Option<LocationFixView>,
    /// `online` or `offline`.
    pub status: String,
    /// RFC 3339, UTC.
    pub last_seen: String,
    pub last_seen_unix: u64,
    /// RFC 3339, UTC.
    pub enrolled_at: String,
    pub load: Option<LoadView>,
    /// No new instances are placed here.
    #[serde(default)]
    pub cordoned: bool,
    /// The OCI runtimes the node runs containers with, best first; empty: none.
    #[serde(default)]
    pub container_runtimes: Vec<String>,
    /// The ONNX operators the node's model reader runs; empty: it runs no models.
    #[serde(default)]
    pub model_operators: Vec<String>,
    /// Another machine presents this node's identity; absent when none did lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictView>,
    /// What the node's proxy last reported, by route; absent when it has not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyView>,
}

/// Another machine presented this node's identity while the node's session was live (a
/// cloned SD card or data dir), and its sessions were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictView {
    /// RFC 3339, UTC: the first and the last session refused.
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_unix: u64,
    /// Sessions refused so far.
    pub refused: u64,
    /// Where the last refused session came from.
    pub remote: Option<String>,
    /// What to do about it.
    pub message: String,
}

impl From<&IdentityConflict> for ConflictView {
    fn from(c: &IdentityConflict) -> Self {
        Self {
            first_seen: rfc3339(c.first_unix),
            last_seen: rfc3339(c.last_unix),
            last_seen_unix: c.last_unix,
            refused: c.refused,
            remote: c.remote.map(|r| r.to_string()),
            message: "another machine presents this node's identity and is refused while this \
                      node's session is live; one of them is a copy: enroll the copy again \
                      (delete its identity/ and give it a new join token and name)"
                .into(),
        }
    }
}

/// Where a node's location comes from and how good and how old it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationFixView {
    /// `gpsd` or `fixed` (the node's config, or its fallback while a receiver has no fix).
    pub source: String,
    /// `3d`, `2d`, or `none`: no fix now, `location` is the last one (`fix_time` says
    /// when), and placement treats the node's location as unknown.
    pub quality: String,
    /// The receiver's estimate of its horizontal error, in metres.
    pub accuracy_m: Option<f32>,
    /// RFC 3339, UTC: when the receiver took the fix, on its clock.
    pub fix_time: Option<String>,
    /// RFC 3339, UTC: when the node reported it, on its clock.
    pub reported_at: Option<String>,
    /// Seconds from the fix (or the report, without one) to now.
    pub age_secs: Option<u64>,
}

impl LocationFixView {
    /// The fix of `node` at `now_unix`: its newest position, or its config's point.
    pub fn of(node: &NodeRecord, now_unix: u64) -> Option<Self> {
        let Some(p) = &node.position else {
            return node.info.location.map(|_| Self {
                source: "fixed".into(),
                quality: "none".into(),
                accuracy_m: None,
                fix_time: None,
                reported_at: None,
                age_secs: None,
            });
        };
        let taken_ms = p.point.fix_ms.unwrap_or(p.at_ms);
        Some(Self {
            source: p.point.source.clone(),
            quality: p.point.quality.clone(),
            accuracy_m: p.point.accuracy_m,
            fix_time: p.point.fix_ms.map(|ms| rfc3339(ms / 1000)),
            reported_at: Some(rfc3339(p.at_ms / 1000)),
            age_secs: Some(now_unix.saturating_sub(taken_ms / 1000)),
        })
    }
}

/// The node's last status report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadView {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub disk_free_bytes: u64,
    pub uptime_secs: u64,
}

impl NodeView {
    pub fn new(node: &NodeRecord, online: bool) -> Self {
        let info = &node.info;
        Self {
            id: node.id.to_string(),
            name: node.name.clone(),
            arch: info.arch.clone(),
            os: info.os.clone(),
            os_version: info.os_version.clone(),
            kernel: info.kernel.clone(),
            hostname: info.hostname.clone(),
            cpus: info.cpus,
            cpu_model: info.cpu_model.clone(),
            memory_bytes: info.memory_bytes,
            disk_bytes: info.disk_bytes,
            disk_free_bytes: info.disk_free_bytes,
            accelerators: info.accelerators.clone(),
            board: info.board.clone(),
            labels: info.labels.clone(),
            location: node
                .position
                .as_ref()
                .map(|p| GeoPoint {
                    lat: p.point.lat,
                    lon: p.point.lon,
                    alt_m: p.point.alt_m,
                })
                .or(info.location),
            location_fix: LocationFixView::of(node, crate::clock::now_unix()),
            status: if online { "online" } else { "offline" }.to_owned(),
            last_seen: rfc3339(node.last_seen_unix),
            last_seen_unix: node.last_seen_unix,
            enrolled_at: rfc3339(node.enrolled_unix),
            load: node.load.map(|l| LoadView {
                cpu_percent: l.cpu_percent,
                memory_used_bytes: l.memory_used_bytes,
                disk_free_bytes: l.disk_free_bytes,
                uptime_secs: l.uptime_secs,
            }),
            cordoned: node.cordoned,
            container_runtimes: info.container_runtimes.clone(),
            model_operators: info.model_operators.clone(),
            conflict: None,
            proxy: None,
        }
    }

    /// The view with the node's identity conflict, if there is one.
    pub fn with_conflict(mut self, conflict: Option<&IdentityConflict>) -> Self {
        self.conflict = conflict.map(ConflictView::from);
        self
    }
}

/// An optional field that, when present, must hold a value: `null` is refused, as the
/// OpenAPI document says (these fields are not `nullable`). Absent is `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `POST /v1/tokens`: a join token for nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A duration such as `90s`, `15m`, `1h`, `7d`. Default 1h, at most 30d.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<String>,
    /// The same in seconds; give one of `ttl` and `ttl_secs`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_secs: Option<u64>,
    /// How many nodes may join with it: 1 to 10000, default 1.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub uses: Option<u32>,
    /// At most 200 characters, none of them a control character.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub description: Option<String>,
}

/// A join token, as created. The token text is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// `ID.SECRET`, for the node's `[join] token`.
    pub token: String,
    /// `sha256:...` of the fleet CA, for the node's `[join] ca_hash`.
    pub ca_hash: String,
    pub id: String,
    pub expires_at: String,
    pub expires_unix: u64,
    pub uses: u32,
    pub description: String,
}

/// A join token as listed: never the secret nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub expires_unix: u64,
    pub uses_left: u32,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            id: t.id.clone(),
            description: t.description.clone(),
            created_at: rfc3339(t.created_unix),
            expires_at: rfc3339(t.expires_unix),
            expires_unix: t.expires_unix,
            uses_left: t.uses_left,
        }
    }
}

/// `POST /v1/api-tokens`: a `viewer` or `operator` token; admin tokens are not issued through
/// the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    pub role: Role,
    /// Who it is for, e.g. `ci` or `grafana`: 1 to 64 printable characters.
    pub subject: String,
    /// A duration such as `24h`; default 24h, at most 365d.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<String>,
    /// The same in seconds; give one of `ttl` and `ttl_secs`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_secs: Option<u64>,
}

/// An API token, as issued. The token text is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenCreated {
    /// The bearer token (a JWT).
    pub token: String,
    /// Its id, for `DELETE /v1/api-tokens/{id}`.
    pub id: String,
    pub role: Role,
    pub subject: String,
    pub expires_at: String,
    pub expires_unix: u64,
}

/// An API token as listed: never its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenView {
    /// The token's `jti`.
    pub id: String,
    pub role: Role,
    pub subject: String,
    /// Who issued it: an admin's subject, or `edge-orchestrator` for the admin token.
    pub issued_by: String,
    /// RFC 3339, UTC.
    pub issued_at: String,
    pub issued_unix: u64,
    pub expires_at: String,
    pub expires_unix: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl ApiTokenView {
    pub fn new(r: &ApiTokenRecord, now_unix: u64) -> Self {
        Self {
            id: r.id.clone(),
            role: r.role,
            subject: r.subject.clone(),
            issued_by: r.issued_by.clone(),
            issued_at: rfc3339(r.issued_unix),
            issued_unix: r.issued_unix,
            expires_at: rfc3339(r.expires_unix),
            expires_unix: r.expires_unix,
            revoked_at: r.revoked_unix.map(rfc3339),
            state: r.state(now_unix).as_str().to_owned(),
        }
    }
}

/// A workload as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadView {
    pub name: String,
    pub version: String,
    /// Grows with every change of the spec.
    pub generation: u64,
    /// `replicas` or `per-node`.
    pub placement: String,
    /// Instances wanted: the replicas, or for per-node the nodes that match.
    pub wanted: u32,
    /// Instances whose node reports them running.
    pub running: u32,
    pub instances: Vec<InstanceView>,
    /// Nodes that refused the admission, with their reason.
    pub refusals: Vec<RefusalView>,
    /// When fewer instances are placed than wanted: why each node without one has none.
    pub unplaced: Vec<UnplacedView>,
    /// Instances whose node was away longer than `max_disconnect_secs` and that were placed
    /// again elsewhere, kept on record until their node returns and the workload's
    /// `reconcile` rule keeps one of the two. Not in `instances`: they do not count.
    #[serde(default)]
    pub replaced: Vec<ReplacedView>,
    pub spec: serde_json::Value,
    /// Its route's traffic summed over the nodes' proxies; absent until one reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficView>,
}

/// One instance: where it is and what its node last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The node's name.
    pub node: String,
    pub node_id: String,
    /// `pending` (assigned, not yet answered), `admitted`, then what the node reports:
    /// `downloading`, `starting`, `running`, `unhealthy`, `backoff`, `failed`, `stopped`.
    pub state: String,
    pub restarts: u32,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub message: String,
    /// The spec generation the state describes.
    pub generation: u64,
    /// When the node last reported (RFC 3339), if it has.
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusalView {
    pub node: String,
    pub node_id: String,
    pub reason: String,
}

/// An instance replaced while its node was away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacedView {
    /// The node that was away, by name.
    pub node: String,
    pub node_id: String,
    /// The node the replacement went to.
    pub replacement: String,
    pub replacement_id: String,
}

/// Why a node has no instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnplacedView {
    pub node: String,
    pub node_id: String,
    /// For a person, e.g. `memory: 1048576 bytes free, 33554432 wanted`.
    pub reason: String,
    /// The same as data: `{"reason": "memory", "free": .., "want": ..}`.
    pub detail: serde_json::Value,
}

/// The content type an upload must carry.
pub const ARTIFACT_CONTENT_TYPE: &str = "application/octet-stream";

/// An artifact as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactView {
    /// `sha256:` and 64 lowercase hex digits: what a workload's `artifact` names.
    pub digest: String,
    pub size: u64,
}

impl ArtifactView {
    pub fn new(digest: &Digest, size: u64) -> Self {
        Self {
            digest: to_prefixed(digest),
            size,
        }
    }
}

/// A node's proxy traffic, as it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyView {
    pub routes: Vec<RouteTrafficView>,
    /// RFC 3339, UTC: when the report came.
    pub reported_at: String,
}

/// One route's counters on one node, since its proxy started counting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTrafficView {
    pub route: String,
    #[serde(flatten)]
    pub traffic: TrafficCountsView,
}

/// A workload's route, summed over the nodes that reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficView {
    #[serde(flatten)]
    pub traffic: TrafficCountsView,
    /// RFC 3339, UTC: the latest of the reports summed.
    pub reported_at: String,
}

/// Answers by cache outcome, 5xx answers, retries, breaker openings, and latency quantiles
/// (milliseconds, from the proxies' histograms; `null` before any answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficCountsView {
    pub requests: u64,
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub revalidated: u64,
    /// Past the cache or not storable.
    pub bypass: u64,
    pub errors_5xx: u64,
    pub retries: u64,
    pub breaker_opens: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl From<&orchestrator_core::traffic::Counts> for TrafficCountsView {
    fn from(c: &orchestrator_core::traffic::Counts) -> Self {
        let summary = c.summary();
        Self {
            requests: c.requests,
            hit: c.hit,
            miss: c.miss,
            stale: c.stale,
            revalidated: c.revalidated,
            bypass: c.bypass,
            errors_5xx: c.errors_5xx,
            retries: c.retries,
            breaker_opens: c.breaker_opens,
            p50_ms: summary.p50_ms,
            p99_ms: summary.p99_ms,
        }
    }
}

impl From<&orchestrator_core::traffic::NodeTraffic> for ProxyView {
    fn from(t: &orchestrator_core::traffic::NodeTraffic) -> Self {
        Self {
            routes: t
                .routes
                .iter()
                .map(|(route, counts)| RouteTrafficView {
                    route: route.clone(),
                    traffic: counts.into(),
                })
                .collect(),
            reported_at: rfc3339(t.reported_unix),
        }
    }
}
