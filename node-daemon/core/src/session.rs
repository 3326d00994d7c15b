//! The node's side of its link to the orchestrator, as a state machine without I/O.
//!
//! It decides when to dial and with which intent (enroll or session), what to say, when to
//! report status, and how long to back off after a failure (exponential, full jitter, so that a
//! fleet reconnecting after an orchestrator restart does not arrive all at once). It never
//! reads the clock, never touches a socket or a file, and draws randomness only from the seeded
//! generator it was given: `tests/` runs a thousand of these deterministically.
//!
//! Inputs are the `handle_*` methods; outputs are [`Action`]s from [`NodeSession::poll_action`]
//! and the next deadline from [`NodeSession::poll_timeout`].

pub use crate::backoff::BackoffPolicy;
use crate::backoff::{Backoff, jitter};
use edge_proto::{
    Assignment, Capabilities, Der, EnrollRequest, Enrolled, EventsStored, Hello, Intent, List,
    NodeId, NodeMsg, OrchMsg, Reject, RejectCode, RuntimeInfo, Status, SyncState, Synced, Text,
    Unassign, Unroute, WorkloadRoutes, text,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long to wait for the orchestrator's answer to a hello.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// After the orchestrator refuses us because another machine holds a live session with our
/// identity ([`RejectCode::IdentityConflict`]), the node waits at least this long before it
/// dials again, plus up to [`CONFLICT_RETRY_JITTER`] at random. Minutes: the other machine
/// does not go away by itself, a copy asking every second is load for nothing, and the
/// jitter keeps two copies refused together from coming back together.
pub const CONFLICT_RETRY_MIN: Duration = Duration::from_secs(5 * 60);
/// The random part of the wait after an identity conflict.
pub const CONFLICT_RETRY_JITTER: Duration = Duration::from_secs(5 * 60);

/// The longest a node honours the orchestrator's [`OrchMsg::Busy`] hint (it never asks for
/// more than five minutes): a wrong hint must not keep a node away for days.
pub const BUSY_WAIT_MAX: Duration = Duration::from_secs(10 * 60);

/// What the join settings give for a first start.
#[derive(Debug, Clone)]
pub struct Join {
    pub token: Text<64>,
    pub name: Text<63>,
    /// A CSR for the node's own key.
    pub csr_der: Der,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dial the orchestrator: without a client certificate to enroll, with it for a session.
    /// Answer with `handle_connected` or `handle_connect_failed`.
    Connect(Intent),
    /// Send on the current connection.
    Send(NodeMsg),
    /// Store the identity enrollment returned, then call `handle_identity_saved`.
    SaveIdentity(Enrolled),
    /// Close the current connection.
    Disconnect,
    /// Sample live load and answer with `handle_status`.
    SampleStatus,
    /// Give up: retrying unchanged cannot succeed. The operator must act.
    Fatal(Fatal),
    /// The orchestrator wants this workload here.
    Assign(Box<Assignment>),
    /// The orchestrator no longer wants this workload here.
    Unassign(Unassign),
    /// Where an exposed workload runs on other nodes: replaces what the proxy knew of it.
    Routes(Box<WorkloadRoutes>),
    /// The workload is no longer exposed: forget its peer routes.
    Unroute(Unroute),
    /// The orchestrator stored these outbox events: forget them.
    EventsStored(Box<EventsStored>),
    /// The sync that followed the welcome is over (see [`crate::sync`]).
    Synced(Synced),
    /// The orchestrator renewed the certificate: store it (see `crate::renewal`).
    Renewed(Box<edge_proto::Renewed>),
    /// The orchestrator refused a renewal; the session goes on.
    RenewRefused(Box<edge_proto::RenewRefused>),
    /// The fleet's model for a purpose: fetch it and use it in place of the one before.
    Model(Box<edge_proto::FleetModel>),
}

/// Why the node stopped trying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// The orchestrator refused us for a reason that retrying will not change.
    #[error("orchestrator rejected the node ({code}): {message}")]
    Rejected { code: RejectCode, message: String },
    /// Not enrolled, and no join settings to enroll with.
    #[error("the node is not enrolled and its config has no [join] section")]
    NoJoinSettings,
    /// The server is not the one the node trusts (wrong CA hash or wrong address).
    #[error("{0}")]
    Untrusted(String),
}

