//! The QUIC server: a thin shell that moves frames between sockets and [`ServerSession`]s and
//! carries out their actions. All decisions live in the core (`session`, `fleet`, `deploy`).
//!
//! It works through the handles in [`Server`]: registry changes are persisted through the
//! [`Registry`] before what depends on them is sent, deployment effects go through the
//! [`Deployer`]'s committer, and each connection and session outbox is registered in
//! [`NodeLinks`] for the rest of the orchestrator to reach the node.

use crate::artifacts::{ArtifactStore, ServeError, Served, serve_artifact_stream};
use crate::deployer::Deployer;
use crate::links::{NodeLinks, OUTBOX_DEPTH, close_code};
use crate::metrics::{HandshakeFailure, Metrics, WorkloadEvent};
use crate::pki::{Ca, PkiError, node_id_from_cert};
use crate::registry::Registry;
use crate::reports::Reports;
use edge_proto::quic::{KEEP_ALIVE, ReadError, read_frame, server_transport, write_msg};
use edge_proto::{
    ALPN, DecodeError, Der, Intent, NodeId, OrchMsg, RejectCode, RenewRefusal, RenewRefused,
    Renewed, StreamOpen, SyncState, decode,
};
use orchestrator_core::fleet::{Change, SessionId};
use orchestrator_core::pacing::{Pacing, PacingPolicy, Verdict};
use orchestrator_core::session::{Action, Ctx, Event, LIVENESS_WINDOW, Liveness, ServerSession};
use orchestrator_core::store::{StoreError, StoredSeqs};
use rustls::pki_types::CertificateDer;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a closing connection waits for the peer to read its last frames.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("binding the QUIC socket: {0}")]
    Bind(std::io::Error),
}

/// What the QUIC server works with: handles it shares with the operator API.
#[derive(Debug, Clone)]
pub struct Server {
    pub registry: Arc<Registry>,
    pub deployments: Arc<Deployer>,
    pub links: Arc<NodeLinks>,
    pub reports: Arc<Reports>,
    pub metrics: Arc<Metrics>,
    /// Where nodes fetch artifacts from; `None` answers every fetch with `NotFound`.
    pub artifacts: Option<Arc<ArtifactStore>>,
    /// The fleet's models, offered to each node its reader can run; `None`: no models.
    pub models: Option<Arc<crate::models::ModelStore>>,
    /// Paces hellos when many nodes reconnect at once.
    pub pacing: Arc<Gate>,
}

/// The hello gate ([`orchestrator_core::pacing`]) shared by the connection tasks.
#[derive(Debug)]
pub struct Gate(Mutex<Pacing>);

impl Gate {
    pub fn new(policy: PacingPolicy) -> Self {
        Self(Mutex::new(Pacing::new(policy)))
    }

    /// A place for one more handshake in progress, if the gate has one.
    fn handshake(self: &Arc<Self>) -> Option<HandshakePermit> {
        let mut gate = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        gate.handshake().then(|| HandshakePermit(self.clone()))
    }

    /// A place for a hello with `intent`, or how long the node must wait for one.
    fn admit(self: &Arc<Self>, intent: Intent) -> Result<Permit, Duration> {
        // The gate's state is a few numbers that every call leaves whole: a panic elsewhere
        // while the lock was held cannot have broken it.
        let mut gate = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match gate.admit(intent, Instant::now()) {
            Verdict::Admit => Ok(Permit(self.clone())),
            Verdict::Busy { retry_after } => Err(retry_after),
        }
    }
}

/// One admitted hello's place in the gate, given back when dropped: when its session is up,
/// or when its connection ends, whichever comes first.
#[derive(Debug)]
struct Permit(Arc<Gate>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done();
    }
}

/// One handshake's place in the gate, given back when dropped.
#[derive(Debug)]
struct HandshakePermit(Arc<Gate>);

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handshake_done();
    }
}

/// A QUIC server configuration: our certificate chain, client certificates optional
/// (enrollment has none) but verified against our CA when present.
pub fn server_config(ca: &Ca) -> Result<quinn::ServerConfig, EndpointError> {
    server_config_for(ca, &[ca])
}

