//! The operator API's listener and its `/metrics`, over real sockets on 127.0.0.1:0: slow
//! and hostile clients, the HTTP layer's own refusals, and what a scraper reads.

mod common;

use common::Api;
use orchestrator::api::{self, LIMITS};
use orchestrator_core::store::MemStore;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A bound on waiting for what takes milliseconds when all is well; never a performance
/// figure.
const PATIENCE: Duration = Duration::from_secs(30);

fn start(limits: api::Limits) -> Api {
    Api::start(Arc::new(MemStore::default()), None, limits)
}

/// Sends `request` on a new connection and reads the whole answer (one request per
/// connection: the server closes after it).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    conn.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    let accept = accept
        .map(|a| format!("accept: {a}\r\n"))
        .unwrap_or_default();
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{accept}\r\n").as_bytes(),
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_owned(), body.to_owned())
}

/// Whether the server ends `conn` (end of stream or a reset) within [`PATIENCE`].
fn closed(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_half_sent_request_line_is_dropped_at_the_header_deadline() {
    let api = start(api::Limits {
        header_timeout: Duration::from_millis(300),
        ..LIMITS
    });
    let mut conn = TcpStream::connect(api.addr).expect("connect");
    conn.write_all(b"GET /heal").expect("write");
    assert!(closed(&mut conn), "the half request is still open");
}

#[test]
fn health_checks_are_answered_under_a_slowloris_attack() {
    // A header deadline far past the test's patience: only making room can answer in time.
    let api = start(api::Limits {
        header_timeout: Duration::from_secs(600),
        ..LIMITS
    });
    let attackers: Vec<TcpStream> = (0..LIMITS.max_connections + 100)
        .map(|_| {
            let mut conn = TcpStream::connect(api.addr).expect("connect");
            conn.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
                .expect("write");
            conn
        })
        .collect();
    for _ in 0..3 {
        let (head, body) = get(api.addr, "/healthz", None);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, r#"{"status":"ok"}"#);
    }
    drop(attackers);
}

#[test]
fn a_trickled_body_is_answered_408_at_the_deadline() {
    let api = start(LIMITS);
    let mut conn = TcpStream::connect(api.addr).expect("connect");
    conn.write_all(b"POST /v1/tokens HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n{")
        .expect("write");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    json_error(&String::from_utf8_lossy(&out), "408", "timeout");
}

fn json_error(answer: &str, status: &str, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer:?}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.contains("content-type: application/json"),
        "{answer:?}"
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"], code, "{body}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[test]
fn heads_the_http_layer_refuses_get_the_apis_json_errors_and_are_counted() {
    let api = start(LIMITS);
    let mut huge = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend(b"\r\n\r\n");
    json_error(&raw(api.addr, &huge), "431", "headers_too_large");
    json_error(
        &raw(api.addr, b"\x16\x03\x01garbage\r\n\r\n"),
        "400",
        "bad_request",
    );
    let (_, metrics) = get(api.addr, "/metrics", None);
    for series in [
        r#"edge_api_requests_total{code="431"} 1"#,
        r#"edge_api_requests_total{code="400"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series}:\n{metrics}");
    }
}

#[test]
fn metrics_are_the_text_format_with_every_series_from_the_start() {
    let api = start(LIMITS);
    let (head, text) = get(api.addr, "/metrics", None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    assert!(!text.contains("# UNIT"), "{text}");
    // Every sample's family is described under the sample's own name.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let family = line.split(['{', ' ']).next().unwrap_or_default();
        for kind in ["HELP", "TYPE"] {
            assert!(
                text.contains(&format!("# {kind} {family} ")),
                "no {kind} for {line}:\n{text}"
            );
        }
    }
    assert!(
        text.contains("# TYPE edge_workload_deploys_total counter\n"),
        "{text}"
    );
    // Fixed label sets are there before anything happened, at 0.
    for series in [
        "edge_workload_deploys_total 0",
        r#"edge_enrollment_failures_total{reason="bad_token"} 0"#,
        r#"edge_session_rejections_total{reason="unknown_node"} 0"#,
        r#"edge_handshake_failures_total{reason="tls"} 0"#,
        r#"edge_frames_total{direction="rx"} 0"#,
        r#"edge_instance_transitions_total{state="failed"} 0"#,
        r#"edge_api_requests_total{code="500"} 0"#,
        r#"edge_nodes{status="online"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series}:\n{text}");
    }
    assert!(!text.contains("reason=\"200\""), "{text}");
}

#[test]
fn metrics_are_openmetrics_for_a_scraper_that_asks() {
    let api = start(LIMITS);
    let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (head, text) = get(api.addr, "/metrics", Some(prometheus));
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE edge_workload_deploys counter\n"),
        "{text}"
    );
}
