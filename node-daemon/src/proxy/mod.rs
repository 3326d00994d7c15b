//! The node's proxy in the daemon: started when the config has a `[proxy]` table, routed by
//! the `[[expose]]` of the workloads this node runs and the config's `[[proxy.upstream]]`.
//!
//! The proxy itself is crate `edge-proxy`; this module only feeds it: it binds the listener,
//! opens the cache under the data dir, and rebuilds the routing whenever a workload changes
//! state (an instance is a backend while it runs). A new routing applies from the next
//! request on. A workload that scales to zero is woken by a request and put back to sleep
//! when idle by [`wake`], which also sets every routing.

use crate::supervisor::{InstanceStatus, State, Supervisor, WorkloadSpec};
use edge_proxy::cache::{Cache, CacheConfig, Clock, DiskConfig};
use edge_proxy::{Limits, Proxy, ProxyMetrics, Routing, Settings};
use node_core::config::ProxyConfig;
use node_core::proxy::balance::Strategy;
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::route::{Origin, Route, RouteSettings, RouteTable, Target, WeightedTarget};
use node_core::spec::Balance;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
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
    /// The cache's directory under the data dir could not be opened.
    #[error("proxy cache: {0}")]
    Cache(String),
    /// The node's name is not usable in `Via`.
    #[error("proxy: {0}")]
    Name(String),
}

/// The running proxy. Dropping it stops the listener and the routing task.
#[derive(Debug)]
pub struct NodeProxy {
    proxy: Proxy,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeProxy {
    /// Binds the listener, opens the cache, and routes by what `supervisor` runs.
    pub async fn start(
        config: &ProxyConfig,
        node_name: &str,
        data_dir: &Path,
        supervisor: Supervisor,
        metrics: ProxyMetrics,
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
        let proxy = Proxy::new(settings, cache, metrics);
        let limits = Limits {
            max_connections: usize::try_from(config.max_connections()).unwrap_or(usize::MAX),
            header_timeout: config.header_timeout(),
            ..Limits::default()
        };
        let cache_on = sizes.enabled();
        let upstreams = upstream_routes(config);
        let events = supervisor.subscribe();
        let activator = wake::Activator::new(
            proxy.clone(),
            supervisor,
            Box::new(move |served| routing(&upstreams, served, cache_on)),
        );
        activator.refresh();
        proxy.set_waker(activator.waker());
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = tokio::spawn(edge_proxy::serve(listener, limits, proxy.clone(), async {
            let _ = stopped.await;
        }));
        let follow = tokio::spawn(follow(activator, events));
        info!(%addr, "proxy listening");
        Ok(Self {
            proxy,
            addr,
            stop: Some(stop),
            tasks: vec![serve, follow],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The listener drains on its own once told; the routing task has nothing to finish.
        if let Some(follow) = self.tasks.get(1) {
            follow.abort();
        }
    }
}

/// Rebuilds the routing on every change of what the supervisor runs. Holds the activator,
/// which ends with this task.
async fn follow(activator: wake::Activator, mut events: broadcast::Receiver<InstanceStatus>) {
    loop {
        match events.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
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
/// backend while it runs, then the config's upstreams.
fn routing(
    upstreams: &[Route],
    served: &[(WorkloadSpec, InstanceStatus)],
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
            routes.push(Route {
                name: spec.name.clone(),
                host: e.host.clone(),
                path_prefix: e.path_prefix.clone(),
                targets: vec![WeightedTarget {
                    target: Target::Workload {
                        workload: spec.name.clone(),
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
            });
        }
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
        ..Routing::default()
    }
}

fn strategy(balance: Balance) -> Strategy {
    match balance {
        Balance::PeakEwma => Strategy::PeakEwma,
        Balance::RoundRobin => Strategy::RoundRobin,
        Balance::LeastRequests => Strategy::LeastRequests,
    }
}
