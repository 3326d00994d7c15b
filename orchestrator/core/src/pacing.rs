//! Hello pacing: how many nodes may say hello at once, and when the rest come back.
//!
//! When thousands of nodes reconnect together (the orchestrator restarted, a region's link
//! healed), each hello that is let through costs an identity check, a registry write with an
//! fsync, and its assignments sent again. Let through all at once, they queue behind each
//! other until handshakes time out and nodes retry, which costs more again. The gate lets
//! sessions through at a sustained rate with a burst (a token bucket), and never more than a
//! fixed number of hellos in progress. A hello it cannot take now is answered with how long
//! to wait, and the waits are spread: every node turned away is given the next free slot
//! after the previous one's, so the later a node is in the queue, the later it comes back,
//! and the fleet returns at the rate the gate admits instead of all at the same instant.
//!
//! Before any of that, a connection's QUIC handshake costs milliseconds of CPU, and a storm's
//! handshakes are what a small orchestrator runs out of first: the gate also caps handshakes
//! in progress, and a connection past the cap is refused before any cryptography is done for
//! it (the node retries on its own backoff; a refused handshake cannot carry a hint).
//!
//! Only handshakes and hellos pass the gate. A session that is up is never asked again: its status reports,
//! keep-alives and liveness probes flow whatever the storm. Enrollments do not spend the
//! sessions' tokens (a new node is rare and an operator is waiting for it) and have a share
//! of the in-progress cap that sessions cannot take, so a storm of reconnecting nodes cannot
//! keep a new one out.
//!
//! It never reads the clock (time comes in as `now`) and holds a fixed amount of state
//! whatever arrives: a counter, a bucket and the next slot, which never runs more than
//! [`MAX_RETRY_AFTER`] ahead.

use edge_proto::Intent;
use std::time::{Duration, Instant};

/// The shortest wait a turned-away node is given: shorter, and it would be back before the
/// handshake it just paid for was forgotten, to be turned away again.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest wait a turned-away node is given. Slots are not handed out past it, so a
/// flood of hellos (or a misconfigured rate) cannot push the queue days ahead; the nodes
/// that would wait longer are told this and spread by their own jitter.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// Millionths of a token: the bucket counts in these so that refills stay exact in integers.
const MICRO: u64 = 1_000_000;

/// How fast the gate admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingPolicy {
    /// Sessions admitted per second, sustained. `0` turns pacing off: every hello is
    /// admitted at once.
    pub sessions_per_sec: u32,
    /// Sessions admitted at once after a quiet spell (the bucket's size; at least 1).
    pub burst: u32,
    /// Hellos admitted and not yet done, of both intents (at least 1). Sessions may take all
    /// but an eighth of it; that eighth is kept for enrollments.
    pub max_in_progress: u32,
    /// QUIC handshakes in progress (at least 1). Past it a new connection is refused before
    /// any cryptography is done for it, and the node retries on its own backoff: a TLS
    /// handshake costs the orchestrator milliseconds of CPU, so a storm's handshakes, not
    /// its hellos, are what a small orchestrator runs out of first.
    pub max_handshakes: u32,
}

impl Default for PacingPolicy {
    /// 500 sessions a second with a burst of 1,000: a fleet of a thousand comes back at once,
    /// ten thousand within about twenty seconds.
    fn default() -> Self {
        Self {
            sessions_per_sec: 500,
            burst: 1_000,
            max_in_progress: 1_000,
            max_handshakes: 256,
        }
    }
}

impl PacingPolicy {
    /// No pacing: every handshake and every hello is admitted at once.
    pub fn off() -> Self {
        Self {
            sessions_per_sec: 0,
            ..Self::default()
        }
    }
}

/// What the gate says to one hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on; call [`Pacing::done`] once when the hello is finished (session up, or
    /// connection gone).
    Admit,
    /// Not now: answer with `OrchMsg::Busy` and this wait.
    Busy { retry_after: Duration },
}

