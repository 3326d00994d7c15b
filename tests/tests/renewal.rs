//! Node certificates renewed in the field, over real QUIC with real certificates: a running
//! node renews its own over its session without restarting anything and dials with the new
//! one; a node that was off past its renewal point renews as soon as it is back; one off
//! past its certificate's end is told to enroll again; and nobody can renew into another key
//! or another node's name.
//!
//! The orchestrator signs certificates valid for [`VALIDITY_SECS`] here
//! (`serve --node-cert-validity-secs`), so a lifetime passes in seconds; nothing in the cores
//! is faked.

use edge_proto::quic::read_frame;
use edge_proto::{
    Der, Hello, Intent, List, NodeMsg, OrchMsg, RejectCode, RenewRefusal, RenewRequest, decode,
    text,
};
use edge_tests::cli::{Edgectl, node_config, run_node};
use edge_tests::{
    PATIENCE, Proc, TestNode, TestOrchestrator, alive, binary, dial, eventually, hello_as,
    spawn_reading_stderr, start_orchestrator_with,
};
use node_core::renewal::Validity;
use node_daemon::identity::{IdentityDir, validity};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the test orchestrator's node certificates last: renewed about 19 s in.
const VALIDITY_SECS: u64 = 30;

/// Long enough for a certificate to reach its renewal point, or its end, and more.
const LIFETIME_PATIENCE: Duration = Duration::from_secs(2 * VALIDITY_SECS + 30);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A real `edge-orchestrator serve` signing short-lived node certificates, and `edgectl`.
fn orchestrator(dir: &Path, quic_listen: &str) -> (Proc, String, Edgectl) {
    let (proc, quic, api) = start_orchestrator_with(
        dir,
        quic_listen,
        &["--node-cert-validity-secs", &VALIDITY_SECS.to_string()],
    );
    (proc, quic, Edgectl::admin(&api, dir))
}

/// The stored certificate of the node whose data dir is `data`, and when it is valid.
fn stored_certificate(data: &Path) -> Option<(Vec<u8>, Validity)> {
    let identity = IdentityDir::new(data).load().ok()??;
    let v = validity(&identity.cert)?;
    Some((identity.cert.to_vec(), v))
}

async fn online(ctl: &Edgectl, name: &str, within: Duration) -> bool {
    eventually(within, || ctl.status_of(name).as_deref() == Some("online"))
        .await
        .is_some()
}

/// Waits until the orchestrator's clock (this machine's) is past `ms`.
async fn until_past(ms: u64) {
    assert!(
        eventually(LIFETIME_PATIENCE, || now_ms() > ms)
            .await
            .is_some()
    );
}

