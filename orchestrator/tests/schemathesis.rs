//! The operator API against its own OpenAPI document, with generated requests: schemathesis
//! (pinned, installed by `openapi/install-schemathesis.sh` into a venv under the cargo target
//! dir) runs against a whole orchestrator started here on 127.0.0.1:0 with its admin token.
//!
//! It sends what the document allows and what it refuses, for every operation, and fails on a
//! 5xx, an undocumented status, content type or body, a request the document refuses but the
//! server takes, or one the document allows but the server refuses (except where
//! `openapi/schemathesis.toml` says why no schema can tell). The examples per operation are
//! bounded and the seed fixed, so a run takes well under a couple of minutes on 2 cores and a
//! failure can be replayed.

use orchestrator::app::Orchestrator;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The schemathesis release the document is checked with.
const SCHEMATHESIS: &str = "4.32.5";
/// Test cases per operation and phase.
const MAX_EXAMPLES: u32 = 25;
const SEED: u64 = 1;
/// A generous bound on the whole run (it takes well under a minute), so that a hung run fails
/// rather than stalls the suite.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The checks the brief for this document names; `openapi/schemathesis.toml` must enable them.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `st` executable, installing it first if needed.
fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{SCHEMATHESIS}"));
    let script = manifest_dir().join("tests/openapi/install-schemathesis.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&venv)
        .arg(SCHEMATHESIS)
        .output()
        .expect("run install-schemathesis.sh");
    assert!(
        out.status.success(),
        "installing schemathesis failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn the_config_enables_every_check() {
    let text = std::fs::read_to_string(manifest_dir().join("tests/openapi/schemathesis.toml"))
        .expect("read schemathesis.toml");
    let config: toml::Table = text.parse().expect("schemathesis.toml parses");
    let checks = config["checks"].as_table().expect("a [checks] table");
    for name in CHECKS {
        let enabled = checks
            .get(*name)
            .and_then(|c| c.get("enabled"))
            .and_then(toml::Value::as_bool);
        assert_eq!(enabled, Some(true), "{name} is not enabled");
    }
}

#[test]
fn the_server_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    let data = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let orch = rt.block_on(async {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp");
        Orchestrator::start(data.path(), udp, tcp)
            .await
            .expect("start the orchestrator")
    });
    let mut command = tokio::process::Command::new(&st);
    command
        .arg("--config-file")
        .arg(manifest_dir().join("tests/openapi/schemathesis.toml"))
        .arg("run")
        .arg(manifest_dir().join("src/openapi.json"))
        .arg("--url")
        .arg(format!("http://{}", orch.api_addr))
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", orch.admin_token))
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["--no-color", "--output-truncate", "true"])
        // Hypothesis keeps its files in the working directory.
        .current_dir(work.path())
        .kill_on_drop(true);
    let run = rt.block_on(async { tokio::time::timeout(RUN_LIMIT, command.output()).await });
    let out = run
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_LIMIT:?}"))
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    rt.block_on(orch.shutdown());
    assert!(
        out.status.success(),
        "schemathesis found the server and its document apart ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // It ran every operation the router serves, each through generated cases.
    let operations = orchestrator::api::ROUTES.len();
    assert!(
        stdout.contains(&format!("{operations} selected / {operations} total")),
        "{stdout}"
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}
