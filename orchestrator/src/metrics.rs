//! Prometheus metrics, and the operator-facing events that bump them.
//!
//! An [`Event`] emits its log line and its metric together, so the two never drift.
//!
//! Every label value comes from a fixed set (`&'static str`): each distinct value is a series
//! held for the life of the process, so nothing a peer sends (a close reason, a TLS alert's
//! text, a name) ever becomes one. Such text goes to the log line, escaped and cut. Every
//! series of a fixed set exists from the start, at 0, so a dashboard or an alert sees a family
//! before its first event. [`Metrics::encode`] writes the text format 0.0.4 that `/metrics`
//! serves by default; [`Metrics::encode_as`] also writes OpenMetrics, for a scraper that asks
//! for it (see [`edge_shell::exposition`]).

use edge_proto::RejectCode;
use edge_proto::field::shown_max;
use edge_shell::exposition::{self, Format};
use orchestrator_core::scheduler::learned::{Fallback, Mode};
use orchestrator_core::session::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

/// Every reason a renewal is refused, each a series of `edge_certificate_renewal_refusals`.
const RENEW_REFUSALS: [edge_proto::RenewRefusal; 3] = [
    edge_proto::RenewRefusal::BadCsr,
    edge_proto::RenewRefusal::KeyMismatch,
    edge_proto::RenewRefusal::Internal,
];

/// Why a session, an enrollment or a handshake failed: always one of a fixed set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Why a connection never got as far as a session, as `edge_handshake_failures` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer stopped answering during the handshake.
    Timeout,
    /// Our TLS refused the peer (a certificate our CA did not sign, no common ALPN, ...).
    Tls,
    /// The peer's TLS refused us (typically a node whose `ca_hash` pins another CA).
    PeerRefusedTls,
    /// The peer closed the connection during the handshake for another reason.
    PeerClosed,
    /// The peer broke the QUIC protocol.
    Transport,
    /// The peer reset the connection: it has restarted.
    Reset,
    /// No QUIC version in common.
    VersionMismatch,
    /// We closed it (shutting down).
    LocallyClosed,
    /// No connection id left for it.
    CidsExhausted,
    /// The client certificate is valid but names no node.
    NoNodeInCertificate,
    /// A resumed TLS session whose client certificate has ended since it was first shown.
    CertificateExpired,
}

impl HandshakeFailure {
    /// Every failure, each a series of `edge_handshake_failures`.
    pub const ALL: [HandshakeFailure; 11] = [
        Self::Timeout,
        Self::Tls,
        Self::PeerRefusedTls,
        Self::PeerClosed,
        Self::Transport,
        Self::Reset,
        Self::VersionMismatch,
        Self::LocallyClosed,
        Self::CidsExhausted,
        Self::NoNodeInCertificate,
        Self::CertificateExpired,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::PeerRefusedTls => "peer_refused_tls",
            Self::PeerClosed => "peer_closed",
            Self::Transport => "transport",
            Self::Reset => "reset",
            Self::VersionMismatch => "version_mismatch",
            Self::LocallyClosed => "locally_closed",
            Self::CidsExhausted => "cids_exhausted",
            Self::NoNodeInCertificate => "no_node_in_certificate",
            Self::CertificateExpired => "certificate_expired",
        }
    }
}

/// How much of a peer's free text a log line quotes.
pub const PEER_TEXT_MAX_CHARS: usize = 128;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStatus {
    pub status: &'static str,
}

/// The `cache` of `edge_fleet_proxy_answers`: a cache outcome, from [`CACHE_OUTCOMES`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    pub cache: &'static str,
}

/// Every `cache` value of `edge_fleet_proxy_answers`.
pub const CACHE_OUTCOMES: [&str; 5] = ["hit", "miss", "stale", "revalidated", "bypass"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// The `kept` of `edge_replacements_reconciled`: which instance survived, from [`KEPT`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeptLabel {
    pub kept: &'static str,
}

/// Every `kept` value of `edge_replacements_reconciled`.
pub const KEPT: [&str; 2] = ["original", "replacement"];

/// The `mode` of `edge_syncs`: how a session's sync answered, from [`SYNC_MODES`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