/// Why a dial failed, as the shell classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Unreachable, timed out, refused: try again later.
    Transient(String),
    /// The server's certificate does not chain to the CA we pin.
    Untrusted(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Waiting until `until` before dialing.
    Backoff {
        until: Instant,
    },
    Dialing,
    AwaitAnswer {
        deadline: Instant,
    },
    /// Enrollment returned an identity; the shell is storing it.
    Saving,
    Established {
        next_status: Instant,
    },
    Stopped,
}

/// The node's link state.
#[derive(Debug)]
pub struct NodeSession {
    node_id: Option<NodeId>,
    join: Option<Join>,
    agent: Text<64>,
    status_interval: Duration,
    /// Between dial attempts; reset by every welcome.
    backoff: Backoff,
    rng: fastrand::Rng,
    caps: Capabilities,
    /// What the orchestrator has from us on this connection.
    caps_sent: Option<Capabilities>,
    /// How this node enforces workload limits, reported after every welcome.
    runtime: Option<RuntimeInfo>,
    state: State,
    actions: VecDeque<Action>,
    /// What the next session's hello says about what the node holds.
    sync: Option<Box<SyncState>>,
}

impl NodeSession {
    /// A node that dials at once. `node_id` is `Some` if it is enrolled.
    pub fn new(
        node_id: Option<NodeId>,
        join: Option<Join>,
        caps: Capabilities,
        status_interval: Duration,
        backoff: BackoffPolicy,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut s = Self {
            node_id,
            join,
            agent: text(concat!("edge-node/", env!("CARGO_PKG_VERSION"))),
            status_interval,
            backoff: Backoff::new(backoff),
            rng: fastrand::Rng::with_seed(seed),
            caps,
            caps_sent: None,
            runtime: None,
            state: State::Backoff { until: now },
            actions: VecDeque::new(),
            sync: None,
        };
        if s.node_id.is_none() && s.join.is_none() {
            s.stop(Fatal::NoJoinSettings);
        }
        s
    }

    /// Reports how the node enforces workload limits after every welcome.
    pub fn with_runtime(mut self, runtime: RuntimeInfo) -> Self {
        self.runtime = Some(runtime);
        self
    }

    pub fn node_id(&self) -> Option<NodeId> {
        self.node_id
    }

