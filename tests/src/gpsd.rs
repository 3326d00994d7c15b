//! [`FakeGps`]: a real gpsd whose receiver replays a [`Drive`], on a loopback port of its
//! own, for tests that move a node.
//!
//! gpsfake (Debian `gpsd-clients`) opens a pty, starts gpsd (Debian `gpsd`) with the pty as
//! its receiver's serial port, and writes the drive's NMEA log into it at the chosen pace.
//! From the bytes on that line up, what a client sees is gpsd's own code. Both packages are
//! installed on demand through [`crate::installed`].
//!
//! It never leaves a process behind: gpsfake and its gpsd run in a process group of their
//! own and the whole group is killed. (gpsfake stops its gpsd only when it is asked to stop;
//! killed, it leaves a gpsd serving the port.)
//!
//! What gpsd 3.22 makes of a drive, one TPV report per epoch:
//! - With a fix, `mode` 3 (GGA's altitude is enough, no GSA needed) and `lat`, `lon`. The
//!   drive's first epoch also gets an earlier mode-2 report, sent after its RMC, before gpsd
//!   has learned that GGA ends each epoch.
//! - Without a fix, `mode` 1 with the epoch's `time` and no `lat`/`lon`.
//! - A log replayed again goes back in time; gpsd takes it as it comes.
//! - A log played once ends with gpsfake's `# EOF` comment, on which gpsd closes the device
//!   as if the receiver were unplugged: a `DEVICE` report with `activated` 0, then nothing.
//!
//! gpsd runs as it would on a node: reading the receiver whether or not a client watches
//! (`-n`), so a client that connects late has missed the first epochs, as on a car that has
//! been driving. Started as root it drops to the `gpsd` user, which the pty allows.

use crate::nmea::{Drive, SENTENCES_PER_EPOCH};
use crate::{PATIENCE, Proc};
use std::collections::HashSet;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a start looks whether gpsd listens yet.
const POLL: Duration = Duration::from_millis(20);

/// How a [`FakeGps`] plays its drive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    epochs_per_sec: f64,
    looping: bool,
}

impl Replay {
    /// An epoch (a second of the drive) a second, once.
    pub fn real_time() -> Self {
        Self {
            epochs_per_sec: 1.0,
            looping: false,
        }
    }

    /// `times` epochs a second, once. `f64::INFINITY` is as fast as gpsfake writes: a few
    /// hundred epochs a second, and gpsd reports every one.
    pub fn faster(times: f64) -> Self {
        assert!(times > 0.0, "a replay moves forward");
        Self {
            epochs_per_sec: times,
            looping: false,
        }
    }

    /// From the first epoch again after the last, for ever, the time going back with it.
    /// Without this, the receiver goes away after the last epoch: gpsd closes the device
    /// (clients get a `DEVICE` report with `activated` 0) and stays up.
    pub fn looping(self) -> Self {
        Self {
            looping: true,
            ..self
        }
    }

    /// gpsfake's `-c`: the pause before each sentence, in seconds.
    fn pause_secs(&self) -> f64 {
        1.0 / (self.epochs_per_sec * SENTENCES_PER_EPOCH as f64)
    }
}

impl Default for Replay {
    fn default() -> Self {
        Self::real_time()
    }
}

/// gpsd on `127.0.0.1:`[`addr`](Self::addr), its receiver driving a [`Drive`]. Dropping it
/// kills gpsfake and gpsd.
#[derive(Debug)]
pub struct FakeGps {
    port: u16,
    replay: Replay,
    /// The log, and gpsfake's control socket (its `TMPDIR`).
    dir: tempfile::TempDir,
    running: Option<Running>,
}

/// A gpsfake and its gpsd, in the process group `pgid`.
#[derive(Debug)]
struct Running {
    gpsfake: Proc,
    pgid: u32,
    /// Set, under its lock, once the group is killed: nothing signals its pids after that,
    /// when they may be another process's.
    killed: Arc<Mutex<bool>>,
}

/// Why a gpsfake did not come up.
enum StartError {
    /// The port is someone else's.
    Clash,
    /// It exited or hung, with the last lines it wrote.
    Failed(String),
}