/// The gate. See the module docs.
#[derive(Debug, Clone)]
pub struct Pacing {
    policy: PacingPolicy,
    /// Session tokens, in millionths.
    tokens: u64,
    /// When the bucket was last refilled; `None` before the first hello.
    refilled_at: Option<Instant>,
    in_progress: u32,
    handshakes: u32,
    /// The slot the last turned-away node was given; the next one gets the slot after.
    last_slot: Option<Instant>,
}

impl Pacing {
    /// A gate with a full bucket.
    pub fn new(policy: PacingPolicy) -> Self {
        let policy = PacingPolicy {
            burst: policy.burst.max(1),
            max_in_progress: policy.max_in_progress.max(1),
            max_handshakes: policy.max_handshakes.max(1),
            ..policy
        };
        Self {
            policy,
            tokens: u64::from(policy.burst) * MICRO,
            refilled_at: None,
            in_progress: 0,
            handshakes: 0,
            last_slot: None,
        }
    }

    pub fn policy(&self) -> PacingPolicy {
        self.policy
    }

    /// Hellos admitted and not yet done.
    pub fn in_progress(&self) -> u32 {
        self.in_progress
    }

    /// Whether a hello with `intent`, arriving at `now`, may go on.
    pub fn admit(&mut self, intent: Intent, now: Instant) -> Verdict {
        if self.policy.sessions_per_sec == 0 {
            self.in_progress = self.in_progress.saturating_add(1);
            return Verdict::Admit;
        }
        self.refill(now);
        let cap = match intent {
            Intent::Enroll => self.policy.max_in_progress,
            Intent::Session => self.policy.max_in_progress - self.policy.max_in_progress / 8,
        };
        let has_token = intent == Intent::Enroll || self.tokens >= MICRO;
        if self.in_progress < cap && has_token {
            if intent == Intent::Session {
                self.tokens -= MICRO;
            }
            self.in_progress += 1;
            return Verdict::Admit;
        }
        Verdict::Busy {
            retry_after: self.next_slot(now),
        }
    }

    /// A hello that was admitted is finished: its session is up, or its connection ended.
    pub fn done(&mut self) {
        self.in_progress = self.in_progress.saturating_sub(1);
    }

    /// Whether a new connection may start its handshake now; if so, call
    /// [`Pacing::handshake_done`] once when the handshake has ended, however it ended.
    pub fn handshake(&mut self) -> bool {
        if self.policy.sessions_per_sec != 0 && self.handshakes >= self.policy.max_handshakes {
            return false;
        }
        self.handshakes = self.handshakes.saturating_add(1);
        true
    }

    /// A handshake [`Pacing::handshake`] let start has ended.
    pub fn handshake_done(&mut self) {
        self.handshakes = self.handshakes.saturating_sub(1);
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> u32 {
        self.handshakes
    }

    fn refill(&mut self, now: Instant) {
        let since = match self.refilled_at {
            // Time never runs backwards here: an earlier `now` adds nothing.
            Some(at) if now > at => now - at,
            Some(_) => return,
            None => Duration::ZERO,
        };
        self.refilled_at = Some(now);
        let full = u64::from(self.policy.burst) * MICRO;
        // tokens per second * MICRO / 1e9 ns = micro-tokens per ns * 1000.
        let added = since.as_nanos() * u128::from(self.policy.sessions_per_sec) / 1_000;
        let added = u64::try_from(added).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(added).min(full);
    }

    /// The wait for the next node turned away: one admission interval after the slot the
    /// previous one was given, at least [`MIN_RETRY_AFTER`] and at most [`MAX_RETRY_AFTER`]
    /// from `now`.
    fn next_slot(&mut self, now: Instant) -> Duration {
        let interval =
            Duration::from_nanos(1_000_000_000 / u64::from(self.policy.sessions_per_sec.max(1)));
        let earliest = now + MIN_RETRY_AFTER;
        let after = match self.last_slot {
            Some(last) if last + interval > earliest => last + interval,
            _ => earliest,
        };
        let slot = after.min(now + MAX_RETRY_AFTER);
        self.last_slot = Some(slot);
        slot - now
    }
}

#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "a starting instant for the virtual clock: every later time is computed from it"
)]
mod tests {
    use super::*;

