//! `POST /v1/cache/purge` over real HTTP: what it refuses (by field, status and code) and
//! which nodes a valid purge reaches. The nodes here are enrolled straight into the registry
//! and never connect, so each is reported offline; purging real caches over QUIC is
//! `tests/tests/cache_purge.rs`.

mod common;

use common::Api;
use edge_proto::{Capabilities, Label, NodeId, text};
use orchestrator::api;
use orchestrator::auth::Role;
use orchestrator_core::store::MemStore;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::SystemTime;
use ureq::http::Request;

struct Server {
    api: Api,
    admin: String,
    agent: ureq::Agent,
}

impl Server {
    fn start() -> Self {
        let api = Api::start(Arc::new(MemStore::default()), None, api::LIMITS);
        Self {
            admin: api.token("admin", Role::Admin),
            api,
            agent: common::agent(),
        }
    }

    /// POSTs `body` with `token`; the status and the JSON answer.
    fn purge_raw(&self, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("{}/v1/cache/purge", self.api.base()))
            .header("content-type", "application/json");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let mut response = self
            .agent
            .run(request.body(body).expect("a request"))
            .expect("the server answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        (status, json)
    }

    fn purge(&self, body: &str) -> (u16, Value) {
        self.purge_raw(Some(&self.admin), body.as_bytes().to_vec())
    }

    /// Asserts a 400 and returns its message.
    fn refused(&self, body: &str) -> String {
        let (status, json) = self.purge(body);
        assert_eq!(
            (status, &json["error"]),
            (400, &json!("bad_request")),
            "{body}: {json}"
        );
        json["message"].as_str().expect("a message").to_owned()
    }

    fn enroll(&self, name: &str, id: NodeId, site: Option<&str>) {
        let registry = &self.api.handles.registry;
        let (token, _) = registry
            .create_token(600, 1, "test".into())
            .expect("join token");
        let mut caps = caps();
        if let Some(site) = site {
            caps.labels = [Label {
                key: text("site"),
                value: text(site),
            }]
            .into_iter()
            .collect();
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        registry
            .fleet()
            .enroll(&token, name, &caps, id, now, |_| Ok(()))
            .expect("enroll");
    }
}

fn caps() -> Capabilities {
    Capabilities {
        arch: text("x86_64"),
        os: text("linux"),
        os_version: text("Debian 12"),
        kernel: text("6.1.0"),
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

#[test]
fn bad_purges_are_refused_naming_the_field() {
    let s = Server::start();

    // No token, a bad one, too low a role.
    let body = br#"{"host": "shop.example", "path": "/menu.json"}"#.to_vec();
    let (status, json) = s.purge_raw(None, body.clone());
    assert_eq!(
        (status, &json["error"]),
        (401, &json!("unauthorized")),
        "{json}"
    );
    let (status, _) = s.purge_raw(Some("not-a-token"), body.clone());
    assert_eq!(status, 401);
    let viewer = s.api.token("dash", Role::Viewer);
    let (status, json) = s.purge_raw(Some(&viewer), body);
    assert_eq!(
        (status, &json["error"]),
        (403, &json!("forbidden")),
        "{json}"
    );

    // Not JSON, or not this shape.
    assert!(s.refused(r#"{"host": "#).starts_with("malformed JSON"));
    assert!(s.refused("[1]").contains("invalid type"));
    assert!(
        s.refused(r#"{"path": "/", "host": "a.b", "extra": 1}"#)
            .contains("extra")
    );
    assert!(
        s.refused(r#"{"path": null, "host": "a.b"}"#)
            .starts_with("path: ")
    );

    // Exactly one of path and path_prefix; a path needs its host.
    let m = s.refused(r#"{"host": "a.b", "path": "/x", "path_prefix": "/"}"#);
    assert!(
        m.starts_with("path_prefix: ") && m.contains("not both"),
        "{m}"
    );
    let m = s.refused(r#"{"host": "a.b"}"#);
    assert!(m.starts_with("path: missing"), "{m}");
    let m = s.refused(r#"{"path": "/menu.json"}"#);
    assert!(m.starts_with("host: missing"), "{m}");

    // Hosts and paths by the routes' rules.
    let m = s.refused(r#"{"host": "shop example", "path": "/x"}"#);
    assert!(m.starts_with("host: ") && m.contains("shop example"), "{m}");
    assert!(
        s.refused(r#"{"host": "-a.b", "path_prefix": "/"}"#)
            .starts_with("host: ")
    );
    assert!(
        s.refused(r#"{"host": "a.b", "path": "menu"}"#)
            .starts_with("path: ")
    );
    assert!(
        s.refused(r#"{"path_prefix": "img/"}"#)
            .starts_with("path_prefix: ")
    );
    assert!(
        s.refused(r#"{"path_prefix": "/a/../b"}"#)
            .starts_with("path_prefix: ")
    );

    // Where it goes.
    let m = s.refused(r#"{"path_prefix": "/", "node": "n1", "selector": {"site": "x"}}"#);
    assert!(m.starts_with("selector: "), "{m}");
    assert!(
        s.refused(r#"{"path_prefix": "/", "selector": {}}"#)
            .starts_with("selector: ")
    );

    // Over the body limit.
    let huge = format!(
        r#"{{"host": "a.b", "path": "/{}"}}"#,
        "x".repeat(api::MAX_BODY_BYTES)
    );
    let (status, json) = s.purge(&huge);
    assert_eq!(
        (status, &json["error"]),
        (413, &json!("too_large")),
        "{json}"
    );

    // An unknown node.
    let (status, json) = s.purge(r#"{"path_prefix": "/", "node": "nowhere"}"#);
    assert_eq!(
        (status, &json["error"]),
        (404, &json!("not_found")),
        "{json}"
    );
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("nowhere")),
        "{json}"
    );
}

#[test]
fn a_purge_reaches_the_node_the_selector_or_the_fleet_and_reports_each() {
    let s = Server::start();
    let (status, json) = s.purge(r#"{"path_prefix": "/"}"#);
    assert_eq!((status, json), (200, json!({"nodes": [], "purged": 0})));

    s.enroll("berlin-1", NodeId([1; 16]), Some("berlin"));
    s.enroll("paris-1", NodeId([2; 16]), Some("paris"));
    s.enroll("gw", NodeId([3; 16]), None);
    let offline = |name: &str| json!({"node": name, "error": "offline"});

    let (status, json) = s.purge(r#"{"host": "shop.example", "path": "/menu.json"}"#);
    assert_eq!(
        (status, json),
        (
            200,
            json!({"nodes": [offline("berlin-1"), offline("gw"), offline("paris-1")], "purged": 0})
        )
    );
    let (status, json) = s.purge(r#"{"path_prefix": "/img/", "selector": {"site": "berlin"}}"#);
    assert_eq!(
        (status, json),
        (200, json!({"nodes": [offline("berlin-1")], "purged": 0}))
    );
    let (status, json) = s.purge(&format!(
        r#"{{"path_prefix": "/img/", "node": "{}"}}"#,
        NodeId([2; 16])
    ));
    assert_eq!(
        (status, json),
        (200, json!({"nodes": [offline("paris-1")], "purged": 0}))
    );
    let (status, json) =
        s.purge(r#"{"path_prefix": "/", "selector": {"site": "berlin", "tier": "shop"}}"#);
    assert_eq!((status, json), (200, json!({"nodes": [], "purged": 0})));
}
