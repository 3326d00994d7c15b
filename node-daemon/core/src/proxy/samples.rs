//! What routing models learn from: a fair sample of the proxy's attempts, kept in a fixed
//! reservoir between two reports.
//!
//! Every attempt the proxy makes is offered to a [`RouteSampler`] with the chosen backend's
//! features at the moment it was chosen ([`route_features`](super::learned::route_features))
//! and how it went. The sampler keeps at most [`RouteSampler::CAPACITY`] of them, each attempt
//! of the window equally likely to be kept (reservoir sampling: the i-th offer replaces a kept
//! one with probability `CAPACITY / i`). The shell takes the window ([`RouteSampler::take`])
//! once per report interval and records it in the outbox, which bounds how much a node keeps
//! while it is offline and sends when it returns.
//!
//! **Invariant.** Offering never allocates and costs the same however busy the proxy is: the
//! reservoir is a fixed array, and a busy minute and a quiet one cost the uplink the same.

use super::learned::ROUTE_WIDTH;

/// One attempt, as a model is trained on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSample {
    /// The chosen backend's features, in the order of [`super::learned::ROUTE_FEATURES`].
    pub features: [f32; ROUTE_WIDTH],
    /// From sending the attempt to its answer's head or its failure.
    pub latency_ms: f32,
    pub failed: bool,
}

/// The attempts of one window: how many there were, and the ones kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteWindow {
    pub attempts: u64,
    pub samples: Vec<RouteSample>,
}

/// A uniform sample of at most [`RouteSampler::CAPACITY`] attempts since the last
/// [`take`](RouteSampler::take).
#[derive(Debug, Clone)]
pub struct RouteSampler {
    kept: [RouteSample; RouteSampler::CAPACITY],
    len: usize,
    /// Attempts offered since the last take.
    offered: u64,
}

impl Default for RouteSampler {
    fn default() -> Self {
        Self {
            kept: [RouteSample {
                features: [0.0; ROUTE_WIDTH],
                latency_ms: 0.0,
                failed: false,
            }; RouteSampler::CAPACITY],
            len: 0,
            offered: 0,
        }
    }
}

impl RouteSampler {
    /// The most attempts kept per window: what one outbox event carries
    /// (`edge_proto::RouteSamples::MAX_SAMPLES`).
    pub const CAPACITY: usize = 8;

    /// One more attempt. `draw` is a uniformly random `u64` from the caller; a sample that
    /// is not finite (a clock that went backwards cannot make one, but a feature might) is
    /// counted and not kept.
    pub fn offer(&mut self, sample: RouteSample, draw: u64) {
        self.offered = self.offered.saturating_add(1);
        let finite = sample.latency_ms.is_finite() && sample.features.iter().all(|v| v.is_finite());
        if !finite {
            return;
        }
        if self.len < Self::CAPACITY {
            self.kept[self.len] = sample;
            self.len += 1;
            return;
        }
        // Kept with probability CAPACITY / offered, in place of a kept one at random.
        let slot = draw % self.offered;
        if let Some(kept) = usize::try_from(slot)
            .ok()
            .and_then(|s| self.kept.get_mut(s))
        {
            *kept = sample;
        }
    }

    /// Attempts offered since the last take.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// The window so far, and a fresh one from now.
    pub fn take(&mut self) -> RouteWindow {
        let window = RouteWindow {
            attempts: self.offered,
            samples: self.kept[..self.len].to_vec(),
        };
        self.len = 0;
        self.offered = 0;
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u32) -> RouteSample {
        RouteSample {
            features: [i as f32; ROUTE_WIDTH],
            latency_ms: i as f32,
            failed: i % 2 == 1,
        }
    }

    #[test]
    fn a_quiet_window_keeps_every_attempt_and_a_busy_one_keeps_eight() {
        let mut sampler = RouteSampler::default();
        let mut rng = fastrand::Rng::with_seed(1);
        for i in 0..3 {
            sampler.offer(sample(i), rng.u64(..));
        }
        let window = sampler.take();
        assert_eq!(window.attempts, 3);
        assert_eq!(window.samples, vec![sample(0), sample(1), sample(2)]);

        for i in 0..10_000 {
            sampler.offer(sample(i), rng.u64(..));
        }
        let window = sampler.take();
        assert_eq!(window.attempts, 10_000);
        assert_eq!(window.samples.len(), RouteSampler::CAPACITY);
        // Taken means gone: the next window starts empty.
        assert_eq!(sampler.take(), RouteWindow::default());
    }

    /// Over many windows of 100 attempts, each attempt is kept about 8 times in 100: early
    /// and late attempts alike (a ring of the newest would keep only the last eight).
    #[test]
    fn every_attempt_of_a_window_is_as_likely_to_be_kept() {
        let mut sampler = RouteSampler::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut kept = [0u32; 100];
        const WINDOWS: u32 = 5_000;
        for _ in 0..WINDOWS {
            for i in 0..100 {
                sampler.offer(sample(i), rng.u64(..));
            }
            for s in sampler.take().samples {
                kept[s.latency_ms as usize] += 1;
            }
        }
        // Expected 400 each (5,000 windows x 8/100); a binomial's sd is about 19.
        for (i, &n) in kept.iter().enumerate() {
            assert!((300..=500).contains(&n), "attempt {i} kept {n} times");
        }
    }

    #[test]
    fn a_sample_that_is_not_finite_is_counted_and_not_kept() {
        let mut sampler = RouteSampler::default();
        let mut bad = sample(1);
        bad.features[3] = f32::NAN;
        sampler.offer(bad, 0);
        sampler.offer(
            RouteSample {
                latency_ms: f32::INFINITY,
                ..sample(2)
            },
            0,
        );
        sampler.offer(sample(3), 0);
        let window = sampler.take();
        assert_eq!(window.attempts, 3);
        assert_eq!(window.samples, vec![sample(3)]);
    }
}
