//! `edge-node ctl`: the local operator's hold on a running node, over a Unix socket, with or
//! without an uplink. Status, workloads, logs and the outbox can be read; a workload can be
//! restarted or stopped. Every restart or stop is an operator event in the outbox, so the
//! orchestrator learns who did what, and when, once the node is back in touch.
//!
//! The socket is `DATA_DIR/ctl.sock` unless the config names another (`ctl_socket`), mode
//! 0600 (only the daemon's user, normally root), or 0660 with the group `ctl_group` so that
//! its members may use it too (then the socket must live where they can reach it: the data
//! dir is 0700).
//!
//! One request per connection: a line of JSON (at most [`MAX_REQUEST`] bytes, within
//! [`REQUEST_TIMEOUT`]), answered by one JSON document, `{"ok": ...}` or
//! `{"error": CODE, "message": TEXT}`. At most [`MAX_CONNECTIONS`] at once; another waits in
//! the backlog. It decides nothing about the workloads beyond carrying out the request: a
//! stop lasts until `ctl restart`, a new version from the orchestrator, or the daemon's
//! restart, because the orchestrator owns what should run.

use crate::outbox::EventOutbox;
use crate::status::StatusBoard;
use crate::supervisor::Supervisor;
use crate::task::AbortOnDrop;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

/// The most bytes of one request line.
pub const MAX_REQUEST: usize = 1024;
/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// The most log lines one request returns.
pub const MAX_LOG_LINES: u32 = 1000;
/// The most bytes of an answer the client reads.
const MAX_ANSWER: u64 = 4 << 20;

/// What the operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Braces, so that `deny_unknown_fields` holds for these too.
    Status {},
    Workloads {},
    Outbox {},
    Logs { workload: String, lines: u32 },
    Restart { workload: String },
    Stop { workload: String },
}

impl Request {
    /// The request the command line's words name: `status`, `logs hello`, `stop hello`.
    pub fn from_words(words: &[String], lines: Option<u32>) -> Result<Self, String> {
        let workload = |verb: &str| match words.get(1) {
            Some(name) => Ok(name.clone()),
            None => Err(format!("ctl {verb} needs a WORKLOAD")),
        };
        let request = match words.first().map(String::as_str) {
            Some("status") => Self::Status {},
            Some("workloads") => Self::Workloads {},
            Some("outbox") => Self::Outbox {},
            Some("logs") => Self::Logs {
                workload: workload("logs")?,
                lines: lines.unwrap_or(100).min(MAX_LOG_LINES),
            },
            Some("restart") => Self::Restart {
                workload: workload("restart")?,
            },
            Some("stop") => Self::Stop {
                workload: workload("stop")?,
            },
            Some(other) => {
                return Err(format!(
                    "unknown ctl action {other:?}: status, workloads, outbox, logs, restart or stop"
                ));
            }
            None => {
                return Err(
                    "ctl needs an ACTION: status, workloads, outbox, logs, restart or stop".into(),
                );
            }
        };
        let takes_workload = matches!(
            request,
            Self::Logs { .. } | Self::Restart { .. } | Self::Stop { .. }
        );
        if words.len() > 1 + usize::from(takes_workload) {
            return Err(format!("unexpected argument {:?}", words[words.len() - 1]));
        }
        if lines.is_some() && !matches!(request, Self::Logs { .. }) {
            return Err("--lines goes with ctl logs".into());
        }
        Ok(request)
    }
}

/// Why a ctl call failed, as the client reports it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the node at {path}: {source} (is edge-node running with this config?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the node: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node's answer is not JSON: {0}")]
    Answer(#[from] serde_json::Error),
    /// The node refused the request: its code and message.
    #[error("{message} ({code})")]
    Refused { code: String, message: String },
}

/// What the socket serves from.
#[derive(Debug, Clone)]
pub struct Ctl {
    pub supervisor: Supervisor,
    pub board: StatusBoard,
    pub outbox: Option<EventOutbox>,
}

