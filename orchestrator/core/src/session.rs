//! One node connection, as a state machine without I/O.
//!
//! Inputs: the peer's certificate identity (fixed when the connection opens), frame bodies, the
//! time. Outputs: [`Action`]s, in the order the caller must carry them out: persist before
//! sending, so that a node never holds a certificate the orchestrator has not stored.
//!
//! It never reads the clock and never touches a socket; `tests/` drives it over a simulated
//! link exactly as the orchestrator's QUIC server drives it.
//!
//! One identity, one session. A node whose session is live and that dials again is either
//! the same machine coming back (rebooted, or on a new link, its old connection dead but not
//! yet timed out) or another machine with a copy of its identity (a cloned SD card). The
//! session tells them apart by the old connection: the caller watches it for at most
//! [`LIVENESS_WINDOW`] ([`Action::CheckLiveness`]); if the node behind it still answers,
//! the newcomer is the copy and is refused with [`RejectCode::IdentityConflict`]; if it is
//! silent or closed, the newcomer replaces it. Certificates are signed by a
//! [`NodeSigner`] the caller provides (the shell's CA), so no certificate library is linked
//! here either.

use crate::fleet::{Change, EnrollError, Fleet, SessionId};
use edge_proto::{
    AdmissionReply, Busy, Der, EnrollRequest, Enrolled, Hello, Intent, NodeId, NodeMsg, OrchMsg,
    ProxyAdvert, Reject, RejectCode, SyncState, Welcome, WorkloadReport, decode, negotiate_version,
    text,
};
use std::collections::VecDeque;
// An address is data: `core::net` has no sockets (`std::net` is what the core must not use).
use core::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// How long a new connection may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a watch of a node's established connection may take before it counts as
/// gone: twice the interval at which a live node sends at least a keep-alive
/// (`edge_proto::quic::KEEP_ALIVE`, 1 s), so a live one is heard within it even if one
/// keep-alive is lost. The caller may decide sooner: the server probes the connection, which
/// a live peer answers within a round trip, and gives up after a few unanswered probes.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(2);

/// What the caller found when it watched an established connection
/// ([`Action::CheckLiveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A packet came from its peer within the window: the node behind it is alive.
    Live,
    /// Nothing came within the window: the node went away without closing it.
    Silent,
    /// The connection is closed or gone.
    Gone,
}

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
    /// Watch `session`'s connection for up to `window` and answer with
    /// [`ServerSession::handle_liveness`]: whether its peer is still there decides between
    /// this connection and that one.
    CheckLiveness {
        session: SessionId,
        window: Duration,
    },
    /// Report something an operator would want to see: a log line and a metric.
    Event(Event),
    /// The node answered an assignment.
    Admission(NodeId, AdmissionReply),
    /// A workload instance on the node changed state.
    WorkloadReport(NodeId, WorkloadReport),
    /// The node said where peers reach its proxy (or that they cannot).
    ProxyAdvert(NodeId, ProxyAdvert),
    /// What the node's proxy counted, by route.
    Traffic(NodeId, Box<edge_proto::TrafficReport>),
    /// Events from the node's outbox: store them, then answer `OrchMsg::EventsStored` with
    /// what was stored (never before).
    StoreEvents(NodeId, Box<edge_proto::EventBatch>),
    /// Sign a new certificate for `node`, the node of this session's certificate (never one
    /// a message names), if the CSR is for the key that certificate holds; answer
    /// `OrchMsg::Renewed` or `OrchMsg::RenewRefused`. Nothing is stored: the node's record
    /// is what makes any of its certificates good, and deleting it ends them all.
    Renew(NodeId, Box<edge_proto::RenewRequest>),
    /// `node` stored the certificate of an `OrchMsg::Renewed`: during a CA rotation, count it
    /// as moved if that certificate is the new CA's and names it.
    CertificateStored(NodeId, Box<edge_proto::CertificateStored>),
    /// The node said which model operators it runs (after every welcome): send it the
    /// fleet's models it can run (see [`crate::models`]).
    OfferModels(NodeId),
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
    /// Another connection presented the identity of a node whose session is live and was
    /// refused: the identity is on two machines.
    IdentityConflict {
        node: NodeId,
        /// Where the refused connection came from.
        remote: Option<SocketAddr>,
        /// Sessions refused for this conflict so far.
        refused: u64,
    },
    /// A node's new connection replaced its old one, which was `old` (silent or gone).
    SessionReplaced {
        node: NodeId,
        old: Liveness,
    },
    /// The hello gate (`crate::pacing`) could not take this hello now; the node was told to come back
    /// after `retry_after`. Many of these are a reconnect storm being paced, not a fault.
    Paced {
        intent: Intent,
        /// The node id in the certificate, for a session.
        node: Option<NodeId>,
        retry_after: Duration,
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

/// Milliseconds since the Unix epoch of a wall time the caller read (0 before 1970).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello {
        deadline: Instant,
    },
    /// An enrollment connection said hello; the request comes next.
    AwaitEnroll,
    /// A session's hello for a node that has a live session on `established`; the caller
    /// is watching that connection.
    AwaitLiveness {
        node: NodeId,
        version: u16,
        established: SessionId,
    },
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
    /// Where the connection comes from, if the caller said: for logs and conflicts.
    remote: Option<SocketAddr>,
    state: State,
    actions: VecDeque<Action>,
    /// What the node said at hello about what it holds, until the caller takes it.
    sync: Option<Box<SyncState>>,
}

