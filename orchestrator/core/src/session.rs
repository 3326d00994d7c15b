//! One node connection, as a state machine without I/O.
//!
//! Inputs: the peer's certificate identity (fixed when the connection opens), frame bodies, the
//! time. Outputs: [`Action`]s, in the order the caller must carry them out: persist before
//! sending, so that a node never holds a certificate the orchestrator has not stored.
//!
//! It never reads the clock and never touches a socket; `tests/` drives it over a simulated
//! link exactly as the orchestrator's QUIC server drives it. Certificates are signed by a
//! [`NodeSigner`] the caller provides (the shell's CA), so no certificate library is linked
//! here either.

use crate::fleet::{Change, EnrollError, Fleet, SessionId};
use edge_proto::{
    AdmissionReply, Der, EnrollRequest, Enrolled, Hello, Intent, NodeId, NodeMsg, OrchMsg, Reject,
    RejectCode, Welcome, WorkloadReport, decode, negotiate_version, text,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this record to the store before doing anything that follows.
    Persist(Change),
    Send(OrchMsg),
    /// Close this connection (after sending what came before). `None` is a normal close.
    Close(Option<RejectCode>, String),
    /// Close an older connection of the same node: this one replaced it.
    CloseReplaced(SessionId),
    /// Report something an operator would want to see: a log line and a metric.
    Event(Event),
    /// The node answered an assignment.
    Admission(NodeId, AdmissionReply),
    /// A workload instance on the node changed state.
    WorkloadReport(NodeId, WorkloadReport),
}

/// Operator-facing outcomes of a connection. See `events` for the log lines and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Enrolled {
        node: NodeId,
        name: String,
    },
    EnrollmentRejected {
        code: RejectCode,
        detail: String,
    },
    SessionOpened {
        node: NodeId,
        version: u16,
    },
    SessionRejected {
        node: Option<NodeId>,
        code: RejectCode,
        detail: String,
    },
    SessionClosed {
        node: NodeId,
    },
    CapabilitiesChanged {
        node: NodeId,
    },
}

/// Issues node certificates: the fleet CA, which lives in the shell (it links the certificate
/// library). Only the CSR's public key may be used; the subject is the node id given.
pub trait NodeSigner: std::fmt::Debug {
    /// Signs `csr_der` (PKCS#10, DER) for `node`, valid from about `wall`. Returns the
    /// certificate's DER.
    fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node: NodeId,
        wall: SystemTime,
    ) -> Result<Vec<u8>, SignError>;

    /// The CA certificate's DER, sent to the node with its own certificate.
    fn ca_der(&self) -> &[u8];
}

/// Why a node certificate was not issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The CSR does not parse or is not self-signed: the peer's fault.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// Signing failed on our side.
    #[error("signing failed: {0}")]
    Internal(String),
}

/// What a session needs from its surroundings for one input.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub fleet: &'a mut Fleet,
    pub ca: &'a dyn NodeSigner,
    /// Wall-clock time, for records and certificates. The caller reads the clock.
    pub wall: SystemTime,
    /// A fresh random id, used if this input enrolls a node.
    pub fresh_id: NodeId,
}

impl Ctx<'_> {
    fn now_unix(&self) -> u64 {
        unix_secs(self.wall)
    }
}

/// Seconds since the Unix epoch of a wall time the caller read (0 before 1970). A
/// conversion, not a clock read.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello {
        deadline: Instant,
    },
    /// An enrollment connection said hello; the request comes next.
    AwaitEnroll,
    Established {
        node: NodeId,
    },
    /// Rejected and waiting for the caller to report the close; no more input is taken.
    Closing {
        node: Option<NodeId>,
    },
    Closed,
}

/// The orchestrator's side of one connection.
#[derive(Debug)]
pub struct ServerSession {
    id: SessionId,
    /// The node id in the client certificate, `None` for an enrollment connection.
    peer: Option<NodeId>,
    state: State,
    actions: VecDeque<Action>,
}

