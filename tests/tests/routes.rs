//! Route distribution over real QUIC, on 127.0.0.1 port 0: a node's session learns where an
//! exposed workload runs on other nodes when an instance there reports `Running`, hears
//! when it stops or its node goes away, and is told to forget the routes when the workload
//! is deleted. The nodes that run the workload are sessions driven by hand, so the test
//! decides what they report; the one that listens is a session of its own.

use edge_proto::quic::read_frame;
use edge_proto::{
    AdmissionReply, Hello, Intent, IpBytes, List, Location, NodeId, NodeMsg, OrchMsg, PeerAddr,
    PeerInstance, ProxyAdvert, WorkloadReport, WorkloadRoutes, WorkloadState, decode, text,
};
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, eventually, node_config};
use node_daemon::identity::{Identity, IdentityDir};
use serde_json::json;
use tokio::sync::mpsc;

/// Enrolls a node named `name` through a real daemon with `extra` in its config, stops it,
/// and returns its identity.
async fn enrolled(
    orch: &TestOrchestrator,
    name: &str,
    extra: &str,
) -> (Identity, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tmp");
    let token = orch.token(1);
    let node = TestNode::spawn(node_config(
        name,
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        extra,
    ));
    assert!(eventually(PATIENCE, || orch.online(name)).await.is_some());
    node.stop().await.expect("clean stop");
    assert!(eventually(PATIENCE, || !orch.online(name)).await.is_some());
    let identity = IdentityDir::new(data.path())
        .load()
        .expect("load")
        .expect("enrolled");
    (identity, data)
}

/// A session driven by hand with a node's identity. Everything the orchestrator sends it
/// after the welcome is read by a task of its own (so flow control never holds the
/// orchestrator up) and arrives on `inbox`.
struct Session {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    inbox: mpsc::UnboundedReceiver<OrchMsg>,
    node: NodeId,
}

impl Session {
    async fn open(orch: &TestOrchestrator, identity: &Identity) -> Self {
        let (endpoint, conn) = orch.dial_session(identity).await;
        let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
        let hello = NodeMsg::Hello(Hello {
            versions: List::from_iter([1]),
            intent: Intent::Session,
            node_id: Some(identity.node_id),
            agent: text("routes-test/1"),
            sync: None,
        });
        send.write_all(&edge_proto::encode(&hello))
            .await
            .expect("hello");
        let welcome = read_frame(&mut recv).await.expect("read").expect("a frame");
        assert!(matches!(
            decode::<OrchMsg>(&welcome),
            Ok(OrchMsg::Welcome(_))
        ));
        let (tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(body)) = read_frame(&mut recv).await {
                let msg = decode::<OrchMsg>(&body).expect("orchestrator frames decode");
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        Self {
            endpoint,
            conn,
            send,
            inbox,
            node: identity.node_id,
        }
    }

    async fn say(&mut self, msg: NodeMsg) {
        self.send
            .write_all(&edge_proto::encode(&msg))
            .await
            .expect("the session stays up");
    }

    /// The next message `pick` takes, skipping the others; fails after [`PATIENCE`].
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(OrchMsg) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(msg)) => {
                    if let Some(found) = pick(msg) {
                        return found;
                    }
                }
                Ok(None) => panic!("the session ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {PATIENCE:?}"),
            }
        }
    }

    /// The next routes of `workload`.
    async fn routes(&mut self, workload: &str) -> WorkloadRoutes {
        self.next(&format!("routes of {workload}"), |m| match m {
            OrchMsg::Routes(r) if r.workload.as_str() == workload => Some(*r),
            _ => None,
        })
        .await
    }

    /// Takes the assignment of `workload`, admits it and reports its instance in `state`.
    async fn run(&mut self, workload: &str, state: WorkloadState) -> u64 {
        let generation = self
            .next(&format!("the assignment of {workload}"), |m| match m {
                OrchMsg::Assign(a) if a.workload.as_str() == workload => Some(a.generation),
                _ => None,
            })
            .await;
        self.say(NodeMsg::Admission(Box::new(AdmissionReply {
            workload: text(workload),
            generation,
            rejected: None,
        })))
        .await;
        self.report(workload, generation, state).await;
        generation
    }

    async fn report(&mut self, workload: &str, generation: u64, state: WorkloadState) {
        self.say(NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text(workload),
            generation,
            state,
            restarts: 0,
            pid: Some(4242),
            exit_code: None,
            message: text(""),
        })))
        .await;
    }

    fn close(self) {
        self.conn.close(0u32.into(), b"");
        self.endpoint.close(0u32.into(), b"");
    }
}

