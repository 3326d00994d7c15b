//! When the node asks for a new certificate, as a state machine without I/O.
//!
//! **The rule.** A certificate is renewed once two thirds of its lifetime (`not_before` to
//! `not_after`) have passed, by the orchestrator's clock: a year's certificate about four
//! months before it ends, which leaves a node that is offline at that moment months to come
//! back. A node that was offline past that point renews as soon as its next session opens.
//!
//! **Whose clock.** Never the node's own wall clock: a board without a real-time clock boots
//! with the last time it saved, years off, and a clock set by hand or by NTP jumps. The node
//! learns the orchestrator's time from every `Welcome` ([`OrchestratorClock`]) and carries it
//! forward on the monotonic clock the caller passes as `now`, which never jumps. So the
//! decision is the orchestrator's view of the certificate, which is the one that counts: it
//! is the orchestrator that refuses an expired certificate.
//!
//! **Expired.** A certificate the orchestrator sees as expired fails the TLS handshake, so a
//! node that was offline past `not_after` cannot renew: it must enroll again (the shell says
//! so). Renewal never brings a dead certificate back, which is what keeps a stolen old
//! certificate, or one of a deleted node, dead.
//!
//! Inputs are the `handle_*` methods; [`Renewal::poll`] says when to send a CSR, and
//! [`Renewal::poll_timeout`] when to ask again.

use crate::backoff::{Backoff, BackoffPolicy};
use std::time::{Duration, Instant};

/// How long the node waits for the answer to a renewal before it counts as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The wait after a refused or unanswered renewal: a minute, doubling to an hour, with full
/// jitter. A refusal is rare (a damaged key, an orchestrator that cannot sign), and a
/// certificate has months left when renewal starts.
pub const RETRY: BackoffPolicy = BackoffPolicy {
    base: Duration::from_secs(60),
    max: Duration::from_secs(3600),
};

/// When a certificate is valid, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: u64,
    pub not_after_ms: u64,
}

impl Validity {
    /// When two thirds of the lifetime have passed: the renewal point.
    pub fn renew_at_ms(&self) -> u64 {
        let life = self.not_after_ms.saturating_sub(self.not_before_ms);
        // Computed in u128: a lifetime of u64 milliseconds times two does not overflow it.
        let two_thirds = u64::try_from(u128::from(life) * 2 / 3).unwrap_or(u64::MAX);
        self.not_before_ms.saturating_add(two_thirds)
    }

    /// Where the certificate stands at `orchestrator_ms`, the orchestrator's time.
    pub fn standing(&self, orchestrator_ms: u64) -> Standing {
        if orchestrator_ms >= self.not_after_ms {
            Standing::Expired
        } else if orchestrator_ms >= self.renew_at_ms() {
            Standing::Due
        } else {
            Standing::Good {
                renew_at_ms: self.renew_at_ms(),
            }
        }
    }
}

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing to do before `renew_at_ms`.
    Good { renew_at_ms: u64 },
    /// Past the renewal point: renew on the next session.
    Due,
    /// Past `not_after`: the orchestrator no longer accepts it, the node must enroll again.
    Expired,
}

/// The orchestrator's wall clock as the node knows it: what a welcome said it was, and the
/// monotonic instant it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrchestratorClock {
    said_ms: u64,
    at: Instant,
}

impl OrchestratorClock {
    /// A welcome that arrived at `at` said the orchestrator's time was `said_ms`.
    pub fn new(said_ms: u64, at: Instant) -> Self {
        Self { said_ms, at }
    }

    /// The orchestrator's time at `now`, carried forward from the welcome.
    pub fn now_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at).as_millis();
        self.said_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The monotonic instant at which the orchestrator's time reaches `ms` (the welcome's
    /// instant for a time already past).
    pub fn instant_of(&self, ms: u64) -> Instant {
        let ahead = Duration::from_millis(ms.saturating_sub(self.said_ms));
        // Far enough ahead to overflow an `Instant` is never: stay at the latest we can say.
        self.at
            .checked_add(ahead)
            .unwrap_or(self.at + Duration::from_secs(100 * 365 * 86_400))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing asked.
    Idle,
    /// A CSR is out on the current session, answered by `deadline`.
    Asked { deadline: Instant },
    /// The last attempt failed: not again before `until`.
    Waiting { until: Instant },
}

/// The node's certificate renewal.
#[derive(Debug)]
pub struct Renewal {
    validity: Validity,
    clock: Option<OrchestratorClock>,
    state: State,
    established: bool,
    backoff: Backoff,
    rng: fastrand::Rng,
}

