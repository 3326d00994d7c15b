//! Sending a request to a route's backends: the choice among them, their circuit breakers,
//! timeouts, retries under the route's budget, pooled connections.
//!
//! Every decision comes from `node_core::proxy` (`balance`, `breaker`, `retry`, `tiers`); this
//! module keeps their state between requests, reads the clock and moves the bytes. A backend's
//! load and breaker outlive route changes: they are kept by address, so a route table pushed
//! while requests are in flight neither forgets what it learned nor loses those requests.
//!
//! A backend is an instance here or an origin (plain HTTP), or an instance on a peer node,
//! reached over mutual TLS ([`crate::peer_tls`]) by [`Connector`]. The peer's node id rides in
//! the URI's user part (`https://ID@ADDR/...`, never sent: HTTP/1 sends the path alone), which
//! the client's pool keys its connections by, so a connection verified for one node is never
//! handed to a request for another that took over its address.

use crate::body;
use crate::cache::{Origin, OriginError};
use crate::peer_tls::{self, PeerTls};
use crate::{Body, BodyError};
use edge_proto::NodeId;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use node_core::proxy::balance::{Candidate, Choose, HostLoad, Load};
use node_core::proxy::breaker::{Breaker, BreakerConfig, BreakerState};
use node_core::proxy::learned::{ROUTE_WIDTH, route_features};
use node_core::proxy::retry::{RetryBudget, may_retry};
use node_core::proxy::route::{Origin as OriginAddr, RouteSettings};
use node_core::proxy::samples::{RouteSample, RouteSampler, RouteWindow};
use node_core::proxy::tiers::{self, Place};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

/// How long a connection to a backend may take to open, and a peer's TLS handshake after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per backend.
const POOL_PER_HOST: usize = 64;

/// Where a backend is: an address (a local instance, a peer) or an origin by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    /// An instance of a workload, on this node.
    Local(SocketAddr),
    /// The same workload on another node: its peer listener, and the node that must answer
    /// there (its certificate's id).
    Peer { addr: SocketAddr, node: NodeId },
    /// A static origin from the node's config.
    Origin(OriginAddr),
}

impl BackendAddr {
    /// Where the request goes, as its URI's authority says it.
    fn authority(&self) -> String {
        match self {
            Self::Local(addr) => addr.to_string(),
            Self::Peer { addr, node } => format!("{node}@{addr}"),
            Self::Origin(origin) => origin.authority(),
        }
    }

    /// Whether this backend is on this node.
    fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }
}

/// A backend of one request, and where it is as the choice of tier sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub addr: BackendAddr,
    pub place: Place,
}

impl Backend {
    /// An instance on this node.
    pub fn local(addr: SocketAddr) -> Self {
        Self {
            addr: BackendAddr::Local(addr),
            place: Place::Local,
        }
    }

    /// An instance on `node`, `distance_km` away if known.
    pub fn peer(addr: SocketAddr, node: NodeId, distance_km: Option<f64>) -> Self {
        Self {
            addr: BackendAddr::Peer { addr, node },
            place: Place::Peer { distance_km },
        }
    }

    /// An origin outside the fleet.
    pub fn origin(origin: OriginAddr) -> Self {
        Self {
            addr: BackendAddr::Origin(origin),
            place: Place::Origin,
        }
    }

    fn distance_km(&self) -> Option<f64> {
        match self.place {
            Place::Peer { distance_km } => distance_km,
            Place::Local => Some(0.0),
            Place::Origin => None,
        }
    }
}

/// How the proxy opens a connection to a backend: plain TCP for instances here and origins,
/// TCP then TLS as this node for peers (`https://NODE@ADDR`). Until it has [`PeerTls`] (a node
/// that has not enrolled yet has no certificate), a peer cannot be reached and says so.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Arc<std::sync::RwLock<Option<TlsConnector>>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    fn new() -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // `https` URIs reach it too: it opens their TCP connection, the TLS is ours.
        tcp.enforce_http(false);
        Self {
            tcp,
            tls: Arc::default(),
        }
    }

    fn set_tls(&self, tls: &PeerTls) {
        // A whole value replaced at once: consistent across a panic elsewhere.
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = Some(tls.connector());
    }

    fn tls(&self) -> Option<TlsConnector> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Why a connection to a backend failed.
