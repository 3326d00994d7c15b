//! The node as a long-running service: what `edge-node run` does around the daemon.
//!
//! It serves the status endpoint from the first second, tells systemd when it is ready and
//! that it is alive, loads the model, and gets the node its settings: from the config file, or
//! on first boot from the join file on the boot partition (see [`crate::provision`]). A node
//! without what it needs to enroll waits for a join file and says so; it never exits to be
//! restarted in a loop. The same goes for a node the orchestrator refused: it waits for a new
//! join file, because on a device nobody can reach that is the only way to fix it.
//!
//! A config file without `join_file` keeps the plain behaviour: a missing setting or a refusal
//! stops the process with the reason.

use crate::config::{ConfigError, ConfigFile};
use crate::daemon::{self, DaemonError};
use crate::identity::IdentityDir;
use crate::notify::Notifier;
use crate::provision::{ProvisionError, Provisioner};
use crate::status::{self, State, Status, StatusBoard};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How often a node waiting for its join file looks again.
pub const JOIN_FILE_POLL: Duration = Duration::from_secs(2);

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on status_listen {addr}: {source}")]
    StatusListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs the node described by `file` until `shutdown` completes.
pub async fn run(
    file: ConfigFile,
    notifier: Notifier,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let board = StatusBoard::new();
    board.update(|s| s.name = file.name().map(str::to_owned));
    if let Some(addr) = file.status_listen() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::StatusListen { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        info!(addr = %local, "status endpoint listening");
        tokio::spawn(status::serve(listener, board.clone()));
    }
    let _model = load_model(&board);
    let notifier = Arc::new(notifier);
    // Subscribed here, not in the task: the task first runs after the state has changed.
    tokio::spawn(tell_systemd(notifier.clone(), board.subscribe()));
    notifier.ready();

    tokio::pin!(shutdown);
    if file.join_files().is_empty() {
        let config = file.complete(None)?;
        daemon::run_with(config, board.clone(), shutdown.as_mut()).await?;
    } else {
        let provisioner = Provisioner::new(file.join_files(), file.data_dir());
        let mut failed = false;
        while let Some(config) =
            settings(&file, &provisioner, &board, failed, shutdown.as_mut()).await?
        {
            match daemon::run_with(config, board.clone(), shutdown.as_mut()).await {
                Ok(()) => break,
                Err(DaemonError::Fatal(why)) => {
                    error!(error = %why, "the node cannot go on; waiting for a new join file");
                    board.set(
                        State::Failed,
                        format!("{why}; write a new join file to re-provision the node"),
                    );
                    failed = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    board.set(State::Stopping, "stopping");
    notifier.stopping();
    Ok(())
}

/// The config to run the daemon with, or `None` on shutdown. Waits for a join file while the
/// node has nothing to enroll with, or (`failed`) until a new one replaces the one refused.
/// A bad join file is reported and waited out, never fatal: the operator fixes it in place.
async fn settings(
    file: &ConfigFile,
    provisioner: &Provisioner,
    board: &StatusBoard,
    mut failed: bool,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<crate::config::Config>, ServiceError> {
    let mut reported = String::new();
    loop {
        let problem = match provisioner.take() {
            Ok(Some((path, _))) => {
                info!(path = %path.display(), stored = %provisioner.stored_path().display(),
                    "join file moved off the boot partition");
                board.update(|s| s.join_file = Some(path.display().to_string()));
                if failed {
                    // The new file is the operator's answer to the refusal: enroll afresh.
                    IdentityDir::new(file.data_dir())
                        .forget()
                        .map_err(DaemonError::from)?;
                    failed = false;
                }
                None
            }
            Ok(None) => None,
            Err(e) => Some((State::JoinFileInvalid, e.to_string())),
        };
        let problem = match problem {
            Some(p) => Some(p),
            None if failed => None,
            None => match usable(file, provisioner) {
                Ok(config) => return Ok(Some(config)),
                Err(e) => Some(e),
            },
        };
        if let Some((state, message)) = problem
            && message != reported
        {
            match state {
                State::WaitingForJoinFile => warn!(reason = %message, "not enrolled"),
                _ => error!(reason = %message, "join file refused"),
            }
            board.set(state, message.clone());
            reported = message;
        }
        tokio::select! {
            () = shutdown.as_mut() => return Ok(None),
            () = tokio::time::sleep(JOIN_FILE_POLL) => {}
        }
    }
}

/// The config from the file and the stored join file, if the node can run with it: it has an
/// identity already, or settings to enroll with. Otherwise the state to report and why.
fn usable(
    file: &ConfigFile,
    provisioner: &Provisioner,
) -> Result<crate::config::Config, (State, String)> {
    let waiting = || {
        let paths: Vec<String> = file
            .join_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        (
            State::WaitingForJoinFile,
            format!(
                "not enrolled; waiting for a join file at {}",
                paths.join(" or ")
            ),
        )
    };
    let stored = provisioner
        .stored()
        .map_err(|e| (State::JoinFileInvalid, e.to_string()))?;
    let config = file.complete(stored.as_ref()).map_err(|e| {
        if stored.is_none() && !file.join_files().is_empty() {
            waiting()
        } else {
            (State::JoinFileInvalid, e.to_string())
        }
    })?;
    if config.join().is_some() || enrolled(file.data_dir()) {
        Ok(config)
    } else {
        Err(waiting())
    }
}

fn enrolled(data_dir: &Path) -> bool {
    matches!(IdentityDir::new(data_dir).load(), Ok(Some(_)))
}

/// Mirrors the status into `systemctl status` and keeps systemd's watchdog fed. The watchdog
/// runs on the daemon's own runtime, so a stuck runtime stops the keep-alives.
async fn tell_systemd(notifier: Arc<Notifier>, mut changes: watch::Receiver<Status>) {
    changes.mark_changed();
    let mut keepalive = notifier.watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let status = changes.borrow_and_update().clone();
                notifier.status(&status.message);
            }
            _ = async {
                match keepalive.as_mut() {
                    Some(k) => k.tick().await,
                    None => std::future::pending().await,
                }
            } => notifier.watchdog(),
        }
    }
}

/// Loads the built-in model, so its cost shows from the first start. A model that does not
/// load is logged; the node runs on without it.
#[cfg(feature = "ai")]
fn load_model(board: &StatusBoard) -> Option<edge_ai::Model> {
    let started = std::time::Instant::now();
    match edge_ai::Model::from_bytes(edge_ai::BUILTIN_MODEL) {
        Ok(model) => {
            let summary = format!(
                "builtin: {} inputs, {} outputs",
                model.input_len(),
                model.output_len()
            );
            info!(model = %summary, purpose = "runtime check, reported in /status; routing uses DATA_DIR/models/route.onnx", load_ms = started.elapsed().as_millis(), "model loaded");
            board.update(|s| s.model = Some(summary));
            Some(model)
        }
        Err(e) => {
            warn!(error = %e, "the built-in model did not load");
            None
        }
    }
}

#[cfg(not(feature = "ai"))]
fn load_model(_board: &StatusBoard) -> Option<()> {
    None
}
