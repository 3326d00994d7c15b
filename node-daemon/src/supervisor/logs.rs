//! A workload's output: rotating files, an in-memory tail and a live feed.
//!
//! stdout and stderr are read in chunks by one task per running instance, split into lines
//! (a line longer than `line_max_bytes` is cut into several) and appended to
//! `workloads/NAME/logs/current.log`. When the file would pass `file_max_bytes` it becomes
//! `current.log.1` (the older ones shift up, `files_kept` are kept); the directory is 0700 and
//! the files 0600, since a workload may print what it should not. The last lines are also
//! kept in memory (bounded by `tail_lines` and `tail_bytes`) and sent to followers on a
//! bounded broadcast channel; a follower that falls behind loses lines, never the workload.
//!
//! Memory per workload is bounded by the limits whatever the workload prints. Writes are plain
//! page-cache writes, never fsynced: logs are worth less than the SD card's life. A failing
//! disk loses log lines, never stops or slows the workload. This module never decides anything
//! about the process.

use crate::private_fs;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;
use tracing::warn;

/// The current file's name; rotated files add `.1`, `.2`, ...
pub const CURRENT: &str = "current.log";
/// Lines a follower may be behind before it loses some.
const FOLLOW_CAPACITY: usize = 256;
const READ_CHUNK: usize = 4096;

/// Bounds on what a workload's output may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Rotate `current.log` before it passes this size.
    pub file_max_bytes: u64,
    /// Rotated files kept besides `current.log`.
    pub files_kept: u32,
    pub tail_lines: usize,
    pub tail_bytes: usize,
    pub line_max_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            file_max_bytes: 1 << 20,
            files_kept: 3,
            tail_lines: 200,
            tail_bytes: 64 << 10,
            line_max_bytes: 8 << 10,
        }
    }
}

/// One workload's log, shared by its output readers and the supervisor's API.
#[derive(Debug)]
pub struct LogSink {
    dir: PathBuf,
    limits: LogLimits,
    state: Mutex<SinkState>,
}

#[derive(Debug, Default)]
struct SinkState {
    tail: VecDeque<String>,
    tail_bytes: usize,
    file: Option<File>,
    file_len: u64,
    /// The last write failed; warn once until one works again.
    failing: bool,
    /// The followers' channel, made by the first follower and dropped once the last is
    /// gone: its buffer is most of what a workload costs the daemon, and most workloads are
    /// never followed.
    follow: Option<broadcast::Sender<String>>,
}

impl SinkState {
    fn subscribe(&mut self) -> broadcast::Receiver<String> {
        match &self.follow {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(FOLLOW_CAPACITY);
                self.follow = Some(tx);
                rx
            }
        }
    }
}

impl LogSink {
    /// A sink writing under `dir` (created if needed).
    pub fn open(dir: &Path, limits: LogLimits) -> Self {
        Self {
            dir: dir.to_owned(),
            limits,
            state: Mutex::new(SinkState::default()),
        }
    }

    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let state = self.lock();
        let skip = state.tail.len().saturating_sub(n);
        state.tail.iter().skip(skip).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.lock().subscribe()
    }

    /// The last `n` lines and a feed of every line after them: none lost between the two,
    /// none in both. `push` sends and appends under the same lock this holds to subscribe.
    pub fn tail_and_subscribe(&self, n: usize) -> (Vec<String>, broadcast::Receiver<String>) {
        let mut state = self.lock();
        let skip = state.tail.len().saturating_sub(n);
        let tail = state.tail.iter().skip(skip).cloned().collect();
        (tail, state.subscribe())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while holding the lock leaves at worst a partial tail: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whole lines (without their newlines).
    pub fn push(&self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let mut state = self.lock();
        match self.write_file(&mut state, &lines) {
            Ok(()) => state.failing = false,
            Err(error) => {
                if !state.failing {
                    warn!(dir = %self.dir.display(), %error, "workload log write failed; lines kept in memory only");
                }
                state.failing = true;
                state.file = None;
            }
        }
        if state
            .follow
            .as_ref()
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            state.follow = None;
        }
        for line in lines {
            if let Some(tx) = &state.follow {
                // A follower that left since the check above is fine too.
                let _ = tx.send(line.clone());
            }
            state.tail_bytes += line.len();
            state.tail.push_back(line);
            while state.tail.len() > self.limits.tail_lines
                || state.tail_bytes > self.limits.tail_bytes
            {
                match state.tail.pop_front() {
                    Some(old) => state.tail_bytes -= old.len(),
                    None => break,
                }
            }
        }
    }

    /// Writes `lines` in as few writes as the size limit allows, rotating between lines.
    fn write_file(&self, state: &mut SinkState, lines: &[String]) -> io::Result<()> {
        self.ensure_open(state)?;
        let mut batch = Vec::new();
        for line in lines {
            let len = line.len() as u64 + 1;
            let used = state.file_len + batch.len() as u64;
            if used > 0 && used + len > self.limits.file_max_bytes {
                self.append(state, &batch)?;
                batch.clear();
                state.file = None;
                self.rotate()?;
                self.ensure_open(state)?;
            }
            batch.extend_from_slice(line.as_bytes());
            batch.push(b'\n');
        }
        self.append(state, &batch)
    }

    fn ensure_open(&self, state: &mut SinkState) -> io::Result<()> {
        if state.file.is_none() {
            private_fs::own_dir(&self.dir)?;
            let file = private_fs::open(
                &self.current_path(),
                OpenOptions::new().create(true).append(true),
            )?;
            state.file_len = file.metadata()?.len();
            state.file = Some(file);
        }
        Ok(())
    }

    fn append(&self, state: &mut SinkState, bytes: &[u8]) -> io::Result<()> {
        if let Some(file) = state.file.as_mut()
            && !bytes.is_empty()
        {
            file.write_all(bytes)?;
            state.file_len += bytes.len() as u64;
        }
        Ok(())
    }

    /// `current.log` -> `.1` -> `.2` ...; the oldest beyond `files_kept` is dropped.
    fn rotate(&self) -> io::Result<()> {
        let numbered = |n: u32| self.dir.join(format!("{CURRENT}.{n}"));
        let keep = self.limits.files_kept;
        if keep == 0 {
            return fs::remove_file(self.current_path());
        }
        for n in (1..keep).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(self.current_path(), numbered(1))
    }
}

