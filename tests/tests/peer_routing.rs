//! Peer routing end to end: an orchestrator and three real node daemons at different places,
//! each on its own loopback address with its proxy and peer listener, the real `edge-hello`
//! deployed on two of them. The third, which runs none, sends a request to the nearer of the
//! two over mutual TLS; when that node goes away, to the other.

use edge_tests::{PATIENCE, TestNode, TestOrchestrator, binary, eventually};
use node_daemon::config::Config;
use node_daemon::status::StatusBoard;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Name, loopback address, site label, (lat, lon).
const NODES: [(&str, &str, &str, (f64, f64)); 3] = [
    ("berlin", "127.0.0.2", "run", (52.52, 13.405)),
    ("paris", "127.0.0.3", "run", (48.8566, 2.3522)),
    // 504 km from Berlin, 685 km from Paris.
    ("munich", "127.0.0.4", "route", (48.1351, 11.582)),
];

fn config(
    orch: &TestOrchestrator,
    token: &str,
    dir: &std::path::Path,
    (name, ip, site, (lat, lon)): (&str, &str, &str, (f64, f64)),
) -> Config {
    Config::from_toml(&format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
         labels = {{ site = \"{site}\" }}\nlocation = {{ lat = {lat}, lon = {lon} }}\n\
         [orchestrator]\naddress = \"{}\"\nlocal_address = \"{ip}\"\n\
         [join]\ntoken = \"{token}\"\nca_hash = \"{}\"\n\
         [proxy]\nlisten = \"{ip}:0\"\npeer_listen = \"{ip}:0\"\n\
         [proxy.cache]\nmemory_bytes = 0\ndisk_bytes = 0\nmax_object_bytes = 1\n",
        dir.display(),
        orch.orch.quic_addr,
        orch.ca_hash(),
    ))
    .expect("a valid node config")
}

/// A port free on both running nodes' addresses: edge-hello listens on its node's address.
fn free_port() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.2:0").expect("bind");
        let port = first.local_addr().expect("address").port();
        if TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
}

/// `GET /` through a proxy: the status and the body, `None` if it does not answer.
fn get(proxy: SocketAddr) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(proxy).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: hello.example\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn proxy_of(board: &StatusBoard) -> SocketAddr {
    board
        .get()
        .proxy
        .expect("the proxy listens")
        .parse()
        .expect("an address")
}

/// Polls `GET /` through `proxy` until `body` answers; panics with the last answer if it
/// never does within [`PATIENCE`].
async fn answered_by(proxy: SocketAddr, body: &str, what: &str) {
    let mut last = None;
    let found = eventually(PATIENCE, || {
        last = get(proxy);
        last.as_ref()
            .is_some_and(|(status, b)| *status == 200 && b == body)
    })
    .await;
    assert!(found.is_some(), "{what}: last answer {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_workload_routes_to_the_nearer_node_that_runs_it() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(3);
    let dirs: Vec<_> = NODES
        .iter()
        .map(|_| tempfile::tempdir().expect("tmp"))
        .collect();
    let mut nodes: Vec<(TestNode, StatusBoard)> = NODES
        .iter()
        .zip(&dirs)
        .map(|(n, dir)| TestNode::spawn_with_board(config(&orch, &token, dir.path(), *n)))
        .collect();
    for (name, ..) in NODES {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} online"
        );
    }
    let proxies: Vec<SocketAddr> = nodes.iter().map(|(_, board)| proxy_of(board)).collect();

    let hello = std::fs::read(binary("edge-hello")).expect("the sample service");
    let stored = orch
        .orch
        .artifacts
        .put(&hello[..], None)
        .await
        .expect("put");
    let digest: String = stored.digest.iter().map(|b| format!("{b:02x}")).collect();
    let port = free_port();
    let spec = json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": format!("sha256:{digest}"),
        "args": ["--port", port.to_string()],
        "env": {"GREETING": "hi"},
        "replicas": 2,
        "resources": {"cpu_millis": 100, "memory_bytes": 32 << 20},
        "requirements": {"labels": {"site": "run"}},
        "health": {"http": {"port": port, "path": "/healthz"}, "interval_secs": 2, "timeout_secs": 1},
        "expose": [{"port": port, "path_prefix": "/"}]
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");

    // Each node that runs it answers from its own instance.
    answered_by(proxies[0], "hi from berlin\n", "berlin serves its own").await;
    answered_by(proxies[1], "hi from paris\n", "paris serves its own").await;
    // Munich runs none: Berlin is 504 km away, Paris 685.
    answered_by(proxies[2], "hi from berlin\n", "munich routes to berlin").await;
    for _ in 0..10 {
        assert_eq!(
            get(proxies[2]),
            Some((200, "hi from berlin\n".to_owned())),
            "always the nearer one"
        );
    }

    // Berlin goes away: Munich routes to Paris.
    let (berlin, _) = nodes.remove(0);
    berlin.stop().await.expect("berlin stops cleanly");
    answered_by(proxies[1], "hi from paris\n", "paris still serves").await;
    answered_by(proxies[2], "hi from paris\n", "munich routes to paris").await;

    // Deleted: no node runs it, and no route is left to it.
    let (status, body) = orch.api("DELETE", "/v1/workloads/hello", None).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let gone = eventually(PATIENCE, || {
        get(proxies[2]).is_some_and(|(status, _)| status == 404)
    })
    .await;
    assert!(
        gone.is_some(),
        "munich forgets the route: {:?}",
        get(proxies[2])
    );
    drop(nodes);
}
