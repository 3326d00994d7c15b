//! A workload's log read from the node that runs it, over the node's own QUIC connection: the
//! tail, following new lines, a workload the node does not run, streams the orchestrator
//! drops, and streams that open with garbage.

use edge_proto::{LogsRequest, NodeId, WorkloadState, text};
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, eventually, node_config};
use orchestrator::logs::{LogStream, LogsError, open_logs};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Prints three lines, then one more once `$SIGNAL_DIR/go` exists, then idles.
const PRINTER: &[u8] = b"#!/bin/sh\n\
    echo 'line 1'\n\
    echo 'line 2'\n\
    echo 'line 3'\n\
    while [ ! -e \"$SIGNAL_DIR/go\" ]; do sleep 0.05; done\n\
    echo 'line 4'\n\
    exec sleep 600\n";

/// An orchestrator and one enrolled node with a live session.
struct Cluster {
    orch: TestOrchestrator,
    node: TestNode,
    name: &'static str,
    id: NodeId,
    _data: tempfile::TempDir,
}

impl Cluster {
    /// Node names differ per test: each names the control group its workloads run under.
    async fn start(name: &'static str) -> Self {
        let orch = TestOrchestrator::start().await;
        let token = orch.token(1);
        let data = tempfile::tempdir().expect("tmp");
        let config = node_config(
            name,
            data.path(),
            orch.orch.quic_addr,
            Some((&token, &orch.ca_hash())),
            "",
        );
        let node = TestNode::spawn(config);
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "the node came online"
        );
        let id = orch
            .orch
            .registry
            .fleet()
            .find(name)
            .map(|n| n.id)
            .expect("known");
        Self {
            orch,
            node,
            name,
            id,
            _data: data,
        }
    }

    /// The node's live connection, as the orchestrator holds it.
    fn conn(&self) -> quinn::Connection {
        self.orch
            .orch
            .links
            .connection(self.id)
            .expect("the node has a live session")
    }

    /// Deploys [`PRINTER`] as `workload` through the operator API; it waits for
    /// `signals/go` before its fourth line.
    async fn run_printer(&self, workload: &str, signals: &Path) {
        let store = &self.orch.orch.artifacts;
        let stored = store.put(PRINTER, None).await.expect("put");
        let digest: String = stored.digest.iter().map(|b| format!("{b:02x}")).collect();
        let spec = json!({
            "name": workload,
            "version": "1.0.0",
            "artifact": format!("sha256:{digest}"),
            "env": {"SIGNAL_DIR": signals.to_str().expect("utf-8 temp path")},
            "replicas": 1,
            "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
            // Printed once: a restart would print the lines again.
            "restart": {"policy": "never"},
        });
        let (status, body) = self.orch.api("POST", "/v1/workloads", Some(spec)).await;
        assert_eq!(status, 201, "deployed: {body}");
    }

    async fn delete(&self, workload: &str) {
        let (status, body) = self
            .orch
            .api("DELETE", &format!("/v1/workloads/{workload}"), None)
            .await;
        assert!((200..300).contains(&status), "deleted: {status} {body}");
    }

    fn running_pid(&self, workload: &str) -> Option<u32> {
        self.orch
            .orch
            .reports
            .of(workload)
            .into_iter()
            .find_map(|(_, r)| {
                (r.report.state == WorkloadState::Running)
                    .then_some(r.report.pid)
                    .flatten()
            })
    }
}

fn request(workload: &str, tail_lines: u32, follow: bool) -> LogsRequest {
    LogsRequest {
        workload: text(workload),
        tail_lines,
        follow,
    }
}

/// The next batch of lines, failing the test if none comes within [`PATIENCE`].
async fn next(stream: &mut LogStream) -> Result<Option<Vec<String>>, LogsError> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the node sent something in time")
}

/// The whole log a non-following request returns.
async fn tail(
    conn: &quinn::Connection,
    workload: &str,
    lines: u32,
) -> Result<Vec<String>, LogsError> {
    let mut stream = open_logs(conn, request(workload, lines, false)).await?;
    let mut all = Vec::new();
    while let Some(batch) = next(&mut stream).await? {
        all.extend(batch);
    }
    Ok(all)
}

/// Asks for the tail every 20 ms until it is `want` (the workload may still be downloading,
/// or printing); fails the test after [`PATIENCE`].
async fn tail_becomes(conn: &quinn::Connection, workload: &str, want: &[&str]) {
    let start = Instant::now();
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    let mut last = None;
    while start.elapsed() < PATIENCE {
        poll.tick().await;
        let got = tail(conn, workload, 100).await;
        if got.as_ref().is_ok_and(|lines| lines == want) {
            return;
        }
        last = Some(got);
    }
    panic!("the tail never became {want:?}; last: {last:?}");
}