fn data_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(name).join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_renews_over_its_session_and_dials_with_the_new_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (orch, quic, ctl) = orchestrator(&orch_dir, "127.0.0.1:0");
    let join = ctl.json(&["token", "create", "--ttl", "1h", "--uses", "1"]);
    let config = node_config(dir.path(), "renewing", "", &quic, &join);
    let mut node = run_node(&config);
    assert!(online(&ctl, "renewing", PATIENCE).await);
    let data = data_dir(dir.path(), "renewing");
    let (first, first_validity) = stored_certificate(&data).expect("enrolled");

    // A workload that must not notice the renewal.
    let pid_file = dir.path().join("steady.pid");
    let script = dir.path().join("steady.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho $$ > \"$PID_FILE\"\nexec sleep 600\n",
    )
    .expect("script");
    let pushed = ctl.json(&["artifact", "push", script.to_str().expect("utf-8")]);
    let spec = dir.path().join("steady.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"steady\"\nversion = \"1.0.0\"\nartifact = \"{}\"\n\
             env = {{ PID_FILE = \"{}\" }}\n\
             [resources]\ncpu_millis = 100\nmemory_bytes = 33554432\n",
            pushed["digest"].as_str().expect("digest"),
            pid_file.display()
        ),
    )
    .expect("spec");
    let out = ctl.run(&["deploy", "-f", spec.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut workload = None;
    assert!(
        eventually(PATIENCE, || {
            workload = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| alive(*p));
            workload.is_some()
        })
        .await
        .is_some(),
        "the workload runs"
    );
    let workload = workload.unwrap_or_default();

    // The node renews on its own, two thirds into the certificate's life.
    let mut renewed = None;
    assert!(
        eventually(LIFETIME_PATIENCE, || {
            renewed = stored_certificate(&data).filter(|(der, _)| *der != first);
            renewed.is_some()
        })
        .await
        .is_some(),
        "the certificate was renewed"
    );
    let (_, renewed_validity) = renewed.expect("seen above");
    assert!(renewed_validity.not_after_ms > first_validity.not_after_ms);
    assert!(
        now_ms() >= first_validity.renew_at_ms() - 1_000,
        "not before its renewal point"
    );
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    };
    assert_eq!(mode(&data.join("identity/node.crt")), 0o600);
    assert_eq!(mode(&data.join("identity")), 0o700);

    // Nothing restarted: the same daemon, the same workload process, the same session.
    assert!(
        node.0.try_wait().expect("wait").is_none(),
        "the daemon runs on"
    );
    assert!(alive(workload));
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid").trim(),
        workload.to_string()
    );
    assert_eq!(ctl.status_of("renewing").as_deref(), Some("online"));

    // Past the first certificate's end, an orchestrator started afresh takes the node back:
    // it dials with the renewed certificate (the first would be refused as expired).
    until_past(first_validity.not_after_ms).await;
    drop(orch);
    let (_orch, _, ctl) = orchestrator(&orch_dir, &quic);
    assert!(
        online(&ctl, "renewing", PATIENCE + Duration::from_secs(30)).await,
        "the node is back with its renewed certificate"
    );
    assert!(node.0.try_wait().expect("wait").is_none());
    assert!(alive(workload), "and its workload was never touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_off_past_its_renewal_point_renews_as_soon_as_it_is_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_orch, quic, ctl) = orchestrator(&dir.path().join("orchestrator"), "127.0.0.1:0");
    let join = ctl.json(&["token", "create", "--ttl", "1h", "--uses", "1"]);
    let config = node_config(dir.path(), "sleeper", "", &quic, &join);
    let node = run_node(&config);
    assert!(online(&ctl, "sleeper", PATIENCE).await);
    let data = data_dir(dir.path(), "sleeper");
    let (first, v) = stored_certificate(&data).expect("enrolled");
    // Powered off before its renewal point...
    drop(node);
    assert!(now_ms() < v.renew_at_ms(), "still before the renewal point");
    // ...and on again after it, before the certificate ends.
    until_past(v.renew_at_ms()).await;
    let _node = run_node(&config);
    let mut renewed = None;
    assert!(
        eventually(PATIENCE, || {
            renewed = stored_certificate(&data).filter(|(der, _)| *der != first);
            renewed.is_some()
        })
        .await
        .is_some(),
        "renewed right after it reconnected"
    );
    assert!(
        now_ms() < v.not_after_ms,
        "renewed while the old one still held"
    );
    assert!(online(&ctl, "sleeper", PATIENCE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_off_past_its_certificates_end_is_told_to_enroll_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_orch, quic, ctl) = orchestrator(&dir.path().join("orchestrator"), "127.0.0.1:0");
    let join = ctl.json(&["token", "create", "--ttl", "1h", "--uses", "1"]);
    let config = node_config(dir.path(), "lapsed", "", &quic, &join);
    let node = run_node(&config);
    assert!(online(&ctl, "lapsed", PATIENCE).await);
    let (_, v) = stored_certificate(&data_dir(dir.path(), "lapsed")).expect("enrolled");
    drop(node);
    // A TLS session opened while the certificate held leaves tickets that resume it later
    // with no certificate checked: the orchestrator checks its end itself.
    let identity = IdentityDir::new(&data_dir(dir.path(), "lapsed"))
        .load()
        .expect("load")
        .expect("enrolled");
    let tls = node_daemon::tls::session_config(&identity).expect("tls");
    let addr: std::net::SocketAddr = quic.parse().expect("QUIC address");
    {
        let (endpoint, conn) = dial(addr, tls.clone()).await;
        let (_send, _recv, answer) = hello_as(&conn, identity.node_id).await;
        assert!(matches!(answer, OrchMsg::Welcome(_)), "{answer:?}");
        conn.close(0u32.into(), b"bye");
        endpoint.wait_idle().await;
    }
    // TLS compares whole seconds: a second past the end is past it for certain.
    until_past(v.not_after_ms + 2_000).await;
    let (_endpoint, resumed) = dial(addr, tls).await;
    match resumed.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
            RejectCode::from_close_code(c.error_code.into_inner()),
            Some(RejectCode::CertificateExpired),
            "{c:?}"
        ),
        other => panic!("closed as expired, not {other:?}"),
    }
    assert_ne!(ctl.status_of("lapsed").as_deref(), Some("online"));

    let mut run = std::process::Command::new(binary("edge-node"));
    run.args(["run", "--config"])
        .arg(&config)
        .env("EDGE_LOG", "warn");
    let (_node, lines) = spawn_reading_stderr(run);
    let said = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("refused this node's certificate as expired") => {
                    return line;
                }
                Ok(line) => seen.push(line),
                Err(e) => panic!("no line saying the certificate expired ({e:?}) in {seen:#?}"),
            }
        }
    })
    .await
    .expect("reader");
    assert!(said.contains("Enroll the node again"), "{said}");
    // The local status says so too, with no uplink needed to ask.
    let mut status = String::new();
    assert!(
        eventually(PATIENCE, || {
            let out = std::process::Command::new(binary("edge-node"))
                .args(["ctl", "--config"])
                .arg(&config)
                .arg("status")
                .output()
                .expect("ctl runs");
            status = String::from_utf8_lossy(&out.stdout).into_owned();
            status.contains("certificate_expired")
        })
        .await
        .is_some(),
        "ctl status: {status}"
    );
    assert_ne!(ctl.status_of("lapsed").as_deref(), Some("online"));
}

