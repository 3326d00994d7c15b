//! Enrollment, sessions, liveness and hostile peers over real QUIC with real certificates, on
//! 127.0.0.1 port 0.

use edge_proto::quic::read_frame;
use edge_proto::{Hello, Intent, List, NodeId, NodeMsg, OrchMsg, RejectCode, decode, text};
use edge_tests::relay::Relay;
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, dial, eventually, hello_as, node_config};
use node_core::session::Fatal;
use node_daemon::daemon::DaemonError;
use node_daemon::identity::IdentityDir;
use std::net::SocketAddr;

fn pin(ca_hash: &str) -> [u8; 32] {
    let hex = ca_hash.strip_prefix("sha256:").expect("sha256 prefix");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn rejected(result: Result<(), DaemonError>) -> RejectCode {
    match result {
        Err(DaemonError::Fatal(Fatal::Rejected { code, .. })) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrolls_reports_itself_and_restarts_with_its_stored_identity() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "shop-1",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "labels = { site = \"berlin\" }\nlocation = { lat = 52.52, lon = 13.405, alt_m = 34.0 }",
    );
    let node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || orch.online("shop-1"))
            .await
            .is_some()
    );
    let (id, record) = {
        let fleet = orch.orch.registry.fleet();
        let n = fleet.find("shop-1").expect("registered");
        (n.id, n.clone())
    };
    assert_eq!(record.info.arch, std::env::consts::ARCH);
    assert_eq!(
        record.info.labels.get("site").map(String::as_str),
        Some("berlin")
    );
    let loc = record.info.location.expect("location reported");
    assert_eq!((loc.lat, loc.lon, loc.alt_m), (52.52, 13.405, Some(34.0)));
    assert!(record.info.cpus >= 1 && record.info.memory_bytes > 0);
    // Live load arrives with the status messages.
    assert!(
        eventually(PATIENCE, || orch
            .orch
            .registry
            .fleet()
            .node(id)
            .is_some_and(|n| n.load.is_some()))
        .await
        .is_some()
    );
    // The private key never left the node: the orchestrator stored no key for it.
    let stored = IdentityDir::new(data.path())
        .load()
        .expect("load")
        .expect("enrolled");
    assert_eq!(stored.node_id, id);

    node.stop().await.expect("clean stop");
    assert!(
        eventually(PATIENCE, || !orch.online("shop-1"))
            .await
            .is_some()
    );
    // The token had one use, spent at enrollment: coming back works only through the stored
    // identity.
    let node = TestNode::spawn(config);
    assert!(
        eventually(PATIENCE, || orch.online("shop-1"))
            .await
            .is_some()
    );
    assert_eq!(orch.orch.registry.fleet().nodes().count(), 1);
    assert_eq!(
        orch.orch.registry.fleet().find("shop-1").map(|n| n.id),
        Some(id)
    );
    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_a_reason_on_both_sides() {
    let orch = TestOrchestrator::start().await;
    let ca = orch.ca_hash();
    let addr = orch.orch.quic_addr;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();

    // Unknown token.
    let wrong = "abcdef.0123456789abcdef0123456789abcdef";
    let node = TestNode::spawn(node_config(
        "n-wrong",
        dirs[0].path(),
        addr,
        Some((wrong, &ca)),
        "",
    ));
    assert_eq!(rejected(node.exited().await), RejectCode::BadToken);

    // Expired: valid for zero seconds.
    let (expired, _) = orch
        .orch
        .registry
        .create_token(0, 1, String::new())
        .expect("token");
    let node = TestNode::spawn(node_config(
        "n-old",
        dirs[1].path(),
        addr,
        Some((&expired, &ca)),
        "",
    ));
    assert_eq!(rejected(node.exited().await), RejectCode::TokenExpired);

    // Spent: one use, two nodes.
    let once = orch.token(1);
    let first = TestNode::spawn(node_config(
        "n-first",
        dirs[2].path(),
        addr,
        Some((&once, &ca)),
        "",
    ));
    assert!(
        eventually(PATIENCE, || orch.online("n-first"))
            .await
            .is_some()
    );
    let second = TestNode::spawn(node_config(
        "n-second",
        dirs[3].path(),
        addr,
        Some((&once, &ca)),
        "",
    ));
    assert_eq!(rejected(second.exited().await), RejectCode::TokenSpent);
    assert!(!orch.known("n-second"));

    for reason in ["bad_token", "token_expired", "token_spent"] {
        let series = format!("edge_enrollment_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(orch.metric(&series), 1.0, "{series}");
    }
    assert_eq!(orch.metric("edge_enrollments_total"), 1.0);
    first.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_hash_stops_the_node_before_it_sends_the_token() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let other_ca = format!("sha256:{}", "ab".repeat(32));
    let node = TestNode::spawn(node_config(
        "n-pinned",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &other_ca)),
        "",
    ));
    match node.exited().await {
        Err(DaemonError::Fatal(Fatal::Untrusted(why))) => {
            assert!(why.contains("ca_hash"), "{why}")
        }
        other => panic!("expected an untrusted-server error, got {other:?}"),
    }
    // The orchestrator saw the handshake fail, and the token was not spent.
    assert!(
        eventually(PATIENCE, || orch
            .orch
            .metrics
            .encode()
            .contains("edge_handshake_failures_total{"))
        .await
        .is_some()
    );
    assert_eq!(
        orch.orch
            .registry
            .fleet()
            .tokens()
            .next()
            .map(|t| t.uses_left),
        Some(1)
    );
}

