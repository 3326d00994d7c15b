//! What the node is doing, for the people and tools on the device: `GET /status` (JSON),
//! `GET /metrics` (Prometheus) and `GET /healthz` on `status_listen`, loopback by default. It
//! answers from the first second, before the node has enrolled, so a node waiting for its
//! join file or refused by the orchestrator says why here, not only in the journal.
//!
//! Read-only: no request changes anything. Served by [`edge_shell::http::Server`] within
//! [`LIMITS`] (8 KiB of headers, 10 s to send them, 16 connections at once, a slow client
//! closed to make room for another); anything but `GET` of a known path gets a JSON error,
//! and so does a head the HTTP layer refuses.

use crate::metrics::NodeMetrics;
use edge_shell::exposition::Format;
use edge_shell::http::{Limits, Server};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the status listener is bounded.
pub const LIMITS: Limits = Limits {
    max_connections: 16,
    header_timeout: Duration::from_secs(10),
    max_header_bytes: 8 * 1024,
};

/// The node's state as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    /// Not enrolled, and no join file (and no `[join]`) to enroll with.
    WaitingForJoinFile,
    /// The join file is there but wrong; `message` says which field.
    JoinFileInvalid,
    Enrolling,
    Connecting,
    Online,
    Offline,
    /// The orchestrator refused the node, or it does not trust it; waits for a new join file.
    Failed,
    /// Another machine is connected with this node's identity (a copied SD card or data
    /// dir), so the orchestrator refused this one; it tries again every few minutes. `message`
    /// says how to enroll a copy again.
    IdentityConflict,
    Stopping,
    /// The orchestrator refused the node's certificate as expired: it was offline past the
    /// certificate's end, so it could not renew. It must enroll again; `message` says how.
    /// The node keeps running its workloads and dials every few minutes, in case the
    /// orchestrator's clock was what was wrong.
    CertificateExpired,
}

/// The document `/status` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub state: State,
    /// What to know about the state, for a person: what failed and what to do.
    pub message: String,
    pub name: Option<String>,
    pub node_id: Option<String>,
    pub orchestrator: Option<String>,
    /// The join file read at first start, or where the node is looking for one.
    pub join_file: Option<String>,
    /// The model the node loaded (`ai` builds).
    pub model: Option<String>,
    /// The routing model the proxy uses, `sha256:...`: the fleet's, or one installed by
    /// hand in `DATA_DIR/models/route.onnx`. `null`: none, or it was refused.
    pub route_model: Option<String>,
    /// The last routing model the fleet offered that this node refused, and why, until one
    /// is installed: `sha256:...: reason`.
    pub route_model_refused: Option<String>,
    /// Who chooses the backends of the proxy's routes that may use the routing model: how
    /// many routes `model` serves, and how many peak-EWMA P2C serves instead, by why
    /// (`no_model`, `refused`, `broken`, `drift`). `null` without a proxy.
    pub routing: Option<std::collections::BTreeMap<&'static str, usize>>,
    /// Who decides when the proxy's workloads that scale to zero start, and how many it has
    /// started before a request. `null` without a proxy.
    pub prewarm: Option<PrewarmView>,
    /// Where the proxy listens, when the config has a `[proxy]` table.
    pub proxy: Option<String>,
    /// The orchestrator's wall clock minus this node's, in milliseconds, as of the last
    /// time it welcomed the node; `null` before that.
    pub clock_offset_ms: Option<i64>,
    /// When the node's certificate ends, in milliseconds since the Unix epoch (by the
    /// certificate; the node renews it two thirds of the way through its life).
    pub certificate_not_after_ms: Option<u64>,
    /// Where the node is as of now, from its location source (a gpsd receiver, or the
    /// config's point); `null` when it does not know.
    pub location: Option<LocationView>,
    pub version: &'static str,
    pub arch: &'static str,
}

/// Pre-warming, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrewarmView {
    /// `model`; or today's rule (start on a request) and why: `no_model`, `refused`,
    /// `broken`, `drift`; `waiting` (no workload scales to zero yet, and the model is not
    /// loaded until one does); or `off` (`[proxy] prewarm = false`).
    pub mode: &'static str,
    /// The warming model loaded (while `waiting`, the one that will load):
    /// `sha256:...` of `DATA_DIR/models/warm.onnx`, or `built-in`; `null`: none.
    pub model: Option<String>,
    /// Workloads started by pre-warming since the node started.
    pub prewarms: u64,
}

/// Where the node is, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LocationView {
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
    /// `gpsd` or `fixed`.
    pub source: &'static str,
    /// `3d`, `2d` or `none` (the last fix's position, or the config's point).
    pub quality: &'static str,
    /// The receiver's estimate of its horizontal error, in metres.
    pub accuracy_m: Option<f64>,
    /// When the receiver took the fix, in milliseconds since the Unix epoch (its clock).
    pub fix_ms: Option<u64>,
}

impl From<&node_core::location::Report> for LocationView {
    fn from(r: &node_core::location::Report) -> Self {
        Self {
            lat: r.fix.lat,
            lon: r.fix.lon,
            alt_m: r.fix.alt_m,
            source: r.source.as_str(),
            quality: r.fix.quality.as_str(),
            accuracy_m: r.fix.accuracy_m,
            fix_ms: r.fix.time_ms,
        }
    }
}

