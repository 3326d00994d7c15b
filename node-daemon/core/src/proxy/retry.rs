//! Which failed requests the proxy may send again, and how many retries it can afford.
//!
//! **Which.** RFC 9110 §9.2.2 calls GET, HEAD, OPTIONS, TRACE, PUT and DELETE idempotent
//! ([`is_idempotent`]): sending one twice has the effect of sending it once. The proxy streams
//! request bodies to the backend without keeping them, so it cannot send a PUT's body again;
//! it retries only the safe methods (GET, HEAD, OPTIONS, TRACE, [`is_safe`]), which carry no
//! body that means anything ([`may_retry`]). A shell that buffers a small body may use
//! [`is_idempotent`] for PUT and DELETE; a safe request that nevertheless carries a body it has
//! started to stream is not to be retried, and that is the shell's to see.
//!
//! **How many.** Retries multiply load exactly when a backend is struggling, so they come out
//! of a [`RetryBudget`] (as in finagle and linkerd): every original request deposits `ratio`
//! of a retry, every retry withdraws one, and both expire after `ttl`; on top, a floor of
//! `min_per_sec` retries a second is always allowed, so a quiet route can still retry. With the
//! defaults, retries add at most 20% to the load, plus 10 a second.
//!
//! Nothing here reads the clock: `now` comes from the caller.

use crate::proxy::breaker::Rolling;
use http::Method;
use std::time::Duration;
use std::time::Instant;

/// GET, HEAD, OPTIONS and TRACE: requests that only ask (RFC 9110 §9.2.1).
pub fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The safe methods, PUT and DELETE: requests whose effect is the same sent once or twice
/// (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    is_safe(method) || method == Method::PUT || method == Method::DELETE
}

/// Whether a request may be sent again after its `attempt`th try failed (the original
/// request is attempt 1), when its route allows `max_retries` retries: only a safe method
/// (see the module docs), at most `1 + max_retries` tries in all. The budget is asked
/// separately ([`RetryBudget::withdraw`]), and only when this says yes.
pub fn may_retry(method: &Method, attempt: u32, max_retries: u32) -> bool {
    is_safe(method) && attempt <= max_retries
}

/// A budget in millionths of a retry, so that a ratio like 0.2 is exact.
const UNIT: u128 = 1_000_000;
const DEPOSITS: usize = 0;
const WITHDRAWALS: usize = 1;

/// How many retries a route (or a backend) can afford. See the module docs.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// What one request deposits, in millionths of a retry.
    per_request: u128,
    /// The floor over one `ttl`, in millionths of a retry.
    reserve: u128,
    /// Requests and retries over the last `ttl`.
    window: Rolling,
}