    /// Whether a session is up.
    /// What the hello of the next session says about what the node holds and where its
    /// outbox stands (see [`crate::sync::state`]). The shell sets it before each dial; a
    /// session without it gets a snapshot.
    pub fn set_sync(&mut self, sync: SyncState) {
        self.sync = Some(Box::new(sync));
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Dialing, or connected and waiting for the answer to its hello.
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Dialing | State::AwaitAnswer { .. })
    }

    /// When it dials again, while it is backing off after a failed or refused attempt.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            _ => None,
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::AwaitAnswer { deadline } => Some(deadline),
            State::Established { next_status } => Some(next_status),
            State::Dialing | State::Saving | State::Stopped => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Backoff { until } if now >= until => {
                self.state = State::Dialing;
                let intent = if self.node_id.is_some() {
                    Intent::Session
                } else {
                    Intent::Enroll
                };
                self.actions.push_back(Action::Connect(intent));
            }
            State::AwaitAnswer { deadline } if now >= deadline => {
                self.actions.push_back(Action::Disconnect);
                self.retry_later(now);
            }
            State::Established { next_status } if now >= next_status => {
                self.state = State::Established {
                    next_status: now + self.status_interval,
                };
                self.actions.push_back(Action::SampleStatus);
            }
            _ => {}
        }
    }

    /// The dial succeeded and a stream is open: say hello (and ask to enroll).
    pub fn handle_connected(&mut self, now: Instant) {
        if self.state != State::Dialing {
            return;
        }
        let intent = if self.node_id.is_some() {
            Intent::Session
        } else {
            Intent::Enroll
        };
        self.send(NodeMsg::Hello(Hello {
            versions: List::from_iter(edge_proto::SUPPORTED_VERSIONS.iter().copied()),
            intent,
            node_id: self.node_id,
            agent: self.agent.clone(),
            sync: match intent {
                Intent::Session => self.sync.clone(),
                Intent::Enroll => None,
            },
        }));
        if intent == Intent::Enroll
            && let Some(join) = &self.join
        {
            let req = EnrollRequest {
                token: join.token.clone(),
                name: join.name.clone(),
                csr_der: join.csr_der.clone(),
                capabilities: self.caps.clone(),
            };
            self.send(NodeMsg::Enroll(Box::new(req)));
        }
        self.state = State::AwaitAnswer {
            deadline: now + ANSWER_TIMEOUT,
        };
    }

    pub fn handle_connect_failed(&mut self, failure: ConnectFailure, now: Instant) {
        if self.state != State::Dialing {
            return;
        }
        match failure {
            ConnectFailure::Transient(_) => self.retry_later(now),
            ConnectFailure::Untrusted(why) => self.stop(Fatal::Untrusted(why)),
        }
    }

    /// The connection ended, for whatever reason.
    pub fn handle_disconnected(&mut self, now: Instant) {
        match self.state {
            State::Dialing | State::AwaitAnswer { .. } | State::Established { .. } => {
                self.retry_later(now)
            }
            State::Backoff { .. } | State::Saving | State::Stopped => {}
        }
    }

    /// A message from the orchestrator.
    pub fn handle_msg(&mut self, msg: OrchMsg, now: Instant) {
        match (self.state, msg) {
            (State::AwaitAnswer { .. }, OrchMsg::Welcome(w)) if self.node_id == Some(w.node_id) => {
                self.backoff.reset();
                self.caps_sent = None;
                self.state = State::Established { next_status: now };
                self.send_caps_if_changed();
                if let Some(runtime) = self.runtime.clone() {
                    self.send(NodeMsg::Runtime(Box::new(runtime)));
                }
                // Report load at once, then every interval.
                self.handle_timeout(now);
            }
            (State::Established { .. }, OrchMsg::Assign(a)) => {
                self.actions.push_back(Action::Assign(a));
            }
            (State::Established { .. }, OrchMsg::Unassign(u)) => {
                self.actions.push_back(Action::Unassign(u));
            }
            (State::Established { .. }, OrchMsg::Routes(r)) => {
                self.actions.push_back(Action::Routes(r));
            }
            (State::Established { .. }, OrchMsg::Unroute(u)) => {
                self.actions.push_back(Action::Unroute(u));
            }
            (State::Established { .. }, OrchMsg::EventsStored(stored)) => {
                self.actions.push_back(Action::EventsStored(stored));
            }
            (State::Established { .. }, OrchMsg::Synced(synced)) => {
                self.actions.push_back(Action::Synced(synced));
            }
            (State::Established { .. }, OrchMsg::Renewed(renewed)) => {
                self.actions.push_back(Action::Renewed(renewed));
            }
            (State::Established { .. }, OrchMsg::RenewRefused(refused)) => {
                self.actions.push_back(Action::RenewRefused(refused));
            }
            (State::Established { .. }, OrchMsg::Model(model)) => {
                self.actions.push_back(Action::Model(model));
            }
            (State::AwaitAnswer { .. }, OrchMsg::Enrolled(e)) if self.node_id.is_none() => {
                self.state = State::Saving;
                self.actions.push_back(Action::SaveIdentity(e));
            }
            // Too many nodes are saying hello: come back after the hint, never sooner, plus a
            // partial jitter of up to a quarter of it from the session's seeded draw, so that
            // nodes given the same hint do not return together. The backoff neither grows
            // nor resets: being paced is not a failure of the link.
            (State::AwaitAnswer { .. }, OrchMsg::Busy(busy)) => {
                self.actions.push_back(Action::Disconnect);
                let hint = Duration::from_millis(busy.retry_after_ms.into()).min(BUSY_WAIT_MAX);
                let wait = hint + jitter(hint / 4, self.rng.u64(..));
                self.state = State::Backoff { until: now + wait };
            }
            (_, OrchMsg::Reject(Reject { code, message })) => {
                self.actions.push_back(Action::Disconnect);
                if code == RejectCode::IdentityConflict {
                    let wait = CONFLICT_RETRY_MIN + jitter(CONFLICT_RETRY_JITTER, self.rng.u64(..));
                    self.state = State::Backoff { until: now + wait };
                } else if code.retryable() {
                    self.retry_later(now);
                } else {
                    self.stop(Fatal::Rejected {
                        code,
                        message: message.to_string(),
                    });
                }
            }
            // Anything else is the orchestrator breaking protocol: drop the link and retry.
            _ => {
                self.actions.push_back(Action::Disconnect);
                self.retry_later(now);
            }
        }
    }

    /// The identity from enrollment is stored: dial again, now with the certificate.
    pub fn handle_identity_saved(&mut self, node_id: NodeId, now: Instant) {
        if self.state == State::Saving {
            self.node_id = Some(node_id);
            self.actions.push_back(Action::Disconnect);
            self.backoff.reset();
            self.state = State::Backoff { until: now };
        }
    }

    /// Storing the identity failed (disk full?). Try the whole enrollment again later.
    pub fn handle_identity_save_failed(&mut self, now: Instant) {
        if self.state == State::Saving {
            self.actions.push_back(Action::Disconnect);
            self.retry_later(now);
        }
    }

    /// Live load, answering [`Action::SampleStatus`].
    pub fn handle_status(&mut self, status: Status) {
        if self.is_established() {
            self.send(NodeMsg::Status(status));
        }
    }

    /// The node's capabilities now. Sent if they changed in a way the orchestrator cares about.
    pub fn handle_capabilities(&mut self, caps: Capabilities) {
        self.caps = caps;
        if self.is_established() {
            self.send_caps_if_changed();
        }
    }

    fn send_caps_if_changed(&mut self) {
        if self
            .caps_sent
            .as_ref()
            .is_some_and(|sent| same_identity(sent, &self.caps))
        {
            return;
        }
        self.caps_sent = Some(self.caps.clone());
        self.send(NodeMsg::Capabilities(Box::new(self.caps.clone())));
    }

    fn send(&mut self, msg: NodeMsg) {
        self.actions.push_back(Action::Send(msg));
    }

    fn retry_later(&mut self, now: Instant) {
        let delay = self.backoff.next_delay(self.rng.u64(..));
        self.state = State::Backoff { until: now + delay };
    }

    fn stop(&mut self, why: Fatal) {
        self.state = State::Stopped;
        self.actions.push_back(Action::Fatal(why));
    }
}

