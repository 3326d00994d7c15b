//! One request's way through the proxy: route, loop guard, forwarding headers, cache,
//! backends, the answer and its access-log line.
//!
//! A workload's request goes to its instances here, else to the same workload on the nearest
//! peer nodes, else to the route's origins (`node_core::proxy::tiers`). A request that came
//! from a peer ([`FromPeers`]) is served by the instances here only: the peer has already
//! chosen this node, and passing it on could bounce it around the fleet.
//!
//! A workload that scales to zero is reached through [`Waking`]: on a cache miss it takes an
//! in-flight token from the workload's [`Activity`], waking it through the [`Waker`] first if
//! it is dormant, and forwards to the backends of the routing the wake put in place.

use crate::Body;
use crate::body;
use crate::cache::{Cache, CacheOutcome, Origin, OriginError, RouteCache};
use crate::listener::Handler;
use crate::metrics::ProxyMetrics;
use crate::peer_tls::PeerTls;
use crate::upstream::{Backend, BackendAddr, Forward, Upstreams};
use crate::wake::{Activity, InFlight, Waker};
use edge_proto::NodeId;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use node_core::proxy::balance::{Choose, chooser};
use node_core::proxy::cache_status::{CacheName, CacheStatus, Fwd};
use node_core::proxy::headers::{self, TraceParent, ViaName};
use node_core::proxy::learned::{Fallback, Mode, Predictor};
use node_core::proxy::route::{Route, RouteTable, Target};
use node_core::proxy::tiers;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;
use tracing::{info, warn};

/// `Via` entries a request may carry before it is taken for a loop.
const MAX_HOPS: usize = 8;
/// The most of a request's path an access-log line keeps.
const LOGGED_PATH: usize = 256;
/// Wakes one request asks for before it gives up: more than one only if the workload went
/// back to sleep between a wake and the request.
const MAX_WAKES: usize = 3;

/// What the proxy routes by: the table and, for each workload, where its instances listen.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub table: RouteTable,
    /// Running instances of each workload on this node: the address its ports are on.
    pub local: HashMap<String, Vec<IpAddr>>,
    /// Instances of each workload on other nodes, reached at their peer listeners.
    pub peers: HashMap<String, Vec<Peer>>,
    /// The workloads that scale to zero, each with its activity: while that is closed the
    /// workload is dormant, and a request wakes it before it is forwarded.
    pub scale_to_zero: HashMap<String, Arc<Activity>>,
}

/// An instance of a workload on another node.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub node: NodeId,
    /// Its node's peer listener.
    pub addr: SocketAddr,
    /// How far its node is from this one, if both locations are known.
    pub distance_km: Option<f64>,
}

/// Where a request came in: from a client, or from a peer node that chose this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Client,
    Peer,
}

/// A route's backend chooser, kept across requests.
type Chooser = Arc<Mutex<Box<dyn Choose + Send>>>;

/// A routing table as requests use it: with a backend chooser per route.
struct Snapshot {
    routing: Routing,
    choosers: HashMap<String, Chooser>,
}

impl Snapshot {
    fn new(routing: Routing, model: &RouteModel) -> Self {
        let choosers = routing
            .table
            .routes()
            .iter()
            .map(|r| {
                let chooser = Arc::new(Mutex::new(chooser(r.settings.balance, model())));
                (r.name.clone(), chooser)
            })
            .collect();
        Self { routing, choosers }
    }
}

/// The node's routing model, as each route takes it: a call makes one route's predictor
/// (each holds buffers of its own), or says why there is none.
pub type RouteModel = Arc<dyn Fn() -> Predictor + Send + Sync>;

/// No routing model: the routes that would use one choose by peak-EWMA P2C.
pub fn no_route_model() -> RouteModel {
    Arc::new(|| Err(Fallback::NoModel))
}

fn lock(chooser: &Chooser) -> std::sync::MutexGuard<'_, Box<dyn Choose + Send>> {
    // A chooser's state is a cursor or a model's bookkeeping: whole after any panic.
    chooser.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy's settings that are not routes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name this node gives itself in `Via`.
    pub via: ViaName,
    /// Its name in `Cache-Status`: the cache's, for the answers the proxy makes itself.
    pub cache_name: CacheName,
    /// The largest request body passed on.
    pub max_body_bytes: u64,
}