type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.tcp, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let tls = self.tls();
        Box::pin(async move {
            let peer = uri.scheme() == Some(&Scheme::HTTPS);
            // Checked before connecting: a peer that cannot be verified is not dialled.
            let name = if peer {
                let node = uri
                    .authority()
                    .and_then(|a| a.as_str().split_once('@'))
                    .and_then(|(node, _)| NodeId::parse(node))
                    .ok_or("a peer's URI names no node")?;
                Some(peer_tls::server_name(node).ok_or("no TLS name for the node")?)
            } else {
                None
            };
            let stream = tcp.call(uri).await?;
            let Some(name) = name else {
                return Ok(Conn::Plain(stream));
            };
            let tls = tls.ok_or("this node has no identity to reach peers with")?;
            let handshake = tls.connect(name, stream.into_inner());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| "the peer's TLS handshake timed out")??;
            Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to a backend: plain, or TLS to a peer.
#[derive(Debug)]
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is a kilobyte, a plain stream a few words.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(stream) => stream.connected(),
            Self::Tls(stream) => stream.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a backend has taught us: its load and its breaker.
#[derive(Debug)]
struct BackendState {
    load: Load,
    breaker: Breaker,
}

/// Counts the proxy keeps about its backends, for the metrics.
pub trait UpstreamEvents: Send + Sync {
    /// A request was sent again after a failure.
    fn retried(&self, route: &str);
    /// A backend's breaker opened.
    fn breaker_opened(&self, route: &str);
}

/// The backends of every route, the client that reaches them, and their retry budgets.
pub struct Upstreams {
    client: Client<Connector, Body>,
    connector: Connector,
    state: Mutex<HashMap<BackendAddr, BackendState>>,
    budgets: Mutex<HashMap<String, RetryBudget>>,
    breaker: BreakerConfig,
    events: Arc<dyn UpstreamEvents>,
    /// This node's own load, the host load of its local backends; `None` until measured.
    local_load: Mutex<Option<HostLoad>>,
    /// Attempts with their features, for routing models; offered only while `sampling`.
    samples: Mutex<RouteSampler>,
    sampling: AtomicBool,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    /// Backends here and origins; peers once [`set_peer_tls`](Self::set_peer_tls) is called.
    pub fn new(events: Arc<dyn UpstreamEvents>) -> Self {
        let connector = Connector::new();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_PER_HOST)
            .build(connector.clone());
        Self {
            client,
            connector,
            state: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            breaker: BreakerConfig::default(),
            events,
            local_load: Mutex::new(None),
            samples: Mutex::new(RouteSampler::default()),
            sampling: AtomicBool::new(false),
        }
    }

    /// Starts (or stops) sampling attempts with their features for
    /// [`take_route_samples`](Self::take_route_samples). Off until called: each sampled
    /// attempt costs its backend's features and a lock.
    pub fn set_route_sampling(&self, on: bool) {
        self.sampling.store(on, Ordering::Relaxed);
    }

    /// The attempts sampled since the last call ([`RouteSampler`]).
    pub fn take_route_samples(&self) -> RouteWindow {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// This node's load as of now: what the routing model is told of the host of every
    /// backend that runs here. (A peer's load is not known here, and stays unknown.)
    pub fn set_local_load(&self, load: HostLoad) {
        *self
            .local_load
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(load);
    }

    /// Reaches peers from now on as the node `tls` holds the identity of.
    pub fn set_peer_tls(&self, tls: &PeerTls) {
        self.connector.set_tls(tls);
    }

    fn state(&self) -> MutexGuard<'_, HashMap<BackendAddr, BackendState>> {
        // Each change is a whole update of one backend's counters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the backends not in `keep`: instances that stopped, peers that left.
    pub fn retain(&self, keep: &[BackendAddr]) {
        self.state().retain(|addr, _| keep.contains(addr));
    }

    /// Breakers by state, for the status endpoint and the metrics.
    pub fn breakers_open(&self) -> usize {
        let now = Instant::now();
        self.state()
            .values()
            .filter(|b| b.breaker.state(now) != BreakerState::Closed)
            .count()
    }
}

/// One request's way to its backends, as the cache sees an origin.
pub struct Forward {
    pub upstreams: Arc<Upstreams>,
    pub route: String,
    pub settings: RouteSettings,
    /// Where the request may go, in any order: the tiers are chosen by their places.
    pub backends: Vec<Backend>,
    pub chooser: Arc<Mutex<Box<dyn Choose + Send>>>,
    /// The `Host` a backend sees: the client's for instances, the origin's for origins.
    pub host: Option<HeaderValue>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("route", &self.route)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl Origin for Forward {
    fn fetch(
        &self,
        request: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, OriginError>> + Send + '_>> {
        Box::pin(self.send(request))
    }
}

/// One attempt on a backend, from its start to its answer's head. Its load and breaker
/// hear how it ended, and hear it once, even when the request is dropped half way (the
/// client went away): a pending count that never came down would shut a backend out for
/// good, and a half-open probe never reported would keep its breaker half-open.
struct InFlight<'a> {
    forward: &'a Forward,
    addr: &'a BackendAddr,
    started: Instant,
    /// What the route's chooser predicted for it, to be checked against what happens.
    predicted_ms: Option<f32>,
    /// The backend's features when it was chosen, while attempts are sampled.
    features: Option<[f32; ROUTE_WIDTH]>,
    ended: bool,
}

impl InFlight<'_> {
    fn end(mut self, ok: bool) {
        self.ended = true;
        let now = Instant::now();
        let upstreams = &self.forward.upstreams;
        let mut state = upstreams.state();
        let Some(b) = state.get_mut(self.addr) else {
            return;
        };
        let rtt = now.saturating_duration_since(self.started);
        b.load.end(now, rtt, ok);
        let change = if ok {
            b.breaker.on_success(now)
        } else {
            b.breaker.on_failure(now)
        };
        drop(state);
        if let Some(predicted_ms) = self.predicted_ms {
            self.forward.chooser().observe(predicted_ms, rtt, ok);
        }
        if let Some(features) = self.features {
            let sample = RouteSample {
                features,
                latency_ms: rtt.as_secs_f32() * 1000.0,
                failed: !ok,
            };
            upstreams
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .offer(sample, fastrand::u64(..));
        }
        if change == Some(BreakerState::Open) {
            upstreams.events.breaker_opened(&self.forward.route);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut state = self.forward.upstreams.state();
        if let Some(b) = state.get_mut(self.addr) {
            b.load.cancel();
            b.breaker.on_cancel();
        }
    }
}

/// The backend [`Forward::choose`] chose for an attempt, and what came with the choice.
struct Chosen {
    addr: BackendAddr,
    predicted_ms: Option<f32>,
    features: Option<[f32; ROUTE_WIDTH]>,
}

/// How one attempt ended.
enum Attempt {
    Answered(Response<Body>),
    Failed(OriginError),
}

impl Forward {
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, OriginError> {
        let (parts, body) = request.into_parts();
        // A request without a body can be sent again; one with a body is on its way once sent.
        let replayable = hyper::body::Body::is_end_stream(&body);
        let mut body = Some(body);
        let now = Instant::now();
        self.budget(|b| b.deposit(now));
        let mut attempt = 0u32;
        loop {
            let Some(chosen) = self.choose() else {
                return Err(OriginError::Unreachable);
            };
            let body = match body.take() {
                Some(body) => body,
                None => body::empty(),
            };
            let outcome = self.attempt(&parts, body, chosen).await;
            let retry = match &outcome {
                Attempt::Answered(response) => {
                    // A backend that answers 502-504 is as good as down for this request.
                    matches!(response.status().as_u16(), 502..=504)
                }
                Attempt::Failed(_) => true,
            };
            attempt += 1;
            if retry
                && replayable
                && may_retry(&parts.method, attempt, self.settings.retries)
                && self.budget(|b| b.withdraw(Instant::now()))
            {
                self.upstreams.events.retried(&self.route);
                debug!(route = %self.route, attempt, "retrying on another backend");
                continue;
            }
            return match outcome {
                Attempt::Answered(response) => Ok(response),
                Attempt::Failed(error) => Err(error),
            };
        }
    }

    fn budget<T>(&self, f: impl FnOnce(&mut RetryBudget) -> T) -> T {
        let mut budgets = self
            .upstreams
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let budget = budgets.entry(self.route.clone()).or_default();
        f(budget)
    }

    fn chooser(&self) -> MutexGuard<'_, Box<dyn Choose + Send>> {
        // A chooser's state is a cursor or a model's bookkeeping: whole after any panic.
        self.chooser.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The backend for the next attempt, marked as started, if any is available: of the
    /// first tier with an available backend ([`tiers::eligible`]), the one the route's
    /// strategy chooses, with the latency the chooser predicted for it if it predicts.
    fn choose(&self) -> Option<Chosen> {
        let now = Instant::now();
        let sampling = self.upstreams.sampling.load(Ordering::Relaxed);
        let local_load = *self
            .upstreams
            .local_load
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut state = self.upstreams.state();
        for backend in &self.backends {
            state
                .entry(backend.addr.clone())
                .or_insert_with(|| BackendState {
                    load: Load::new(now),
                    breaker: Breaker::new(self.upstreams.breaker),
                });
        }
        let places: Vec<Place> = self.backends.iter().map(|b| b.place).collect();
        // Whether each breaker would let a request through, asked without taking a half-open
        // probe slot: only the chosen backend takes one, below.
        let breakers: Vec<Option<BreakerState>> = self
            .backends
            .iter()
            .map(|b| state.get(&b.addr).map(|s| s.breaker.state(now)))
            .collect();
        let mut available: Vec<bool> = breakers
            .iter()
            .map(|b| b.is_some_and(|b| b != BreakerState::Open))
            .collect();
        let mut draw = || fastrand::u64(..);
        // Each round either returns or shuts one more backend out: at most one per backend.
        for _ in 0..=self.backends.len() {
            let eligible = tiers::eligible(&places, &available);
            let candidates: Vec<Candidate<'_>> = self
                .backends
                .iter()
                .zip(&eligible)
                .zip(&breakers)
                .filter_map(|((backend, eligible), breaker)| {
                    let b = state.get(&backend.addr)?;
                    Some(Candidate {
                        load: &b.load,
                        available: *eligible,
                        half_open: *breaker == Some(BreakerState::HalfOpen),
                        distance_km: backend.distance_km(),
                        local: backend.addr.is_local(),
                        host: local_load.filter(|_| backend.addr.is_local()),
                    })
                })
                .collect();
            let (chosen, predicted_ms) = {
                let mut chooser = self.chooser();
                let chosen = chooser.choose(&candidates, now, &mut draw)?;
                (chosen, chooser.predicted_ms())
            };
            // As the model saw it: before this attempt counts in its load.
            let features = candidates.get(chosen).filter(|_| sampling).map(|c| {
                let mut row = [0.0; ROUTE_WIDTH];
                route_features(c, now, &mut row);
                row
            });
            drop(candidates);
            let addr = self.backends.get(chosen)?.addr.clone();
            let b = state.get_mut(&addr)?;
            if b.breaker.allow(now) {
                b.load.start(now);
                return Some(Chosen {
                    addr,
                    predicted_ms,
                    features,
                });
            }
            // Half-open with every probe slot taken: not this one, this time.
            if let Some(a) = available.get_mut(chosen) {
                *a = false;
            }
        }
        None
    }

    async fn attempt(&self, parts: &http::request::Parts, body: Body, chosen: Chosen) -> Attempt {
        let addr = &chosen.addr;
        let in_flight = InFlight {
            forward: self,
            addr,
            started: Instant::now(),
            predicted_ms: chosen.predicted_ms,
            features: chosen.features,
            ended: false,
        };
        let request = match self.request(parts, body, addr) {
            Ok(request) => request,
            Err(error) => {
                in_flight.end(false);
                return Attempt::Failed(error);
            }
        };
        let sent = tokio::time::timeout(
            self.settings.timeout,
            self.upstreams.client.request(request),
        );
        match sent.await {
            Ok(Ok(response)) => {
                in_flight.end(!matches!(response.status().as_u16(), 502..=504));
                Attempt::Answered(response.map(|b| b.map_err(BodyError::from).boxed_unsync()))
            }
            Ok(Err(error)) => {
                debug!(route = %self.route, backend = %addr.authority(), %error, "backend failed");
                in_flight.end(false);
                Attempt::Failed(OriginError::Unreachable)
            }
            Err(_) => {
                in_flight.end(false);
                Attempt::Failed(OriginError::Timeout)
            }
        }
    }

    /// The request as `addr` is sent it: its URI made absolute for the client.
    fn request(
        &self,
        parts: &http::request::Parts,
        body: Body,
        addr: &BackendAddr,
    ) -> Result<Request<Body>, OriginError> {
        let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path = match addr {
            BackendAddr::Origin(origin) => origin.target_path(path),
            BackendAddr::Local(_) | BackendAddr::Peer { .. } => path.to_owned(),
        };
        let authority = Authority::try_from(addr.authority())
            .map_err(|e| OriginError::Other(format!("backend address: {e}")))?;
        let scheme = match addr {
            BackendAddr::Peer { .. } => Scheme::HTTPS,
            BackendAddr::Local(_) | BackendAddr::Origin(_) => Scheme::HTTP,
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| OriginError::Other(format!("backend URI: {e}")))?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_11;
        *request.headers_mut() = parts.headers.clone();
        // A peer routes by the client's host as this node did.
        match (&self.host, addr) {
            (Some(host), BackendAddr::Local(_) | BackendAddr::Peer { .. }) => {
                request.headers_mut().insert(header::HOST, host.clone());
            }
            (_, BackendAddr::Origin(origin)) => {
                if let Ok(host) = HeaderValue::try_from(origin.authority()) {
                    request.headers_mut().insert(header::HOST, host);
                }
            }
            (None, BackendAddr::Local(_) | BackendAddr::Peer { .. }) => {}
        }
        Ok(request)
    }
}