impl Renewal {
    /// The renewal of a certificate valid for `validity`; `seed` draws the retry jitter.
    pub fn new(validity: Validity, seed: u64) -> Self {
        Self {
            validity,
            clock: None,
            state: State::Idle,
            established: false,
            backoff: Backoff::new(RETRY),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The certificate this renewal is about.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// Where the certificate stands now, by the orchestrator's clock; `None` before the
    /// first welcome, when the node does not know that clock.
    pub fn standing(&self, now: Instant) -> Option<Standing> {
        self.clock
            .map(|clock| self.validity.standing(clock.now_ms(now)))
    }

    /// A session opened: the welcome arrived at `now` and said the orchestrator's time was
    /// `time_ms`. A request that was out on an earlier session is lost with it.
    pub fn handle_welcome(&mut self, time_ms: u64, now: Instant) {
        self.clock = Some(OrchestratorClock::new(time_ms, now));
        self.established = true;
        if let State::Asked { .. } = self.state {
            self.state = State::Idle;
        }
    }

    /// The session ended. What was asked on it will not be answered.
    pub fn handle_disconnected(&mut self) {
        self.established = false;
        if let State::Asked { .. } = self.state {
            self.state = State::Idle;
        }
    }

    /// Whether to send a renewal request now. `true` once per attempt: the caller sends the
    /// CSR on the established session and answers with [`Renewal::handle_renewed`] or
    /// [`Renewal::handle_refused`].
    pub fn poll(&mut self, now: Instant) -> bool {
        if !self.established {
            return false;
        }
        match self.state {
            State::Asked { deadline } if now >= deadline => {
                // No answer: count it as a failure and wait before the next try.
                self.fail(now);
                return false;
            }
            State::Asked { .. } => return false,
            State::Waiting { until } if now < until => return false,
            State::Waiting { .. } | State::Idle => {}
        }
        match self.standing(now) {
            // Expired with a session still up (it outlived its certificate): the session
            // proves the key, so renewing is still right.
            Some(Standing::Due | Standing::Expired) => {
                self.state = State::Asked {
                    deadline: now + ANSWER_TIMEOUT,
                };
                true
            }
            Some(Standing::Good { .. }) | None => {
                self.state = State::Idle;
                false
            }
        }
    }

    /// When [`Renewal::poll`] may say something new: the renewal point, the answer's
    /// deadline or the end of a wait. `None` while there is no session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.established {
            return None;
        }
        match self.state {
            State::Asked { deadline } => Some(deadline),
            State::Waiting { until } => Some(until),
            State::Idle => self
                .clock
                .map(|clock| clock.instant_of(self.validity.renew_at_ms())),
        }
    }

    /// The orchestrator issued a certificate valid for `validity`, and it is stored.
    pub fn handle_renewed(&mut self, validity: Validity) {
        self.validity = validity;
        self.state = State::Idle;
        self.backoff.reset();
    }

    /// The orchestrator refused, or the new certificate could not be stored: try again
    /// after a wait.
    pub fn handle_refused(&mut self, now: Instant) {
        self.fail(now);
    }

    fn fail(&mut self, now: Instant) {
        let wait = self.backoff.next_delay(self.rng.u64(..));
        self.state = State::Waiting { until: now + wait };
    }
}

