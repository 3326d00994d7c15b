//! Sessions against hostile and unusual peers over real QUIC, on 127.0.0.1 port 0: what a
//! stranger can make of the metrics, frames that trickle in while the orchestrator talks,
//! a node's identity on two machines at once, and session churn.

use edge_proto::quic::read_frame;
use edge_proto::{
    EventBatch, EventGap, EventKind, List, NodeEvent, NodeMsg, OrchMsg, Unassign, WorkloadReport,
    WorkloadState, decode, text,
};
use edge_tests::relay::Relay;
use edge_tests::{
    PATIENCE, TestNode, TestOrchestrator, copy_identity, eventually, hello_as, node_config,
};
use node_daemon::identity::Identity;
use node_daemon::status::State;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// A client whose TLS refuses every server with `reason`: QUIC carries that text to the
/// server in the CONNECTION_CLOSE that aborts the handshake. With a gate, it first blocks
/// until the gate's sender is dropped: a handshake that stalls halfway.
#[derive(Debug)]
struct RefuseWith(String, Option<Mutex<mpsc::Receiver<()>>>);

impl ServerCertVerifier for RefuseWith {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(gate) = &self.1 {
            // Blocks the client's own runtime, which has nothing else to do.
            let _ = gate.lock().map(|gate| gate.recv());
        }
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn refusing_client(reason: &str) -> quinn::ClientConfig {
    client_with(RefuseWith(reason.to_owned(), None))
}

fn client_with(verifier: RefuseWith) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![edge_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A peer that starts a handshake and never finishes it is dropped after the orchestrator's
/// handshake timeout (10 s), though it asks for no idle timeout at all: the orchestrator
/// advertises the longest idle timeout a node may ask for (600 s), which alone would hold
/// the half-open connection that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_dropped() {
    let orch = TestOrchestrator::start().await;
    let addr = orch.orch.quic_addr;
    let (release, gate) = mpsc::channel::<()>();
    // The stalled verifier blocks its runtime: the client gets one of its own.
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
            let mut config = client_with(RefuseWith("stalled".into(), Some(Mutex::new(gate))));
            let mut transport = quinn::TransportConfig::default();
            transport.max_idle_timeout(None);
            config.transport_config(Arc::new(transport));
            let connecting = endpoint
                .connect_with(config, addr, edge_proto::ORCHESTRATOR_SERVER_NAME)
                .expect("connect");
            connecting.await.is_err()
        })
    });
    let timeouts = || {
        orch.orch
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("edge_handshake_failures_total{reason=\"timeout\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(PATIENCE, || timeouts() >= 1.0).await.is_some(),
        "the half-open handshake is dropped and counted as a timeout"
    );
    drop(release);
    let failed = tokio::task::spawn_blocking(move || client.join().expect("client thread"))
        .await
        .expect("join");
    assert!(failed, "the stalled handshake never became a connection");
}

/// Whether `line` is one a Prometheus text exposition may hold: a comment, or a series name,
/// optional labels of the form `key="value"` with escaped values, and a number.
fn exposition_line(line: &str) -> bool {
    if line.is_empty() {
        return false;
    }
    if let Some(comment) = line.strip_prefix("# ") {
        return comment == "EOF"
            || ["HELP ", "TYPE ", "UNIT "]
                .iter()
                .any(|kind| comment.starts_with(kind));
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let Some(end) = labels_end(labels) else {
            return false;
        };
        rest = &labels[end + 1..];
    }
    let Some(value) = rest.strip_prefix(' ') else {
        return false;
    };
    name_ok && (value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value))
}

/// Where `key="value"(,key="value")*}` ends in `labels` (the index of its `}`), if it is that.
fn labels_end(labels: &str) -> Option<usize> {
    let mut chars = labels.char_indices().peekable();
    loop {
        let mut key_len = 0;
        while chars
            .peek()
            .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
        {
            chars.next();
            key_len += 1;
        }
        if key_len == 0 || chars.next()?.1 != '=' || chars.next()?.1 != '"' {
            return None;
        }
        loop {
            match chars.next()?.1 {
                '\\' if !matches!(chars.next()?.1, '\\' | '"' | 'n') => return None,
                '"' => break,
                _ => {}
            }
        }
        match chars.next()? {
            (_, ',') => {}
            (i, '}') => return Some(i),
            _ => return None,
        }
    }
}

