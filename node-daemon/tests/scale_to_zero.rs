//! The supervisor's side of scale to zero, with real processes: a workload that scales to
//! zero is stored but not started, a wake starts it once however many ask and answers when it
//! is ready, a sleep stops it and leaves it dormant, and a restarted supervisor brings it back
//! dormant.
//!
//! The workload is a `/bin/sh` script that records each start in a file and then sleeps; the
//! port it "exposes" is bound by the test itself, so the test decides when it accepts
//! connections. Nothing sleeps to wait: conditions are polled against a deadline.

use node_daemon::supervisor::spec::{Balance, Expose, ScaleToZero};
use node_daemon::supervisor::{
    DORMANT, HealthCheck, HealthProbe, InstanceStatus, LimitsBackend, LogLimits, Readiness,
    RestartPolicy, RestartTuning, ScaleError, State, Supervisor, SupervisorOptions, WorkloadSpec,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{Instant, interval};

const DEADLINE: Duration = Duration::from_secs(20);

fn unique_parent(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "edge-node-s2z-{}-{}-{test}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
    )
}

fn options(test: &str) -> SupervisorOptions {
    SupervisorOptions {
        cgroup_parent: unique_parent(test),
        restart: RestartTuning {
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(100),
            ..RestartTuning::default()
        },
        logs: LogLimits::default(),
    }
}

/// A port nothing listens on (bound, noted, released): the test binds it when the workload
/// should count as listening.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A data dir, a scripts dir and a supervisor over them; every process a script started is
/// killed when it is dropped, whatever the test did.
struct Fixture {
    data: tempfile::TempDir,
    scripts: tempfile::TempDir,
    options: SupervisorOptions,
    sup: Supervisor,
}

impl Fixture {
    async fn new(test: &str) -> Self {
        let data = tempfile::tempdir().expect("data dir");
        let scripts = tempfile::tempdir().expect("scripts dir");
        let options = options(test);
        let sup = open(data.path(), &options).await;
        Self {
            data,
            scripts,
            options,
            sup,
        }
    }

    /// Where the script of workload `name` writes its pid at each start.
    fn starts_file(&self, name: &str) -> PathBuf {
        self.scripts.path().join(format!("{name}.starts"))
    }