/// Reads a followed stream until it has delivered `count` lines in all.
async fn follow_until(stream: &mut LogStream, seen: &mut Vec<String>, count: usize) {
    while seen.len() < count {
        match next(stream).await {
            Ok(Some(batch)) => seen.extend(batch),
            other => panic!("the stream ended early ({other:?}) after {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_follow_show_what_the_workload_prints() {
    let c = Cluster::start("logs-tail").await;
    let signals = tempfile::tempdir().expect("tmp");
    c.run_printer("printer", signals.path()).await;
    let conn = c.conn();

    tail_becomes(&conn, "printer", &["line 1", "line 2", "line 3"]).await;
    assert_eq!(
        tail(&conn, "printer", 2).await.expect("tail"),
        ["line 2", "line 3"]
    );
    assert!(tail(&conn, "printer", 0).await.expect("tail").is_empty());

    // Following: the tail, then a line printed after the stream opened, each exactly once.
    let mut stream = open_logs(&conn, request("printer", 100, true))
        .await
        .expect("follow");
    let mut seen = Vec::new();
    follow_until(&mut stream, &mut seen, 3).await;
    std::fs::write(signals.path().join("go"), b"").expect("signal");
    follow_until(&mut stream, &mut seen, 4).await;
    assert_eq!(seen, ["line 1", "line 2", "line 3", "line 4"]);

    // A workload the node does not run.
    assert!(matches!(
        open_logs(&conn, request("no-such-workload", 10, true)).await,
        Err(LogsError::NotFound)
    ));

    // Removing the workload ends a follow: the stream finishes, nothing is cut.
    c.delete("printer").await;
    assert_eq!(next(&mut stream).await.expect("a clean end"), None);
    assert!(matches!(
        open_logs(&conn, request("printer", 10, false)).await,
        Err(LogsError::NotFound)
    ));
    c.node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_log_streams_stop_and_the_node_serves_more() {
    let c = Cluster::start("logs-drop").await;
    let signals = tempfile::tempdir().expect("tmp");
    c.run_printer("printer", signals.path()).await;
    let conn = c.conn();
    tail_becomes(&conn, "printer", &["line 1", "line 2", "line 3"]).await;
    let pid = c.running_pid("printer").expect("reported running");

    // The node serves at most 4 streams at once: each of these opens only because the node
    // let go of the ones dropped before it.
    for round in 0..12 {
        let mut stream = open_logs(&conn, request("printer", 100, true))
            .await
            .unwrap_or_else(|e| panic!("follow {round}: {e}"));
        let mut seen = Vec::new();
        follow_until(&mut stream, &mut seen, 3).await;
        drop(stream);
    }

    // Nothing else noticed: same session, same process, and following still works.
    assert!(c.orch.online(c.name));
    assert!(conn.close_reason().is_none(), "the same connection");
    assert_eq!(c.running_pid("printer"), Some(pid));
    let mut stream = open_logs(&conn, request("printer", 1, true))
        .await
        .expect("follow");
    let mut seen = Vec::new();
    follow_until(&mut stream, &mut seen, 1).await;
    std::fs::write(signals.path().join("go"), b"").expect("signal");
    follow_until(&mut stream, &mut seen, 2).await;
    assert_eq!(seen, ["line 3", "line 4"]);
    c.node.stop().await.expect("clean stop");
}

/// Opens a raw stream, sends `bytes` and finishes; returns how the node's answer ended.
async fn raw_stream(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream opens");
    send.write_all(bytes).await.expect("write");
    let _ = send.finish();
    tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 16))
        .await
        .expect("the node answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_headers_reset_their_stream_and_the_session_stays_up() {
    let c = Cluster::start("logs-hostile").await;
    let conn = c.conn();
    let garbage: [&[u8]; 4] = [
        // A frame whose body is no header: an unknown variant.
        &[0, 0, 0, 3, 0xff, 0xff, 0xff],
        // A length prefix far over the frame limit.
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        // Half a length prefix, then the end of the stream.
        &[0, 0],
        // Nothing at all.
        &[],
    ];
    for bytes in garbage {
        let answer = raw_stream(&conn, bytes).await;
        assert!(
            matches!(
                answer,
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_)))
            ),
            "{bytes:?} was answered with {answer:?}"
        );
    }

    // The session is the same one, and it still serves logs.
    assert!(c.orch.online(c.name));
    assert!(conn.close_reason().is_none(), "the same connection");
    assert!(c.node.is_running());
    assert!(matches!(
        open_logs(&conn, request("no-such-workload", 10, false)).await,
        Err(LogsError::NotFound)
    ));
    c.node.stop().await.expect("clean stop");
}
