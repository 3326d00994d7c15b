//! A reconnect storm against an orchestrator that admits one session a second: every node
//! gets online in the end, the hellos it turned away are counted in `/metrics`, and a node
//! that was told to come back later did not dial again before the wait it was given.
//!
//! Real QUIC and real node daemons; each node dials through a small relay of this test's own
//! that notes when the node opens a new QUIC connection (the first Initial packet of it).
//! Past the cap on handshakes in progress, a connection is refused before its handshake.

use edge_tests::{PATIENCE, TestNode, eventually, node_config};
use orchestrator::app::Orchestrator;
use orchestrator_core::pacing::{MIN_RETRY_AFTER, PacingPolicy};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;
use tokio::net::UdpSocket;

const NODES: usize = 6;

/// When a node opened each of its QUIC connections, as its relay saw them.
#[derive(Debug, Default)]
struct Dials {
    at: Mutex<Vec<Instant>>,
}

impl Dials {
    fn times(&self) -> Vec<Instant> {
        self.at.lock().expect("not poisoned").clone()
    }
}

/// The connection ids in a QUIC long-header packet: (type bits, destination, source).
fn long_header(packet: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let first = *packet.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let dcid_len = usize::from(*packet.get(5)?);
    let dcid = packet.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*packet.get(6 + dcid_len)?);
    let scid = packet.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    Some(((first >> 4) & 0x03, dcid, scid))
}

/// Relays one node's datagrams to `target` and notes every new connection it opens: a client
/// Initial packet (long header, type 0) to a connection id that neither the node used before
/// nor the orchestrator chose.
async fn relay(target: SocketAddr, dials: Arc<Dials>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
    let addr = front.local_addr().expect("relay addr");
    let known: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    {
        let (front, back, known, client) =
            (front.clone(), back.clone(), known.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().expect("not poisoned") = Some(from);
                if let Some((0, dcid, _)) = long_header(&buf[..n])
                    && known.lock().expect("not poisoned").insert(dcid.to_vec())
                {
                    dials.at.lock().expect("not poisoned").push(Instant::now());
                }
                let _ = back.send_to(&buf[..n], target).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            // The ids the orchestrator chooses: the node's later Initials are sent to them.
            if let Some((_, _, scid)) = long_header(&buf[..n]) {
                known.lock().expect("not poisoned").insert(scid.to_vec());
            }
            let to = *client.lock().expect("not poisoned");
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// The orchestrator's `/metrics` text.
async fn metrics_text(orch: &Orchestrator) -> String {
    let url = format!("http://{}/metrics", orch.api_addr);
    let token = orch.admin_token.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        agent
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .call()
            .expect("/metrics answers")
            .body_mut()
            .read_to_string()
            .expect("a text body")
    })
    .await
    .expect("the request finished")
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_is_paced_and_every_node_gets_online_without_coming_back_early() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tmp");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind QUIC");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind API");
    // One session a second and no burst beyond it: six nodes saying hello together cannot
    // all be admitted at once.
    let policy = PacingPolicy {
        sessions_per_sec: 1,
        burst: 1,
        ..PacingPolicy::default()
    };
    let orch = Orchestrator::start_with(dir.path(), udp, tcp, policy)
        .await
        .expect("orchestrator starts");
    let (token, _) = orch
        .registry
        .create_token(3600, NODES as u32, "storm".into())
        .expect("token");
    let ca = orch.registry.ca().hash();

    let node_dirs: Vec<_> = (0..NODES)
        .map(|_| tempfile::tempdir().expect("tmp"))
        .collect();
    let mut dials = Vec::new();
    let mut nodes = Vec::new();
    for (i, node_dir) in node_dirs.iter().enumerate() {
        let seen = Arc::new(Dials::default());
        let via = relay(orch.quic_addr, seen.clone()).await;
        let config = node_config(
            &format!("storm-{i}"),
            node_dir.path(),
            via,
            Some((&token, &ca)),
            "",
        );
        dials.push(seen);
        nodes.push(TestNode::spawn(config));
    }

    let online = |orch: &Orchestrator| {
        let fleet = orch.registry.fleet();
        (0..NODES).all(|i| {
            fleet
                .find(&format!("storm-{i}"))
                .is_some_and(|n| fleet.is_online(n.id))
        })
    };
    // Paced at one a second, with the nodes' jitter on top: well within a minute.
    assert!(
        eventually(PATIENCE * 2, || online(&orch)).await.is_some(),
        "every node gets online"
    );

    let text = metrics_text(&orch).await;
    let busy = metric(&text, "edge_session_rejections_total{reason=\"busy\"}");
    assert!(busy >= 1.0, "hellos were paced: {busy}");
    assert_eq!(
        metric(&text, "edge_sessions_opened_total"),
        NODES as f64,
        "one session per node: a paced node is not counted as opened"
    );

    // Each node's first connection enrolls and its second is its first session, at once.
    // Every later one follows a Busy, whose wait is at least MIN_RETRY_AFTER.
    let mut paced = 0;
    for (i, seen) in dials.iter().enumerate() {
        let times = seen.times();
        assert!(times.len() >= 2, "node {i} enrolled and dialed a session");
        for pair in times[1..].windows(2) {
            paced += 1;
            let gap = pair[1] - pair[0];
            assert!(
                gap >= MIN_RETRY_AFTER,
                "node {i} came back {gap:?} after a paced hello"
            );
        }
    }
    assert!(
        paced as f64 >= busy,
        "{paced} redials for {busy} Busy answers"
    );

    for node in nodes {
        let _ = node.stop().await;
    }
    orch.shutdown().await;
}

