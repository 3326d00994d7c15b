//! Prometheus metrics, and the operator-facing events that bump them.
//!
//! An [`Event`] emits its log line and its metric together, so the two never drift. Every
//! series of a label from a fixed set exists from the start, at 0, so a dashboard or an alert
//! sees a family before its first event. [`Metrics::encode`] writes the text format 0.0.4
//! that `/metrics` serves by default; [`Metrics::encode_as`] also writes OpenMetrics, for a
//! scraper that asks for it (see [`edge_shell::exposition`]).

use edge_proto::RejectCode;
use edge_shell::exposition::{self, Format};
use orchestrator_core::session::Event;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

/// A label whose value comes from a fixed set in this crate, never from a peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FixedReason {
    pub reason: &'static str,
}

/// Why a connection never became a session: the `reason` of `edge_handshake_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The TLS handshake failed (a bad or unknown certificate, a wrong CA).
    Tls,
    /// The peer closed the connection during the handshake.
    PeerClosed,
    Timeout,
    /// The client certificate does not name a node.
    NoNodeInCertificate,
    Other,
}

impl HandshakeFailure {
    /// Every failure, each a series of `edge_handshake_failures`.
    pub const ALL: [HandshakeFailure; 5] = [
        Self::Tls,
        Self::PeerClosed,
        Self::Timeout,
        Self::NoNodeInCertificate,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::PeerClosed => "peer_closed",
            Self::Timeout => "timeout",
            Self::NoNodeInCertificate => "no_node_in_certificate",
            Self::Other => "other",
        }
    }
}

/// How much of a peer's text a log line carries.
const MAX_DETAIL_CHARS: usize = 200;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStatus {
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

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
    let exact = status.to_string();
    if let Some(code) = API_STATUSES.iter().find(|c| **c == exact) {
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

/// Every metric the orchestrator exports.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
    pub nodes: Family<NodeStatus, Gauge>,
    pub sessions_active: Gauge,
    pub sessions_opened: Counter,
    pub session_rejections: Family<Reason, Counter>,
    pub frames: Family<Direction, Counter>,
    pub enrollments: Counter,
    pub enrollment_failures: Family<Reason, Counter>,
    pub handshake_failures: Family<FixedReason, Counter>,
    pub api_requests: Family<Code, Counter>,
    pub workload_deploys: Counter,
    pub admission_refusals: Counter,
    pub instance_transitions: Family<StateLabel, Counter>,
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
            "edge_instance_transitions",
            "Workload instances entering a state, as their nodes report",
            m.instance_transitions.clone(),
        );
        m.initialise_series();
        m
    }

    /// Creates every series of every label from a fixed set, at 0.
    fn initialise_series(&self) {
        for status in ["online", "offline"] {
            self.nodes.get_or_create(&NodeStatus { status }).set(0);
        }
        for code in RejectCode::ALL {
            let reason = Reason {
                reason: code.as_str().to_owned(),
            };
            self.session_rejections.get_or_create(&reason).inc_by(0);
            self.enrollment_failures.get_or_create(&reason).inc_by(0);
        }
        for failure in HandshakeFailure::ALL {
            let reason = failure.as_str();
            self.handshake_failures
                .get_or_create(&FixedReason { reason })
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
                    .get_or_create(&Reason {
                        reason: code.as_str().to_owned(),
                    })
                    .inc();
                warn!(reason = %code, detail = %detail, "enrollment rejected");
            }
            Event::SessionOpened { node, version } => {
                self.sessions_opened.inc();
                self.sessions_active.inc();
                info!(node = %node, version, "node online");
            }
            Event::SessionRejected { node, code, detail } => {
                self.session_rejections
                    .get_or_create(&Reason {
                        reason: code.as_str().to_owned(),
                    })
                    .inc();
                match node {
                    Some(node) => {
                        warn!(node = %node, reason = %code, detail = %detail, "session rejected")
                    }
                    None => warn!(reason = %code, detail = %detail, "session rejected"),
                }
            }
            Event::SessionClosed { node } => {
                self.sessions_active.dec();
                info!(node = %node, "node offline");
            }
            Event::CapabilitiesChanged { node } => {
                info!(node = %node, "node capabilities changed");
            }
        }
    }

    /// A connection that never got as far as a session: bad certificate, wrong CA, timeout.
    /// `detail` may be the peer's own text: it goes to the log, cut short, never to a label.
    pub fn handshake_failed(
        &self,
        failure: HandshakeFailure,
        detail: &str,
        remote: std::net::SocketAddr,
    ) {
        let reason = failure.as_str();
        self.handshake_failures
            .get_or_create(&FixedReason { reason })
            .inc();
        let detail: String = detail.chars().take(MAX_DETAIL_CHARS).collect();
        warn!(%remote, reason, detail = %detail.escape_debug(), "handshake failed");
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
