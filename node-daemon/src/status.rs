//! What the node is doing, for the people and tools on the device: `GET /status` (JSON) and
//! `GET /healthz` on `status_listen`, loopback by default. It answers from the first second,
//! before the node has enrolled, so a node waiting for its join file or refused by the
//! orchestrator says why here, not only in the journal.
//!
//! Read-only: no request changes anything. Requests are bounded (8 KiB of headers, 10 s to
//! send them, 16 connections at once); anything but `GET` of a known path gets a JSON error.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::debug;

/// The most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Header bytes a request may send.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub version: &'static str,
    pub arch: &'static str,
}

/// The shared, current [`Status`]. Cheap to clone; every clone sees every update.
#[derive(Debug, Clone)]
pub struct StatusBoard(Arc<watch::Sender<Status>>);

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
            version: env!("CARGO_PKG_VERSION"),
            arch: std::env::consts::ARCH,
        });
        Self(Arc::new(tx))
    }

    /// Sets the state and its message.
    pub fn set(&self, state: State, message: impl Into<String>) {
        let message = message.into();
        self.0.send_if_modified(|s| {
            let changed = s.state != state || s.message != message;
            s.state = state;
            s.message = message;
            changed
        });
    }

    /// Changes other fields.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.0.send_modify(f);
    }

    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }
}

/// Serves `/status` and `/healthz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, board: StatusBoard) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off a little rather than spin.
                debug!(error = %e, "status endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let board = board.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let board = board.clone();
                async move { Ok::<_, Infallible>(answer(&req, &board)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "status request failed");
            }
            drop(permit);
        });
    }
}

fn answer(req: &Request<Incoming>, board: &StatusBoard) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/status") => json(StatusCode::OK, &board.get()),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            json(StatusCode::OK, &serde_json::json!({"ok": true}))
        }
        (_, "/status" | "/healthz") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the node serves /status and /healthz",
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

        let mut huge = b"GET /status HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
        huge.extend(b"\r\n\r\n");
        let got = raw(addr, &huge).await;
        assert!(
            got.starts_with("HTTP/1.1 431"),
            "oversized headers are refused: {got:?}"
        );

        let got = raw(addr, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "still serving: {got}");
    }
}