/// The proxy: routes, cache, backends. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    snapshot: RwLock<Arc<Snapshot>>,
    cache: Cache,
    upstreams: Arc<Upstreams>,
    metrics: ProxyMetrics,
    waker: RwLock<Option<Arc<dyn Waker>>>,
    route_model: RwLock<RouteModel>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy that reaches instances here and origins; peers once it has
    /// [`set_peer_tls`](Self::set_peer_tls).
    pub fn new(settings: Settings, cache: Cache, metrics: ProxyMetrics) -> Self {
        let upstreams = Arc::new(Upstreams::new(Arc::new(metrics.clone())));
        Self {
            inner: Arc::new(Inner {
                settings,
                snapshot: RwLock::new(Arc::new(Snapshot::new(
                    Routing::default(),
                    &no_route_model(),
                ))),
                cache,
                upstreams,
                metrics,
                waker: RwLock::new(None),
                route_model: RwLock::new(no_route_model()),
            }),
        }
    }

    /// Starts the workloads that scale to zero from the next request on. Without a waker a
    /// request for a dormant workload is answered 503.
    pub fn set_waker(&self, waker: Arc<dyn Waker>) {
        *self
            .inner
            .waker
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    fn waker(&self) -> Option<Arc<dyn Waker>> {
        self.inner
            .waker
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Routes by `routing` from the next request on. Requests in flight finish on the table
    /// they started with.
    pub fn set_routing(&self, routing: Routing) {
        let keep = backends_of(&routing);
        // Held until the new table is in place: see `set_route_model`.
        let model = self
            .inner
            .route_model
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = Arc::new(Snapshot::new(routing, &model));
        *self
            .inner
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        drop(model);
        self.inner.upstreams.retain(&keep);
    }

    /// Routes with `model` from the next choice on, without a request lost: each route's
    /// chooser takes the new model between two choices, and requests in flight are observed
    /// by the chooser that sent them.
    pub fn set_route_model(&self, model: RouteModel) {
        // Held while the current routes take it, so that a routing table set meanwhile is
        // built with the new model, not the old.
        let mut current = self
            .inner
            .route_model
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = model.clone();
        for chooser in self.snapshot().choosers.values() {
            lock(chooser).set_predictor(model());
        }
    }

    /// Who chooses on each route that may use a model: how many routes the model serves
    /// and how many its fallback serves, by reason.
    pub fn route_modes(&self) -> Vec<(Mode, usize)> {
        let mut modes: Vec<(Mode, usize)> = Vec::new();
        for chooser in self.snapshot().choosers.values() {
            let Some(mode) = lock(chooser).mode() else {
                continue;
            };
            match modes.iter_mut().find(|(m, _)| *m == mode) {
                Some((_, n)) => *n += 1,
                None => modes.push((mode, 1)),
            }
        }
        modes
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A proxy that reaches peers too, as the node `peer_tls` holds the identity of.
    pub fn with_peers(
        settings: Settings,
        cache: Cache,
        metrics: ProxyMetrics,
        peer_tls: &PeerTls,
    ) -> Self {
        let proxy = Self::new(settings, cache, metrics);
        proxy.set_peer_tls(peer_tls);
        proxy
    }

    /// Reaches peers from the next connection on, as the node `peer_tls` holds the identity
    /// of: a node gets its certificate when it enrolls, after its proxy started.
    pub fn set_peer_tls(&self, peer_tls: &PeerTls) {
        self.inner.upstreams.set_peer_tls(peer_tls);
    }

    /// This node's CPU and memory load, each 0 to 1: the host load the routing model is told
    /// for the backends that run here, from the next choice on.
    pub fn set_local_load(&self, load: node_core::proxy::balance::HostLoad) {
        self.inner.upstreams.set_local_load(load);
    }

    /// Starts (or stops) keeping a fair sample of the attempts on every route's backends,
    /// with each backend's routing features when it was chosen: what routing models are
    /// trained on. Off until called.
    pub fn set_route_sampling(&self, on: bool) {
        self.inner.upstreams.set_route_sampling(on);
    }

    /// The attempts sampled since the last call: at most
    /// [`RouteSampler::CAPACITY`](node_core::proxy::samples::RouteSampler::CAPACITY), each
    /// attempt of the window as likely to be among them, and how many there were.
    pub fn take_route_samples(&self) -> node_core::proxy::samples::RouteWindow {
        self.inner.upstreams.take_route_samples()
    }

    /// The handler for the peer listener: the same proxy, serving only what runs here.
    pub fn from_peers(&self) -> FromPeers {
        FromPeers(self.clone())
    }

    async fn serve(
        self,
        request: Request<Incoming>,
        client: SocketAddr,
        arrival: Arrival,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let host_value = request_host(&request);
        let host = host_value.as_ref().and_then(|h| h.to_str().ok());
        let logged = tracing::enabled!(target: "edge_proxy::access", tracing::Level::INFO);
        let path: Option<String> = logged.then(|| {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            path.chars().take(LOGGED_PATH).collect()
        });
        let Routed {
            mut response,
            route,
            outcome,
            quick,
        } = self.route(request, client, host, arrival).await;
        let inner = &self.inner;
        if outcome != CacheOutcome::Hit {
            // A hit's head is what the cache stored: without hop-by-hop fields already.
            headers::strip_hop_by_hop(response.headers_mut());
        }
        if !quick {
            headers::add_via(response.headers_mut(), &inner.settings.via);
        }
        if response.extensions_mut().remove::<Close>().is_some() {
            // What is left of this request on the connection cannot be trusted to end where
            // the next request begins.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if outcome == CacheOutcome::Bypass && route.is_none() {
            // The proxy's own answer: nothing was forwarded or looked up.
            CacheStatus::forwarded(Fwd::Bypass)
                .add_to(&inner.settings.cache_name, response.headers_mut());
        }
        let elapsed = started.elapsed();
        inner
            .metrics
            .answered(route.as_deref(), response.status(), outcome, elapsed);
        info!(
            target: "edge_proxy::access",
            %client,
            peer = arrival == Arrival::Peer,
            %method,
            host = host.unwrap_or("-"),
            path = path.as_deref().unwrap_or("-"),
            status = response.status().as_u16(),
            route = route.as_deref().unwrap_or("-"),
            cache = outcome.as_str(),
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
        response
    }

    /// Finds the route and serves the request through it.
    async fn route(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        host: Option<&str>,
        arrival: Arrival,
    ) -> Routed {
        let inner = &self.inner;
        let bypass = CacheOutcome::Bypass;
        if headers::loop_detected(request.headers(), &inner.settings.via, MAX_HOPS) {
            let answer = body::text(
                StatusCode::LOOP_DETECTED,
                "this request has already passed through this node",
            );
            return Routed::new(answer, None, bypass);
        }
        if let Some(length) = content_length(request.headers())
            && length > inner.settings.max_body_bytes
        {
            let mut answer = body::text(StatusCode::PAYLOAD_TOO_LARGE, &self.too_large());
            answer.extensions_mut().insert(Close);
            return Routed::new(answer, None, bypass);
        }
        let snapshot = self.snapshot();
        let Some(route) = snapshot.routing.table.find(host, request.uri().path()) else {
            let answer = body::text(StatusCode::NOT_FOUND, "no route for this host and path");
            return Routed::new(answer, None, bypass);
        };
        let name = route.name.clone();
        let cache = route_cache(route);
        // A fresh answer to a plain request is sent before anything is made for a trip to a
        // backend; the rest ask the cache again below.
        let via = inner.settings.via.header_value();
        if let Some(answer) = inner.cache.quick_hit(&request, &cache, via) {
            return Routed {
                response: answer,
                route: Some(name),
                outcome: CacheOutcome::Hit,
                quick: true,
            };
        }
        let Some(target) = tiers::pick(route, fastrand::u64(..)) else {
            let answer = body::text(StatusCode::SERVICE_UNAVAILABLE, "the route has no backend");
            return Routed::new(answer, Some(name), bypass);
        };
        let Some(chooser) = snapshot.choosers.get(&route.name) else {
            let answer = body::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the route has no chooser",
            );
            return Routed::new(answer, Some(name), bypass);
        };
        let too_large = Arc::new(AtomicBool::new(false));
        let request = self.prepare(request, client, host, too_large.clone());
        let host = host.and_then(|h| HeaderValue::try_from(h).ok());
        let forward: Arc<dyn Origin> = match waking(&snapshot.routing, &target.target) {
            Some((workload, activity)) => Arc::new(Waking {
                proxy: self.clone(),
                workload,
                activity,
                target: target.target.clone(),
                route: route.clone(),
                chooser: chooser.clone(),
                host,
                arrival,
            }),
            None => {
                let backends = backends_for(&snapshot.routing, route, &target.target, arrival);
                Arc::new(self.forward(route, chooser, host, backends))
            }
        };
        let (response, outcome) = inner.cache.serve(request, &cache, &forward).await;
        if too_large.load(Ordering::Acquire) {
            let mut answer = body::text(StatusCode::PAYLOAD_TOO_LARGE, &self.too_large());
            answer.extensions_mut().insert(Close);
            return Routed::new(answer, Some(name), outcome);
        }
        Routed::new(response, Some(name), outcome)
    }

    /// One request's way to `backends` by `route`.
    fn forward(
        &self,
        route: &Route,
        chooser: &Chooser,
        host: Option<HeaderValue>,
        backends: Vec<Backend>,
    ) -> Forward {
        Forward {
            upstreams: self.inner.upstreams.clone(),
            route: route.name.clone(),
            settings: route.settings.clone(),
            backends,
            chooser: chooser.clone(),
            host,
        }
    }

    /// The request as backends see it: hop-by-hop headers gone, `Forwarded`, `Via` and
    /// `traceparent` added, its body held to the limit.
    fn too_large(&self) -> String {
        format!(
            "the request body is over the limit of {} bytes",
            self.inner.settings.max_body_bytes
        )
    }

    fn prepare(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        host: Option<&str>,
        too_large: Arc<AtomicBool>,
    ) -> Request<Body> {
        let settings = &self.inner.settings;
        let (mut parts, incoming) = request.into_parts();
        let headers = &mut parts.headers;
        headers::strip_hop_by_hop(headers);
        headers::add_forwarded(headers, client.ip(), host, "http");
        headers::add_via(headers, &settings.via);
        let trace = match headers.get("traceparent").and_then(TraceParent::parse) {
            Some(parent) => parent.child(fastrand::u64(..)),
            None => TraceParent::start(fastrand::u64(..), fastrand::u64(..), fastrand::u64(..)),
        };
        headers.insert("traceparent", trace.to_header_value());
        let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(incoming, limit)
            .map_err(move |error| {
                if error.is::<LengthLimitError>() {
                    too_large.store(true, Ordering::Release);
                }
                error
            })
            .boxed_unsync();
        Request::from_parts(parts, body)
    }
}

impl Handler for Proxy {
    fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(self.clone().serve(request, client, Arrival::Client))
    }
}

/// The proxy as the peer listener serves it: requests other nodes sent here, answered by the
/// instances on this node only ([`Proxy::from_peers`]).
#[derive(Clone, Debug)]
pub struct FromPeers(Proxy);

impl Handler for FromPeers {
    fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(self.0.clone().serve(request, client, Arrival::Peer))
    }
}