/// As [`server_config`], presenting a certificate of `ca` and taking client certificates of
/// any of `client_roots` (both CAs during a rotation).
pub fn server_config_for(
    ca: &Ca,
    client_roots: &[&Ca],
) -> Result<quinn::ServerConfig, EndpointError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in client_roots {
        roots
            .add(root.cert_der().clone())
            .map_err(|e| EndpointError::Tls(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let (chain, key) = ca.issue_server_cert(SystemTime::now())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EndpointError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key.into())
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // A node that comes back resumes its TLS session: no certificate is sent, signed or
    // verified again, which makes a storm cheaper (benches/RESULTS.md, "Reconnect cost").
    // The tickets are stateless, sealed with a key this config alone holds: the
    // orchestrator keeps nothing per node, and a new config (a restart, a CA rotation) sends
    // every node through a full handshake once. A resumed session checks no certificate, so
    // `run_connection` checks its end itself. No 0-RTT: a hello in early data can be replayed.
    tls.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| EndpointError::Tls(e.to_string()))?;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport()));
    Ok(config)
}

/// Binds the QUIC endpoint on an already-bound UDP socket.
///
/// The socket's receive buffer is raised first: when thousands of nodes reconnect at once
/// the stock 208 KiB overflows and handshakes stall on retransmit timers. Measured with
/// 10,000 simulated nodes: 77k datagrams dropped and a 1.5 s p99 enrollment with the stock
/// buffer, none dropped and 119 ms with this one (benches/RESULTS.md).
pub fn endpoint(
    registry: &Registry,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, EndpointError> {
    raise_recv_buffer(&socket);
    let runtime =
        quinn::default_runtime().ok_or_else(|| EndpointError::Tls("no async runtime".into()))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(registry.server_config()?),
        socket,
        runtime,
    )
    .map_err(EndpointError::Bind)?;
    // A CA rotation changes what the server presents and takes.
    registry.attach_endpoint(endpoint.clone());
    Ok(endpoint)
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

/// How long a handshake may take. The idle timeout cannot bound it: the orchestrator
/// advertises the longest a node may ask for (`edge_proto::liveness::MAX_IDLE_TIMEOUT`), and
/// until the handshake is done the peer's own is not known.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, server: Arc<Server>) {
    while let Some(incoming) = endpoint.accept().await {
        // Past the cap, refused before any cryptography: the node backs off and retries.
        let Some(permit) = server.pacing.handshake() else {
            server.metrics.handshake_refused();
            incoming.refuse();
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
            drop(permit);
            match handshake {
                Ok(Ok(conn)) => run_connection(conn, server).await,
                Ok(Err(e)) => {
                    let (reason, detail) = handshake_failure(&e);
                    server.metrics.handshake_failed(reason, &detail, remote);
                }
                // Dropping the handshake closes the connection.
                Err(_) => server.metrics.handshake_failed(
                    HandshakeFailure::Timeout,
                    "no handshake within 10 s",
                    remote,
                ),
            }
        });
    }
}

/// Why a handshake failed, as a fixed label, and what the peer or TLS said about it (free
/// text the peer may have chosen: for the log only).
fn handshake_failure(e: &quinn::ConnectionError) -> (HandshakeFailure, String) {
    use quinn::ConnectionError as E;
    // TLS alerts travel as the QUIC error codes 0x100-0x1ff.
    let is_tls = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let reason = match e {
        E::TransportError(t) if is_tls(t.code) => HandshakeFailure::Tls,
        E::TransportError(_) => HandshakeFailure::Transport,
        E::ConnectionClosed(c) if is_tls(c.error_code) => HandshakeFailure::PeerRefusedTls,
        E::ConnectionClosed(_) | E::ApplicationClosed(_) => HandshakeFailure::PeerClosed,
        E::TimedOut => HandshakeFailure::Timeout,
        E::Reset => HandshakeFailure::Reset,
        E::VersionMismatch => HandshakeFailure::VersionMismatch,
        E::LocallyClosed => HandshakeFailure::LocallyClosed,
        E::CidsExhausted => HandshakeFailure::CidsExhausted,
    };
    (reason, e.to_string())
}

/// The node id in the peer's certificate; `Ok(None)` if it presented none.
fn peer_node_id(conn: &quinn::Connection) -> Result<Option<NodeId>, ()> {
    match peer_certificate(conn) {
        None => Ok(None),
        Some(leaf) => node_id_from_cert(&leaf).map(Some).ok_or(()),
    }
}

