//! Containers (`driver = "oci"`) through the built binaries and a real OCI runtime: an image
//! built here around Debian's static busybox, pushed with `edgectl image push`, deployed with
//! `edgectl deploy`, unpacked by the node and run by runc (installed by the project's apt
//! helper; runc runs on this machine's cgroup v1, where crun refuses the hybrid setup). The
//! container serves through the node's proxy, its logs reach `edgectl logs`, a crash is
//! restarted, a memory limit is enforced by the OOM killer, a killed daemon's container is
//! found and replaced on the next start even with the orchestrator gone, and a delete leaves
//! nothing of it on the node: no container in the runtime's state, no bundle, no layer.

use edge_oci::build::{LayerTar, PlatformImage};
use edge_tests::cli::{Edgectl, node_config, run_proxy_node};
use edge_tests::images::{busybox_layer, httpd_image};
use edge_tests::{PATIENCE, free_port, installed, start_orchestrator};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One answer: status and body.
fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    edge_tests::http_get(addr, host, path).map(|(status, _, body)| (status, body))
}

/// Polls `check` every 100 ms until it holds or `PATIENCE` runs out.
async fn until(what: &str, check: impl FnMut() -> bool) {
    until_within(PATIENCE, what, check).await;
}

async fn until_within(within: Duration, what: &str, check: impl FnMut() -> bool) {
    let seen = edge_tests::eventually(within, check).await;
    assert!(seen.is_some(), "{what}: not seen in time");
}

/// The base layer: busybox with the applets the tests call, and the accounts it runs as.
fn base_layer() -> Vec<u8> {
    let busybox = std::fs::read(installed("busybox", "busybox-static")).expect("busybox");
    busybox_layer(
        &busybox,
        &["sh", "head", "tr", "httpd", "sleep", "cat"],
        None,
    )
}

/// The site: its page, and a log of starts that the container appends to (a file of the
/// image, changed in the instance's writable layer).
fn site_layer(text: &str) -> Vec<u8> {
    LayerTar::new()
        .dir("www/", 0o755)
        .file("www/index.html", 0o644, text.as_bytes())
        .file_owned("www/starts.txt", 0o644, 1000, 1000, b"")
        .finish()
}

fn image(layers: Vec<Vec<u8>>) -> PlatformImage {
    httpd_image(layers)
}

/// Pushes `image` with `edgectl image push` and returns its digest.
fn push(ctl: &Edgectl, dir: &Path, image: &PlatformImage) -> String {
    let file = dir.join(format!("{}.tar", image.manifest.digest.hex()));
    std::fs::write(&file, image.archive()).expect("write the archive");
    let pushed = ctl.json(&["image", "push", file.to_str().expect("utf-8")]);
    pushed["digest"].as_str().expect("a digest").to_owned()
}

