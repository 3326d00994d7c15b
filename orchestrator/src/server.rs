//! The QUIC server: a thin shell that moves frames between sockets and [`ServerSession`]s and
//! carries out their actions. All decisions live in `session`, `fleet` and `deploy`.
//!
//! Deployment effects are carried out by one committer thread, in the order the controller
//! decided them: it takes every batch queued since its last write, stores them with one flush,
//! then sends their messages. So a node never gets an assignment before it is durable, and
//! many concurrent deploys share one fsync.

use crate::artifacts::{ArtifactStore, ServeError, Served, serve_artifact_stream};
use crate::metrics::Metrics;
use crate::pki::{Ca, PkiError, node_id_from_cert};
use edge_proto::quic::{ReadError, read_frame, transport, write_msg};
use edge_proto::{
    ALPN, DecodeError, NodeId, OrchMsg, RejectCode, StreamOpen, WorkloadReport, decode,
};
use orchestrator_core::deploy::{Deployments, Effect};
use orchestrator_core::fleet::{Change, Fleet, NodeRecord, SessionId};
use orchestrator_core::session::Event;
use orchestrator_core::session::{Action, Ctx, ServerSession, unix_secs};
use orchestrator_core::store::{DeploymentWrite, Store, StoreError};
use orchestrator_core::tokens::{self, TokenRecord};
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, warn};

const META_CA_CERT: &str = "ca.crt";
const META_CA_KEY: &str = "ca.key";
/// Messages queued for one node before `send_to` says no.
const OUTBOX_DEPTH: usize = 1024;
/// How long a closing connection waits for the peer to read its last frames.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("binding the QUIC socket: {0}")]
    Bind(std::io::Error),
}

/// Everything the QUIC server and the API share.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub ca: Ca,
    pub metrics: Metrics,
    fleet: Mutex<Fleet>,
    connections: Mutex<HashMap<SessionId, quinn::Connection>>,
    next_session: AtomicU64,
    /// Where nodes fetch artifacts from; set once at start.
    pub artifacts: OnceLock<Arc<ArtifactStore>>,
    /// Messages for each node's live session.
    outboxes: Arc<Outboxes>,
    /// The last report of every workload instance, by (workload, node).
    reports: Mutex<BTreeMap<(String, NodeId), InstanceReport>>,
    deployments: Mutex<Deployments>,
    committer: Committer,
}

type Outboxes = Mutex<HashMap<NodeId, (SessionId, mpsc::Sender<OrchMsg>)>>;

/// Queues `msg` for `node`'s live session. `false` if the node has no session now: it gets
/// its assignments again when it next connects.
fn send_via(outboxes: &Outboxes, node: NodeId, msg: OrchMsg) -> bool {
    let outboxes = outboxes.lock().unwrap_or_else(|e| e.into_inner());
    outboxes
        .get(&node)
        .is_some_and(|(_, tx)| tx.try_send(msg).is_ok())
}

/// When the effects of one deployment change are durable and sent.
#[derive(Debug)]
pub struct Committed(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Committed {
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Backend("the committer stopped".into()))),
        }
    }
}