fn listed(r: &WorkloadRoutes) -> Vec<NodeId> {
    r.instances.as_slice().iter().map(|i| i.node).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_learns_where_an_exposed_workload_runs_and_when_that_changes() {
    let orch = TestOrchestrator::start().await;
    let berlin = "location = { lat = 52.52, lon = 13.405 }";
    let (web1, _d1) = enrolled(
        &orch,
        "web-1",
        &format!("labels = {{ role = \"web\" }}\n{berlin}"),
    )
    .await;
    // A node that runs the workload but has no peer listener: no peer can reach it.
    let (web2, _d2) = enrolled(&orch, "web-2", "labels = { role = \"web\" }").await;
    let (visitor, _d3) = enrolled(&orch, "visitor", "location = { lat = 48.85, lon = 2.35 }").await;

    let mut w1 = Session::open(&orch, &web1).await;
    let mut w2 = Session::open(&orch, &web2).await;
    let peer = PeerAddr {
        ip: IpBytes::V4([127, 0, 0, 2]),
        port: 8443,
    };
    w1.say(NodeMsg::Proxy(ProxyAdvert { peer: Some(peer) }))
        .await;
    w2.say(NodeMsg::Proxy(ProxyAdvert { peer: None })).await;

    let stored = orch
        .orch
        .artifacts
        .put(&b"#!/bin/sh\nexit 0\n"[..], None)
        .await
        .expect("put");
    let digest: String = stored.digest.iter().map(|b| format!("{b:02x}")).collect();
    let spec = json!({
        "name": "shop",
        "version": "1.0.0",
        "artifact": format!("sha256:{digest}"),
        "replicas": 2,
        "requirements": {"labels": {"role": "web"}},
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        "expose": [{"port": 8080, "path_prefix": "/shop"}]
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let generation = w1.run("shop", WorkloadState::Running).await;
    w2.run("shop", WorkloadState::Running).await;
    // Once the orchestrator has web-1's report, a session that opens gets the routes with
    // its assignments: web-1 only, since web-2 has no peer listener.
    let reported = || {
        orch.orch
            .reports
            .of("shop")
            .iter()
            .any(|(n, r)| *n == web1.node_id && r.report.state == WorkloadState::Running)
    };
    assert!(eventually(PATIENCE, reported).await.is_some());
    let mut v = Session::open(&orch, &visitor).await;
    let r = v.routes("shop").await;
    assert_eq!(r.generation, generation);
    let expose = r.expose.as_slice();
    assert_eq!(expose.len(), 1);
    assert_eq!(expose[0].port, 8080);
    assert_eq!(
        expose[0].path_prefix.as_ref().map(|p| p.as_str()),
        Some("/shop")
    );
    assert_eq!(
        r.instances.as_slice(),
        [PeerInstance {
            node: w1.node,
            peer,
            location: Some(Location {
                lat: 52.52,
                lon: 13.405,
                alt_m: None
            }),
        }]
    );

    // A node that reports an instance it does not hold is told to stop it, and is never
    // listed meanwhile.
    v.report("shop", generation, WorkloadState::Running).await;
    v.next("an unassign of shop", |m| match m {
        OrchMsg::Unassign(u) if u.workload.as_str() == "shop" => Some(()),
        _ => None,
    })
    .await;

    // The instance stops: no instance left to route to, the routes stay.
    w1.report("shop", generation, WorkloadState::Stopped).await;
    let r = v.routes("shop").await;
    assert!(listed(&r).is_empty(), "{r:?}");
    assert_eq!(r.expose.as_slice().len(), 1);
    // Running again, then its node goes away.
    w1.report("shop", generation, WorkloadState::Running).await;
    assert_eq!(listed(&v.routes("shop").await), [w1.node]);
    w1.close();
    assert!(listed(&v.routes("shop").await).is_empty());

    // Deleted: every session forgets its routes.
    let (status, body) = orch.api("DELETE", "/v1/workloads/shop", None).await;
    assert_eq!(status, 204, "{body}");
    for s in [&mut v, &mut w2] {
        s.next("an unroute of shop", |m| match m {
            OrchMsg::Unroute(u) if u.workload.as_str() == "shop" => Some(()),
            _ => None,
        })
        .await;
    }
    assert!(
        orch.orch.links.connection(v.node).is_some(),
        "route messages keep the session up"
    );
    v.close();
    w2.close();
}
