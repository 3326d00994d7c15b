//! The operator API over real HTTP: a real server on 127.0.0.1:0, a real client.

use edge_proto::{
    Accelerator, AcceleratorKind, Capabilities, Label, Location, NodeId, Status, text,
};
mod common;

use common::Api;
use orchestrator::api;
use orchestrator::app::Handles;
use orchestrator::artifacts::ArtifactStore;
use orchestrator::auth::{self, ApiAuth, Role};
use orchestrator::store::SledStore;
use orchestrator_core::store::{MemStore, Store};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};
use ureq::SendBody;
use ureq::http::{Method, Request};

/// A running API server with an admin and a viewer token.
struct Server {
    // Dropping it stops the server.
    _api: Api,
    handles: Handles,
    auth: Arc<ApiAuth>,
    base: String,
    admin: String,
    viewer: String,
    agent: ureq::Agent,
}

fn start() -> Server {
    start_with(Arc::new(MemStore::default()))
}

fn start_with(store: Arc<dyn Store>) -> Server {
    server(Api::start(store, None, api::LIMITS))
}

fn server(api: Api) -> Server {
    Server {
        admin: api.token("admin", Role::Admin),
        viewer: api.token("dash", Role::Viewer),
        handles: api.handles.clone(),
        auth: api.auth.clone(),
        base: api.base(),
        agent: common::agent(),
        _api: api,
    }
}

/// A request body.
#[derive(Debug)]
enum Payload {
    None,
    /// With a content-length.
    Bytes(Vec<u8>),
    /// With chunked transfer encoding: no length up front.
    Chunked(Vec<u8>),
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    headers: ureq::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an error status with a JSON `{error, message}` body; returns the message.
    fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{self:?}");
        let message = v["message"].as_str().expect("a message").to_owned();
        assert!(!message.is_empty(), "{self:?}");
        message
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Payload,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(self.url(path));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = match body {
            Payload::None => self
                .agent
                .run(request.body(SendBody::none()).expect("request")),
            Payload::Bytes(b) => self.agent.run(request.body(b).expect("request")),
            Payload::Chunked(b) => self.agent.run(
                request
                    .body(SendBody::from_owned_reader(std::io::Cursor::new(b)))
                    .expect("request"),
            ),
        };
        let mut response = response.expect("the server answers");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(10 << 20)
            .read_to_string()
            .expect("body");
        Reply {
            status: response.status().as_u16(),
            content_type,
            headers,
            body,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send("GET", path, token, None, Payload::None)
    }

    fn post_json(&self, path: &str, token: Option<&str>, json: &str) -> Reply {
        self.send(
            "POST",
            path,
            token,
            Some("application/json"),
            Payload::Bytes(json.as_bytes().to_vec()),
        )
    }

    /// Enrolls a node straight into the registry (there is no QUIC here).
    fn enroll(&self, name: &str, id: NodeId, caps: &Capabilities) {
        let (token, _) = self
            .handles
            .registry
            .create_token(600, 1, "test".into())
            .expect("join token");
        self.handles
            .registry
            .fleet()
            .enroll(&token, name, caps, id, unix_now(), |_| Ok(()))
            .expect("enroll");
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn pi_caps() -> Capabilities {
    Capabilities {
        arch: text("aarch64"),
        os: text("linux"),
        os_version: text("Debian GNU/Linux 12 (bookworm)"),
        kernel: text("6.6.31+rpt-rpi-v8"),
        hostname: text("pi-berlin"),
        cpus: 4,
        cpu_model: text("Cortex-A72"),
        memory_bytes: 4_080_218_931,
        disk_bytes: 31_000_000_000,
        disk_free_bytes: 20_000_000_000,
        accelerators: [Accelerator {
            kind: AcceleratorKind::Gpu,
            name: text("v3d"),
            path: text("/dev/dri/renderD128"),
        }]
        .into_iter()
        .collect(),
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
            alt_m: Some(34.0),
        }),
    }
}

fn bare_caps() -> Capabilities {
    Capabilities {
        arch: text("x86_64"),
        os: text("linux"),
        os_version: text("Ubuntu 24.04"),
        kernel: text("6.8.0"),
        hostname: text("gw"),
        cpus: 2,
        cpu_model: text(""),
        memory_bytes: 1 << 30,
        disk_bytes: 8 << 30,
        disk_free_bytes: 4 << 30,
        accelerators: Default::default(),
        board: None,
        labels: Default::default(),
        location: None,
    }
}