struct Batch {
    effects: Vec<Effect>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// The thread that stores and sends deployment effects in order. Dropping it finishes what
/// is queued and joins the thread, so the store is closed when the server is.
struct Committer {
    tx: Option<std::sync::mpsc::Sender<Batch>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// At most this many batches share one flush.
const MAX_BATCHES_PER_FLUSH: usize = 4096;

impl Committer {
    fn start(store: Arc<dyn Store>, outboxes: Arc<Outboxes>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
        let thread = std::thread::Builder::new()
            .name("deploy-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batches = vec![first];
                    while batches.len() < MAX_BATCHES_PER_FLUSH {
                        match rx.try_recv() {
                            Ok(b) => batches.push(b),
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<DeploymentWrite<'_>> = batches
                        .iter()
                        .flat_map(|b| &b.effects)
                        .filter_map(|e| match e {
                            Effect::Persist(r) => Some(DeploymentWrite::Put(r)),
                            Effect::Forget(name) => Some(DeploymentWrite::Delete(name)),
                            Effect::Send(..) => None,
                        })
                        .collect();
                    let result = if writes.is_empty() {
                        Ok(())
                    } else {
                        store.write_deployments(&writes)
                    };
                    drop(writes);
                    match &result {
                        Ok(()) => {
                            for e in batches.iter_mut().flat_map(|b| b.effects.drain(..)) {
                                if let Effect::Send(node, msg) = e {
                                    send_via(&outboxes, node, msg);
                                }
                            }
                        }
                        // Nothing is sent that was not stored.
                        Err(error) => warn!(%error, "could not store deployments"),
                    }
                    for b in batches {
                        let _ = b.done.send(result.clone());
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, effects: Vec<Effect>) -> Committed {
        if effects.is_empty() {
            return Committed(None);
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            // The thread lives as long as `self`; if it died, `rx` reports it.
            let _ = tx.send(Batch { effects, done });
        }
        Committed(Some(rx))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a node last said about one workload instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceReport {
    pub report: WorkloadReport,
    pub at_unix: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ca", &self.ca.hash())
            .finish()
    }
}

impl Shared {
    /// Loads the CA and the registry from `store`, making a CA on first start.
    pub fn open(store: Arc<dyn Store>) -> Result<Arc<Self>, StartError> {
        let ca = match (store.meta(META_CA_CERT)?, store.meta(META_CA_KEY)?) {
            (Some(cert), Some(key)) => Ca::from_pem(
                &String::from_utf8_lossy(&cert),
                &String::from_utf8_lossy(&key),
            )?,
            _ => {
                let ca = Ca::generate(SystemTime::now())?;
                store.put_meta(META_CA_KEY, ca.key_pem().as_bytes())?;
                store.put_meta(META_CA_CERT, ca.cert_pem().as_bytes())?;
                tracing::info!(ca_hash = %ca.hash(), "created the fleet CA");
                ca
            }
        };
        let nodes = store.nodes()?;
        let deployments = Deployments::load(
            store.deployments()?,
            nodes.iter().map(|n| (n.clone(), false)),
        )
        .map_err(|e| StoreError::Corrupt {
            key: e.name.clone(),
            reason: e.reason.clone(),
        })?;
        let fleet = Fleet::new(store.tokens()?, nodes);
        let outboxes = Arc::new(Outboxes::default());
        let committer = Committer::start(store.clone(), outboxes.clone())
            .map_err(|e| StoreError::Backend(format!("starting the committer: {e}")))?;
        let metrics = Metrics::new();
        let (online, offline) = fleet.counts();
        metrics.set_node_counts(online, offline);
        Ok(Arc::new(Self {
            store,
            ca,
            metrics,
            fleet: Mutex::new(fleet),
            connections: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            artifacts: OnceLock::new(),
            outboxes,
            reports: Mutex::new(BTreeMap::new()),
            deployments: Mutex::new(deployments),
            committer,
        }))
    }

    /// The registry. Never hold the guard across an await.
    pub fn fleet(&self) -> MutexGuard<'_, Fleet> {
        // A panic while holding the lock leaves the registry as consistent as the last
        // completed call; carry on rather than take the whole server down.
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<SessionId, quinn::Connection>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes and stores a join token; returns the token text (shown once) and its record.
    pub fn create_token(
        &self,
        ttl_secs: u64,
        uses: u32,
        description: String,
    ) -> Result<(String, TokenRecord), StoreError> {
        let rng = ring::rand::SystemRandom::new();
        let mut fill = |buf: &mut [u8]| {
            // The OS RNG failing is not something to recover from.
            ring::rand::SecureRandom::fill(&rng, buf).expect("the OS random source works");
        };
        let now = unix_secs(SystemTime::now());
        let (text, record) = tokens::create(&mut fill, now, ttl_secs, uses, description);
        self.store.put_token(&record)?;
        self.fleet().add_token(record.clone());
        Ok((text, record))
    }

    /// Forgets a node and closes its session; its instances go elsewhere. `Ok(false)` if
    /// there was no such node.
    pub fn delete_node(&self, id: NodeId) -> Result<bool, StoreError> {
        let Some((change, session)) = self.fleet().delete_node(id) else {
            return Ok(false);
        };
        self.persist(&change)?;
        if let Some(session) = session {
            self.close_session(session, RejectCode::UnknownNode, "node deleted");
        }
        self.deploy(|d| ((), d.node_removed(id)));
        Ok(true)
    }

    /// Cordons or uncordons a node; with `drain`, also moves its instances elsewhere.
    /// `Ok(None)` if there is no such node.
    pub fn cordon(
        &self,
        id: NodeId,
        cordoned: bool,
        drain: bool,
    ) -> Result<Option<Committed>, StoreError> {
        let (change, online) = {
            let mut fleet = self.fleet();
            let Some(change) = fleet.set_cordoned(id, cordoned) else {
                return Ok(None);
            };
            (change, fleet.is_online(id))
        };
        self.persist(&change)?;
        let Change::Node(record) = change else {
            return Ok(None);
        };
        let ((), committed) = self.deploy(|d| {
            let mut effects = d.node_changed(*record, online);
            if drain {
                effects.extend(d.drain(id));
            }
            ((), effects)
        });
        Ok(Some(committed))
    }

    /// The deployments. Never hold the guard across an await; change them through
    /// [`Shared::deploy`] so that their effects are carried out.
    pub fn deployments(&self) -> MutexGuard<'_, Deployments> {
        self.deployments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the deployments and queues the effects it returns while still holding the
    /// lock, so that effects are stored and sent in the order they were decided.
    pub fn deploy<R>(
        &self,
        f: impl FnOnce(&mut Deployments) -> (R, Vec<Effect>),
    ) -> (R, Committed) {
        let mut deployments = self.deployments();
        let (r, effects) = f(&mut deployments);
        let committed = self.committer.submit(effects);
        (r, committed)
    }

    fn node_record(&self, node: NodeId) -> Option<(NodeRecord, bool)> {
        let fleet = self.fleet();
        fleet.node(node).map(|r| (r.clone(), fleet.is_online(node)))
    }

    /// A node's session is ready for messages: it gets its assignments again.
    fn node_up(&self, node: NodeId) {
        if let Some((record, _)) = self.node_record(node) {
            self.deploy(|d| ((), d.node_up(record)));
        }
    }

    /// The connection of `node`'s live session, to open streams on (logs).
    pub fn connection(&self, node: NodeId) -> Option<quinn::Connection> {
        let session = {
            let outboxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
            outboxes.get(&node).map(|(s, _)| *s)?
        };
        self.conns().get(&session).cloned()
    }

    /// The last report of every instance of `workload`, by node.
    pub fn instance_reports(&self, workload: &str) -> Vec<(NodeId, InstanceReport)> {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        // Keyed by workload first: its reports are one range, not a scan of every report.
        let (first, last) = (NodeId([0; 16]), NodeId([u8::MAX; 16]));
        reports
            .range((workload.to_owned(), first)..=(workload.to_owned(), last))
            .map(|((_, node), r)| (*node, r.clone()))
            .collect()
    }

    /// Drops the reports of a deleted workload.
    pub fn forget_reports(&self, workload: &str) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports.retain(|(w, _), _| w != workload);
    }

    fn record_report(&self, node: NodeId, report: WorkloadReport) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let key = (report.workload.to_string(), node);
        if reports
            .get(&key)
            .is_none_or(|old| old.report.state != report.state)
        {
            self.metrics
                .workload(&crate::metrics::WorkloadEvent::InstanceState {
                    node,
                    workload: report.workload.as_str(),
                    state: orchestrator_core::deploy::state_name(report.state),
                    restarts: report.restarts,
                    message: report.message.as_str(),
                });
        }
        reports.insert(
            (report.workload.to_string(), node),
            InstanceReport {
                report,
                at_unix: unix_secs(SystemTime::now()),
            },
        );
    }

    fn set_outbox(&self, node: NodeId, session: SessionId, tx: mpsc::Sender<OrchMsg>) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
        outboxes.insert(node, (session, tx));
    }

    fn clear_outbox(&self, node: NodeId, session: SessionId) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|e| e.into_inner());
        if outboxes.get(&node).is_some_and(|(s, _)| *s == session) {
            outboxes.remove(&node);
        }
    }

