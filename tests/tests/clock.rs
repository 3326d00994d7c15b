//! A node whose wall clock is years off, as a board without a real-time clock boots with
//! the last time it saved: a real `edge-node` under libfaketime (Debian's `faketime` and
//! `libfaketime`, through `cross/apt.sh`), its monotonic clock left alone, against a real
//! orchestrator.

use edge_tests::{
    PATIENCE, TestOrchestrator, binary, eventually, installed, line_with, spawn_reading_stderr,
};

/// Three years behind: the orchestrator's certificate, made today, is not valid yet to the
/// node. It enrolls all the same, keeps its session, and says how far off its clock is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_its_clock_three_years_behind_enrolls_and_says_so() {
    installed("faketime", "faketime");
    // The library itself rather than the `faketime` wrapper, which would fork: the process
    // spawned here is the node, and ends with the test.
    let listed = std::process::Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .expect("dpkg runs");
    let library = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .expect("libfaketime.so.1 is installed")
        .to_owned();
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"no-rtc\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
             [orchestrator]\naddress = \"{}\"\n[join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n",
            dir.path().join("data").display(),
            orch.orch.quic_addr,
            orch.ca_hash()
        ),
    )
    .expect("config");
    let mut node = std::process::Command::new(binary("edge-node"));
    node.args(["run", "--config"])
        .arg(&config)
        .env("LD_PRELOAD", library)
        .env("FAKETIME", "-1095d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("EDGE_LOG", "warn");
    let (_node, lines) = spawn_reading_stderr(node);

    let said = tokio::task::spawn_blocking(move || line_with(&lines, "clock is off"))
        .await
        .expect("reader");
    let offset: i64 = said
        .split("offset_secs=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an offset in {said:?}"));
    let three_years = 1095 * 86_400;
    assert!(
        (offset - three_years).abs() < 60,
        "the orchestrator's time minus the node's is about three years: {said}"
    );
    assert!(
        eventually(PATIENCE, || orch.online("no-rtc"))
            .await
            .is_some(),
        "the node enrolled and holds its session"
    );
}