    /// The pids of each start of workload `name`, in order.
    fn starts(&self, name: &str) -> Vec<i32> {
        fs::read_to_string(self.starts_file(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    /// A workload that scales to zero after `idle_secs`, exposing `port`, that records its
    /// start and then runs `body` (by default, sleeps).
    fn spec(&self, name: &str, port: u16, body: &str) -> WorkloadSpec {
        let script = self.scripts.path().join(format!("{name}.sh"));
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ >> {}\n{body}\n",
                self.starts_file(name).display()
            ),
        )
        .expect("write script");
        let mut spec = WorkloadSpec::new(name, "1", "/bin/sh");
        spec.args = vec![script.display().to_string()];
        spec.stop_grace_ms = 2000;
        spec.expose = vec![Expose {
            port,
            host: None,
            path_prefix: Some("/".into()),
            weight: 100,
            timeout_secs: 30,
            retries: 0,
            cache: false,
            stale_if_offline_secs: 0,
            balance: Balance::RoundRobin,
        }];
        spec.scale_to_zero = Some(ScaleToZero { idle_secs: 60 });
        spec
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for entry in fs::read_dir(self.scripts.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "starts") {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                for pid in text.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    if pid > 1 {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

async fn open(data: &Path, options: &SupervisorOptions) -> Supervisor {
    Supervisor::open_with(data, LimitsBackend::detect(), options.clone())
        .await
        .expect("open")
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let rest = &t[t.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

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

/// The pid of the running instance.
fn pid(sup: &Supervisor, name: &str) -> i32 {
    sup.status(name)
        .and_then(|s| s.pid)
        .and_then(|p| i32::try_from(p).ok())
        .expect("a running instance")
}

fn is_dormant(s: &InstanceStatus) -> bool {
    s.state == State::Stopped && s.message == DORMANT && s.pid.is_none()
}

#[tokio::test]
async fn a_workload_that_scales_to_zero_is_stored_but_not_started() {
    let fx = Fixture::new("stored").await;
    let mut events = fx.sup.subscribe();
    let port = free_port();
    fx.sup
        .apply(fx.spec("lazy", port, "exec sleep 600"))
        .await
        .expect("apply");
    eventually("reported dormant", || {
        fx.sup.status("lazy").is_some_and(|s| is_dormant(&s))
    })
    .await;
    assert_eq!(fx.sup.readiness("lazy"), Some(Readiness::Dormant));
    assert!(fx.starts("lazy").is_empty(), "no process was started");
    assert!(
        fx.data.path().join("workloads/lazy/spec.json").is_file(),
        "stored, so a restart knows it"
    );
    let mut seen = Vec::new();
    while let Ok(s) = events.try_recv() {
        seen.push(s.state);
    }
    assert!(
        !seen.contains(&State::Starting) && !seen.contains(&State::Running),
        "{seen:?}"
    );
    // Applying the same spec again changes nothing.
    fx.sup
        .apply(fx.spec("lazy", port, "exec sleep 600"))
        .await
        .expect("apply again");
    assert!(fx.starts("lazy").is_empty());
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn wakes_at_once_start_it_once_and_answer_when_its_port_accepts() {
    let fx = Fixture::new("wakes").await;
    let port = free_port();
    fx.sup
        .apply(fx.spec("shop", port, "exec sleep 600"))
        .await
        .expect("apply");
    let wakes: Vec<_> = (0..8)
        .map(|_| {
            let sup = fx.sup.clone();
            tokio::spawn(async move { sup.wake("shop").await })
        })
        .collect();
    eventually("the process started", || !fx.starts("shop").is_empty()).await;
    eventually("running", || {
        fx.sup
            .status("shop")
            .is_some_and(|s| s.state == State::Running)
    })
    .await;
    // Running, but nothing accepts on its port yet: not ready, and no wake has answered.
    assert_eq!(fx.sup.readiness("shop"), Some(Readiness::Waking));
    assert!(wakes.iter().all(|w| !w.is_finished()));

    let _listening = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the workload's port");
    for wake in wakes {
        let answer = tokio::time::timeout(DEADLINE, wake)
            .await
            .expect("answered once the port accepts")
            .expect("no panic");
        assert_eq!(answer, Ok(()));
    }
    assert_eq!(fx.sup.readiness("shop"), Some(Readiness::Ready));
    assert_eq!(fx.starts("shop").len(), 1, "eight wakes, one start");
    let pid = fx.sup.status("shop").and_then(|s| s.pid);
    // Ready: a wake answers at once and starts nothing.
    assert_eq!(fx.sup.wake("shop").await, Ok(()));
    assert_eq!(fx.starts("shop").len(), 1);
    assert_eq!(fx.sup.status("shop").and_then(|s| s.pid), pid);
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn a_sleep_stops_it_and_the_next_wake_starts_it_afresh() {
    let fx = Fixture::new("sleep").await;
    // Bound here, on a port the kernel picks: a port found free and bound later may be
    // taken in between by a test running beside this one.
    let listening = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("a port for the workload");
    let port = listening.local_addr().expect("bound").port();
    fx.sup
        .apply(fx.spec("nap", port, "exec sleep 600"))
        .await
        .expect("apply");
    // The port accepts already (the test holds it), so ready means running.
    assert_eq!(fx.sup.wake("nap").await, Ok(()));
    let first = pid(&fx.sup, "nap");
    assert!(alive(first));

    assert_eq!(fx.sup.sleep("nap").await, Ok(()));
    assert!(!alive(first), "stopped before the sleep answered");
    let status = fx.sup.status("nap").expect("still held");
    assert!(is_dormant(&status), "{status:?}");
    assert_eq!(fx.sup.readiness("nap"), Some(Readiness::Dormant));
    assert_eq!(fx.sup.sleep("nap").await, Ok(()), "dormant already");

    assert_eq!(fx.sup.wake("nap").await, Ok(()));
    let second = pid(&fx.sup, "nap");
    assert!(alive(second) && second != first);
    let status = fx.sup.status("nap").expect("held");
    assert_eq!(
        (status.state, status.restarts),
        (State::Running, 0),
        "a wake is a start, not a restart"
    );
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn a_restarted_supervisor_brings_it_back_dormant() {
    let mut fx = Fixture::new("restart").await;
    // Bound here, on a port the kernel picks: a port found free and bound later may be
    // taken in between by a test running beside this one.
    let listening = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("a port for the workload");
    let port = listening.local_addr().expect("bound").port();
    fx.sup
        .apply(fx.spec("back", port, "exec sleep 600"))
        .await
        .expect("apply");
    assert_eq!(fx.sup.wake("back").await, Ok(()));
    let first = pid(&fx.sup, "back");
    eventually("the start recorded", || fx.starts("back").len() == 1).await;
    fx.sup.shutdown().await;
    assert!(!alive(first));

    fx.sup = open(fx.data.path(), &fx.options).await;
    assert_eq!(
        fx.sup.recover().await.expect("recover"),
        Vec::<String>::new(),
        "nothing started"
    );
    eventually("reported dormant", || {
        fx.sup.status("back").is_some_and(|s| is_dormant(&s))
    })
    .await;
    assert_eq!(fx.starts("back").len(), 1, "not started again");
    // And it still wakes.
    assert_eq!(fx.sup.wake("back").await, Ok(()));
    assert_ne!(pid(&fx.sup, "back"), first);
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn a_workload_that_exits_before_it_is_ready_fails_the_wake_at_once() {
    let fx = Fixture::new("exits").await;
    let mut spec = fx.spec("broken", free_port(), "exit 3");
    spec.restart = RestartPolicy::OnFailure;
    fx.sup.apply(spec).await.expect("apply");
    let answer = tokio::time::timeout(DEADLINE, fx.sup.wake("broken"))
        .await
        .expect("answered without waiting for a port that never opens");
    match answer {
        Err(ScaleError::Exited { state, message }) => {
            assert_eq!(state, State::Backoff);
            assert!(message.contains("code 3"), "{message}");
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    // Put back to sleep, it no longer restarts: the next wake starts it afresh.
    assert_eq!(fx.sup.sleep("broken").await, Ok(()));
    assert!(fx.sup.status("broken").is_some_and(|s| is_dormant(&s)));
    assert_eq!(fx.sup.readiness("broken"), Some(Readiness::Dormant));
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn with_a_health_check_the_check_decides_readiness() {
    let fx = Fixture::new("health").await;
    // The exposed port never accepts; the health check's port does.
    let check = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let check_port = check.local_addr().expect("addr").port();
    let mut spec = fx.spec("checked", free_port(), "exec sleep 600");
    spec.health = Some(HealthProbe {
        interval_ms: 50,
        ..HealthProbe::new(HealthCheck::Tcp { port: check_port })
    });
    fx.sup.apply(spec).await.expect("apply");
    let answer = tokio::time::timeout(DEADLINE, fx.sup.wake("checked"))
        .await
        .expect("ready once the check passes");
    assert_eq!(answer, Ok(()));
    eventually("one start", || fx.starts("checked").len() == 1).await;
    fx.sup.shutdown().await;
}

#[tokio::test]
async fn wakes_and_sleeps_of_what_is_not_there_or_always_on_are_refused() {
    let fx = Fixture::new("refused").await;
    assert_eq!(
        fx.sup.wake("nobody").await,
        Err(ScaleError::Unknown("nobody".into()))
    );
    assert_eq!(
        fx.sup.sleep("nobody").await,
        Err(ScaleError::Unknown("nobody".into()))
    );
    let mut always = fx.spec("always", free_port(), "exec sleep 600");
    always.scale_to_zero = None;
    fx.sup.apply(always).await.expect("apply");
    eventually("started when applied", || fx.starts("always").len() == 1).await;
    assert_eq!(fx.sup.sleep("always").await, Err(ScaleError::AlwaysOn));
    assert!(alive(fx.starts("always")[0]), "left running");
    // A wake only waits for it: running without a check or scale to zero is ready.
    assert_eq!(fx.sup.wake("always").await, Ok(()));
    assert_eq!(fx.starts("always").len(), 1);
    fx.sup.shutdown().await;
}
