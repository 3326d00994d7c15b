//! The node's proxy in the daemon: started when the config has a `[proxy]` table, routed by
//! the `[[expose]]` of the workloads this node runs, the routes the orchestrator sends for
//! workloads on other nodes ([`peers`]), and the config's `[[proxy.upstream]]`.
//!
//! The proxy itself is crate `edge-proxy`; this module only feeds it: it binds the listeners,
//! opens the cache under the data dir, and rebuilds the routing whenever a workload changes
//! state (an instance is a backend while it runs) or the peer routes change. It never holds a
//! request: a new routing applies from the next request on. A workload that scales to zero
//! is woken by a request and put back to sleep when idle by [`wake`], which also sets every
//! routing; [`prewarm`] may wake it before a request the warming model ([`warm_model`])
//! expects, through the same wake, and keep it up past its idle time
//! ([`NodeProxy::start_prewarm`], on unless `[proxy] prewarm = false`).
//!
//! With `peer_listen`, once the node has its identity ([`NodeProxy::serve_peers`]), a second
//! listener serves other nodes over mutual TLS (`edge_proxy::peer_tls`), bounded as the
//! first, and the proxy reaches peers as this node.

pub mod peers;
pub mod prewarm;
pub mod purge;
pub mod route_model;
pub mod samples;
pub mod traffic;
pub mod warm_model;

use crate::supervisor::{InstanceStatus, State, Supervisor, WorkloadSpec};
use edge_proto::{Location, NodeId, WorkloadRoutes};
use edge_proxy::cache::{Cache, CacheConfig, Clock, DiskConfig};
use edge_proxy::{Limits, PeerTls, Proxy, ProxyMetrics, Routing, Settings};
use node_core::config::ProxyConfig;
use node_core::proxy::balance::Strategy;
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::route::{Origin, Route, RouteSettings, RouteTable, Target, WeightedTarget};
use node_core::spec::{Balance, Expose};
use peers::PeerRoutes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

mod wake;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Binding `[proxy] listen` failed: in use, or a privileged port without the capability.
    #[error("cannot listen on proxy.listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Binding `[proxy] peer_listen` failed.
    #[error("cannot listen on proxy.peer_listen {addr}: {source}")]
    PeerListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The cache's directory under the data dir could not be opened.
    #[error("proxy cache: {0}")]
    Cache(String),
    /// The node's name is not usable in `Via`.
    #[error("proxy: {0}")]
    Name(String),
}

/// The running proxy. Dropping it stops the listeners and the routing task.
#[derive(Debug)]
pub struct NodeProxy {
    proxy: Proxy,
    addr: SocketAddr,
    limits: Limits,
    /// `[proxy] peer_listen`, and where it listens once it does.
    peer_listen: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    peers: Arc<Mutex<PeerRoutes>>,
    /// Told when the peer routes change, for the routing task.
    peers_changed: Arc<Notify>,
    stop: Vec<oneshot::Sender<()>>,
    follow: JoinHandle<()>,
    /// Wakes and sleeps the workloads that scale to zero; the routing task holds it too.
    activator: wake::Activator,
    /// Pre-warming, once started ([`NodeProxy::start_prewarm`]).
    prewarm: Option<(crate::task::AbortOnDrop, prewarm::ModelSwap)>,
}