/// Whether the client certificate of `conn` has ended by `now`. A full handshake never lets
/// one through (TLS checks it, to the second); a resumed session carries the certificate it
/// was first opened with and TLS checks nothing, so a ticket could outlive the certificate
/// by up to its lifetime (12 hours) but for this.
fn certificate_ended(conn: &quinn::Connection, now: SystemTime) -> bool {
    let Some(leaf) = peer_certificate(conn) else {
        return false;
    };
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    crate::pki::validity(&leaf).is_none_or(|(_, not_after)| not_after < now)
}

/// The client certificate the peer presented, if it did.
fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

/// Answers a node's renewal: a certificate for `node` (the session's) if the CSR is for the
/// key of the certificate this connection was opened with, else the reason why not. The
/// session goes on either way.
fn renew(
    server: &Server,
    conn: &quinn::Connection,
    node: NodeId,
    req: &edge_proto::RenewRequest,
) -> OrchMsg {
    let refused = |reason: RenewRefusal, detail: String| {
        server.metrics.renewal_refused(node, reason, &detail);
        OrchMsg::RenewRefused(Box::new(RenewRefused {
            reason,
            message: edge_proto::text(&detail),
        }))
    };
    let Some(session_cert) = peer_certificate(conn) else {
        return refused(RenewRefusal::Internal, "no session certificate".into());
    };
    let ca = server.registry.signer();
    let cert = match ca.renew_node_csr(
        req.csr_der.as_slice(),
        node,
        &session_cert,
        SystemTime::now(),
    ) {
        Ok(cert) => cert,
        Err(error) => return refused(error.refusal(), error.to_string()),
    };
    match renewed(&server.registry, &server.metrics, node, &cert) {
        Some(msg) => msg,
        None => refused(RenewRefusal::Internal, "certificate too large".into()),
    }
}

/// `cert`, just signed for `node`, as the message that hands it over with the CAs to trust;
/// counted. `None` if it does not fit the wire.
fn renewed(registry: &Registry, metrics: &Metrics, node: NodeId, cert: &[u8]) -> Option<OrchMsg> {
    let cert_der = Der::new(cert.to_vec())?;
    let trust = registry
        .trust()
        .into_iter()
        .map(Der::new)
        .collect::<Option<Vec<_>>>()?;
    let not_after = crate::pki::validity(cert).map_or(0, |(_, after)| after);
    metrics.renewed(node, not_after);
    Some(OrchMsg::Renewed(Box::new(Renewed {
        cert_der,
        trust: trust.into_iter().take(Renewed::MAX_TRUST).collect(),
    })))
}

/// During a CA rotation, the certificate that moves `node`, whose session is on `conn`,
/// onto the new CA: signed for the key its session proved, without waiting for it to ask.
/// `None` when it needs none (no rotation, or its certificate is the new CA's already: then
/// it counts as moved).
pub fn move_to_next_ca(
    registry: &Arc<Registry>,
    metrics: &Metrics,
    conn: &quinn::Connection,
    node: NodeId,
) -> Option<OrchMsg> {
    let cert = peer_certificate(conn)?;
    if !registry.needs_move(&cert) {
        if registry.rotation().next_ca_hash.is_some() {
            mark_moved(registry, node);
        }
        return None;
    }
    let signer = registry.signer();
    let issued = match signer.reissue(&cert, node, SystemTime::now()) {
        Ok(issued) => issued,
        Err(error) => {
            warn!(node = %node, %error, "could not move a node onto the new CA");
            return None;
        }
    };
    renewed(registry, metrics, node, &issued)
}

/// A node reported where it is: its record follows when the position is its newest, and
/// so do placement and routing.
async fn moved(
    server: &Server,
    node: NodeId,
    point: &orchestrator_core::events::TrackPoint,
    at_ms: u64,
) {
    let change = server.registry.fleet().update_position(node, point, at_ms);
    let Some(change) = change else {
        return;
    };
    if let Err(error) = persist_off_runtime(server, change).await {
        warn!(node = %node, %error, "could not store a node's position");
    }
    if let Some((record, online)) = server.registry.node(node) {
        server.deployments.node_changed(record, online);
    }
}

/// Records that `node` holds a certificate of the next CA: it said it stored one, or it
/// presented one. Off the async workers: it may write to the store.
pub fn mark_moved(registry: &Arc<Registry>, node: NodeId) {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(error) = registry.moved(node) {
            warn!(node = %node, %error, "could not record a node's move to the new CA");
        }
    });
}

