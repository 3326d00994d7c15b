//! The orchestrator's side of the sync when a node's session opens.
//!
//! The node says at hello what it holds (each workload at the generation it admitted) and
//! where its outbox stands ([`SyncState`]). The answer is what differs: an `Assign` for each
//! workload the node should hold at another generation or not at all yet, an `Unassign` for
//! each it holds and should not (deleted or moved while it was away), the acknowledgements
//! of events it sent before and the orchestrator already stored, then [`Synced`] to close.
//! A node that cannot say everything it holds gets a snapshot: every assignment, and it
//! stops whatever else it runs.
//!
//! Applying an answer twice changes nothing: an `Assign` of the generation a node runs is
//! answered without touching the workload, an `Unassign` of what it does not hold is
//! nothing, and an acknowledgement of what it already forgot is ignored.
//!
//! **Invariant.** No I/O and no clock: the caller reads the store and sends the messages.

use edge_proto::{EventBatch, EventsStored, List, SyncMode, SyncState, Synced};
use std::collections::BTreeMap;

/// The most acknowledgements a sync resends: a node has at most this many events out
/// unacknowledged at once (its window of batches), so no more can be stored yet unknown to
/// it.
pub const MAX_RESENT_ACKS: usize = 4 * EventBatch::MAX_EVENTS;

/// What a node's session needs at its start, from what it said and what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: SyncMode,
    /// Workloads to assign, by name.
    pub assign: Vec<String>,
    /// Workloads to unassign, by name.
    pub unassign: Vec<String>,
    /// Workloads the node already holds at the generation it should: it admitted them.
    pub current: Vec<String>,
}

/// The plan for a node that said `said` at hello (`None`: it said nothing, so it gets a
/// snapshot) and should hold `held` (workload and generation).
pub fn plan<'a>(said: Option<&SyncState>, held: impl IntoIterator<Item = (&'a str, u64)>) -> Plan {
    let held: BTreeMap<&str, u64> = held.into_iter().collect();
    let Some(said) = said.filter(|s| s.complete) else {
        return Plan {
            mode: SyncMode::Snapshot,
            assign: held.keys().map(|n| (*n).to_owned()).collect(),
            unassign: Vec::new(),
            current: Vec::new(),
        };
    };
    let applied: BTreeMap<&str, u64> = said
        .applied
        .iter()
        .map(|a| (a.workload.as_str(), a.generation))
        .collect();
    let mut plan = Plan {
        mode: SyncMode::Changes,
        assign: Vec::new(),
        unassign: Vec::new(),
        current: Vec::new(),
    };
    for (name, generation) in &held {
        let list = if applied.get(name) == Some(generation) {
            &mut plan.current
        } else {
            &mut plan.assign
        };
        list.push((*name).to_owned());
    }
    plan.unassign = applied
        .keys()
        .filter(|name| !held.contains_key(*name))
        .map(|name| (*name).to_owned())
        .collect();
    plan
}

/// The outbox sequence numbers to ask the store about: those the node still holds
/// unacknowledged, from `outbox_oldest` up to (not including) `outbox_next`.
pub fn unacknowledged(said: &SyncState) -> core::ops::Range<u64> {
    said.outbox_oldest..said.outbox_next.max(said.outbox_oldest)
}

/// The acknowledgements to send again: of the node's unacknowledged range, those the store
/// holds (`stored`, ascending, at most [`MAX_RESENT_ACKS`] are used), in messages of at
/// most one batch each. Gaps are not acknowledged here: the node sends them again, and
/// storing one twice changes nothing. A fresh outbox gets none: the numbers stored may be
/// another life's.
pub fn resent_acks(said: &SyncState, stored: &[u64]) -> Vec<EventsStored> {
    if said.outbox_fresh {
        return Vec::new();
    }
    let range = unacknowledged(said);
    let seqs: Vec<u64> = stored
        .iter()
        .copied()
        .filter(|s| range.contains(s))
        .take(MAX_RESENT_ACKS)
        .collect();
    seqs.chunks(EventBatch::MAX_EVENTS)
        .map(|chunk| EventsStored {
            seqs: List::from_iter(chunk.iter().copied()),
            gaps_through: 0,
        })
        .collect()
}

