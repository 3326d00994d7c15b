//! The proxy's sampled attempts into the outbox: every `route_samples_interval_secs`, the
//! window's sample (at most eight attempts, each with its backend's routing features; see
//! `node_core::proxy::samples`) becomes one event of the metrics class. The outbox keeps it
//! through an outage within its budget, thinning the metrics class first, and the
//! orchestrator keeps it for `edgectl telemetry export`, where routing models are trained.

use std::time::{Duration, Instant};

use edge_proto::{List, RouteSample, RouteSamples};
use node_core::proxy::samples::RouteWindow;

use crate::outbox::EventOutbox;
use crate::task::AbortOnDrop;

/// Takes `proxy`'s window every `every` and records it in `outbox`; a window without
/// attempts records nothing. Stops when dropped.
pub fn start(proxy: edge_proxy::Proxy, outbox: EventOutbox, every: Duration) -> AbortOnDrop {
    proxy.set_route_sampling(true);
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: the first window starts here.
        tick.tick().await;
        let mut since = Instant::now();
        loop {
            tick.tick().await;
            let window = proxy.take_route_samples();
            let now = Instant::now();
            let secs = now.saturating_duration_since(since).as_secs();
            since = now;
            if let Some(event) = event(&window, secs) {
                outbox.record_route_samples(event);
            }
        }
    }))
}

/// The outbox event for `window`, which lasted `secs`; `None` when it saw no attempt.
pub fn event(window: &RouteWindow, secs: u64) -> Option<RouteSamples> {
    if window.attempts == 0 {
        return None;
    }
    let samples = window
        .samples
        .iter()
        .take(RouteSamples::MAX_SAMPLES)
        .map(|s| RouteSample {
            features: s
                .features
                .iter()
                .copied()
                .take(RouteSamples::MAX_FEATURES)
                .collect(),
            latency_ms: s.latency_ms,
            failed: s.failed,
        })
        .collect::<List<_, { RouteSamples::MAX_SAMPLES }>>();
    Some(RouteSamples {
        window_secs: u32::try_from(secs).unwrap_or(u32::MAX),
        attempts: window.attempts,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::proxy::learned::ROUTE_WIDTH;
    use node_core::proxy::samples::RouteSample as Sampled;

    #[test]
    fn a_window_becomes_one_event_and_an_empty_one_none() {
        assert_eq!(event(&RouteWindow::default(), 60), None);
        let sampled = Sampled {
            features: [1.5; ROUTE_WIDTH],
            latency_ms: 12.0,
            failed: true,
        };
        let window = RouteWindow {
            attempts: 500,
            samples: vec![sampled; 8],
        };
        let e = event(&window, 61).expect("an event");
        assert_eq!((e.window_secs, e.attempts, e.samples.len()), (61, 500, 8));
        let first = &e.samples[0];
        assert_eq!(first.features.as_slice(), &[1.5; ROUTE_WIDTH]);
        assert_eq!((first.latency_ms, first.failed), (12.0, true));
    }
}
