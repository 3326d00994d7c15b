//! A simulated node's way into a fleet, as `fleet-sim` and `api-placements` run it: the real
//! enrollment and session protocol over real QUIC from a loopback address of its own, with the
//! capabilities the caller gives (fixed, or varied per node), so a node costs no `sysinfo` call.
//!
//! What a node does once its session is up (count assignments, report status, watch for a
//! drop) is each tool's own measurement and stays in the tool. Nothing here prints or judges.

use anyhow::{Context, anyhow, bail};
use edge_proto::quic::{read_frame, write_msg};
use edge_proto::{
    Capabilities, Der, EnrollRequest, Intent, NodeId, NodeMsg, OrchMsg, decode, text,
};
use node_daemon::identity::{Identity, IdentityDir};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::fixtures;

/// The same credentials for every simulated node, bar the certificate.
pub struct Kit {
    orchestrator: SocketAddr,
    token: String,
    enroll_tls: quinn::ClientConfig,
    key_pkcs8: Vec<u8>,
    csr: Vec<u8>,
}

/// Shows where the fleet dials, never the token or the key.
impl std::fmt::Debug for Kit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kit")
            .field("orchestrator", &self.orchestrator)
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// One key pair and one CSR for the whole fleet: the orchestrator signs one certificate per
    /// node id whatever the key, and a thousand key generations would only slow the start.
    /// `ca_pin` is the SHA-256 of the orchestrator's CA certificate.
    pub fn new(
        orchestrator: SocketAddr,
        token: String,
        ca_pin: [u8; 32],
        csr_name: &str,
    ) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate().context("generating the shared key pair")?;
        let csr = IdentityDir::csr(&key, csr_name).context("making the shared CSR")?;
        Ok(Self {
            orchestrator,
            token,
            enroll_tls: node_daemon::tls::enroll_config(ca_pin)?,
            key_pkcs8: key.serialize_der(),
            csr,
        })
    }
}

/// The loopback address of node `i`: 127.0.1.1 for the first `per_address` nodes, then .2, ...
/// Spreading the fleet over addresses keeps the orchestrator from seeing one peer with a
/// thousand connections.
pub fn source_address(i: usize, per_address: usize) -> IpAddr {
    let k = i / per_address.max(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (k / 254) as u8,
        1 + (k % 254) as u8,
    ))
}

async fn read_answer(recv: &mut quinn::RecvStream) -> anyhow::Result<OrchMsg> {
    let body = read_frame(recv)
        .await?
        .context("the orchestrator finished the stream without answering")?;
    Ok(decode(&body)?)
}

/// Enrolls with the real protocol; returns the node id, its certificate and the CA's.
pub async fn enroll(
    endpoint: &quinn::Endpoint,
    kit: &Kit,
    name: &str,
    caps: &Capabilities,
) -> anyhow::Result<(NodeId, Vec<u8>, Vec<u8>)> {
    let conn = endpoint
        .connect_with(
            kit.enroll_tls.clone(),
            kit.orchestrator,
            node_daemon::tls::server_name(),
        )?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(&mut send, &fixtures::hello(Intent::Enroll, None)).await?;
    let req = EnrollRequest {
        token: text(&kit.token),
        name: text(name),
        csr_der: Der::new(kit.csr.clone()).context("the CSR fits a Der")?,
        capabilities: caps.clone(),
    };
    write_msg(&mut send, &NodeMsg::Enroll(Box::new(req))).await?;
    let answer = read_answer(&mut recv).await;
    conn.close(0u32.into(), b"enrolled");
    match answer? {
        OrchMsg::Enrolled(e) => Ok((e.node_id, e.cert_der.into_vec(), e.ca_der.into_vec())),
        OrchMsg::Reject(r) => bail!("enrollment rejected ({}): {}", r.code, r.message),
        other => bail!("unexpected answer to enrollment: {other:?}"),
    }
}

