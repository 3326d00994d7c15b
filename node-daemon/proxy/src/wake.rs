//! Scale to zero, as the proxy sees it: a [`Waker`] that starts a dormant workload, and the
//! [`Activity`] of each workload that scales to zero.
//!
//! The proxy forwards to such a workload only while it holds one of its [`InFlight`] tokens,
//! and gets one only while the workload is awake. Whoever puts the workload to sleep closes
//! its activity first, which succeeds only when no request holds a token. Whether it is
//! closed, how many requests are in flight, and a count of every request let in live in one
//! atomic word: a request either gets in before the close, and the workload stays up until
//! that request is answered, or finds it closed and wakes the workload. No request is cut by
//! a stop, and no request takes a lock.
//!
//! A token is held until the answer's body has been passed on (or dropped), and the time of
//! the last request is updated when a token is taken and when it is given back, so "idle"
//! counts from the end of the last answer.
//!
//! Each request that reaches a workload's way in (a cache miss, whether it finds the workload
//! awake or wakes it) also bumps a plain counter ([`Activity::arrived`]), which the node's
//! pre-warming reads every few seconds: one relaxed atomic add, no lock, no allocation.
//!
//! This module never starts or stops a workload: the [`Waker`] the node sets does that.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Starts workloads that are scaled to zero. Set on the proxy with
/// [`Proxy::set_waker`](crate::Proxy::set_waker).
pub trait Waker: Send + Sync {
    /// Starts `workload` if it is dormant and resolves once it is ready to serve, the routing
    /// that sends to it is set on the proxy, and its [`Activity`] is open. Many calls at once
    /// start it once. The proxy drops the future at its route's deadline; the start goes on.
    fn wake(&self, workload: &str) -> Pin<Box<dyn Future<Output = Result<(), WakeError>> + Send>>;
}

/// Why a workload could not be woken. The proxy answers 503 for each and logs the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    /// This node holds no workload of that name (it was removed meanwhile), or it does not
    /// scale to zero.
    #[error("no workload of that name scales to zero on this node")]
    Unknown,
    /// It was started but did not become ready: it exited, or was stopped meanwhile. Another
    /// request may try again.
    #[error("the workload did not become ready: {0}")]
    NotReady(String),
    /// It was not ready within the waker's own deadline, and was stopped again.
    #[error("the workload did not become ready in time")]
    Timeout,
}

/// Set while the workload is dormant or going to sleep: no request gets in.
const CLOSED: u64 = 1 << 63;
/// Requests in flight, in the low 32 bits.
const COUNT: u64 = u32::MAX as u64;
/// Requests let in so far, modulo 2^31, in bits 32 to 62: a close that raced a request's
/// whole passage (in and out between its two reads) sees it changed.
const ENTERED_ONE: u64 = 1 << 32;
const ENTERED: u64 = CLOSED - ENTERED_ONE;

/// One workload's requests through the proxy, for scaling it to zero. See the module docs.
#[derive(Debug)]
pub struct Activity {
    state: AtomicU64,
    /// What `last` counts from.
    epoch: Instant,
    /// The last request's arrival or end, in milliseconds after `epoch`.
    last: AtomicU64,
    /// Requests that arrived, awake or not (wrapping).
    arrivals: AtomicU64,
}

impl Activity {
    /// A dormant workload's: closed, nothing in flight, its last request at `now`.
    pub fn dormant(now: Instant) -> Self {
        Self {
            state: AtomicU64::new(CLOSED),
            epoch: now,
            last: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
        }
    }