    /// Drops every connection handle, so that a closed endpoint can release its socket.
    pub fn forget_connections(&self) {
        self.conns().clear();
    }

    fn persist(&self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Token(t) => self.store.put_token(t),
            Change::Node(n) => self.store.put_node(n),
            Change::NodeDeleted(id) => self.store.delete_node(*id),
        }
    }

    fn close_session(&self, session: SessionId, code: RejectCode, reason: &str) {
        if let Some(conn) = self.conns().remove(&session) {
            conn.close(close_code(Some(code)), reason.as_bytes());
        }
    }

    /// A QUIC server configuration: our certificate chain, client certificates optional
    /// (enrollment has none) but verified against our CA when present.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, StartError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.cert_der().clone())
            .map_err(|e| StartError::Tls(e.to_string()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| StartError::Tls(e.to_string()))?;
        let (chain, key) = self.ca.issue_server_cert(SystemTime::now())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| StartError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key.into())
            .map_err(|e| StartError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| StartError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport(false)));
        Ok(config)
    }

    /// Binds the QUIC endpoint on an already-bound UDP socket.
    ///
    /// The socket's receive buffer is raised first: when thousands of nodes reconnect at once
    /// the stock 208 KiB overflows and handshakes stall on retransmit timers. Measured with
    /// 10,000 simulated nodes: 77k datagrams dropped and a 1.5 s p99 enrollment with the stock
    /// buffer, none dropped and 119 ms with this one (benches/RESULTS.md).
    pub fn endpoint(&self, socket: std::net::UdpSocket) -> Result<quinn::Endpoint, StartError> {
        raise_recv_buffer(&socket);
        let runtime =
            quinn::default_runtime().ok_or_else(|| StartError::Tls("no async runtime".into()))?;
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(self.server_config()?),
            socket,
            runtime,
        )
        .map_err(StartError::Bind)
    }
}