fn csr(key: &rcgen::KeyPair, common_name: &str) -> Der {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    Der::new(params.serialize_request(key).expect("csr").der().to_vec()).expect("fits")
}

/// What a hostile holder of a node's session can ask for, on that session: a certificate
/// for another key, in another node's name, or for garbage. Each is refused with its reason
/// and the session goes on; only a request for the session's own key is signed, and for the
/// session's node whatever the request names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_for_another_key_or_name_are_refused_and_the_session_goes_on() {
    let orch = TestOrchestrator::start().await;
    let (victim, _victim_dir) = orch.enrolled_identity("victim").await;
    let (thief, thief_dir) = orch.enrolled_identity("thief").await;
    let (_endpoint, conn) = orch.dial_session(&thief).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let mut say = async |msg: NodeMsg| {
        send.write_all(&edge_proto::encode(&msg))
            .await
            .expect("send");
    };
    say(NodeMsg::Hello(Hello {
        versions: List::from_iter([1]),
        intent: Intent::Session,
        node_id: Some(thief.node_id),
        agent: text("thief/1"),
        sync: None,
    }))
    .await;
    let mut next = async || -> OrchMsg {
        loop {
            let body = read_frame(&mut recv).await.expect("read").expect("a frame");
            match decode::<OrchMsg>(&body).expect("decodes") {
                // The session's own traffic (routes and the like) is not the answer.
                OrchMsg::Welcome(_) | OrchMsg::Renewed(_) | OrchMsg::RenewRefused(_) => {
                    return decode::<OrchMsg>(&body).expect("decodes");
                }
                _ => {}
            }
        }
    };
    assert!(matches!(next().await, OrchMsg::Welcome(_)));

    let renew = |csr_der| NodeMsg::Renew(Box::new(RenewRequest { csr_der }));
    let thief_key = IdentityDir::new(thief_dir.path()).key_pair().expect("key");
    let other_key = rcgen::KeyPair::generate().expect("key");

    // A fresh key, in the victim's name: refused, since it is not the session's key.
    say(renew(csr(&other_key, &victim.node_id.to_string()))).await;
    match next().await {
        OrchMsg::RenewRefused(r) => assert_eq!(r.reason, RenewRefusal::KeyMismatch, "{r:?}"),
        other => panic!("refused, not {other:?}"),
    }
    // Garbage where the CSR goes, and a CSR whose signature does not check.
    say(renew(Der::new(vec![0x30, 0x82, 0xff, 0xff]).expect("fits"))).await;
    match next().await {
        OrchMsg::RenewRefused(r) => assert_eq!(r.reason, RenewRefusal::BadCsr, "{r:?}"),
        other => panic!("refused, not {other:?}"),
    }
    let mut forged = csr(&thief_key, "x").as_slice().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    say(renew(Der::new(forged).expect("fits"))).await;
    assert!(matches!(next().await, OrchMsg::RenewRefused(_)));

    // Its own key, asking for the victim's name: signed, for the thief's own id.
    say(renew(csr(&thief_key, &victim.node_id.to_string()))).await;
    let renewed = match next().await {
        OrchMsg::Renewed(r) => r,
        other => panic!("renewed, not {other:?}"),
    };
    let cert = renewed.cert_der.as_slice();
    let cn_is = |id: &edge_proto::NodeId| {
        let needle = id.to_string();
        cert.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    assert!(
        cn_is(&thief.node_id),
        "the certificate names the session's node"
    );
    assert!(!cn_is(&victim.node_id), "never the one the request named");
    assert_eq!(renewed.trust.len(), 1);
    assert_eq!(
        renewed.trust[0].as_slice(),
        orch.orch.registry.ca().cert_der().as_ref()
    );
    // The session went on through all of it.
    assert!(conn.close_reason().is_none());
    assert!(orch.online("thief"));
    assert_eq!(orch.metric("edge_certificate_renewals_total"), 1.0);
    assert_eq!(
        orch.metric("edge_certificate_renewal_refusals_total{reason=\"key_mismatch\"}"),
        1.0
    );
    assert_eq!(
        orch.metric("edge_certificate_renewal_refusals_total{reason=\"bad_csr\"}"),
        2.0
    );
}

