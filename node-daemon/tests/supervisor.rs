//! The workload supervisor with real processes: `/bin/sh` scripts written into a temp dir,
//! real signals, real cgroups where this machine has them (and a fake cgroupfs tree for v2),
//! a real daemon crash (a child test process killed with SIGKILL).
//!
//! Nothing sleeps to wait: conditions are polled against a deadline. Servers bind port 0.
//! Every test uses its own data dir and its own control-group parent, so they run in parallel.

use node_daemon::supervisor::{
    HealthCheck, HealthProbe, InstanceStatus, LimitsBackend, LogLimits, Resources, RestartPolicy,
    RestartTuning, State, Supervisor, SupervisorError, SupervisorOptions, WorkloadSpec,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::{Instant, interval};

const DEADLINE: Duration = Duration::from_secs(20);
/// Set in the child test process that plays the daemon that crashes.
const HELPER_ENV: &str = "EDGE_SUPERVISOR_CRASH_HELPER";

fn fast_restarts() -> RestartTuning {
    RestartTuning {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(320),
        reset_after: Duration::from_secs(30),
        crash_restarts: 1000,
        crash_window: Duration::from_secs(60),
        crash_delay: Duration::from_secs(60),
    }
}

fn unique_parent(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "edge-node-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test.replace('_', "-")
    )
}

/// A data dir, a scripts dir and a supervisor over them.
struct Fixture {
    data: tempfile::TempDir,
    scripts: tempfile::TempDir,
    limits: LimitsBackend,
    options: SupervisorOptions,
    sup: Supervisor,
}

impl Fixture {
    async fn new(test: &str) -> Self {
        Self::with(test, LimitsBackend::detect(), |_| {}).await
    }

    async fn with(
        test: &str,
        limits: LimitsBackend,
        tweak: impl FnOnce(&mut SupervisorOptions),
    ) -> Self {
        let mut options = SupervisorOptions {
            cgroup_parent: unique_parent(test),
            restart: fast_restarts(),
            logs: LogLimits::default(),
        };
        tweak(&mut options);
        let data = tempfile::tempdir().expect("data dir");
        let scripts = tempfile::tempdir().expect("scripts dir");
        let sup = Supervisor::open_with(data.path(), limits.clone(), options.clone())
            .await
            .expect("open");
        Self {
            data,
            scripts,
            limits,
            options,
            sup,
        }
    }

    /// Writes a script; it runs as `/bin/sh PATH` (never exec'd itself, so a script still
    /// open for writing in another test's fork cannot make it "text file busy").
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.scripts.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn spec(&self, name: &str, body: &str) -> WorkloadSpec {
        let script = self.script(&format!("{name}.sh"), body);
        let mut spec = WorkloadSpec::new(name, "1", "/bin/sh");
        spec.args = vec![script.display().to_string()];
        spec.stop_grace_ms = 3000;
        spec
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scripts.path().join(name)
    }

    fn cgroup_dirs(&self, workload: &str) -> Vec<PathBuf> {
        let parent = &self.options.cgroup_parent;
        match &self.limits {
            LimitsBackend::CgroupV2 { root } => vec![root.join(parent).join(workload)],
            LimitsBackend::CgroupV1 { root } => vec![
                root.join("memory").join(parent).join(workload),
                root.join("cpu").join(parent).join(workload),
            ],
            LimitsBackend::Rlimit => Vec::new(),
        }
    }

    /// The node's parent groups, one per hierarchy.
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        let parent = &self.options.cgroup_parent;
        match &self.limits {
            LimitsBackend::CgroupV2 { root } => vec![root.join(parent)],
            LimitsBackend::CgroupV1 { root } => vec![
                root.join("memory").join(parent),
                root.join("cpu").join(parent),
            ],
            LimitsBackend::Rlimit => Vec::new(),
        }
    }

    async fn finish(self) {
        self.sup.shutdown().await;
        // Dropping removes the (now empty) parent groups.
    }
}

