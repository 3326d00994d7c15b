//! A whole orchestrator in one value: store, CA, QUIC server and operator API, started on
//! already-bound sockets and stopped cleanly. `edge-orchestrator serve`, the demo and the test
//! harness all start it the same way.
//!
//! This is where the handles are made and handed out: [`Handles::open`] opens the registry
//! and the deployments from the store; the QUIC server ([`Server`]) and the API
//! ([`ApiState`]) each take the ones they need.

use crate::api::{self, ApiState};
use crate::artifacts::ArtifactStore;
use crate::auth::{AdminTokenError, ApiAuth, admin_token_at_start};
use crate::deployer::Deployer;
use crate::links::{NodeLinks, close_code};
use crate::metrics::Metrics;
use crate::registry::{self, Registry};
use crate::reports::Reports;
use crate::server::{self, EndpointError, Gate, Server, serve};
use crate::store::SledStore;
use edge_proto::NodeId;
use orchestrator_core::pacing::PacingPolicy;
use orchestrator_core::store::{Store, StoreError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] registry::OpenError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The admin token could not be kept or issued, or its file written.
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    /// The data dir, the admin token file or an API socket.
    #[error("{0}")]
    Io(std::io::Error),
}

/// The orchestrator's state opened from its store, as the handles its parts share.
#[derive(Debug, Clone)]
pub struct Handles {
    pub registry: Arc<Registry>,
    pub deployments: Arc<Deployer>,
    pub links: Arc<NodeLinks>,
    pub reports: Arc<Reports>,
    pub metrics: Arc<Metrics>,
}

impl Handles {
    /// Loads the CA, the registry and the deployments from `store` (making the CA on first
    /// start) and starts the deployments' committer.
    pub fn open(store: Arc<dyn Store>) -> Result<Self, StartError> {
        Self::open_with(store, crate::pki::NODE_CERT_VALIDITY)
    }

    /// [`Handles::open`], signing node certificates valid for `node_cert_validity`.
    pub fn open_with(
        store: Arc<dyn Store>,
        node_cert_validity: Duration,
    ) -> Result<Self, StartError> {
        let registry = Arc::new(Registry::open_with(store.clone(), node_cert_validity)?);
        let links = Arc::new(NodeLinks::default());
        let nodes: Vec<_> = registry.fleet().nodes().cloned().collect();
        let metrics = Arc::new(Metrics::new());
        let deployments = Arc::new(Deployer::open(
            store,
            nodes,
            links.clone(),
            metrics.clone(),
        )?);
        let (online, offline) = registry.fleet().counts();
        metrics.set_node_counts(online, offline);
        Ok(Self {
            registry,
            deployments,
            links,
            reports: Arc::new(Reports::default()),
            metrics,
        })
    }

    /// What the QUIC server takes.
    pub fn server(&self, artifacts: Option<Arc<ArtifactStore>>) -> Server {
        Server {
            registry: self.registry.clone(),
            deployments: self.deployments.clone(),
            links: self.links.clone(),
            reports: self.reports.clone(),
            metrics: self.metrics.clone(),
            models: artifacts
                .as_ref()
                .map(|a| Arc::new(crate::models::ModelStore::new(a.clone()))),
            artifacts,
            pacing: Arc::new(Gate::new(PacingPolicy::default())),
        }
    }

    /// What the operator API takes.
    pub fn api(&self, auth: Arc<ApiAuth>, artifacts: Option<Arc<ArtifactStore>>) -> ApiState {
        ApiState {
            registry: self.registry.clone(),
            deployments: self.deployments.clone(),
            links: self.links.clone(),
            reports: self.reports.clone(),
            metrics: self.metrics.clone(),
            images: artifacts
                .as_ref()
                .map(|a| Arc::new(crate::images::ImageStore::new(a.clone()))),
            models: artifacts
                .as_ref()
                .map(|a| Arc::new(crate::models::ModelStore::new(a.clone()))),
            artifacts,
            auth,
        }
    }
}

/// Hands the wall clock to the deployments every [`crate::deployer::TICK`], so a deadline
/// (a node away longer than `max_disconnect_secs`) passes with no message arriving.
async fn tick(deployments: Arc<Deployer>) {
    let mut every = tokio::time::interval(crate::deployer::TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Carried out by the committer in order; nothing here waits on it.
        drop(deployments.tick(crate::clock::now_ms()));
    }
}