/// Every `mode` of `edge_syncs`.
pub const SYNC_MODES: [&str; 2] = ["changes", "snapshot"];

/// The `kind` of `edge_sync_messages`, from [`SYNC_MESSAGES`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Every `kind` of `edge_sync_messages`: assignments, unassignments, and acknowledgements
/// of events already stored, sent again.
pub const SYNC_MESSAGES: [&str; 3] = ["assign", "unassign", "ack"];

/// The `code` of `edge_api_requests`: an answer's status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: &'static str,
}

/// The statuses the operator API answers with, each its own `code`.
const API_STATUSES: [&str; 14] = [
    "200", "201", "204", "400", "401", "403", "404", "405", "413", "414", "415", "431", "500",
    "503",
];
/// Any other status is counted under its class.
const API_STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The `code` a status is counted under.
pub fn api_code(status: u16) -> &'static str {
    if let Some(code) = API_STATUSES.iter().find(|c| c.parse() == Ok(status)) {
        return code;
    }
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        500..=599 => "5xx",
        _ => "4xx",
    }
}

/// The states an instance reports, as `edge_instance_transitions` names them.
fn instance_states() -> [&'static str; 8] {
    use edge_proto::WorkloadState as S;
    [
        S::Pending,
        S::Downloading,
        S::Starting,
        S::Running,
        S::Unhealthy,
        S::Backoff,
        S::Failed,
        S::Stopped,
    ]
    .map(orchestrator_core::deploy::state_name)
}

/// Who places workloads, each a series of `edge_orchestrator_place_mode`: the model, or the
/// fallback's reason (`no_model`, `refused`, `broken`, `drift`). A fixed set, from the core's
/// enum: never a model's or a peer's text.
pub fn place_modes() -> [Mode; 5] {
    let [a, b, c, d] = Fallback::ALL.map(Mode::Fallback);
    [Mode::Model, a, b, c, d]
}

/// Placement changed who scores, or was handed another model: the log line and the gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceModeChanged<'a> {
    pub from: Mode,
    pub to: Mode,
    /// The place model loaded (`sha256:...`), if any.
    pub model: Option<&'a str>,
    /// What failed, for a model refused at load.
    pub detail: Option<&'a str>,
}

/// The directions of `edge_frames`.
const DIRECTIONS: [&str; 2] = ["rx", "tx"];

