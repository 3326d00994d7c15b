//! A circuit breaker per backend: when to stop sending it requests, and when to try again.
//!
//! A [`Breaker`] is `Closed` while its backend answers. It opens after
//! `consecutive_failures` failures in a row, or when at least `error_rate` of the requests in
//! the last `window` failed, once there were `min_requests` of them (so that two failures out
//! of three requests on a quiet route do not shut a backend out). While `Open` it lets nothing
//! through for `open_for`; then it is `HalfOpen` and lets `half_open_probes` requests through
//! at a time. A probe's success closes it, a failure opens it again for twice as long, up to
//! `max_open_for`: a backend that stays down is probed less and less often, and one that
//! recovers is back after its first good answer.
//!
//! What counts as a failure is the shell's call (a connection refused or reset, a timeout, a
//! 502/503/504 from the backend); it reports every request that [`Breaker::allow`] let through
//! with [`on_success`](Breaker::on_success), [`on_failure`](Breaker::on_failure) or, if it
//! ended without a verdict (the client went away), [`on_cancel`](Breaker::on_cancel), which
//! frees a half-open probe's slot. A probe never reported keeps its slot.
//!
//! Nothing here reads the clock: every call takes `now`, and the tests run minutes of
//! failures on a synthetic clock in microseconds.

use std::time::{Duration, Instant};

/// When a [`Breaker`] opens and how it recovers. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// This many failures in a row open it; 0 never opens it on this count.
    pub consecutive_failures: u32,
    /// This share of failures (0 to 1) among the requests of the last `window` opens it ...
    pub error_rate: f64,
    /// ... once the window holds at least this many requests.
    pub min_requests: u32,
    /// How far back the error rate looks (to a tenth of it: it is counted in ten slots).
    pub window: Duration,
    /// How long it stays open the first time; each reopening without a close doubles it ...
    pub open_for: Duration,
    /// ... up to this.
    pub max_open_for: Duration,
    /// How many requests may be in flight at once while half-open (at least 1).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    /// 5 failures in a row, or half of at least 20 requests in 10 s; open 5 s doubling up to
    /// 60 s; one probe at a time.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// Where a [`Breaker`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests go through; results are counted.
    Closed,
    /// Nothing goes through until `open_for` has passed.
    Open,
    /// A few probes go through; the first result decides.
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    /// For a metric label and logs: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Inner {
    Closed,
    Open { since: Instant, open_for: Duration },
    HalfOpen { probes: u32 },
}

/// One backend's circuit breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
    /// Failures in a row while closed.
    consecutive: u32,
    /// Successes and failures while closed, over the last `window`.
    results: Rolling,
    /// Openings since it was last closed by a probe: the backoff's exponent.
    opens: u32,
}

const SUCCESS: usize = 0;
const FAILURE: usize = 1;

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed,
            consecutive: 0,
            results: Rolling::new(config.window),
            opens: 0,
        }
    }

    /// Where it is at `now`: an open breaker whose time has passed is half-open.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { since, open_for } if now.saturating_duration_since(since) < open_for => {
                BreakerState::Open
            }
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the backend at `now`. While half-open, a `true` takes one
    /// of the probe slots until the request is reported.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.advance(now);
        match &mut self.inner {
            Inner::Closed => true,
            Inner::Open { .. } => false,
            Inner::HalfOpen { probes } => {
                if *probes < self.config.half_open_probes.max(1) {
                    *probes += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// A request it let through succeeded. Returns the new state if this changed it (a
    /// successful probe closes it).
    pub fn on_success(&mut self, now: Instant) -> Option<BreakerState> {
        self.advance(now);
        match self.inner {
            Inner::Closed => {
                self.consecutive = 0;
                self.results.add(now, SUCCESS);
                None
            }
            // A request sent before it opened: too late to count.
            Inner::Open { .. } => None,
            Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed;
                self.opens = 0;
                self.consecutive = 0;
                self.results.clear();
                Some(BreakerState::Closed)
            }
        }
    }

    /// A request it let through failed. Returns the new state if this changed it (it opened).
    pub fn on_failure(&mut self, now: Instant) -> Option<BreakerState> {
        self.advance(now);
        match self.inner {
            Inner::Closed => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.results.add(now, FAILURE);
                let [successes, failures] = self.results.totals(now);
                let total = successes.saturating_add(failures);
                let in_a_row = self.config.consecutive_failures > 0
                    && self.consecutive >= self.config.consecutive_failures;
                // Counts far below 2^53: the ratio is exact enough. A NaN rate never opens it.
                let by_rate = total >= u64::from(self.config.min_requests)
                    && failures as f64 >= self.config.error_rate * total as f64;
                (in_a_row || by_rate).then(|| self.open(now))
            }
            Inner::Open { .. } => None,
            Inner::HalfOpen { .. } => Some(self.open(now)),
        }
    }

    /// A request it let through ended without a verdict: its half-open probe slot is free
    /// again.
    pub fn on_cancel(&mut self) {
        if let Inner::HalfOpen { probes } = &mut self.inner {
            *probes = probes.saturating_sub(1);
        }
    }

    /// How long it stays open the next time it opens (for a `Retry-After`, or a log).
    pub fn next_open_for(&self) -> Duration {
        backoff(&self.config, self.opens)
    }

    fn open(&mut self, now: Instant) -> BreakerState {
        let open_for = backoff(&self.config, self.opens);
        self.opens = self.opens.saturating_add(1);
        self.inner = Inner::Open {
            since: now,
            open_for,
        };
        self.consecutive = 0;
        self.results.clear();
        BreakerState::Open
    }

    fn advance(&mut self, now: Instant) {
        if let Inner::Open { since, open_for } = self.inner
            && now.saturating_duration_since(since) >= open_for
        {
            self.inner = Inner::HalfOpen { probes: 0 };
        }
    }
}