impl Drop for Fixture {
    /// Whatever happened in the test, leave no process and no control group behind.
    fn drop(&mut self) {
        let parents = self.cgroup_parents();
        // Only a real cgroupfs lists live pids; a fake tree's may have been reused.
        for dir in parents.iter().filter(|d| d.starts_with("/sys/fs/cgroup")) {
            for group in fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Ok(procs) = fs::read_to_string(group.path().join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let workloads = self.data.path().join("workloads");
        for w in fs::read_dir(workloads).into_iter().flatten().flatten() {
            if let Some(pid) = fs::read_to_string(w.path().join("instance.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["pid"].as_i64())
                .and_then(|p| i32::try_from(p).ok())
                .filter(|&p| p > 1)
            {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
        for dir in &parents {
            for group in fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = fs::remove_dir(group.path());
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Polls the workload's status until `ok` holds, or panics with the last one seen.
async fn wait_for(
    sup: &Supervisor,
    name: &str,
    what: &str,
    ok: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let start = Instant::now();
    let mut tick = interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let status = sup.status(name);
        if let Some(s) = &status
            && ok(s)
        {
            return s.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name}: waited {DEADLINE:?} for {what}; last status {status:?}"
        );
    }
}

/// Polls `ok` until it holds.
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut tick = interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if ok() {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
    }
}

/// Every event received so far.
fn drain(events: &mut broadcast::Receiver<InstanceStatus>) -> Vec<InstanceStatus> {
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(s) => seen.push(s),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return seen,
        }
    }
}

/// `(state, pgrp)` from `/proc/PID/stat`, `None` if there is no such process.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// A process that exists and is not a zombie (this container's init may never reap).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Live processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
        })
        .collect()
}

fn pid_of(s: &InstanceStatus) -> i32 {
    i32::try_from(s.pid.expect("a running instance has a pid")).expect("pid fits")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What `detect()` should find, read from the file system directly.
fn expected_backend() -> &'static str {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() && is_root() {
        "cgroup-v2"
    } else if root.join("memory/cgroup.procs").is_file() && is_root() {
        "cgroup-v1"
    } else {
        "rlimit"
    }
}

#[tokio::test]
async fn detect_reports_what_this_machine_has() {
    let backend = LimitsBackend::detect();
    println!("LimitsBackend::detect() = {backend:?} ({})", backend.name());
    assert_eq!(backend.name(), expected_backend());
    if expected_backend() == "cgroup-v1" {
        assert_eq!(
            backend,
            LimitsBackend::CgroupV1 {
                root: "/sys/fs/cgroup".into()
            }
        );
    }
}

#[tokio::test]
async fn a_failing_process_is_restarted_with_growing_backoff() {
    let fx = Fixture::new("backoff").await;
    let mut events = fx.sup.subscribe();
    fx.sup
        .apply(fx.spec("fails", "echo attempt; exit 1"))
        .await
        .expect("apply");
    wait_for(&fx.sup, "fails", "5 restarts", |s| s.restarts >= 5).await;

    let seen: Vec<InstanceStatus> = drain(&mut events)
        .into_iter()
        .filter(|s| s.name == "fails")
        .collect();
    let backoffs: Vec<&InstanceStatus> =
        seen.iter().filter(|s| s.state == State::Backoff).collect();
    assert!(backoffs.len() >= 5, "{seen:#?}");
    // Each wait is drawn from 0 ..= min(cap, base * 2^attempt), in the order the restarts came.
    let tuning = fast_restarts();
    for (attempt, b) in backoffs.iter().enumerate().take(5) {
        assert_eq!(b.exit_code, Some(1));
        assert_eq!(b.restarts, attempt as u32, "{b:?}");
        let ms: u64 = b
            .message
            .rsplit("restarting in ")
            .next()
            .and_then(|t| t.strip_suffix(" ms"))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no delay in {:?}", b.message));
        let ceiling = (tuning.backoff_base * (1 << attempt)).min(tuning.backoff_cap);
        assert!(
            Duration::from_millis(ms) <= ceiling,
            "attempt {attempt}: {ms} ms > {ceiling:?}"
        );
        assert!(b.message.starts_with("exited with code 1"), "{}", b.message);
    }
    // The count only ever rises.
    let counts: Vec<u32> = seen.iter().map(|s| s.restarts).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(
        fx.sup
            .log_tail("fails", 100)
            .iter()
            .filter(|l| *l == "attempt")
            .count()
            >= 5
    );
    fx.finish().await;
}

#[tokio::test]
async fn never_and_on_failure_leave_the_exit_code() {
    let fx = Fixture::new("policies").await;
    let mut spec = fx.spec("never-fails", "exit 3");
    spec.restart = RestartPolicy::Never;
    fx.sup.apply(spec).await.expect("apply");
    let mut spec = fx.spec("never-ok", "exit 0");
    spec.restart = RestartPolicy::Never;
    fx.sup.apply(spec).await.expect("apply");
    let mut spec = fx.spec("on-failure-ok", "exit 0");
    spec.restart = RestartPolicy::OnFailure;
    fx.sup.apply(spec).await.expect("apply");
    let mut spec = fx.spec("on-failure-fails", "echo once >> \"$0.count\"; exit 4");
    spec.restart = RestartPolicy::OnFailure;
    fx.sup.apply(spec).await.expect("apply");

    let done = |s: &InstanceStatus| matches!(s.state, State::Failed | State::Stopped);
    let s = wait_for(&fx.sup, "never-fails", "Failed", done).await;
    assert_eq!(
        (s.state, s.exit_code, s.restarts, s.pid),
        (State::Failed, Some(3), 0, None)
    );
    assert_eq!(s.message, "exited with code 3");
    let s = wait_for(&fx.sup, "never-ok", "Stopped", done).await;
    assert_eq!(
        (s.state, s.exit_code, s.restarts),
        (State::Stopped, Some(0), 0)
    );
    let s = wait_for(&fx.sup, "on-failure-ok", "Stopped", done).await;
    assert_eq!(
        (s.state, s.exit_code, s.restarts),
        (State::Stopped, Some(0), 0)
    );
    let s = wait_for(&fx.sup, "on-failure-fails", "restarts", |s| s.restarts >= 2).await;
    assert_eq!(s.exit_code, Some(4));
    fx.finish().await;
}

