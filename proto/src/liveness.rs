//! How often a node proves it is alive, and how long a silent connection lives: a node's
//! liveness profile (`liveness` in its config).
//!
//! Liveness rides on QUIC itself. The node sends a keep-alive after every
//! [`keep_alive`](Liveness::keep_alive) without other traffic, and advertises its
//! [`idle_timeout`](Liveness::idle_timeout); the orchestrator advertises
//! [`MAX_IDLE_TIMEOUT`], and QUIC uses the smaller of the two (RFC 9000, 10.1). So each
//! connection dies after the node's own idle timeout without a packet, and that is how soon
//! the orchestrator notices a dead node or a cut link: its offline detection follows the
//! node's profile without a word on the wire.

use core::time::Duration;

/// A node's keep-alive interval and idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// How long without anything sent before the node sends a keep-alive.
    pub keep_alive: Duration,
    /// How long without a packet before either end drops the connection.
    pub idle_timeout: Duration,
}

/// The longest idle timeout a node may ask for; the orchestrator advertises it.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl Liveness {
    /// `liveness = "fast"`, the default: a keep-alive every second, three in a row may be
    /// lost, a dead node is noticed within 4 s. About 70 B/s each way and back, 330 MB a
    /// month with headers.
    pub const FAST: Self = Self {
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(4),
    };

    /// `liveness = "metered"`, for a node on a cellular or satellite link: a keep-alive every
    /// 20 s, two in a row may be lost, a dead node is noticed within 60 s. Its status report
    /// also defaults to every 5 minutes rather than 10 s.
    pub const METERED: Self = Self {
        keep_alive: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(60),
    };

    /// Whether a profile holds together: a keep-alive of at least a second, an idle timeout
    /// of at least twice it (one lost keep-alive never kills a connection) and at most
    /// [`MAX_IDLE_TIMEOUT`]. Says why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.keep_alive < Duration::from_secs(1) {
            return Err("keep_alive_secs must be at least 1");
        }
        if self.idle_timeout > MAX_IDLE_TIMEOUT {
            return Err("idle_timeout_secs must be at most 600");
        }
        if self.idle_timeout < self.keep_alive.saturating_mul(2) {
            return Err("idle_timeout_secs must be at least twice keep_alive_secs");
        }
        Ok(())
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::FAST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_hold_together() {
        assert_eq!(Liveness::FAST.check(), Ok(()));
        assert_eq!(Liveness::METERED.check(), Ok(()));
        // A metered node keeps alive at least ten times less often.
        assert!(Liveness::METERED.keep_alive >= Liveness::FAST.keep_alive * 10);
        assert!(Liveness::METERED.idle_timeout <= Duration::from_secs(60));
    }

    #[test]
    fn a_profile_that_does_not_hold_together_says_why() {
        let secs = |keep_alive, idle_timeout| Liveness {
            keep_alive: Duration::from_secs(keep_alive),
            idle_timeout: Duration::from_secs(idle_timeout),
        };
        assert_eq!(
            secs(0, 4).check(),
            Err("keep_alive_secs must be at least 1")
        );
        assert_eq!(
            secs(10, 19).check(),
            Err("idle_timeout_secs must be at least twice keep_alive_secs")
        );
        assert_eq!(secs(10, 20).check(), Ok(()));
        assert_eq!(
            secs(100, 601).check(),
            Err("idle_timeout_secs must be at most 600")
        );
        assert_eq!(secs(300, 600).check(), Ok(()));
    }
}
