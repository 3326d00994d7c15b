//! The cluster harness: a real orchestrator and real node daemons on loopback, a UDP relay that
//! can cut or count a node's link, and polling with a deadline.
//!
//! Everything binds port 0; nothing sleeps to wait for something.
#![forbid(unsafe_code)]

pub mod cli;
pub mod gpsd;
pub mod images;
pub mod lazyfs;
pub mod nmea;
pub mod origin;
pub mod relay;

use node_daemon::config::Config;
use node_daemon::daemon::DaemonError;
use node_daemon::status::StatusBoard;
use orchestrator::app::Orchestrator;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Polls `check` every 20 ms until it is true or `within` has passed. Returns whether it held,
/// and when it first did.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    let mut poll = poll_interval();
    loop {
        poll.tick().await;
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
    }
}

/// Ticks every 20 ms, the first tick at once.
fn poll_interval() -> tokio::time::Interval {
    tokio::time::interval(Duration::from_millis(20))
}

/// Whether process `pid` is alive. A zombie has exited: only its parent's bookkeeping is left.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
}

/// `GET /` on `addr` (`host:port`), as a user's client would ask a service: the body, or
/// `None` if nothing answers within [`PATIENCE`].
pub fn http_get_root(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.split("\r\n\r\n").nth(1).map(str::to_owned)
}

/// How long tests wait for things that take milliseconds when all is well. Generous, since
/// CI machines are slow and shared; it is a bound on a hang, not a performance figure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What is left of a [`TestOrchestrator`] that stopped: its data dir and QUIC address.
#[derive(Debug)]
pub struct Stopped {
    pub dir: tempfile::TempDir,
    pub quic: SocketAddr,
}

/// An orchestrator in this process, on 127.0.0.1 port 0, with its own data dir.
#[derive(Debug)]
pub struct TestOrchestrator {
    pub orch: Orchestrator,
    pub dir: tempfile::TempDir,
}

impl TestOrchestrator {
    /// Stores `bytes` as an artifact and returns its digest as a spec names it
    /// (`sha256:...`).
    pub async fn artifact(&self, bytes: &[u8]) -> String {
        let stored = self.orch.artifacts.put(bytes, None).await.expect("put");
        edge_proto::digest::to_prefixed(&stored.digest)
    }

    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let orch = start_at(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        Self { orch, dir }
    }

    /// Stops it and starts it again on the same data dir and QUIC port.
    pub async fn restart(self) -> Self {
        Self::resume(self.stop().await).await
    }

    /// Stops it, keeping what [`resume`](Self::resume) needs to start it again: its data dir
    /// and QUIC port.
    pub async fn stop(self) -> Stopped {
        let quic = self.orch.quic_addr;
        self.orch.shutdown().await;
        Stopped {
            dir: self.dir,
            quic,
        }
    }

    /// Starts an orchestrator again where one [`stop`](Self::stop)ped.
    pub async fn resume(stopped: Stopped) -> Self {
        let orch = start_at(stopped.dir.path(), stopped.quic).await;
        Self {
            orch,
            dir: stopped.dir,
        }
    }

    pub fn ca_hash(&self) -> String {
        self.orch.registry.ca().hash()
    }

    /// A join token with `uses` uses, valid for an hour.
    pub fn token(&self, uses: u32) -> String {
        self.orch
            .registry
            .create_token(3600, uses, "test".into())
            .expect("token")
            .0
    }

    pub fn online(&self, name: &str) -> bool {
        let fleet = self.orch.registry.fleet();
        fleet.find(name).is_some_and(|n| fleet.is_online(n.id))
    }

    pub fn known(&self, name: &str) -> bool {
        self.orch.registry.fleet().find(name).is_some()
    }