/// What the QUIC socket asks for; Linux caps it at `net.core.rmem_max`.
const QUIC_RECV_BUFFER_BYTES: usize = 4 << 20;

fn raise_recv_buffer(socket: &std::net::UdpSocket) {
    let raised = quinn::udp::UdpSocketState::new(socket.into()).and_then(|state| {
        state.set_recv_buffer_size(socket.into(), QUIC_RECV_BUFFER_BYTES)?;
        state.recv_buffer_size(socket.into())
    });
    match raised {
        Ok(bytes) => debug!(bytes, "QUIC socket receive buffer"),
        Err(error) => warn!(%error, "could not raise the QUIC socket's receive buffer"),
    }
}

/// The QUIC application close code for a reject: 0 for a normal close, else the code's
/// position plus one.
pub fn close_code(code: Option<RejectCode>) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.map_or(0, RejectCode::close_code))
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => run_connection(conn, shared).await,
                Err(e) => shared
                    .metrics
                    .handshake_failed(&handshake_reason(&e), remote),
            }
        });
    }
}

fn handshake_reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TransportError(t) => format!("tls: {}", t.reason),
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!("peer closed: {}", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::TimedOut => "timeout".into(),
        other => other.to_string(),
    }
}

/// The node id in the peer's certificate; `Ok(None)` if it presented none.
fn peer_node_id(conn: &quinn::Connection) -> Result<Option<NodeId>, ()> {
    let Some(identity) = conn.peer_identity() else {
        return Ok(None);
    };
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ())?;
    match certs.first() {
        None => Ok(None),
        Some(leaf) => node_id_from_cert(leaf).map(Some).ok_or(()),
    }
}