/// A CA rotation with nodes online: each is given a certificate of the new CA over its
/// session, none reconnects, the server moves to the new CA once all have theirs and drops
/// the old, and after a restart (the server now presents only the new CA) every node is
/// back with what it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_moves_online_nodes_without_a_reconnect() {
    let orch = TestOrchestrator::start().await;
    let old = orch.orch.registry.ca();
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for name in ["rot-a", "rot-b"] {
        let data = tempfile::tempdir().expect("tmp");
        let token = orch.token(1);
        nodes.push(TestNode::spawn(edge_tests::node_config(
            name,
            data.path(),
            orch.orch.quic_addr,
            Some((&token, &orch.ca_hash())),
            "",
        )));
        dirs.push(data);
        assert!(eventually(PATIENCE, || orch.online(name)).await.is_some());
    }
    let opened = orch.metric("edge_sessions_opened_total");

    let (status, body) = orch.api("POST", "/v1/ca/rotate", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ca_hash"], old.hash());
    // Finished once both nodes hold the new CA's certificates.
    let mut shown = serde_json::Value::Null;
    let finished = eventually(PATIENCE, || {
        shown = orch.orch.registry.rotation().next_ca_hash.into();
        shown.is_null() && orch.orch.registry.ca().hash() != old.hash()
    })
    .await;
    assert!(finished.is_some(), "the rotation finished: {shown}");
    let new = orch.orch.registry.ca();
    let (status, body) = orch.api("GET", "/v1/ca", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["ca_hash"], new.hash());
    assert!(body["next_ca_hash"].is_null(), "{body}");

    for data in &dirs {
        let mut identity = None;
        assert!(
            eventually(PATIENCE, || {
                identity = IdentityDir::new(data.path()).load().ok().flatten();
                identity.as_ref().is_some_and(|i| new.issued(&i.cert))
            })
            .await
            .is_some(),
            "the node stored a certificate of the new CA"
        );
        let identity = identity.expect("seen above");
        assert_eq!(identity.trust[0].as_ref(), new.cert_der().as_ref());
        assert!(
            identity
                .trust
                .iter()
                .any(|ca| ca.as_ref() == old.cert_der().as_ref()),
            "and still trusts the old one, which the server presented until the end"
        );
    }
    // Nobody reconnected: the sessions that were open are the ones still open.
    assert_eq!(orch.metric("edge_sessions_opened_total"), opened);
    assert!(orch.online("rot-a") && orch.online("rot-b"));

    // The old CA is gone for good: after a restart the server presents the new one alone,
    // and both nodes are back with their new certificates.
    let orch = orch.restart().await;
    assert_eq!(orch.ca_hash(), new.hash());
    for name in ["rot-a", "rot-b"] {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} is back on the new CA"
        );
    }
    drop(nodes);
}

