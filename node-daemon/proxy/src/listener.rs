//! The proxy's accept loop: HTTP/1.1 with keep-alive, within bounds a stranger cannot stretch.
//!
//! - **Heads**: a client has [`Limits::header_timeout`] to send each request head (hyper's
//!   header read timer, which also ends a keep-alive connection that stays silent that long),
//!   within [`Limits::max_header_bytes`]; past the size, hyper answers 431; a malformed head
//!   gets 400, and a head with both `Content-Length` and `Transfer-Encoding`, or two
//!   different lengths, is refused the same way (hyper never reads such a body, so a request
//!   cannot be smuggled past us to a backend).
//! - **Connections**: at most [`Limits::max_connections`] at once. At the cap, a new
//!   connection closes the one that has been idle longest (waiting for a head, or between
//!   requests), which is what a slowloris holds its slots with; a connection with a request
//!   in flight is never closed for room. When every slot has a request in flight, the
//!   newcomer is answered `503` with `Retry-After` and closed, a clear refusal rather than a
//!   hang in the backlog.
//!
//! - **TLS** ([`serve_tls`], the peer listener): the handshake, client certificate included,
//!   must end within [`Limits::header_timeout`] too, and a connection in its handshake is as
//!   idle as one that has not sent a head: the first to close for room. At the cap with every
//!   slot busy, the newcomer is closed without a word (a plain `503` would be noise to a TLS
//!   client).
//!
//! It knows nothing of routes or caches: it hands each request to the service with the
//! client's address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use edge_shell::slots::{Slot, Slots};

/// The bounds of the proxy's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections held at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_timeout: Duration,
    /// Bytes the request line and headers may take together (at least 8 KiB, hyper's least).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
        }
    }
}

/// The answer to a connection that finds every slot busy with a request in flight.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\ncontent-length: 41\r\nconnection: close\r\n\r\n\
the proxy is at its connection limit now\n";

/// Called for each request with the client's address.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = http::Response<crate::Body>> + Send>>;
}

/// Serves `handler` on `listener` until `shutdown` completes; then stops accepting, closes
/// idle connections and waits for the requests in flight to be answered.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, limits, None, handler, shutdown).await;
}

/// As [`serve`], over TLS: each connection is `acceptor`'s handshake first, within
/// [`Limits::header_timeout`].
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    acceptor: TlsAcceptor,
    handler: H,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, limits, Some(acceptor), handler, shutdown).await;
}

async fn serve_with<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Slots::new(limits.max_connections);
    let epoch = Instant::now();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 * 1024))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off a little rather than spin.
                debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if !slots.make_room(idle_rank) {
            if tls.is_none() {
                tokio::spawn(refuse(stream));
            }
            continue;
        }
        let conn = Arc::new(Conn::new(epoch));
        let (slot, evicted) = slots.open(conn.clone());
        let handler = handler.clone();
        let in_service = conn.clone();
        let service = hyper::service::service_fn(move |request| {
            let busy = in_service.start();
            let call = busy.then(|| handler.handle(request, client));
            let conn = in_service.clone();
            async move {
                match call {
                    Some(call) => {
                        let response = call.await;
                        Ok(response.map(|body| crate::body::on_end(body, move || conn.finish())))
                    }
                    None => Err(std::io::Error::other("closed to make room")),
                }
            }
        });
        let http = http.clone();
        let tls = tls.clone();
        let handshake_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let mut evicted = evicted;
            let Some(acceptor) = tls else {
                drive(&http, stream, service, evicted, client).await;
                return;
            };
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        debug!(%client, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%client, "no TLS handshake in time");
                        return;
                    }
                },
                _ = &mut evicted => {
                    debug!(%client, "closed a connection in its handshake to make room");
                    return;
                }
            };
            drive(&http, stream, service, evicted, client).await;
        });
    }
    drop(listener);
    slots.drain().await;
}

/// Serves one connection's requests until it ends or is closed for room.
async fn drive<I, S>(
    http: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    evicted: oneshot::Receiver<()>,
    client: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        served = connection => {
            if let Err(error) = served {
                debug!(%client, %error, "proxy connection ended");
            }
        }
        _ = evicted => debug!(%client, "closed an idle connection to make room"),
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(FULL).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Where a connection is: idle (waiting for a head), serving a request, or closed for room.
#[derive(Debug)]
struct Conn {
    state: AtomicU8,
    /// Requests it has sent: one that has sent none is a head still coming in, closed for
    /// room at once; one between requests only after [`SETTLE`].
    requests: AtomicU64,
    /// When it last became idle, in milliseconds since the listener started.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const EVICTED: u8 = 2;

/// A connection is only closed for room once it has been idle this long: the last bytes of
/// the answer before may still be on their way out when its body ends.
const SETTLE: Duration = Duration::from_millis(200);

impl Conn {
    /// A connection that has sent nothing yet; `epoch` is the listener's start.
    fn new(epoch: Instant) -> Self {
        let conn = Self {
            state: AtomicU8::new(IDLE),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch,
        };
        conn.idle_since_ms.store(conn.now_ms(), Ordering::Release);
        conn
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request reached the service: whether to serve it (not if it lost to an eviction).
    fn start(&self) -> bool {
        let start = self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if start {
            self.requests.fetch_add(1, Ordering::AcqRel);
        }
        start
    }

    /// The answer's body has ended.
    fn finish(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        let _ = self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }

    /// How long it has been idle, if it is.
    fn idle_for(&self, now_ms: u64) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == IDLE)
            .then(|| now_ms.saturating_sub(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

impl Slot for Conn {
    fn evict(&self) -> bool {
        self.state
            .compare_exchange(IDLE, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A connection's rank for closing to make room: how long it has been idle, if it may be
/// closed (one that has sent no request yet at once, one between requests after
/// [`SETTLE`]); never one serving a request.
fn idle_rank(conn: &Conn) -> Option<u64> {
    let now_ms = conn.now_ms();
    let idle = conn.idle_for(now_ms)?;
    let fresh = conn.requests.load(Ordering::Acquire) == 0;
    let settle = u64::try_from(SETTLE.as_millis()).unwrap_or(u64::MAX);
    (fresh || idle >= settle).then_some(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_table_closes_the_longest_idle_and_never_a_busy_one() {
        let slots = Slots::new(2);
        let epoch = Instant::now();
        let conn = || Arc::new(Conn::new(epoch));
        let (first, second) = (conn(), conn());
        let (_first_slot, mut first_evicted) = slots.open(first.clone());
        let (_second_slot, mut second_evicted) = slots.open(second.clone());
        assert!(first.start());
        assert!(slots.make_room(idle_rank), "the second never sent a head");
        assert!(first_evicted.try_recv().is_err(), "a busy one stays");
        assert!(second_evicted.try_recv().is_ok());
        assert!(!second.start(), "closed for room before its head came");

        let third = conn();
        let (_third_slot, mut third_evicted) = slots.open(third.clone());
        assert!(third.start());
        assert!(
            !slots.make_room(idle_rank),
            "both slots have requests in flight"
        );

        third.finish();
        assert!(
            !slots.make_room(idle_rank),
            "a connection that just answered is left to flush"
        );
        tokio::time::advance(SETTLE * 2).await;
        assert!(
            slots.make_room(idle_rank),
            "idle between requests long enough"
        );
        assert!(third_evicted.try_recv().is_ok());
    }
}
