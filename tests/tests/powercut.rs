//! What was answered as stored survives a power cut. The data dir sits on a [`LazyFs`]
//! mount, which keeps every write in memory until the file is synced; a cut kills every
//! process using it (SIGKILL) and keeps only what was synced, as a disk would after the power
//! went. Each cut comes right after an answer, so that nothing synced later can stand in for
//! a sync that the answer should have waited for.
//!
//! The orchestrator: a join token created, a node enrolled with a one-use token (the token
//! must stay spent, the certificate must stay honoured), workloads deployed, events a node
//! sent and had acknowledged. The node: its identity and the events it committed to its
//! outbox (the numbering goes on where it was, so no stored event is overwritten).

use edge_tests::cli::Edgectl;
use edge_tests::lazyfs::{Disk, LazyFs};
use edge_tests::{
    PATIENCE, Proc, TestNode, TestOrchestrator, alive, binary, eventually, line_with, node_config,
    spawn_reading_stderr,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Polls `check` every 2 ms (a cut should follow what it waits for closely) until it holds,
/// within [`PATIENCE`].
async fn soon(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(Duration::from_millis(2));
    loop {
        poll.tick().await;
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
    }
}

/// `edge-orchestrator serve` with its data dir on a [`LazyFs`], restarted on the same QUIC
/// port after each cut so that nodes find it again.
struct PoweredOrchestrator {
    disk: Disk,
    fs: Option<LazyFs>,
    proc: Option<Proc>,
    quic: String,
    ctl: Edgectl,
}

impl PoweredOrchestrator {
    fn start() -> Self {
        let disk = Disk::new();
        let fs = disk.power_on();
        let (proc, quic, api) = serve(&data_dir(&fs), "127.0.0.1:0");
        let ctl = Edgectl::admin(&api, &data_dir(&fs));
        Self {
            disk,
            fs: Some(fs),
            proc: Some(proc),
            quic,
            ctl,
        }
    }

    /// The power goes right now (the orchestrator is killed with it), comes back, and the
    /// orchestrator starts again on what the disk kept.
    fn power_cycle(&mut self) {
        self.fs.take().expect("powered").power_cut();
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.0.wait();
        }
        let fs = self.disk.power_on();
        let (proc, quic, api) = serve(&data_dir(&fs), &self.quic);
        assert_eq!(quic, self.quic);
        self.ctl = Edgectl::admin(&api, &data_dir(&fs));
        self.proc = Some(proc);
        self.fs = Some(fs);
    }

    fn quic_addr(&self) -> std::net::SocketAddr {
        self.quic.parse().expect("a socket address")
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = api(&self.ctl, "GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

fn data_dir(fs: &LazyFs) -> PathBuf {
    fs.path().join("orchestrator")
}

/// `edge-orchestrator serve` on `data`, its QUIC socket on `quic`; what it listens on.
fn serve(data: &Path, quic: &str) -> (Proc, String, String) {
    let mut serve = std::process::Command::new(binary("edge-orchestrator"));
    serve
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--quic-listen", quic, "--api-listen", "127.0.0.1:0"])
        .env("EDGE_LOG", "warn");
    let (proc, lines) = spawn_reading_stderr(serve);
    // "edge-orchestrator: nodes dial 127.0.0.1:P, operators use http://127.0.0.1:Q"
    let banner = line_with(&lines, "nodes dial");
    std::thread::spawn(move || lines.into_iter().for_each(drop));
    let field = |after: &str| {
        banner
            .split(after)
            .nth(1)
            .and_then(|s| s.split(',').next())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("{after:?} in {banner:?}"))
    };
    (proc, field("nodes dial "), field("operators use "))
}

/// One call to the operator API: status and JSON body.
fn api(ctl: &Edgectl, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", ctl.api))
        .header("authorization", format!("Bearer {}", ctl.token))
        .header("content-type", "application/json");
    let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
    let mut response = agent
        .run(request.body(body).expect("a request"))
        .expect("the API answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn token_id(join: &Value) -> String {
    let token = join["token"].as_str().expect("a token");
    token.split('.').next().expect("ID.SECRET").to_owned()
}

/// A join token's uses left, as the API lists them; `None` if it is not there.
fn uses_left(orch: &PoweredOrchestrator, id: &str) -> Option<u64> {
    orch.get("/v1/tokens")
        .as_array()?
        .iter()
        .find(|t| t["id"] == id)?["uses_left"]
        .as_u64()
}

/// The events the API shows for `node`, by sequence number, without when each arrived (an
/// event stored but not acknowledged arrives again after a cut).
fn events_of(orch: &PoweredOrchestrator, node: &str) -> BTreeMap<u64, Value> {
    let events = orch.get(&format!("/v1/events?node={node}"));
    events
        .as_array()
        .map(|all| all.iter().filter_map(numbered).collect())
        .unwrap_or_default()
}

fn numbered(event: &Value) -> Option<(u64, Value)> {
    let mut event = event.clone();
    let fields = event.as_object_mut()?;
    fields.remove("received");
    fields.remove("received_ms");
    Some((fields.get("seq")?.as_u64()?, event))
}

/// What a node's outbox still waits to have stored, and the next sequence number, read from
/// a copy of its log (the node keeps writing the original).
fn outbox_of(data_dir: &Path) -> (usize, u64) {
    let copy = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(copy.path().join("outbox")).expect("mkdir");
    let log = data_dir.join("outbox/log");
    if std::fs::copy(&log, copy.path().join("outbox/log")).is_err() {
        return (0, 0);
    }
    let (_, outbox, _) = edge_outbox::OutboxStore::open(
        copy.path(),
        node_core::config::OutboxSettings::default().max_bytes,
    )
    .expect("the copy replays");
    (outbox.len(), outbox.next_seq())
}

fn sleeper_spec(name: &str, digest: &str, pid_file: &Path) -> Value {
    json!({
        "name": name,
        "version": "1.0.0",
        "artifact": digest,
        "env": {"PID_FILE": pid_file.display().to_string()},
        "resources": {"cpu_millis": 10, "memory_bytes": 16 << 20},
    })
}

const SLEEPER: &[u8] = b"#!/bin/sh\necho $$ > \"$PID_FILE\"\nexec sleep 600\n";

fn written_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_orchestrator_answered_as_stored_survives_a_power_cut() {
    let mut orch = PoweredOrchestrator::start();

    // Join tokens, each answered: a power cut right after keeps both.
    let one_use = orch.ctl.json(&["token", "create", "--uses", "1"]);
    let spare = orch.ctl.json(&["token", "create", "--uses", "3"]);
    orch.power_cycle();
    assert_eq!(uses_left(&orch, &token_id(&one_use)), Some(1));
    assert_eq!(uses_left(&orch, &token_id(&spare)), Some(3));

    // A node enrolls with the one-use token; the power goes as soon as it holds its
    // certificate. The token stays spent and the certificate stays good.
    let node_dir = tempfile::tempdir().expect("tmp");
    let ca_hash = one_use["ca_hash"].as_str().expect("ca_hash");
    let join = Some((one_use["token"].as_str().expect("token"), ca_hash));
    let node = TestNode::spawn(node_config(
        "n1",
        node_dir.path(),
        orch.quic_addr(),
        join,
        "",
    ));
    let node_id = node_dir.path().join("identity/node.id");
    soon("the node enrolled", || node_id.exists()).await;
    orch.power_cycle();
    assert_eq!(
        uses_left(&orch, &token_id(&one_use)),
        Some(0),
        "a one-use token, used once, stays spent"
    );
    let online = |orch: &PoweredOrchestrator| orch.ctl.status_of("n1").as_deref() == Some("online");
    assert!(
        eventually(PATIENCE, || online(&orch)).await.is_some(),
        "the enrolled node's certificate is honoured after the cut"
    );
    let late_dir = tempfile::tempdir().expect("tmp");
    let late = TestNode::spawn(node_config(
        "n2",
        late_dir.path(),
        orch.quic_addr(),
        join,
        "",
    ));
    let refused = late
        .exited()
        .await
        .expect_err("a spent token enrolls no one");
    assert!(format!("{refused:?}").contains("TokenSpent"), "{refused:?}");

    // Workloads deployed, each answered 201; the power goes right after the last answer.
    let script = node_dir.path().join("sleeper.sh");
    std::fs::write(&script, SLEEPER).expect("script");
    let pushed = orch
        .ctl
        .json(&["artifact", "push", script.to_str().expect("utf-8")]);
    let digest = pushed["digest"].as_str().expect("digest").to_owned();
    let names = ["w1", "w2", "w3", "w4"];
    for name in names {
        let pid_file = node_dir.path().join(format!("{name}.pid"));
        let spec = sleeper_spec(name, &digest, &pid_file);
        let (status, body) = api(&orch.ctl, "POST", "/v1/workloads", Some(spec));
        assert_eq!(status, 201, "{body}");
    }
    orch.power_cycle();
    let workloads = orch.get("/v1/workloads");
    for name in names {
        assert!(
            workloads
                .as_array()
                .is_some_and(|all| all.iter().any(|w| w["name"] == name)),
            "{name} was answered 201 and must still be there: {workloads}"
        );
    }
    assert!(
        eventually(PATIENCE, || online(&orch)).await.is_some(),
        "back online"
    );

    // A workload dies and is restarted: the node reports it, the orchestrator stores the
    // events and acknowledges them; the power goes as soon as the node has forgotten them.
    let pid_file = node_dir.path().join("w1.pid");
    let mut first = None;
    soon("w1 running", || {
        first = written_pid(&pid_file).filter(|p| alive(*p));
        first.is_some()
    })
    .await;
    let first = first.unwrap_or_default();
    let mut before = 0;
    soon("the deploys' events acknowledged", || {
        let (waiting, next) = outbox_of(node_dir.path());
        before = next;
        waiting == 0 && next > 0
    })
    .await;
    let earlier = events_of(&orch, "n1");
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut next = before;
    soon("the restart's events acknowledged", || {
        let (waiting, numbered) = outbox_of(node_dir.path());
        next = numbered;
        written_pid(&pid_file).is_some_and(|p| p != first && alive(p))
            && waiting == 0
            && next > before
    })
    .await;
    // Events numbered from `next` on came after the cut's instant: they may be lost.
    orch.power_cycle();
    let after = events_of(&orch, "n1");
    for seq in before..next {
        assert!(
            after.contains_key(&seq),
            "event {seq} was acknowledged just before the cut and must still be stored: {after:?}"
        );
    }
    for (seq, event) in &earlier {
        assert_eq!(
            after.get(seq),
            Some(event),
            "event {seq} is still stored as it was"
        );
    }

    // Stop the node with its workloads; nothing is left running.
    node.stop().await.expect("a clean stop");
}

/// A node's config on the ordinary disk, its data dir on the power-cut disk.
fn node_file(
    dir: &Path,
    data: &Path,
    quic: std::net::SocketAddr,
    token: &str,
    ca: &str,
) -> PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"cut\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
             [orchestrator]\naddress = \"{quic}\"\n\
             [join]\ntoken = \"{token}\"\nca_hash = \"{ca}\"\n",
            data.display()
        ),
    )
    .expect("config");
    config
}

