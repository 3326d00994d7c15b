//! The ARM builds, as far as an x86_64 machine can tell: for each board profile, the release
//! binaries from `cross/build.sh PROFILE`, their C library checked by `cross/check-abi.sh`, and
//! then the real cross-built `edge-node` under qemu-user (the profile's `qemu` line) enrolling
//! with a real orchestrator, reporting its architecture, and running the cross-built sample
//! service, which answers over HTTP, until SIGTERM stops both. The aarch64 node also runs a
//! multi-arch container image beside a native x86_64 node, each from its own platform.
//!
//! The builds use the `smoke` cargo profile: the code and features the boards get, compiled
//! for build time instead of size (no LTO), so two cold cross builds fit in CI; a second run
//! finds them built. Size and the release link are measured by `benches/footprint.sh`.
//!
//! The scripts install what is missing (qemu-user-static and its binfmt_misc registration,
//! the Rust targets, cross linkers, cargo-zigbuild), which takes Debian or Ubuntu, root or
//! passwordless sudo, and the network: README.md, "Prerequisites", lists it all. Without one
//! of those the test fails with the script's message naming what is missing; it never skips.

use edge_tests::{PATIENCE, TestOrchestrator, alive, eventually, http_get_root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// How long to wait for what the emulated node does. Under qemu-user every instruction is
/// translated, tens of times slower than native, and CI runners are shared: a bound on a hang.
const EMULATED: Duration = Duration::from_secs(PATIENCE.as_secs() * 4);

/// The glibc the gnu profiles promise (Raspberry Pi OS Bullseye).
const MAX_GLIBC: &str = "2.31";

/// One build at a time: two cargo runs would fight over the cores and the target dir, two
/// apt-get runs over the dpkg lock.
static BUILDING: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// What a test needs of a board profile (targets/NAME.toml).
#[derive(Debug)]
struct Profile {
    name: &'static str,
    /// `triple` without its `.2.NN` glibc suffix: the directory cargo writes to.
    triple: String,
    /// The emulator and its arguments, e.g. `qemu-arm-static -cpu cortex-a7`.
    qemu: Vec<String>,
}

impl Profile {
    /// Reads the top-level keys line by line, as the scripts do.
    fn load(name: &'static str) -> Self {
        let path = root().join("targets").join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).expect("the profile exists");
        let value = |key: &str| {
            text.lines()
                .take_while(|l| !l.trim_start().starts_with('['))
                .find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == key).then(|| {
                        let v = v.split('#').next().unwrap_or_default().trim();
                        v.trim_matches('"').to_owned()
                    })
                })
                .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
        };
        let triple = value("triple");
        let triple = triple
            .split_once('.')
            .map_or(triple.as_str(), |(t, _)| t)
            .to_owned();
        let qemu = value("qemu")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Self { name, triple, qemu }
    }

    fn binary(&self, name: &str) -> PathBuf {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map_or_else(|| root().join("target"), |d| root().join(d));
        target_dir.join(&self.triple).join(CARGO_PROFILE).join(name)
    }

    /// Where qemu finds the loader and libc of a dynamically linked gnu binary: what Debian's
    /// libc6-*-cross packages install (cross/build.sh installs them).
    fn loader_prefix(&self) -> Option<String> {
        let (arch, rest) = self.triple.split_once('-')?;
        let env = rest.rsplit('-').next()?;
        if !env.starts_with("gnu") {
            return None;
        }
        let arch = if arch.starts_with("armv7") {
            "arm"
        } else {
            arch
        };
        Some(format!("/usr/{arch}-linux-{env}"))
    }
}

/// The cargo profile of the cross builds (see the module doc).
const CARGO_PROFILE: &str = "smoke";

/// Runs one of the scripts in cross/, its output shown as it goes; returns its stdout.
fn script(args: &[&str]) -> String {
    script_with(args, &[])
}

fn script_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    assert!(
        out.status.success(),
        "bash {args:?}: {}\n{stdout}",
        out.status
    );
    stdout
}

/// Sets up qemu, builds the profile and checks what came out. Blocking, and serialized.
fn build(profile: &Profile) {
    let _one_at_a_time = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    script(&["cross/qemu.sh", "setup"]);
    script_with(
        &["cross/build.sh", profile.name],
        &[("EDGE_CARGO_PROFILE", CARGO_PROFILE)],
    );
    let node = profile.binary("edge-node");
    let hello = profile.binary("edge-hello");
    let said = script(&[
        "cross/check-abi.sh",
        node.to_str().expect("utf-8"),
        MAX_GLIBC,
    ]);
    assert!(said.lines().any(|l| l.starts_with("ok:")), "{said}");
    // The node runs ARM workloads through binfmt_misc, which knows no loader path.
    let said = script(&["cross/check-abi.sh", hello.to_str().expect("utf-8")]);
    assert!(said.contains("statically linked"), "{said}");
}

