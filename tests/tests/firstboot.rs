//! First boot as an operator lives it, through the real `edge-node` binary: a packaged config
//! that names neither the node nor the orchestrator, a join file dropped onto the "boot
//! partition" (a directory here), the status endpoint and systemd's notify socket.

use edge_tests::{PATIENCE, TestOrchestrator, binary, eventually};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A node process and the log lines it has written so far. Killed when dropped.
struct Node {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(config: &Path, notify: &Path) -> Self {
        let mut child = Command::new(binary("edge-node"))
            .args(["run", "--config"])
            .arg(config)
            .env("EDGE_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            // Keep-alives every 50 ms, so the test sees them at once.
            .env("WATCHDOG_USEC", "100000")
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log lock").push(line);
            }
        });
        Self { child, log }
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|l| l.contains(text))
    }

    /// The status endpoint's address, from the node's log (it binds port 0).
    async fn status_addr(&self) -> String {
        let mut addr = None;
        eventually(PATIENCE, || {
            addr = self.log.lock().expect("log lock").iter().find_map(|l| {
                let rest = l.split("status endpoint listening").nth(1)?;
                Some(rest.split("addr=").nth(1)?.trim().to_owned())
            });
            addr.is_some()
        })
        .await
        .unwrap_or_else(|| panic!("no status endpoint in the log: {:?}", self.log));
        addr.expect("found")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("node exits")
    }
}

fn status(addr: &str) -> Option<serde_json::Value> {
    let mut reply = ureq::get(format!("http://{addr}/status")).call().ok()?;
    reply.body_mut().read_json().ok()
}

/// Polls `/status` until `state` shows; returns that document.
async fn wait_for_state(node: &Node, addr: &str, state: &str) -> serde_json::Value {
    let mut last = None;
    let seen = eventually(PATIENCE, || {
        last = status(addr);
        last.as_ref().is_some_and(|s| s["state"] == state)
    })
    .await;
    assert!(
        seen.is_some(),
        "no {state} state; last status {last:?}; log {:?}",
        node.log
    );
    last.expect("a status")
}

/// The notify socket systemd would give the service, read continuously like systemd does.
struct Notifications {
    path: PathBuf,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Notifications {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // Ends when the test's temp dir (and so the socket) is gone and recv fails.
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                into.lock().expect("lock").push(msg);
            }
        });
        Self { path, seen }
    }

    async fn expect(&self, want: &str) {
        let seen = eventually(PATIENCE, || {
            self.seen
                .lock()
                .expect("lock")
                .iter()
                .any(|m| m.starts_with(want))
        })
        .await;
        assert!(
            seen.is_some(),
            "no {want:?} notification; saw {:?}",
            self.seen
                .lock()
                .expect("lock")
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
        );
    }
}

/// The config a board's package installs: no name, no orchestrator, no token.
fn packaged_config(dir: &Path) -> (PathBuf, PathBuf) {
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("firmware")).expect("boot dir");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = \"{}\"\n\
             join_file = [\"{}\", \"{}\"]\n\
             status_listen = \"127.0.0.1:0\"\n",
            dir.join("data").display(),
            boot.join("firmware/edge-join.toml").display(),
            boot.join("edge-join.toml").display(),
        ),
    )
    .expect("write config");
    (config, boot)
}

