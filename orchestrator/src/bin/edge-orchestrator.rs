//! `edge-orchestrator`: the fleet's control plane.

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator::app::Orchestrator;
use orchestrator_core::pacing::PacingPolicy;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "edge-orchestrator", version, about = "Edge fleet orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve nodes over QUIC and operators over HTTP.
    Serve {
        /// Where the CA, tokens and registry live. Created on first start.
        #[arg(long)]
        data_dir: PathBuf,
        /// The QUIC address nodes dial.
        #[arg(long, default_value = "0.0.0.0:7443")]
        quic_listen: SocketAddr,
        /// The operator API address.
        #[arg(long, default_value = "127.0.0.1:7480")]
        api_listen: SocketAddr,
        /// Replace the admin API token: issue a new one into DATA_DIR/admin.token and revoke
        /// the old. Without it the token in that file is kept while it is good.
        #[arg(long)]
        rotate_admin_token: bool,
        /// Sessions admitted per second when many nodes reconnect at once; the rest are told
        /// when to come back. 0 turns pacing off: every handshake and hello is taken at once.
        #[arg(long, default_value_t = PacingPolicy::default().sessions_per_sec)]
        admit_per_sec: u32,
        /// Sessions admitted at once after a quiet spell, before the rate applies.
        #[arg(long, default_value_t = PacingPolicy::default().burst)]
        admit_burst: u32,
        /// How long the node certificates it signs are valid, in seconds (default a year).
        /// Nodes renew theirs over their session two thirds of the way through.
        #[arg(long, default_value_t = orchestrator::pki::NODE_CERT_VALIDITY.as_secs(),
              value_parser = clap::value_parser!(u64).range(10..))]
        node_cert_validity_secs: u64,
    },
    /// Start an orchestrator and three local nodes, and show what to try.
    Demo {
        /// The operator API address of the demo.
        #[arg(long, default_value = "127.0.0.1:7480")]
        api_listen: SocketAddr,
        /// Where the demo keeps everything: a directory it creates and removes on exit.
        /// Default: one under the system's temporary directory.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// The edge-node binary to run, instead of building or finding it.
        #[arg(long)]
        node_bin: Option<PathBuf>,
        /// The edge-hello binary to deploy, instead of building or finding it.
        #[arg(long)]
        hello_bin: Option<PathBuf>,
        /// The port the sample service listens on, on each node's address.
        #[arg(long, default_value_t = orchestrator::demo::DEFAULT_HELLO_PORT)]
        hello_port: u16,
        /// The port each node's proxy listens on, on the node's address.
        #[arg(long, default_value_t = orchestrator::demo::DEFAULT_PROXY_PORT)]
        proxy_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edge_shell::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "edge-orchestrator: starting the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln: a closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "edge-orchestrator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            data_dir,
            quic_listen,
            api_listen,
            rotate_admin_token,
            admit_per_sec,
            admit_burst,
            node_cert_validity_secs,
        } => {
            if rotate_admin_token {
                // Without the file, the start issues a new admin token and revokes the others.
                let path = data_dir.join(orchestrator::auth::ADMIN_TOKEN_FILE);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                }
            }
            let pacing = PacingPolicy {
                sessions_per_sec: admit_per_sec,
                burst: admit_burst,
                ..PacingPolicy::default()
            };
            // Before the banner: a supervisor may stop us as soon as it reads it.
            let shutdown = edge_shell::shutdown::Shutdown::listen();
            let orch = Orchestrator::bind(
                &data_dir,
                quic_listen,
                api_listen,
                pacing,
                Duration::from_secs(node_cert_validity_secs),
            )
            .await
            .context("starting the orchestrator")?;
            // One write, its failure ignored: `eprintln!` writes piece by piece and panics
            // if the reader of stderr went away between two pieces (a supervisor that read
            // the first line and stopped).
            let banner = format!(
                "edge-orchestrator: nodes dial {}, operators use http://{}\n\
                 admin API token written to {} (CA {})\n",
                orch.quic_addr,
                orch.api_addr,
                orch.admin_token_path.display(),
                orch.registry.ca().hash()
            );
            let _ = std::io::stderr().write_all(banner.as_bytes());
            shutdown.wait().await;
            orch.shutdown().await;
            Ok(())
        }
        Command::Demo {
            api_listen,
            work_dir,
            node_bin,
            hello_bin,
            hello_port,
            proxy_port,
        } => {
            orchestrator::demo::run(orchestrator::demo::Options {
                api_listen,
                work_dir,
                node_bin,
                hello_bin,
                hello_port,
                proxy_port,
            })
            .await
        }
    }
}
