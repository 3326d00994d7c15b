//! Starting workload processes, signalling their groups, and reading `/proc`.
//!
//! Each instance is started through a tiny `/bin/sh` *gate*: the shell is spawned in a new
//! process group (`process_group(0)`, so pgid = pid) as the workload's user, in its working
//! directory, with its environment; it applies `ulimit -v` when memory must be limited by
//! rlimit, then blocks reading one line from a pipe. Only after the supervisor has moved the
//! pid into the instance's control group does it write that line, and the shell `exec`s the
//! workload (same pid, same group, stdin from `/dev/null`). So the workload never runs a single
//! instruction outside its limits, without `pre_exec` (which is `unsafe`, forbidden here). If
//! the daemon dies before releasing the gate, the pipe closes and the shell exits 125.
//! Exit codes of the gate itself: 125 (never released), 126 (`ulimit` refused), 127 (the
//! command was not found; the shell says which on stderr, which lands in the logs).
//!
//! This module never decides anything: it does what the lifecycle's actions ask.

use super::cgroup::Group;
use super::spec::WorkloadSpec;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid, User, geteuid};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// `PATH` for workloads that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SHELL: &str = "/bin/sh";
/// How often a sweep looks again for processes that are still there.
const SWEEP_POLL: Duration = Duration::from_millis(20);
/// How long a sweep keeps sending SIGKILL before it reports survivors.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// The identity a workload runs as, resolved from its user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolves `name`. As root, any existing user; otherwise only the daemon's own user (then
/// `None`: nothing to change), because switching needs privileges the daemon lacks.
pub fn resolve_user(name: &str) -> Result<Option<RunAs>, String> {
    let me = geteuid();
    let user = User::from_name(name)
        .map_err(|e| format!("looking up user {name}: {e}"))?
        .ok_or_else(|| format!("no user named {name} on this node"))?;
    if me.is_root() {
        Ok(Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        }))
    } else if user.uid == me {
        Ok(None)
    } else {
        Err(format!(
            "cannot run as {name}: the daemon is not running as root"
        ))
    }
}

/// A started, still gated instance.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    pub pid: u32,
    pub gate: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Spawns the gate for `spec`. The workload runs only after [`release`].
pub fn spawn(
    spec: &WorkloadSpec,
    run_as: Option<RunAs>,
    rlimit_as: Option<u64>,
) -> io::Result<Started> {
    if spec.command.is_absolute() && !spec.command.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("command {} does not exist", spec.command.display()),
        ));
    }
    let dir = spec.working_dir.as_deref().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("working directory {} does not exist", dir.display()),
        ));
    }
    let mut script = String::new();
    if let Some(bytes) = rlimit_as {
        script.push_str(&format!("ulimit -v {} || exit 126; ", bytes.div_ceil(1024)));
    }
    script.push_str(r#"read -r go || exit 125; exec "$0" "$@" </dev/null"#);

    let mut cmd = Command::new(SHELL);
    cmd.arg("-c")
        .arg(script)
        .arg(&spec.command)
        .args(&spec.args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&spec.env)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Some(r) = run_as {
        cmd.uid(r.uid.as_raw()).gid(r.gid.as_raw());
    }
    let mut child = cmd.spawn()?;
    let missing = |what| io::Error::other(format!("spawned without a {what} pipe"));
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("exited before it could be tracked"))?;
    let gate = child.stdin.take().ok_or_else(|| missing("stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
    Ok(Started {
        child,
        pid,
        gate,
        stdout,
        stderr,
    })
}

/// Lets a gated instance exec its workload.
pub async fn release(mut gate: ChildStdin) -> io::Result<()> {
    gate.write_all(b"go\n").await?;
    gate.flush().await
}

/// `(exit code, signal)` of a finished process.
pub fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), status.signal())
}

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks after boot: with the pid, it names one process for good.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name may hold spaces and parentheses: fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), pgrp 5, starttime 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process that exists and is not a zombie (a zombie runs nothing; its parent reaps it).
pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x'))
        })
        .collect()
}

/// A process group worth signalling: never 0 (our own group) or 1 (init's).
fn real_group(pgid: Option<i32>) -> Option<Pid> {
    pgid.filter(|&g| g > 1).map(Pid::from_raw)
}

/// Everything an instance started that is still alive: its process group (if known) and its
/// control group (which also holds processes that left the process group).
pub fn members(pgid: Option<i32>, group: Option<&Group>) -> Vec<i32> {
    let mut all = real_group(pgid).map_or_else(Vec::new, |g| group_members(g.as_raw()));
    if let Some(g) = group {
        all.extend(g.pids());
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// Sends `signal` to the process group and to every process in the control group.
pub fn signal_all(pgid: Option<i32>, group: Option<&Group>, signal: Signal) {
    if signal == Signal::SIGKILL
        && let Some(g) = group
    {
        g.kill_all();
    }
    // ESRCH (nothing left) is the good case; nothing else can fail for our own children.
    if let Some(g) = real_group(pgid) {
        let _ = killpg(g, signal);
    }
    if let Some(g) = group {
        for pid in g.pids() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Makes sure nothing of an instance survives: SIGTERM, up to `grace` to leave, then SIGKILL
/// until the process group and the control group are empty. Returns the pids still alive
/// after [`KILL_DEADLINE`] (a process stuck in the kernel; normally none).
pub async fn sweep(pgid: Option<i32>, group: Option<&Group>, grace: Duration) -> Vec<i32> {
    if members(pgid, group).is_empty() {
        return Vec::new();
    }
    signal_all(pgid, group, Signal::SIGTERM);
    let mut tick = tokio::time::interval(SWEEP_POLL);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        if members(pgid, group).is_empty() {
            return Vec::new();
        }
    }
    kill_until_gone(pgid, group).await
}

/// SIGKILL until nothing is left, or [`KILL_DEADLINE`]. Returns the survivors.
pub async fn kill_until_gone(pgid: Option<i32>, group: Option<&Group>) -> Vec<i32> {
    let mut tick = tokio::time::interval(SWEEP_POLL);
    let deadline = tokio::time::Instant::now() + KILL_DEADLINE;
    loop {
        let left = members(pgid, group);
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        // Again each round: a process may have forked between the read and the kill.
        signal_all(pgid, group, Signal::SIGKILL);
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("12 (x) R"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn our_own_stat_is_readable() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert!(s.start_ticks > 0);
        assert!(is_alive(me));
    }
}