    /// Calls the operator API as admin. Returns the status and the JSON body (`Null` when
    /// there is none).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("http://{}{path}", self.orch.api_addr);
        let token = self.orch.admin_token.clone();
        let method = method.to_owned();
        tokio::task::spawn_blocking(move || api_call(&method, &url, &token, body))
            .await
            .expect("the API call finished")
    }

    /// Enrolls a node named `name` through a real daemon, stops it, and returns the identity
    /// it stored, with its data dir.
    pub async fn enrolled_identity(
        &self,
        name: &str,
    ) -> (node_daemon::identity::Identity, tempfile::TempDir) {
        let data = tempfile::tempdir().expect("tmp");
        let token = self.token(1);
        let node = TestNode::spawn(node_config(
            name,
            data.path(),
            self.orch.quic_addr,
            Some((&token, &self.ca_hash())),
            "",
        ));
        assert!(eventually(PATIENCE, || self.online(name)).await.is_some());
        node.stop().await.expect("clean stop");
        assert!(eventually(PATIENCE, || !self.online(name)).await.is_some());
        let identity = node_daemon::identity::IdentityDir::new(data.path())
            .load()
            .expect("load")
            .expect("enrolled");
        (identity, data)
    }

    /// A QUIC connection to the orchestrator with `identity`'s certificate, handshake done,
    /// and the endpoint it lives on: the first step of a session opened by hand.
    pub async fn dial_session(
        &self,
        identity: &node_daemon::identity::Identity,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let tls = node_daemon::tls::session_config(identity).expect("tls");
        dial(self.orch.quic_addr, tls).await
    }

    /// The first instance of workload `name` the API shows running, if any.
    pub async fn running_instance(&self, name: &str) -> Option<serde_json::Value> {
        let (status, w) = self
            .api("GET", &format!("/v1/workloads/{name}"), None)
            .await;
        if status != 200 {
            return None;
        }
        w["instances"]
            .as_array()?
            .iter()
            .find(|i| i["state"] == "running")
            .cloned()
    }

    /// A metric's value from the Prometheus text, 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.orch
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// Starts an orchestrator. After a restart the old one's socket and store lock are released
/// by tasks that finish just after shutdown, so binding is retried until [`PATIENCE`] runs out.
async fn start_at(dir: &Path, quic: SocketAddr) -> Orchestrator {
    let start = Instant::now();
    let mut poll = poll_interval();
    loop {
        poll.tick().await;
        let attempt = async {
            let udp = std::net::UdpSocket::bind(quic).map_err(|e| e.to_string())?;
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            Orchestrator::start(dir, udp, tcp)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(orch) => return orch,
            Err(e) if start.elapsed() > PATIENCE => panic!("orchestrator did not start: {e}"),
            Err(_) => {}
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch, as events carry it.
/// A QUIC connection to the orchestrator at `addr` with `tls`, handshake done, from a new
/// endpoint on 127.0.0.1 port 0. A caller that keeps `tls` for its next dial keeps its TLS
/// session tickets, as the node daemon does.
pub async fn dial(
    addr: SocketAddr,
    tls: quinn::ClientConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let conn = endpoint
        .connect_with(tls, addr, edge_proto::ORCHESTRATOR_SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, conn)
}

/// Says hello as `node` on a new control stream of `conn`, and reads the first answer.
pub async fn hello_as(
    conn: &quinn::Connection,
    node: edge_proto::NodeId,
) -> (quinn::SendStream, quinn::RecvStream, edge_proto::OrchMsg) {
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let hello = edge_proto::NodeMsg::Hello(edge_proto::Hello {
        versions: edge_proto::List::from_iter([1]),
        intent: edge_proto::Intent::Session,
        node_id: Some(node),
        agent: edge_proto::text("by-hand/1"),
        sync: None,
    });
    send.write_all(&edge_proto::encode(&hello))
        .await
        .expect("hello");
    let answer = edge_proto::quic::read_frame(&mut recv)
        .await
        .expect("read")
        .expect("a frame");
    let answer = edge_proto::decode(&answer).expect("the answer decodes");
    (send, recv, answer)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A node config for tests. `orchestrator` is what the node dials (the orchestrator or a relay).
pub fn node_config(
    name: &str,
    data_dir: &Path,
    orchestrator: SocketAddr,
    join: Option<(&str, &str)>,
    extra: &str,
) -> Config {
    let join = join
        .map(|(token, ca)| format!("[join]\ntoken = \"{token}\"\nca_hash = \"{ca}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n{extra}\n\
         [orchestrator]\naddress = \"{orchestrator}\"\n{join}",
        data_dir.display()
    );
    Config::from_toml(&toml).expect("test config is valid")
}

/// Copies a node's `identity/` from one data dir to another, as cloning its SD card would.
pub fn copy_identity(from: &Path, to: &Path) {
    let (src, dst) = (from.join("identity"), to.join("identity"));
    std::fs::create_dir_all(&dst).expect("identity dir");
    for entry in std::fs::read_dir(&src).expect("an enrolled node's identity") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
    }
}

/// A node daemon running in this process.
#[derive(Debug)]
pub struct TestNode {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DaemonError>>,
    pub data_dir: PathBuf,
}

impl TestNode {
    pub fn spawn(config: Config) -> Self {
        Self::spawn_with_board(config).0
    }

    /// Spawns the node, and returns the board its status endpoint would show.
    pub fn spawn_with_board(config: Config) -> (Self, StatusBoard) {
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir().to_owned();
        let board = StatusBoard::new();
        let task = tokio::spawn(node_daemon::daemon::run_with(
            config,
            board.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let node = Self {
            stop: Some(stop),
            task,
            data_dir,
        };
        (node, board)
    }

    /// Asks the node to shut down and returns how it ended.
    pub async fn stop(mut self) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("node task does not panic")
    }

    /// Waits for the node to stop on its own (a fatal error), up to [`PATIENCE`].
    pub async fn exited(mut self) -> Result<(), DaemonError> {
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the node gave up within the deadline")
            .expect("node task does not panic")
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the workspace's binaries are. They are built (once per test process) first, so a
/// test run on its own never runs a stale binary. The build is `cargo test --workspace
/// --no-run`: the same selection, and so the same unified features, as the README's test
/// command, after which it has nothing to do (a plain `cargo build -p ...` would unify
/// features differently and rebuild half the dependency tree).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["test", "--workspace", "--no-run"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo build runs");
        assert!(status.success(), "building the binaries");
    });
    dir.join(name)
}

fn api_call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"));
    let response = match body {
        Some(json) => agent.run(
            request
                .header("content-type", "application/json")
                .body(json.to_string().into_bytes())
                .expect("a request"),
        ),
        None => agent.run(request.body(ureq::SendBody::none()).expect("a request")),
    };
    let mut response = response.expect("the API answers");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .expect("a readable body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, json)
}

/// The path of `command`, installing the Debian `package` that ships it through the project's
/// own apt helper (`cross/apt.sh`) when this machine lacks it. Fails the test, saying why,
/// when it cannot.
pub fn installed(command: &str, package: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace");
    let script = format!(
        "source cross/apt.sh && {{ command -v {command} >/dev/null || apt_install {package}; }} && command -v {command}"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(workspace)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{command} is missing and could not be installed from the Debian package {package}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// One `GET` on a connection of its own (`Connection: close`): the status, the head in
/// lower case and the body; `None` if nothing answers in [`PATIENCE`].
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// A port free on 127.0.0.1 now, for a workload that must be told where to listen.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// How many mounts this machine has at or below `dir`: a container's writable layer is
/// one, and none may outlive the container.
pub fn mounts_under(dir: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .count()
}

/// A child process killed when the test ends, pass or fail.
#[derive(Debug)]
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` with its stderr read line by line into the returned channel.
pub fn spawn_reading_stderr(
    mut command: std::process::Command,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

/// The first line on `lines` that contains `needle`, within [`PATIENCE`].
pub fn line_with(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?} within {PATIENCE:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// A real `edge-orchestrator serve` on `data`, listening on ports of its own choosing:
/// the process, its QUIC address and its API's URL, from the line it prints when ready.
pub fn start_orchestrator(data: &Path) -> (Proc, String, String) {
    start_orchestrator_on(data, "127.0.0.1:0")
}

/// As [`start_orchestrator`], with QUIC on `quic_listen`: give the address a killed one had
/// to start it again where its nodes (or their relays) dial. A port the dead process held a
/// moment ago may still be taken, so a start that fails is tried again until [`PATIENCE`]
/// runs out.
pub fn start_orchestrator_on(data: &Path, quic_listen: &str) -> (Proc, String, String) {
    start_orchestrator_with(data, quic_listen, &[])
}

/// As [`start_orchestrator_on`], with more `serve` arguments (`--node-cert-validity-secs`).
pub fn start_orchestrator_with(
    data: &Path,
    quic_listen: &str,
    args: &[&str],
) -> (Proc, String, String) {
    start_orchestrator_logging(data, quic_listen, args, None)
}

/// As [`start_orchestrator_on`], appending what the orchestrator logs (warnings and
/// errors) to `log`, for a failing test to show.
pub fn start_orchestrator_logged(
    data: &Path,
    quic_listen: &str,
    log: &Path,
) -> (Proc, String, String) {
    start_orchestrator_logging(data, quic_listen, &[], Some(log))
}

fn start_orchestrator_logging(
    data: &Path,
    quic_listen: &str,
    args: &[&str],
    log: Option<&Path>,
) -> (Proc, String, String) {
    // Built first: the deadline is for the start, not for a build.
    let exe = binary("edge-orchestrator");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut serve = std::process::Command::new(&exe);
        serve
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--quic-listen", quic_listen, "--api-listen", "127.0.0.1:0"])
            .args(args)
            .env("EDGE_LOG", "warn");
        let (proc, lines) = spawn_reading_stderr(serve);
        // "edge-orchestrator: nodes dial 127.0.0.1:P, operators use http://127.0.0.1:Q"
        let banner = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("nodes dial") => break Some(line),
                Ok(_) => {}
                // It exited (its stderr closed) or the time is up.
                Err(_) => break None,
            }
        };
        let Some(banner) = banner else {
            drop(proc);
            assert!(
                Instant::now() < deadline,
                "the orchestrator did not start on {quic_listen} within {PATIENCE:?}"
            );
            // It has exited (its stderr closed): start another at once.
            continue;
        };
        // Keep reading: once nobody reads its stderr, the orchestrator's next log line fails
        // to write, and tracing's report of that failure panics whatever task was logging.
        let mut log = log.and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        std::thread::spawn(move || {
            for line in lines {
                if let Some(file) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        let quic = banner
            .split("nodes dial ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("the QUIC address")
            .to_owned();
        let api = banner
            .split("operators use ")
            .nth(1)
            .map(str::trim)
            .expect("the API URL")
            .to_owned();
        return (proc, quic, api);
    }
}