/// During a CA rotation a node counts as moved only once it says it stored its certificate of
/// the new CA, and only if what it says it stored is one: a node whose disk refused the
/// certificate must not be locked out when the old CA goes. Claims of garbage, of its old
/// certificate or of another node's new one change nothing, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_waits_for_each_node_to_store_its_new_certificate() {
    let orch = TestOrchestrator::start().await;
    let (node, node_dir) = orch.enrolled_identity("holdout").await;
    let (other, _other_dir) = orch.enrolled_identity("bystander").await;
    let (_endpoint, conn) = orch.dial_session(&node).await;
    let (mut send, mut recv, answer) = hello_as(&conn, node.node_id).await;
    assert!(matches!(answer, OrchMsg::Welcome(_)), "{answer:?}");

    let (status, body) = orch.api("POST", "/v1/ca/rotate", None).await;
    assert_eq!(status, 200, "{body}");
    let mut next_renewed = async || loop {
        let body = read_frame(&mut recv).await.expect("read").expect("a frame");
        if let OrchMsg::Renewed(r) = decode::<OrchMsg>(&body).expect("decodes") {
            return r;
        }
    };
    // Online, so it is sent a certificate of the new CA at once, unasked.
    let moved_to = next_renewed().await.cert_der;
    let next_ca = orch
        .orch
        .registry
        .rotation()
        .next_ca_hash
        .expect("rotating");

    let stored = |cert: Der| {
        edge_proto::encode(&NodeMsg::CertificateStored(Box::new(
            edge_proto::CertificateStored { cert_der: cert },
        )))
    };
    // The bystander's certificate of the new CA, as a hostile node could have it.
    let bystanders = orch
        .orch
        .registry
        .signer()
        .reissue(&other.cert, other.node_id, std::time::SystemTime::now())
        .expect("reissued");
    for claim in [
        Der::new(vec![0x30, 0x82, 0xff, 0xff]).expect("fits"),
        Der::new(node.cert.to_vec()).expect("fits"),
        Der::new(bystanders.to_vec()).expect("fits"),
    ] {
        send.write_all(&stored(claim)).await.expect("send");
    }
    // A renewal after the claims is answered after them: they have been handled.
    let key = IdentityDir::new(node_dir.path()).key_pair().expect("key");
    send.write_all(&edge_proto::encode(&NodeMsg::Renew(Box::new(
        RenewRequest {
            csr_der: csr(&key, "holdout"),
        },
    ))))
    .await
    .expect("send");
    next_renewed().await;
    let (_, ca) = orch.api("GET", "/v1/ca", None).await;
    assert_eq!(ca["next_ca_hash"], next_ca, "still rotating: {ca}");
    assert!(
        ca["waiting_for"]
            .as_array()
            .is_some_and(|w| w.iter().any(|n| n == "holdout")),
        "the holdout is not moved by what it never stored: {ca}"
    );
    assert!(conn.close_reason().is_none(), "the session went on");

    // It stores what it was sent and says so: moved. The bystander, offline, still holds
    // the rotation in its overlap.
    send.write_all(&stored(moved_to)).await.expect("send");
    let mut ca = serde_json::Value::Null;
    let moved = eventually(PATIENCE, || {
        ca = orch.orch.registry.rotation().waiting_for.into();
        ca.as_array()
            .is_some_and(|w| w.iter().all(|n| n != "holdout"))
    })
    .await;
    assert!(moved.is_some(), "moved once stored: {ca}");
    assert_eq!(ca, serde_json::json!(["bystander"]));
}
