//! What the API tests share: a real API server on 127.0.0.1:0, on a runtime of its own.

#![allow(dead_code)] // Each test file uses what it needs.

use orchestrator::api::{self, Limits};
use orchestrator::app::Handles;
use orchestrator::artifacts::ArtifactStore;
use orchestrator::auth::{ApiAuth, Role};
use orchestrator_core::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// An API server over `store`. Dropping it stops the server.
pub struct Api {
    // Dropped first: the runtime ends the server's tasks.
    rt: tokio::runtime::Runtime,
    pub handles: Handles,
    pub auth: Arc<ApiAuth>,
    pub addr: SocketAddr,
}

impl Api {
    /// Serves the API over `store`, with `artifacts` as its artifact store if any, within
    /// `limits`.
    pub fn start(
        store: Arc<dyn Store>,
        artifacts: Option<Arc<ArtifactStore>>,
        limits: Limits,
    ) -> Api {
        let handles = Handles::open(store.clone()).expect("open the state");
        let auth = Arc::new(ApiAuth::load_or_create(store).expect("API secret"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        rt.spawn(api::serve_with(
            listener,
            handles.api(auth.clone(), artifacts),
            limits,
            std::future::pending(),
        ));
        Api {
            rt,
            handles,
            auth,
            addr,
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A fresh token of `role` for `subject`, good for an hour.
    pub fn token(&self, subject: &str, role: Role) -> String {
        self.auth
            .issue(subject, role, Duration::from_secs(3600))
            .expect("issue")
            .token
    }
}

/// An HTTP client that hands back error statuses as answers, with a generous deadline.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}