/// Whether `a` and `b` describe the same node, ignoring `disk_free_bytes` (which changes with
/// every write and is reported in [`Status`]). The caller re-sends capabilities when this is
/// false.
pub fn same_identity(a: &Capabilities, b: &Capabilities) -> bool {
    // Destructured without `..`, so a field appended to `Capabilities` fails to compile here
    // until someone decides whether it is identity or live load.
    let Capabilities {
        arch,
        os,
        os_version,
        kernel,
        hostname,
        cpus,
        cpu_model,
        memory_bytes,
        disk_bytes,
        disk_free_bytes: _,
        accelerators,
        board,
        labels,
        location,
    } = a;
    *arch == b.arch
        && *os == b.os
        && *os_version == b.os_version
        && *kernel == b.kernel
        && *hostname == b.hostname
        && *cpus == b.cpus
        && *cpu_model == b.cpu_model
        && *memory_bytes == b.memory_bytes
        && *disk_bytes == b.disk_bytes
        && *accelerators == b.accelerators
        && *board == b.board
        && *labels == b.labels
        && *location == b.location
}

#[cfg(test)]
// One base instant per test from the clock; the machine sees only what the test adds to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use edge_proto::Welcome;

    fn caps() -> Capabilities {
        Capabilities {
            arch: text("x86_64"),
            os: text("linux"),
            os_version: Text::new(),
            kernel: Text::new(),
            hostname: text("h"),
            cpus: 2,
            cpu_model: Text::new(),
            memory_bytes: 1,
            disk_bytes: 1,
            disk_free_bytes: 1,
            accelerators: List::new(),
            board: None,
            labels: List::new(),
            location: None,
        }
    }

    fn drain(s: &mut NodeSession) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn enrolled(seed: u64, now: Instant) -> NodeSession {
        NodeSession::new(
            Some(NodeId([1; 16])),
            None,
            caps(),
            Duration::from_secs(10),
            BackoffPolicy::default(),
            seed,
            now,
        )
    }

    #[test]
    fn a_session_says_hello_then_reports_caps_and_status_every_interval() {
        let t0 = Instant::now();
        let mut s = enrolled(1, t0);
        s.handle_timeout(t0);
        assert_eq!(drain(&mut s), vec![Action::Connect(Intent::Session)]);
        s.handle_connected(t0);
        let hello = drain(&mut s);
        assert!(
            matches!(&hello[..], [Action::Send(NodeMsg::Hello(h))] if h.node_id == Some(NodeId([1; 16])))
        );
        s.handle_msg(
            OrchMsg::Welcome(Welcome {
                version: 1,
                node_id: NodeId([1; 16]),
                time_ms: 0,
            }),
            t0,
        );
        let acts = drain(&mut s);
        assert!(matches!(acts[0], Action::Send(NodeMsg::Capabilities(_))));
        assert_eq!(acts[1], Action::SampleStatus);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // Unchanged capabilities are not sent again; changed ones are.
        s.handle_capabilities(caps());
        assert!(drain(&mut s).is_empty());
        let mut more = caps();
        more.memory_bytes = 2;
        s.handle_capabilities(more);
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Send(NodeMsg::Capabilities(_))]
        ));
    }

    #[test]
    fn runtime_follows_every_welcome_and_assignments_reach_the_shell() {
        let t0 = Instant::now();
        let runtime = RuntimeInfo {
            limits: edge_proto::LimitsKind::CgroupV2,
            container_runtimes: [text("crun"), text("runc")].into_iter().collect(),
            model_operators: [text("Gemm")].into_iter().collect(),
        };
        let mut s = enrolled(2, t0).with_runtime(runtime.clone());
        s.handle_timeout(t0);
        s.handle_connected(t0);
        drain(&mut s);
        s.handle_msg(
            OrchMsg::Welcome(Welcome {
                version: 1,
                node_id: NodeId([1; 16]),
                time_ms: 0,
            }),
            t0,
        );
        let acts = drain(&mut s);
        assert!(acts.contains(&Action::Send(NodeMsg::Runtime(Box::new(runtime)))));
        let unassign = Unassign {
            workload: text("hello"),
        };
        s.handle_msg(OrchMsg::Unassign(unassign.clone()), t0);
        assert_eq!(drain(&mut s), vec![Action::Unassign(unassign)]);
        let routes = Box::new(WorkloadRoutes {
            workload: text("hello"),
            generation: 1,
            expose: edge_proto::Seq::default(),
            instances: edge_proto::Seq::default(),
        });
        s.handle_msg(OrchMsg::Routes(routes.clone()), t0);
        assert_eq!(drain(&mut s), vec![Action::Routes(routes)]);
        let unroute = Unroute {
            workload: text("hello"),
        };
        s.handle_msg(OrchMsg::Unroute(unroute.clone()), t0);
        assert_eq!(drain(&mut s), vec![Action::Unroute(unroute)]);
        let model = Box::new(edge_proto::FleetModel {
            purpose: edge_proto::ModelPurpose::Route,
            digest: [7; 32],
            size: 1024,
        });
        s.handle_msg(OrchMsg::Model(model.clone()), t0);
        assert_eq!(drain(&mut s), vec![Action::Model(model)]);
        assert!(s.is_established(), "workload messages keep the session");
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_resets_on_welcome() {
        let t0 = Instant::now();
        let mut s = enrolled(42, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            s.handle_timeout(now);
            drain(&mut s);
            s.handle_connect_failed(ConnectFailure::Transient("refused".into()), now);
            let next = s.poll_timeout().expect("backing off");
            delays.push(next - now);
            now = next;
        }
        let policy = BackoffPolicy::default();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = policy.base.saturating_mul(1 << i).min(policy.max);
            assert!(*d <= ceiling, "attempt {i}: {d:?} over {ceiling:?}");
        }
        // Jitter: not every delay sits at its ceiling.
        assert!(
            delays
                .iter()
                .enumerate()
                .any(|(i, d)| *d < policy.base * (1 << i.min(6)) / 2)
        );
        assert!(delays[8..].iter().all(|d| *d <= policy.max));

        // A welcome resets it: the next drop waits at most `base` again.
        let mut after_welcome = Vec::new();
        for _ in 0..8 {
            s.handle_timeout(now);
            s.handle_connected(now);
            s.handle_msg(
                OrchMsg::Welcome(Welcome {
                    version: 1,
                    node_id: NodeId([1; 16]),
                    time_ms: 0,
                }),
                now,
            );
            drain(&mut s);
            s.handle_disconnected(now);
            let next = s.poll_timeout().expect("backing off");
            after_welcome.push(next - now);
            now = next;
        }
        assert!(
            after_welcome.iter().all(|d| *d <= policy.base),
            "{after_welcome:?}"
        );
    }

    #[test]
    fn a_fatal_reject_stops_the_node_and_a_retryable_one_does_not() {
        let t0 = Instant::now();
        let mut s = enrolled(3, t0);
        s.handle_timeout(t0);
        s.handle_connected(t0);
        drain(&mut s);
        s.handle_msg(
            OrchMsg::Reject(Reject {
                code: RejectCode::Internal,
                message: text("busy"),
            }),
            t0,
        );
        assert!(!s.is_stopped());
        assert_eq!(drain(&mut s), vec![Action::Disconnect]);
        let t1 = s.poll_timeout().expect("retrying");
        s.handle_timeout(t1);
        s.handle_connected(t1);
        drain(&mut s);
        s.handle_msg(
            OrchMsg::Reject(Reject {
                code: RejectCode::UnknownNode,
                message: text("deleted"),
            }),
            t1,
        );
        assert!(s.is_stopped());
        assert_eq!(s.poll_timeout(), None);
        let acts = drain(&mut s);
        assert!(matches!(
            &acts[1],
            Action::Fatal(Fatal::Rejected {
                code: RejectCode::UnknownNode,
                ..
            })
        ));
    }

    #[test]
    fn the_shell_can_tell_saying_hello_from_backing_off() {
        let t0 = Instant::now();
        let mut s = enrolled(3, t0);
        s.handle_timeout(t0);
        drain(&mut s);
        assert!(s.is_connecting() && s.retry_at().is_none(), "dialing");
        s.handle_connected(t0);
        drain(&mut s);
        assert!(s.is_connecting() && s.retry_at().is_none(), "saying hello");
        s.handle_disconnected(t0);
        assert!(!s.is_connecting(), "closed while saying hello");
        let retry = s.retry_at().expect("backing off");
        assert_eq!(s.poll_timeout(), Some(retry));
        s.handle_timeout(retry);
        s.handle_connected(retry);
        s.handle_msg(
            OrchMsg::Welcome(Welcome {
                version: 1,
                node_id: NodeId([1; 16]),
                time_ms: 0,
            }),
            retry,
        );
        drain(&mut s);
        assert!(s.is_established());
        assert!(!s.is_connecting() && s.retry_at().is_none(), "online");
    }

    #[test]
    fn an_identity_conflict_waits_minutes_with_jitter_and_then_tries_again() {
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for seed in 0..8 {
            let mut s = enrolled(seed, t0);
            s.handle_timeout(t0);
            s.handle_connected(t0);
            drain(&mut s);
            s.handle_msg(
                OrchMsg::Reject(Reject {
                    code: RejectCode::IdentityConflict,
                    message: text("connected from another machine"),
                }),
                t0,
            );
            assert_eq!(drain(&mut s), vec![Action::Disconnect]);
            assert!(
                !s.is_stopped(),
                "a conflict is not fatal: the other may go away"
            );
            let retry = s.poll_timeout().expect("waiting to retry");
            let wait = retry - t0;
            assert!(
                wait >= CONFLICT_RETRY_MIN && wait <= CONFLICT_RETRY_MIN + CONFLICT_RETRY_JITTER,
                "{wait:?}"
            );
            waits.push(wait);
            // Nothing happens before the wait is over; then it dials again.
            s.handle_timeout(retry - Duration::from_millis(1));
            assert!(drain(&mut s).is_empty());
            s.handle_timeout(retry);
            assert_eq!(drain(&mut s), vec![Action::Connect(Intent::Session)]);
        }
        waits.sort();
        waits.dedup();
        assert!(waits.len() > 1, "jittered: {waits:?}");
    }

    #[test]
    fn enrollment_saves_the_identity_then_dials_a_session() {
        let t0 = Instant::now();
        let join = Join {
            token: text("abcdef.0123456789abcdef0123456789abcdef"),
            name: text("n1"),
            csr_der: Der::new(vec![1, 2, 3]).expect("fits"),
        };
        let mut s = NodeSession::new(
            None,
            Some(join),
            caps(),
            Duration::from_secs(10),
            BackoffPolicy::default(),
            5,
            t0,
        );
        s.handle_timeout(t0);
        assert_eq!(drain(&mut s), vec![Action::Connect(Intent::Enroll)]);
        s.handle_connected(t0);
        let acts = drain(&mut s);
        assert!(matches!(
            &acts[..],
            [
                Action::Send(NodeMsg::Hello(_)),
                Action::Send(NodeMsg::Enroll(_))
            ]
        ));
        let enrolled = Enrolled {
            node_id: NodeId([9; 16]),
            cert_der: Der::new(vec![1]).expect("fits"),
            ca_der: Der::new(vec![2]).expect("fits"),
        };
        s.handle_msg(OrchMsg::Enrolled(enrolled.clone()), t0);
        assert_eq!(drain(&mut s), vec![Action::SaveIdentity(enrolled)]);
        s.handle_identity_saved(NodeId([9; 16]), t0);
        assert_eq!(drain(&mut s), vec![Action::Disconnect]);
        s.handle_timeout(t0);
        assert_eq!(drain(&mut s), vec![Action::Connect(Intent::Session)]);
    }

    #[test]
    fn no_identity_and_no_join_is_fatal_at_once() {
        let s = &mut NodeSession::new(
            None,
            None,
            caps(),
            Duration::from_secs(10),
            BackoffPolicy::default(),
            0,
            Instant::now(),
        );
        assert_eq!(drain(s), vec![Action::Fatal(Fatal::NoJoinSettings)]);
    }

    /// Said hello and was told the orchestrator is busy, with `retry_after_ms`.
    fn paced(seed: u64, t0: Instant, retry_after_ms: u32) -> NodeSession {
        let mut s = enrolled(seed, t0);
        s.handle_timeout(t0);
        s.handle_connected(t0);
        drain(&mut s);
        s.handle_msg(OrchMsg::Busy(edge_proto::Busy { retry_after_ms }), t0);
        assert_eq!(drain(&mut s), vec![Action::Disconnect]);
        s
    }

    #[test]
    fn a_busy_node_comes_back_after_the_hint_never_sooner_and_spread() {
        let t0 = Instant::now();
        let hint = Duration::from_millis(4_000);
        let mut returns = Vec::new();
        for seed in 0..200 {
            let mut s = paced(seed, t0, 4_000);
            let at = s.poll_timeout().expect("backing off");
            assert!(at >= t0 + hint, "seed {seed} came back early");
            assert!(
                at <= t0 + hint + hint / 4,
                "seed {seed} waited past the jitter"
            );
            // Not a moment sooner.
            s.handle_timeout(at - Duration::from_millis(1));
            assert!(drain(&mut s).is_empty());
            // The connection closing after the Busy changes nothing.
            s.handle_disconnected(at - Duration::from_millis(1));
            assert_eq!(s.poll_timeout(), Some(at));
            s.handle_timeout(at);
            assert_eq!(drain(&mut s), vec![Action::Connect(Intent::Session)]);
            returns.push(at);
        }
        // Nodes told the same hint spread over the jitter instead of returning together.
        returns.sort();
        returns.dedup();
        assert!(
            returns.len() > 190,
            "{} distinct return times",
            returns.len()
        );
    }

    #[test]
    fn being_paced_does_not_grow_the_backoff_and_a_huge_hint_is_capped() {
        let t0 = Instant::now();
        let mut s = paced(3, t0, 1_000);
        assert_eq!(s.backoff.failures(), 0);
        let at = s.poll_timeout().expect("backing off");
        s.handle_timeout(at);
        drain(&mut s);
        // The next failure backs off from the base, as after a first failure.
        s.handle_connect_failed(ConnectFailure::Transient("unreachable".into()), at);
        let retry = s.poll_timeout().expect("backing off");
        assert!(retry <= at + BackoffPolicy::default().base);

        let s = paced(4, t0, u32::MAX);
        let at = s.poll_timeout().expect("backing off");
        assert!(at >= t0 + BUSY_WAIT_MAX && at <= t0 + BUSY_WAIT_MAX + BUSY_WAIT_MAX / 4);
        // A zero hint is honoured as no wait, not as a stop.
        let s = paced(5, t0, 0);
        assert_eq!(s.poll_timeout(), Some(t0));
        assert!(!s.is_stopped());
    }

    #[test]
    fn a_busy_on_an_established_session_is_a_protocol_break() {
        let t0 = Instant::now();
        let mut s = enrolled(6, t0);
        s.handle_timeout(t0);
        s.handle_connected(t0);
        s.handle_msg(
            OrchMsg::Welcome(Welcome {
                version: 1,
                node_id: NodeId([1; 16]),
                time_ms: 0,
            }),
            t0,
        );
        drain(&mut s);
        s.handle_msg(
            OrchMsg::Busy(edge_proto::Busy {
                retry_after_ms: 600_000,
            }),
            t0,
        );
        assert_eq!(drain(&mut s), vec![Action::Disconnect]);
        // Retried on the ordinary backoff, not after the hint.
        let at = s.poll_timeout().expect("backing off");
        assert!(at <= t0 + BackoffPolicy::default().base);
    }
}