impl ServerSession {
    pub fn new(id: SessionId, peer: Option<NodeId>, now: Instant) -> Self {
        Self {
            id,
            peer,
            state: State::AwaitHello {
                deadline: now + HELLO_TIMEOUT,
            },
            actions: VecDeque::new(),
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The node this session belongs to, once established.
    pub fn node(&self) -> Option<NodeId> {
        match self.state {
            State::Established { node } => Some(node),
            _ => None,
        }
    }

    /// Whether the session takes no more input.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Closing { .. })
    }

    /// When [`ServerSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitHello { deadline } => Some(deadline),
            _ => None,
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::AwaitHello { deadline } = self.state
            && now >= deadline
        {
            self.reject(RejectCode::Timeout, "no hello within the time limit".into());
        }
    }

    /// A frame body from the peer.
    pub fn handle_frame(&mut self, body: &[u8], ctx: &mut Ctx<'_>) {
        if self.is_closed() {
            return;
        }
        let msg: NodeMsg = match decode(body) {
            Ok(m) => m,
            Err(e) => return self.reject(RejectCode::Malformed, e.to_string()),
        };
        match (self.state, msg) {
            (State::AwaitHello { .. }, NodeMsg::Hello(hello)) => self.on_hello(hello, ctx),
            (State::AwaitEnroll, NodeMsg::Enroll(req)) => self.on_enroll(*req, ctx),
            (State::Established { node }, NodeMsg::Capabilities(caps)) => {
                match ctx.fleet.update_capabilities(node, &caps, ctx.now_unix()) {
                    Ok(Some(change)) => {
                        self.actions.push_back(Action::Persist(change));
                        self.event(Event::CapabilitiesChanged { node });
                    }
                    Ok(None) => {}
                    Err(code) => self.reject(code, "capabilities refused".into()),
                }
            }
            (State::Established { node }, NodeMsg::Status(status)) => {
                ctx.fleet.update_status(node, &status, ctx.now_unix());
            }
            (State::Established { node }, NodeMsg::Runtime(info)) => {
                if let Some(change) = ctx.fleet.update_runtime(node, info) {
                    self.actions.push_back(Action::Persist(change));
                }
            }
            (State::Established { node }, NodeMsg::Admission(reply)) => {
                self.actions.push_back(Action::Admission(node, *reply));
            }
            (State::Established { node }, NodeMsg::Workload(report)) => {
                self.actions
                    .push_back(Action::WorkloadReport(node, *report));
            }
            (_, other) => self.reject(
                RejectCode::Malformed,
                format!("unexpected {} in this state", kind(&other)),
            ),
        }
    }

    /// The peer's bytes could not be framed (too large, truncated).
    pub fn handle_decode_error(&mut self, e: edge_proto::DecodeError) {
        if !self.is_closed() {
            self.reject(RejectCode::Malformed, e.to_string());
        }
    }

    /// The connection is gone (closed by either side, or timed out). Call exactly once.
    pub fn handle_closed(&mut self, ctx: &mut Ctx<'_>) {
        if let State::Established { node } | State::Closing { node: Some(node) } = self.state
            && self.peer == Some(node)
            && let Some(change) = ctx.fleet.close_session(node, self.id, ctx.now_unix())
        {
            self.actions.push_back(Action::Persist(change));
            self.event(Event::SessionClosed { node });
        }
        self.state = State::Closed;
    }