#[tokio::test]
async fn a_crash_loop_is_reported() {
    let fx = Fixture::with("crashloop", LimitsBackend::detect(), |o| {
        o.restart.crash_restarts = 4;
        o.restart.crash_delay = Duration::from_secs(600);
    })
    .await;
    fx.sup
        .apply(fx.spec("loops", "exit 2"))
        .await
        .expect("apply");
    let s = wait_for(&fx.sup, "loops", "crash loop", |s| {
        s.message.starts_with("crash loop")
    })
    .await;
    assert_eq!(s.state, State::Backoff);
    assert_eq!(
        s.restarts, 3,
        "the fourth exit within the window is the loop"
    );
    assert_eq!(s.exit_code, Some(2));
    assert!(s.message.contains("exited with code 2"), "{}", s.message);
    fx.finish().await;
}

#[tokio::test]
async fn the_memory_limit_kills_what_allocates_past_it() {
    let fx = Fixture::new("oom").await;
    let mut spec = fx.spec(
        "hog",
        "echo allocating; x=aaaaaaaaaaaaaaaa; while :; do x=\"$x$x\"; done",
    );
    spec.resources.memory_bytes = Some(32 << 20);
    spec.restart = RestartPolicy::Never;
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "hog", "the hog to die", |s| {
        s.state == State::Failed
    })
    .await;
    println!("{}: {s:?}", fx.limits.name());
    match fx.limits {
        LimitsBackend::CgroupV1 { .. } | LimitsBackend::CgroupV2 { .. } => {
            assert_eq!(s.exit_code, Some(137), "SIGKILL from the OOM killer");
            assert!(s.message.contains("OOM"), "{}", s.message);
            for dir in fx.cgroup_dirs("hog") {
                assert!(!dir.exists(), "{} not removed", dir.display());
            }
        }
        // RLIMIT_AS: the shell's allocation fails and it exits non-zero.
        LimitsBackend::Rlimit => assert_ne!(s.exit_code, Some(0)),
    }
    fx.finish().await;
}

