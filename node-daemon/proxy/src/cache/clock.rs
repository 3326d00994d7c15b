//! The wall clock the cache reads: the system's, or a manual one that tests move by hand,
//! so that a test lets an hour pass without waiting for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Where the cache takes `now` from. Cloning shares the clock: advancing one clone advances
/// them all.
#[derive(Debug, Clone)]
pub struct Clock(Source);

#[derive(Debug, Clone)]
enum Source {
    System,
    Manual(Arc<Mutex<SystemTime>>),
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// A clock that stands at `start` until [`advance`](Self::advance)d.
    pub fn manual(start: SystemTime) -> Self {
        Self(Source::Manual(Arc::new(Mutex::new(start))))
    }

    /// Moves a manual clock forward by `by`. The system clock moves on its own; for it this
    /// does nothing.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(now) = &self.0 {
            let mut now = now.lock().unwrap_or_else(PoisonError::into_inner);
            *now = now.checked_add(by).unwrap_or(*now);
        }
    }

    /// The time now.
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(now) => *now.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_move_with_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = Clock::manual(start);
        let clone = clock.clone();
        assert_eq!(clock.now(), start);
        clone.advance(Duration::from_secs(5));
        assert_eq!(clock.now(), start + Duration::from_secs(5));
    }
}