/// Serves the control socket `settings` name, in a task that ends when the returned guard
/// is dropped. A socket that cannot be made is logged: the node runs on without it.
pub fn start(settings: &crate::config::CtlSettings, ctl: Ctl) -> Option<AbortOnDrop> {
    let group = match settings.group.as_deref().map(nix::unistd::Group::from_name) {
        None => None,
        Some(Ok(Some(group))) => Some(group.gid.as_raw()),
        Some(Ok(None)) => {
            warn!(group = ?settings.group, "ctl_group: no such group; the socket stays 0600");
            None
        }
        Some(Err(error)) => {
            warn!(%error, "ctl_group: cannot look the group up; the socket stays 0600");
            None
        }
    };
    match listen(&settings.socket, group) {
        Ok(listener) => {
            info!(path = %settings.socket.display(), "ctl socket listening");
            Some(AbortOnDrop(tokio::spawn(serve(listener, Arc::new(ctl)))))
        }
        Err(error) => {
            warn!(path = %settings.socket.display(), %error, "no ctl socket: edge-node ctl will not reach this node");
            None
        }
    }
}

/// Binds the control socket at `path`: a leftover socket from a daemon that did not stop
/// cleanly is replaced, anything else at that path is left alone and refused.
pub fn listen(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // Tightened before anyone is told it exists; the umask decides nothing.
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(std::io::Error::from)?;
    }
    Ok(listener)
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, ctl: Arc<Ctl>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Waiting for a slot first leaves the next connection in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "ctl: accept failed");
                continue;
            }
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            answer(stream, &ctl).await;
            drop(slot);
        });
    }
}

async fn answer(mut stream: UnixStream, ctl: &Ctl) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(request)) => ctl.handle(request, uid).await,
        Ok(Err(refusal)) => refusal,
        Err(_) => refused("timeout", "no whole request line in time"),
    };
    let mut bytes = answer.to_string().into_bytes();
    bytes.push(b'\n');
    // A client that left early loses only its answer.
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// One request line, bounded; a refusal to send back when it is not one.
async fn read_request(stream: &mut UnixStream) -> Result<Request, Value> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| refused("bad_request", &e.to_string()))?;
    if line.len() > MAX_REQUEST {
        return Err(refused(
            "too_large",
            &format!("a request is at most {MAX_REQUEST} bytes"),
        ));
    }
    serde_json::from_slice(&line).map_err(|e| refused("bad_request", &e.to_string()))
}

fn refused(code: &str, message: &str) -> Value {
    json!({ "error": code, "message": message })
}

impl Ctl {
    async fn handle(&self, request: Request, uid: Option<u32>) -> Value {
        match request {
            Request::Status {} => json!({ "ok": self.board.get() }),
            Request::Workloads {} => {
                let mut all = self.supervisor.statuses();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                json!({ "ok": all })
            }
            Request::Outbox {} => match &self.outbox {
                Some(outbox) => json!({ "ok": outbox.summary() }),
                None => refused("unavailable", "the outbox could not be opened"),
            },
            Request::Logs { workload, lines } => match self.supervisor.status(&workload) {
                Some(_) => json!({
                    "ok": self.supervisor.log_tail(&workload, lines.min(MAX_LOG_LINES) as usize)
                }),
                None => unknown(&workload),
            },
            Request::Restart { workload } | Request::Stop { workload }
                if self.supervisor.status(&workload).is_none() =>
            {
                unknown(&workload)
            }
            Request::Restart { workload } => {
                self.audit(edge_proto::OperatorVerb::Restart, &workload, uid);
                match self.supervisor.restart(&workload).await {
                    Ok(()) => json!({ "ok": format!("restarted {workload}") }),
                    Err(e) => refused("failed", &e.to_string()),
                }
            }
            Request::Stop { workload } => {
                self.audit(edge_proto::OperatorVerb::Stop, &workload, uid);
                match self.supervisor.hold(&workload).await {
                    Ok(()) => json!({ "ok": format!("stopped {workload}") }),
                    Err(e) => refused("failed", &e.to_string()),
                }
            }
        }
    }