impl FakeGps {
    /// Starts gpsd on a free loopback port, its receiver playing `drive` as `replay` says
    /// from the first epoch on. Returns once gpsd accepts connections there (it blocks for
    /// the few hundred milliseconds that takes).
    pub fn start(drive: &Drive, replay: Replay) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("drive.nmea"), drive.to_log()).expect("write the log");
        let mut gps = Self {
            port: 0,
            replay,
            dir,
            running: None,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Free now; if another process takes it before gpsd does, try another.
            gps.port = crate::free_port();
            match gps.launch(deadline) {
                Ok(()) => return gps,
                Err(StartError::Clash) if Instant::now() < deadline => {}
                Err(StartError::Clash) => panic!("no free port for gpsd within {PATIENCE:?}"),
                Err(StartError::Failed(why)) => panic!("gpsfake did not start: {why}"),
            }
        }
    }

    /// Where gpsd listens.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// gpsd goes away (as when it crashes or the receiver's USB is pulled and the service
    /// stops): gpsd and gpsfake are killed, clients' connections close, new ones are
    /// refused. Nothing happens if it is already stopped.
    pub fn stop_gpsd(&mut self) {
        if let Some(running) = self.running.take() {
            let gone = running.kill();
            assert!(gone, "gpsd still runs {PATIENCE:?} after SIGKILL");
        }
        release_shared_memory(self.port);
    }

    /// gpsd comes back on the same port, the receiver playing the drive again from its first
    /// epoch. Stops the running one first, if any. gpsfake cannot restart its gpsd: this is
    /// a new gpsfake.
    pub fn restart(&mut self) {
        self.stop_gpsd();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.launch(deadline) {
                Ok(()) => return,
                // Someone took the port in the meantime; they may let it go. Each try
                // starts a gpsfake (a fraction of a second): no spinning.
                Err(StartError::Clash) if Instant::now() < deadline => {}
                Err(StartError::Clash) => {
                    panic!("port {} stayed taken for {PATIENCE:?}", self.port)
                }
                Err(StartError::Failed(why)) => panic!("gpsfake did not start again: {why}"),
            }
        }
    }

    /// gpsd comes back on the same port with the receiver playing `drive` as `replay`
    /// says: the next leg of a journey, for a client that keeps its address.
    pub fn play(&mut self, drive: &Drive, replay: Replay) {
        self.stop_gpsd();
        std::fs::write(self.dir.path().join("drive.nmea"), drive.to_log()).expect("write the log");
        self.replay = replay;
        self.restart();
    }

    /// Starts gpsfake on `self.port` and waits until its gpsd listens on 127.0.0.1 there.
    fn launch(&mut self, deadline: Instant) -> Result<(), StartError> {
        let gpsfake = crate::installed("gpsfake", "gpsd-clients");
        let gpsd = crate::installed("gpsd", "gpsd");
        let mut command = Command::new(gpsfake);
        command
            // -q: no "Processing"/"log cycle begins" chatter. -n: gpsd reads the receiver
            // without waiting for a client, as on a node.
            .args(["-q", "-n", "-P", &self.port.to_string()])
            .args(["-c", &self.replay.pause_secs().to_string()]);
        if !self.replay.looping {
            // -1: play once; -l: print each line as it is written, so that the end shows.
            command.args(["-1", "-l"]);
        }
        command
            .arg(self.dir.path().join("drive.nmea"))
            // gpsfake runs the gpsd it finds there first, and puts its control socket in
            // TMPDIR (which goes with the test).
            .env("GPSD_HOME", gpsd.parent().expect("gpsd is in a directory"))
            .env("TMPDIR", self.dir.path())
            // Line by line: the end of the log is read from -l's lines.
            .env("PYTHONUNBUFFERED", "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(if self.replay.looping {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("gpsfake starts");
        let pgid = child.id();
        let killed = Arc::new(Mutex::new(false));
        let stderr = lines_of(child.stderr.take().expect("piped"));
        if let Some(stdout) = child.stdout.take() {
            pause_at_end(stdout, pgid, killed.clone());
        }
        let running = Running {
            gpsfake: Proc(child),
            pgid,
            killed,
        };
        let mut said = Vec::new();
        loop {
            match stderr.recv_timeout(POLL) {
                Ok(line) => said.push(line),
                // gpsd holds the same stderr: both have exited.
                Err(RecvTimeoutError::Disconnected) => {
                    running.kill();
                    return Err(StartError::Failed(said.join("\n")));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            match listening(pgid, self.port) {
                Listening::Ours => break,
                Listening::Clash => {
                    running.kill();
                    release_shared_memory(self.port);
                    return Err(StartError::Clash);
                }
                Listening::NotYet if Instant::now() > deadline => {
                    running.kill();
                    return Err(StartError::Failed(format!(
                        "gpsd did not listen on port {} within {PATIENCE:?}; it said:\n{}",
                        self.port,
                        said.join("\n")
                    )));
                }
                Listening::NotYet => {}
            }
        }
        self.running = Some(running);
        Ok(())
    }
}

impl Drop for FakeGps {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // No panic here: it may run while a test unwinds.
            running.kill();
        }
        release_shared_memory(self.port);
    }
}

