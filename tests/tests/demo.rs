//! `edge-orchestrator demo` as a user runs it, piped into a reader that goes away
//! (`cargo demo | tee demo.log`, then Ctrl-C, which stops `tee` too): it stops without a
//! panic, removes its work dir, and leaves no node or workload running.
//!
//! The demo runs the binaries the test suite builds anyway (`--node-bin`, `--hello-bin`), so
//! it builds nothing of its own.

use edge_tests::{PATIENCE, alive, binary, eventually, http_get_root};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

/// The demo's nodes' addresses, where the sample service listens.
const NODE_ADDRESSES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// The last line of the banner the demo prints once its fleet is up.
const UP: &str = "Press Ctrl-C to stop everything.";

/// One demo at a time: two demos' nodes have the same names, and a node names the cgroups of
/// its workloads after itself, so each demo would stop the other's sample service.
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port the system gave out on the first node address and that is free on the others, for
/// the sample service or the proxies: two demos (these tests) must not share one.
fn free_on_every_node() -> u16 {
    loop {
        let first =
            std::net::TcpListener::bind((NODE_ADDRESSES[0], 0)).expect("bind a loopback address");
        let port = first.local_addr().expect("bound").port();
        let rest: Vec<_> = NODE_ADDRESSES[1..]
            .iter()
            .map_while(|a| std::net::TcpListener::bind((*a, port)).ok())
            .collect();
        if rest.len() == NODE_ADDRESSES.len() - 1 {
            return port;
        }
    }
}

/// A running demo with its stdout being read until the banner, and its stderr collected.
struct Demo {
    child: Child,
    work_dir: PathBuf,
    /// Holds stdout; dropping it (by sending on it) closes the pipe's read end.
    close_stdout: mpsc::Sender<()>,
    /// The banner once it is up, or all of stdout if the demo ended first.
    up: mpsc::Receiver<Result<String, String>>,
    stderr: mpsc::Receiver<String>,
    _tmp: tempfile::TempDir,
}

impl Demo {
    fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let work_dir = tmp.path().join("demo");
        let hello_port = free_on_every_node();
        let proxy_port = std::iter::repeat_with(free_on_every_node)
            .find(|p| *p != hello_port)
            .expect("another port");
        let mut child = Command::new(binary("edge-orchestrator"))
            .args(["demo", "--api-listen", "127.0.0.1:0", "--work-dir"])
            .arg(&work_dir)
            .arg("--node-bin")
            .arg(binary("edge-node"))
            .arg("--hello-bin")
            .arg(binary("edge-hello"))
            .args(["--hello-port", &hello_port.to_string()])
            .args(["--proxy-port", &proxy_port.to_string()])
            // Not from a source tree as far as it can tell: it must not run cargo.
            .env_remove("CARGO")
            .env("EDGE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");

        let stdout = child.stdout.take().expect("piped");
        let (up_tx, up) = mpsc::channel();
        let (close_stdout, close) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut seen = String::new();
            let mut line = String::new();
            let found = loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => break false,
                    Ok(_) if line.trim_end() == UP => break true,
                    Ok(_) => seen.push_str(&line),
                }
            };
            let _ = up_tx.send(if found { Ok(seen) } else { Err(seen) });
            // Keep reading as a live `tee` would, until told to go away.
            let _ = close.recv();
            drop(lines);
        });
        let mut stderr = child.stderr.take().expect("piped");
        let (stderr_tx, stderr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            let _ = stderr_tx.send(String::from_utf8_lossy(&all).into_owned());
        });
        Self {
            child,
            work_dir,
            close_stdout,
            up,
            stderr: stderr_rx,
            _tmp: tmp,
        }
    }

    /// Waits for the banner that says the fleet is up and the sample runs on every node, and
    /// returns it.
    fn wait_up(&mut self) -> String {
        // The demo's own deadlines (nodes online, then the sample running) come first.
        match self.up.recv_timeout(PATIENCE * 4) {
            Ok(Ok(banner)) => banner,
            Ok(Err(stdout)) => panic!(
                "the demo ended before it was up: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                self.child.try_wait(),
                self.stderr.recv_timeout(PATIENCE).unwrap_or_default()
            ),
            Err(_) => panic!("the demo was not up within {:?}", PATIENCE * 4),
        }
    }

    /// Closes the read end of its stdout, as a `tee` that stopped would.
    fn close_stdout(&self) {
        let _ = self.close_stdout.send(());
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the demo to exit; returns its status and stderr.
    async fn exited(&mut self) -> (ExitStatus, String) {
        let mut status = None;
        // It stops its nodes (each has a grace period), then the orchestrator.
        let exited = eventually(PATIENCE, || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        })
        .await;
        if exited.is_none() {
            panic!(
                "the demo did not exit within {PATIENCE:?}; running: {:#?}\n{}",
                processes_in(&self.work_dir),
                node_logs(&self.work_dir)
            );
        }
        let stderr = self
            .stderr
            .recv_timeout(PATIENCE)
            .expect("stderr ends with the demo");
        (status.expect("exited"), stderr)
    }
}