/// The host a request names: its `Host` header (shared, not copied), else its URI's
/// authority.
fn request_host(request: &Request<Incoming>) -> Option<HeaderValue> {
    request
        .headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned()
        .or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        })
}

/// What [`Proxy::route`] made of a request, for [`Proxy::serve`] to finish.
#[derive(Debug)]
struct Routed {
    response: Response<Body>,
    /// The route's name, when one matched.
    route: Option<String>,
    outcome: CacheOutcome,
    /// Answered by `Cache::quick_hit`, whose head is whole: this node's `Via` is in it.
    quick: bool,
}

impl Routed {
    fn new(response: Response<Body>, route: Option<String>, outcome: CacheOutcome) -> Self {
        Self {
            response,
            route,
            outcome,
            quick: false,
        }
    }
}

/// Marks one of the proxy's own answers after which the connection closes.
#[derive(Debug, Clone, Copy)]
struct Close;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn route_cache(route: &Route) -> RouteCache {
    RouteCache {
        enabled: route.settings.cache,
        stale_if_offline: route.settings.stale_if_offline,
    }
}

/// The workload `target` names and its activity, if it scales to zero.
fn waking(routing: &Routing, target: &Target) -> Option<(String, Arc<Activity>)> {
    let Target::Workload { workload, .. } = target else {
        return None;
    };
    let activity = routing.scale_to_zero.get(workload)?;
    Some((workload.clone(), activity.clone()))
}

