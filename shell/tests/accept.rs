//! The bounded accept loop over real sockets on 127.0.0.1:0: slow and hostile clients cannot
//! keep it from answering others, and the HTTP layer's own refusals are JSON.

use edge_shell::http::{Limits, Server};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// A bound on waiting for what takes milliseconds when all is well; never a performance
/// figure.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server answering `GET /` with `ok`; `GET /slow` says it arrived on `reached`, then answers
/// once `gate` hands out a permit.
struct Running {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    reached: mpsc::UnboundedReceiver<()>,
    refused: Arc<Mutex<Vec<StatusCode>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Arc::new(Semaphore::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    let server = Server::new(limits).on_refused(move |status| {
        seen.lock().expect("not poisoned").push(status);
    });
    let service_gate = gate.clone();
    let (arrived, reached) = mpsc::unbounded_channel();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let gate = service_gate.clone();
        let arrived = arrived.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = arrived.send(());
                let _permit = gate.acquire().await.expect("gate open");
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let task = tokio::spawn(server.serve(listener, service, std::future::pending()));
    Running {
        addr,
        gate,
        reached,
        refused,
        _task: task,
    }
}

/// Sends `request`, returns the whole answer (the server closes after one request).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request).await.expect("write");
    read_all(&mut conn).await
}

async fn read_all(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out))
        .await
        .expect("answered within the deadline")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn limits(max_connections: usize, header_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        header_timeout,
        max_header_bytes: 8 * 1024,
    }
}

/// Whether the server closes `conn` (end of stream or a reset) within [`PATIENCE`].
async fn closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_half_sent_request_line_is_dropped_at_the_header_deadline() {
    let server = start(limits(16, Duration::from_millis(300))).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /sta").await.expect("write");
    assert!(closed(&mut conn).await, "the connection is still open");
    // And a connection that sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    assert!(closed(&mut silent).await, "the connection is still open");
}

#[tokio::test]
async fn normal_clients_are_answered_under_a_slowloris_attack() {
    // A header deadline far past the test's patience: only making room can answer in time.
    let server = start(limits(16, Duration::from_secs(600))).await;
    let mut attackers = Vec::new();
    for _ in 0..250 {
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nx-slow: ")
            .await
            .expect("write");
        attackers.push(conn);
    }
    for _ in 0..3 {
        let answer = raw(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
}

#[tokio::test]
async fn a_request_being_served_is_never_closed_for_room() {
    let mut server = start(limits(2, Duration::from_secs(600))).await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    server
        .reached
        .recv()
        .await
        .expect("the slow request arrives");
    let mut attackers = Vec::new();
    for _ in 0..50 {
        let mut conn = TcpStream::connect(server.addr).await.expect("connect");
        conn.write_all(b"GET / HT").await.expect("write");
        attackers.push(conn);
    }
    let answer = raw(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    server.gate.add_permits(1);
    let answer = read_all(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("ok"), "{answer:?}");
}

#[tokio::test]
async fn with_every_slot_serving_a_new_connection_waits_its_turn() {
    let mut server = start(limits(1, Duration::from_secs(600))).await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    server
        .reached
        .recv()
        .await
        .expect("the slow request arrives");
    let mut next = TcpStream::connect(server.addr).await.expect("connect");
    next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    server.gate.add_permits(1);
    assert!(read_all(&mut slow).await.starts_with("HTTP/1.1 200"));
    assert!(read_all(&mut next).await.starts_with("HTTP/1.1 200"));
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
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{answer:?}"
    );
    assert!(
        body.starts_with(&format!(r#"{{"error":"{code}","message":""#)),
        "{body}"
    );
}

#[tokio::test]
async fn refused_heads_get_json_errors_and_are_reported() {
    let server = start(limits(16, Duration::from_secs(10))).await;
    json_error(
        &raw(server.addr, b"\x00\x01garbage\r\n\r\n").await,
        "400",
        "bad_request",
    );
    json_error(
        &raw(server.addr, b"GET / HTTP/1.1\r\nbad header\r\n\r\n").await,
        "400",
        "bad_request",
    );
    let mut huge = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend(b"\r\n\r\n");
    json_error(&raw(server.addr, &huge).await, "431", "headers_too_large");
    // A request that reached the service keeps the service's answer.
    let answer = raw(server.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
    assert_eq!(
        *server.refused.lock().expect("not poisoned"),
        [
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ]
    );
}

#[tokio::test]
async fn shutdown_closes_waiting_connections_and_answers_the_rest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Arc::new(Semaphore::new(0));
    let service_gate = gate.clone();
    let (arrived, mut reached) = mpsc::unbounded_channel();
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let gate = service_gate.clone();
        let arrived = arrived.clone();
        async move {
            let _ = arrived.send(());
            let _permit = gate.acquire().await.expect("gate open");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(limits(16, Duration::from_secs(600))).serve(
        listener,
        service,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    reached.recv().await.expect("the request arrives");
    let mut waiting = TcpStream::connect(addr).await.expect("connect");
    waiting.write_all(b"GET / HT").await.expect("write");
    let _ = stop.send(());
    assert!(closed(&mut waiting).await);
    assert!(!server.is_finished());
    gate.add_permits(1);
    assert!(read_all(&mut busy).await.starts_with("HTTP/1.1 200"));
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the server returns once its requests are answered")
        .expect("no panic");
}
