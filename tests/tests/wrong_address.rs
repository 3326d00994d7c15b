//! A node pointed at the wrong orchestrator address says so, as the operator sees it: the real
//! `edge-node` binary at its default log level, its stderr read as the journal would.

use edge_tests::{PATIENCE, binary};
use std::process::Command;
use std::time::Instant;

#[test]
fn a_node_dialing_a_closed_port_warns_where_why_and_when_it_tries_again() {
    let dir = tempfile::tempdir().expect("tmp");
    // A port nothing listens on.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"lost\"\ndata_dir = \"{}\"\n\
             [orchestrator]\naddress = \"{closed}\"\n\
             [join]\ntoken = \"abcdef.0123456789abcdef0123456789abcdef\"\n\
             ca_hash = \"sha256:{}\"\n",
            dir.path().join("data").display(),
            "00".repeat(32),
        ),
    )
    .expect("write config");
    let mut run = Command::new(binary("edge-node"));
    run.args(["run", "--config"])
        .arg(&config)
        // The default level, as a packaged node runs.
        .env_remove("EDGE_LOG")
        .env_remove("EDGE_LOG_FORMAT");
    let (mut node, seen) = edge_tests::spawn_reading_stderr(run);

    // Two failed attempts, each a warning that names the address, the error and the wait.
    let start = Instant::now();
    let mut log = Vec::new();
    let mut warnings = Vec::new();
    while warnings.len() < 2 {
        let left = PATIENCE.saturating_sub(start.elapsed());
        let Ok(line) = seen.recv_timeout(left) else {
            panic!("no two warnings naming {closed} in {PATIENCE:?}; the log: {log:#?}");
        };
        if line.contains("WARN") && line.contains(&closed.to_string()) {
            warnings.push(line.clone());
        }
        log.push(line);
    }
    for w in &warnings {
        assert!(w.contains("cannot reach the orchestrator"), "{w}");
        assert!(w.contains("error="), "says why: {w}");
        assert!(w.contains("retry_in="), "says when it tries again: {w}");
    }
    assert!(
        node.0.try_wait().expect("wait").is_none(),
        "it keeps trying: {log:#?}"
    );
}
