//! A workload assigned to a real node over real QUIC: admitted, its artifact fetched and
//! verified, run by the supervisor as a real process, reported back, stopped on request, and
//! running again after the node daemon restarts.

use edge_proto::{Assignment, OrchMsg, RestartPolicy, Seq, Str, Unassign, WorkloadState, text};
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, eventually, node_config};
use orchestrator::server::InstanceReport;

fn running_pid(orch: &TestOrchestrator, workload: &str) -> Option<u32> {
    orch.orch
        .shared
        .instance_reports(workload)
        .into_iter()
        .find_map(|(_, r): (_, InstanceReport)| {
            (r.report.state == WorkloadState::Running)
                .then_some(r.report.pid)
                .flatten()
        })
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only its parent's bookkeeping is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_workload_runs_reports_and_survives_a_daemon_restart() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let data = tempfile::tempdir().expect("tmp");
    let config = node_config(
        "worker-1",
        data.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "",
    );
    let node = TestNode::spawn(config.clone());
    assert!(
        eventually(PATIENCE, || orch.online("worker-1"))
            .await
            .is_some()
    );
    let id = orch
        .orch
        .shared
        .fleet()
        .find("worker-1")
        .map(|n| n.id)
        .expect("known");

    let script = b"#!/bin/sh\necho \"hello from $GREETING\"\nexec sleep 600\n";
    let store = orch.orch.shared.artifacts.get().expect("store");
    let stored = store.put(&script[..], None).await.expect("put");
    let assignment = Assignment {
        workload: text("hello"),
        version: text("1.0.0"),
        generation: 1,
        artifact: stored.digest,
        artifact_size: stored.size,
        args: Seq::default(),
        env: Seq::new(vec![(
            Str::new("GREETING").expect("fits"),
            Str::new("the test").expect("fits"),
        )])
        .expect("fits"),
        working_dir: None,
        cpu_millis: Some(250),
        memory_bytes: Some(32 << 20),
        disk_bytes: None,
        restart: RestartPolicy::Always,
        health: None,
    };
    assert!(
        orch.orch
            .shared
            .send_to(id, OrchMsg::Assign(Box::new(assignment))),
        "the node has a session to send on"
    );
    assert!(
        eventually(PATIENCE, || running_pid(&orch, "hello").is_some())
            .await
            .is_some(),
        "the workload reported running: {:?}",
        orch.orch.shared.instance_reports("hello")
    );
    let pid = running_pid(&orch, "hello").expect("running");
    assert!(alive(pid), "the reported pid is a live process");

    // The daemon stops (its workloads with it) and comes back: the workload runs again.
    node.stop().await.expect("clean stop");
    assert!(
        eventually(PATIENCE, || !alive(pid)).await.is_some(),
        "no orphan"
    );
    let node = TestNode::spawn(config);
    assert!(
        eventually(PATIENCE, || running_pid(&orch, "hello")
            .is_some_and(|p| p != pid))
        .await
        .is_some(),
        "running again after the daemon restarted"
    );
    let pid = running_pid(&orch, "hello").expect("running");

    // Unassigned: stopped, and the process is gone.
    assert!(orch.orch.shared.send_to(
        id,
        OrchMsg::Unassign(Unassign {
            workload: text("hello")
        })
    ));
    assert!(
        eventually(PATIENCE, || !alive(pid)).await.is_some(),
        "stopped on unassign"
    );
    node.stop().await.expect("clean stop");
}