/// A running orchestrator.
pub struct Orchestrator {
    /// Where the registry and the deployments are kept.
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub deployments: Arc<Deployer>,
    pub links: Arc<NodeLinks>,
    pub reports: Arc<Reports>,
    pub metrics: Arc<Metrics>,
    pub artifacts: Arc<ArtifactStore>,
    pub auth: Arc<ApiAuth>,
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The admin API token, kept across restarts, in `admin_token_path`.
    pub admin_token: String,
    pub admin_token_path: PathBuf,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("quic_addr", &self.quic_addr)
            .field("api_addr", &self.api_addr)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Orchestrator {
    /// Opens the state in `data_dir` (creating the CA on first start) and serves on the given
    /// sockets, with the default hello pacing.
    pub async fn start(
        data_dir: &Path,
        quic_socket: std::net::UdpSocket,
        api_listener: tokio::net::TcpListener,
    ) -> Result<Self, StartError> {
        Self::start_with(data_dir, quic_socket, api_listener, PacingPolicy::default()).await
    }

    /// [`Orchestrator::start`], pacing hellos with `pacing`.
    pub async fn start_with(
        data_dir: &Path,
        quic_socket: std::net::UdpSocket,
        api_listener: tokio::net::TcpListener,
        pacing: PacingPolicy,
    ) -> Result<Self, StartError> {
        let validity = crate::pki::NODE_CERT_VALIDITY;
        Self::start_certifying(data_dir, quic_socket, api_listener, pacing, validity).await
    }

    /// [`Orchestrator::start_with`], signing node certificates valid for
    /// `node_cert_validity`.
    pub async fn start_certifying(
        data_dir: &Path,
        quic_socket: std::net::UdpSocket,
        api_listener: tokio::net::TcpListener,
        pacing: PacingPolicy,
        node_cert_validity: Duration,
    ) -> Result<Self, StartError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(data_dir).map_err(StartError::Io)?;
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&data_dir.join("state"))?);
        let handles = Handles::open_with(store.clone(), node_cert_validity)?;
        let auth = Arc::new(ApiAuth::load_or_create(store.clone())?);
        let (admin_token, admin_token_path) = admin_token_at_start(&auth, data_dir)?;
        let endpoint = server::endpoint(&handles.registry, quic_socket)?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(|e| StartError::Endpoint(EndpointError::Bind(e)))?;
        let api_addr = api_listener.local_addr().map_err(StartError::Io)?;
        let artifacts = Arc::new(ArtifactStore::open(data_dir).map_err(StartError::Io)?);
        // The place model pushed before, if any: placement uses it from the first deploy.
        crate::placement::load_stored(
            &crate::models::ModelStore::new(artifacts.clone()),
            &handles.deployments,
        )
        .await;
        let api_state = handles.api(auth.clone(), Some(artifacts.clone()));
        let server = Arc::new(Server {
            pacing: Arc::new(Gate::new(pacing)),
            ..handles.server(Some(artifacts.clone()))
        });
        let tasks = vec![
            tokio::spawn(serve(endpoint.clone(), server)),
            tokio::spawn(api::serve(api_listener, api_state)),
            tokio::spawn(tick(handles.deployments.clone())),
        ];
        let ca_hash = handles.registry.ca().hash();
        tracing::info!(%quic_addr, %api_addr, %ca_hash, "orchestrator ready");
        let Handles {
            registry,
            deployments,
            links,
            reports,
            metrics,
        } = handles;
        Ok(Self {
            store,
            registry,
            deployments,
            links,
            reports,
            metrics,
            artifacts,
            auth,
            quic_addr,
            api_addr,
            admin_token,
            admin_token_path,
            endpoint,
            tasks,
        })
    }

    /// Binds the given addresses and starts, pacing hellos with `pacing` and signing node
    /// certificates valid for `node_cert_validity`.
    pub async fn bind(
        data_dir: &Path,
        quic_listen: SocketAddr,
        api_listen: SocketAddr,
        pacing: PacingPolicy,
        node_cert_validity: Duration,
    ) -> Result<Self, StartError> {
        let udp = std::net::UdpSocket::bind(quic_listen)
            .map_err(|e| StartError::Endpoint(EndpointError::Bind(e)))?;
        let tcp = tokio::net::TcpListener::bind(api_listen)
            .await
            .map_err(StartError::Io)?;
        Self::start_certifying(data_dir, udp, tcp, pacing, node_cert_validity).await
    }

    /// Forgets a node and closes its session; its instances go elsewhere. `Ok(false)` if
    /// there was no such node. Blocking: it writes to the store.
    pub fn delete_node(&self, id: NodeId) -> Result<bool, StoreError> {
        crate::node_admin::delete_node(&self.registry, &self.links, &self.deployments, id)
    }

    /// Closes every node connection and stops serving. The UDP socket and the store are
    /// released once the last connection task has finished, shortly after this returns.
    pub async fn shutdown(self) {
        self.endpoint
            .close(close_code(None), b"orchestrator shutting down");
        self.links.forget_connections();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