/// `open_for * 2^opens`, at most `max_open_for` (and at least `open_for`).
fn backoff(config: &BreakerConfig, opens: u32) -> Duration {
    config
        .open_for
        .checked_mul(1u32 << opens.min(31))
        .unwrap_or(Duration::MAX)
        .min(config.max_open_for.max(config.open_for))
}

/// How many slots a [`Rolling`] window is counted in.
const SLOTS: usize = 10;

/// Two counters over a rolling window, kept in [`SLOTS`] slots of a tenth of the window each:
/// fixed memory whatever the rate. A total covers between nine and ten tenths of the window
/// back from `now`. A `now` older than one seen before counts as that one, so callers that
/// captured `now` a moment apart cannot erase each other's counts.
#[derive(Debug, Clone)]
pub(crate) struct Rolling {
    slot_ns: u128,
    origin: Option<Instant>,
    latest: u64,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    epoch: u64,
    counts: [u64; 2],
}

impl Rolling {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            slot_ns: (window.as_nanos() / SLOTS as u128).max(1),
            origin: None,
            latest: 0,
            slots: [Slot::default(); SLOTS],
        }
    }

    /// Adds one to counter `which` (0 or 1) at `now`.
    pub(crate) fn add(&mut self, now: Instant, which: usize) {
        let origin = *self.origin.get_or_insert(now);
        let epoch = self.epoch(origin, now);
        self.latest = epoch;
        let Some(slot) = self.slots.get_mut(slot_of(epoch)) else {
            return;
        };
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                counts: [0; 2],
            };
        }
        if let Some(count) = slot.counts.get_mut(which) {
            *count = count.saturating_add(1);
        }
    }

    /// Both counters over the window that ends at `now`.
    pub(crate) fn totals(&self, now: Instant) -> [u64; 2] {
        let Some(origin) = self.origin else {
            return [0; 2];
        };
        let epoch = self.epoch(origin, now);
        self.slots
            .iter()
            .filter(|slot| slot.epoch <= epoch && epoch - slot.epoch < SLOTS as u64)
            .fold([0; 2], |[a, b], slot| {
                [
                    a.saturating_add(slot.counts[0]),
                    b.saturating_add(slot.counts[1]),
                ]
            })
    }

    /// Forgets every count.
    pub(crate) fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.counts = [0; 2];
        }
    }

    fn epoch(&self, origin: Instant, now: Instant) -> u64 {
        let since = now.saturating_duration_since(origin).as_nanos() / self.slot_ns;
        u64::try_from(since).unwrap_or(u64::MAX).max(self.latest)
    }
}

fn slot_of(epoch: u64) -> usize {
    // Below SLOTS, so it fits.
    usize::try_from(epoch % SLOTS as u64).unwrap_or(0)
}