/// The way to a workload that scales to zero, as the cache sees its origin: only a miss
/// reaches it, so a fresh stored answer never wakes the workload.
struct Waking {
    proxy: Proxy,
    workload: String,
    activity: Arc<Activity>,
    target: Target,
    route: Route,
    chooser: Chooser,
    host: Option<HeaderValue>,
    arrival: Arrival,
}

impl Origin for Waking {
    fn fetch(
        &self,
        request: Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, OriginError>> + Send + '_>> {
        Box::pin(self.send(request))
    }
}

impl Waking {
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, OriginError> {
        // Counted for pre-warming whether it finds the workload awake or wakes it.
        self.activity.arrived();
        let in_flight = match self.admit().await {
            Ok(token) => token,
            Err(answer) => return Ok(answer),
        };
        // Read after the token: the routing a wake set before it opened the activity, or a
        // newer one.
        let backends = backends_for(
            &self.proxy.snapshot().routing,
            &self.route,
            &self.target,
            self.arrival,
        );
        let forward = self
            .proxy
            .forward(&self.route, &self.chooser, self.host.clone(), backends);
        let response = forward.fetch(request).await?;
        // The workload stays up until the answer's body has gone on or been dropped.
        Ok(response.map(|body| {
            body.map_frame(move |frame| {
                let _held = &in_flight;
                frame
            })
            .boxed_unsync()
        }))
    }