async fn run_connection(conn: quinn::Connection, server: Arc<Server>) {
    let remote = conn.remote_address();
    // Refused before any session: counted as a failed handshake, closed with its reject.
    let refuse = |failure, detail: &str, code, reason: &[u8]| {
        server.metrics.handshake_failed(failure, detail, remote);
        conn.close(close_code(Some(code)), reason);
    };
    let Ok(peer) = peer_node_id(&conn) else {
        return refuse(
            HandshakeFailure::NoNodeInCertificate,
            "certificate names no node",
            RejectCode::UnknownNode,
            b"certificate names no node",
        );
    };
    if peer.is_some() && certificate_ended(&conn, SystemTime::now()) {
        return refuse(
            HandshakeFailure::CertificateExpired,
            "resumed with a certificate that has ended",
            RejectCode::CertificateExpired,
            b"this node's certificate has ended: enroll again",
        );
    }
    let id = server.links.next_session();
    let mut session = ServerSession::new(id, peer, Instant::now()).with_remote(remote);
    server.links.add_connection(id, conn.clone());
    // What the watch on another connection of the same node found (see `liveness`).
    let (liveness_tx, mut liveness_rx) = mpsc::channel::<(SessionId, Liveness)>(1);
    // The control stream: we write on `control`; its frames arrive on `inbound`, read by a
    // task of its own (see `read_frames`).
    let mut control: Option<quinn::SendStream> = None;
    let mut inbound: Option<mpsc::Receiver<Result<Vec<u8>, ReadError>>> = None;
    // Messages from elsewhere in the orchestrator for this node, once its session is up.
    let (outbox_tx, mut outbox) = mpsc::channel::<OrchMsg>(OUTBOX_DEPTH);
    let mut outbox_tx = Some(outbox_tx);
    // In `edge_sessions_active` from the session's start to this task's end.
    let mut active = None;
    // The hello gate's place for this connection's hello, from the hello until the
    // session is up and its assignments are queued again.
    let mut admitted: Option<Permit> = None;
    loop {
        if let (Some(node), Some(tx)) = (session.node(), outbox_tx.as_ref()) {
            server.links.set_outbox(node, id, tx.clone());
            outbox_tx = None;
            active = Some(server.metrics.session_active());
            node_up(&server, node, id, session.take_sync());
            // A CA rotation under way: the node gets a certificate of the new CA now.
            // It counts as moved once it says it stored the certificate.
            if let (Some(msg), Some(send)) = (
                move_to_next_ca(&server.registry, &server.metrics, &conn, node),
                control.as_mut(),
            ) {
                server.metrics.frame("tx");
                if let Err(error) = write_msg(send, &msg).await {
                    debug!(%error, "send failed");
                }
            }
            admitted = None;
        }
        let deadline = session.poll_timeout();
        // Every branch here is cancel-safe: whichever loses is dropped without losing data.
        // Writes happen in the arms' bodies, never in a branch future.
        tokio::select! {
            Some(msg) = outbox.recv(), if outbox_tx.is_none() => {
                if let Some(send) = control.as_mut() {
                    server.metrics.frame("tx");
                    if let Err(error) = write_msg(send, &msg).await {
                        warn!(%remote, %error, "could not send to the node");
                    }
                }
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) if control.is_none() => {
                    inbound = Some(read_frames(recv));
                    control = Some(send);
                }
                // Later streams carry artifacts, and only for an authenticated session.
                Ok((send, recv)) => match (session.node(), peer) {
                    (Some(node), Some(_)) => {
                        tokio::spawn(serve_stream(server.clone(), node, send, recv));
                    }
                    _ => session.handle_decode_error(DecodeError::Malformed(
                        "a second stream before the session is established",
                    )),
                },
                Err(e) => { debug!(%remote, error = %e, "connection ended"); break; }
            },
            frame = next_frame(&mut inbound), if inbound.is_some() => match frame {
                Some(Ok(body)) => {
                    server.metrics.frame("rx");
                    // A hello passes the gate before it costs a registry read or write.
                    let gated = session
                        .hello_intent(&body)
                        .map(|intent| (intent, server.pacing.admit(intent)));
                    match gated {
                        Some((intent, Err(retry_after))) => session.refuse_busy(intent, retry_after),
                        Some((_, Ok(permit))) => {
                            admitted = Some(permit);
                            with_ctx(&server, |ctx| session.handle_frame(&body, ctx));
                        }
                        None => with_ctx(&server, |ctx| session.handle_frame(&body, ctx)),
                    }
                }
                // The node finished the stream between frames.
                None => break,
                Some(Err(ReadError::Decode(e))) => session.handle_decode_error(e),
                Some(Err(ReadError::Stream(e))) => {
                    debug!(%remote, error = %e, "stream ended");
                    break;
                }
            },
            Some((watched, liveness)) = liveness_rx.recv() => {
                with_ctx(&server, |ctx| session.handle_liveness(watched, liveness, ctx));
            }
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
        }
        let done = match control.as_mut() {
            Some(send) => flush_actions(&mut session, &server, &conn, send, &liveness_tx).await,
            None => session.is_closed(),
        };
        if done {
            break;
        }
    }
    with_ctx(&server, |ctx| session.handle_closed(ctx));
    while let Some(action) = session.poll_action() {
        match action {
            Action::Persist(change) => {
                if let Err(error) = persist_off_runtime(&server, change).await {
                    warn!(%error, "could not persist a registry change");
                }
            }
            Action::Event(e) => server.metrics.emit(&e),
            _ => {}
        }
    }
    drop(active);
    drop(admitted);
    server.links.remove_connection(id);
    if let Some(node) = peer {
        server.links.clear_outbox(node, id);
        server
            .deployments
            .node_down(node, || !server.registry.fleet().is_online(node));
    }
    // Let the close frame and any final message go out before the connection is dropped.
    conn.close(close_code(None), b"");
}