/// The emulated node process. Dropped early (a failed assertion), it leaves nothing running:
/// the node is killed, and so is every workload group it was seen to start, since a node killed
/// without warning leaves its workloads running by design.
struct Node {
    child: Child,
    log: PathBuf,
    groups: Vec<u32>,
}

impl Node {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// The end of the node's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- node log ---\n{}", self.log_tail())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pgid in &self.groups {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Polls the orchestrator's API with `check` until it gives a value or `within` has passed;
/// a node that exits meanwhile fails at once.
async fn poll<T>(
    orch: &TestOrchestrator,
    node: &mut Node,
    what: &str,
    path: &str,
    within: Duration,
    check: impl Fn(u16, &Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let (status, body) = orch.api("GET", path, None).await;
        if let Some(found) = check(status, &body) {
            return found;
        }
        if let Some(exit) = node.exited() {
            node.fail(&format!("{what}: the node exited ({exit}) first"));
        }
        if tokio::time::Instant::now() > deadline {
            node.fail(&format!(
                "{what}: not within {within:?}; {path} says {body:#}"
            ));
        }
    }
}

/// The memory limit to give the sample, which runs inside qemu: qemu's own memory counts. A
/// node without writable cgroups limits address space instead (RLIMIT_AS), and qemu reserves
/// far more than it uses: a 128 MiB translation buffer, and for a 32-bit guest the whole 4 GiB
/// guest address space up front.
async fn sample_memory(orch: &TestOrchestrator, node: &Node, name: &str, arch: &str) -> u64 {
    let limits = || {
        let fleet = orch.orch.registry.fleet();
        fleet.find(name).and_then(|n| n.info.limits.clone())
    };
    // Reported once the session is up, a moment after the node shows online.
    if eventually(EMULATED, || limits().is_some()).await.is_none() {
        node.fail("the node never said how it limits workloads");
    }
    match (limits().as_deref(), arch) {
        (Some("rlimit"), "arm") => 4608 << 20,
        (Some("rlimit"), _) => 512 << 20,
        _ => 128 << 20,
    }
}

/// Pushes an executable as an artifact through the API, as `edgectl artifact push` does.
async fn push_artifact(orch: &TestOrchestrator, path: &Path) -> String {
    let body = std::fs::read(path).expect("the artifact");
    push(orch, "/v1/artifacts", "application/octet-stream", body).await
}

/// POSTs `body` to `path` and returns the digest the store answers with.
async fn push(
    orch: &TestOrchestrator,
    path: &str,
    content_type: &'static str,
    body: Vec<u8>,
) -> String {
    let url = format!("http://{}{path}", orch.orch.api_addr);
    let token = orch.orch.admin_token.clone();
    let (status, reply) = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .send(&body[..])
            .expect("the API answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a body");
        (status, text)
    })
    .await
    .expect("the push finished");
    assert!(status == 201 || status == 200, "push: {status} {reply}");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    reply["digest"].as_str().expect("a digest").to_owned()
}