fn run_node(config: &Path) -> Proc {
    Proc(
        std::process::Command::new(binary("edge-node"))
            .args(["run", "--config"])
            .arg(config)
            .env("EDGE_LOG", "warn")
            .spawn()
            .expect("edge-node starts"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_committed_survives_a_power_cut() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(1);
    let disk = Disk::new();
    let fs = disk.power_on();
    let dir = tempfile::tempdir().expect("tmp");
    let data = fs.path().join("data");
    let config = node_file(
        dir.path(),
        &data,
        orch.orch.quic_addr,
        &token,
        &orch.ca_hash(),
    );
    let mut node = run_node(&config);
    assert!(
        eventually(PATIENCE, || orch.online("cut")).await.is_some(),
        "enrolled"
    );
    let id = std::fs::read_to_string(data.join("identity/node.id")).expect("node.id");

    let digest = orch.artifact(SLEEPER).await;
    let pid_file = dir.path().join("w.pid");
    let (status, body) = orch
        .api(
            "POST",
            "/v1/workloads",
            Some(sleeper_spec("w", &digest, &pid_file)),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The node sends an event only once it is committed to its outbox: as soon as the
    // orchestrator holds the one that says the workload runs, the power goes.
    let events = |orch: &TestOrchestrator| -> BTreeMap<u64, Value> {
        orch.orch
            .registry
            .events(Some(id.trim()))
            .expect("events")
            .into_iter()
            .filter_map(|e| numbered(&serde_json::to_value(e).ok()?))
            .collect()
    };
    let running = |e: &Value, pid: u32| {
        e["what"]["state"] == "running" && e["what"]["pid"].as_u64() == Some(u64::from(pid))
    };
    let mut first = 0;
    let mut before = BTreeMap::new();
    soon("the node reported the workload running", || {
        first = written_pid(&pid_file).unwrap_or_default();
        before = events(&orch);
        first != 0 && before.values().any(|e| running(e, first))
    })
    .await;
    fs.power_cut();
    let _ = node.0.wait();
    // The workload is on the same machine: it goes too, whether or not it used the disk.
    let _ = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status();
    assert!(eventually(PATIENCE, || !alive(first)).await.is_some());

    // The machine is back: the node starts with the identity it had (its token is spent, so
    // it could not enroll again), runs its workload, and numbers its new events after the
    // ones it committed, so none stored is overwritten.
    let fs = disk.power_on();
    assert_eq!(
        std::fs::read_to_string(data.join("identity/node.id")).expect("node.id survives"),
        id
    );
    node = run_node(&config);
    let mut second = 0;
    let last_before = before.keys().max().copied().unwrap_or_default();
    let mut after = BTreeMap::new();
    soon("the restarted workload reported", || {
        second = written_pid(&pid_file).unwrap_or_default();
        after = events(&orch);
        second != first
            && second != 0
            && after
                .iter()
                .any(|(seq, e)| *seq > last_before && running(e, second))
    })
    .await;
    assert!(
        eventually(PATIENCE, || orch.online("cut")).await.is_some(),
        "the node is back with its identity"
    );
    for (seq, event) in &before {
        assert_eq!(
            after.get(seq),
            Some(event),
            "event {seq} was not overwritten"
        );
    }
    fs.power_cut();
    let _ = node.0.wait();
    let _ = std::process::Command::new("kill")
        .args(["-9", &second.to_string()])
        .status();
}