/// Operator-facing outcomes of deploying and running workloads.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkloadEvent<'a> {
    /// A spec was deployed or changed: `placed` of `wanted` instances found a node.
    Deployed {
        workload: &'a str,
        generation: u64,
        placed: usize,
        wanted: u32,
    },
    Deleted {
        workload: &'a str,
    },
    /// A node refused an assignment; the instance goes to the next best node.
    AdmissionRefused {
        node: edge_proto::NodeId,
        workload: &'a str,
        reason: &'a str,
    },
    /// A node was away longer than the workload's `max_disconnect_secs`: its instance was
    /// placed again on `replacement`.
    Replaced {
        node: &'a str,
        workload: &'a str,
        replacement: &'a str,
        offline_secs: u64,
    },
    /// A replaced node returned and the workload's `reconcile` rule kept one instance
    /// (`kept`, one of [`KEPT`]); the one on `stopped` was unassigned.
    Reconciled {
        node: &'a str,
        workload: &'a str,
        rule: &'a str,
        kept: &'static str,
        stopped: Option<&'a str>,
    },
    /// A node reports an instance in a new state.
    InstanceState {
        node: edge_proto::NodeId,
        workload: &'a str,
        state: &'static str,
        restarts: u32,
        message: &'a str,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

/// One established session in `edge_sessions_active`: counted when made, uncounted when
/// dropped. The connection that holds it drops it when it ends, however it ends (closed by
/// either side, replaced, refused, its node deleted), so the gauge is exactly the sessions
/// alive.
#[derive(Debug)]
#[must_use = "the session is uncounted as soon as this is dropped"]
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric the orchestrator exports.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
    pub nodes: Family<NodeStatus, Gauge>,
    pub sessions_active: Gauge,
    pub sessions_opened: Counter,
    pub session_rejections: Family<ReasonLabel, Counter>,
    pub frames: Family<Direction, Counter>,
    pub enrollments: Counter,
    pub enrollment_failures: Family<ReasonLabel, Counter>,
    pub handshake_failures: Family<ReasonLabel, Counter>,
    pub identity_conflicts: Counter,
    pub handshakes_refused: Counter,
    pub api_requests: Family<Code, Counter>,
    pub workload_deploys: Counter,
    pub admission_refusals: Counter,
    pub instances_replaced: Counter,
    pub replacements_reconciled: Family<KeptLabel, Counter>,
    pub instance_transitions: Family<StateLabel, Counter>,
    pub fleet_proxy_answers: Family<CacheLabel, Counter>,
    pub fleet_proxy_errors: Counter,
    pub syncs: Family<ModeLabel, Counter>,
    pub place_mode: Family<ModeLabel, Gauge>,
    pub sync_messages: Family<KindLabel, Counter>,
    pub renewals: Counter,
    pub renewal_refusals: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self::default();
        let r = &mut m.registry;
        r.register("edge_nodes", "Registered nodes by status", m.nodes.clone());
        r.register(
            "edge_sessions_active",
            "Node sessions open now",
            m.sessions_active.clone(),
        );
        r.register(
            "edge_sessions_opened",
            "Node sessions opened",
            m.sessions_opened.clone(),
        );
        r.register(
            "edge_session_rejections",
            "Node sessions refused, by reason",
            m.session_rejections.clone(),
        );
        r.register(
            "edge_frames",
            "Protocol frames, by direction",
            m.frames.clone(),
        );
        r.register("edge_enrollments", "Nodes enrolled", m.enrollments.clone());
        r.register(
            "edge_enrollment_failures",
            "Enrollments refused, by reason",
            m.enrollment_failures.clone(),
        );
        r.register(
            "edge_handshake_failures",
            "QUIC/TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "edge_identity_conflicts",
            "Sessions refused because the node's identity is live on another machine",
            m.identity_conflicts.clone(),
        );
        r.register(
            "edge_handshakes_refused",
            "New connections refused before their handshake: too many handshakes in progress",
            m.handshakes_refused.clone(),
        );
        r.register(
            "edge_api_requests",
            "Operator API requests, by the status of the answer",
            m.api_requests.clone(),
        );
        r.register(
            "edge_workload_deploys",
            "Workload specs deployed or changed",
            m.workload_deploys.clone(),
        );
        r.register(
            "edge_admission_refusals",
            "Assignments a node refused",
            m.admission_refusals.clone(),
        );
        r.register(
            "edge_instances_replaced",
            "Instances placed again elsewhere because their node was away longer than max_disconnect_secs",
            m.instances_replaced.clone(),
        );
        r.register(
            "edge_replacements_reconciled",
            "Replaced nodes that returned, by which instance the reconcile rule kept",
            m.replacements_reconciled.clone(),
        );
        r.register(
            "edge_syncs",
            "Syncs at the start of a node's session, by whether they sent changes or a snapshot",
            m.syncs.clone(),
        );
        r.register(
            "edge_orchestrator_place_mode",
            "Who places workloads: 1 for the mode in use (model, or the fallback's reason), 0 for the others",
            m.place_mode.clone(),
        );
        r.register(
            "edge_sync_messages",
            "Messages the syncs at session start sent, by kind",
            m.sync_messages.clone(),
        );
        r.register(
            "edge_instance_transitions",
            "Workload instances entering a state, as their nodes report",
            m.instance_transitions.clone(),
        );
        r.register(
            "edge_fleet_proxy_answers",
            "Answers the nodes' proxies gave for the fleet's routes, by cache outcome, as reported",
            m.fleet_proxy_answers.clone(),
        );
        r.register(
            "edge_fleet_proxy_errors",
            "Answers with a 5xx status the nodes' proxies gave for the fleet's routes, as reported",
            m.fleet_proxy_errors.clone(),
        );
        r.register(
            "edge_certificate_renewals",
            "Node certificates renewed over a session",
            m.renewals.clone(),
        );
        r.register(
            "edge_certificate_renewal_refusals",
            "Node certificate renewals refused, by reason",
            m.renewal_refusals.clone(),
        );
        m.initialise_series();
        m
    }

    /// Creates every series of every label from a fixed set, at 0.
    fn initialise_series(&self) {
        for cache in CACHE_OUTCOMES {
            self.fleet_proxy_answers
                .get_or_create(&CacheLabel { cache })
                .inc_by(0);
        }
        for status in ["online", "offline"] {
            self.nodes.get_or_create(&NodeStatus { status }).set(0);
        }
        for code in RejectCode::ALL {
            let reason = ReasonLabel {
                reason: code.as_str(),
            };
            self.session_rejections.get_or_create(&reason).inc_by(0);
            self.enrollment_failures.get_or_create(&reason).inc_by(0);
        }
        for failure in HandshakeFailure::ALL {
            let reason = failure.as_str();
            self.handshake_failures
                .get_or_create(&ReasonLabel { reason })
                .inc_by(0);
        }
        for direction in DIRECTIONS {
            self.frames
                .get_or_create(&Direction { direction })
                .inc_by(0);
        }
        for code in API_STATUSES.into_iter().chain(API_STATUS_CLASSES) {
            self.api_requests.get_or_create(&Code { code }).inc_by(0);
        }
        for state in instance_states() {
            self.instance_transitions
                .get_or_create(&StateLabel { state })
                .inc_by(0);
        }
        for refusal in RENEW_REFUSALS {
            self.renewal_refusals
                .get_or_create(&ReasonLabel {
                    reason: refusal.as_str(),
                })
                .inc_by(0);
        }
        for kept in KEPT {
            self.replacements_reconciled
                .get_or_create(&KeptLabel { kept })
                .inc_by(0);
        }
        for mode in SYNC_MODES {
            self.syncs.get_or_create(&ModeLabel { mode }).inc_by(0);
        }
        self.set_place_mode(Mode::Fallback(Fallback::NoModel));
        for kind in SYNC_MESSAGES {
            self.sync_messages
                .get_or_create(&KindLabel { kind })
                .inc_by(0);
        }
    }

    fn set_place_mode(&self, now: Mode) {
        for mode in place_modes() {
            self.place_mode
                .get_or_create(&ModeLabel {
                    mode: mode.as_str(),
                })
                .set(i64::from(mode == now));
        }
    }

    /// Placement changed who scores (or got another model): one log line, and the gauge.
    pub fn place_mode_changed(&self, event: &PlaceModeChanged<'_>) {
        self.set_place_mode(event.to);
        let model = event.model.unwrap_or("-");
        let detail = shown_max(event.detail.unwrap_or("-"), 300);
        match event.to {
            Mode::Model => info!(
                from = %event.from,
                mode = %event.to,
                model,
                "placement uses the model"
            ),
            Mode::Fallback(reason) => warn!(
                from = %event.from,
                mode = %event.to,
                %reason,
                model,
                %detail,
                "placement uses the fallback (least allocated)"
            ),
        }
    }

    /// Logs and counts the sync that opened `node`'s session: `synced` closed it, after
    /// `acks` acknowledgements of events already stored.
    pub fn synced(&self, node: edge_proto::NodeId, synced: &edge_proto::Synced, acks: usize) {
        let mode = match synced.mode {
            edge_proto::SyncMode::Changes => SYNC_MODES[0],
            edge_proto::SyncMode::Snapshot => SYNC_MODES[1],
        };
        self.syncs.get_or_create(&ModeLabel { mode }).inc();
        for (kind, n) in [
            (SYNC_MESSAGES[0], u64::from(synced.assigned)),
            (SYNC_MESSAGES[1], u64::from(synced.unassigned)),
            (SYNC_MESSAGES[2], acks as u64),
        ] {
            self.sync_messages
                .get_or_create(&KindLabel { kind })
                .inc_by(n);
        }
        debug!(
            node = %node,
            mode,
            assigned = synced.assigned,
            unassigned = synced.unassigned,
            acks,
            events_through = ?synced.events_through,
            "session synced"
        );
    }

    /// A node's certificate renewed: its new certificate is good until `not_after_unix`.
    pub fn renewed(&self, node: edge_proto::NodeId, not_after_unix: i64) {
        self.renewals.inc();
        info!(node = %node, not_after_unix, "node certificate renewed");
    }

    /// A node's renewal refused; `detail` (what the certificate library said about its
    /// CSR) goes to the log only.
    pub fn renewal_refused(
        &self,
        node: edge_proto::NodeId,
        reason: edge_proto::RenewRefusal,
        detail: &str,
    ) {
        self.renewal_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        warn!(node = %node, %reason, detail = %shown_max(detail, 200), "certificate renewal refused");
    }

    /// Counts an operator API answer with `status`.
    pub fn api_request(&self, status: u16) {
        let code = api_code(status);
        self.api_requests.get_or_create(&Code { code }).inc();
    }

    /// Logs a workload event and counts it.
    pub fn workload(&self, event: &WorkloadEvent<'_>) {
        match event {
            WorkloadEvent::Deployed {
                workload,
                generation,
                placed,
                wanted,
            } => {
                self.workload_deploys.inc();
                info!(workload, generation, placed, wanted, "workload deployed");
            }
            WorkloadEvent::Deleted { workload } => info!(workload, "workload deleted"),
            WorkloadEvent::AdmissionRefused {
                node,
                workload,
                reason,
            } => {
                self.admission_refusals.inc();
                warn!(node = %node, workload, reason, "admission refused");
            }
            WorkloadEvent::Replaced {
                node,
                workload,
                replacement,
                offline_secs,
            } => {
                self.instances_replaced.inc();
                info!(
                    node,
                    workload,
                    replacement,
                    offline_secs,
                    "instance replaced: its node was away too long"
                );
            }
            WorkloadEvent::Reconciled {
                node,
                workload,
                rule,
                kept,
                stopped,
            } => {
                self.replacements_reconciled
                    .get_or_create(&KeptLabel { kept })
                    .inc();
                info!(
                    node,
                    workload,
                    rule,
                    kept,
                    stopped = stopped.unwrap_or("-"),
                    "replaced node returned: one instance kept"
                );
            }
            WorkloadEvent::InstanceState {
                node,
                workload,
                state,
                restarts,
                message,
            } => {
                self.instance_transitions
                    .get_or_create(&StateLabel { state })
                    .inc();
                match *state {
                    "failed" | "backoff" | "unhealthy" => {
                        warn!(node = %node, workload, state, restarts, message, "workload instance")
                    }
                    _ => info!(node = %node, workload, state, restarts, "workload instance"),
                }
            }
        }
    }

    /// Counts an established session in `edge_sessions_active` until the guard is dropped.
    pub fn session_active(&self) -> ActiveSession {
        self.sessions_active.inc();
        ActiveSession(self.sessions_active.clone())
    }

    /// Sets the node gauges; called just before a scrape.
    pub fn set_node_counts(&self, online: usize, offline: usize) {
        self.nodes
            .get_or_create(&NodeStatus { status: "online" })
            .set(online as i64);
        self.nodes
            .get_or_create(&NodeStatus { status: "offline" })
            .set(offline as i64);
    }

    pub fn frame(&self, direction: &'static str) {
        self.frames.get_or_create(&Direction { direction }).inc();
    }

    /// The Prometheus text exposition, format 0.0.4.
    pub fn encode(&self) -> String {
        self.encode_as(Format::Text004)
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        exposition::encode(&self.registry, format)
    }

    /// Logs `event` and counts it.
    pub fn emit(&self, event: &Event) {
        match event {
            Event::Enrolled { node, name } => {
                self.enrollments.inc();
                info!(node = %node, name = %name, "node enrolled");
            }
            Event::EnrollmentRejected { code, detail } => {
                self.enrollment_failures
                    .get_or_create(&ReasonLabel {
                        reason: code.as_str(),
                    })
                    .inc();
                let detail = shown_max(detail, PEER_TEXT_MAX_CHARS);
                warn!(reason = %code, %detail, "enrollment rejected");
            }
            Event::SessionOpened { node, version } => {
                self.sessions_opened.inc();
                info!(node = %node, version, "node online");
            }
            Event::SessionRejected { node, code, detail } => {
                self.session_rejections
                    .get_or_create(&ReasonLabel {
                        reason: code.as_str(),
                    })
                    .inc();
                let detail = shown_max(detail, PEER_TEXT_MAX_CHARS);
                match node {
                    Some(node) => warn!(node = %node, reason = %code, %detail, "session rejected"),
                    None => warn!(reason = %code, %detail, "session rejected"),
                }
            }
            Event::SessionClosed { node } => {
                info!(node = %node, "node offline");
            }
            Event::CapabilitiesChanged { node } => {
                info!(node = %node, "node capabilities changed");
            }
            Event::IdentityConflict {
                node,
                remote,
                refused,
            } => {
                self.identity_conflicts.inc();
                self.session_rejections
                    .get_or_create(&ReasonLabel {
                        reason: edge_proto::RejectCode::IdentityConflict.as_str(),
                    })
                    .inc();
                let remote = remote.map(|r| r.to_string()).unwrap_or_default();
                warn!(
                    node = %node,
                    %remote,
                    refused,
                    "identity conflict: another machine presents this node's identity while its \
                     session is live; refused it (enroll the copy again: delete its identity/ \
                     and give it a new join token and name)"
                );
            }
            Event::SessionReplaced { node, old } => {
                info!(node = %node, old = ?old, "node reconnected; its old connection was dead");
            }
            // A storm paces thousands of these: counted, and logged only at debug.
            Event::Paced {
                intent,
                node,
                retry_after,
            } => {
                let reason = ReasonLabel {
                    reason: edge_proto::RejectCode::Busy.as_str(),
                };
                let refused = match intent {
                    edge_proto::Intent::Session => &self.session_rejections,
                    edge_proto::Intent::Enroll => &self.enrollment_failures,
                };
                refused.get_or_create(&reason).inc();
                let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
                debug!(node = ?node, ?intent, retry_after_ms, "hello paced: busy");
            }
        }
    }

    /// A new connection refused before its handshake (too many in progress). A storm
    /// refuses thousands: counted, and logged only at debug.
    pub fn handshake_refused(&self) {
        self.handshakes_refused.inc();
        debug!("connection refused: too many handshakes in progress");
    }

    /// A connection that never got as far as a session: bad certificate, wrong CA, timeout.
    /// `detail` is what the peer or TLS said: logged, escaped and cut, never a label.
    pub fn handshake_failed(
        &self,
        reason: HandshakeFailure,
        detail: &str,
        remote: std::net::SocketAddr,
    ) {
        let reason = reason.as_str();
        self.handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
        let detail = shown_max(detail, PEER_TEXT_MAX_CHARS);
        warn!(%remote, reason, %detail, "handshake failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_text_never_becomes_a_handshake_label() {
        let metrics = Metrics::new();
        let remote = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        for i in 0..50 {
            let peer_text = format!("closed by peer {i}");
            metrics.handshake_failed(HandshakeFailure::PeerClosed, &peer_text, remote);
        }
        let text = metrics.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("edge_handshake_failures_total{"))
            .collect();
        // The fixed set, each at 0 from the start, and nothing else.
        assert_eq!(series.len(), HandshakeFailure::ALL.len(), "{text}");
        assert!(
            series.contains(&"edge_handshake_failures_total{reason=\"peer_closed\"} 50"),
            "{text}"
        );
        assert!(series.contains(&"edge_handshake_failures_total{reason=\"tls\"} 0"));
    }

    #[test]
    fn api_answers_are_counted_by_a_fixed_code() {
        assert_eq!(api_code(200), "200");
        assert_eq!(api_code(431), "431");
        assert_eq!(api_code(418), "4xx");
        assert_eq!(api_code(502), "5xx");
        assert_eq!(api_code(302), "3xx");
        let metrics = Metrics::new();
        metrics.api_request(404);
        metrics.api_request(409);
        let text = metrics.encode();
        assert!(
            text.contains("\nedge_api_requests_total{code=\"404\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nedge_api_requests_total{code=\"4xx\"} 1\n"),
            "{text}"
        );
    }
}
