//! Health checks: one attempt of an HTTP GET, a TCP connect or a command, bounded by a
//! timeout. Network checks go to the one address they are given: where the workload was told
//! to listen ([`WorkloadSpec::probe_address`](super::spec::WorkloadSpec::probe_address)).
//!
//! The HTTP check is a minimal HTTP/1.1 GET written by hand: it needs a status line and
//! nothing else, and a full client would cost the node more than the check is worth. It
//! reads at most [`MAX_HEAD`] bytes of the answer, whatever the server sends.
//!
//! [`listening`] waits for a workload that scales to zero and has no health check to accept
//! connections on the ports it exposes: the one sign of readiness it gives.
//!
//! This module only answers "healthy or not, and why"; thresholds and what follows from them
//! belong to the lifecycle.

use super::process::RunAs;
use super::spec::HealthCheck;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// The most of an HTTP answer read while looking for the status line.
pub const MAX_HEAD: usize = 1024;
/// How long one connection attempt of [`listening`] may take.
const LISTEN_CONNECT: Duration = Duration::from_secs(1);
/// The first pause between attempts of [`listening`], doubled up to the longest: a service
/// starting in milliseconds is seen within a millisecond or two of it (a request waits on
/// this when it wakes a workload scaled to zero), a slow one costs a few connects more.
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(1);
const LISTEN_RETRY_MAX: Duration = Duration::from_millis(100);

/// Why a check failed. Shown in the instance's status message.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the probe's timeout.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The connection was refused or broke.
    #[error("{addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server answered with a status outside 200..=399.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer did not start with an HTTP/1.x status line.
    #[error("not an HTTP answer")]
    Malformed,
    /// The check command could not be started.
    #[error("cannot run the check: {0}")]
    Spawn(std::io::Error),
    /// The check command exited non-zero or was killed.
    #[error("check exited with {0}")]
    Exit(String),
}

/// Runs `check` once; a network check connects to `address`.
pub async fn probe(
    check: HealthCheck,
    address: IpAddr,
    timeout: Duration,
    env: BTreeMap<String, String>,
    run_as: Option<RunAs>,
) -> Result<(), ProbeError> {
    match check {
        HealthCheck::Http { port, path } => {
            within(timeout, http_get(SocketAddr::new(address, port), &path)).await
        }
        HealthCheck::Tcp { port } => {
            let addr = SocketAddr::new(address, port);
            within(timeout, async {
                TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|source| ProbeError::Connect { addr, source })
            })
            .await
        }
        HealthCheck::Exec { command, args } => {
            let mut cmd = Command::new(&command);
            cmd.args(&args)
                .env_clear()
                .env("PATH", super::process::DEFAULT_PATH)
                .envs(&env)
                .current_dir("/")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(r) = run_as {
                cmd.uid(r.uid.as_raw()).gid(r.gid.as_raw());
            }
            let mut child = cmd.spawn().map_err(ProbeError::Spawn)?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(ProbeError::Exit(status.to_string())),
                Ok(Err(e)) => Err(ProbeError::Spawn(e)),
                Err(_) => {
                    // The check and anything it started go; then reap it.
                    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let _ = child.wait().await;
                    Err(ProbeError::Timeout(timeout))
                }
            }
        }
    }
}

/// Resolves once each of `ports` accepts a TCP connection at `address`, trying again until
/// then; the caller drops it when the process ends.
pub async fn listening(address: IpAddr, ports: Vec<u16>) {
    let mut pause = LISTEN_RETRY_FIRST;
    for port in ports {
        let addr = SocketAddr::new(address, port);
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(LISTEN_CONNECT, TcpStream::connect(addr)).await
            {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LISTEN_RETRY_MAX);
        }
    }
}

async fn within(
    timeout: Duration,
    check: impl Future<Output = Result<(), ProbeError>>,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Connect { addr, source };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    // `SocketAddr` writes an IPv6 address in brackets, as a Host header wants it.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edge-node-probe\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]);
    }
    match parse_status(&head) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(ProbeError::Status(code)),
        None => Err(ProbeError::Malformed),
    }
}

/// The status code of an HTTP/1.x status line: `HTTP/1.1 204 No Content` -> 204.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"),
            Some(302)
        );
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.1 500 Oops"), None, "no line end yet");
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[tokio::test]
    async fn listening_waits_until_every_port_accepts() {
        let localhost = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let first = tokio::net::TcpListener::bind((localhost, 0))
            .await
            .expect("bind");
        // A port nothing listens on yet: bound, noted, released, bound again later.
        let second = std::net::TcpListener::bind((localhost, 0)).expect("bind");
        let second_port = second.local_addr().expect("addr").port();
        drop(second);
        let ports = vec![first.local_addr().expect("addr").port(), second_port];
        let mut wait = Box::pin(listening(localhost, ports));
        let early = tokio::time::timeout(Duration::from_millis(200), &mut wait).await;
        assert!(early.is_err(), "ready with one port closed");
        let _second = tokio::net::TcpListener::bind((localhost, second_port))
            .await
            .expect("bind the second port again");
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("ready once both accept");
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let r = probe(
            HealthCheck::Tcp { port },
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            Duration::from_secs(1),
            BTreeMap::new(),
            None,
        )
        .await;
        assert!(matches!(r, Err(ProbeError::Connect { .. })), "{r:?}");
    }
}
