//! `edge-node`: the node daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_daemon::config::{ConfigFile, FromFile};
use node_daemon::notify::Notifier;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "edge-node", version, about = "Edge node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: enroll on first start, then keep a session with the orchestrator.
    Run {
        /// The node's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and print what the node would use.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    node_daemon::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            let file = ConfigFile::load(&config)?;
            match file.complete(None) {
                Ok(config) => println!("{config:#?}"),
                // Valid, with the rest to come from a join file on first start.
                Err(_) if !file.join_files().is_empty() => println!("{file:#?}"),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        Command::Run { config } => {
            let config = ConfigFile::load(&config)?;
            // One worker thread: the node is I/O-bound and runs on 512 MB boards.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(node_daemon::service::run(
                config,
                Notifier::from_env(),
                shutdown_signal(),
            ))?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
