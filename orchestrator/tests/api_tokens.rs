//! API tokens end to end: a whole orchestrator (`Orchestrator::start`, as `edge-orchestrator
//! serve` runs it) on a real data dir and 127.0.0.1:0, restarted on the same dir; and the
//! real `edge-orchestrator serve --rotate-admin-token`.

use orchestrator::app::Orchestrator;
use orchestrator::auth::ADMIN_TOKEN_FILE;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ureq::http::{Method, Request};

/// How long a restart may take to get the old store's lock and sockets back.
const PATIENCE: Duration = Duration::from_secs(30);

/// One run of an orchestrator on a data dir.
struct Life {
    rt: tokio::runtime::Runtime,
    orch: Orchestrator,
}

impl Life {
    /// Starts on `dir`. After a stop, the store's lock is released by tasks that finish just
    /// after the shutdown, so the start is retried until [`PATIENCE`] runs out.
    fn start(dir: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let orch = rt.block_on(async {
            let deadline = Instant::now() + PATIENCE;
            let mut poll = tokio::time::interval(Duration::from_millis(50));
            loop {
                poll.tick().await;
                let attempt = async {
                    let udp =
                        std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| e.to_string())?;
                    Orchestrator::start(dir, udp, tcp)
                        .await
                        .map_err(|e| e.to_string())
                };
                match attempt.await {
                    Ok(orch) => break orch,
                    Err(e) if Instant::now() > deadline => {
                        panic!("orchestrator did not start: {e}")
                    }
                    Err(_) => {}
                }
            }
        });
        Self { rt, orch }
    }

    fn stop(self) {
        let Self { rt, orch } = self;
        rt.block_on(orch.shutdown());
        drop(rt);
    }

    fn base(&self) -> String {
        format!("http://{}", self.orch.api_addr)
    }
}

/// An answer: status and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn call(base: &str, method: &str, path: &str, token: &str, json: Option<&str>) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"));
    let response = match json {
        Some(body) => agent.run(
            request
                .header("content-type", "application/json")
                .body(body.as_bytes().to_vec())
                .expect("request"),
        ),
        None => agent.run(request.body(ureq::SendBody::none()).expect("request")),
    };
    let mut response = response.expect("the API answers");
    let body = response.body_mut().read_to_string().expect("body");
    Reply {
        status: response.status().as_u16(),
        body,
    }
}

fn get(base: &str, path: &str, token: &str) -> Reply {
    call(base, "GET", path, token, None)
}

/// Issues a token through the API; returns its text and id.
fn issue(base: &str, admin: &str, body: &str) -> (String, String) {
    let r = call(base, "POST", "/v1/api-tokens", admin, Some(body));
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    (
        v["token"].as_str().expect("token").to_owned(),
        v["id"].as_str().expect("id").to_owned(),
    )
}

fn file_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE))
        .expect("admin.token")
        .trim()
        .to_owned()
}

#[test]
fn the_admin_token_is_kept_across_restarts_and_still_works() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let life = Life::start(dir.path());
    let first = life.orch.admin_token.clone();
    assert_eq!(file_token(dir.path()), first);
    let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(get(&life.base(), "/v1/nodes", &first).status, 200);
    life.stop();

    // A file made readable by others gets its mode back; the token stays.
    std::fs::set_permissions(
        dir.path().join(ADMIN_TOKEN_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let life = Life::start(dir.path());
    assert_eq!(
        life.orch.admin_token, first,
        "the same admin token after a restart"
    );
    assert_eq!(file_token(dir.path()), first);
    let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(get(&life.base(), "/v1/nodes", &first).status, 200);
    let listed = get(&life.base(), "/v1/api-tokens", &first).json();
    let admins: Vec<&Value> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["role"] == "admin")
        .collect();
    assert_eq!(admins.len(), 1, "one admin token: {listed}");
    assert_eq!(admins[0]["state"], "active");
    assert_eq!(admins[0]["issued_by"], "edge-orchestrator");
    life.stop();
}

