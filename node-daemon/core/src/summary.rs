//! Windowed summaries of the node's load, for the outbox's metrics class.
//!
//! Every status sample goes into the current window; once the window has lasted its length,
//! the next sample closes it and it becomes a [`MetricSummary`] (least, mean and most CPU
//! and memory, least free disk, how many samples), and that sample starts the next one. A
//! node that was off or asleep for longer than a window does not stretch one summary over
//! the gap: the window closes with what it had.
//!
//! **Invariant.** No I/O and no clock: time comes in as a monotonic `Duration` the shell
//! reads.

use edge_proto::{MetricSummary, Status};
use std::time::Duration;

/// One window being filled.
#[derive(Debug, Clone)]
pub struct MetricWindow {
    length: Duration,
    start: Option<Duration>,
    samples: u32,
    cpu: (f32, f64, f32),
    memory: (u64, u128, u64),
    disk_free_min: u64,
}

impl MetricWindow {
    /// Windows of `length` (at least a second).
    pub fn new(length: Duration) -> Self {
        Self {
            length: length.max(Duration::from_secs(1)),
            start: None,
            samples: 0,
            cpu: (f32::MAX, 0.0, f32::MIN),
            memory: (u64::MAX, 0, 0),
            disk_free_min: u64::MAX,
        }
    }

    /// Adds `status`, sampled at `now`: returns the summary of the window it closed, if it
    /// closed one (the sample then opens the next).
    pub fn add(&mut self, now: Duration, status: &Status) -> Option<MetricSummary> {
        let closed = match self.start {
            Some(start) if now.saturating_sub(start) >= self.length => {
                let summary = self.summary();
                *self = Self::new(self.length);
                summary
            }
            _ => None,
        };
        self.start.get_or_insert(now);
        let cpu = if status.cpu_percent.is_finite() {
            status.cpu_percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        self.samples += 1;
        self.cpu = (
            self.cpu.0.min(cpu),
            self.cpu.1 + f64::from(cpu),
            self.cpu.2.max(cpu),
        );
        let memory = status.memory_used_bytes;
        self.memory = (
            self.memory.0.min(memory),
            self.memory.1 + u128::from(memory),
            self.memory.2.max(memory),
        );
        self.disk_free_min = self.disk_free_min.min(status.disk_free_bytes);
        closed
    }

    fn summary(&self) -> Option<MetricSummary> {
        if self.samples == 0 {
            return None;
        }
        let n = self.samples;
        Some(MetricSummary {
            window_secs: u32::try_from(self.length.as_secs()).unwrap_or(u32::MAX),
            samples: n,
            cpu_percent_min: self.cpu.0,
            // A mean of values within 0..=100 is within it too.
            #[allow(clippy::cast_possible_truncation)]
            cpu_percent_mean: (self.cpu.1 / f64::from(n)) as f32,
            cpu_percent_max: self.cpu.2,
            memory_used_bytes_min: self.memory.0,
            memory_used_bytes_mean: u64::try_from(self.memory.1 / u128::from(n))
                .unwrap_or(u64::MAX),
            memory_used_bytes_max: self.memory.2,
            disk_free_bytes_min: self.disk_free_min,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cpu: f32, memory: u64, disk: u64) -> Status {
        Status {
            cpu_percent: cpu,
            memory_used_bytes: memory,
            disk_free_bytes: disk,
            uptime_secs: 0,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_window_closes_with_the_first_sample_past_its_length() {
        let mut w = MetricWindow::new(secs(60));
        assert_eq!(w.add(secs(0), &status(10.0, 100, 900)), None);
        assert_eq!(w.add(secs(30), &status(30.0, 300, 800)), None);
        assert_eq!(w.add(secs(50), &status(20.0, 200, 850)), None);
        let s = w.add(secs(60), &status(90.0, 1_000, 1)).expect("closed");
        assert_eq!(s.window_secs, 60);
        assert_eq!(s.samples, 3);
        assert_eq!(
            (s.cpu_percent_min, s.cpu_percent_mean, s.cpu_percent_max),
            (10.0, 20.0, 30.0)
        );
        assert_eq!(
            (
                s.memory_used_bytes_min,
                s.memory_used_bytes_mean,
                s.memory_used_bytes_max
            ),
            (100, 200, 300)
        );
        assert_eq!(s.disk_free_bytes_min, 800);
        // The closing sample opened the next window.
        let next = w.add(secs(120), &status(0.0, 0, 0)).expect("closed");
        assert_eq!(next.samples, 1);
        assert_eq!(next.cpu_percent_max, 90.0);
    }

    #[test]
    fn hostile_samples_stay_in_range() {
        let mut w = MetricWindow::new(secs(1));
        w.add(secs(0), &status(f32::NAN, u64::MAX, u64::MAX));
        w.add(secs(0), &status(1e30, u64::MAX, 0));
        let s = w.add(secs(5), &status(-5.0, 0, 0)).expect("closed");
        assert_eq!((s.cpu_percent_min, s.cpu_percent_max), (0.0, 100.0));
        assert_eq!(s.memory_used_bytes_mean, u64::MAX);
        // A clock that goes backwards closes nothing.
        let mut w = MetricWindow::new(secs(60));
        w.add(secs(100), &status(1.0, 1, 1));
        assert_eq!(w.add(secs(10), &status(1.0, 1, 1)), None);
        // A zero length is a second.
        let mut w = MetricWindow::new(Duration::ZERO);
        w.add(secs(0), &status(1.0, 1, 1));
        assert!(w.add(secs(1), &status(1.0, 1, 1)).is_some());
    }
}