#[tokio::test]
async fn the_real_cgroup_holds_the_limits_and_the_process() {
    let fx = Fixture::new("limits").await;
    let mut spec = fx.spec("limited", "while :; do sleep 0.05; done");
    spec.resources = Resources {
        cpu_millis: Some(250),
        memory_bytes: Some(32 << 20),
    };
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "limited", "Running", |s| s.state == State::Running).await;
    let pid = pid_of(&s).to_string();
    let read =
        |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match &fx.limits {
        LimitsBackend::CgroupV1 { .. } => {
            let dirs = fx.cgroup_dirs("limited");
            let (memory, cpu) = (&dirs[0], &dirs[1]);
            assert_eq!(
                read(memory.join("memory.limit_in_bytes")).trim(),
                "33554432"
            );
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "25000");
            assert_eq!(read(cpu.join("cpu.cfs_period_us")).trim(), "100000");
            assert!(read(memory.join("cgroup.procs")).lines().any(|l| l == pid));
            assert!(read(cpu.join("cgroup.procs")).lines().any(|l| l == pid));
        }
        LimitsBackend::CgroupV2 { .. } => {
            let dir = &fx.cgroup_dirs("limited")[0];
            assert_eq!(read(dir.join("memory.max")).trim(), "33554432");
            assert_eq!(read(dir.join("cpu.max")).trim(), "25000 100000");
            assert!(read(dir.join("cgroup.procs")).lines().any(|l| l == pid));
        }
        LimitsBackend::Rlimit => {
            assert!(
                s.message.contains("cpu limit not enforced"),
                "{}",
                s.message
            );
            let limits = read(PathBuf::from(format!("/proc/{pid}/limits")));
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max address space"))
                .expect("AS line");
            assert!(line.contains("33554432"), "{line}");
        }
    }
    fx.sup.remove("limited").await.expect("remove");
    for dir in fx.cgroup_dirs("limited") {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    assert!(!fx.data.path().join("workloads/limited").exists());
    // A daemon that stops leaves no control group behind, not even its parent.
    fx.sup
        .apply(fx.spec("kept", "exec sleep 600"))
        .await
        .expect("apply");
    wait_for(&fx.sup, "kept", "Running", |s| s.state == State::Running).await;
    fx.sup.shutdown().await;
    let parents = fx.cgroup_parents();
    for dir in parents {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[tokio::test]
async fn cgroup_v2_writes_checked_against_a_fake_cgroupfs() {
    let root = tempfile::tempdir().expect("fake cgroupfs");
    fs::write(
        root.path().join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    )
    .expect("write");
    fs::write(root.path().join("cgroup.subtree_control"), "").expect("write");
    let backend = LimitsBackend::detect_at(root.path());
    assert_eq!(
        backend,
        LimitsBackend::CgroupV2 {
            root: root.path().to_owned()
        }
    );
    assert_eq!(backend.name(), "cgroup-v2");

    let fx = Fixture::with("fakev2", backend, |_| {}).await;
    let mut spec = fx.spec("web", "while :; do sleep 0.05; done");
    spec.resources = Resources {
        cpu_millis: Some(250),
        memory_bytes: Some(32 << 20),
    };
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "web", "Running", |s| s.state == State::Running).await;

    let read =
        |p: &str| fs::read_to_string(root.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let parent = &fx.options.cgroup_parent;
    assert_eq!(read("cgroup.subtree_control"), "+cpu +memory");
    assert_eq!(
        read(&format!("{parent}/cgroup.subtree_control")),
        "+cpu +memory"
    );
    assert_eq!(read(&format!("{parent}/web/memory.max")), "33554432");
    assert_eq!(read(&format!("{parent}/web/cpu.max")), "25000 100000");
    assert_eq!(
        read(&format!("{parent}/web/cgroup.procs")),
        pid_of(&s).to_string()
    );

    // Replacing with no limits writes "max" rather than leaving the old values.
    let mut spec = fx.spec("web", "while :; do sleep 0.05; done");
    spec.version = "2".into();
    fx.sup.apply(spec).await.expect("apply");
    let s2 = wait_for(&fx.sup, "web", "v2 running", |s| {
        s.version == "2" && s.state == State::Running
    })
    .await;
    assert_ne!(s2.pid, s.pid);
    assert_eq!(read(&format!("{parent}/web/memory.max")), "max");
    assert_eq!(read(&format!("{parent}/web/cpu.max")), "max 100000");
    assert!(!alive(pid_of(&s)));
    fx.finish().await;
}

#[tokio::test]
async fn unusable_cgroups_fall_back_to_rlimit_and_say_so() {
    let root = tempfile::tempdir().expect("fake cgroupfs");
    fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").expect("write");
    // Enabling controllers fails: the control file is a directory.
    fs::create_dir(root.path().join("cgroup.subtree_control")).expect("mkdir");
    let data = tempfile::tempdir().expect("data dir");
    let backend = LimitsBackend::CgroupV2 {
        root: root.path().to_owned(),
    };
    let sup = Supervisor::open(data.path(), backend).await.expect("open");
    assert_eq!(sup.limits(), &LimitsBackend::Rlimit);
    assert_eq!(sup.limits().name(), "rlimit");
}

#[tokio::test]
async fn sigterm_reaches_a_script_that_traps_it() {
    let fx = Fixture::new("sigterm").await;
    let mut spec = fx.spec(
        "polite",
        "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    spec.stop_grace_ms = 10_000;
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "polite", "ready", |s| s.state == State::Running).await;
    let mut lines = fx.sup.follow_logs("polite").expect("follow");
    eventually("ready", || {
        fx.sup.log_tail("polite", 10).contains(&"ready".to_owned())
    })
    .await;
    let mut events = fx.sup.subscribe();

    fx.sup.remove("polite").await.expect("remove");
    let got: Vec<String> = std::iter::from_fn(|| lines.try_recv().ok()).collect();
    assert!(got.contains(&"got TERM".to_owned()), "{got:?}");
    let last = drain(&mut events).pop().expect("a final status");
    assert_eq!(
        (last.state, last.message.as_str()),
        (State::Stopped, "stopped")
    );
    assert_eq!(group_members(pid_of(&s)), Vec::<i32>::new());
    fx.finish().await;
}

#[tokio::test]
async fn a_script_ignoring_sigterm_is_killed_after_the_grace_period() {
    let fx = Fixture::new("sigkill").await;
    let mut spec = fx.spec(
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    spec.stop_grace_ms = 400;
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "stubborn", "Running", |s| {
        s.state == State::Running
    })
    .await;
    eventually("ready", || {
        fx.sup
            .log_tail("stubborn", 10)
            .contains(&"ready".to_owned())
    })
    .await;
    let mut events = fx.sup.subscribe();

    let started = Instant::now();
    fx.sup.remove("stubborn").await.expect("remove");
    let took = started.elapsed();
    // A lower bound only: timers never fire early, so this cannot fail on a slow machine.
    assert!(
        took >= Duration::from_millis(400),
        "killed before the grace period: {took:?}"
    );
    let last = drain(&mut events).pop().expect("a final status");
    assert_eq!(last.state, State::Stopped);
    assert!(last.message.contains("SIGKILL"), "{}", last.message);
    assert_eq!(last.exit_code, Some(137));
    assert_eq!(group_members(pid_of(&s)), Vec::<i32>::new());
    fx.finish().await;
}

#[tokio::test]
async fn grandchildren_are_gone_after_stop() {
    let fx = Fixture::new("grandchildren").await;
    let dir = fx.scripts.path().display().to_string();
    let spec = fx.spec(
        "forks",
        &format!(
            "sleep 1000 & echo $! > {dir}/grandchild.pid\n\
             setsid sleep 1000 & echo $! > {dir}/escaped.pid\n\
             echo ready\n\
             wait"
        ),
    );
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "forks", "Running", |s| s.state == State::Running).await;
    eventually("ready", || {
        fx.sup.log_tail("forks", 10).contains(&"ready".to_owned())
    })
    .await;
    let read_pid = |f: &str| -> i32 {
        fs::read_to_string(fx.path(f))
            .expect(f)
            .trim()
            .parse()
            .expect("pid")
    };
    let (grandchild, escaped) = (read_pid("grandchild.pid"), read_pid("escaped.pid"));
    assert!(alive(grandchild) && alive(escaped));
    assert!(group_members(pid_of(&s)).contains(&grandchild));
    eventually("setsid to take effect", || {
        proc_stat(escaped).is_some_and(|(_, pgrp)| pgrp == escaped)
    })
    .await;

    fx.sup.remove("forks").await.expect("remove");
    assert!(
        !alive(grandchild),
        "the grandchild in the process group survived"
    );
    assert_eq!(group_members(pid_of(&s)), Vec::<i32>::new());
    if fx.limits == LimitsBackend::Rlimit {
        // Without cgroups a process that left the group cannot be found: end it ourselves.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(escaped),
            nix::sys::signal::SIGKILL,
        );
    } else {
        assert!(
            !alive(escaped),
            "the grandchild that left the process group survived"
        );
    }
    fx.finish().await;
}

