//! `orchestrator-tuned`: `edge-orchestrator serve` with one change, a larger receive buffer on
//! the QUIC socket (`SO_RCVBUF`), to test whether the fleet simulator's dropped datagrams and
//! one-second handshakes come from the orchestrator's socket overflowing.
//!
//! An experiment for `spine.sh`, not a product: it starts the orchestrator exactly as `serve`
//! does (`Orchestrator::start` on sockets bound here) and prints the same "nodes dial" line.

use anyhow::Context;
use clap::Parser;
use orchestrator::app::Orchestrator;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "orchestrator-tuned",
    about = "edge-orchestrator serve, with SO_RCVBUF set on the QUIC socket"
)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    quic_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    api_listen: SocketAddr,
    /// The receive buffer to ask for; Linux caps it at `net.core.rmem_max` and doubles it.
    #[arg(long, default_value_t = 4 << 20)]
    recv_buffer_bytes: usize,
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before the banner: the benchmark stops it as soon as it has read it.
    let shutdown = edge_shell::shutdown::Shutdown::listen();
    let udp = std::net::UdpSocket::bind(args.quic_listen).context("binding the QUIC socket")?;
    let state = quinn::udp::UdpSocketState::new((&udp).into()).context("UDP socket state")?;
    let before = state.recv_buffer_size((&udp).into())?;
    state
        .set_recv_buffer_size((&udp).into(), args.recv_buffer_bytes)
        .context("setting SO_RCVBUF")?;
    let after = state.recv_buffer_size((&udp).into())?;
    let tcp = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .context("binding the API socket")?;
    let orch = Orchestrator::start(&args.data_dir, udp, tcp)
        .await
        .context("starting the orchestrator")?;
    eprintln!(
        "orchestrator-tuned: QUIC socket receive buffer {before} -> {after} bytes\n\
         edge-orchestrator: nodes dial {}, operators use http://{}",
        orch.quic_addr, orch.api_addr
    );
    shutdown.wait().await;
    orch.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    edge_shell::logging::init();
    edge_benches::run_tool("orchestrator-tuned", None, run(args))
}