/// A raw client: opens the control stream, sends `bytes`, and returns what the orchestrator
/// answered and the close code.
async fn raw_exchange(
    addr: SocketAddr,
    tls: quinn::ClientConfig,
    bytes: &[u8],
    finish: bool,
) -> (Vec<OrchMsg>, Option<u64>) {
    let (endpoint, conn) = dial(addr, tls).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    if finish {
        let _ = send.finish();
    }
    let mut answers = Vec::new();
    while let Ok(Some(body)) = read_frame(&mut recv).await {
        answers.push(decode(&body).expect("orchestrator frames decode"));
    }
    let code = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    };
    endpoint.close(0u32.into(), b"");
    (answers, code)
}

fn hello(intent: Intent, node_id: Option<NodeId>) -> Vec<u8> {
    edge_proto::encode(&NodeMsg::Hello(Hello {
        versions: List::from_iter([1]),
        intent,
        node_id,
        agent: text("hostile/1"),
        sync: None,
    }))
}

fn reject_code(answers: &[OrchMsg]) -> Option<RejectCode> {
    answers.iter().find_map(|m| match m {
        OrchMsg::Reject(r) => Some(r.code),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_that_connection_only() {
    let orch = TestOrchestrator::start().await;
    let addr = orch.orch.quic_addr;
    let tls = || node_daemon::tls::enroll_config(pin(&orch.ca_hash())).expect("tls");
    let malformed = u64::from(RejectCode::Malformed.close_code());

    // A healthy node keeps its session through all of it.
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let good = TestNode::spawn(node_config(
        "good",
        data.path(),
        addr,
        Some((&token, &orch.ca_hash())),
        "",
    ));
    assert!(eventually(PATIENCE, || orch.online("good")).await.is_some());

    let mut random = vec![0u8; 4];
    random.extend((0..200).map(|i| (i * 37 % 251) as u8));
    random[..4].copy_from_slice(&200u32.to_be_bytes());
    let mut truncated = hello(Intent::Enroll, None);
    truncated.truncate(truncated.len() - 3);
    let mut unknown_variant = vec![0, 0, 0, 1];
    unknown_variant.push(77);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes", random, false),
        ("huge length prefix", u32::MAX.to_be_bytes().to_vec(), false),
        ("truncated frame", truncated, true),
        ("unknown variant", unknown_variant, false),
        (
            "status before hello",
            edge_proto::encode(&NodeMsg::Status(edge_proto::Status {
                cpu_percent: 1.0,
                memory_used_bytes: 1,
                disk_free_bytes: 1,
                uptime_secs: 1,
            })),
            false,
        ),
    ];
    for (what, bytes, finish) in cases {
        let (answers, code) = raw_exchange(addr, tls(), &bytes, finish).await;
        assert_eq!(code, Some(malformed), "{what}: closed as malformed");
        assert_eq!(
            reject_code(&answers).unwrap_or(RejectCode::Malformed),
            RejectCode::Malformed,
            "{what}"
        );
    }
    // A session without a client certificate is the wrong intent.
    let (answers, _) = raw_exchange(addr, tls(), &hello(Intent::Session, None), false).await;
    assert_eq!(reject_code(&answers), Some(RejectCode::WrongIntent));
    // A version nobody speaks.
    let mut h = NodeMsg::Hello(Hello {
        versions: List::from_iter([99]),
        intent: Intent::Enroll,
        node_id: None,
        agent: text("future/9"),
        sync: None,
    });
    let (answers, _) = raw_exchange(addr, tls(), &edge_proto::encode(&h), false).await;
    assert_eq!(reject_code(&answers), Some(RejectCode::UnsupportedVersion));
    if let NodeMsg::Hello(hello) = &mut h {
        hello.versions = List::new();
    }

    assert!(orch.online("good"), "the healthy session was untouched");
    assert!(orch.metric("edge_enrollment_failures_total{reason=\"malformed\"}") >= 5.0);
    good.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_another_nodes_id_is_refused() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(2);
    let ca = orch.ca_hash();
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = TestNode::spawn(node_config(
        "node-a",
        a_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &ca)),
        "",
    ));
    let b = TestNode::spawn(node_config(
        "node-b",
        b_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &ca)),
        "",
    ));
    assert!(
        eventually(PATIENCE, || orch.online("node-a") && orch.online("node-b"))
            .await
            .is_some()
    );
    a.stop().await.expect("stop");
    let b_id = orch
        .orch
        .registry
        .fleet()
        .find("node-b")
        .map(|n| n.id)
        .expect("b");

    // Node A's certificate, claiming to be B.
    let a_identity = IdentityDir::new(a_dir.path())
        .load()
        .expect("load")
        .expect("enrolled");
    let tls = node_daemon::tls::session_config(&a_identity).expect("tls");
    let (answers, _) = raw_exchange(
        orch.orch.quic_addr,
        tls,
        &hello(Intent::Session, Some(b_id)),
        false,
    )
    .await;
    assert_eq!(reject_code(&answers), Some(RejectCode::IdentityMismatch));
    assert!(
        !orch.online("node-a"),
        "the impostor got no session as anyone"
    );
    assert!(orch.online("node-b"), "the real B is untouched");
    assert_eq!(
        orch.metric("edge_session_rejections_total{reason=\"identity_mismatch\"}"),
        1.0
    );
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_shows_offline_and_the_node_comes_back_when_it_heals() {
    let orch = TestOrchestrator::start().await;
    let relay = Relay::start(orch.orch.quic_addr).await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let node = TestNode::spawn(node_config(
        "remote",
        data.path(),
        relay.addr,
        Some((&token, &orch.ca_hash())),
        "",
    ));
    assert!(
        eventually(PATIENCE, || orch.online("remote"))
            .await
            .is_some()
    );

    relay.link.cut();
    let took = eventually(PATIENCE, || !orch.online("remote")).await;
    assert!(took.is_some(), "the orchestrator noticed the cut link");
    relay.link.heal();
    assert!(
        eventually(PATIENCE, || orch.online("remote"))
            .await
            .is_some(),
        "back online"
    );
    assert!(
        node.is_running(),
        "the node rode out the cut without giving up"
    );
    node.stop().await.expect("clean stop");
}