/// A liveness probe: one byte in a QUIC datagram, which the node's QUIC stack acknowledges.
/// Nothing reads it (`edge_proto::quic::transport` keeps the buffer it lands in small).
const PROBE: &[u8] = &[0];
/// Probes go out at least this far apart, and at least two of the connection's round trips.
const PROBE_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Probes in a row that go unanswered before the peer counts as gone. A live peer
/// acknowledges each within a round trip and its ack delay; several cover a lost one.
const PROBES_UNANSWERED: u32 = 5;

// Without probes (a peer that takes no datagrams), the window alone must let a live node's
// keep-alive through, with one lost. That holds for the default profile; a node on a slower
// one (`liveness = "metered"`) is heard through the probes, which every node takes
// (`edge_proto::quic::client_transport`).
const _: () = assert!(LIVENESS_WINDOW.as_millis() >= 2 * KEEP_ALIVE.as_millis());

/// Whether the peer of `conn` (another connection of the node that is saying hello) is still
/// there. It probes: a datagram every probe interval, which a live peer acknowledges at once.
/// Anything received from the peer says it is alive; [`PROBES_UNANSWERED`] probes without an
/// answer, or `window` without a packet (a live node sends a keep-alive every `KEEP_ALIVE`
/// even if it takes no probes), say it is gone. A node that crashed, rebooted or moved to
/// another link answers nothing on its old connection, even before the idle timeout
/// closes it, so its new connection waits a fraction of a second, not seconds.
async fn liveness(conn: Option<quinn::Connection>, window: std::time::Duration) -> Liveness {
    let Some(conn) = conn else {
        return Liveness::Gone;
    };
    let heard = conn.stats().udp_rx.datagrams;
    let deadline = tokio::time::Instant::now() + window;
    let mut probes = tokio::time::interval((conn.rtt() * 2).max(PROBE_INTERVAL_MIN));
    let mut unanswered = 0;
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => return Liveness::Gone,
            now = probes.tick() => {
                if conn.stats().udp_rx.datagrams > heard {
                    return Liveness::Live;
                }
                if now >= deadline || unanswered >= PROBES_UNANSWERED {
                    return Liveness::Silent;
                }
                if conn.send_datagram(PROBE.into()).is_ok() {
                    unanswered += 1;
                }
            }
        }
    }
}

/// How long a new stream may take to say what it is for.
const STREAM_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A stream a node opened besides its control stream: today, always an artifact fetch.
async fn serve_stream(
    server: Arc<Server>,
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
    let Some(store) = &server.artifacts else {
        let _ = write_msg(&mut send, &edge_proto::ArtifactReply::NotFound).await;
        let _ = send.finish();
        return;
    };
    let started = tokio::time::Instant::now();
    match serve_artifact_stream(store, req, &mut send).await {
        Ok(Served::Sent { bytes }) => {
            // Sent and finished: the node's download rate, as near as this side sees it.
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            server.deployments.artifact_fetched(node, bytes, elapsed_ms);
            debug!(node = %node, bytes, elapsed_ms, "artifact sent");
        }
        Ok(other) => debug!(node = %node, outcome = ?other, "artifact not sent"),
        Err(ServeError::Local(error)) => warn!(node = %node, %error, "reading an artifact failed"),
        Err(error) => debug!(node = %node, %error, "artifact transfer ended early"),
    }
}