fn deploy(ctl: &Edgectl, dir: &Path, name: &str, toml: &str) {
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(&spec, toml).expect("write spec");
    let out = ctl.run(&["deploy", "-f", spec.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn instance(ctl: &Edgectl, name: &str) -> Value {
    let out = ctl.run(&["workloads", name, "--json"]);
    if !out.status.success() {
        return Value::Null;
    }
    let w: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    w["instances"][0].clone()
}

/// The container's processes, from the group the runtime put it in below the instance's
/// (cgroup v1 here, v2 on a Pi).
fn container_pids(node: &str, workload: &str) -> Vec<i32> {
    let group = format!("edge-node-{node}/{workload}/container/cgroup.procs");
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::read_to_string(Path::new(root).join(&group)).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The containers runc holds in the node's state directory.
fn runc_list(runc: &Path, data: &Path) -> Vec<String> {
    let out = std::process::Command::new(runc)
        .arg("--root")
        .arg(data.join("oci/state"))
        .args(["list", "--quiet"])
        .output()
        .expect("runc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn entries(dir: &PathBuf) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_serves_restarts_is_limited_survives_its_daemon_and_leaves_nothing() {
    let runc = installed("runc", "runc");
    let dir = tempfile::tempdir().expect("tmp");
    let orch_dir = dir.path().join("orchestrator");
    let (orch, quic, api) = start_orchestrator(&orch_dir);
    let ctl = Edgectl::admin(&api, &orch_dir);
    let join = ctl.json(&["token", "create", "--uses", "1"]);
    let config = node_config(
        dir.path(),
        "box-1",
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[containers]\nruntime = \"{}\"\n",
            runc.display()
        ),
        &quic,
        &join,
    );
    let data = dir.path().join("box-1/data");
    let (node, lines, proxy) = run_proxy_node(&config);

    let digest = push(
        &ctl,
        dir.path(),
        &image(vec![base_layer(), site_layer("hello from a container\n")]),
    );
    let port = free_port();
    deploy(
        &ctl,
        dir.path(),
        "boxed",
        &format!(
            "name = \"boxed\"\nversion = \"1.0.0\"\ndriver = \"oci\"\nimage = \"{digest}\"\n\
             args = [\"sh\", \"-c\", \"echo start >> /www/starts.txt && \
                      exec httpd -f -v -p 127.0.0.1:{port} -h /www\"]\n\
             replicas = 1\n\
             [resources]\ncpu_millis = 200\nmemory_bytes = 33554432\n\
             [health]\nhttp = {{ port = {port}, path = \"/\" }}\ninterval_secs = 3\n\
             [[expose]]\nport = {port}\nhost = \"boxed.example\"\n"
        ),
    );

    // Served through the node's proxy, by a process in its own pid namespace.
    let served = edge_tests::eventually(PATIENCE, || {
        get(proxy, "boxed.example", "/")
            .is_some_and(|(status, body)| status == 200 && body == "hello from a container\n")
    })
    .await;
    if served.is_none() {
        let logged: Vec<String> = lines.try_iter().collect();
        panic!(
            "the container answers through the proxy: not in time; {}\n{}",
            instance(&ctl, "boxed"),
            logged.join("\n")
        );
    }
    let first = instance(&ctl, "boxed");
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["restarts"], 0, "{first}");
    // It wrote outside /tmp, into a file of its image: the write is its own.
    assert_eq!(
        get(proxy, "boxed.example", "/starts.txt"),
        Some((200, "start\n".into()))
    );
    let layer_copies = |data: &Path| -> Vec<String> {
        let layers = std::fs::read_dir(data.join("oci/layers")).expect("layer cache");
        layers
            .flatten()
            .filter_map(|l| std::fs::read_to_string(l.path().join("www/starts.txt")).ok())
            .collect()
    };
    assert_eq!(layer_copies(&data), [""], "the image's file is as it was");
    // httpd forks a child per request: wait for the one serving ours to end.
    until("httpd alone in the container's group", || {
        container_pids("box-1", "boxed").len() == 1
    })
    .await;
    let pids = container_pids("box-1", "boxed");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "pid 1 in its namespace: {nspid}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("\t1000\t")),
        "runs as the image's user: {status}"
    );

    // Its output reaches the operator.
    until("httpd's request log in edgectl logs", || {
        let out = ctl.run(&["logs", "boxed"]);
        String::from_utf8_lossy(&out.stdout).contains("response:200")
    })
    .await;

    // A crash is restarted, as for any process.
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    until("restarted after the crash", || {
        let i = instance(&ctl, "boxed");
        i["state"] == "running"
            && i["restarts"] == 1
            && get(proxy, "boxed.example", "/").is_some_and(|(s, _)| s == 200)
    })
    .await;
    // A restart keeps the instance's writable layer, as `docker restart` does.
    let direct: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        get(direct, "boxed.example", "/starts.txt"),
        Some((200, "start\nstart\n".into()))
    );

    // A second image on the same base: only what differs crosses the link.
    let other = image(vec![base_layer(), site_layer("another site\n")]);
    let other_digest = push(&ctl, dir.path(), &other);
    let other_port = free_port();
    deploy(
        &ctl,
        dir.path(),
        "other",
        &format!(
            "name = \"other\"\nversion = \"1\"\ndriver = \"oci\"\nimage = \"{other_digest}\"\n\
             args = [\"httpd\", \"-f\", \"-p\", \"127.0.0.1:{other_port}\", \"-h\", \"/www\"]\n\
             replicas = 1\n[resources]\ncpu_millis = 100\nmemory_bytes = 16777216\n"
        ),
    );
    let other_addr: SocketAddr = ([127, 0, 0, 1], other_port).into();
    until("the second image serves", || {
        get(other_addr, "x", "/")
            .is_some_and(|(status, body)| status == 200 && body == "another site\n")
    })
    .await;
    let fetched: u64 = lines
        .try_iter()
        .filter(|l| {
            l.contains("artifact fetched")
                && (l.contains("workload=other") || l.contains("workload=\"other\""))
        })
        .filter_map(|l| {
            l.split("bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let sizes = |blobs: &[&edge_oci::build::Blob]| -> u64 {
        blobs.iter().map(|b| b.bytes.len() as u64).sum()
    };
    assert_eq!(
        fetched,
        sizes(&[&other.manifest, &other.config, &other.layers[1]]),
        "the manifest, the config and the site layer; the base layer ({} B) is on the node",
        other.layers[0].bytes.len()
    );
    let out = ctl.run(&["delete", "other"]);
    assert!(out.status.success());

    // A memory limit is the kernel's: a container that outgrows it is OOM-killed and says so.
    deploy(
        &ctl,
        dir.path(),
        "hog",
        &format!(
            "name = \"hog\"\nversion = \"1\"\ndriver = \"oci\"\nimage = \"{digest}\"\n\
             args = [\"sh\", \"-c\", \"x=$(head -c 67108864 /dev/zero | tr '\\\\000' a); echo survived\"]\n\
             replicas = 1\n\
             [resources]\ncpu_millis = 200\nmemory_bytes = 16777216\n\
             [restart]\npolicy = \"never\"\n"
        ),
    );
    let mut seen = Value::Null;
    let killed = edge_tests::eventually(PATIENCE, || {
        seen = instance(&ctl, "hog");
        seen["state"] == "failed"
            && seen["message"]
                .as_str()
                .is_some_and(|m| m.contains("out of memory"))
    })
    .await;
    assert!(killed.is_some(), "the hog killed for its memory: {seen}");
    let out = ctl.run(&["delete", "hog"]);
    assert!(out.status.success());
    until("the hog's container and bundle gone from the node", || {
        runc_list(&runc, &data) == ["boxed"] && entries(&data.join("oci/bundles")) == 1
    })
    .await;

    // The daemon is killed, and the orchestrator is gone too: the next start finds the
    // container it left, replaces it, and serves again from what is on disk.
    drop(lines);
    drop(node);
    drop(orch);
    let (node, lines, proxy) = run_proxy_node(&config);
    // Straight to the container: the proxy may answer from its cache while it is down.
    let again = edge_tests::eventually(PATIENCE, || {
        get(direct, "boxed.example", "/")
            .is_some_and(|(status, body)| status == 200 && body == "hello from a container\n")
    })
    .await;
    if again.is_none() {
        let logged: Vec<String> = lines.try_iter().collect();
        panic!(
            "served again after the daemon's restart, offline: not in time\n{}",
            logged.join("\n")
        );
    }
    until("one container, not two", || {
        let after = container_pids("box-1", "boxed");
        after.len() == 1 && !after.contains(&pids[0])
    })
    .await;
    assert_eq!(runc_list(&runc, &data), ["boxed"]);
    assert_eq!(
        get(direct, "boxed.example", "/starts.txt"),
        Some((200, "start\nstart\nstart\n".into())),
        "the same instance, its writes kept across the daemon's restart"
    );

    // Deleted with the orchestrator back: nothing of it is left on the node.
    let (_orch, _, api) = edge_tests::start_orchestrator_on(&orch_dir, &quic);
    let ctl = Edgectl::admin(&api, &orch_dir);
    // Its reconnect backs off while the orchestrator is away (up to 30 s between tries).
    until_within(2 * PATIENCE, "the node back online", || {
        ctl.status_of("box-1").as_deref() == Some("online")
    })
    .await;
    let out = ctl.run(&["delete", "boxed"]);
    assert!(out.status.success());
    until("no container, bundle, mount or layer left", || {
        runc_list(&runc, &data).is_empty()
            && entries(&data.join("oci/bundles")) == 0
            && entries(&data.join("oci/rootfs")) == 0
            && entries(&data.join("oci/layers")) == 0
            && edge_tests::mounts_under(&data) == 0
    })
    .await;
    assert!(get(proxy, "boxed.example", "/").is_some_and(|(status, _)| status == 404));
    drop((node, lines));
}