impl Default for RetryBudget {
    /// 20% of requests, 10 a second regardless, over 10 s.
    fn default() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10))
    }
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (0 to 1000; 0.2 is one retry for five
    /// requests) plus `min_per_sec` retries a second, counted over the last `ttl` (to a tenth
    /// of it).
    pub fn new(ratio: f64, min_per_sec: u32, ttl: Duration) -> Self {
        // `as` saturates and maps NaN to 0: a ratio outside 0..=1000 is clamped.
        let per_request = (ratio.clamp(0.0, 1000.0) * UNIT as f64).round() as u128;
        let reserve = (f64::from(min_per_sec) * ttl.as_secs_f64() * UNIT as f64) as u128;
        Self {
            per_request,
            reserve,
            window: Rolling::new(ttl),
        }
    }

    /// An original request was sent.
    pub fn deposit(&mut self, now: Instant) {
        self.window.add(now, DEPOSITS);
    }

    /// Whether a retry may be sent now; a `true` spends it.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        if self.available(now) == 0 {
            return false;
        }
        self.window.add(now, WITHDRAWALS);
        true
    }

    /// How many retries the budget holds at `now`.
    pub fn available(&self, now: Instant) -> u64 {
        let [deposits, withdrawals] = self.window.totals(now);
        let income = self
            .reserve
            .saturating_add(u128::from(deposits).saturating_mul(self.per_request));
        let spent = u128::from(withdrawals).saturating_mul(UNIT);
        u64::try_from(income.saturating_sub(spent) / UNIT).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
// One base instant per test from the clock; the code under test sees only what the test adds
// to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, proptest};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn safe_and_idempotent_methods_are_those_of_rfc_9110() {
        let table = [
            (Method::GET, true, true),
            (Method::HEAD, true, true),
            (Method::OPTIONS, true, true),
            (Method::TRACE, true, true),
            (Method::PUT, false, true),
            (Method::DELETE, false, true),
            (Method::POST, false, false),
            (Method::PATCH, false, false),
            (Method::CONNECT, false, false),
        ];
        for (method, safe, idempotent) in table {
            assert_eq!(is_safe(&method), safe, "{method}");
            assert_eq!(is_idempotent(&method), idempotent, "{method}");
        }
        // Extension methods are neither, and names are case-sensitive.
        for name in ["PURGE", "get", "LINK"] {
            let method = Method::from_bytes(name.as_bytes()).expect("a token");
            assert!(!is_idempotent(&method), "{name}");
        }
    }

    #[test]
    fn only_safe_methods_are_retried_and_only_max_retries_times() {
        assert!(may_retry(&Method::GET, 1, 2));
        assert!(may_retry(&Method::GET, 2, 2));
        assert!(!may_retry(&Method::GET, 3, 2));
        assert!(!may_retry(&Method::GET, 1, 0), "no retries configured");
        assert!(may_retry(&Method::HEAD, 1, 1));
        for method in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH] {
            assert!(!may_retry(&method, 1, 5), "{method}: its body is gone");
        }
        assert!(!may_retry(&Method::GET, u32::MAX, u32::MAX - 1));
    }

    #[test]
    fn the_budget_allows_the_ratio_of_requests_and_refuses_beyond() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        assert!(!budget.withdraw(t0), "nothing deposited, no floor");
        for i in 0..1000 {
            budget.deposit(t0 + ms(i));
        }
        assert_eq!(budget.available(t0 + ms(1000)), 200);
        let granted = (0..300).filter(|_| budget.withdraw(t0 + ms(1000))).count();
        assert_eq!(granted, 200);
        // Five more requests buy one more retry.
        for _ in 0..4 {
            budget.deposit(t0 + ms(1001));
            assert!(!budget.withdraw(t0 + ms(1001)));
        }
        budget.deposit(t0 + ms(1001));
        assert!(budget.withdraw(t0 + ms(1001)));
    }

    #[test]
    fn the_floor_allows_min_per_sec_retries_without_requests() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        // 10 a second over a 10 s window: 100 at once, then none until they expire.
        let granted = (0..150).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 100);
        assert!(!budget.withdraw(t0 + ms(9_000)));
        assert!(budget.withdraw(t0 + ms(10_000)));

        // With a floor of 0 and no requests, never.
        let mut none = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        assert!(!none.withdraw(t0));
    }

    #[test]
    fn deposits_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!(budget.available(t0 + ms(9_999)), 50);
        assert_eq!(budget.available(t0 + ms(10_000)), 0);
        assert!(!budget.withdraw(t0 + ms(10_000)));
    }

    #[test]
    fn sustained_traffic_retries_about_the_ratio() {
        // 100 requests a second for a minute, every one failing once: retries settle at 20%
        // of requests plus the floor, not 100%.
        let t0 = Instant::now();
        let mut budget = RetryBudget::default();
        let mut retries = 0u32;
        for i in 0..6_000u64 {
            let now = t0 + ms(i * 10);
            budget.deposit(now);
            if budget.withdraw(now) {
                retries += 1;
            }
        }
        // 6000 * 0.2 + 10/s * 60 s = 1800, give or take the window's granularity.
        assert!((1_700..=1_900).contains(&retries), "{retries}");
    }

    #[test]
    fn extreme_parameters_never_panic() {
        let t0 = Instant::now();
        for (ratio, floor, ttl) in [
            (f64::NAN, 0, Duration::ZERO),
            (f64::INFINITY, u32::MAX, Duration::MAX),
            (-3.0, 5, ms(1)),
            (1e300, u32::MAX, Duration::from_secs(u64::MAX)),
        ] {
            let mut budget = RetryBudget::new(ratio, floor, ttl);
            for i in 0..50 {
                budget.deposit(t0 + ms(i));
                budget.withdraw(t0 + ms(i));
                budget.withdraw(t0);
            }
            budget.available(t0 + Duration::from_secs(1_000_000));
        }
        let nan = RetryBudget::new(f64::NAN, 0, Duration::from_secs(1));
        assert_eq!(nan.per_request, 0);
    }

    proptest! {
        #[test]
        fn retries_never_exceed_the_ratio_plus_the_floor(
            steps in proptest::collection::vec((any::<bool>(), 0u64..50), 0..400),
            ratio in 0.0f64..2.0,
            floor in 0u32..5,
        ) {
            let t0 = Instant::now();
            let ttl = Duration::from_secs(1_000_000);
            let mut budget = RetryBudget::new(ratio, floor, ttl);
            let (mut requests, mut retries) = (0u64, 0u64);
            let mut now = t0;
            for (is_request, step) in steps {
                now += ms(step);
                if is_request {
                    budget.deposit(now);
                    requests += 1;
                } else if budget.withdraw(now) {
                    retries += 1;
                }
            }
            // Nothing expires within the run: the total is bounded by what was earned.
            let earned = ratio * requests as f64 + f64::from(floor) * ttl.as_secs_f64();
            prop_assert!(retries as f64 <= earned + 1e-6, "{retries} > {earned}");
        }
    }
}