/// The message that closes the sync `plan`, after `unassigned` unassignments in all (the
/// plan's, and any a reconcile decided), with the highest of the node's sequence numbers
/// the store holds.
pub fn synced(plan: &Plan, unassigned: usize, events_through: Option<u64>) -> Synced {
    Synced {
        mode: plan.mode,
        assigned: u32::try_from(plan.assign.len()).unwrap_or(u32::MAX),
        unassigned: u32::try_from(unassigned).unwrap_or(u32::MAX),
        events_through,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{Applied, text};

    fn said(applied: &[(&str, u64)], complete: bool) -> SyncState {
        SyncState {
            applied: applied
                .iter()
                .map(|(w, g)| Applied {
                    workload: text(w),
                    generation: *g,
                })
                .collect(),
            complete,
            outbox_next: 10,
            outbox_oldest: 4,
            outbox_fresh: false,
        }
    }

    #[test]
    fn a_node_that_holds_what_it_should_gets_nothing() {
        let s = said(&[("a", 1), ("b", 7)], true);
        let p = plan(Some(&s), [("a", 1), ("b", 7)]);
        assert_eq!(p.mode, SyncMode::Changes);
        assert!(p.assign.is_empty() && p.unassign.is_empty());
        assert_eq!(p.current, ["a", "b"]);
    }

    #[test]
    fn changes_are_new_generations_new_workloads_and_removals() {
        let s = said(&[("a", 1), ("b", 7), ("gone", 3)], true);
        let p = plan(Some(&s), [("a", 2), ("b", 7), ("new", 1)]);
        assert_eq!(p.mode, SyncMode::Changes);
        assert_eq!(p.assign, ["a", "new"]);
        assert_eq!(p.unassign, ["gone"]);
        assert_eq!(p.current, ["b"]);
    }

    #[test]
    fn a_node_that_cannot_say_everything_gets_a_snapshot() {
        for s in [None, Some(said(&[("a", 1)], false))] {
            let p = plan(s.as_ref(), [("a", 1), ("b", 2)]);
            assert_eq!(p.mode, SyncMode::Snapshot);
            assert_eq!(p.assign, ["a", "b"]);
            assert!(p.unassign.is_empty() && p.current.is_empty());
        }
    }

    #[test]
    fn stored_events_the_node_still_holds_are_acknowledged_again() {
        let s = said(&[], true);
        let acks = resent_acks(&s, &[1, 3, 4, 5, 9, 10, 11]);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].seqs.as_slice(), [4, 5, 9]);
        assert_eq!(acks[0].gaps_through, 0);
        // As many as a window holds, a batch to a message.
        let mut s = said(&[], true);
        s.outbox_oldest = 1;
        s.outbox_next = 10_000;
        let stored: Vec<u64> = (1..2_000).collect();
        let acks = resent_acks(&s, &stored);
        assert_eq!(acks.len(), MAX_RESENT_ACKS / EventBatch::MAX_EVENTS);
        assert!(acks.iter().all(|a| a.seqs.len() == EventBatch::MAX_EVENTS));
        // A node that says its oldest is past its next asks about nothing.
        s.outbox_oldest = 50;
        s.outbox_next = 20;
        assert!(resent_acks(&s, &stored).is_empty());
        // A fresh outbox's numbers may be another life's: none is acknowledged.
        let mut fresh = said(&[], true);
        fresh.outbox_fresh = true;
        assert!(resent_acks(&fresh, &[4, 5, 9]).is_empty());
    }

    #[test]
    fn synced_counts_what_was_sent() {
        let s = said(&[("gone", 1)], true);
        let p = plan(Some(&s), [("a", 1)]);
        let m = synced(&p, 2, Some(41));
        assert_eq!(
            m,
            Synced {
                mode: SyncMode::Changes,
                assigned: 1,
                unassigned: 2,
                events_through: Some(41),
            }
        );
    }
}
