//! The bounded HTTP/1 accept loop both binaries serve with: the operator API and the node's
//! status endpoint.
//!
//! What a stranger can make it hold is bounded:
//! - **Heads**: a client has [`Limits::header_timeout`] to send its whole request head, and
//!   [`Limits::max_header_bytes`] to send it in; past either, the connection ends.
//! - **Connections**: at most [`Limits::max_connections`] are served at once. When a new one
//!   arrives at the cap, the loop closes the connection that has waited longest without
//!   sending a whole request head, since that is what a slow client (or a slowloris attack)
//!   holds a slot with. A connection whose request reached the service is never closed for
//!   room; when every slot holds one, new connections wait in the listen backlog.
//! - **Requests**: one per connection (no keep-alive), so an idle connection never holds a
//!   slot, and every answer on a connection whose request never reached the service is the
//!   HTTP layer's own.
//!
//! hyper answers a malformed or oversized head itself, with an empty body. Those answers are
//! replaced on the way out by the JSON error every other answer has
//! (`{"error": CODE, "message": TEXT}`, `application/json`): `bad_request` (400),
//! `headers_too_large` (431), `uri_too_long` (414). [`Server::on_refused`] hears of each.
//!
//! It never reads a request's content and keeps nothing from it but the connection's state.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::slots::{Slot, Slots};

/// The bounds of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send its whole request head, from the moment its connection is
    /// taken from the backlog.
    pub header_timeout: Duration,
    /// Bytes the request line and headers may take together; at least 8 KiB.
    pub max_header_bytes: usize,
}

/// The least [`Limits::max_header_bytes`] can be: hyper's smallest read buffer.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Told the status of every answer the HTTP layer gave in place of the service.
pub type OnRefused = Arc<dyn Fn(StatusCode) + Send + Sync>;

/// An HTTP/1 server within [`Limits`]. See the module documentation.
#[derive(Clone)]
pub struct Server {
    limits: Limits,
    on_refused: Option<OnRefused>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_connections: limits.max_connections.max(1),
                max_header_bytes: limits.max_header_bytes.max(MIN_HEADER_BYTES),
                ..limits
            },
            on_refused: None,
        }
    }

    /// Calls `f` with the status of each answer the HTTP layer gives in place of the service
    /// (a malformed or oversized request head), so the owner can count it.
    pub fn on_refused(mut self, f: impl Fn(StatusCode) + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(f));
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Serves `service` on `listener` until `shutdown` completes; then stops accepting, closes
    /// the connections that have not sent a whole request, and returns once the requests
    /// being served are answered.
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let slots = Slots::new(self.limits.max_connections);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_header_size(self.limits.max_header_bytes)
            .keep_alive(false);
        tokio::pin!(shutdown);
        'accept: loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off a little rather than spin.
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Room for it: at once, by closing a connection still sending its head, or once a
            // request being served is answered.
            loop {
                let freed = slots.freed();
                if slots.make_room(waiting) {
                    break;
                }
                tokio::select! {
                    () = freed => {}
                    () = &mut shutdown => break 'accept,
                }
            }
            let state = Arc::new(ConnState(AtomicU8::new(WAITING)));
            let (slot, evicted) = slots.open(state.clone());
            let refusal = Refusal {
                max_header_bytes: self.limits.max_header_bytes,
                on_refused: self.on_refused.clone(),
            };
            let io = hyper_util::rt::TokioIo::new(Guarded::new(stream, state.clone(), refusal));
            let service = service.clone();
            let reached = state.clone();
            // A connection closed to make room just as its head came in is not served: its
            // request never starts, rather than being cut off part way.
            let service = hyper::service::service_fn(move |request| {
                let call = reached.served().then(|| service.call(request));
                async move {
                    match call {
                        Some(call) => call.await.map_err(io::Error::other),
                        None => Err(io::Error::other("closed to make room")),
                    }
                }
            });
            let connection = http.serve_connection(io, service);
            tokio::spawn(async move {
                let _slot = slot;
                tokio::select! {
                    served = connection => {
                        if let Err(error) = served {
                            debug!(%peer, %error, "HTTP connection ended");
                        }
                    }
                    _ = evicted => debug!(%peer, "closed a connection still sending its head, to make room"),
                }
            });
        }
        // What waits in the backlog is refused, not left hanging.
        drop(listener);
        slots.drain().await;
    }
}

/// Where a connection is: waiting for its request head, serving its request, or closed to
/// make room. It moves out of `WAITING` once, either way.
#[derive(Debug)]
struct ConnState(AtomicU8);

const WAITING: u8 = 0;
const SERVED: u8 = 1;
const EVICTED: u8 = 2;