/// Is this `YYYY-MM-DDTHH:MM:SSZ`?
fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn healthz_and_metrics_need_no_token() {
    let s = start();
    let r = s.get("/healthz", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));

    s.enroll("berlin-1", NodeId([1; 16]), &pi_caps());
    let r = s.get("/metrics", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    assert!(
        r.body.contains(r#"edge_nodes{status="offline"} 1"#),
        "{}",
        r.body
    );
    assert!(r.body.contains(r#"edge_nodes{status="online"} 0"#));
    // The two requests before this one were counted.
    assert!(
        r.body.contains(r#"edge_api_requests_total{code="200"}"#),
        "{}",
        r.body
    );
}

#[test]
fn v1_needs_a_valid_bearer_token() {
    let s = start();
    let r = s.get("/v1/nodes", None);
    let m = r.error(401, "unauthorized");
    assert!(m.contains("missing"), "{m}");
    assert_eq!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );

    let m = s
        .get("/v1/nodes", Some("garbage"))
        .error(401, "unauthorized");
    assert!(m.contains("malformed"), "{m}");

    let expired = s
        .auth
        .issue_at(
            "old",
            Role::Admin,
            SystemTime::now() - Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .expect("issue")
        .token;
    let m = s
        .get("/v1/nodes", Some(&expired))
        .error(401, "unauthorized");
    assert!(m.contains("expired"), "{m}");

    let foreign = ApiAuth::from_secret(&[9; 32])
        .issue("x", Role::Admin, Duration::from_secs(60))
        .expect("issue")
        .token;
    let m = s
        .get("/v1/nodes", Some(&foreign))
        .error(401, "unauthorized");
    assert!(m.contains("signature"), "{m}");

    // Not the Bearer scheme.
    let r = s.agent.run(
        Request::get(s.url("/v1/nodes"))
            .header("authorization", format!("Basic {}", s.admin))
            .body(SendBody::none())
            .expect("request"),
    );
    assert_eq!(r.expect("answer").status().as_u16(), 401);

    // Authentication comes before the body is looked at.
    s.post_json("/v1/tokens", None, "{not json")
        .error(401, "unauthorized");

    assert_eq!(s.get("/v1/nodes", Some(&s.admin)).status, 200);
}

#[test]
fn roles_limit_what_a_token_may_do() {
    let s = start();
    s.enroll("berlin-1", NodeId([1; 16]), &pi_caps());
    let viewer = Some(s.viewer.as_str());
    assert_eq!(s.get("/v1/nodes", viewer).status, 200);
    assert_eq!(s.get("/v1/nodes/berlin-1", viewer).status, 200);
    let m = s
        .post_json("/v1/tokens", viewer, r#"{"ttl": "1h"}"#)
        .error(403, "forbidden");
    assert!(m.contains("admin"), "{m}");
    s.get("/v1/tokens", viewer).error(403, "forbidden");
    s.send("DELETE", "/v1/nodes/berlin-1", viewer, None, Payload::None)
        .error(403, "forbidden");
    s.post_json(
        "/v1/api-tokens",
        viewer,
        r#"{"role": "admin", "subject": "me"}"#,
    )
    .error(403, "forbidden");
    // Forbidden wins over a bad body: the caller learns nothing about valid bodies.
    s.post_json("/v1/tokens", viewer, r#"{"uses": "x"}"#)
        .error(403, "forbidden");

    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    assert_eq!(s.get("/v1/nodes", Some(&operator)).status, 200);
    s.get("/v1/tokens", Some(&operator)).error(403, "forbidden");
    assert!(
        s.handles.registry.fleet().find("berlin-1").is_some(),
        "nothing was deleted"
    );
}

#[test]
fn admin_creates_a_join_token_a_node_can_redeem() {
    let s = start();
    let before = unix_now();
    let r = s.post_json(
        "/v1/tokens",
        Some(&s.admin),
        r#"{"ttl": "2h", "uses": 3, "description": "shop berlin"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    let token = v["token"].as_str().expect("token").to_owned();
    let id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(v["ca_hash"], s.handles.registry.ca().hash());
    assert!(s.handles.registry.ca().hash().starts_with("sha256:"));
    assert!(token.starts_with(&format!("{id}.")), "{token}");
    assert_eq!(v["uses"], 3);
    assert_eq!(v["description"], "shop berlin");
    let expires = v["expires_unix"].as_u64().expect("expires_unix");
    assert!((before + 7200..=unix_now() + 7200).contains(&expires));
    assert!(is_rfc3339_utc(
        v["expires_at"].as_str().expect("expires_at")
    ));

    let record = s
        .handles
        .registry
        .fleet()
        .tokens()
        .find(|t| t.id == id)
        .cloned()
        .expect("the token is in the registry");
    assert_eq!(record.uses_left, 3);
    s.handles
        .registry
        .fleet()
        .enroll(
            &token,
            "redeemed",
            &bare_caps(),
            NodeId([5; 16]),
            unix_now(),
            |_| Ok(()),
        )
        .expect("the token is redeemable");

    // Defaults: an empty POST is a 1-hour, 1-use token; so is `{}`.
    for r in [
        s.send("POST", "/v1/tokens", Some(&s.admin), None, Payload::None),
        s.post_json("/v1/tokens", Some(&s.admin), "{}"),
    ] {
        assert_eq!(r.status, 201, "{r:?}");
        let v = r.json();
        assert_eq!(v["uses"], 1);
        let expires = v["expires_unix"].as_u64().expect("expires_unix");
        assert!((before + 3600..=unix_now() + 3600).contains(&expires));
    }
    let r = s.post_json("/v1/tokens", Some(&s.admin), r#"{"ttl_secs": 60}"#);
    assert_eq!(r.status, 201, "{r:?}");

    let r = s.get("/v1/tokens", Some(&s.admin));
    assert_eq!(r.status, 200);
    let secret = token.split_once('.').expect("ID.SECRET").1;
    assert!(!r.body.contains(secret), "the secret leaked: {}", r.body);
    assert!(!r.body.contains(&record.secret_sha256), "the hash leaked");
    assert!(!r.body.contains("secret"), "{}", r.body);
    let list = r.json();
    let listed = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed");
    assert_eq!(listed["uses_left"], 2, "one use was spent");
    assert_eq!(listed["description"], "shop berlin");
    assert!(is_rfc3339_utc(
        listed["expires_at"].as_str().expect("expires_at")
    ));
    assert_eq!(list.as_array().map(Vec::len), Some(4));
}

#[test]
fn nodes_are_listed_found_and_deleted() {
    let s = start();
    let admin = Some(s.admin.as_str());
    let r = s.get("/v1/nodes", admin);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!([]));

    let pi = NodeId([0xab; 16]);
    s.enroll("zurich-1", NodeId([2; 16]), &bare_caps());
    s.enroll("berlin-1", pi, &pi_caps());
    s.handles.registry.fleet().update_status(
        pi,
        &Status {
            cpu_percent: 12.5,
            memory_used_bytes: 1 << 30,
            disk_free_bytes: 19_000_000_000,
            uptime_secs: 3600,
        },
        unix_now(),
    );

    let list = s.get("/v1/nodes", admin).json();
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["berlin-1", "zurich-1"], "sorted by name");

    let n = &list[0];
    let keys: BTreeSet<&str> = n
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "id",
        "name",
        "arch",
        "os",
        "os_version",
        "kernel",
        "hostname",
        "cpus",
        "cpu_model",
        "memory_bytes",
        "disk_bytes",
        "disk_free_bytes",
        "accelerators",
        "board",
        "labels",
        "location",
        "location_fix",
        "status",
        "last_seen",
        "last_seen_unix",
        "enrolled_at",
        "load",
        "cordoned",
        "container_runtimes",
        "model_operators",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(n["id"], "ab".repeat(16));
    assert_eq!(n["arch"], "aarch64");
    assert_eq!(n["os"], "linux");
    assert_eq!(n["os_version"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(n["kernel"], "6.6.31+rpt-rpi-v8");
    assert_eq!(n["hostname"], "pi-berlin");
    assert_eq!(n["cpus"], 4);
    assert_eq!(n["cpu_model"], "Cortex-A72");
    assert_eq!(n["memory_bytes"], 4_080_218_931u64);
    assert_eq!(n["disk_bytes"], 31_000_000_000u64);
    assert_eq!(n["disk_free_bytes"], 19_000_000_000u64);
    assert_eq!(
        n["accelerators"],
        serde_json::json!([{"kind": "gpu", "name": "v3d", "path": "/dev/dri/renderD128"}])
    );
    assert_eq!(n["board"], "Raspberry Pi 4 Model B Rev 1.4");
    assert_eq!(n["labels"], serde_json::json!({"site": "berlin"}));
    assert_eq!(
        n["location"],
        serde_json::json!({"lat": 52.52, "lon": 13.405, "alt_m": 34.0})
    );
    assert_eq!(n["status"], "offline");
    assert!(is_rfc3339_utc(n["last_seen"].as_str().expect("last_seen")));
    assert!(n["last_seen_unix"].as_u64().expect("last_seen_unix") >= unix_now() - 60);
    assert!(is_rfc3339_utc(
        n["enrolled_at"].as_str().expect("enrolled_at")
    ));
    assert_eq!(
        n["load"],
        serde_json::json!({
            "cpu_percent": 12.5,
            "memory_used_bytes": 1u64 << 30,
            "disk_free_bytes": 19_000_000_000u64,
            "uptime_secs": 3600
        })
    );
    let bare = &list[1];
    assert_eq!(bare["board"], Value::Null);
    assert_eq!(bare["location"], Value::Null);
    assert_eq!(bare["load"], Value::Null);
    assert_eq!(bare["labels"], serde_json::json!({}));
    assert_eq!(bare["accelerators"], serde_json::json!([]));

    // Filters.
    assert_eq!(
        s.get("/v1/nodes?status=online", admin).json(),
        serde_json::json!([])
    );
    assert_eq!(
        s.get("/v1/nodes?status=offline", admin)
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let m = s
        .get("/v1/nodes?status=banana", admin)
        .error(400, "bad_request");
    assert!(m.starts_with("status:"), "{m}");
    let m = s
        .get("/v1/nodes?color=red", admin)
        .error(400, "bad_request");
    assert!(m.contains("color"), "{m}");

    // One node, by name and by id.
    let by_name = s.get("/v1/nodes/berlin-1", admin);
    assert_eq!(by_name.status, 200);
    assert_eq!(by_name.json(), list[0]);
    let by_id = s.get(&format!("/v1/nodes/{}", "ab".repeat(16)), admin);
    assert_eq!(by_id.json(), list[0]);
    let m = s.get("/v1/nodes/nowhere", admin).error(404, "not_found");
    assert!(m.contains("nowhere"), "{m}");

    // Delete.
    let r = s.send("DELETE", "/v1/nodes/berlin-1", admin, None, Payload::None);
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    s.get("/v1/nodes/berlin-1", admin).error(404, "not_found");
    s.send("DELETE", "/v1/nodes/berlin-1", admin, None, Payload::None)
        .error(404, "not_found");
    assert_eq!(
        s.get("/v1/nodes", admin).json().as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn hostile_bodies_get_a_clear_json_error() {
    let s = start();
    let admin = Some(s.admin.as_str());
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        // (what, body, status, code, the message contains)
        (
            "malformed JSON",
            "{\"uses\": ",
            400,
            "bad_request",
            "malformed JSON",
        ),
        (
            "not an object",
            "[1, 2]",
            400,
            "bad_request",
            "invalid type",
        ),
        (
            "trailing garbage",
            "{} {}",
            400,
            "bad_request",
            "malformed JSON",
        ),
        (
            "wrong type",
            r#"{"uses": "x"}"#,
            400,
            "bad_request",
            "uses: invalid type",
        ),
        (
            "unknown field",
            r#"{"usez": 1}"#,
            400,
            "bad_request",
            "usez",
        ),
        (
            "negative uses",
            r#"{"uses": -1}"#,
            400,
            "bad_request",
            "uses: invalid value",
        ),
        (
            "huge uses",
            r#"{"uses": 1000000000000}"#,
            400,
            "bad_request",
            "uses: invalid value",
        ),
        (
            "too many uses",
            r#"{"uses": 10001}"#,
            400,
            "bad_request",
            "uses: must be 1 to 10000",
        ),
        ("zero uses", r#"{"uses": 0}"#, 400, "bad_request", "uses:"),
        (
            "banana ttl",
            r#"{"ttl": "banana"}"#,
            400,
            "bad_request",
            "ttl: \"banana\"",
        ),
        (
            "ttl over 30 days",
            r#"{"ttl": "31d"}"#,
            400,
            "bad_request",
            "ttl:",
        ),
        (
            "ttl_secs over 30 days",
            r#"{"ttl_secs": 2592001}"#,
            400,
            "bad_request",
            "ttl_secs:",
        ),
        ("zero ttl", r#"{"ttl": "0s"}"#, 400, "bad_request", "ttl:"),
        (
            "both ttls",
            r#"{"ttl": "1h", "ttl_secs": 60}"#,
            400,
            "bad_request",
            "ttl:",
        ),
        (
            "ttl wrong type",
            r#"{"ttl": 5}"#,
            400,
            "bad_request",
            "ttl: invalid type",
        ),
        (
            "description wrong type",
            r#"{"description": ["a"]}"#,
            400,
            "bad_request",
            "description: invalid type",
        ),
        (
            "control characters",
            "{\"description\": \"a\\u0000b\"}",
            400,
            "bad_request",
            "description:",
        ),
    ];
    for (what, body, status, code, contains) in cases {
        let m = s.post_json("/v1/tokens", admin, body).error(*status, code);
        assert!(m.contains(contains), "{what}: {m:?} lacks {contains:?}");
    }
    let long = format!(r#"{{"description": "{}"}}"#, "x".repeat(10_000));
    let m = s
        .post_json("/v1/tokens", admin, &long)
        .error(400, "bad_request");
    assert!(m.starts_with("description:"), "{m}");
    // 30 days exactly is fine; so are 200 characters of description.
    let ok = format!(r#"{{"ttl": "30d", "description": "{}"}}"#, "é".repeat(200));
    assert_eq!(s.post_json("/v1/tokens", admin, &ok).status, 201);

    // Over 64 KiB, with a length and chunked.
    let huge = format!(r#"{{"description": "{}"}}"#, "x".repeat(70_000));
    s.post_json("/v1/tokens", admin, &huge)
        .error(413, "too_large");
    s.send(
        "POST",
        "/v1/tokens",
        admin,
        Some("application/json"),
        Payload::Chunked(huge.into_bytes()),
    )
    .error(413, "too_large");

    // Not JSON.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let m = s
            .send(
                "POST",
                "/v1/tokens",
                admin,
                Some(ct),
                Payload::Bytes(b"uses=1".to_vec()),
            )
            .error(415, "unsupported_media_type");
        assert!(m.contains("application/json"), "{m}");
    }
    s.send(
        "POST",
        "/v1/tokens",
        admin,
        None,
        Payload::Bytes(br#"{"uses": 1}"#.to_vec()),
    )
    .error(415, "unsupported_media_type");
    // A JSON content type with parameters is JSON.
    let r = s.send(
        "POST",
        "/v1/tokens",
        admin,
        Some("application/json; charset=utf-8"),
        Payload::Bytes(br#"{"uses": 2}"#.to_vec()),
    );
    assert_eq!(r.status, 201, "{r:?}");

    // None of that made a token, except the two that were fine.
    assert_eq!(s.handles.registry.fleet().tokens().count(), 2);

    // The API token route gets the same treatment.
    let m = s
        .post_json(
            "/v1/api-tokens",
            admin,
            r#"{"role": "root", "subject": "x"}"#,
        )
        .error(400, "bad_request");
    assert!(m.starts_with("role:"), "{m}");
    let m = s
        .post_json("/v1/api-tokens", admin, r#"{"role": "viewer"}"#)
        .error(400, "bad_request");
    assert!(m.contains("subject"), "{m}");
    let m = s
        .post_json(
            "/v1/api-tokens",
            admin,
            r#"{"role": "viewer", "subject": ""}"#,
        )
        .error(400, "bad_request");
    assert!(m.starts_with("subject:"), "{m}");
    let m = s
        .post_json(
            "/v1/api-tokens",
            admin,
            r#"{"role": "viewer", "subject": "ci", "ttl": "400d"}"#,
        )
        .error(400, "bad_request");
    assert!(m.starts_with("ttl:"), "{m}");
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let s = start();
    let admin = Some(s.admin.as_str());
    let m = s.get("/v2/nodes", admin).error(404, "not_found");
    assert!(m.contains("/v2/nodes"), "{m}");
    s.get("/", None).error(404, "not_found");
    let r = s.send("PUT", "/v1/nodes", admin, None, Payload::None);
    r.error(405, "method_not_allowed");
    let allow = r
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allow.contains("GET"), "{r:?}");
    s.send("POST", "/healthz", None, None, Payload::None)
        .error(405, "method_not_allowed");

    let metrics = s.get("/metrics", None).body;
    assert!(
        metrics.contains(r#"edge_api_requests_total{code="404"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"edge_api_requests_total{code="405"} 2"#),
        "{metrics}"
    );
}

#[test]
fn admins_hand_out_lesser_api_tokens() {
    let s = start();
    let r = s.post_json(
        "/v1/api-tokens",
        Some(&s.admin),
        r#"{"role": "viewer", "ttl": "24h", "subject": "ci"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["subject"], "ci");
    assert!(is_rfc3339_utc(
        v["expires_at"].as_str().expect("expires_at")
    ));
    let token = v["token"].as_str().expect("token");
    let claims = s.auth.verify(token).expect("a token we signed");
    assert_eq!((claims.sub.as_str(), claims.role), ("ci", Role::Viewer));
    assert_eq!(claims.exp - claims.iat, 86_400);
    assert_eq!(s.get("/v1/nodes", Some(token)).status, 200);
    s.post_json("/v1/tokens", Some(token), "{}")
        .error(403, "forbidden");
}

#[test]
fn openapi_documents_every_route() {
    let s = start();
    s.get("/v1/openapi.json", None).error(401, "unauthorized");
    let r = s.get("/v1/openapi.json", Some(&s.viewer));
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("application/json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if method != "parameters" {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routes);

    // And ROUTES is what the router serves: each one exists (no 404 or 405).
    for (method, path) in api::ROUTES {
        let concrete = path.replace("{name_or_id}", "nowhere");
        let r = s.send(method, &concrete, None, None, Payload::None);
        let expected = if path.starts_with("/v1/") { 401 } else { 200 };
        assert_eq!(r.status, expected, "{method} {path}: {r:?}");
    }
    // Every $ref resolves.
    let text = r.body;
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"$ref\": \"#/") {
        let tail = &rest[i + 10..];
        let end = tail.find('"').expect("closing quote");
        let pointer = &tail[..end];
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {pointer}");
        rest = &tail[end..];
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "edge-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_admin_token_file_and_the_secret_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("api");
    // A leftover temp file from a crash, world-readable, must not leak its mode.
    let tmp = dir.path().join("admin.token.tmp");
    std::fs::write(&tmp, "half").expect("leftover");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let state = dir.path().join("state");
    let (token, join_id) = {
        let s = start_with(Arc::new(SledStore::open(&state).expect("sled")));
        let token = s
            .auth
            .issue("admin", Role::Admin, auth::ADMIN_TOKEN_TTL)
            .expect("issue")
            .token;
        let path = auth::write_admin_token(dir.path(), &token).expect("write the token");
        assert_eq!(path, dir.path().join(auth::ADMIN_TOKEN_FILE));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.exists(), "the temp file was renamed into place");
        let written = std::fs::read_to_string(&path).expect("read");
        assert_eq!(written.trim(), token);
        let r = s.post_json("/v1/tokens", Some(written.trim()), r#"{"uses": 2}"#);
        assert_eq!(r.status, 201, "{r:?}");
        (token, r.json()["id"].as_str().expect("id").to_owned())
    };
    // Everything above is dropped: the store is closed. Start again on the same directory.
    let s = start_with(Arc::new(SledStore::open(&state).expect("sled again")));
    let r = s.get("/v1/tokens", Some(&token));
    assert_eq!(r.status, 200, "the old admin token still works: {r:?}");
    assert_eq!(r.json()[0]["id"], join_id.as_str());
    // A second write replaces the token whole.
    let fresh = s
        .auth
        .issue("admin", Role::Admin, auth::ADMIN_TOKEN_TTL)
        .expect("issue")
        .token;
    let path = auth::write_admin_token(dir.path(), &fresh).expect("rewrite");
    assert_eq!(std::fs::read_to_string(path).expect("read").trim(), fresh);
}

#[test]
fn workload_routes_refuse_bad_input_with_the_field_and_lose_nothing() {
    let s = start();
    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let valid = format!(
        r#"{{"name": "web", "version": "1", "artifact": "{digest}",
            "resources": {{"cpu_millis": 100, "memory_bytes": 16777216}}}}"#
    );

    // Roles: a viewer reads, only an operator deploys, drains or deletes.
    s.post_json("/v1/workloads", Some(&s.viewer), &valid)
        .error(403, "forbidden");
    s.send(
        "DELETE",
        "/v1/workloads/web",
        Some(&s.viewer),
        None,
        Payload::None,
    )
    .error(403, "forbidden");
    s.post_json("/v1/nodes/x/drain", Some(&s.viewer), "{}")
        .error(403, "forbidden");
    s.post_json("/v1/workloads", None, &valid)
        .error(401, "unauthorized");

    // Bodies: each refusal names what is wrong.
    let bad = |body: &str| s.post_json("/v1/workloads", Some(&operator), body);
    assert!(bad("{").error(400, "bad_request").contains("line 1"));
    assert!(bad("[]").error(400, "bad_request").len() > 3);
    let msg = bad(&valid.replace("\"web\"", "\"Web Server\"")).error(400, "bad_request");
    assert!(msg.starts_with("name"), "{msg}");
    let msg = bad(&valid.replace("16777216", "-1")).error(400, "bad_request");
    assert!(msg.starts_with("resources.memory_bytes"), "{msg}");
    let msg = bad(&valid.replace("\"version\"", "\"versoin\"")).error(400, "bad_request");
    assert!(msg.contains("versoin"), "{msg}");
    let msg = bad(&valid.replace(
        "\"name\": \"web\",",
        "\"name\": \"web\", \"command\": \"run\",",
    ))
    .error(400, "bad_request");
    assert!(msg.starts_with("command"), "{msg}");
    let msg = bad(&valid.replace(
        "\"version\": \"1\",",
        "\"version\": \"1\", \"args\": [\"a\\u0000b\"],",
    ))
    .error(400, "bad_request");
    assert!(msg.starts_with("args[0]"), "{msg}");
    // Oversized and mistyped bodies.
    let huge = format!(
        r#"{{"name": "web", "args": ["{}"]}}"#,
        "x".repeat(api::MAX_BODY_BYTES)
    );
    bad(&huge).error(413, "too_large");
    s.send(
        "POST",
        "/v1/workloads",
        Some(&operator),
        Some("text/plain"),
        Payload::Bytes(valid.clone().into_bytes()),
    )
    .error(415, "unsupported_media_type");
    s.send(
        "POST",
        "/v1/workloads",
        Some(&operator),
        None,
        Payload::Bytes(valid.clone().into_bytes()),
    )
    .error(415, "unsupported_media_type");

    // Nothing was deployed by any of that.
    let list = s.get("/v1/workloads", Some(&s.viewer));
    assert_eq!(list.status, 200);
    assert_eq!(list.json(), serde_json::json!([]));
    assert!(s.handles.deployments.lock().is_empty());

    // Unknown names and nodes, and hostile paths and queries.
    s.get("/v1/workloads/web", Some(&s.viewer))
        .error(404, "not_found");
    s.get("/v1/workloads/..%2F..%2Fetc", Some(&s.viewer))
        .error(404, "not_found");
    s.send(
        "DELETE",
        "/v1/workloads/web",
        Some(&operator),
        None,
        Payload::None,
    )
    .error(404, "not_found");
    s.get("/v1/workloads/web/logs", Some(&s.viewer))
        .error(404, "not_found");
    s.get("/v1/workloads/web/logs?tail=99999999", Some(&s.viewer))
        .error(400, "bad_request");
    s.get("/v1/workloads/web/logs?follow=maybe", Some(&s.viewer))
        .error(400, "bad_request");
    s.get("/v1/workloads/web/logs?colour=red", Some(&s.viewer))
        .error(400, "bad_request");
    s.post_json("/v1/nodes/nobody/cordon", Some(&operator), "{}")
        .error(404, "not_found");
}

#[test]
fn a_node_is_cordoned_and_uncordoned_and_it_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = start_with(Arc::new(SledStore::open(dir.path()).expect("store")));
    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    s.enroll("berlin-1", NodeId([1; 16]), &pi_caps());
    let r = s.post_json("/v1/nodes/berlin-1/cordon", Some(&operator), "{}");
    assert_eq!(
        (r.status, &r.json()["cordoned"]),
        (200, &serde_json::json!(true))
    );
    assert_eq!(
        s.get("/v1/nodes/berlin-1", Some(&s.viewer)).json()["cordoned"],
        true
    );
    drop(s);
    let s = start_with(Arc::new(SledStore::open(dir.path()).expect("reopen")));
    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    assert_eq!(
        s.get("/v1/nodes/berlin-1", Some(&s.viewer)).json()["cordoned"],
        true,
        "a cordon is stored"
    );
    let r = s.post_json("/v1/nodes/berlin-1/uncordon", Some(&operator), "{}");
    assert_eq!(
        (r.status, &r.json()["cordoned"]),
        (200, &serde_json::json!(false))
    );
}

/// Four requests the OpenAPI document used to allow and the server refused (or, for
/// `ttl_secs: null`, took): now both refuse them, the server with 400 naming the field.
#[test]
fn the_server_and_its_document_refuse_the_same_requests() {
    let s = start();
    let doc: Value = serde_json::from_str(api::OPENAPI_JSON).expect("the document is JSON");
    let schema = |name: &str| &doc["components"]["schemas"][name];

    // `ttl_secs: null`: not nullable in the document, and refused rather than read as absent.
    for (path, body) in [
        ("/v1/tokens", r#"{"ttl_secs": null}"#),
        (
            "/v1/api-tokens",
            r#"{"role": "viewer", "subject": "ci", "ttl_secs": null}"#,
        ),
        ("/v1/tokens", r#"{"ttl": null}"#),
        ("/v1/tokens", r#"{"uses": null}"#),
    ] {
        let m = s
            .post_json(path, Some(&s.admin), body)
            .error(400, "bad_request");
        assert!(m.contains("null"), "{path} {body}: {m}");
    }
    for name in ["CreateToken", "CreateApiToken"] {
        let ttl_secs = &schema(name)["properties"]["ttl_secs"];
        assert_eq!(ttl_secs["type"], "integer");
        assert!(ttl_secs.get("nullable").is_none(), "{name}: {ttl_secs}");
    }

    // `ttl: "0"`: the pattern wants at least one second.
    let m = s
        .post_json("/v1/tokens", Some(&s.admin), r#"{"ttl": "0"}"#)
        .error(400, "bad_request");
    assert_eq!(m, "ttl: must be positive");
    let pattern = schema("CreateToken")["properties"]["ttl"]["pattern"]
        .as_str()
        .expect("a pattern");
    let pattern = regex::Regex::new(pattern).expect("compiles");
    assert!(
        !pattern.is_match("0") && pattern.is_match("1h"),
        "{pattern}"
    );

    // `ttl` with `ttl_secs`: the document says not both.
    let m = s
        .post_json(
            "/v1/tokens",
            Some(&s.admin),
            r#"{"ttl": "1h", "ttl_secs": 3600}"#,
        )
        .error(400, "bad_request");
    assert!(m.contains("not both"), "{m}");
    for name in ["CreateToken", "CreateApiToken"] {
        assert_eq!(
            schema(name)["not"],
            serde_json::json!({"required": ["ttl", "ttl_secs"]}),
            "{name}"
        );
    }

    // An empty workload version: at least one character.
    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    let spec = format!(
        r#"{{"name": "web", "version": "", "artifact": "sha256:{}",
            "resources": {{"cpu_millis": 100, "memory_bytes": 16777216}}}}"#,
        "ab".repeat(32)
    );
    let m = s
        .post_json("/v1/workloads", Some(&operator), &spec)
        .error(400, "bad_request");
    assert_eq!(m, "version: must not be empty");
    assert_eq!(
        schema("WorkloadSpec")["properties"]["version"]["minLength"],
        1
    );

    // `follow_near` without `near`: nothing to follow, and the document says so.
    let spec = format!(
        r#"{{"name": "web", "version": "1", "artifact": "sha256:{}",
            "resources": {{"cpu_millis": 100, "memory_bytes": 16777216}},
            "requirements": {{"follow_near": true}}}}"#,
        "ab".repeat(32)
    );
    let m = s
        .post_json("/v1/workloads", Some(&operator), &spec)
        .error(400, "bad_request");
    assert!(
        m.starts_with("requirements.follow_near: only with requirements.near"),
        "{m}"
    );
    let requirements = &schema("WorkloadSpec")["properties"]["requirements"];
    assert_eq!(
        requirements["not"]["required"],
        serde_json::json!(["follow_near"])
    );
    assert_eq!(
        requirements["not"]["not"]["required"],
        serde_json::json!(["near"])
    );
}

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// A workload's routes and scale to zero: deployed, shown in every view as the OpenAPI
/// document describes them, and a bad value refused with 400 naming its field while the
/// deployed workload stays as it was.
#[test]
fn workloads_show_their_routes_and_bad_routes_are_refused_by_field() {
    let artifacts = tempfile::tempdir().expect("tmp");
    let store = ArtifactStore::open(artifacts.path()).expect("artifact store");
    let s = server(Api::start(
        Arc::new(MemStore::default()),
        Some(Arc::new(store)),
        api::LIMITS,
    ));
    let operator = s
        .auth
        .issue("ops", Role::Operator, Duration::from_secs(60))
        .expect("issue")
        .token;
    let pushed = s.send(
        "POST",
        "/v1/artifacts",
        Some(&operator),
        Some("application/octet-stream"),
        Payload::Bytes(b"#!/bin/sh\nexec sleep 1000\n".to_vec()),
    );
    assert_eq!(pushed.status, 201, "{pushed:?}");
    let digest = pushed.json()["digest"].as_str().expect("digest").to_owned();
    let spec = |extra: Value| {
        let mut v = serde_json::json!({
            "name": "shop", "version": "1", "artifact": digest,
            "resources": {"cpu_millis": 100, "memory_bytes": 16777216}
        });
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v.to_string()
    };
    let good = spec(serde_json::json!({
        "expose": [
            {"port": 8080, "host": "Shop.Example.COM", "path_prefix": "/api", "weight": 10,
             "balance": "round-robin"},
            {"port": 8081, "path_prefix": "/"}
        ],
        "scale_to_zero": {"idle_secs": 300}
    }));
    let deployed = s.post_json("/v1/workloads", Some(&operator), &good);
    assert_eq!(deployed.status, 201, "{deployed:?}");
    let want_expose = serde_json::json!([
        {"port": 8080, "host": "shop.example.com", "path_prefix": "/api", "weight": 10,
         "timeout_secs": 30, "retries": 2, "cache": true, "stale_if_offline_secs": 86400,
         "balance": "round-robin"},
        {"port": 8081, "host": null, "path_prefix": "/", "weight": 100,
         "timeout_secs": 30, "retries": 2, "cache": true, "stale_if_offline_secs": 86400,
         "balance": "peak-ewma"}
    ]);
    let shown = [
        deployed.json()["spec"].clone(),
        s.get("/v1/workloads/shop", Some(&s.viewer)).json()["spec"].clone(),
        s.get("/v1/workloads", Some(&s.viewer)).json()[0]["spec"].clone(),
    ];
    for spec in &shown {
        assert_eq!(spec["expose"], want_expose);
        assert_eq!(spec["scale_to_zero"], serde_json::json!({"idle_secs": 300}));
        assert_eq!(spec["ports"], serde_json::json!([8080, 8081]));
    }

    // The document names exactly the keys the views show, and every shown value is within
    // its bounds and patterns.
    let doc: Value = serde_json::from_str(api::OPENAPI_JSON).expect("the document is JSON");
    let schema = &doc["components"]["schemas"]["WorkloadSpec"];
    assert_eq!(keys(&schema["properties"]), keys(&shown[0]));
    let route = &schema["properties"]["expose"]["items"];
    assert_eq!(route["additionalProperties"], false);
    assert_eq!(schema["properties"]["expose"]["maxItems"], 16);
    for shown_route in shown[0]["expose"].as_array().expect("routes") {
        assert_eq!(keys(&route["properties"]), keys(shown_route));
        for (key, value) in shown_route.as_object().expect("a route") {
            let rule = &route["properties"][key];
            if let Some(n) = value.as_i64() {
                assert!(
                    rule["minimum"].as_i64() <= Some(n) && Some(n) <= rule["maximum"].as_i64(),
                    "{key}: {n} {rule}"
                );
            }
            if let (Some(text), Some(pattern)) = (value.as_str(), rule["pattern"].as_str()) {
                let re = regex::Regex::new(pattern).expect("the pattern compiles");
                assert!(re.is_match(text), "{key}: {text:?} against {pattern}");
            }
        }
    }
    let idle = &schema["properties"]["scale_to_zero"];
    assert_eq!(keys(&idle["properties"]), keys(&shown[0]["scale_to_zero"]));
    assert_eq!(
        (
            &idle["properties"]["idle_secs"]["minimum"],
            &idle["properties"]["idle_secs"]["maximum"]
        ),
        (&serde_json::json!(1), &serde_json::json!(86400))
    );
    // The patterns never refuse what the server takes.
    let host = regex::Regex::new(
        route["properties"]["host"]["pattern"]
            .as_str()
            .expect("a pattern"),
    )
    .expect("compiles");
    for h in [
        "shop.example",
        "Shop.Example.",
        "10.0.0.1",
        "2001:db8::1",
        "[::1]",
        "::ffff:192.0.2.1",
        "a-1.b",
    ] {
        assert!(host.is_match(h), "{h}");
        let r = s.post_json(
            "/v1/workloads",
            Some(&operator),
            &spec(serde_json::json!({"name": "probe", "expose": [{"port": 1, "host": h}]})),
        );
        assert!(r.status == 201 || r.status == 200, "{h}: {r:?}");
    }
    let path = regex::Regex::new(
        route["properties"]["path_prefix"]["pattern"]
            .as_str()
            .expect("a pattern"),
    )
    .expect("compiles");
    for p in [
        "/",
        "/api/v1/",
        "/a%20b",
        "/~u/x-y_z",
        "/a..b/.c",
        "/!$&'()*+,;=:@",
    ] {
        assert!(path.is_match(p), "{p}");
        let r = s.post_json(
            "/v1/workloads",
            Some(&operator),
            &spec(serde_json::json!({"name": "probe", "expose": [{"port": 1, "path_prefix": p}]})),
        );
        assert!(r.status == 201 || r.status == 200, "{p}: {r:?}");
    }
    for p in ["api", "/a b", "/a?b", "/a#b", "/caf\u{e9}", "/a%zz"] {
        assert!(!path.is_match(p), "{p}");
    }

    // Bad routes: 400 naming the field, and the workload as it was.
    let route_of = |r: Value| spec(serde_json::json!({"expose": [r]}));
    let cases = [
        (
            route_of(serde_json::json!({"port": 0, "path_prefix": "/"})),
            "expose[0].port",
        ),
        (
            route_of(serde_json::json!({"port": 1, "host": "bad_host"})),
            "expose[0].host",
        ),
        (
            route_of(serde_json::json!({"port": 1, "host": "x".repeat(10_000)})),
            "expose[0].host",
        ),
        (
            route_of(serde_json::json!({"port": 1, "path_prefix": "/a/../b"})),
            "expose[0].path_prefix",
        ),
        (route_of(serde_json::json!({"port": 1})), "expose[0]"),
        (
            route_of(serde_json::json!({"port": 1, "path_prefix": "/", "weight": 1001})),
            "expose[0].weight",
        ),
        (
            route_of(serde_json::json!({"port": 1, "path_prefix": "/", "balance": "random"})),
            "expose[0].balance",
        ),
        (
            route_of(serde_json::json!({"port": 1, "path_prefix": "/", "colour": 1})),
            "expose[0].colour",
        ),
        (
            spec(serde_json::json!({"expose": [
                {"port": 1, "path_prefix": "/"}, {"port": 2, "path_prefix": "/a"},
                {"port": 3, "path_prefix": "/a/b"}, {"port": 4, "path_prefix": "/a"}
            ]})),
            "expose[3]",
        ),
        (
            spec(
                serde_json::json!({"expose": (0..17).map(|i| serde_json::json!({"port": i + 1, "path_prefix": format!("/{i}")})).collect::<Vec<_>>()}),
            ),
            "expose",
        ),
        (spec(serde_json::json!({"expose": null})), "expose"),
        (
            spec(serde_json::json!({"scale_to_zero": {"idle_secs": 60}})),
            "scale_to_zero",
        ),
        (
            spec(
                serde_json::json!({"expose": [{"port": 1, "path_prefix": "/"}], "scale_to_zero": {"idle_secs": 0}}),
            ),
            "scale_to_zero.idle_secs",
        ),
    ];
    for (body, field) in cases {
        let m = s
            .post_json("/v1/workloads", Some(&operator), &body)
            .error(400, "bad_request");
        assert!(m.starts_with(&format!("{field}: ")), "{field}: {m}");
        assert!(m.len() < 400, "{m}");
    }
    let after = s.get("/v1/workloads/shop", Some(&s.viewer)).json();
    assert_eq!(after["generation"], deployed.json()["generation"]);
    assert_eq!(after["spec"], shown[0], "nothing was lost");
}

/// A moving node's positions reach its record and its track: the node shows the newest with
/// its source, fix quality and age, the track lists what was reported oldest first (a late
/// batch from its time offline in its place), and bad track queries are refused.
#[test]
fn a_node_s_track_and_current_fix_are_shown() {
    use edge_proto::{
        EventBatch, EventKind, FixQuality, List, LocationReport, LocationSource, NodeEvent,
    };
    let s = start();
    let admin = Some(s.admin.as_str());
    let van = NodeId([0x5a; 16]);
    s.enroll("van-1", van, &bare_caps());
    let now_ms = unix_now() * 1000;
    let point = |seq: u64, ago_s: u64, lat: f64, quality: FixQuality| NodeEvent {
        seq,
        at_ms: now_ms - ago_s * 1000,
        kind: EventKind::Location(LocationReport {
            location: Location {
                lat,
                lon: 13.4,
                alt_m: None,
            },
            source: LocationSource::Gpsd,
            quality,
            accuracy_m: Some(4.0),
            fix_ms: Some(now_ms - ago_s * 1000),
        }),
    };
    let store = |events: Vec<NodeEvent>| {
        let batch = EventBatch {
            events: List::from_iter(events),
            gaps: List::new(),
        };
        let records = orchestrator_core::events::records(van, &batch, now_ms);
        s.handles.registry.put_events(&records).expect("stored");
        for r in &records {
            if let orchestrator_core::events::What::Location(p) = &r.what {
                s.handles.registry.fleet().update_position(van, p, r.at_ms);
            }
        }
    };
    store(vec![
        point(5, 20, 52.50, FixQuality::ThreeD),
        point(6, 10, 52.51, FixQuality::ThreeD),
    ]);
    // Synced late: older than what is held, and one point off the globe.
    store(vec![
        point(2, 60, 52.40, FixQuality::TwoD),
        point(3, 50, 95.0, FixQuality::TwoD),
    ]);

    let node = s.get("/v1/nodes/van-1", admin).json();
    assert_eq!(node["location"]["lat"], 52.51, "{node}");
    let fix = &node["location_fix"];
    assert_eq!(
        (fix["source"].as_str(), fix["quality"].as_str()),
        (Some("gpsd"), Some("3d"))
    );
    assert_eq!(fix["accuracy_m"], 4.0);
    assert!(
        fix["age_secs"]
            .as_u64()
            .is_some_and(|a| (10..=20).contains(&a)),
        "{fix}"
    );
    assert!(is_rfc3339_utc(fix["fix_time"].as_str().expect("a time")));

    let track = s.get("/v1/nodes/van-1/track", admin).json();
    let lats: Vec<f64> = track["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["lat"].as_f64())
        .collect();
    assert_eq!(
        lats,
        [52.40, 52.50, 52.51],
        "oldest first, the bad point not kept"
    );
    assert_eq!(track["points"][0]["quality"], "2d");
    let newest = s.get("/v1/nodes/van-1/track?limit=1", admin).json();
    assert_eq!(newest["points"][0]["lat"], 52.51);
    let since = format!("/v1/nodes/van-1/track?since={}", now_ms - 30_000);
    assert_eq!(
        s.get(&since, admin).json()["points"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A lost fix: the last position stays in view, unknown to placement.
    store(vec![point(7, 1, 52.52, FixQuality::None)]);
    let node = s.get("/v1/nodes/van-1", admin).json();
    assert_eq!(node["location"]["lat"], 52.52);
    assert_eq!(node["location_fix"]["quality"], "none");
    assert_eq!(
        s.handles
            .registry
            .fleet()
            .find("van-1")
            .map(|n| n.info.location),
        Some(None)
    );

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "since=-1",
        "since=99999999999999999999",
        "colour=red",
    ] {
        let r = s.get(&format!("/v1/nodes/van-1/track?{bad}"), admin);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    assert_eq!(s.get("/v1/nodes/nowhere/track", admin).status, 404);
    assert_eq!(s.get("/v1/nodes/van-1/track", None).status, 401);
}