impl ServerSession {
    pub fn new(id: SessionId, peer: Option<NodeId>, now: Instant) -> Self {
        Self {
            id,
            peer,
            remote: None,
            state: State::AwaitHello {
                deadline: now + HELLO_TIMEOUT,
            },
            actions: VecDeque::new(),
            sync: None,
        }
    }

    /// Where the connection comes from, for logs and the conflicts the registry shows.
    pub fn with_remote(mut self, remote: SocketAddr) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The node this session belongs to, once established.
    /// What the node said at hello about what it holds and where its outbox stands, once:
    /// the caller answers it when the session opens. `None` if it said nothing.
    pub fn take_sync(&mut self) -> Option<SyncState> {
        self.sync.take().map(|s| *s)
    }

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
                if let Some(change) = ctx.fleet.update_runtime(node, *info) {
                    self.actions.push_back(Action::Persist(change));
                }
                self.actions.push_back(Action::OfferModels(node));
            }
            (State::Established { node }, NodeMsg::Admission(reply)) => {
                self.actions.push_back(Action::Admission(node, *reply));
            }
            (State::Established { node }, NodeMsg::Workload(report)) => {
                self.actions
                    .push_back(Action::WorkloadReport(node, *report));
            }
            (State::Established { node }, NodeMsg::Proxy(advert)) => {
                self.actions.push_back(Action::ProxyAdvert(node, advert));
            }
            (State::Established { node }, NodeMsg::Traffic(report)) => {
                self.actions.push_back(Action::Traffic(node, report));
            }
            (State::Established { node }, NodeMsg::Events(batch)) => {
                self.actions.push_back(Action::StoreEvents(node, batch));
            }
            // A node deleted while its session was up is closed by the API; one deleted
            // between that close and this frame must not get a certificate either.
            (State::Established { node }, NodeMsg::Renew(req)) => {
                if ctx.fleet.node(node).is_none() {
                    return self.reject(
                        RejectCode::UnknownNode,
                        format!("node {node} is not registered here; enroll again"),
                    );
                }
                self.actions.push_back(Action::Renew(node, req));
            }
            (State::Established { node }, NodeMsg::CertificateStored(stored)) => {
                self.actions
                    .push_back(Action::CertificateStored(node, stored));
            }
            (_, other) => self.reject(
                RejectCode::Malformed,
                format!("unexpected {} in this state", kind(&other)),
            ),
        }
    }

    /// The intent of `body` if it is this connection's hello, which nothing has answered yet,
    /// and the intent fits the connection (a session with a client certificate, an
    /// enrollment without). The caller asks its hello gate ([`crate::pacing`]) before
    /// it hands such a frame to [`ServerSession::handle_frame`], so that a hello it cannot
    /// take now costs no registry read or write. `None` for any other frame: one that does
    /// not decode, or a hello with the wrong intent, which `handle_frame` refuses at no cost
    /// and which must not spend the tokens of nodes that hold a certificate.
    pub fn hello_intent(&self, body: &[u8]) -> Option<Intent> {
        if !matches!(self.state, State::AwaitHello { .. }) {
            return None;
        }
        match (decode::<NodeMsg>(body), self.peer) {
            (Ok(NodeMsg::Hello(hello)), Some(_)) if hello.intent == Intent::Session => {
                Some(Intent::Session)
            }
            (Ok(NodeMsg::Hello(hello)), None) if hello.intent == Intent::Enroll => {
                Some(Intent::Enroll)
            }
            _ => None,
        }
    }

    /// The hello gate cannot take this connection's hello now: tell the node to come
    /// back after `retry_after` ([`OrchMsg::Busy`]), and close with [`RejectCode::Busy`].
    /// Nothing happens once the hello was answered.
    pub fn refuse_busy(&mut self, intent: Intent, retry_after: Duration) {
        if !matches!(self.state, State::AwaitHello { .. }) {
            return;
        }
        let retry_after_ms = u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX);
        self.actions
            .push_back(Action::Send(OrchMsg::Busy(Busy { retry_after_ms })));
        self.event(Event::Paced {
            intent,
            node: self.peer,
            retry_after,
        });
        self.actions.push_back(Action::Close(
            Some(RejectCode::Busy),
            format!("busy: retry after {retry_after_ms} ms"),
        ));
        self.state = State::Closing { node: None };
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
                self.sync = hello.sync;
                if let Some(claimed) = hello.node_id
                    && claimed != cert_id
                {
                    return self.reject(
                        RejectCode::IdentityMismatch,
                        format!("certificate is node {cert_id}, hello claims {claimed}"),
                    );
                }
                if ctx.fleet.node(cert_id).is_none() {
                    return self.reject(
                        RejectCode::UnknownNode,
                        format!("node {cert_id} is not registered here; enroll again"),
                    );
                }
                match ctx.fleet.session_of(cert_id) {
                    Some(established) if established != self.id => {
                        self.check_liveness(cert_id, version, established)
                    }
                    _ => self.open(cert_id, version, ctx),
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

    /// What the caller found on the connection of the node's established session, answering
    /// [`Action::CheckLiveness`]. A live one keeps the session and this connection is
    /// refused as a copy of the node; a silent or gone one is replaced by this one.
    pub fn handle_liveness(&mut self, session: SessionId, liveness: Liveness, ctx: &mut Ctx<'_>) {
        let State::AwaitLiveness {
            node,
            version,
            established,
        } = self.state
        else {
            return;
        };
        if session != established {
            return;
        }
        match ctx.fleet.session_of(node) {
            // It ended while we watched.
            None => self.open(node, version, ctx),
            // Yet another connection replaced it meanwhile: that one is the one to watch.
            Some(current) if current != established => self.check_liveness(node, version, current),
            Some(_) => match liveness {
                Liveness::Live => self.refuse_copy(node, ctx),
                Liveness::Silent | Liveness::Gone => {
                    self.event(Event::SessionReplaced {
                        node,
                        old: liveness,
                    });
                    self.open(node, version, ctx);
                }
            },
        }
    }

    fn check_liveness(&mut self, node: NodeId, version: u16, established: SessionId) {
        self.state = State::AwaitLiveness {
            node,
            version,
            established,
        };
        self.actions.push_back(Action::CheckLiveness {
            session: established,
            window: LIVENESS_WINDOW,
        });
    }

    /// Opens the node's session on this connection, replacing any other.
    fn open(&mut self, node: NodeId, version: u16, ctx: &mut Ctx<'_>) {
        match ctx
            .fleet
            .open_session(node, self.id, version, ctx.now_unix())
        {
            Ok(replaced) => {
                if let Some(old) = replaced {
                    self.actions.push_back(Action::CloseReplaced(old));
                }
                self.state = State::Established { node };
                self.actions
                    .push_back(Action::Send(OrchMsg::Welcome(Welcome {
                        version,
                        node_id: node,
                        time_ms: unix_millis(ctx.wall),
                    })));
                self.event(Event::SessionOpened { node, version });
            }
            Err(code) => self.reject(
                code,
                format!("node {node} is not registered here; enroll again"),
            ),
        }
    }

    /// The node's live session is another machine's: this one is a copy of it, or it is.
    fn refuse_copy(&mut self, node: NodeId, ctx: &mut Ctx<'_>) {
        let now = ctx.now_unix();
        let refused = ctx
            .fleet
            .record_conflict(node, now, self.remote)
            .map_or(1, |c| c.refused);
        let code = RejectCode::IdentityConflict;
        self.close_with(
            code,
            format!(
                "node {node} is connected from another machine; if this one is a copy of it, \
                 enroll it again: delete its identity/, give it a new join token and name"
            ),
            Event::IdentityConflict {
                node,
                remote: self.remote,
                refused,
            },
        );
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
        let event = if self.peer.is_none() {
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
        };
        self.close_with(code, detail, event);
    }

    /// Tells the peer why, reports `event`, and closes.
    fn close_with(&mut self, code: RejectCode, detail: String, event: Event) {
        self.actions.push_back(Action::Send(OrchMsg::Reject(Reject {
            code,
            message: text(&detail),
        })));
        self.event(event);
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
        NodeMsg::Proxy(_) => "proxy advert",
        NodeMsg::Traffic(_) => "traffic report",
        NodeMsg::Events(_) => "events",
        NodeMsg::Renew(_) => "renewal",
        NodeMsg::CertificateStored(_) => "certificate stored",
    }
}