    /// Counts a request for the workload, whether it finds it awake or has to wake it. Call
    /// it once per request, before [`enter`](Self::enter).
    pub fn arrived(&self) {
        // Only a count, read on its own: no order with anything else is needed.
        self.arrivals.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests counted by [`arrived`](Self::arrived) since the activity was made (wrapping):
    /// a reader takes the difference between two reads.
    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Whether requests are kept out: the workload is dormant, or being woken or put to
    /// sleep.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Requests forwarded to the workload and not yet answered in full.
    pub fn in_flight(&self) -> u32 {
        // The mask keeps 32 bits.
        u32::try_from(self.state.load(Ordering::Acquire) & COUNT).unwrap_or(u32::MAX)
    }

    /// When the last request came or its answer ended.
    pub fn last_request(&self) -> Instant {
        let after = Duration::from_millis(self.last.load(Ordering::Acquire));
        self.epoch.checked_add(after).unwrap_or(self.epoch)
    }

    /// Counts `now` as a request's time without letting one in: a wake is the start of one.
    pub fn touch(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        // Clocks read on different threads arrive out of order: keep the latest.
        self.last.fetch_max(ms, Ordering::AcqRel);
    }

    /// Lets a request in while the workload is awake; `None` while it is closed.
    pub fn enter(self: &Arc<Self>, now: Instant) -> Option<InFlight> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            // A full count cannot happen (the listener caps connections far lower); refusing
            // is the safe answer if it ever did.
            if state & CLOSED != 0 || state & COUNT == COUNT {
                return None;
            }
            let entered = (state & ENTERED).wrapping_add(ENTERED_ONE) & ENTERED;
            let next = entered | ((state & COUNT) + 1);
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now_is) => state = now_is,
            }
        }
        self.touch(now);
        Some(InFlight {
            activity: self.clone(),
        })
    }

    /// Lets requests in: the workload is ready and the routing to it is in place.
    pub fn open(&self) {
        self.state.fetch_and(!CLOSED, Ordering::AcqRel);
    }

    /// Keeps new requests out whatever is in flight: the workload went dormant without being
    /// put to sleep through [`close_if_idle`](Self::close_if_idle).
    pub fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// Closes if no request is in flight and the last one is at least `idle` before `now`.
    /// Returns whether it is closed with nothing in flight, and so may be stopped.
    pub fn close_if_idle(&self, now: Instant, idle: Duration) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & COUNT != 0 {
                return false;
            }
            // Read after `state`: a request that left before that load has written its end.
            if now.saturating_duration_since(self.last_request()) < idle {
                return false;
            }
            if state & CLOSED != 0 {
                return true;
            }
            match self.state.compare_exchange_weak(
                state,
                state | CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                // Changed: a request came (and maybe went) meanwhile; look again.
                Err(now_is) => state = now_is,
            }
        }
    }
}