/// A node's session is ready for messages, and it said `said` at hello: it gets what
/// changed since (see [`Deployer::node_up`](crate::deployer::Deployer::node_up)), with what
/// the store holds of its outbox.
fn node_up(server: &Server, node: NodeId, session: SessionId, said: Option<SyncState>) {
    let Some((record, _)) = server.registry.node(node) else {
        return;
    };
    // A node that said nothing learns only the highest number stored.
    let (from, limit) = said.as_ref().map_or((u64::MAX, 0), |s| {
        (s.outbox_oldest, orchestrator_core::sync::MAX_RESENT_ACKS)
    });
    let stored = server
        .registry
        .node_event_seqs(node, from, limit)
        .unwrap_or_else(|error| {
            // Answered without them: the node sends its events again, and storing them
            // twice changes nothing.
            warn!(node = %node, %error, "could not read a node's stored events");
            StoredSeqs::default()
        });
    server
        .deployments
        .node_up(record, session, said.as_ref(), &stored);
}

/// The offers of the fleet's models that `node`'s model reader can run.
async fn models_for(server: &Server, node: NodeId) -> Vec<edge_proto::OrchMsg> {
    let (Some(models), Some((record, _))) = (&server.models, server.registry.node(node)) else {
        return Vec::new();
    };
    let protocol = server.registry.fleet().protocol(node);
    match models.for_nodes().await {
        Ok(active) => active
            .iter()
            .filter(|m| m.offered_to(&record.info.model_operators, protocol))
            .map(|m| m.offer())
            .collect(),
        Err(error) => {
            // The node keeps the model it has, and is offered the fleet's at its next session.
            warn!(node = %node, %error, "could not read the fleet's models");
            Vec::new()
        }
    }
}

/// Frames from the control stream: how many may wait for the connection loop before
/// the reader stops reading (and QUIC flow control holds the node back).
const INBOUND_DEPTH: usize = 4;