async fn run_connection(conn: quinn::Connection, shared: Arc<Shared>) {
    let remote = conn.remote_address();
    let Ok(peer) = peer_node_id(&conn) else {
        shared
            .metrics
            .handshake_failed("certificate names no node", remote);
        conn.close(
            close_code(Some(RejectCode::UnknownNode)),
            b"certificate names no node",
        );
        return;
    };
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let mut session = ServerSession::new(id, peer, Instant::now());
    shared.conns().insert(id, conn.clone());
    let mut stream = None;
    // Messages from elsewhere in the orchestrator for this node, once its session is up.
    let (outbox_tx, mut outbox) = mpsc::channel::<OrchMsg>(OUTBOX_DEPTH);
    let mut outbox_tx = Some(outbox_tx);
    loop {
        if let (Some(node), Some(tx)) = (session.node(), outbox_tx.as_ref()) {
            shared.set_outbox(node, id, tx.clone());
            outbox_tx = None;
            shared.node_up(node);
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            Some(msg) = outbox.recv(), if outbox_tx.is_none() => {
                if let Some((send, _)) = stream.as_mut() {
                    shared.metrics.frame("tx");
                    if let Err(error) = write_msg(send, &msg).await {
                        warn!(%remote, %error, "could not send to the node");
                    }
                }
            }
            accepted = conn.accept_bi() => match accepted {
                Ok(pair) if stream.is_none() => stream = Some(pair),
                // Later streams carry artifacts, and only for an authenticated session.
                Ok((send, recv)) => match (session.node(), peer) {
                    (Some(node), Some(_)) => {
                        tokio::spawn(serve_stream(shared.clone(), node, send, recv));
                    }
                    _ => session.handle_decode_error(DecodeError::Malformed(
                        "a second stream before the session is established",
                    )),
                },
                Err(e) => { debug!(%remote, error = %e, "connection ended"); break; }
            },
            frame = read_next(&mut stream), if stream.is_some() => match frame {
                Ok(Some(body)) => {
                    shared.metrics.frame("rx");
                    with_ctx(&shared, |ctx| session.handle_frame(&body, ctx));
                }
                Ok(None) => break,
                Err(ReadError::Decode(e)) => session.handle_decode_error(e),
                Err(ReadError::Stream(e)) => { debug!(%remote, error = %e, "stream ended"); break; }
            },
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
        }
        let done = match stream.as_mut() {
            Some((send, _)) => flush_actions(&mut session, &shared, &conn, send).await,
            None => session.is_closed(),
        };
        if done {
            break;
        }
    }
    with_ctx(&shared, |ctx| session.handle_closed(ctx));
    while let Some(action) = session.poll_action() {
        match action {
            Action::Persist(change) => {
                if let Err(error) = persist_off_runtime(&shared, change).await {
                    warn!(%error, "could not persist a registry change");
                }
            }
            Action::Event(e) => shared.metrics.emit(&e),
            _ => {}
        }
    }
    shared.conns().remove(&id);
    if let Some(node) = peer {
        shared.clear_outbox(node, id);
        if !shared.fleet().is_online(node) {
            shared.deployments().node_down(node);
        }
    }
    // Let the close frame and any final message go out before the connection is dropped.
    conn.close(close_code(None), b"");
}