#[tokio::test]
async fn stdout_and_stderr_reach_the_tail_the_file_and_followers() {
    let fx = Fixture::new("logs").await;
    let spec = fx.spec(
        "chatty",
        "echo out-1; echo err-1 >&2; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.05; done",
    );
    fx.sup.apply(spec).await.expect("apply");
    eventually("both streams in the tail", || {
        let tail = fx.sup.log_tail("chatty", 1000);
        tail.contains(&"out-1".to_owned()) && tail.contains(&"err-1".to_owned())
    })
    .await;
    let file = fx.data.path().join("workloads/chatty/logs/current.log");
    let text = fs::read_to_string(&file).expect("log file");
    assert!(
        text.lines().any(|l| l == "out-1") && text.lines().any(|l| l == "err-1"),
        "{text}"
    );

    let mut follow = fx.sup.follow_logs("chatty").expect("follow");
    let line = tokio::time::timeout(DEADLINE, follow.recv())
        .await
        .expect("a new line")
        .expect("open");
    assert!(line.starts_with("tick-"), "{line}");
    let next = tokio::time::timeout(DEADLINE, follow.recv())
        .await
        .expect("another line")
        .expect("open");
    let n = |l: &str| {
        l.trim_start_matches("tick-")
            .parse::<u32>()
            .expect("tick number")
    };
    assert_eq!(n(&next), n(&line) + 1);
    assert_eq!(fx.sup.log_tail("chatty", 2).len(), 2);
    assert!(fx.sup.follow_logs("nope").is_none());
    assert!(fx.sup.log_tail("nope", 5).is_empty());
    fx.finish().await;
}

#[tokio::test]
async fn log_files_rotate_at_the_size_limit() {
    let fx = Fixture::with("rotate", LimitsBackend::detect(), |o| {
        o.logs.file_max_bytes = 1000;
        o.logs.files_kept = 2;
    })
    .await;
    // 60 lines of 50 bytes: 3000 bytes.
    let spec = fx.spec(
        "verbose",
        "i=100; while [ $i -lt 160 ]; do echo \"line-$i-$(printf '%040d' 0)\"; i=$((i+1)); done; echo done; exec sleep 1000",
    );
    fx.sup.apply(spec).await.expect("apply");
    eventually("all lines", || {
        fx.sup
            .log_tail("verbose", 1)
            .first()
            .is_some_and(|l| l == "done")
    })
    .await;
    let logs = fx.data.path().join("workloads/verbose/logs");
    let read = |f: &str| fs::read_to_string(logs.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let (current, one, two) = (
        read("current.log"),
        read("current.log.1"),
        read("current.log.2"),
    );
    assert!(!logs.join("current.log.3").exists());
    for text in [&current, &one, &two] {
        assert!(text.len() <= 1000, "{} bytes", text.len());
        assert!(text.ends_with('\n'), "rotation happens between lines");
    }
    // The kept files are the newest lines, in order, with nothing lost between them.
    let all: Vec<&str> = two
        .lines()
        .chain(one.lines())
        .chain(current.lines())
        .collect();
    assert_eq!(all.last(), Some(&"done"));
    let numbers: Vec<u32> = all
        .iter()
        .filter_map(|l| l.strip_prefix("line-")?.split('-').next()?.parse().ok())
        .collect();
    assert_eq!(numbers.last(), Some(&159));
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(
        numbers.len() >= 38,
        "three files of 1000 bytes hold ~59 lines: {}",
        numbers.len()
    );
    fx.finish().await;
}

/// A tiny HTTP server for the probe on 127.0.0.1: 200 while `healthy`, else 500. Records
/// request lines.
async fn health_server(healthy: Arc<AtomicBool>) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    health_server_on("127.0.0.1", healthy).await
}

