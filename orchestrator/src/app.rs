//! A whole orchestrator in one value: store, CA, QUIC server and operator API, started on
//! already-bound sockets and stopped cleanly. `edge-orchestrator serve`, the demo and the test
//! harness all start it the same way.

use crate::api;
use crate::artifacts::ArtifactStore;
use crate::auth::{ADMIN_TOKEN_TTL, ApiAuth, Role, write_admin_token};
use crate::server::{Shared, StartError, serve};
use crate::store::SledStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running orchestrator.
#[derive(Debug)]
pub struct Orchestrator {
    pub shared: Arc<Shared>,
    pub auth: Arc<ApiAuth>,
    pub quic_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// An admin API token, also written to `admin_token_path`.
    pub admin_token: String,
    pub admin_token_path: PathBuf,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl Orchestrator {
    /// Opens the state in `data_dir` (creating the CA on first start) and serves on the given
    /// sockets.
    pub async fn start(
        data_dir: &Path,
        quic_socket: std::net::UdpSocket,
        api_listener: tokio::net::TcpListener,
    ) -> Result<Self, StartError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(data_dir).map_err(StartError::Bind)?;
        let store = SledStore::open(&data_dir.join("state"))?;
        let shared = Shared::open(Arc::new(store))?;
        let auth = Arc::new(ApiAuth::load_or_create(shared.store.as_ref())?);
        let admin_token = auth.issue("admin", Role::Admin, ADMIN_TOKEN_TTL);
        let admin_token_path =
            write_admin_token(data_dir, &admin_token).map_err(StartError::Bind)?;
        let endpoint = shared.endpoint(quic_socket)?;
        let quic_addr = endpoint.local_addr().map_err(StartError::Bind)?;
        let api_addr = api_listener.local_addr().map_err(StartError::Bind)?;
        let artifacts = Arc::new(ArtifactStore::open(data_dir).map_err(StartError::Bind)?);
        let _ = shared.artifacts.set(artifacts.clone());
        let router = api::router_with_artifacts(shared.clone(), auth.clone(), Some(artifacts));
        let tasks = vec![
            tokio::spawn(serve(endpoint.clone(), shared.clone())),
            tokio::spawn(async move {
                if let Err(error) = api::serve(api_listener, router).await {
                    tracing::error!(%error, "operator API stopped");
                }
            }),
        ];
        tracing::info!(%quic_addr, %api_addr, ca_hash = %shared.ca.hash(), "orchestrator ready");
        Ok(Self {
            shared,
            auth,
            quic_addr,
            api_addr,
            admin_token,
            admin_token_path,
            endpoint,
            tasks,
        })
    }

    /// Binds the given addresses and starts.
    pub async fn bind(
        data_dir: &Path,
        quic_listen: SocketAddr,
        api_listen: SocketAddr,
    ) -> Result<Self, StartError> {
        let udp = std::net::UdpSocket::bind(quic_listen).map_err(StartError::Bind)?;
        let tcp = tokio::net::TcpListener::bind(api_listen)
            .await
            .map_err(StartError::Bind)?;
        Self::start(data_dir, udp, tcp).await
    }

    /// Closes every node connection and stops serving. The UDP socket and the store are
    /// released once the last connection task has finished, shortly after this returns.
    pub async fn shutdown(self) {
        self.endpoint.close(
            crate::server::close_code(None),
            b"orchestrator shutting down",
        );
        self.shared.forget_connections();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