/// The orchestrator's offline detection follows each node's `liveness`: with both links cut
/// at once, a node on the default profile (idle timeout 4 s) shows offline while one that
/// asked for 20 s is still online, and that one goes offline later by itself. Both come back
/// when their links heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_detection_follows_each_nodes_liveness() {
    let orch = TestOrchestrator::start().await;
    let fast_relay = Relay::start(orch.orch.quic_addr).await;
    let slow_relay = Relay::start(orch.orch.quic_addr).await;
    let token = orch.token(2);
    let (fast_dir, slow_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let ca = orch.ca_hash();
    let join = Some((token.as_str(), ca.as_str()));
    let fast = TestNode::spawn(node_config(
        "fast",
        fast_dir.path(),
        fast_relay.addr,
        join,
        "",
    ));
    let slow = TestNode::spawn(node_config(
        "slow",
        slow_dir.path(),
        slow_relay.addr,
        join,
        "liveness = { keep_alive_secs = 2, idle_timeout_secs = 20 }",
    ));
    for name in ["fast", "slow"] {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} online"
        );
    }

    fast_relay.link.cut();
    slow_relay.link.cut();
    let cut = std::time::Instant::now();
    assert!(
        eventually(PATIENCE, || !orch.online("fast"))
            .await
            .is_some(),
        "the default node shows offline"
    );
    assert!(
        orch.online("slow"),
        "the node that asked for a 20 s idle timeout is still online {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        eventually(PATIENCE, || !orch.online("slow"))
            .await
            .is_some(),
        "and shows offline by itself later"
    );

    fast_relay.link.heal();
    slow_relay.link.heal();
    for name in ["fast", "slow"] {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} back online"
        );
    }
    fast.stop().await.expect("clean stop");
    slow.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_by_themselves_after_an_orchestrator_restart() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(2);
    let ca = orch.ca_hash();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes: Vec<_> = ["r-1", "r-2"]
        .iter()
        .zip(&dirs)
        .map(|(name, d)| {
            TestNode::spawn(node_config(
                name,
                d.path(),
                orch.orch.quic_addr,
                Some((&token, &ca)),
                "",
            ))
        })
        .collect();
    assert!(
        eventually(PATIENCE, || orch.online("r-1") && orch.online("r-2"))
            .await
            .is_some()
    );
    let ids: Vec<NodeId> = {
        let fleet = orch.orch.registry.fleet();
        ["r-1", "r-2"]
            .iter()
            .filter_map(|n| fleet.find(n).map(|r| r.id))
            .collect()
    };

    let orch = orch.restart().await;
    assert_eq!(orch.ca_hash(), ca, "the CA survived the restart");
    assert_eq!(
        orch.orch.registry.fleet().nodes().count(),
        2,
        "the registry survived"
    );
    assert_eq!(
        orch.orch
            .registry
            .fleet()
            .tokens()
            .next()
            .map(|t| t.uses_left),
        Some(0),
        "spent token uses survived"
    );
    assert!(
        eventually(PATIENCE * 2, || orch.online("r-1") && orch.online("r-2"))
            .await
            .is_some(),
        "both nodes reconnected without help"
    );
    let after: Vec<NodeId> = {
        let fleet = orch.orch.registry.fleet();
        ["r-1", "r-2"]
            .iter()
            .filter_map(|n| fleet.find(n).map(|r| r.id))
            .collect()
    };
    assert_eq!(ids, after, "same identities");
    for n in nodes {
        n.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_is_refused_at_its_next_connect() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let node = TestNode::spawn(node_config(
        "gone",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    ));
    assert!(eventually(PATIENCE, || orch.online("gone")).await.is_some());
    let id = orch
        .orch
        .registry
        .fleet()
        .find("gone")
        .map(|n| n.id)
        .expect("known");
    assert!(orch.orch.delete_node(id).expect("delete"));
    assert_eq!(rejected(node.exited().await), RejectCode::UnknownNode);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_node_fetches_an_artifact_on_its_own_stream() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let node = TestNode::spawn(node_config(
        "fetcher",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    ));
    assert!(
        eventually(PATIENCE, || orch.online("fetcher"))
            .await
            .is_some()
    );
    node.stop().await.expect("stop");

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let store = &orch.orch.artifacts;
    let stored = store.put(&payload[..], None).await.expect("put");

    // The node's own certificate, a session, then a fetch on a second stream.
    let identity = IdentityDir::new(data.path())
        .load()
        .expect("load")
        .expect("enrolled");
    let tls = node_daemon::tls::session_config(&identity).expect("tls");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = endpoint
        .connect_with(
            tls,
            orch.orch.quic_addr,
            edge_proto::ORCHESTRATOR_SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    send.write_all(&hello(Intent::Session, Some(identity.node_id)))
        .await
        .expect("hello");
    let welcome = read_frame(&mut recv).await.expect("read").expect("a frame");
    assert!(matches!(
        decode::<OrchMsg>(&welcome),
        Ok(OrchMsg::Welcome(_))
    ));

    let cache = node_daemon::artifacts::ArtifactCache::open(data.path()).expect("cache");
    let path = cache
        .fetch(&conn, stored.digest, stored.size)
        .await
        .expect("fetched");
    assert_eq!(std::fs::read(&path).expect("read"), payload);
    endpoint.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_not_served_without_a_session() {
    let orch = TestOrchestrator::start().await;
    let tls = node_daemon::tls::enroll_config(pin(&orch.ca_hash())).expect("tls");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = endpoint
        .connect_with(
            tls,
            orch.orch.quic_addr,
            edge_proto::ORCHESTRATOR_SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("handshake");
    let (mut control, _) = conn.open_bi().await.expect("control");
    control
        .write_all(&hello(Intent::Enroll, None))
        .await
        .expect("hello");
    let (mut second, _) = conn.open_bi().await.expect("second stream");
    let _ = second
        .write_all(&edge_proto::encode(&edge_proto::StreamOpen::Artifact(
            edge_proto::ArtifactRequest {
                digest: [0; 32],
                offset: 0,
            },
        )))
        .await;
    let code = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    };
    assert_eq!(code, Some(u64::from(RejectCode::Malformed.close_code())));
    endpoint.close(0u32.into(), b"");
}

/// A node that dials again resumes its TLS session: no certificate is sent, signed or checked
/// either way, and the session is still the node's own, named by the certificate it was first
/// opened with. A node that kept nothing (a new process) makes a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dials_again_resumes_its_tls_session() {
    let orch = TestOrchestrator::start().await;
    let (identity, _data) = orch.enrolled_identity("returning").await;
    let session = async |tls: quinn::ClientConfig| {
        let (endpoint, conn) = dial(orch.orch.quic_addr, tls).await;
        let (_send, _recv, answer) = hello_as(&conn, identity.node_id).await;
        match answer {
            OrchMsg::Welcome(w) => assert_eq!(w.node_id, identity.node_id),
            other => panic!("welcomed, not {other:?}"),
        }
        assert!(orch.online("returning"));
        conn.close(0u32.into(), b"bye");
        endpoint.wait_idle().await;
        assert!(
            eventually(PATIENCE, || !orch.online("returning"))
                .await
                .is_some()
        );
    };
    // One configuration for every dial, as the daemon keeps one: it holds the tickets.
    let (kept, checked) = node_daemon::tls::session_config_counted(&identity).expect("tls");
    for _ in 0..3 {
        session(kept.clone()).await;
    }
    assert_eq!(
        checked.count(),
        1,
        "the orchestrator's certificate was checked on the first dial only"
    );
    let (fresh, fresh_checked) = node_daemon::tls::session_config_counted(&identity).expect("tls");
    session(fresh).await;
    assert_eq!(
        fresh_checked.count(),
        1,
        "a new configuration has no ticket"
    );
}