/// Splits a byte stream into lines of at most `max` bytes. Invalid UTF-8 is replaced, a
/// trailing `\r` dropped.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            let room = self.max - self.pending.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&window[..i]);
                    self.emit(out);
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.pending.len() >= self.max {
                        self.emit(out);
                    }
                }
            }
        }
    }

    /// The unterminated rest, at end of stream.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.pending.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<String>) {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        out.push(String::from_utf8_lossy(&self.pending).into_owned());
        self.pending.clear();
    }
}

/// Copies both output streams of one instance into `sink` until both are closed.
pub async fn pump(
    mut stdout: impl AsyncRead + Unpin,
    mut stderr: impl AsyncRead + Unpin,
    sink: &LogSink,
) {
    let max = sink.limits.line_max_bytes;
    let (mut out_lines, mut err_lines) = (LineSplitter::new(max), LineSplitter::new(max));
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let mut lines = Vec::new();
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(n) if n > 0 => out_lines.push(&out_buf[..n], &mut lines),
                _ => { out_open = false; out_lines.finish(&mut lines) }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(n) if n > 0 => err_lines.push(&err_buf[..n], &mut lines),
                _ => { err_open = false; err_lines.finish(&mut lines) }
            },
        }
        sink.push(lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(100, &[b"ab", b"c\nde", b"f\r\n\n", b"tail"]),
            ["abc", "def", "", "tail"]
        );
    }

    #[test]
    fn long_lines_are_cut_not_buffered() {
        assert_eq!(
            split(4, &[b"abcdefghij\nxy\n"]),
            ["abcd", "efgh", "ij", "xy"]
        );
        assert_eq!(split(3, &[b"abc\n"]), ["abc", ""]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(split(10, &[b"a\xffb\n"]), ["a\u{fffd}b"]);
    }

    #[test]
    fn tail_is_bounded_by_lines_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LogSink::open(
            dir.path(),
            LogLimits {
                tail_lines: 3,
                tail_bytes: 10,
                ..LogLimits::default()
            },
        );
        sink.push((0..5).map(|i| format!("l{i}")).collect());
        assert_eq!(sink.tail(10), ["l2", "l3", "l4"]);
        assert_eq!(sink.tail(1), ["l4"]);
        sink.push(vec!["0123456789".into()]);
        assert_eq!(sink.tail(10), ["0123456789"]);
    }

    #[test]
    fn tail_and_feed_meet_without_a_gap_or_an_overlap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LogSink::open(dir.path(), LogLimits::default());
        sink.push(vec!["a".into(), "b".into()]);
        let (tail, mut feed) = sink.tail_and_subscribe(10);
        sink.push(vec!["c".into()]);
        assert_eq!(tail, ["a", "b"]);
        assert_eq!(feed.try_recv().ok().as_deref(), Some("c"));
        assert!(feed.try_recv().is_err());
    }

    #[test]
    fn followers_come_and_go_and_each_gets_what_follows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LogSink::open(dir.path(), LogLimits::default());
        sink.push(vec!["nobody follows".into()]);
        assert!(
            sink.lock().follow.is_none(),
            "no channel until someone follows"
        );
        let mut first = sink.subscribe();
        let mut second = sink.subscribe();
        sink.push(vec!["1".into()]);
        assert_eq!(first.try_recv().ok().as_deref(), Some("1"));
        assert_eq!(second.try_recv().ok().as_deref(), Some("1"));
        drop((first, second));
        sink.push(vec!["2".into()]);
        assert!(
            sink.lock().follow.is_none(),
            "freed once the last follower left"
        );
        let mut again = sink.subscribe();
        sink.push(vec!["3".into()]);
        assert_eq!(again.try_recv().ok().as_deref(), Some("3"));
        assert_eq!(sink.tail(10), ["nobody follows", "1", "2", "3"]);
    }

    #[test]
    fn files_rotate_and_only_some_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LogSink::open(
            dir.path(),
            LogLimits {
                file_max_bytes: 20,
                files_kept: 2,
                ..LogLimits::default()
            },
        );
        for i in 0..8 {
            sink.push(vec![format!("line number {i}")]); // 14 bytes + newline
        }
        // Several lines in one chunk still rotate between lines.
        sink.push(vec!["line number 8".into(), "line number 9".into()]);
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).expect(name);
        assert_eq!(read("current.log"), "line number 9\n");
        assert_eq!(read("current.log.1"), "line number 8\n");
        assert_eq!(read("current.log.2"), "line number 7\n");
        assert!(!dir.path().join("current.log.3").exists());
    }
}
