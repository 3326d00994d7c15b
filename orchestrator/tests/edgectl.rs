//! The real `edgectl` binary against a real API server on 127.0.0.1:0.

use edge_proto::{Capabilities, Label, Location, NodeId, text};
use orchestrator::api;
use orchestrator::app::Handles;
use orchestrator::auth::{ApiAuth, Role};
use orchestrator_core::store::MemStore;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

struct Server {
    // Dropping the runtime stops the server.
    _rt: tokio::runtime::Runtime,
    handles: Handles,
    base: String,
    admin: String,
}

fn start() -> Server {
    let store = Arc::new(MemStore::default());
    let handles = Handles::open(store.clone()).expect("open the state");
    let auth = Arc::new(ApiAuth::load_or_create(store.as_ref()).expect("API secret"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    rt.spawn(api::serve(listener, handles.api(auth.clone(), None)));
    Server {
        _rt: rt,
        handles,
        base: format!("http://{addr}"),
        admin: auth.issue("admin", Role::Admin, Duration::from_secs(3600)),
    }
}

impl Server {
    /// Runs `edgectl --api BASE --token TOKEN ARGS...`.
    fn edgectl(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.env_remove("EDGE_API")
            .env_remove("EDGE_TOKEN")
            .arg("--api")
            .arg(&self.base);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        cmd.args(args).output().expect("run edgectl")
    }

    fn enroll_berlin(&self) {
        let (token, _) = self
            .handles
            .registry
            .create_token(600, 1, "test".into())
            .expect("join token");
        let caps = Capabilities {
            arch: text("aarch64"),
            os: text("linux"),
            os_version: text("Debian GNU/Linux 12 (bookworm)"),
            kernel: text("6.6.31"),
            hostname: text("pi"),
            cpus: 4,
            cpu_model: text("Cortex-A72"),
            memory_bytes: 4_080_218_931,
            disk_bytes: 31_000_000_000,
            disk_free_bytes: 20_000_000_000,
            accelerators: Default::default(),
            board: Some(text("Raspberry Pi 4 Model B Rev 1.4")),
            labels: [Label {
                key: text("site"),
                value: text("berlin"),
            }]
            .into_iter()
            .collect(),
            location: Some(Location {
                lat: 52.52,
                lon: 13.405,
                alt_m: None,
            }),
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        self.handles
            .registry
            .fleet()
            .enroll(&token, "berlin-1", &caps, NodeId([7; 16]), now, |_| Ok(()))
            .expect("enroll");
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "edgectl failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[test]
fn token_create_json_prints_the_token_and_ca_hash() {
    let s = start();
    let o = s.edgectl(
        Some(&s.admin),
        &["token", "create", "--ttl", "1h", "--uses", "2", "--json"],
    );
    assert_ok(&o);
    let out = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    let token = v["token"].as_str().expect("token");
    assert_eq!(v["ca_hash"], s.handles.registry.ca().hash());
    assert_eq!(v["uses"], 2);
    assert!(
        out.trim_start().starts_with("{\n  \"token\": "),
        "the API's key order: {out}"
    );
    let id = token.split_once('.').expect("ID.SECRET").0;
    assert!(s.handles.registry.fleet().tokens().any(|t| t.id == id));
}

#[test]
fn token_create_prints_a_join_snippet_that_is_valid_toml() {
    let s = start();
    let o = s.edgectl(
        Some(&s.admin),
        &["token", "create", "--description", "shop berlin"],
    );
    assert_ok(&o);
    let out = stdout(&o);
    let snippet = &out[out.find("[join]").expect("a [join] section")..];
    let parsed: toml::Table = toml::from_str(snippet).expect("valid TOML");
    let join = parsed["join"].as_table().expect("join table");
    assert_eq!(
        join["ca_hash"].as_str(),
        Some(s.handles.registry.ca().hash().as_str())
    );
    let token = join["token"].as_str().expect("token");
    let record = s
        .handles
        .registry
        .fleet()
        .tokens()
        .find(|t| token.starts_with(&format!("{}.", t.id)))
        .cloned()
        .expect("the printed token exists");
    assert_eq!(record.description, "shop berlin");
    assert_eq!(record.uses_left, 1);

    let o = s.edgectl(Some(&s.admin), &["token", "list"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains(&record.id) && out.contains("shop berlin"),
        "{out}"
    );
    assert!(!out.contains(token), "token list never shows the secret");
}

#[test]
fn nodes_prints_a_table_and_json() {
    let s = start();
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert_ok(&o);
    assert!(stdout(&o).starts_with("NAME"), "{}", stdout(&o));

    s.enroll_berlin();
    let o = s.edgectl(Some(&s.admin), &["nodes"]);
    assert_ok(&o);
    let out = stdout(&o);
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("header")
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "ARCH",
            "CPUS",
            "MEMORY",
            "LOCATION",
            "LAST SEEN"
        ]
    );
    let row = lines.next().expect("a row");
    for cell in [
        "berlin-1",
        "offline",
        "aarch64",
        "3.8 GiB",
        "52.520,13.405",
        "s ago",
    ] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }

    let o = s.edgectl(Some(&s.admin), &["nodes", "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let nodes = v.as_array().expect("an array");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["name"], "berlin-1");

    let o = s.edgectl(Some(&s.admin), &["nodes", "--status", "online"]);
    assert_ok(&o);
    assert!(!stdout(&o).contains("berlin-1"));

    let o = s.edgectl(Some(&s.admin), &["node", "berlin-1"]);
    assert_ok(&o);
    let out = stdout(&o);
    for text in [
        "berlin-1",
        "site=berlin",
        "Raspberry Pi 4 Model B Rev 1.4",
        "4 x Cortex-A72",
        "52.520,13.405",
        "07070707070707070707070707070707",
    ] {
        assert!(out.contains(text), "{text:?} missing in:\n{out}");
    }

    let o = s.edgectl(Some(&s.admin), &["node", "nowhere"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("edgectl: no node"), "{}", stderr(&o));
}

#[test]
fn api_errors_exit_1_with_the_apis_message() {
    let s = start();
    let o = s.edgectl(Some("not-a-jwt"), &["nodes"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "edgectl: malformed bearer token");
    assert!(stdout(&o).is_empty());

    let o = s.edgectl(None, &["nodes"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("edgectl: missing bearer token"), "{err}");
    assert!(err.contains("EDGE_TOKEN"), "a hint: {err}");

    let o = s.edgectl(Some(&s.admin), &["token", "create", "--ttl", "banana"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("edgectl: ttl: "), "{}", stderr(&o));

    // The environment works as well as the flags.
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env("EDGE_API", &s.base)
        .env("EDGE_TOKEN", &s.admin)
        .args(["token", "list", "--json"])
        .output()
        .expect("run edgectl");
    assert_ok(&o);
    assert_eq!(stdout(&o).trim(), "[]");
}

#[test]
fn an_unreachable_api_is_named_in_the_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let api = format!("http://127.0.0.1:{port}");
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .env_remove("EDGE_TOKEN")
        .args(["--api", &api, "--token", "x", "nodes"])
        .output()
        .expect("run edgectl");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "edgectl: cannot reach the orchestrator API at {api}"
        )),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");
}