/// A client TLS that blocks in the server's certificate until its gate's sender is dropped,
/// then refuses it: a handshake that stalls halfway and then fails.
#[derive(Debug)]
struct Stall(Mutex<mpsc::Receiver<()>>);

impl ServerCertVerifier for Stall {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Blocks the client's own runtime, which has nothing else to do.
        let _ = self.0.lock().map(|gate| gate.recv());
        Err(rustls::Error::General("stalled".into()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("stalled".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("stalled".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn stalling_client(gate: mpsc::Receiver<()>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Stall(Mutex::new(gate))))
        .with_no_client_auth();
    tls.alpn_protocols = vec![edge_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// One handshake in progress at most: while a stalled one holds the place, a node's
/// connection is refused before its handshake and counted; once the stalled one ends, the
/// node, retrying on its backoff, gets online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_handshake_cap_are_refused_until_a_place_is_free() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tmp");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind QUIC");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind API");
    let policy = PacingPolicy {
        max_handshakes: 1,
        ..PacingPolicy::default()
    };
    let orch = Orchestrator::start_with(dir.path(), udp, tcp, policy)
        .await
        .expect("orchestrator starts");
    let addr = orch.quic_addr;

    let (release, gate) = mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    // The stalled verifier blocks its runtime: the client gets one of its own.
    let stalled = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
            let connecting = endpoint
                .connect_with(
                    stalling_client(gate),
                    addr,
                    edge_proto::ORCHESTRATOR_SERVER_NAME,
                )
                .expect("connect");
            let _ = started_tx.send(());
            connecting.await.is_err()
        })
    });
    started.await.expect("the stalled client dialed");

    let (token, _) = orch
        .registry
        .create_token(3600, 1, "cap".into())
        .expect("token");
    let node_dir = tempfile::tempdir().expect("tmp");
    let ca = orch.registry.ca().hash();
    let node = TestNode::spawn(node_config(
        "capped",
        node_dir.path(),
        addr,
        Some((&token, &ca)),
        "",
    ));
    let refused = || metric(&orch.metrics.encode(), "edge_handshakes_refused_total");
    assert!(
        eventually(PATIENCE, || refused() >= 1.0).await.is_some(),
        "the node's connection is refused while the stalled handshake holds the place"
    );
    let online = || {
        let fleet = orch.registry.fleet();
        fleet.find("capped").is_some_and(|n| fleet.is_online(n.id))
    };
    assert!(!online(), "refused, so not online yet");

    drop(release);
    let failed = tokio::task::spawn_blocking(move || stalled.join().expect("client thread"))
        .await
        .expect("join");
    assert!(failed, "the stalled handshake never became a connection");
    assert!(
        eventually(PATIENCE * 2, online).await.is_some(),
        "the node gets online once the place is free"
    );
    let _ = node.stop().await;
    orch.shutdown().await;
}