#[cfg(test)]
// One base instant per test from the clock; the machine sees only what the test adds to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    /// 2026-12-06, as the orchestrator says it.
    const ISSUED_MS: u64 = 1_796_515_200_000;

    /// A year's certificate issued at `ISSUED_MS`.
    fn year() -> Validity {
        Validity {
            not_before_ms: ISSUED_MS,
            not_after_ms: ISSUED_MS + 365 * DAY_MS,
        }
    }

    fn days(n: u64) -> Duration {
        Duration::from_millis(n * DAY_MS)
    }

    #[test]
    fn the_renewal_point_is_two_thirds_of_the_lifetime() {
        let v = year();
        assert_eq!(v.renew_at_ms(), ISSUED_MS + 365 * DAY_MS * 2 / 3);
        assert!(matches!(v.standing(ISSUED_MS), Standing::Good { .. }));
        assert_eq!(
            v.standing(v.renew_at_ms() - 1),
            Standing::Good {
                renew_at_ms: v.renew_at_ms()
            }
        );
        assert_eq!(v.standing(v.renew_at_ms()), Standing::Due);
        assert_eq!(v.standing(v.not_after_ms - 1), Standing::Due);
        assert_eq!(v.standing(v.not_after_ms), Standing::Expired);
        // Nonsense bounds never panic or wrap.
        let odd = Validity {
            not_before_ms: u64::MAX,
            not_after_ms: 0,
        };
        assert_eq!(odd.renew_at_ms(), u64::MAX);
        assert_eq!(odd.standing(0), Standing::Expired);
        let huge = Validity {
            not_before_ms: 0,
            not_after_ms: u64::MAX,
        };
        assert_eq!(huge.renew_at_ms(), u64::MAX / 3 * 2);
    }

    #[test]
    fn nothing_is_asked_before_a_welcome_says_what_time_it_is() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 1);
        // However late it is: without a session, and without the orchestrator's time.
        assert!(!r.poll(t0 + days(400)));
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.standing(t0), None);
    }

    #[test]
    fn it_renews_at_the_point_by_the_orchestrators_clock_carried_on_the_monotonic_one() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 1);
        // Welcomed ten days after issue.
        r.handle_welcome(ISSUED_MS + 10 * DAY_MS, t0);
        assert!(!r.poll(t0));
        let point = year().renew_at_ms();
        let due = t0 + Duration::from_millis(point - ISSUED_MS - 10 * DAY_MS);
        assert_eq!(r.poll_timeout(), Some(due));
        assert!(!r.poll(due - Duration::from_millis(1)));
        assert!(r.poll(due), "due at the renewal point");
        assert!(!r.poll(due), "one request at a time");
        assert_eq!(r.poll_timeout(), Some(due + ANSWER_TIMEOUT));
        let next = Validity {
            not_before_ms: point,
            not_after_ms: point + 365 * DAY_MS,
        };
        r.handle_renewed(next);
        assert!(!r.poll(due + Duration::from_secs(1)));
        assert_eq!(
            r.poll_timeout(),
            Some(due + Duration::from_millis(next.renew_at_ms() - point))
        );
    }

    /// The node's own wall clock is no input at all: a node three years behind (a board
    /// without a real-time clock) or one whose clock jumps decides exactly as one that is
    /// right, since only the welcome's time and the monotonic clock count.
    #[test]
    fn a_node_clock_years_off_or_jumping_changes_nothing() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 1);
        // The node believes it is 2023; the orchestrator says the certificate is a day old.
        r.handle_welcome(ISSUED_MS + DAY_MS, t0);
        assert!(
            !r.poll(t0),
            "a day-old certificate is not due, whatever the node believes"
        );
        assert!(matches!(r.standing(t0), Some(Standing::Good { .. })));
        // The node's wall clock then jumps five years ahead (NTP, a hand): the monotonic
        // clock moved a minute, so the certificate is a day and a minute old.
        assert!(!r.poll(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn an_orchestrator_clock_jump_is_taken_from_the_next_welcome() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 1);
        r.handle_welcome(ISSUED_MS + DAY_MS, t0);
        assert!(!r.poll(t0));
        r.handle_disconnected();
        // Reconnected a minute later, and the orchestrator's clock was set right meanwhile:
        // it is 300 days later than it said.
        let t1 = t0 + Duration::from_secs(60);
        r.handle_welcome(ISSUED_MS + 300 * DAY_MS, t1);
        assert!(r.poll(t1), "due by the orchestrator's (new) time");
    }

    #[test]
    fn a_node_offline_past_its_renewal_point_renews_right_after_it_reconnects() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 1);
        r.handle_welcome(ISSUED_MS + DAY_MS, t0);
        assert!(!r.poll(t0));
        r.handle_disconnected();
        // Offline across the renewal point: nothing is asked without a session.
        let later = t0 + days(300);
        assert!(!r.poll(later));
        assert_eq!(r.poll_timeout(), None);
        // Back (its daemon restarted meanwhile, so the welcome is what it knows).
        r.handle_welcome(ISSUED_MS + 301 * DAY_MS, later);
        assert!(r.poll(later), "renews at once");
        assert_eq!(r.standing(later), Some(Standing::Due));
        // Past the end, by the orchestrator's clock, it is expired.
        let mut late = Renewal::new(year(), 1);
        late.handle_welcome(ISSUED_MS + 366 * DAY_MS, later);
        assert_eq!(late.standing(later), Some(Standing::Expired));
    }

    #[test]
    fn a_refused_or_unanswered_renewal_waits_then_tries_again() {
        let t0 = Instant::now();
        let mut r = Renewal::new(year(), 7);
        r.handle_welcome(ISSUED_MS + 250 * DAY_MS, t0);
        assert!(r.poll(t0));
        r.handle_refused(t0);
        let until = r.poll_timeout().expect("a wait");
        assert!(
            until > t0 && until <= t0 + RETRY.base,
            "first wait within a minute"
        );
        assert!(!r.poll(until - Duration::from_millis(1)));
        assert!(r.poll(until), "asked again after the wait");
        // Unanswered: counted as a failure at the deadline.
        let deadline = until + ANSWER_TIMEOUT;
        assert!(!r.poll(deadline));
        let again = r.poll_timeout().expect("a wait");
        assert!(again > deadline && again <= deadline + 2 * RETRY.base);
        // A lost session forgets the request; the next welcome asks again at once.
        assert!(r.poll(again));
        r.handle_disconnected();
        r.handle_welcome(ISSUED_MS + 251 * DAY_MS, again);
        assert!(r.poll(again));
    }
}
