//! A daemon whose stderr goes away (the journal restarted, the pipe's reader died) loses its
//! log lines, never the work that logs them: every write of a log line fails from then on,
//! and that failure must not reach the task that was logging.

use edge_tests::binary;
use edge_tests::cli::Edgectl;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn an_orchestrator_whose_stderr_closed_still_answers_calls_that_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = edge_tests::Proc(
        Command::new(binary("edge-orchestrator"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .env("EDGE_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the orchestrator starts"),
    );
    let mut stderr = BufReader::new(orchestrator.0.stderr.take().expect("stderr"));
    // "edge-orchestrator: nodes dial 127.0.0.1:P, operators use http://127.0.0.1:Q"
    let mut line = String::new();
    while !line.contains("operators use ") {
        line.clear();
        let read = stderr.read_line(&mut line).expect("read stderr");
        assert!(read > 0, "the orchestrator ended before its banner");
    }
    let api = line
        .split("operators use ")
        .nth(1)
        .map(str::trim)
        .expect("the API URL")
        .to_owned();
    // Nobody reads its stderr any more: each log line it writes from now on fails.
    drop(stderr);

    let ctl = Edgectl::admin(&api, &data);
    for _ in 0..3 {
        // Creating a join token logs a line (at info) while the call is being answered.
        let token = ctl.json(&["token", "create", "--uses", "1"]);
        assert!(token["token"].is_string(), "{token}");
    }
}