    fn on_hello(&mut self, hello: Hello, ctx: &mut Ctx<'_>) {
        let Some(version) = negotiate_version(&hello.versions) else {
            return self.reject(
                RejectCode::UnsupportedVersion,
                format!(
                    "node speaks {:?}, orchestrator speaks {:?}",
                    hello.versions.as_slice(),
                    edge_proto::SUPPORTED_VERSIONS
                ),
            );
        };
        match (hello.intent, self.peer) {
            (Intent::Enroll, None) => self.state = State::AwaitEnroll,
            (Intent::Session, Some(cert_id)) => {
                if let Some(claimed) = hello.node_id
                    && claimed != cert_id
                {
                    return self.reject(
                        RejectCode::IdentityMismatch,
                        format!("certificate is node {cert_id}, hello claims {claimed}"),
                    );
                }
                match ctx.fleet.open_session(cert_id, self.id, ctx.now_unix()) {
                    Ok(replaced) => {
                        if let Some(old) = replaced {
                            self.actions.push_back(Action::CloseReplaced(old));
                        }
                        self.state = State::Established { node: cert_id };
                        self.actions
                            .push_back(Action::Send(OrchMsg::Welcome(Welcome {
                                version,
                                node_id: cert_id,
                            })));
                        self.event(Event::SessionOpened {
                            node: cert_id,
                            version,
                        });
                    }
                    Err(code) => self.reject(
                        code,
                        format!("node {cert_id} is not registered here; enroll again"),
                    ),
                }
            }
            (Intent::Enroll, Some(_)) => self.reject(
                RejectCode::WrongIntent,
                "enrollment must not present a client certificate".into(),
            ),
            (Intent::Session, None) => self.reject(
                RejectCode::WrongIntent,
                "a session needs a client certificate; enroll first".into(),
            ),
        }
    }

    fn on_enroll(&mut self, req: EnrollRequest, ctx: &mut Ctx<'_>) {
        let ca = ctx.ca;
        let wall = ctx.wall;
        let result = ctx.fleet.enroll(
            &req.token,
            &req.name,
            &req.capabilities,
            ctx.fresh_id,
            unix_secs(wall),
            |id| {
                ca.sign_node_csr(req.csr_der.as_slice(), id, wall)
                    .map_err(|e| match e {
                        SignError::BadCsr(_) => EnrollError::BadCsr(e.to_string()),
                        SignError::Internal(_) => EnrollError::Internal(e.to_string()),
                    })
            },
        );
        match result {
            Ok((cert, changes)) => {
                let (Some(cert_der), Some(ca_der)) =
                    (Der::new(cert), Der::new(ca.ca_der().to_vec()))
                else {
                    return self.reject(RejectCode::Internal, "certificate too large".into());
                };
                self.actions
                    .extend(changes.into_iter().map(Action::Persist));
                self.actions
                    .push_back(Action::Send(OrchMsg::Enrolled(Enrolled {
                        node_id: ctx.fresh_id,
                        cert_der,
                        ca_der,
                    })));
                self.event(Event::Enrolled {
                    node: ctx.fresh_id,
                    name: req.name.to_string(),
                });
                // The node reconnects with its certificate; this connection is done.
                self.actions
                    .push_back(Action::Close(None, "enrolled".into()));
                self.state = State::Closed;
            }
            Err(e) => self.reject(e.reject_code(), e.to_string()),
        }
    }

    fn reject(&mut self, code: RejectCode, detail: String) {
        let enrolling = self.peer.is_none();
        self.actions.push_back(Action::Send(OrchMsg::Reject(Reject {
            code,
            message: text(&detail),
        })));
        self.event(if enrolling {
            Event::EnrollmentRejected {
                code,
                detail: detail.clone(),
            }
        } else {
            Event::SessionRejected {
                node: self.peer,
                code,
                detail: detail.clone(),
            }
        });
        self.actions.push_back(Action::Close(Some(code), detail));
        // An established session that is rejected later is still registered until the caller
        // reports the close.
        self.state = State::Closing { node: self.node() };
    }

    fn event(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }
}

fn kind(msg: &NodeMsg) -> &'static str {
    match msg {
        NodeMsg::Hello(_) => "hello",
        NodeMsg::Enroll(_) => "enroll",
        NodeMsg::Capabilities(_) => "capabilities",
        NodeMsg::Status(_) => "status",
        NodeMsg::Runtime(_) => "runtime",
        NodeMsg::Admission(_) => "admission",
        NodeMsg::Workload(_) => "workload report",
    }
}
