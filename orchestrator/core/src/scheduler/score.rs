//! How the scheduler ranks the nodes that can take an instance: a [`Score`] sees one
//! feasible node at a time as a [`Fit`] and returns a number, higher is better.
//! [`LeastAllocated`] is the default; a learned model can provide another.
//!
//! A score runs once per feasible node per instance placed, inside the placement loop: it
//! must be cheap, pure and deterministic, and it is called through a generic parameter, never
//! a trait object, so the default costs nothing over a plain function.
//!
//! A score that ranks all feasible nodes at once (a model that runs a batch) sets
//! [`Score::BATCHED`]: the scheduler then hands it every feasible node in one
//! [`Score::score_batch`], each [`Fit`] carrying the node's [`NodeHistory`] and whether the
//! workload's artifact is likely in its cache. The default path never reads them.

use std::fmt;

use edge_proto::NodeId;

use super::{Hot, NodeHistory, Resources, Want};

/// One node that can take one more instance (it passed every filter), as a [`Score`] sees it.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    pub(super) node: &'a Hot,
    pub(super) want: &'a Want,
    pub(super) proximity: Option<f64>,
    /// Only for a [`Score::BATCHED`] score.
    pub(super) history: Option<&'a NodeHistory>,
    pub(super) cache_rank: Option<u32>,
    pub(super) artifact_bytes: u64,
}

impl Fit<'_> {
    /// The candidate node.
    #[inline(always)]
    pub fn node(&self) -> NodeId {
        self.node.id
    }

    /// What the node has free before this instance: its capacity less what is allocated.
    #[inline(always)]
    pub fn free(&self) -> Resources {
        self.node.free
    }

    /// What one instance asks for.
    #[inline(always)]
    pub fn want(&self) -> Resources {
        self.want.resources
    }

    /// The mean of the node's free CPU and free memory fractions once the instance is placed:
    /// 1 for an empty node and an instance that asks for nothing, 0 for a node it fills. A
    /// resource the node has none of counts as 0.
    #[inline(always)]
    pub fn free_share_after(&self) -> f64 {
        let (node, want) = (self.node, self.want);
        0.5 * (node.free_fraction - want.cpu * node.inv_cpu - want.memory * node.inv_memory)
    }

    /// The node's free CPU fraction once the instance is placed (0 with no CPU).
    #[inline(always)]
    pub fn free_cpu_after(&self) -> f64 {
        (self.node.free.cpu_millis as f64 - self.want.cpu) * self.node.inv_cpu
    }

    /// The node's free memory fraction once the instance is placed (0 with no memory).
    #[inline(always)]
    pub fn free_memory_after(&self) -> f64 {
        (self.node.free.memory_bytes as f64 - self.want.memory) * self.node.inv_memory
    }

    /// What the scheduler knows of the node's past: load, artifacts, restarts, refusals.
    /// `Some` only for a [`Score::BATCHED`] score.
    #[inline(always)]
    pub fn history(&self) -> Option<&NodeHistory> {
        self.history
    }

    /// Whether the node ran or runs the workload's artifact, so likely has it cached. Known
    /// only to a [`Score::BATCHED`] score (false otherwise).
    #[inline(always)]
    pub fn cached(&self) -> bool {
        self.cache_rank.is_some()
    }

    /// For an artifact the node ran, how many others it started since
    /// ([`NodeHistory::artifact_rank`]). Known only to a [`Score::BATCHED`] score.
    #[inline(always)]
    pub fn cache_rank(&self) -> Option<u32> {
        self.cache_rank
    }

    /// The size of the workload's artifact in bytes, 0 when unknown
    /// ([`Scheduler::set_artifact_size`](super::Scheduler::set_artifact_size)). Known only to
    /// a [`Score::BATCHED`] score.
    #[inline(always)]
    pub fn artifact_bytes(&self) -> u64 {
        self.artifact_bytes
    }

    /// Closeness to the spec's `near` point in `[0, 1]`, 1 at the centre and 0 at the edge of
    /// the radius; `None` when the spec has no `near`.
    #[inline(always)]
    pub fn proximity(&self) -> Option<f64> {
        self.proximity
    }
}

impl fmt::Debug for Fit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fit")
            .field("node", &self.node())
            .field("free", &self.free())
            .field("want", &self.want())
            .field("proximity", &self.proximity)
            .field("history", &self.history)
            .field("cache_rank", &self.cache_rank)
            .finish()
    }
}

/// Ranks feasible nodes for one instance: the scheduler binds the highest score, ties going to
/// the lower node id.
///
/// The score must be finite and depend only on the [`Fit`] (no clock, no randomness, no
/// state that changes between calls), or placements stop being reproducible.
pub trait Score: fmt::Debug {
    /// Whether the scheduler calls [`Score::score_batch`] with every feasible node at once,
    /// each [`Fit`] with its history, instead of [`Score::score`] node by node.
    const BATCHED: bool = false;

    fn score(&self, fit: &Fit<'_>) -> f64;

    /// Scores every feasible node for one instance (all of them, in `fits`' order, into
    /// `out`, which starts empty). Called once per placement of a workload, only when
    /// [`Score::BATCHED`]; the scheduler binds the highest, ties going to the lower node id,
    /// and reads a score that is not finite as the lowest. It may keep state between calls
    /// (buffers, a model's mode), but the same state and fits must give the same scores.
    fn score_batch(&mut self, fits: &[Fit<'_>], out: &mut Vec<f64>) {
        out.extend(fits.iter().map(|fit| self.score(fit)));
    }
}

/// The default score: the most free CPU and memory after placing
/// ([`Fit::free_share_after`]), averaged with closeness when the spec has `near`. Spreads
/// load, and prefers the closest node among equally loaded ones. Always finite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeastAllocated;

impl Score for LeastAllocated {
    #[inline(always)]
    fn score(&self, fit: &Fit<'_>) -> f64 {
        let least_allocated = fit.free_share_after();
        match fit.proximity() {
            Some(p) => 0.5 * least_allocated + 0.5 * p,
            None => least_allocated,
        }
    }
}