/// [`health_server`] listening on `ip` only.
async fn health_server_on(
    ip: &str,
    healthy: Arc<AtomicBool>,
) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let healthy = healthy.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head);
                if let Some(line) = text.lines().next() {
                    seen.lock().expect("lock").push(line.to_owned());
                }
                let answer: &[u8] = if healthy.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(answer).await;
            });
        }
    });
    (port, requests)
}

fn probe(check: HealthCheck) -> HealthProbe {
    HealthProbe {
        interval_ms: 50,
        timeout_ms: 1000,
        success_threshold: 1,
        failure_threshold: 2,
        initial_delay_ms: 0,
        unhealthy_restart_ms: None,
        ..HealthProbe::new(check)
    }
}

#[tokio::test]
async fn an_http_probe_flips_running_and_unhealthy() {
    let fx = Fixture::new("http").await;
    let healthy = Arc::new(AtomicBool::new(true));
    let (port, requests) = health_server(healthy.clone()).await;
    let mut spec = fx.spec("web", "while :; do sleep 0.05; done");
    spec.health = Some(probe(HealthCheck::Http {
        port,
        path: "/healthz".into(),
    }));
    fx.sup.apply(spec).await.expect("apply");

    let first = wait_for(&fx.sup, "web", "Running", |s| s.state == State::Running).await;
    healthy.store(false, Ordering::SeqCst);
    let s = wait_for(&fx.sup, "web", "Unhealthy", |s| s.state == State::Unhealthy).await;
    assert!(s.message.contains("HTTP status 500"), "{}", s.message);
    healthy.store(true, Ordering::SeqCst);
    let s = wait_for(&fx.sup, "web", "Running again", |s| {
        s.state == State::Running
    })
    .await;
    assert_eq!(s.pid, first.pid, "no restart without unhealthy_restart_ms");
    assert_eq!(s.restarts, 0);
    let lines = requests.lock().expect("lock").clone();
    assert!(
        lines.iter().all(|l| l == "GET /healthz HTTP/1.1"),
        "{lines:?}"
    );
    fx.finish().await;
}

/// A workload told to listen on the node's address (`EDGE_NODE_ADDRESS`, from the node's
/// `local_address`) binds that address only: its probes must go there, not to 127.0.0.1.
#[tokio::test]
async fn probes_go_to_the_address_the_workload_is_told_to_listen_on() {
    let fx = Fixture::new("node-address").await;
    // The services: one HTTP, one plain TCP, each on 127.0.0.3 and nowhere else.
    let (http_port, requests) =
        health_server_on("127.0.0.3", Arc::new(AtomicBool::new(true))).await;
    let tcp = TcpListener::bind("127.0.0.3:0").await.expect("bind");
    let tcp_port = tcp.local_addr().expect("addr").port();
    for (name, check) in [
        (
            "web",
            HealthCheck::Http {
                port: http_port,
                path: "/healthz".into(),
            },
        ),
        ("svc", HealthCheck::Tcp { port: tcp_port }),
    ] {
        let mut spec = fx.spec(name, "while :; do sleep 0.05; done");
        spec.env
            .insert("EDGE_NODE_ADDRESS".into(), "127.0.0.3".into());
        spec.health = Some(probe(check));
        fx.sup.apply(spec).await.expect("apply");
    }
    for name in ["web", "svc"] {
        let s = wait_for(&fx.sup, name, "Running", |s| s.state == State::Running).await;
        assert_eq!(s.restarts, 0, "{name}: {}", s.message);
    }
    let lines = requests.lock().expect("lock").clone();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l == "GET /healthz HTTP/1.1"),
        "{lines:?}"
    );
    fx.finish().await;
}

