//! Purging the nodes' proxy caches through the built binaries: a response cached at a node
//! is purged by `edgectl cache purge` and fetched from the origin again; a prefix purge
//! reports as JSON; a fleet purge reports a node without a proxy, and then an offline node,
//! as errors of their own and still purges the node that has a cache.

use edge_tests::cli::{Edgectl, node_config, run_node, run_proxy_node};
use edge_tests::{PATIENCE, eventually, line_with, start_orchestrator};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// One answer through the proxy: status, head (lower case) and body.
fn get(proxy: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    edge_tests::http_get(proxy, host, path).expect("the proxy answers")
}

/// An origin that answers every GET with its path, fresh for a minute, and counts the
/// requests for each path.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Origin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
        let addr = listener.local_addr().expect("origin address");
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let counts = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split(' ').nth(1).unwrap_or("?").to_owned();
                *counts
                    .lock()
                    .expect("counts")
                    .entry(path.clone())
                    .or_insert(0) += 1;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{path}",
                    path.len()
                );
            }
        });
        Self { addr, seen }
    }

    /// How many requests for `path` reached the origin.
    fn seen(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("counts")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Fetches `path` twice: stored the first time, a hit the second.
fn cache(proxy: SocketAddr, origin: &Origin, path: &str) {
    let before = origin.seen(path);
    let (status, head, body) = get(proxy, "shop.example", path);
    assert_eq!((status, body.as_str()), (200, path), "{head}");
    assert!(head.contains("; stored"), "{head}");
    let (_, head, _) = get(proxy, "shop.example", path);
    assert!(head.contains("cache-status: edge-1; hit;"), "{head}");
    assert_eq!(
        origin.seen(path),
        before + 1,
        "the hit never reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_response_comes_from_the_origin_again_and_every_node_reports() {
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (_orch, quic, api) = start_orchestrator(&orch_dir);
    let ctl = Edgectl::admin(&api, &orch_dir);
    let origin = Origin::start();

    let join = ctl.json(&["token", "create", "--uses", "1"]);
    let config = node_config(
        dir.path(),
        "edge-1",
        &format!(
            "labels = {{ site = \"berlin\" }}\n[proxy]\nlisten = \"127.0.0.1:0\"\n\
             [[proxy.upstream]]\norigin = \"http://{}\"\nhost = \"shop.example\"\n",
            origin.addr
        ),
        &quic,
        &join,
    );
    let (_node, lines, proxy) = run_proxy_node(&config);
    // A second node, without a proxy.
    let join = ctl.json(&["token", "create", "--uses", "1"]);
    let bare = run_node(&node_config(dir.path(), "edge-2", "", &quic, &join));
    for name in ["edge-1", "edge-2"] {
        assert!(
            eventually(PATIENCE, || ctl.status_of(name).as_deref()
                == Some("online"))
            .await
            .is_some(),
            "{name} came online"
        );
    }

    // One key, on one node: purged, so the next request goes to the origin again.
    cache(proxy, &origin, "/menu.json");
    let out = ctl.run(&[
        "cache",
        "purge",
        "--host",
        "shop.example",
        "--path",
        "/menu.json",
        "--node",
        "edge-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "edge-1  purged 1 response\n"
    );
    let logged = line_with(&lines, "proxy cache purged");
    assert!(
        logged.contains("purged=1") && logged.contains("kind=\"key\""),
        "{logged}"
    );
    let (status, head, _) = get(proxy, "shop.example", "/menu.json");
    assert_eq!(status, 200);
    assert!(
        head.contains("cache-status: edge-1; fwd=uri-miss;"),
        "{head}"
    );
    assert_eq!(origin.seen("/menu.json"), 2);
    // Purging it again finds nothing.
    let again = ctl.json(&[
        "cache",
        "purge",
        "--host",
        "shop.example",
        "--path",
        "/nothing",
        "--node",
        "edge-1",
    ]);
    assert_eq!(
        again,
        json!({"nodes": [{"node": "edge-1", "purged": 0}], "purged": 0})
    );

    // A prefix, on the nodes a selector picks, as JSON.
    cache(proxy, &origin, "/img/a.png");
    cache(proxy, &origin, "/img/b.png");
    let purged = ctl.json(&[
        "cache",
        "purge",
        "--prefix",
        "/img/",
        "--selector",
        "site=berlin",
    ]);
    assert_eq!(
        purged,
        json!({"nodes": [{"node": "edge-1", "purged": 2}], "purged": 2})
    );
    let (_, head, _) = get(proxy, "shop.example", "/img/a.png");
    assert!(head.contains("fwd=uri-miss"), "{head}");
    assert_eq!(origin.seen("/img/a.png"), 2);
    // What the prefix does not cover stays.
    let (_, head, _) = get(proxy, "shop.example", "/menu.json");
    assert!(head.contains("cache-status: edge-1; hit;"), "{head}");

    // The whole fleet: the node without a proxy says so, and the other is purged all the same.
    let out = ctl.run(&["cache", "purge", "--host", "shop.example", "--prefix", "/"]);
    assert!(!out.status.success(), "a node was not purged: exit 1");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "edge-1  purged 2 responses\n\
         edge-2  not purged: the node has no proxy cache (no [proxy] in its config)\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 2 nodes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Offline: an error of its own, and the call still answers at once. The node stops as a
    // service does (SIGTERM), closing its connection, so the orchestrator knows at once.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &bare.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    assert!(
        eventually(PATIENCE, || ctl.status_of("edge-2").as_deref()
            == Some("offline"))
        .await
        .is_some(),
        "edge-2 went offline"
    );
    cache(proxy, &origin, "/menu.json");
    cache(proxy, &origin, "/menu.json?lang=de");
    let out = ctl.run(&["cache", "purge", "--prefix", "/menu", "--json"]);
    assert!(!out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        answer,
        json!({"nodes": [
            {"node": "edge-1", "purged": 2},
            {"node": "edge-2", "error": "offline"},
        ], "purged": 2})
    );
}