#[test]
fn the_exposition_check_tells_good_lines_from_bad() {
    for good in [
        "# HELP edge_nodes Registered nodes by status.",
        "# TYPE edge_nodes gauge",
        "# EOF",
        "edge_nodes{status=\"online\"} 2",
        "edge_frames_total{direction=\"rx\",x=\"a\\\"b\\\\c\\n\"} 17",
        "edge_sessions_active 0",
    ] {
        assert!(exposition_line(good), "{good}");
    }
    for bad in [
        "",
        "edge_handshake_failures_total{reason=\"peer closed: x",
        "\"} 1",
        "edge_nodes{status=\"online\"} 9999 junk",
        "edge nodes 1",
        "edge_x{reason=\"a\"b\"} 1",
        "edge_x{=\"a\"} 1",
        "} 1",
    ] {
        assert!(!exposition_line(bad), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_handshake_close_reasons_never_reach_the_metrics() {
    let orch = TestOrchestrator::start().await;
    let addr = orch.orch.quic_addr;
    let injected = "edge_nodes{status=\"online\"} 9999";
    let mut reasons: Vec<String> = (0..150).map(|i| format!("crafted reason {i}")).collect();
    reasons.extend([
        format!("x\"}} 1\n{injected}\n# a comment"),
        "a\nb\r\nc".to_owned(),
        "quote \" backslash \\ brace } {".to_owned(),
        format!("\n{injected}\n"),
        "\u{0}\u{1b}[31mred".to_owned(),
        "é".repeat(600),
    ]);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    for batch in reasons.chunks(16) {
        let attempts = batch.iter().map(|reason| {
            let connecting = endpoint
                .connect_with(
                    refusing_client(reason),
                    addr,
                    edge_proto::ORCHESTRATOR_SERVER_NAME,
                )
                .expect("connect");
            async move { connecting.await.is_err() }
        });
        for refused in futures_join(attempts).await {
            assert!(refused, "our client refuses every server");
        }
    }
    let failures = || {
        orch.orch
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("edge_handshake_failures_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let broken = || {
        orch.orch
            .metrics
            .encode()
            .lines()
            .any(|l| !exposition_line(l))
    };
    // Every aborted handshake is counted (or the exposition broke, which the checks below
    // report).
    let want = reasons.len() as f64;
    assert!(
        eventually(PATIENCE, || failures() >= want || broken())
            .await
            .is_some(),
        "every aborted handshake is counted: {} of {want}",
        failures()
    );

    // The exposition as a scrape gets it.
    let (status, body) = orch.api("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text");
    let bad: Vec<&str> = text.lines().filter(|l| !exposition_line(l)).collect();
    assert!(bad.is_empty(), "lines a scraper cannot parse: {bad:?}");
    assert!(
        !text.lines().any(|l| l == injected),
        "an injected sample: {text}"
    );
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("edge_handshake_failures_total{"))
        .collect();
    assert!(
        !series.is_empty() && series.len() <= orchestrator::metrics::HandshakeFailure::ALL.len(),
        "handshake failures fall into a few fixed reasons: {series:?}"
    );
    // Every series of the fixed set is there from the start; only ours has counted.
    let counted: Vec<&str> = series
        .iter()
        .copied()
        .filter(|s| !s.ends_with(" 0"))
        .collect();
    assert_eq!(
        counted,
        [format!(
            "edge_handshake_failures_total{{reason=\"peer_refused_tls\"}} {want}"
        )],
        "{series:?}"
    );
    endpoint.close(0u32.into(), b"");
}

/// Awaits every future, concurrently, in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("the attempt finished"));
    }
    out
}

/// A session opened by hand with a node's identity: hello sent, welcome read.
async fn raw_session(
    orch: &TestOrchestrator,
    identity: &Identity,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let (endpoint, conn) = orch.dial_session(identity).await;
    let (send, recv, welcome) = hello_as(&conn, identity.node_id).await;
    assert!(matches!(welcome, OrchMsg::Welcome(_)), "{welcome:?}");
    (endpoint, conn, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_trickle_in_byte_by_byte_survive_a_burst_the_other_way() {
    let orch = TestOrchestrator::start().await;
    let (identity, _data) = orch.enrolled_identity("trickle").await;
    let node = identity.node_id;
    let (endpoint, conn, mut send, mut recv) = raw_session(&orch, &identity).await;
    assert!(
        eventually(PATIENCE, || orch.orch.links.connection(node).is_some())
            .await
            .is_some(),
        "the session's outbox is registered"
    );

    // Everything the orchestrator sends is read, so it is never held up by flow control.
    let received = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while let Ok(Some(body)) = read_frame(&mut recv).await {
                assert!(
                    decode::<OrchMsg>(&body).is_ok(),
                    "orchestrator frames decode"
                );
                received.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Reports of workloads the orchestrator never placed here: each one processed is kept
    // and answered with an Unassign. Every byte goes out on its own, and after each one a
    // message for the node is queued: the orchestrator sends while a frame is half read.
    const REPORTS: usize = 40;
    let mut queued = 0;
    for i in 0..REPORTS {
        let frame = edge_proto::encode(&NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text(&format!("w-{i}")),
            generation: 1,
            state: WorkloadState::Running,
            restarts: 0,
            pid: Some(100 + i as u32),
            exit_code: None,
            message: text("trickled in"),
        })));
        for (j, byte) in frame.into_iter().enumerate() {
            let sent = conn.stats().udp_tx.datagrams;
            send.write_all(&[byte]).await.expect("the session stays up");
            let msg = OrchMsg::Unassign(Unassign {
                workload: text(&format!("burst-{i}-{j}")),
            });
            queued += usize::from(orch.orch.links.send(node, msg));
            // Until a datagram has left since: the frame goes out a byte or so at a time.
            let deadline = std::time::Instant::now() + PATIENCE;
            while conn.stats().udp_tx.datagrams == sent && std::time::Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
        }
    }
    assert!(queued > 0, "messages reached the outbox");

    let all_reported = || {
        (0..REPORTS).all(|i| {
            orch.orch
                .reports
                .of(&format!("w-{i}"))
                .iter()
                .any(|(n, r)| *n == node && r.report.pid == Some(100 + i as u32))
        })
    };
    assert!(
        eventually(PATIENCE, all_reported).await.is_some(),
        "every frame was processed"
    );
    assert!(
        eventually(PATIENCE, || received.load(Ordering::SeqCst)
            >= queued + REPORTS)
        .await
        .is_some(),
        "every message reached the node: {} of {}",
        received.load(Ordering::SeqCst),
        queued + REPORTS
    );
    assert!(conn.close_reason().is_none(), "the session stayed up");
    assert!(orch.online("trickle"));
    assert_eq!(
        orch.metric("edge_session_rejections_total{reason=\"malformed\"}"),
        0.0
    );
    conn.close(0u32.into(), b"");
    let _ = reader.await;
    endpoint.close(0u32.into(), b"");
}

/// The sessions the registry holds now: one per online node.
fn live_sessions(orch: &TestOrchestrator) -> f64 {
    orch.orch.registry.fleet().counts().0 as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_sessions_gauge_counts_live_sessions_through_churn() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(2);
    let ca = orch.ca_hash();
    let active = || orch.metric("edge_sessions_active");

    // Replacements: a node whose link was cut comes back by another path before the
    // orchestrator has given up on its old connection, three times over.
    let moving = tempfile::tempdir().expect("tmp");
    let mut relays = Vec::new();
    let mut node = None;
    for round in 1..=4 {
        let relay = Relay::start(orch.orch.quic_addr).await;
        let spawned = TestNode::spawn(node_config(
            "moving",
            moving.path(),
            relay.addr,
            Some((&token, &ca)),
            "",
        ));
        assert!(
            eventually(PATIENCE, || orch.metric("edge_sessions_opened_total")
                == round as f64)
            .await
            .is_some(),
            "session {round} opened"
        );
        if round < 4 {
            // Cut first: the node's goodbye never arrives, its session is left behind.
            relay.link.cut();
            spawned.stop().await.expect("clean stop");
        } else {
            node = Some(spawned);
        }
        relays.push(relay);
    }

    // A deletion: the node's live session is closed by the orchestrator.
    let doomed = tempfile::tempdir().expect("tmp");
    let gone = TestNode::spawn(node_config(
        "doomed",
        doomed.path(),
        orch.orch.quic_addr,
        Some((&token, &ca)),
        "",
    ));
    assert!(
        eventually(PATIENCE, || orch.online("doomed"))
            .await
            .is_some()
    );
    let id = orch
        .orch
        .registry
        .fleet()
        .find("doomed")
        .map(|n| n.id)
        .expect("known");
    assert!(orch.orch.delete_node(id).expect("delete"));
    assert!(gone.exited().await.is_err(), "the deleted node gives up");

    // A copy of the moving node's identity on another machine: refused while its session
    // is live.
    let copy = tempfile::tempdir().expect("tmp");
    copy_identity(moving.path(), copy.path());
    let (clone, board) = TestNode::spawn_with_board(node_config(
        "moving",
        copy.path(),
        orch.orch.quic_addr,
        None,
        "",
    ));
    assert!(
        eventually(PATIENCE, || board.get().state == State::IdentityConflict)
            .await
            .is_some(),
        "the copy is refused"
    );

    assert!(
        eventually(PATIENCE, || active() == live_sessions(&orch))
            .await
            .is_some(),
        "edge_sessions_active is {} with {} sessions live",
        active(),
        live_sessions(&orch)
    );
    assert_eq!(
        live_sessions(&orch),
        1.0,
        "only the moving node's last session"
    );

    clone.stop().await.expect("clean stop");
    node.expect("the last round's node")
        .stop()
        .await
        .expect("clean stop");
    assert!(
        eventually(PATIENCE, || active() == 0.0 && live_sessions(&orch) == 0.0)
            .await
            .is_some(),
        "edge_sessions_active is {} with no session live",
        active()
    );
}

/// The session the registry holds for `name`.
fn session_of(orch: &TestOrchestrator, name: &str) -> Option<u64> {
    let fleet = orch.orch.registry.fleet();
    fleet.find(name).and_then(|n| fleet.session_of(n.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_identity_is_refused_and_the_real_node_keeps_its_session() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let ca = orch.ca_hash();
    // The real node, behind a relay so that its link can be cut later.
    let relay = Relay::start(orch.orch.quic_addr).await;
    let real_dir = tempfile::tempdir().expect("tmp");
    let config =
        |dir: &std::path::Path, to| node_config("shop-1", dir, to, Some((&token, &ca)), "");
    let real = TestNode::spawn(config(real_dir.path(), relay.addr));
    assert!(
        eventually(PATIENCE, || orch.online("shop-1"))
            .await
            .is_some()
    );
    let real_session = session_of(&orch, "shop-1").expect("a session");

    // Its SD card, cloned into a second machine: the same config and identity/.
    let clone_dir = tempfile::tempdir().expect("tmp");
    copy_identity(real_dir.path(), clone_dir.path());
    let (clone, board) = TestNode::spawn_with_board(config(clone_dir.path(), orch.orch.quic_addr));
    let flips = Arc::new(AtomicUsize::new(0));
    let conflicted = eventually(PATIENCE, || {
        // The real node never drops offline meanwhile.
        if !orch.online("shop-1") {
            flips.fetch_add(1, Ordering::SeqCst);
        }
        board.get().state == State::IdentityConflict
    })
    .await;
    assert!(
        conflicted.is_some(),
        "the clone is refused: {:?}",
        board.get()
    );
    assert_eq!(
        flips.load(Ordering::SeqCst),
        0,
        "the real node stayed online"
    );
    assert_eq!(
        session_of(&orch, "shop-1"),
        Some(real_session),
        "the real node kept its session"
    );
    assert_eq!(orch.metric("edge_sessions_opened_total"), 1.0);
    assert_eq!(orch.metric("edge_identity_conflicts_total"), 1.0);
    assert_eq!(
        orch.metric("edge_session_rejections_total{reason=\"identity_conflict\"}"),
        1.0
    );

    // The clone says why on its status endpoint, what to do, and that it waits minutes.
    let status = board.get();
    let identity = clone_dir.path().join("identity");
    assert!(
        status.message.contains(&identity.display().to_string())
            && status.message.contains("join token"),
        "{}",
        status.message
    );
    let retry_secs: u64 = status
        .message
        .rsplit("trying again in ")
        .next()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a retry time in {:?}", status.message));
    assert!(
        retry_secs >= node_core::session::CONFLICT_RETRY_MIN.as_secs() - 1,
        "the clone backs off for minutes: {retry_secs}s"
    );
    assert!(clone.is_running(), "the clone waits; it does not give up");

    // The operator sees the conflict on the node, which is online.
    let (status, node) = orch.api("GET", "/v1/nodes/shop-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(node["status"], "online");
    assert_eq!(node["conflict"]["refused"], 1, "{node}");
    assert!(node["conflict"]["remote"].is_string(), "{node}");
    assert!(
        node["conflict"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("enroll the copy again")),
        "{node}"
    );
    let (_, nodes) = orch.api("GET", "/v1/nodes", None).await;
    assert_eq!(nodes[0]["conflict"]["refused"], 1, "{nodes}");

    // The real node reboots: its link goes (its goodbye never arrives) and it comes back on
    // another path before the orchestrator has given up on the old connection. That is no
    // copy: it gets its session back.
    relay.link.cut();
    real.stop().await.expect("clean stop");
    let back = TestNode::spawn(config(real_dir.path(), orch.orch.quic_addr));
    assert!(
        eventually(PATIENCE, || orch.metric("edge_sessions_opened_total")
            == 2.0)
        .await
        .is_some(),
        "the rebooted node is let in"
    );
    assert_ne!(session_of(&orch, "shop-1"), Some(real_session));
    assert!(orch.online("shop-1"));
    assert_eq!(orch.metric("edge_identity_conflicts_total"), 1.0);

    clone.stop().await.expect("clean stop");
    back.stop().await.expect("clean stop");
}

/// A node's outbox events are stored, then acknowledged; the same batch again (its
/// acknowledgement lost) is acknowledged again and stored once; the API shows each with the
/// time it happened on the node, and a gap where the node dropped some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_are_acknowledged_once_stored_and_stored_once() {
    let orch = TestOrchestrator::start().await;
    let (identity, _data) = orch.enrolled_identity("outbox").await;
    let (_endpoint, _conn, mut send, mut recv) = raw_session(&orch, &identity).await;
    let batch = EventBatch {
        events: List::from_iter([NodeEvent {
            seq: 7,
            // 2023-11-14T22:13:20Z: weeks before it could be sent.
            at_ms: 1_700_000_000_000,
            kind: EventKind::Instance(WorkloadReport {
                workload: text("till"),
                generation: 2,
                state: WorkloadState::Running,
                restarts: 3,
                pid: Some(4242),
                exit_code: None,
                message: text("restarted while offline"),
            }),
        }]),
        gaps: List::from_iter([EventGap {
            first: 3,
            last: 5,
            count: 2,
            first_at_ms: 1_699_999_000_000,
            last_at_ms: 1_699_999_500_000,
        }]),
    };
    for round in 0..2 {
        send.write_all(&edge_proto::encode(&NodeMsg::Events(Box::new(
            batch.clone(),
        ))))
        .await
        .expect("send");
        let stored = loop {
            let frame = read_frame(&mut recv).await.expect("read").expect("a frame");
            if let Ok(OrchMsg::EventsStored(stored)) = decode::<OrchMsg>(&frame) {
                break stored;
            }
        };
        assert_eq!(stored.seqs.as_slice(), [7], "round {round}");
        assert_eq!(stored.gaps_through, 5, "round {round}");
    }

    let (status, events) = orch.api("GET", "/v1/events?node=outbox", None).await;
    assert_eq!(status, 200, "{events}");
    let events = events.as_array().expect("a list").clone();
    assert_eq!(events.len(), 2, "stored once: {events:?}");
    assert_eq!(events[0]["kind"], "gap");
    assert_eq!(
        (events[0]["seq"].as_u64(), events[0]["count"].as_u64()),
        (Some(3), Some(2))
    );
    let instance = &events[1];
    assert_eq!(instance["kind"], "instance");
    assert_eq!(instance["node"], "outbox");
    assert_eq!(
        instance["at"], "2023-11-14T22:13:20Z",
        "the node's time, not arrival's"
    );
    assert_eq!(instance["state"], "running");
    assert_eq!(instance["restarts"], 3);
    let (_, later) = orch
        .api("GET", "/v1/events?node=outbox&since=1700000000000", None)
        .await;
    assert_eq!(later.as_array().map(Vec::len), Some(1));
    let (status, _) = orch.api("GET", "/v1/events?node=nobody", None).await;
    assert_eq!(status, 404);
    let (status, body) = orch.api("GET", "/v1/events?since=yesterday", None).await;
    assert_eq!(status, 400, "{body}");

    // The same through edgectl.
    let ctl =
        edge_tests::cli::Edgectl::admin(&format!("http://{}", orch.orch.api_addr), orch.dir.path());
    let listed = tokio::task::spawn_blocking(move || {
        let json = ctl.json(&[
            "events",
            "--node",
            "outbox",
            "--since",
            "2023-11-14T22:13:20Z",
        ]);
        let table = ctl.run(&["events", "--node", "outbox"]);
        let bad = ctl.run(&["events", "--since", "yesterday"]);
        (json, table, bad)
    })
    .await
    .expect("edgectl");
    let (json, table, bad) = listed;
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("2 events dropped") && table.contains("till"),
        "{table}"
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