    fn policy(per_sec: u32, burst: u32, max_in_progress: u32) -> PacingPolicy {
        PacingPolicy {
            sessions_per_sec: per_sec,
            burst,
            max_in_progress,
            max_handshakes: 4,
        }
    }

    #[test]
    fn handshakes_in_progress_are_capped() {
        let mut gate = Pacing::new(policy(10, 10, 10));
        for _ in 0..4 {
            assert!(gate.handshake());
        }
        assert!(!gate.handshake(), "a fifth is refused");
        gate.handshake_done();
        assert!(gate.handshake(), "an ended one frees its place");
        for _ in 0..10 {
            gate.handshake_done();
        }
        assert_eq!(gate.handshakes(), 0, "more ends than starts do not wrap");
        // A zero cap would refuse every connection: it counts as one.
        let mut gate = Pacing::new(PacingPolicy {
            max_handshakes: 0,
            ..policy(10, 10, 10)
        });
        assert!(gate.handshake());
        assert!(!gate.handshake());
        // Pacing off: no cap.
        let mut gate = Pacing::new(PacingPolicy::off());
        assert!((0..10_000).all(|_| gate.handshake()));
    }

    fn busy(v: Verdict) -> Option<Duration> {
        match v {
            Verdict::Busy { retry_after } => Some(retry_after),
            Verdict::Admit => None,
        }
    }

