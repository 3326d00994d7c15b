//! The orchestrator inside a tool's own process, started as `edge-orchestrator serve` starts
//! it, on loopback ports the OS picks, so that a run never collides with another.

use orchestrator::app::Orchestrator;
use orchestrator::artifacts::ArtifactStore;
use std::path::Path;
use std::sync::Arc;

/// Starts an orchestrator over the data dir `dir`, its QUIC and API sockets on 127.0.0.1.
/// Call it inside the runtime that is to run the orchestrator: its tasks go there.
pub async fn start_orchestrator(dir: &Path) -> anyhow::Result<Orchestrator> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(Orchestrator::start(dir, udp, tcp).await?)
}

/// The orchestrator's artifact store, what `POST /v1/artifacts` puts into.
pub fn artifact_store(orch: &Orchestrator) -> anyhow::Result<Arc<ArtifactStore>> {
    Ok(orch.artifacts.clone())
}