impl Drop for Demo {
    /// After a failure: nothing of the demo's may outlive the test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, _) in processes_in(&self.work_dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The last lines of each node's log, for a failure message.
fn node_logs(work_dir: &Path) -> String {
    let mut out = String::new();
    for node in ["berlin-1", "paris-1", "madrid-1"] {
        let log = std::fs::read_to_string(work_dir.join("nodes").join(node).join("node.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        out += &format!(
            "--- {node}\n{}\n",
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    out
}

/// Live processes whose command line names `dir`: the demo itself (`--work-dir`), its nodes
/// (their config files) and their workloads (their artifacts in the nodes' data dirs).
fn processes_in(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&needle) && alive(pid)).then_some((pid, cmdline))
        })
        .collect()
}

/// The demo's processes: itself, three nodes and three instances of the sample service.
fn assert_fleet_runs(demo: &Demo) {
    let running = processes_in(&demo.work_dir);
    assert_eq!(
        running.len(),
        1 + 2 * NODE_ADDRESSES.len(),
        "the demo, its nodes and their workloads: {running:#?}\n{}",
        node_logs(&demo.work_dir)
    );
}

async fn assert_clean_exit(demo: &mut Demo) {
    let (status, stderr) = demo.exited().await;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !demo.work_dir.exists(),
        "the work dir is left: {}",
        demo.work_dir.display()
    );
    let mut left = Vec::new();
    let gone = eventually(PATIENCE, || {
        left = processes_in(&demo.work_dir);
        left.is_empty()
    })
    .await;
    assert!(gone.is_some(), "left running: {left:#?}");
}

/// The sample answers through each node's proxy, at the URLs the banner gives.
fn assert_the_proxies_answer(banner: &str) {
    let urls: Vec<(&str, &str)> = banner
        .lines()
        .filter(|l| l.contains("through its proxy"))
        .filter_map(|l| {
            let url = l.split("curl http://").nth(1)?.split('/').next()?;
            let node = l.split("# ").nth(1)?.split(',').next()?;
            Some((url, node))
        })
        .collect();
    assert_eq!(
        urls.len(),
        NODE_ADDRESSES.len(),
        "a proxy URL per node: {banner}"
    );
    for (addr, node) in urls {
        assert_eq!(
            http_get_root(addr).as_deref(),
            Some(format!("hello from {node}\n").as_str()),
            "through {addr}"
        );
    }
}

/// The API URL the banner gives.
fn api_url(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("API:"))
        .map(|url| url.trim().to_owned())
        .unwrap_or_else(|| panic!("the banner names the API: {banner}"))
}

/// What the demo did shows in its orchestrator's metrics: three nodes enrolled and online,
/// and the sample deployed once, as `curl $EDGE_API/metrics` (which the banner suggests)
/// shows it.
async fn assert_metrics_tell_what_happened(banner: &str) {
    let url = format!("{}/metrics", api_url(banner));
    let text = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .expect("/metrics answers")
            .body_mut()
            .read_to_string()
            .expect("a text body")
    })
    .await
    .expect("the scrape finished");
    for series in [
        "edge_workload_deploys_total 1",
        "edge_enrollments_total 3",
        "edge_nodes{status=\"online\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "no `{series}` in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_with_its_reader_gone_stops_everything_and_removes_the_work_dir() {
    let _one = ONE_DEMO.lock().await;
    let mut demo = Demo::start();
    let banner = demo.wait_up();
    assert_fleet_runs(&demo);
    assert_metrics_tell_what_happened(&banner).await;
    assert_the_proxies_answer(&banner);
    // `tee` dies of the same Ctrl-C: whatever the demo says from here on finds no reader.
    demo.close_stdout();
    demo.signal("INT");
    assert_clean_exit(&mut demo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stops_when_nobody_reads_its_stdout() {
    let _one = ONE_DEMO.lock().await;
    let mut demo = Demo::start();
    demo.wait_up();
    assert_fleet_runs(&demo);
    demo.close_stdout();
    assert_clean_exit(&mut demo).await;
}