/// A node's open session: the connection and its one bidirectional stream.
#[derive(Debug)]
pub struct Session {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// The TLS configuration node `node_id` opens its sessions with, from the certificate
/// enrollment issued it. Keep it from one dial to the next, as the node daemon does, and the
/// next dial resumes the TLS session; a new one for every dial makes every handshake full.
pub fn session_tls(
    kit: &Kit,
    node_id: NodeId,
    cert: Vec<u8>,
    ca: Vec<u8>,
) -> anyhow::Result<quinn::ClientConfig> {
    let identity = Identity {
        node_id,
        cert: CertificateDer::from(cert),
        ca: CertificateDer::from(ca.clone()),
        trust: vec![CertificateDer::from(ca)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kit.key_pkcs8.clone())),
    };
    Ok(node_daemon::tls::session_config(&identity)?)
}

/// Opens a session with `tls` (from [`session_tls`]), says hello and reports `caps` and a
/// first status, as the node daemon does right after `Welcome`.
pub async fn open_session(
    endpoint: &quinn::Endpoint,
    kit: &Kit,
    node_id: NodeId,
    tls: quinn::ClientConfig,
    caps: &Capabilities,
) -> anyhow::Result<Session> {
    let conn = endpoint
        .connect_with(tls, kit.orchestrator, node_daemon::tls::server_name())?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(&mut send, &fixtures::hello(Intent::Session, Some(node_id))).await?;
    match read_answer(&mut recv).await? {
        OrchMsg::Welcome(w) if w.node_id == node_id => {}
        OrchMsg::Busy(b) => return Err(Busy(b.retry_after_ms).into()),
        OrchMsg::Reject(r) => bail!("session rejected ({}): {}", r.code, r.message),
        other => bail!("unexpected answer to hello: {other:?}"),
    }
    write_msg(&mut send, &NodeMsg::Capabilities(Box::new(caps.clone()))).await?;
    write_msg(&mut send, &NodeMsg::Status(fixtures::status(0))).await?;
    Ok(Session { conn, send, recv })
}

/// The orchestrator answered a hello with `OrchMsg::Busy`: come back after this many
/// milliseconds. An error of [`open_session`], found with `downcast_ref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy(pub u32);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "orchestrator busy: retry after {} ms", self.0)
    }
}

impl std::error::Error for Busy {}

/// Retries a step a few times, as a node would after a transient failure.
pub async fn with_retries<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    mut step: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let mut last = None;
    for attempt in 0..3u32 {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
}

/// A node that has joined: its endpoint (its UDP socket), its session, and what getting
/// there took.
#[derive(Debug)]
pub struct Joined {
    pub endpoint: quinn::Endpoint,
    pub session: Session,
    /// What the node dials its sessions with, its TLS session tickets included.
    pub tls: quinn::ClientConfig,
    /// The identity enrollment issued.
    pub node_id: NodeId,
    pub cert: Vec<u8>,
    pub ca: Vec<u8>,
    /// From the first enrollment dial to `Enrolled`, retries included.
    pub enroll: Duration,
    /// From the first session dial to the first status sent, retries included.
    pub session_open: Duration,
}

/// Node `i`, named `name`, joins from `source`: it waits for a permit of `gate` (which bounds
/// how many nodes dial at once), binds its own UDP socket, enrolls and opens its session,
/// each with retries. The permit is held until the session is open.
pub async fn join(
    i: usize,
    name: &str,
    source: IpAddr,
    kit: &Kit,
    gate: &Semaphore,
    caps: &Capabilities,
) -> anyhow::Result<Joined> {
    let _permit = gate.acquire().await.context("gate closed")?;
    let endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))
        .with_context(|| format!("binding a UDP socket on {source}"))?;
    let t0 = Instant::now();
    let (node_id, cert, ca) = with_retries(|| enroll(&endpoint, kit, name, caps))
        .await
        .with_context(|| format!("node {i} enrolling"))?;
    let enroll = t0.elapsed();
    let t1 = Instant::now();
    let tls = session_tls(kit, node_id, cert.clone(), ca.clone())?;
    let session = with_retries(|| open_session(&endpoint, kit, node_id, tls.clone(), caps))
        .await
        .with_context(|| format!("node {i} opening its session"))?;
    Ok(Joined {
        endpoint,
        session,
        tls,
        node_id,
        cert,
        ca,
        enroll,
        session_open: t1.elapsed(),
    })
}