/// The shared, current [`Status`], and the node's metrics. Cheap to clone; every clone sees
/// every update.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    status: Arc<watch::Sender<Status>>,
    metrics: NodeMetrics,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusBoard {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Status {
            state: State::Starting,
            message: "starting".into(),
            name: None,
            node_id: None,
            orchestrator: None,
            join_file: None,
            model: None,
            route_model: None,
            route_model_refused: None,
            routing: None,
            prewarm: None,
            proxy: None,
            clock_offset_ms: None,
            certificate_not_after_ms: None,
            location: None,
            version: env!("CARGO_PKG_VERSION"),
            arch: std::env::consts::ARCH,
        });
        Self {
            status: Arc::new(tx),
            metrics: NodeMetrics::new(),
        }
    }

    /// Sets the state and its message; a new state is counted in
    /// `edge_node_state_changes`.
    pub fn set(&self, state: State, message: impl Into<String>) {
        let message = message.into();
        let mut entered = false;
        self.status.send_if_modified(|s| {
            entered = s.state != state;
            let changed = entered || s.message != message;
            s.state = state;
            s.message = message;
            changed
        });
        if entered {
            self.metrics.state_changed(state);
        }
    }

    /// Changes other fields.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    pub fn get(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The node's metrics, which `/metrics` serves.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }
}

/// Serves `/status`, `/metrics` and `/healthz` on `listener` within [`LIMITS`] until the task
/// is dropped.
pub async fn serve(listener: TcpListener, board: StatusBoard) {
    serve_with(listener, board, LIMITS).await;
}

/// As [`serve`], within `limits`.
pub async fn serve_with(listener: TcpListener, board: StatusBoard, limits: Limits) {
    let service = hyper::service::service_fn(move |req| {
        let board = board.clone();
        async move { Ok::<_, Infallible>(answer(&req, &board)) }
    });
    Server::new(limits)
        .serve(listener, service, std::future::pending())
        .await;
}

fn answer(req: &Request<Incoming>, board: &StatusBoard) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/status") => json(StatusCode::OK, &board.get()),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, &serde_json::json!({"ok": true}))
        }
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let mut response =
                Response::new(Full::new(Bytes::from(board.metrics().encode(format))));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(format.content_type()),
            );
            response
        }
        (_, "/status" | "/healthz" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the node serves /status, /metrics and /healthz",
        ),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Serializing our own plain structs cannot fail; an empty object is a safe fallback.
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (
        std::net::SocketAddr,
        StatusBoard,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let board = StatusBoard::new();
        let task = tokio::spawn(serve(listener, board.clone()));
        (addr, board, task)
    }

    /// Sends raw bytes, returns the whole raw answer (the server closes after one request).
    async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn body(answer: &str) -> serde_json::Value {
        let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
        serde_json::from_str(body).expect("JSON body")
    }

    #[tokio::test]
    async fn status_reports_the_current_state() {
        let (addr, board, _task) = server().await;
        let got = raw(addr, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.contains("content-type: application/json"), "{got}");
        let doc = body(&got);
        assert_eq!(doc["state"], "starting");
        assert_eq!(doc["arch"], std::env::consts::ARCH);

        board.set(
            State::JoinFileInvalid,
            "/boot/firmware/edge-join.toml: token: malformed",
        );
        board.update(|s| s.name = Some("pi-1".into()));
        let doc = body(&raw(addr, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n").await);
        assert_eq!(doc["state"], "join_file_invalid");
        assert_eq!(
            doc["message"],
            "/boot/firmware/edge-join.toml: token: malformed"
        );
        assert_eq!(doc["name"], "pi-1");

        let got = raw(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }

    #[tokio::test]
    async fn hostile_requests_get_errors_and_the_server_keeps_serving() {
        let (addr, _board, _task) = server().await;
        let got = raw(addr, b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 404"), "{got}");
        assert_eq!(body(&got)["error"], "not_found");

        let got = raw(
            addr,
            b"POST /status HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 405"), "{got}");
        assert_eq!(body(&got)["error"], "method_not_allowed");

        let got = raw(addr, b"\x00\x01garbage\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got:?}");
        assert!(got.contains("content-type: application/json"), "{got:?}");
        assert_eq!(body(&got)["error"], "bad_request");

        let mut huge = b"GET /status HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
        huge.extend(b"\r\n\r\n");
        let got = raw(addr, &huge).await;
        assert!(
            got.starts_with("HTTP/1.1 431"),
            "oversized headers are refused: {got:?}"
        );
        assert_eq!(body(&got)["error"], "headers_too_large");

        let got = raw(addr, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "still serving: {got}");
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_format_asked_for() {
        let (addr, board, _task) = server().await;
        board.set(State::Online, "connected");
        let got = raw(addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(
            got.contains("content-type: text/plain; version=0.0.4"),
            "{got}"
        );
        assert!(
            got.contains("\nedge_node_state_changes_total{state=\"online\"} 1\n"),
            "{got}"
        );
        assert!(
            got.contains("# TYPE edge_node_state_changes_total counter\n"),
            "{got}"
        );
        assert!(!got.contains("# EOF"), "{got}");
        let got = raw(
            addr,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: application/openmetrics-text\r\n\r\n",
        )
        .await;
        assert!(
            got.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{got}"
        );
        assert!(got.ends_with("# EOF\n"), "{got}");
    }

    #[tokio::test]
    async fn a_half_sent_request_line_is_dropped_at_the_header_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let _task = tokio::spawn(serve_with(listener, StatusBoard::new(), limits));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /sta").await.expect("write");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "still open after the deadline: {read:?}"
        );
    }

    /// A bound on waiting for what takes milliseconds when all is well.
    const PATIENCE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn status_is_answered_under_a_slowloris_attack() {
        let (addr, _board, _task) = server().await;
        let mut attackers = Vec::new();
        for _ in 0..250 {
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
            conn.write_all(b"GET /status HTTP/1.1\r\nx-slow: ")
                .await
                .expect("write");
            attackers.push(conn);
        }
        for _ in 0..3 {
            let got = tokio::time::timeout(
                PATIENCE,
                raw(addr, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n"),
            )
            .await
            .expect("answered within the deadline");
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
    }
}