/// Reads the control stream's frames in a task of its own and hands them over in order; the
/// channel closes after the stream ends or fails (the failure is the last item).
///
/// `read_frame` is not cancel-safe: dropped while a frame is half read, it loses those bytes
/// and every later frame is read from the wrong offset. The connection loop races reading
/// against its outbox, so it must not read itself; a channel's `recv` is cancel-safe.
fn read_frames(mut recv: quinn::RecvStream) -> mpsc::Receiver<Result<Vec<u8>, ReadError>> {
    let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
    tokio::spawn(async move {
        loop {
            let item = match read_frame(&mut recv).await {
                Ok(Some(body)) => Ok(body),
                // Finished between frames: the channel closing says so.
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            // A send fails only when the connection loop is gone: nobody wants the rest.
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The next frame from the control stream's reader; `None` once it has nothing more.
async fn next_frame(
    inbound: &mut Option<mpsc::Receiver<Result<Vec<u8>, ReadError>>>,
) -> Option<Result<Vec<u8>, ReadError>> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn with_ctx(server: &Server, f: impl FnOnce(&mut Ctx<'_>)) {
    let ca = server.registry.ca();
    let mut fleet = server.registry.fleet();
    let mut ctx = Ctx {
        fleet: &mut fleet,
        ca: &*ca,
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
async fn persist_off_runtime(server: &Server, change: Change) -> Result<(), StoreError> {
    let registry = server.registry.clone();
    tokio::task::spawn_blocking(move || registry.persist(&change))
        .await
        .unwrap_or_else(|e| Err(StoreError::Backend(format!("store task failed: {e}"))))
}

/// Carries out the session's actions. Returns whether the connection is finished.
async fn flush_actions(
    session: &mut ServerSession,
    server: &Server,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    liveness_tx: &mpsc::Sender<(SessionId, Liveness)>,
) -> bool {
    while let Some(action) = session.poll_action() {
        match action {
            Action::Persist(change) => {
                if let Err(error) = persist_off_runtime(server, change).await {
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
                server.metrics.frame("tx");
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
                server.links.close_session(
                    old,
                    RejectCode::IdentityMismatch,
                    "replaced by a newer session",
                );
            }
            Action::CheckLiveness {
                session: watched,
                window,
            } => {
                let other = server.links.connection_of(watched);
                let tx = liveness_tx.clone();
                tokio::spawn(async move {
                    let found = liveness(other, window).await;
                    // The connection asking may have ended meanwhile: then nobody waits.
                    let _ = tx.send((watched, found)).await;
                });
            }
            Action::Event(e) => {
                server.metrics.emit(&e);
                if let Event::CapabilitiesChanged { node } = e
                    && let Some((record, online)) = server.registry.node(node)
                {
                    server.deployments.node_changed(record, online);
                }
            }
            Action::Admission(node, reply) => {
                if let Some(reason) = &reply.rejected {
                    server.metrics.workload(&WorkloadEvent::AdmissionRefused {
                        node,
                        workload: reply.workload.as_str(),
                        reason: reason.as_str(),
                    });
                }
                server
                    .deployments
                    .deploy(|d| ((), d.admission(node, &reply)));
            }
            Action::WorkloadReport(node, report) => {
                debug!(node = %node, workload = %report.workload, state = ?report.state, "workload report");
                server.deployments.report(node, &report);
                server
                    .reports
                    .record(node, report, crate::clock::now_unix(), &server.metrics);
            }
            Action::ProxyAdvert(node, advert) => {
                debug!(node = %node, peer = ?advert.peer, "proxy advert");
                server.deployments.proxy_advert(node, advert);
            }
            Action::StoreEvents(node, batch) => {
                let records = orchestrator_core::events::records(
                    node,
                    &batch,
                    crate::clock::now_unix().saturating_mul(1000),
                );
                let newest_position = records
                    .iter()
                    .filter_map(|r| match &r.what {
                        orchestrator_core::events::What::Location(p) => Some((r.at_ms, p.clone())),
                        _ => None,
                    })
                    .max_by_key(|(at_ms, _)| *at_ms);
                let registry = server.registry.clone();
                let stored = tokio::task::spawn_blocking(move || registry.put_events(&records))
                    .await
                    .unwrap_or_else(|e| {
                        Err(StoreError::Backend(format!("store task failed: {e}")))
                    });
                match stored {
                    Ok(()) => {
                        if let Some((at_ms, point)) = newest_position {
                            moved(server, node, &point, at_ms).await;
                        }
                        let ack = orchestrator_core::events::acknowledgement(&batch);
                        server.metrics.frame("tx");
                        if let Err(error) =
                            write_msg(send, &edge_proto::OrchMsg::EventsStored(Box::new(ack))).await
                        {
                            debug!(%error, "send failed");
                        }
                    }
                    // Not acknowledged: the node keeps the events. It sends them again on
                    // its next session, so this one ends now rather than leave it waiting.
                    Err(error) => {
                        warn!(node = %node, %error, "could not store a node's events; closing its session");
                        let _ = send.finish();
                        conn.close(
                            close_code(Some(RejectCode::Internal)),
                            b"orchestrator storage failed; retry later",
                        );
                        return true;
                    }
                }
            }
            Action::Renew(node, req) => {
                let answer = renew(server, conn, node, &req);
                server.metrics.frame("tx");
                if let Err(error) = write_msg(send, &answer).await {
                    debug!(%error, "send failed");
                }
            }
            Action::CertificateStored(node, stored) => {
                let cert = stored.cert_der.as_slice();
                // The node's word on what it holds is taken as far as it could only hurt
                // itself: the certificate must be the new CA's and name this node.
                if server.registry.rotation().next_ca_hash.is_some()
                    && !server.registry.needs_move(cert)
                    && node_id_from_cert(cert) == Some(node)
                {
                    mark_moved(&server.registry, node);
                }
            }
            Action::OfferModels(node) => {
                for offer in models_for(server, node).await {
                    server.metrics.frame("tx");
                    if let Err(error) = write_msg(send, &offer).await {
                        debug!(%error, "send failed");
                    }
                }
            }
            Action::Traffic(node, report) => {
                server.deployments.read_routes(|routes| {
                    server.reports.traffic.record(
                        node,
                        &report,
                        routes,
                        crate::clock::now_unix(),
                        &server.metrics,
                    )
                });
            }
        }
    }
    session.is_closed()
}