#[tokio::test]
async fn a_tcp_probe_restarts_an_instance_that_stays_unhealthy() {
    let fx = Fixture::new("tcp").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut spec = fx.spec("svc", "while :; do sleep 0.05; done");
    spec.health = Some(HealthProbe {
        unhealthy_restart_ms: Some(300),
        ..probe(HealthCheck::Tcp { port })
    });
    fx.sup.apply(spec).await.expect("apply");
    let first = wait_for(&fx.sup, "svc", "Running", |s| s.state == State::Running).await;
    drop(listener);
    let s = wait_for(&fx.sup, "svc", "Unhealthy", |s| s.state == State::Unhealthy).await;
    assert!(s.message.contains("health check failed"), "{}", s.message);
    let s = wait_for(&fx.sup, "svc", "a restart", |s| {
        s.restarts >= 1 && s.pid.is_some()
    })
    .await;
    assert_ne!(s.pid, first.pid);
    assert!(!alive(pid_of(&first)));
    fx.finish().await;
}

#[tokio::test]
async fn an_exec_probe_follows_the_command_exit() {
    let fx = Fixture::new("exec").await;
    let flag = fx.path("healthy.flag");
    fs::write(&flag, "").expect("flag");
    let mut spec = fx.spec("checked", "while :; do sleep 0.05; done");
    spec.health = Some(probe(HealthCheck::Exec {
        command: "/bin/sh".into(),
        args: vec!["-c".into(), format!("test -f {}", flag.display())],
    }));
    fx.sup.apply(spec).await.expect("apply");
    wait_for(&fx.sup, "checked", "Running", |s| s.state == State::Running).await;
    fs::remove_file(&flag).expect("rm flag");
    let s = wait_for(&fx.sup, "checked", "Unhealthy", |s| {
        s.state == State::Unhealthy
    })
    .await;
    assert!(s.message.contains("exit status: 1"), "{}", s.message);
    fs::write(&flag, "").expect("flag");
    wait_for(&fx.sup, "checked", "Running again", |s| {
        s.state == State::Running
    })
    .await;
    fx.finish().await;
}