    /// A token to forward with, after waking the workload if it is dormant; else the 503 to
    /// answer. Waiting counts against the route's timeout.
    async fn admit(&self) -> Result<InFlight, Response<Body>> {
        let deadline = tokio::time::Instant::now() + self.route.settings.timeout;
        for _ in 0..MAX_WAKES {
            if let Some(token) = self.activity.enter(Instant::now()) {
                return Ok(token);
            }
            let Some(waker) = self.proxy.waker() else {
                return Err(unavailable("the workload is scaled to zero"));
            };
            match tokio::time::timeout_at(deadline, waker.wake(&self.workload)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!(workload = %self.workload, %error, "cannot wake the workload");
                    return Err(unavailable("the workload could not be started"));
                }
                Err(_) => {
                    warn!(workload = %self.workload, timeout_ms = u64::try_from(self.route.settings.timeout.as_millis()).unwrap_or(u64::MAX), "the workload was not ready within the route's timeout");
                    return Err(unavailable("the workload did not start in time"));
                }
            }
        }
        self.activity
            .enter(Instant::now())
            .ok_or_else(|| unavailable("the workload could not be started"))
    }
}

fn unavailable(why: &str) -> Response<Body> {
    body::text(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// Where `target` of `route` can be served from now. A workload: its instances here, and
/// unless the request came from a peer, its instances on peers and the route's origins (the
/// tiers are chosen per attempt, by availability). An origin: itself.
fn backends_for(
    routing: &Routing,
    route: &Route,
    target: &Target,
    arrival: Arrival,
) -> Vec<Backend> {
    let (workload, port) = match target {
        Target::Workload { workload, port } => (workload, *port),
        Target::Origin(origin) => return vec![Backend::origin(origin.clone())],
    };
    let local = routing.local.get(workload).into_iter().flatten();
    let mut backends: Vec<Backend> = local
        .map(|ip| Backend::local(SocketAddr::new(*ip, port)))
        .collect();
    if arrival == Arrival::Client {
        let peers = routing.peers.get(workload).into_iter().flatten();
        backends.extend(peers.map(|p| Backend::peer(p.addr, p.node, p.distance_km)));
        backends.extend(tiers::fallback(route).cloned().map(Backend::origin));
    }
    backends
}

/// Every backend `routing` can send to.
fn backends_of(routing: &Routing) -> Vec<BackendAddr> {
    routing
        .table
        .routes()
        .iter()
        .flat_map(|r| r.targets.iter().map(move |t| (r, t)))
        .flat_map(|(r, t)| backends_for(routing, r, &t.target, Arrival::Client))
        .map(|b| b.addr)
        .collect()
}