    /// A fleet that hammers the gate every millisecond of a simulated minute, finishing each
    /// admitted hello at once, gets the burst plus the rate: no more, and no less.
    #[test]
    fn the_rate_is_honoured_over_a_simulated_minute() {
        let t0 = Instant::now();
        let mut gate = Pacing::new(policy(50, 100, 1_000));
        let mut admitted = 0u64;
        for ms in 0..60_000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..5 {
                if gate.admit(Intent::Session, now) == Verdict::Admit {
                    admitted += 1;
                    gate.done();
                }
            }
        }
        // 100 at once, then 50 a second for the 59.999 s after the first hello.
        assert_eq!(admitted, 100 + 2_999);
    }

    #[test]
    fn a_normal_fleet_is_admitted_at_once_by_default() {
        let now = Instant::now();
        let mut gate = Pacing::new(PacingPolicy::default());
        for _ in 0..500 {
            assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        }
        assert_eq!(gate.in_progress(), 500);
    }

    #[test]
    fn the_later_in_the_queue_the_later_the_hint() {
        let now = Instant::now();
        let mut gate = Pacing::new(policy(10, 5, 1_000));
        for _ in 0..5 {
            assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        }
        let hints: Vec<Duration> = (0..50)
            .map(|_| busy(gate.admit(Intent::Session, now)).expect("the bucket is empty"))
            .collect();
        assert_eq!(hints[0], MIN_RETRY_AFTER);
        // One admission interval apart: the rate at which they can be taken.
        for pair in hints.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(100));
        }
        // A node turned away later, when the queue has partly drained, queues behind the
        // last slot given, not behind `now`.
        let later = now + Duration::from_secs(2);
        let hint = std::iter::repeat_with(|| gate.admit(Intent::Session, later))
            .find_map(busy)
            .expect("the bucket refills to its burst only");
        assert_eq!(later + hint, now + hints[49] + Duration::from_millis(100));
    }

    #[test]
    fn nodes_that_come_back_at_their_hint_are_admitted() {
        let t0 = Instant::now();
        let mut gate = Pacing::new(policy(20, 20, 1_000));
        let mut returns: Vec<Instant> = Vec::new();
        for _ in 0..200 {
            match gate.admit(Intent::Session, t0) {
                Verdict::Admit => gate.done(),
                Verdict::Busy { retry_after } => returns.push(t0 + retry_after),
            }
        }
        assert_eq!(returns.len(), 180);
        let last = returns.last().copied().expect("some were turned away");
        // Each comes back at its slot, in order: none is turned away twice.
        for at in returns {
            assert_eq!(gate.admit(Intent::Session, at), Verdict::Admit, "at {at:?}");
            gate.done();
        }
        // 180 nodes at 20 a second after the one-second floor: about ten seconds.
        assert_eq!(last - t0, MIN_RETRY_AFTER + Duration::from_millis(50 * 179));
    }

    #[test]
    fn hints_never_pass_the_maximum_and_the_queue_stays_bounded() {
        let now = Instant::now();
        let mut gate = Pacing::new(policy(1, 1, 1_000));
        assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        let mut last = Duration::ZERO;
        for _ in 0..1_000_000 {
            last = busy(gate.admit(Intent::Session, now)).expect("one a second");
            assert!(last <= MAX_RETRY_AFTER);
        }
        assert_eq!(last, MAX_RETRY_AFTER);
        // The flood did not push the queue past the maximum: a minute later the next slot
        // is a minute nearer, not a million seconds away.
        let later = now + Duration::from_secs(60);
        gate.done();
        assert_eq!(gate.admit(Intent::Session, later), Verdict::Admit);
        assert_eq!(
            busy(gate.admit(Intent::Session, later)),
            Some(MAX_RETRY_AFTER - Duration::from_secs(60) + Duration::from_secs(1))
        );
    }

    #[test]
    fn hellos_in_progress_are_capped_and_enrollment_keeps_its_share() {
        let now = Instant::now();
        let mut gate = Pacing::new(policy(1_000, 1_000, 16));
        // Sessions take 14 of 16 (an eighth, 2, is kept for enrollments).
        for _ in 0..14 {
            assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        }
        assert!(busy(gate.admit(Intent::Session, now)).is_some());
        // Enrollment gets in while sessions are held back, and spends no session token.
        assert_eq!(gate.admit(Intent::Enroll, now), Verdict::Admit);
        assert_eq!(gate.admit(Intent::Enroll, now), Verdict::Admit);
        assert!(busy(gate.admit(Intent::Enroll, now)).is_some());
        // A finished hello frees its place.
        gate.done();
        assert_eq!(gate.admit(Intent::Enroll, now), Verdict::Admit);
        for _ in 0..16 {
            gate.done();
        }
        assert_eq!(gate.in_progress(), 0);
        assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
    }

    #[test]
    fn enrollment_is_not_starved_by_a_storm_of_sessions() {
        let t0 = Instant::now();
        let mut gate = Pacing::new(policy(10, 10, 100));
        for ms in (0..10_000u64).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..100 {
                if gate.admit(Intent::Session, now) == Verdict::Admit {
                    gate.done();
                }
            }
            assert_eq!(
                gate.admit(Intent::Enroll, now),
                Verdict::Admit,
                "at {ms} ms"
            );
            gate.done();
        }
    }

    #[test]
    fn hostile_policies_and_inputs() {
        let now = Instant::now();
        // A huge burst and rate: no overflow, everything admitted.
        let mut gate = Pacing::new(policy(u32::MAX, u32::MAX, u32::MAX));
        for i in 0..10_000u64 {
            assert_eq!(
                gate.admit(Intent::Session, now + Duration::from_secs(i * 86_400 * 365)),
                Verdict::Admit
            );
        }
        // A zero burst or cap would admit nothing, ever: both count as one.
        let mut gate = Pacing::new(policy(1, 0, 0));
        assert_eq!(gate.policy().burst, 1);
        assert_eq!(gate.policy().max_in_progress, 1);
        assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        assert!(busy(gate.admit(Intent::Session, now)).is_some());
        // More `done`s than admissions do not wrap the counter.
        for _ in 0..5 {
            gate.done();
        }
        assert_eq!(gate.in_progress(), 0);
        // Time running backwards adds no tokens and does not panic.
        let mut gate = Pacing::new(policy(1, 1, 10));
        let later = now + Duration::from_secs(10);
        assert_eq!(gate.admit(Intent::Session, later), Verdict::Admit);
        gate.done();
        assert!(busy(gate.admit(Intent::Session, now)).is_some());
        assert!(busy(gate.admit(Intent::Session, later)).is_some());
    }

    #[test]
    fn pacing_off_admits_everything() {
        let now = Instant::now();
        let mut gate = Pacing::new(PacingPolicy::off());
        for _ in 0..100_000 {
            assert_eq!(gate.admit(Intent::Session, now), Verdict::Admit);
        }
        assert_eq!(gate.in_progress(), 100_000);
    }
}