impl NodeProxy {
    /// Binds the listener, opens the cache, and routes by what `supervisor` runs.
    pub async fn start(
        config: &ProxyConfig,
        node_name: &str,
        data_dir: &Path,
        supervisor: Supervisor,
        metrics: ProxyMetrics,
        here: Option<Location>,
    ) -> Result<Self, ProxyError> {
        let listener = tokio::net::TcpListener::bind(config.listen())
            .await
            .map_err(|source| ProxyError::Listen {
                addr: config.listen(),
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(config.listen());
        let sizes = config.cache();
        let disk = (sizes.disk_bytes > 0).then(|| DiskConfig {
            dir: data_dir.join("proxy-cache"),
            max_bytes: sizes.disk_bytes,
        });
        let cache_config = CacheConfig {
            name: node_name.to_owned(),
            memory_bytes: sizes.memory_bytes,
            disk,
            max_object_bytes: sizes.max_object_bytes,
            clock: Clock::system(),
        };
        // Opening reads the disk store's directory: off the runtime's threads.
        let cache = tokio::task::spawn_blocking(move || Cache::open(cache_config))
            .await
            .map_err(|e| ProxyError::Cache(e.to_string()))?
            .map_err(|e| ProxyError::Cache(e.to_string()))?;
        let via = ViaName::new(node_name).map_err(|e| ProxyError::Name(e.to_string()))?;
        let cache_name = CacheName::new(node_name).map_err(|e| ProxyError::Name(e.to_string()))?;
        let settings = Settings {
            via,
            cache_name,
            max_body_bytes: config.max_body_bytes(),
        };
        // Its routing model comes from `crate::models`, which the daemon starts next.
        let proxy = Proxy::new(settings, cache, metrics);
        let limits = Limits {
            max_connections: usize::try_from(config.max_connections()).unwrap_or(usize::MAX),
            header_timeout: config.header_timeout(),
            ..Limits::default()
        };
        let cache_on = sizes.enabled();
        let upstreams = upstream_routes(config);
        let events = supervisor.subscribe();
        let peers = Arc::new(Mutex::new(PeerRoutes::new(None, here)));
        let peers_changed = Arc::new(Notify::new());
        let members = supervisor.watch_members();
        let activator = {
            let peers = peers.clone();
            wake::Activator::new(
                proxy.clone(),
                supervisor,
                Box::new(move |served| routing(&upstreams, served, &lock(&peers), cache_on)),
            )
        };
        activator.refresh();
        proxy.set_waker(activator.waker());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(edge_proxy::serve(listener, limits, proxy.clone(), async {
            let _ = stopped.await;
        }));
        let follow = tokio::spawn(follow(
            activator.clone(),
            events,
            Follow {
                members,
                changed: peers_changed.clone(),
            },
        ));
        info!(%addr, "proxy listening");
        Ok(Self {
            proxy,
            addr,
            limits,
            peer_listen: config.peer_listen(),
            peer_addr: None,
            peers,
            peers_changed,
            stop: vec![stop],
            follow,
            activator,
            prewarm: None,
        })
    }

    /// Starts pre-warming the workloads that scale to zero, as `config` says (`prewarm`,
    /// `prewarm_threshold_percent`), with the warming model in `data_dir` or the built-in
    /// one, loaded when the first workload that scales to zero appears; shows who decides
    /// on `board`. A second call changes nothing. The handle through
    /// which a new model replaces the one in use; `None` when pre-warming is off.
    pub async fn start_prewarm(
        &mut self,
        config: &ProxyConfig,
        data_dir: &Path,
        board: &crate::status::StatusBoard,
    ) -> Option<prewarm::ModelSwap> {
        if let Some((_, swap)) = &self.prewarm {
            return Some(swap.clone());
        }
        if !config.prewarm() {
            prewarm::show_off(board);
            return None;
        }
        let threshold = f32::from(config.prewarm_threshold_percent()) / 100.0;
        let (task, swap) = prewarm::start(
            self.activator.clone(),
            data_dir.to_owned(),
            threshold,
            board.clone(),
        )
        .await;
        self.prewarm = Some((task, swap.clone()));
        Some(swap)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves peers on `[proxy] peer_listen` and reaches them, as `node` with `tls`: called
    /// once the node has its identity. Where it listens; `None` without `peer_listen`. Once
    /// serving, a second call changes nothing.
    pub async fn serve_peers(
        &mut self,
        tls: &PeerTls,
        node: NodeId,
    ) -> Result<Option<SocketAddr>, ProxyError> {
        let Some(listen) = self.peer_listen else {
            return Ok(None);
        };
        if self.peer_addr.is_some() {
            return Ok(self.peer_addr);
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::PeerListen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(listen);
        self.proxy.set_peer_tls(tls);
        lock(&self.peers).set_own(node);
        self.peers_changed.notify_one();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(edge_proxy::serve_tls(
            listener,
            self.limits,
            tls.acceptor(),
            self.proxy.from_peers(),
            async {
                let _ = stopped.await;
            },
        ));
        self.stop.push(stop);
        self.peer_addr = Some(addr);
        info!(%addr, "proxy serving peers");
        Ok(Some(addr))
    }

    /// Where peers reach this node's proxy, if it serves them.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The orchestrator's routes for one workload on other nodes; a bad message is logged and
    /// dropped.
    pub fn routes(&self, routes: &WorkloadRoutes) {
        if let Err(error) = lock(&self.peers).set(routes) {
            warn!(%error, "peer routes refused");
            return;
        }
        self.peers_changed.notify_one();
    }

    /// This node is somewhere else now: peers are ordered by their distance from `here`.
    pub fn moved(&self, here: Option<Location>) {
        if lock(&self.peers).set_here(here) {
            self.peers_changed.notify_one();
        }
    }

    /// The workload is no longer exposed.
    pub fn unroute(&self, workload: &str) {
        if lock(&self.peers).unroute(workload) {
            self.peers_changed.notify_one();
        }
    }

    /// Forgets every peer route: a new session with the orchestrator sends them again.
    pub fn forget_peers(&self) {
        lock(&self.peers).clear();
        self.peers_changed.notify_one();
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        // The listeners drain on their own once told; the routing task has nothing to finish.
        self.follow.abort();
    }
}

/// The peer routes (a short lock, never held across an await).
fn lock(peers: &Mutex<PeerRoutes>) -> MutexGuard<'_, PeerRoutes> {
    // Each change replaces whole entries: consistent across a panic elsewhere.
    peers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the routing task waits for besides the supervisor's status changes.
struct Follow {
    /// Bumped when a workload is added or removed.
    members: watch::Receiver<u64>,
    /// Told when the peer routes change.
    changed: Arc<Notify>,
}

/// Rebuilds the routing on every change of what the supervisor runs or of the peer routes,
/// through the activator, which sets every routing. Holds the activator, which ends with
/// this task.
async fn follow(
    activator: wake::Activator,
    mut events: broadcast::Receiver<InstanceStatus>,
    mut from: Follow,
) {
    // Every wait is cancel-safe: losing the race loses nothing but a wake-up, and the
    // routing is rebuilt from the current state, not from the event.
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = from.members.changed() => if changed.is_err() {
                return;
            },
            () = from.changed.notified() => {}
        }
        activator.refresh();
    }
}

/// The routes of the config's `[[proxy.upstream]]`, named `upstream-N`.
fn upstream_routes(config: &ProxyConfig) -> Vec<Route> {
    config
        .upstreams()
        .iter()
        .enumerate()
        .map(|(i, u)| Route {
            name: format!("upstream-{i}"),
            host: u.host.clone(),
            path_prefix: u.path_prefix.clone(),
            targets: vec![WeightedTarget {
                target: Target::Origin(Origin {
                    host: u.origin.host.clone(),
                    port: u.origin.port,
                    base_path: u.origin.base_path.clone(),
                }),
                weight: 1,
            }],
            settings: RouteSettings {
                timeout: u.timeout(),
                retries: u32::from(u.retries),
                cache: u.cache && config.cache().enabled(),
                stale_if_offline: u.stale_if_offline(),
                balance: strategy(u.balance),
            },
        })
        .collect()
}

/// The routing for what runs now: every workload's `[[expose]]`, with its instance as the
/// backend while it runs, its instances on peers, then the config's upstreams. A workload
/// this node holds is routed by its own spec; one it does not, by the orchestrator's routes.
fn routing(
    upstreams: &[Route],
    served: &[(WorkloadSpec, InstanceStatus)],
    peers: &PeerRoutes,
    cache_on: bool,
) -> Routing {
    let mut routes: Vec<Route> = Vec::new();
    let mut local = HashMap::new();
    for (spec, status) in served {
        if spec.expose.is_empty() {
            continue;
        }
        if matches!(status.state, State::Running) {
            local.insert(spec.name.clone(), vec![spec.probe_address()]);
        }
        for e in &spec.expose {
            routes.push(expose_route(&spec.name, e, cache_on));
        }
    }
    let mut by_peers = HashMap::new();
    for (name, routed) in peers.workloads() {
        if !served.iter().any(|(spec, _)| &spec.name == name) {
            routes.extend(
                routed
                    .expose
                    .iter()
                    .map(|e| expose_route(name, e, cache_on)),
            );
        }
        by_peers.insert(name.clone(), routed.peers.clone());
    }
    routes.extend(upstreams.iter().cloned());
    let table = match RouteTable::new(routes) {
        Ok(table) => table,
        Err(error) => {
            warn!(%error, "routes refused; the proxy routes nothing until they change");
            RouteTable::default()
        }
    };
    Routing {
        table,
        local,
        peers: by_peers,
        ..Routing::default()
    }
}

/// A workload's route to its `port`, wherever its instances run.
fn expose_route(workload: &str, e: &Expose, cache_on: bool) -> Route {
    Route {
        name: workload.to_owned(),
        host: e.host.clone(),
        path_prefix: e.path_prefix.clone(),
        targets: vec![WeightedTarget {
            target: Target::Workload {
                workload: workload.to_owned(),
                port: e.port,
            },
            weight: u32::from(e.weight),
        }],
        settings: RouteSettings {
            timeout: Duration::from_secs(u64::from(e.timeout_secs)),
            retries: u32::from(e.retries),
            cache: e.cache && cache_on,
            stale_if_offline: (e.stale_if_offline_secs > 0)
                .then(|| Duration::from_secs(u64::from(e.stale_if_offline_secs))),
            balance: strategy(e.balance),
        },
    }
}

fn strategy(balance: Balance) -> Strategy {
    match balance {
        Balance::PeakEwma => Strategy::PeakEwma,
        Balance::RoundRobin => Strategy::RoundRobin,
        Balance::LeastRequests => Strategy::LeastRequests,
    }
}