#[test]
fn a_revoked_token_is_refused_at_once_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let life = Life::start(dir.path());
    let admin = life.orch.admin_token.clone();
    let base = life.base();
    let (viewer, id) = issue(&base, &admin, r#"{"role": "viewer", "subject": "dash"}"#);
    let (operator, _) = issue(&base, &admin, r#"{"role": "operator", "subject": "ci"}"#);
    assert_eq!(get(&base, "/v1/nodes", &viewer).status, 200);

    let r = call(
        &base,
        "DELETE",
        &format!("/v1/api-tokens/{id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = get(&base, "/v1/nodes", &viewer);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("revoked"), "{r:?}");
    // Revoking again changes nothing; an unknown id is 404.
    let r = call(
        &base,
        "DELETE",
        &format!("/v1/api-tokens/{id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 204, "{r:?}");
    let r = call(&base, "DELETE", "/v1/api-tokens/nope", &admin, None);
    assert_eq!(r.status, 404, "{r:?}");
    // Only an admin revokes.
    let r = call(
        &base,
        "DELETE",
        &format!("/v1/api-tokens/{id}"),
        &operator,
        None,
    );
    assert_eq!(r.status, 403, "{r:?}");
    // Not the admin token, though: that would leave no admin until a restart.
    let listed = get(&base, "/v1/api-tokens", &admin).json();
    let admin_id = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["role"] == "admin")
        .and_then(|t| t["id"].as_str())
        .expect("the admin token is listed")
        .to_owned();
    let r = call(
        &base,
        "DELETE",
        &format!("/v1/api-tokens/{admin_id}"),
        &admin,
        None,
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.message().contains("--rotate-admin-token"), "{r:?}");
    assert_eq!(get(&base, "/v1/nodes", &admin).status, 200);
    life.stop();

    let life = Life::start(dir.path());
    let base = life.base();
    let r = get(&base, "/v1/nodes", &viewer);
    assert_eq!(r.status, 401, "still revoked after a restart: {r:?}");
    assert!(r.message().contains("revoked"), "{r:?}");
    assert_eq!(get(&base, "/v1/nodes", &operator).status, 200);
    assert_eq!(get(&base, "/v1/nodes", &admin).status, 200);
    let listed = get(&base, "/v1/api-tokens", &admin).json();
    let entry = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("the revoked token is listed");
    assert_eq!(entry["state"], "revoked");
    assert!(entry["revoked_at"].is_string(), "{entry}");
    life.stop();
}

#[test]
fn admin_tokens_are_not_issued_through_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let life = Life::start(dir.path());
    let admin = life.orch.admin_token.clone();
    let r = call(
        &life.base(),
        "POST",
        "/v1/api-tokens",
        &admin,
        Some(r#"{"role": "admin", "subject": "second-admin"}"#),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let message = r.message();
    assert!(
        message.starts_with("role: admin tokens are not issued through the API"),
        "{message}"
    );
    assert!(message.contains("viewer and operator"), "{message}");
    // Nothing was put on record.
    let listed = get(&life.base(), "/v1/api-tokens", &admin).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    life.stop();
}

#[test]
fn the_list_shows_ids_roles_and_expiry_but_never_the_token_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let life = Life::start(dir.path());
    let admin = life.orch.admin_token.clone();
    let base = life.base();
    let (operator, id) = issue(
        &base,
        &admin,
        r#"{"role": "operator", "subject": "ci", "ttl": "2h"}"#,
    );
    let r = get(&base, "/v1/api-tokens", &admin);
    assert_eq!(r.status, 200, "{r:?}");
    for token in [&admin, &operator] {
        assert!(
            !r.body.contains(token.as_str()),
            "a token's text in the list"
        );
        // Nor its signature, the part that makes it a token.
        let signature = token.rsplit('.').next().expect("a JWT");
        assert!(
            !r.body.contains(signature),
            "a token's signature in the list"
        );
    }
    let listed = r.json();
    let entry = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("the new token is listed");
    assert_eq!(entry["role"], "operator");
    assert_eq!(entry["subject"], "ci");
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["issued_by"], "admin");
    assert_eq!(
        entry["expires_unix"].as_u64().expect("expires_unix")
            - entry["issued_unix"].as_u64().expect("issued_unix"),
        7200
    );
    assert!(
        entry["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(entry["revoked_at"].is_null());
    assert!(entry.get("token").is_none(), "{entry}");
    // Tokens are an admin's business.
    assert_eq!(get(&base, "/v1/api-tokens", &operator).status, 403);
    life.stop();
}

/// The real binary: `edge-orchestrator serve` until it says where the API is.
struct Served {
    child: Child,
    api: String,
}

impl Served {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-orchestrator"))
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args([
                "--quic-listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("EDGE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edge-orchestrator");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let api = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("operators use ").nth(1) {
                        break rest.trim().to_owned();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("edge-orchestrator did not say where its API is: {e}");
                }
            }
        };
        Self { child, api }
    }

    /// Stops it the way a service manager does. Whether it exits cleanly is not this test's
    /// business (a SIGTERM right after the ready line may beat the signal handler); every
    /// token record is flushed before its answer anyway.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rotating_the_admin_token_revokes_the_old_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = Served::start(dir.path(), &[]);
    let old = file_token(dir.path());
    assert_eq!(get(&served.api, "/v1/nodes", &old).status, 200);
    served.stop();

    let served = Served::start(dir.path(), &[]);
    assert_eq!(file_token(dir.path()), old, "kept without the flag");
    served.stop();

    let served = Served::start(dir.path(), &["--rotate-admin-token"]);
    let new = file_token(dir.path());
    assert_ne!(new, old);
    assert_eq!(get(&served.api, "/v1/nodes", &new).status, 200);
    let r = get(&served.api, "/v1/nodes", &old);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.message().contains("revoked"), "{r:?}");
    served.stop();
}