#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "a starting instant for the virtual clock: every later time is computed from it"
)]
mod tests {
    use super::*;
    use edge_proto::{List, encode};

    fn hello(intent: Intent) -> Vec<u8> {
        encode(&NodeMsg::Hello(Hello {
            versions: List::from_iter([1]),
            intent,
            node_id: Some(NodeId([7; 16])),
            agent: text("edge-node/test"),
            sync: None,
        }))[4..]
            .to_vec()
    }

    #[test]
    fn a_paced_hello_is_told_when_to_come_back_and_closed() {
        let node = NodeId([7; 16]);
        let mut s = ServerSession::new(1, Some(node), Instant::now());
        assert_eq!(
            s.hello_intent(&hello(Intent::Session)),
            Some(Intent::Session)
        );
        // An enrollment hello on a connection with a certificate is refused as such, at no
        // cost: it is not a hello to gate.
        assert_eq!(s.hello_intent(&hello(Intent::Enroll)), None);
        let anonymous = ServerSession::new(2, None, Instant::now());
        assert_eq!(
            anonymous.hello_intent(&hello(Intent::Enroll)),
            Some(Intent::Enroll)
        );
        assert_eq!(anonymous.hello_intent(&hello(Intent::Session)), None);
        // Not a hello, or not a frame at all: the session refuses it as usual.
        let status = encode(&NodeMsg::Status(edge_proto::Status {
            cpu_percent: 1.0,
            memory_used_bytes: 1,
            disk_free_bytes: 1,
            uptime_secs: 1,
        }));
        assert_eq!(s.hello_intent(&status[4..]), None);
        assert_eq!(s.hello_intent(&[0xff; 3]), None);
        assert_eq!(s.hello_intent(&[]), None);

        s.refuse_busy(Intent::Session, Duration::from_millis(1_500));
        let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
        assert_eq!(
            actions,
            [
                Action::Send(OrchMsg::Busy(Busy {
                    retry_after_ms: 1_500
                })),
                Action::Event(Event::Paced {
                    intent: Intent::Session,
                    node: Some(node),
                    retry_after: Duration::from_millis(1_500),
                }),
                Action::Close(Some(RejectCode::Busy), "busy: retry after 1500 ms".into()),
            ]
        );
        assert!(s.is_closed());
        // Answered once: a later hello is not a hello to gate, and a second refusal is a no-op.
        assert_eq!(s.hello_intent(&hello(Intent::Session)), None);
        s.refuse_busy(Intent::Session, Duration::from_secs(1));
        assert_eq!(s.poll_action(), None);
    }

    #[test]
    fn a_wait_past_the_wire_limit_is_cut_not_wrapped() {
        let mut s = ServerSession::new(1, None, Instant::now());
        s.refuse_busy(Intent::Enroll, Duration::from_secs(u64::MAX));
        assert_eq!(
            s.poll_action(),
            Some(Action::Send(OrchMsg::Busy(Busy {
                retry_after_ms: u32::MAX
            })))
        );
    }
}