/// A request forwarded to a workload that scales to zero: the workload is not stopped while
/// this lives.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch(Instant::now());
        // After the touch: a close that sees the count drop sees this end too.
        self.activity.state.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    fn awake(now: Instant) -> Arc<Activity> {
        let activity = Arc::new(Activity::dormant(now));
        activity.open();
        activity
    }

    #[test]
    fn a_dormant_workload_lets_nothing_in_until_opened() {
        let t0 = Instant::now();
        let activity = Arc::new(Activity::dormant(t0));
        assert!(activity.is_closed());
        assert!(activity.enter(t0).is_none());
        assert_eq!(activity.in_flight(), 0);
        activity.open();
        let token = activity.enter(t0).expect("awake");
        assert_eq!(activity.in_flight(), 1);
        drop(token);
        assert_eq!(activity.in_flight(), 0);
    }

    #[test]
    fn it_closes_only_when_idle_long_enough_with_nothing_in_flight() {
        let t0 = Instant::now();
        let activity = awake(t0);
        let token = activity.enter(t0).expect("awake");
        assert!(
            !activity.close_if_idle(t0 + IDLE * 10, IDLE),
            "a request in flight keeps it up however long it takes"
        );
        assert!(!activity.is_closed());
        drop(token);
        let ended = activity.last_request();
        assert!(ended >= t0);
        assert!(
            !activity.close_if_idle(ended + IDLE / 2, IDLE),
            "not idle yet"
        );
        assert!(activity.close_if_idle(ended + IDLE, IDLE));
        assert!(activity.is_closed());
        assert!(
            activity.enter(ended + IDLE).is_none(),
            "closed: a request must wake it"
        );
        assert!(
            activity.close_if_idle(ended + IDLE, IDLE),
            "closing again is still closed"
        );
    }

    #[test]
    fn idle_counts_from_the_latest_request_whatever_order_clocks_arrive_in() {
        let t0 = Instant::now();
        let activity = awake(t0);
        activity.touch(t0 + Duration::from_secs(10));
        activity.touch(t0 + Duration::from_secs(3));
        assert_eq!(activity.last_request(), t0 + Duration::from_secs(10));
        assert!(!activity.close_if_idle(t0 + Duration::from_secs(14), IDLE));
        assert!(activity.close_if_idle(t0 + Duration::from_secs(15), IDLE));
        // A clock before the epoch counts as the epoch.
        let later = Activity::dormant(t0 + IDLE);
        later.touch(t0);
        assert_eq!(later.last_request(), t0 + IDLE);
    }

    #[test]
    fn a_forced_close_keeps_new_requests_out_but_counts_those_in_flight() {
        let t0 = Instant::now();
        let activity = awake(t0);
        let token = activity.enter(t0).expect("awake");
        activity.close();
        assert!(activity.enter(t0).is_none());
        assert_eq!(activity.in_flight(), 1);
        assert!(!activity.close_if_idle(t0 + IDLE, IDLE));
        drop(token);
        assert_eq!(activity.in_flight(), 0);
        assert!(activity.is_closed());
    }

    #[test]
    fn every_arrival_is_counted_awake_or_not() {
        let t0 = Instant::now();
        let activity = Arc::new(Activity::dormant(t0));
        activity.arrived();
        assert!(activity.enter(t0).is_none(), "dormant: this one wakes it");
        activity.open();
        activity.arrived();
        let token = activity.enter(t0).expect("awake");
        drop(token);
        assert_eq!(activity.arrivals(), 2);
        assert_eq!(activity.in_flight(), 0);
    }

    #[test]
    fn the_count_of_requests_let_in_wraps_without_touching_the_rest() {
        let t0 = Instant::now();
        let activity = awake(t0);
        // Near the wrap of the 31-bit count of entries, with one request in flight.
        activity.state.store(ENTERED | 1, Ordering::Release);
        let token = activity.enter(t0).expect("awake");
        assert_eq!(
            activity.state.load(Ordering::Acquire),
            2,
            "wrapped to 0, two in flight"
        );
        assert!(!activity.is_closed());
        drop(token);
        // A full count refuses rather than overflow into the flag.
        activity.state.store(COUNT, Ordering::Release);
        assert!(activity.enter(t0).is_none());
        assert!(!activity.is_closed());
    }

    #[test]
    fn racing_requests_and_closes_never_leave_a_request_in_a_closed_workload() {
        // Threads let requests in and out while this one closes whenever it may. Whenever a
        // close succeeds, nothing may be in flight, and no request may get in until opened.
        // It runs until both sides have had their turn many times (or a deadline passes,
        // which fails the test).
        let activity = awake(Instant::now());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let (activity, stop, served) = (activity.clone(), stop.clone(), served.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(token) = activity.enter(Instant::now()) {
                            served.fetch_add(1, Ordering::Relaxed);
                            drop(token);
                        }
                        // Gaps between requests, as real traffic has, in which a close fits.
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut closes = 0u64;
        while (closes < 200 || served.load(Ordering::Relaxed) < 200) && Instant::now() < deadline {
            if activity.close_if_idle(Instant::now() + IDLE, IDLE) {
                closes += 1;
                assert_eq!(activity.in_flight(), 0, "closed with a request inside");
                assert!(activity.enter(Instant::now()).is_none());
                activity.open();
            }
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for thread in requests {
            thread.join().expect("no panic");
        }
        let served = served.load(Ordering::Relaxed);
        assert!(
            closes >= 200 && served >= 200,
            "both sides ran: {served} {closes}"
        );
        assert_eq!(activity.in_flight(), 0);
    }
}