    /// Logs the action and records it in the outbox before it is carried out, so that a
    /// crash half way still leaves its trace.
    fn audit(&self, verb: edge_proto::OperatorVerb, workload: &str, uid: Option<u32>) {
        info!(action = ?verb, %workload, uid = ?uid, "local operator action");
        if let Some(outbox) = &self.outbox {
            outbox.record_operator(verb, workload, uid);
        }
    }
}

fn unknown(workload: &str) -> Value {
    refused(
        "not_found",
        &format!("no workload named {workload:?} on this node"),
    )
}

/// The client: sends `request` to the socket at `path` and returns the answer's `ok` value.
pub async fn call(path: &Path, request: &Request) -> Result<Value, CtlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| CtlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
    let mut answer: Value = serde_json::from_slice(&answer)?;
    if let Some(ok) = answer.get_mut("ok") {
        return Ok(ok.take());
    }
    let text = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Err(CtlError::Refused {
        code: text("error"),
        message: text("message"),
    })
}

/// The answer to `request` as `edge-node ctl` prints it without `--json`.
pub fn render(request: &Request, answer: &Value) -> String {
    match request {
        Request::Workloads {} => {
            let rows = answer.as_array().map(Vec::as_slice).unwrap_or_default();
            let mut out = format!(
                "{:<24} {:<12} {:<10} {:>8} {:>8}  MESSAGE\n",
                "NAME", "VERSION", "STATE", "RESTARTS", "PID"
            );
            for w in rows {
                let text = |key: &str| w[key].as_str().unwrap_or("-").to_owned();
                let number = |key: &str| w[key].as_u64().map_or("-".into(), |n| n.to_string());
                out.push_str(&format!(
                    "{:<24} {:<12} {:<10} {:>8} {:>8}  {}\n",
                    text("name"),
                    text("version"),
                    text("state"),
                    number("restarts"),
                    number("pid"),
                    text("message")
                ));
            }
            if rows.is_empty() {
                out.push_str("(no workloads)\n");
            }
            out
        }
        Request::Logs { .. } => answer
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|line| format!("{}\n", line.as_str().unwrap_or_default()))
            .collect(),
        Request::Restart { .. } | Request::Stop { .. } => {
            format!("{}\n", answer.as_str().unwrap_or_default())
        }
        Request::Status {} | Request::Outbox {} => format!("{answer:#}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_line_names_each_request() {
        assert_eq!(
            Request::from_words(&words(&["status"]), None),
            Ok(Request::Status {})
        );
        assert_eq!(
            Request::from_words(&words(&["logs", "till"]), Some(5)),
            Ok(Request::Logs {
                workload: "till".into(),
                lines: 5
            })
        );
        assert_eq!(
            Request::from_words(&words(&["logs", "till"]), Some(u32::MAX)),
            Ok(Request::Logs {
                workload: "till".into(),
                lines: MAX_LOG_LINES
            })
        );
        assert_eq!(
            Request::from_words(&words(&["stop", "till"]), None),
            Ok(Request::Stop {
                workload: "till".into()
            })
        );
        for bad in [&["restart"][..], &["frobnicate"], &[], &["status", "extra"]] {
            let e = Request::from_words(&words(bad), None).expect_err("refused");
            assert!(!e.is_empty());
        }
        assert!(Request::from_words(&words(&["status"]), Some(3)).is_err());
    }

    #[test]
    fn requests_on_the_socket_are_plain_json_lines() {
        let line = serde_json::to_string(&Request::Restart {
            workload: "till".into(),
        })
        .expect("encodes");
        assert_eq!(line, r#"{"action":"restart","workload":"till"}"#);
        for hostile in [
            r#"{"action":"restart"}"#,
            r#"{"action":"rm -rf","workload":"x"}"#,
            r#"{"action":"status","extra":1}"#,
            r#"{"action":"logs","workload":"x","lines":-1}"#,
            "[]",
            "",
        ] {
            assert!(
                serde_json::from_str::<Request>(hostile).is_err(),
                "{hostile}"
            );
        }
    }
}