impl Running {
    /// Kills the group with SIGKILL, reaps gpsfake, and waits until no process of the group
    /// is left (gpsd, orphaned, is reaped by init). Whether they all went within
    /// [`PATIENCE`].
    fn kill(self) -> bool {
        {
            let mut killed = self.killed.lock().unwrap_or_else(|e| e.into_inner());
            signal(&format!("-{}", self.pgid), "KILL");
            *killed = true;
        }
        drop(self.gpsfake);
        let deadline = Instant::now() + PATIENCE;
        while !group(self.pgid).is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            // SIGKILL is already on its way: this is a wait of microseconds.
            std::thread::yield_now();
        }
        true
    }
}

/// Sends `SIGsig` to `target` (a pid, or `-pgid` for a group), as the other harnesses do:
/// through kill(1), since the crate forbids the unsafe a direct call would take.
fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .stderr(Stdio::null())
        .status();
}

/// Pauses gpsfake (SIGSTOP) once it has written the whole log. Left running, a gpsfake past
/// the end of a `-1` log spins on a core, and a minute later exits and takes gpsd with it.
fn pause_at_end(stdout: std::process::ChildStdout, pid: u32, killed: Arc<Mutex<bool>>) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // -1 appends this comment to the log; -l prints it as it is fed.
            if line.ends_with("# EOF") {
                let killed = killed.lock().unwrap_or_else(|e| e.into_inner());
                if !*killed {
                    signal(&pid.to_string(), "STOP");
                }
            }
        }
    });
}

/// The lines `from` writes, on a channel that ends when it closes.
fn lines_of(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            // Nobody listens after the start: drain all the same, or a gpsd whose stderr
            // fills up stops.
            let _ = tx.send(line);
        }
    });
    rx
}

/// gpsd exports its data in a System V shared memory segment whose key gpsfake derives from
/// the port (`GPSD_SHM_KEY`); it outlives a killed gpsd, and every test port would leave
/// one behind. (The NTP segments gpsd also makes have fixed keys: they do not pile up.)
fn release_shared_memory(port: u16) {
    let _ = Command::new("ipcrm")
        .args(["-M", &format!("0x4770{port:04X}")])
        .stderr(Stdio::null())
        .status();
}

/// Whose listener there is on `port`.
#[derive(Debug, PartialEq)]
enum Listening {
    /// gpsd of group `pgid` listens on 127.0.0.1.
    Ours,
    /// Another process listens there, or our gpsd could bind only `::1` (gpsd goes on
    /// without the IPv4 socket it could not have).
    Clash,
    NotYet,
}

fn listening(pgid: u32, port: u16) -> Listening {
    let ours: HashSet<u64> = group(pgid).into_iter().flat_map(socket_inodes).collect();
    let v4 = listeners(Path::new("/proc/net/tcp"), port);
    let v6 = listeners(Path::new("/proc/net/tcp6"), port);
    if v4.iter().any(|inode| ours.contains(inode)) {
        Listening::Ours
    } else if v4.iter().chain(&v6).any(|inode| !ours.contains(inode)) || !v6.is_empty() {
        // gpsd binds IPv4 first: an IPv6 socket of ours alone means IPv4 failed.
        Listening::Clash
    } else {
        Listening::NotYet
    }
}

/// The live (not zombie) processes of process group `pgid`.
fn group(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let mut fields = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace())
                .into_iter()
                .flatten();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            state != Some("Z") && pgrp == Some(pgid)
        })
        .collect()
}

/// The inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// The inodes of the TCP sockets listening on `port` in `table` (`/proc/net/tcp` or
/// `tcp6`: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`).
fn listeners(table: &Path, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let text = std::fs::read_to_string(table).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listens =
                *fields.get(3)? == LISTEN && u16::from_str_radix(local_port, 16).ok()? == port;
            listens.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's group, as /proc says.
    fn own_group() -> u32 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let rest = stat.rsplit_once(')').expect("comm").1;
        rest.split_whitespace()
            .nth(2)
            .expect("pgrp")
            .parse()
            .expect("a number")
    }

    #[test]
    fn a_listener_is_told_apart_by_whose_it_is() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = own_group();
        assert!(group(me).contains(&std::process::id()));
        assert_eq!(listening(me, port), Listening::Ours);
        // A group with nobody in it (pids stop far below u32::MAX) holds no socket.
        assert!(group(u32::MAX).is_empty());
        assert_eq!(listening(u32::MAX, port), Listening::Clash);
        drop(listener);
        assert_eq!(listening(me, port), Listening::NotYet);
    }
}