#[tokio::test]
async fn a_changed_spec_replaces_the_instance_and_the_same_spec_does_not() {
    let fx = Fixture::new("replace").await;
    let spec = fx.spec("app", "echo v1; while :; do sleep 0.05; done");
    fx.sup.apply(spec.clone()).await.expect("apply");
    let v1 = wait_for(&fx.sup, "app", "Running", |s| s.state == State::Running).await;
    fx.sup.apply(spec.clone()).await.expect("same spec");
    assert_eq!(fx.sup.status("app").and_then(|s| s.pid), v1.pid);

    let mut v2 = spec;
    v2.version = "2".into();
    v2.env.insert("GREETING".into(), "hi".into());
    v2.args = vec![
        "-c".into(),
        "echo \"v2 $GREETING\"; while :; do sleep 0.05; done".into(),
    ];
    fx.sup.apply(v2).await.expect("apply v2");
    let s = wait_for(&fx.sup, "app", "v2", |s| {
        s.version == "2" && s.state == State::Running
    })
    .await;
    assert_ne!(s.pid, v1.pid);
    assert!(!alive(pid_of(&v1)));
    eventually("v2 output", || {
        fx.sup.log_tail("app", 10).contains(&"v2 hi".to_owned())
    })
    .await;
    let stored =
        fs::read_to_string(fx.data.path().join("workloads/app/spec.json")).expect("spec.json");
    assert!(stored.contains("\"version\": \"2\""), "{stored}");
    assert_eq!(fx.sup.statuses().len(), 1);
    fx.finish().await;
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_field() {
    let fx = Fixture::new("invalid").await;
    let mut spec = fx.spec("ok", "exit 0");
    spec.name = "../etc".into();
    match fx.sup.apply(spec).await {
        Err(SupervisorError::InvalidSpec(e)) => assert_eq!(e.path(), "name"),
        other => panic!("{other:?}"),
    }
    let mut spec = fx.spec("ok", "exit 0");
    spec.user = Some("no-such-user-here".into());
    assert!(matches!(
        fx.sup.apply(spec).await,
        Err(SupervisorError::User { .. })
    ));
    assert!(fx.sup.statuses().is_empty());
    assert!(
        fs::read_dir(fx.data.path().join("workloads"))
            .expect("dir")
            .next()
            .is_none()
    );
    fx.finish().await;
}

#[tokio::test]
async fn runs_as_the_named_user() {
    let fx = Fixture::new("user").await;
    let mut spec = fx.spec("nobodys", "while :; do sleep 0.05; done");
    spec.user = Some("nobody".into());
    if !is_root() {
        assert!(matches!(
            fx.sup.apply(spec).await,
            Err(SupervisorError::User { .. })
        ));
        return fx.finish().await;
    }
    // nobody must be able to read the script.
    fs::set_permissions(fx.scripts.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fx.sup.apply(spec).await.expect("apply");
    let s = wait_for(&fx.sup, "nobodys", "Running", |s| s.state == State::Running).await;
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("nobody exists");
    let status = fs::read_to_string(format!("/proc/{}/status", pid_of(&s))).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .filter_map(|u| u.parse().ok())
        .collect();
    assert_eq!(uids, vec![nobody.uid.as_raw(); 4], "{uid_line}");
    let gid_line = status
        .lines()
        .find(|l| l.starts_with("Gid:"))
        .expect("Gid line");
    assert!(
        gid_line
            .split_whitespace()
            .skip(1)
            .all(|g| g == nobody.gid.as_raw().to_string()),
        "{gid_line}"
    );
    fx.finish().await;
}

/// The daemon that crashes, played by a copy of this test binary running the very test that
/// started it, with [`HELPER_ENV`] set to the data dir: it runs one workload, says so, and
/// waits to be killed with SIGKILL.
async fn play_the_daemon_that_crashes(data_dir: String) -> ! {
    let parent = std::env::var("EDGE_SUPERVISOR_CRASH_PARENT").expect("parent");
    let limits = match std::env::var("EDGE_SUPERVISOR_CRASH_LIMITS").as_deref() {
        Ok("rlimit") => LimitsBackend::Rlimit,
        _ => LimitsBackend::detect(),
    };
    let script = std::env::var("EDGE_SUPERVISOR_CRASH_SCRIPT").expect("script");
    let options = SupervisorOptions {
        cgroup_parent: parent,
        ..SupervisorOptions::default()
    };
    let sup = Supervisor::open_with(Path::new(&data_dir), limits, options)
        .await
        .expect("open");
    let mut spec = WorkloadSpec::new("survivor", "1", "/bin/sh");
    spec.args = vec![script];
    sup.apply(spec).await.expect("apply");
    let s = wait_for(&sup, "survivor", "Running", |s| s.state == State::Running).await;
    println!("HELPER-READY {}", pid_of(&s));
    std::future::pending().await
}

/// A daemon (a child process, see [`play_the_daemon_that_crashes`]) runs a workload and is
/// killed with SIGKILL; a new supervisor on its data dir ends the old instance and starts the
/// workload again. `test` is the name of the calling test, which the child runs; `tag` names
/// its control groups.
async fn crash_and_recover(test: &str, tag: &str, limits: LimitsBackend, limits_env: &str) {
    if let Ok(data_dir) = std::env::var(HELPER_ENV) {
        play_the_daemon_that_crashes(data_dir).await;
    }
    let fx = Fixture::with(tag, limits, |_| {}).await;
    // Silent after its first line: its stdout pipe dies with the daemon.
    let script = fx.script("survivor.sh", "echo up; while :; do sleep 0.05; done");
    let mut helper = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, fx.data.path())
        .env("EDGE_SUPERVISOR_CRASH_PARENT", &fx.options.cgroup_parent)
        .env("EDGE_SUPERVISOR_CRASH_LIMITS", limits_env)
        .env("EDGE_SUPERVISOR_CRASH_SCRIPT", &script)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the helper daemon");
    let mut out = BufReader::new(helper.stdout.take().expect("stdout")).lines();
    let old_pid: i32 = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = out.next_line().await.expect("read helper") {
            // libtest prints "test NAME ... " first, on the same line.
            if let Some(pid) = line.split("HELPER-READY ").nth(1) {
                return pid.trim().parse().expect("pid");
            }
        }
        panic!("the helper exited before its workload ran");
    })
    .await
    .expect("the helper's workload runs");

    // The daemon crashes; its workload does not.
    helper.kill().await.expect("SIGKILL the helper");
    assert!(
        alive(old_pid),
        "the workload should outlive the crashed daemon"
    );

    // The daemon comes back. (How soon is measured by benches/workloads.sh, not here.)
    let sup = Supervisor::open_with(fx.data.path(), fx.limits.clone(), fx.options.clone())
        .await
        .expect("reopen");
    assert_eq!(sup.recover().await.expect("recover"), ["survivor"]);
    let s = wait_for(&sup, "survivor", "Running", |s| s.state == State::Running).await;
    assert_ne!(pid_of(&s), old_pid);
    assert!(
        !alive(old_pid),
        "the previous daemon's workload is still running"
    );
    assert_eq!(group_members(old_pid), Vec::<i32>::new());
    sup.shutdown().await;
    assert!(!alive(pid_of(&s)));
    // The spec survives a clean shutdown too.
    assert!(
        fx.data
            .path()
            .join("workloads/survivor/spec.json")
            .is_file()
    );
    fx.finish().await;
}

#[tokio::test]
async fn recovers_after_a_daemon_crash() {
    crash_and_recover(
        "recovers_after_a_daemon_crash",
        "crash",
        LimitsBackend::detect(),
        "detect",
    )
    .await;
}

/// Without cgroups the previous instance is found through its pid record and start time.
#[tokio::test]
async fn recovers_after_a_daemon_crash_without_cgroups() {
    crash_and_recover(
        "recovers_after_a_daemon_crash_without_cgroups",
        "crash-rlimit",
        LimitsBackend::Rlimit,
        "rlimit",
    )
    .await;
}