#[cfg(test)]
// One base instant per test from the clock; the code under test sees only what the test adds
// to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, proptest};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..4 {
            assert!(b.allow(t0 + ms(i)));
            assert_eq!(b.on_failure(t0 + ms(i)), None);
        }
        assert_eq!(b.on_success(t0 + ms(5)), None);
        for i in 0..4 {
            assert_eq!(
                b.on_failure(t0 + ms(10 + i)),
                None,
                "the count started over"
            );
        }
        assert_eq!(b.on_failure(t0 + ms(20)), Some(BreakerState::Open));
        assert_eq!(b.state(t0 + ms(20)), BreakerState::Open);
        assert!(!b.allow(t0 + ms(21)));
        assert!(!b.allow(t0 + ms(20) + secs(5) - ms(1)));
    }

    #[test]
    fn opens_on_the_error_rate_over_min_requests() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        // Alternate: never two failures in a row, but half of them fail.
        let mut opened_at = None;
        for i in 0..40u64 {
            let now = t0 + ms(100 * i);
            let changed = if i % 2 == 0 {
                b.on_success(now)
            } else {
                b.on_failure(now)
            };
            if changed == Some(BreakerState::Open) {
                opened_at = Some(i);
                break;
            }
        }
        // The 20th request (i = 19) is the first with 20 in the window.
        assert_eq!(opened_at, Some(19));
    }

    #[test]
    fn stays_closed_below_min_requests_or_the_rate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        // 19 requests, 4 failures in a row at the end: under both thresholds.
        for i in 0..15 {
            b.on_success(t0 + ms(i));
        }
        for i in 15..19 {
            assert_eq!(b.on_failure(t0 + ms(i)), None);
        }
        assert_eq!(b.state(t0 + ms(20)), BreakerState::Closed);

        // Many requests, 40% failing, never 5 in a row: closed.
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..1000u64 {
            let now = t0 + ms(i * 10);
            if i % 5 < 2 {
                assert_eq!(b.on_failure(now), None, "{i}");
            } else {
                b.on_success(now);
            }
        }
        assert!(b.allow(t0 + secs(11)));
    }

    #[test]
    fn old_results_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        });
        for i in 0..19 {
            b.on_failure(t0 + ms(i));
        }
        // Eleven seconds later those 19 failures are gone: one more is 1 of 1, under 20.
        assert_eq!(b.on_failure(t0 + secs(11)), None);
        assert_eq!(b.state(t0 + secs(11)), BreakerState::Closed);
        for i in 1..19 {
            assert_eq!(b.on_failure(t0 + secs(11) + ms(i)), None);
        }
        assert_eq!(b.on_failure(t0 + secs(12)), Some(BreakerState::Open));
    }

    #[test]
    fn a_half_open_probe_closes_it_or_opens_it_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.on_failure(t0);
        }
        let t1 = t0 + secs(5);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert!(b.allow(t1), "one probe");
        assert!(!b.allow(t1), "and only one at a time");
        assert_eq!(b.on_failure(t1 + ms(50)), Some(BreakerState::Open));
        assert!(!b.allow(t1 + ms(60)));

        // Open again, for twice as long; then a probe that succeeds closes it.
        let t2 = t1 + ms(50) + secs(10);
        assert_eq!(b.state(t2 - ms(1)), BreakerState::Open);
        assert!(b.allow(t2));
        assert_eq!(b.on_success(t2 + ms(10)), Some(BreakerState::Closed));
        assert!(b.allow(t2 + ms(11)));
        assert!(b.allow(t2 + ms(11)), "closed lets everything through");
        // Backoff was reset: the next opening is 5 s again.
        assert_eq!(b.next_open_for(), secs(5));
        for _ in 0..5 {
            b.on_failure(t2 + secs(1));
        }
        assert_eq!(b.state(t2 + secs(6) - ms(1)), BreakerState::Open);
        assert_eq!(b.state(t2 + secs(6)), BreakerState::HalfOpen);
    }

    #[test]
    fn the_open_time_doubles_on_each_reopening_up_to_the_max() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.on_failure(t0);
        }
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            // Find when it lets a probe through, to the millisecond.
            let mut waited = Duration::ZERO;
            while !b.allow(now + waited) {
                waited += ms(1);
            }
            waits.push(waited);
            now += waited;
            assert_eq!(b.on_failure(now), Some(BreakerState::Open));
        }
        assert_eq!(
            waits,
            [secs(5), secs(10), secs(20), secs(40), secs(60), secs(60)]
        );
    }

    #[test]
    fn several_probes_when_configured_and_a_cancelled_probe_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        for _ in 0..5 {
            b.on_failure(t0);
        }
        let t1 = t0 + secs(5);
        assert!(b.allow(t1));
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        b.on_cancel();
        assert!(b.allow(t1), "the cancelled probe's slot is free");
        assert!(!b.allow(t1));

        // Zero probes would never recover: it is one.
        let mut b = Breaker::new(BreakerConfig {
            half_open_probes: 0,
            ..BreakerConfig::default()
        });
        for _ in 0..5 {
            b.on_failure(t0);
        }
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
    }

    #[test]
    fn results_of_requests_sent_before_it_opened_do_not_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..5 {
            b.on_failure(t0);
        }
        assert_eq!(b.on_success(t0 + secs(1)), None);
        assert_eq!(b.on_failure(t0 + secs(1)), None);
        assert_eq!(b.state(t0 + secs(1)), BreakerState::Open);
        assert_eq!(
            b.state(t0 + secs(5)),
            BreakerState::HalfOpen,
            "not extended"
        );
    }

    #[test]
    fn state_names_are_fixed_labels() {
        let names: Vec<_> = BreakerState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
    }

    #[test]
    fn extreme_configs_and_clocks_never_panic() {
        let t0 = Instant::now();
        let configs = [
            BreakerConfig {
                window: Duration::ZERO,
                open_for: Duration::ZERO,
                max_open_for: Duration::ZERO,
                min_requests: 0,
                error_rate: f64::NAN,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                window: Duration::MAX,
                open_for: Duration::MAX,
                max_open_for: Duration::MAX,
                consecutive_failures: u32::MAX,
                error_rate: -1.0,
                half_open_probes: u32::MAX,
                ..BreakerConfig::default()
            },
        ];
        for config in configs {
            let mut b = Breaker::new(config);
            for i in 0..200u64 {
                // Times that jump back and forth.
                let now = if i % 3 == 0 { t0 } else { t0 + secs(i * 1000) };
                b.allow(now);
                if i % 2 == 0 {
                    b.on_failure(now);
                } else {
                    b.on_success(now);
                }
                b.state(now);
            }
        }
    }

    #[test]
    fn rolling_counts_forget_after_the_window_and_survive_stale_times() {
        let t0 = Instant::now();
        let mut r = Rolling::new(secs(10));
        r.add(t0, 0);
        r.add(t0 + secs(5), 1);
        assert_eq!(r.totals(t0 + secs(5)), [1, 1]);
        assert_eq!(r.totals(t0 + ms(9_999)), [1, 1]);
        assert_eq!(r.totals(t0 + secs(10)), [0, 1], "the first slot has left");
        // A stale `now` lands in the newest slot instead of wiping it.
        r.add(t0 + secs(1), 1);
        assert_eq!(r.totals(t0 + secs(5)), [1, 2]);
        assert_eq!(r.totals(t0 + secs(20)), [0, 0]);
        r.clear();
        assert_eq!(r.totals(t0 + secs(5)), [0, 0]);
    }

    proptest! {
        #[test]
        fn an_open_breaker_lets_nothing_through_and_probes_are_capped(
            events in proptest::collection::vec((0u8..4, 0u64..3_000), 0..200),
            probes in 1u32..4,
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(BreakerConfig { half_open_probes: probes, ..BreakerConfig::default() });
            let mut in_half_open = 0u32;
            for (kind, step_ms) in events {
                now += ms(step_ms);
                let before = b.state(now);
                match kind {
                    0 => {
                        let allowed = b.allow(now);
                        match before {
                            BreakerState::Closed => prop_assert!(allowed),
                            BreakerState::Open => prop_assert!(!allowed),
                            BreakerState::HalfOpen => {
                                if allowed { in_half_open += 1; }
                                prop_assert!(in_half_open <= probes);
                            }
                        }
                    }
                    1 => { b.on_success(now); }
                    2 => { b.on_failure(now); }
                    _ => { b.on_cancel(); in_half_open = in_half_open.saturating_sub(1); }
                }
                if b.state(now) != BreakerState::HalfOpen {
                    in_half_open = 0;
                }
            }
        }

        #[test]
        fn rolling_totals_never_exceed_what_was_added(
            adds in proptest::collection::vec((0usize..2, 0u64..5_000), 0..100),
            window_ms in 0u64..20_000,
        ) {
            let t0 = Instant::now();
            let mut r = Rolling::new(ms(window_ms));
            let mut added = [0u64; 2];
            let mut now = t0;
            for (which, step) in adds {
                now += ms(step);
                r.add(now, which);
                added[which] += 1;
                let totals = r.totals(now);
                prop_assert!(totals[0] <= added[0] && totals[1] <= added[1]);
                prop_assert!(totals[which] >= 1, "the newest count is in the window");
            }
        }
    }
}