/// How long a new stream may take to say what it is for.
const STREAM_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A stream a node opened besides its control stream: today, always an artifact fetch.
async fn serve_stream(
    shared: Arc<Shared>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let open = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, read_frame(&mut recv)).await {
        Ok(Ok(Some(body))) => decode::<StreamOpen>(&body).map_err(ReadError::Decode),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Err(e),
        Err(_) => {
            debug!(node = %node, "stream said nothing in time");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let req = match open {
        Ok(StreamOpen::Artifact(req)) => req,
        Err(error) => {
            warn!(node = %node, %error, "undecodable stream header");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let Some(store) = shared.artifacts.get() else {
        let _ = write_msg(&mut send, &edge_proto::ArtifactReply::NotFound).await;
        let _ = send.finish();
        return;
    };
    match serve_artifact_stream(store, req, &mut send).await {
        Ok(Served::Sent { bytes }) => debug!(node = %node, bytes, "artifact sent"),
        Ok(other) => debug!(node = %node, outcome = ?other, "artifact not sent"),
        Err(ServeError::Local(error)) => warn!(node = %node, %error, "reading an artifact failed"),
        Err(error) => debug!(node = %node, %error, "artifact transfer ended early"),
    }
}

async fn read_next(
    stream: &mut Option<(quinn::SendStream, quinn::RecvStream)>,
) -> Result<Option<Vec<u8>>, ReadError> {
    match stream {
        Some((_, recv)) => read_frame(recv).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn with_ctx(shared: &Shared, f: impl FnOnce(&mut Ctx<'_>)) {
    let mut fleet = shared.fleet();
    let mut ctx = Ctx {
        fleet: &mut fleet,
        ca: &shared.ca,
        wall: SystemTime::now(),
        fresh_id: NodeId(random_id()),
    };
    f(&mut ctx);
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .expect("the OS random source works");
    id
}

/// Writes a registry change on the blocking pool: a store write ends in an fsync, which must
/// not stall the tasks that drain the QUIC socket.
async fn persist_off_runtime(shared: &Arc<Shared>, change: Change) -> Result<(), StoreError> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || shared.persist(&change))
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(format!("store task failed: {e}"))))
}

/// Carries out the session's actions. Returns whether the connection is finished.
async fn flush_actions(
    session: &mut ServerSession,
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
) -> bool {
    while let Some(action) = session.poll_action() {
        match action {
            Action::Persist(change) => {
                if let Err(error) = persist_off_runtime(shared, change).await {
                    // Never send what we could not store: the node would hold a certificate
                    // we do not know.
                    warn!(%error, "store failed; closing the connection");
                    let _ = write_msg(
                        send,
                        &edge_proto::OrchMsg::Reject(edge_proto::Reject {
                            code: RejectCode::Internal,
                            message: edge_proto::text("orchestrator storage failed; retry later"),
                        }),
                    )
                    .await;
                    let _ = send.finish();
                    conn.close(close_code(Some(RejectCode::Internal)), b"storage failed");
                    return true;
                }
            }
            Action::Send(msg) => {
                shared.metrics.frame("tx");
                if let Err(error) = write_msg(send, &msg).await {
                    // The peer stopped reading; a close that follows still carries the code.
                    debug!(%error, "send failed");
                }
            }
            Action::Close(code, reason) => {
                let _ = send.finish();
                // Give the peer a moment to read our last frames before the close discards
                // them. It learns the code and reason from the close frame either way.
                let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
                conn.close(close_code(code), reason.as_bytes());
                return true;
            }
            Action::CloseReplaced(old) => {
                shared.close_session(
                    old,
                    RejectCode::IdentityMismatch,
                    "replaced by a newer session",
                );
            }
            Action::Event(e) => {
                shared.metrics.emit(&e);
                if let Event::CapabilitiesChanged { node } = e
                    && let Some((record, online)) = shared.node_record(node)
                {
                    shared.deploy(|d| ((), d.node_changed(record, online)));
                }
            }
            Action::Admission(node, reply) => {
                if let Some(reason) = &reply.rejected {
                    shared
                        .metrics
                        .workload(&crate::metrics::WorkloadEvent::AdmissionRefused {
                            node,
                            workload: reply.workload.as_str(),
                            reason: reason.as_str(),
                        });
                }
                shared.deploy(|d| ((), d.admission(node, &reply)));
            }
            Action::WorkloadReport(node, report) => {
                debug!(node = %node, workload = %report.workload, state = ?report.state, "workload report");
                shared.deploy(|d| ((), d.report(node, &report)));
                shared.record_report(node, report);
            }
        }
    }
    session.is_closed()
}