/// A join file as Windows Notepad saves it: a byte order mark and CRLF line ends.
fn join_file(orch: &TestOrchestrator, token: &str, name: &str) -> String {
    format!(
        "\u{feff}# written on the operator's laptop\r\n\
         orchestrator = \"{}\"\r\n\
         token = \"{token}\"\r\n\
         ca_hash = \"{}\"\r\n\
         name = \"{name}\"\r\n\
         location = {{ lat = 59.33, lon = 18.07 }}\r\n\
         labels = {{ site = \"farm\" }}\r\n",
        orch.orch.quic_addr,
        orch.ca_hash()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flashed_node_enrolls_from_the_join_file_on_its_boot_partition() {
    let orch = TestOrchestrator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (config, boot) = packaged_config(dir.path());
    let notify = Notifications::bind(dir.path());
    let mut node = Node::start(&config, &notify.path);
    let addr = node.status_addr().await;
    notify.expect("READY=1").await;

    // Nothing on the boot partition yet: the node waits and says where it looks.
    let s = wait_for_state(&node, &addr, "waiting_for_join_file").await;
    let message = s["message"].as_str().expect("message");
    assert!(message.contains("firmware/edge-join.toml"), "{message}");
    notify.expect("WATCHDOG=1").await;
    notify
        .expect("STATUS=not enrolled; waiting for a join file at ")
        .await;

    // A typo in the token: the node names the file and the field, and leaves the file to fix.
    let token = orch.token(1);
    let on_boot = boot.join("firmware/edge-join.toml");
    std::fs::write(
        &on_boot,
        join_file(&orch, &token.to_uppercase(), "pi-flashed"),
    )
    .expect("write");
    let s = wait_for_state(&node, &addr, "join_file_invalid").await;
    let message = s["message"].as_str().expect("message");
    assert!(
        message.contains("edge-join.toml") && message.contains("token"),
        "{message}"
    );
    assert!(
        !message.contains(&token[7..].to_uppercase()),
        "the secret never shows: {message}"
    );
    // The log line is written before the state changes, but it reaches us through a pipe
    // read by another thread: wait for it.
    assert!(
        eventually(PATIENCE, || node.logged("join file refused"))
            .await
            .is_some(),
        "and the journal says so"
    );
    assert!(on_boot.exists());

    // Fixed: the node enrolls with what the file says, and the secret leaves the partition.
    std::fs::write(&on_boot, join_file(&orch, &token, "pi-flashed")).expect("write");
    let s = wait_for_state(&node, &addr, "online").await;
    assert_eq!(s["name"], "pi-flashed");
    let node_id = s["node_id"]
        .as_str()
        .expect("enrolled: a node id")
        .to_owned();
    assert!(orch.online("pi-flashed"));
    assert!(
        !on_boot.exists(),
        "the join file was moved off the boot partition"
    );
    let stored = dir.path().join("data/join.toml");
    let mode = std::fs::metadata(&stored)
        .expect("the copy")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, api) = orch.api("GET", "/v1/nodes/pi-flashed", None).await;
    assert_eq!(code, 200, "{api}");
    assert_eq!(api["labels"]["site"], "farm");
    assert_eq!(api["location"]["lat"], 59.33);

    let exit = node.terminate();
    assert!(exit.success(), "a clean stop: {exit}");
    notify.expect("STOPPING=1").await;

    // The next boot has no join file and needs none.
    let node = Node::start(&config, &notify.path);
    let addr = node.status_addr().await;
    let s = wait_for_state(&node, &addr, "online").await;
    assert_eq!(s["node_id"], node_id.as_str(), "the same identity");
    assert_eq!(s["name"], "pi-flashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_node_stays_up_and_takes_a_new_join_file() {
    let orch = TestOrchestrator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (config, boot) = packaged_config(dir.path());
    let notify = Notifications::bind(dir.path());
    let on_boot = boot.join("edge-join.toml");
    // Well-formed, but the orchestrator never issued it.
    let unknown = "zzzzzz.0123456789abcdef0123456789abcdef";
    std::fs::write(&on_boot, join_file(&orch, unknown, "pi-refused")).expect("write");
    let mut node = Node::start(&config, &notify.path);
    let addr = node.status_addr().await;

    let s = wait_for_state(&node, &addr, "failed").await;
    let message = s["message"].as_str().expect("message");
    assert!(message.contains("new join file"), "{message}");
    assert!(
        node.child.try_wait().expect("wait").is_none(),
        "still running"
    );

    std::fs::write(&on_boot, join_file(&orch, &orch.token(1), "pi-refused")).expect("write");
    wait_for_state(&node, &addr, "online").await;
    assert!(orch.online("pi-refused"));
    assert!(node.terminate().success());
}

#[test]
fn check_config_accepts_a_packaged_config_and_names_bad_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let (config, _) = packaged_config(dir.path());
    let out = Command::new(binary("edge-node"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("127.0.0.1:0", "anywhere")).expect("write");
    let out = Command::new(binary("edge-node"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("status_listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_polls_do_not_hang_on_a_slow_client() {
    // A client that connects and sends nothing must not stop others from being answered:
    // each connection is served on its own task with a header timeout.
    let dir = tempfile::tempdir().expect("tmp");
    let (config, _) = packaged_config(dir.path());
    let notify = Notifications::bind(dir.path());
    let node = Node::start(&config, &notify.path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(node.status_addr());
    let _idle: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    let s = runtime.block_on(wait_for_state(&node, &addr, "waiting_for_join_file"));
    assert_eq!(s["arch"], std::env::consts::ARCH);
}