impl ConnState {
    /// The request reached the service: whether it is to be served. Loses to an eviction
    /// that came first: that connection is being closed anyway.
    fn served(&self) -> bool {
        self.0
            .compare_exchange(WAITING, SERVED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn is_served(&self) -> bool {
        self.0.load(Ordering::Acquire) == SERVED
    }
}

impl Slot for ConnState {
    /// Marks it closed for room, if it is still waiting for its head.
    fn evict(&self) -> bool {
        self.0
            .compare_exchange(WAITING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A connection's rank for closing to make room: one still waiting for its head, the oldest
/// first; never one being served.
fn waiting(state: &ConnState) -> Option<()> {
    (state.0.load(Ordering::Acquire) == WAITING).then_some(())
}

/// How to answer in place of the service.
struct Refusal {
    max_header_bytes: usize,
    on_refused: Option<OnRefused>,
}

impl Refusal {
    /// The JSON answer for `status`, a whole HTTP/1.1 response that closes the connection.
    fn answer(&self, status: StatusCode) -> Vec<u8> {
        if let Some(f) = &self.on_refused {
            f(status);
        }
        let (code, message) = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                format!(
                    "the request line and headers are over the limit of {} bytes",
                    self.max_header_bytes
                ),
            ),
            StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long".into()),
            _ => (
                "bad_request",
                "the request line or a header is malformed".into(),
            ),
        };
        let body = format!(r#"{{"error":"{code}","message":"{message}"}}"#);
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_str(),
            status.canonical_reason().unwrap_or("Error"),
            body.len()
        )
        .into_bytes()
    }
}

/// The most of hyper's own answer held to read its status; its answers are about 100 bytes.
const MAX_CAPTURE: usize = 1024;

/// The connection's socket as hyper sees it. Until the request reaches the service, whatever
/// hyper writes is its own answer to a head it refused: that is held, and replaced by
/// [`Refusal::answer`] for its status.
struct Guarded {
    stream: TcpStream,
    state: Arc<ConnState>,
    refusal: Refusal,
    captured: Vec<u8>,
    /// What goes out instead, and how much of it has.
    answer: Option<(Vec<u8>, usize)>,
}

impl Guarded {
    fn new(stream: TcpStream, state: Arc<ConnState>, refusal: Refusal) -> Self {
        Self {
            stream,
            state,
            refusal,
            captured: Vec::new(),
            answer: None,
        }
    }

    /// Writes out the replacement answer, if there is one.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, written)) = &mut self.answer {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The status of an HTTP/1 response head: `HTTP/1.1 431 ...`.
fn status_of(head: &[u8]) -> Option<StatusCode> {
    let digits = head.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    StatusCode::from_bytes(digits).ok()
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.state.is_served() {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        if this.answer.is_none() {
            this.captured.extend_from_slice(buf);
            let head_done = this.captured.windows(4).any(|w| w == b"\r\n\r\n");
            if head_done || this.captured.len() > MAX_CAPTURE {
                let answer = match status_of(&this.captured) {
                    Some(status) if head_done => this.refusal.answer(status),
                    // Not an answer we know: let it out as it was.
                    _ => std::mem::take(&mut this.captured),
                };
                this.answer = Some((answer, 0));
            }
        }
        // Anything after the answer is hyper's own answer's body, which is empty.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_hypers_own_answers() {
        assert_eq!(
            status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        assert_eq!(
            status_of(b"HTTP/1.0 400 Bad Request\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(status_of(b"HTTP/1.1 4"), None);
        assert_eq!(status_of(b"garbage"), None);
    }

    #[test]
    fn refusals_are_whole_json_answers() {
        let refusal = Refusal {
            max_header_bytes: 8192,
            on_refused: None,
        };
        let answer = String::from_utf8(refusal.answer(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
            .expect("UTF-8");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert_eq!(
            body,
            r#"{"error":"headers_too_large","message":"the request line and headers are over the limit of 8192 bytes"}"#
        );
    }

    #[test]
    fn a_full_table_makes_room_only_by_closing_a_connection_still_waiting() {
        let slots = Slots::new(2);
        let state = || Arc::new(ConnState(AtomicU8::new(WAITING)));
        let (first, second) = (state(), state());
        let (_first_slot, mut first_evicted) = slots.open(first.clone());
        let (_second_slot, mut second_evicted) = slots.open(second.clone());
        first.served();
        assert!(slots.make_room(waiting), "the second is still waiting");
        assert!(first_evicted.try_recv().is_err(), "a served one stays");
        assert!(second_evicted.try_recv().is_ok());
        assert!(!second.is_served());
        second.served();
        assert!(!second.is_served(), "closed for room before its head came");

        let third = state();
        let (_third_slot, _third_evicted) = slots.open(third.clone());
        third.served();
        assert!(!slots.make_room(waiting), "both slots serve requests");
    }
}