/// Builds the board profile `profile_name`, runs its node under qemu on the loopback address
/// `address` (one per test, so that nodes never clash), and runs the sample service on it.
async fn a_board_runs_the_sample(profile_name: &'static str, arch: &str, address: &str) {
    let profile = Profile::load(profile_name);
    let built = tokio::task::spawn_blocking(move || {
        build(&profile);
        profile
    });
    let profile = built
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

    // Installed before the node starts: a node learns its container runtimes at start.
    let runc = edge_tests::installed("runc", "runc");
    let orch = TestOrchestrator::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let name = format!("{profile_name}-qemu");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
             labels = {{ board = \"{profile_name}\" }}\n\
             [containers]\nruntime = \"{}\"\n\
             [orchestrator]\naddress = \"{}\"\nlocal_address = \"{address}\"\n\
             [join]\ntoken = \"{}\"\nca_hash = \"{}\"\n\
             [proxy]\nlisten = \"{address}:0\"\n",
            dir.path().join("data").display(),
            runc.display(),
            orch.orch.quic_addr,
            orch.token(1),
            orch.ca_hash(),
        ),
    )
    .expect("write the config");

    let mut qemu = Command::new(&profile.qemu[0]);
    qemu.args(&profile.qemu[1..]);
    if let Some(prefix) = profile.loader_prefix() {
        qemu.args(["-L", &prefix]);
    }
    let log = dir.path().join("node.log");
    let child = qemu
        .arg(profile.binary("edge-node"))
        .args(["run", "--config"])
        .arg(&config)
        .env("EDGE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the log file"))
        .spawn()
        .expect("qemu starts");
    let mut node = Node {
        child,
        log,
        groups: Vec::new(),
    };

    // It enrolls and says what it is.
    let mut exit = None;
    eventually(EMULATED, || {
        exit = node.exited();
        exit.is_some() || orch.online(&name)
    })
    .await;
    if !orch.online(&name) {
        node.fail(&format!("the node did not come online (exit: {exit:?})"));
    }
    let (status, me) = orch.api("GET", &format!("/v1/nodes/{name}"), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["arch"], arch, "{me:#}");
    assert_eq!(me["status"], "online", "{me:#}");

    // It runs the cross-built sample, placed there by architecture.
    let digest = push_artifact(&orch, &profile.binary("edge-hello")).await;
    // A port free on the node's address now, for the sample and its route.
    let port = std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let memory = sample_memory(&orch, &node, &name, arch).await;
    let spec = json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": digest,
        "args": ["--port", port.to_string()],
        "env": {"GREETING": "hi"},
        "replicas": 1,
        "resources": {"cpu_millis": 200, "memory_bytes": memory},
        "requirements": {"arch": [arch]},
        "expose": [{"port": port, "path_prefix": "/"}]
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let pid = poll(
        &orch,
        &mut node,
        "the sample running",
        "/v1/workloads/hello",
        EMULATED,
        |_, w| {
            let i = &w["instances"][0];
            (i["state"] == "running" && i["node"] == name.as_str())
                .then(|| u32::try_from(i["pid"].as_u64()?).ok())
                .flatten()
        },
    )
    .await;
    // Its process group is its pid: the supervisor starts each instance in its own.
    node.groups.push(pid);

    // It listens on the node's own address (EDGE_NODE_ADDRESS), and the node's proxy routes
    // to it; the proxy's address is in the node's log.
    let sample = format!("{address}:{port}");
    let greeting = format!("hi from {name}\n");
    let answered = eventually(EMULATED, || {
        http_get_root(&sample).as_deref() == Some(greeting.as_str())
    })
    .await;
    if answered.is_none() {
        node.fail("the sample does not answer on its port");
    }
    let proxy = std::fs::read_to_string(&node.log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("proxy listening"))
        .and_then(|l| {
            l.split("addr=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        });
    let Some(proxy) = proxy else {
        node.fail("the node's log does not say where its proxy listens");
    };
    let routed = eventually(EMULATED, || {
        http_get_root(&proxy).as_deref() == Some(greeting.as_str())
    })
    .await;
    if routed.is_none() {
        node.fail(&format!(
            "the sample does not answer through the proxy at {proxy}"
        ));
    }

    if arch == "aarch64" {
        multi_arch_container(&orch, &mut node, &name, address, &profile, dir.path()).await;
    }

    // SIGTERM: the node stops its workloads and exits cleanly, leaving nothing behind.
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut exit = None;
    eventually(EMULATED, || {
        exit = node.exited();
        exit.is_some()
    })
    .await;
    match exit {
        Some(status) if status.success() => {}
        Some(status) => node.fail(&format!("the node exited with {status} on SIGTERM")),
        None => node.fail("the node did not exit on SIGTERM"),
    }
    assert!(
        eventually(PATIENCE, || !alive(pid)).await.is_some(),
        "the sample (pid {pid}) outlived its node"
    );
    // Gone, so the guard must not signal the group: its number may be reused.
    node.groups.clear();
    assert_eq!(http_get_root(&sample), None, "nothing answers any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pi_zero_2w_node_runs_the_sample_under_qemu() {
    a_board_runs_the_sample("pi-zero-2w", "aarch64", "127.0.0.64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armv7_gateway_node_runs_the_sample_under_qemu() {
    a_board_runs_the_sample("armv7-gateway", "arm", "127.0.0.32").await;
}

/// One image for two platforms, deployed on every node: the emulated aarch64 node runs its
/// arm64 platform (the cross-built sample, statically linked) and a native x86_64 node beside
/// it runs the amd64 one (busybox serving a page that names its platform), each through runc.
/// Each answers from its own platform's files on its own address.
async fn multi_arch_container(
    orch: &TestOrchestrator,
    node: &mut Node,
    name: &str,
    address: &str,
    profile: &Profile,
    data: &Path,
) {
    use edge_oci::build::{Archive, Blob, LayerTar, PlatformImage, index_json};
    let runc = edge_tests::installed("runc", "runc");
    let busybox =
        std::fs::read(edge_tests::installed("busybox", "busybox-static")).expect("busybox");
    let arm64 = LayerTar::new()
        .dir("bin/", 0o755)
        .file(
            "bin/hello",
            0o755,
            &std::fs::read(profile.binary("edge-hello")).expect("the sample"),
        )
        .finish();
    let mut amd64 = LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .file(
            "bin/hello",
            0o755,
            b"#!/bin/sh\n# --port P, as the sample takes it\nmkdir -p /tmp/www\n\
              echo \"$GREETING from $EDGE_NODE_NAME (amd64)\" > /tmp/www/index.html\n\
              exec httpd -f -p \"$EDGE_NODE_ADDRESS:$2\" -h /tmp/www\n",
        )
        .dir("tmp/", 0o1777);
    for applet in ["sh", "mkdir", "echo", "httpd"] {
        amd64 = amd64.symlink(&format!("bin/{applet}"), "busybox");
    }
    let exec = serde_json::json!({"Entrypoint": ["/bin/hello"], "Env": ["PATH=/bin"]});
    let platforms = [
        PlatformImage::with_config("arm64", Some("v8"), vec![arm64], exec.clone()),
        PlatformImage::with_config("amd64", None, vec![amd64.finish()], exec),
    ];
    let index = Blob::json(
        edge_oci::image::media_type::OCI_INDEX,
        &index_json(vec![
            platforms[0].manifest.descriptor_for("arm64", Some("v8")),
            platforms[1].manifest.descriptor_for("amd64", None),
        ]),
    );
    let mut archive = Archive::oci(&index_json(vec![index.descriptor()])).blob(&index);
    for p in &platforms {
        archive = archive.blobs(p.blobs());
    }
    let digest = push(orch, "/v1/images", "application/x-tar", archive.tar()).await;

    // The native node, on an address of its own.
    let x86_address = "127.0.0.65";
    let dir = tempfile::tempdir().expect("tmp");
    let config = node_daemon::config::Config::from_toml(&format!(
        "version = 1\nname = \"x86-peer\"\ndata_dir = \"{}\"\nstatus_interval_secs = 1\n\
         [containers]\nruntime = \"{}\"\n\
         [orchestrator]\naddress = \"{}\"\nlocal_address = \"{x86_address}\"\n\
         [join]\ntoken = \"{}\"\nca_hash = \"{}\"\n",
        dir.path().display(),
        runc.display(),
        orch.orch.quic_addr,
        orch.token(1),
        orch.ca_hash(),
    ))
    .expect("the x86_64 node's config");
    let peer = edge_tests::TestNode::spawn(config);
    if eventually(PATIENCE, || orch.online("x86-peer"))
        .await
        .is_none()
    {
        node.fail("the x86_64 node did not come online");
    }

    let port = std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spec = json!({
        "name": "boxed",
        "version": "1.0.0",
        "driver": "oci",
        "image": digest,
        "args": ["--port", port.to_string()],
        "env": {"GREETING": "hi"},
        "placement": "per-node",
        "resources": {"cpu_millis": 200, "memory_bytes": 256u64 << 20},
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    poll(
        orch,
        node,
        "the container running on both nodes",
        "/v1/workloads/boxed",
        EMULATED,
        |_, w| {
            let running: Vec<&str> = w["instances"]
                .as_array()?
                .iter()
                .filter(|i| i["state"] == "running")
                .filter_map(|i| i["node"].as_str())
                .collect();
            (running.len() == 2).then_some(())
        },
    )
    .await;
    for (at, want) in [
        (format!("{address}:{port}"), format!("hi from {name}\n")),
        (
            format!("{x86_address}:{port}"),
            "hi from x86-peer (amd64)\n".to_owned(),
        ),
    ] {
        let answered = eventually(EMULATED, || {
            http_get_root(&at).as_deref() == Some(want.as_str())
        })
        .await;
        if answered.is_none() {
            node.fail(&format!(
                "{at} does not answer {want:?} (it says {:?})",
                http_get_root(&at)
            ));
        }
    }
    let (status, body) = orch.api("DELETE", "/v1/workloads/boxed", None).await;
    assert_eq!(status, 204, "{body}");
    // Stopped, then their writable layers unmounted and deleted.
    let gone = eventually(EMULATED, || {
        http_get_root(&format!("{address}:{port}")).is_none()
            && http_get_root(&format!("{x86_address}:{port}")).is_none()
            && edge_tests::mounts_under(data) == 0
            && edge_tests::mounts_under(dir.path()) == 0
    })
    .await;
    if gone.is_none() {
        node.fail("the containers outlived their deletion");
    }
    peer.stop().await.expect("the x86_64 node stops cleanly");
}
