//! The node's side of the sync when its session opens.
//!
//! At hello the node says what it holds, each workload at the generation it admitted, and
//! where its outbox stands ([`state`]). The orchestrator answers with what changed since:
//! `Assign`s, `Unassign`s, acknowledgements of events it had already stored, then
//! [`Synced`]. [`Resync`] follows that answer: in a snapshot (the node could not say
//! everything it holds) whatever was not assigned is stopped, and when the orchestrator
//! already holds sequence numbers the outbox would give again (the outbox was lost while
//! the identity was kept) the outbox numbers above them. Until the sync is over the node
//! sends no events, so none goes out under a number that is about to move.
//!
//! A live session whose orchestrator stops answering (no [`Synced`], no acknowledgement of a
//! batch: a store that failed, a message lost inside the orchestrator) would hold the
//! outbox back for as long as the connection lives, since QUIC keeps a silent but running
//! peer's connection open. [`AnswerWatch`] says when to take such a session as broken and
//! dial again: a new session syncs from scratch, and nothing is sent twice into the store.
//!
//! **Invariant.** No I/O and no clock: the shell reads what it holds, passes `now`, and
//! carries out [`Finish`].

use edge_proto::{Applied, List, SyncMode, SyncState, Synced, text};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a live session may leave the node waiting for an answer (its [`Synced`], or an
/// acknowledgement of a batch out) before the node takes the session as broken and dials
/// again. An orchestrator stores a batch in milliseconds; this covers a slow, lossy link.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Watches a session for answers the node waits on; see the module's docs.
#[derive(Debug, Default, Clone)]
pub struct AnswerWatch {
    /// Since when the node has waited without an answer.
    since: Option<Instant>,
}

impl AnswerWatch {
    /// Whether the session has left the node waiting past [`ANSWER_DEADLINE`]. `waiting`
    /// says whether it waits on an answer now (a sync not finished, batches out); a wait
    /// starts at the first check that sees it.
    pub fn stalled(&mut self, waiting: bool, now: Instant) -> bool {
        if !waiting {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= ANSWER_DEADLINE
    }

    /// An answer came (a [`Synced`], an acknowledgement), or the session ended: any wait
    /// starts again.
    pub fn answered(&mut self) {
        self.since = None;
    }
}

/// Where a node's outbox stands, as a hello says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxMarks {
    /// The sequence number it gives next.
    pub next: u64,
    /// The lowest it still holds.
    pub oldest: u64,
    /// It numbers from scratch and has not been placed after what the orchestrator holds.
    pub fresh: bool,
}

/// What a hello says: the workloads the node holds with their generations (`applied`;
/// `complete` is `false` when the node runs something whose generation it does not know),
/// and its outbox's marks. More workloads than the message takes make it incomplete too,
/// and the orchestrator then answers with a snapshot.
pub fn state<'a>(
    applied: impl IntoIterator<Item = (&'a str, u64)>,
    complete: bool,
    outbox: OutboxMarks,
) -> SyncState {
    let mut list = List::new();
    let mut complete = complete;
    for (workload, generation) in applied {
        let entry = Applied {
            workload: text(workload),
            generation,
        };
        // A name longer than the wire takes is never one the orchestrator assigned.
        if entry.workload.len() != workload.len() || list.push(entry).is_err() {
            complete = false;
        }
    }
    SyncState {
        applied: list,
        complete,
        outbox_next: outbox.next,
        outbox_oldest: outbox.oldest.min(outbox.next),
        outbox_fresh: outbox.fresh,
    }
}

/// One session's sync, from its welcome to [`Synced`].
#[derive(Debug, Default)]
pub struct Resync {
    /// Workloads assigned since the welcome.
    assigned: BTreeSet<String>,
    /// Between a welcome and its [`Synced`].
    open: bool,
    /// A sync has finished on the current session: events may go.
    done: bool,
}

/// What the shell does when the sync is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Workloads to stop and forget: a snapshot did not assign them.
    pub forget: Vec<String>,
    /// The highest of the node's sequence numbers the orchestrator holds: the outbox moves
    /// above it where its own could meet them
    /// ([`Outbox::number_after`](crate::outbox::Outbox::number_after)) before it sends.
    pub events_through: Option<u64>,
}

impl Resync {
    /// A session opened: the sync starts.
    pub fn welcomed(&mut self) {
        self.assigned.clear();
        self.open = true;
        self.done = false;
    }

    /// The session ended: nothing may go until the next one's sync is over.
    pub fn disconnected(&mut self) {
        self.assigned.clear();
        self.open = false;
        self.done = false;
    }

    /// The orchestrator assigned `workload`.
    pub fn assigned(&mut self, workload: &str) {
        if self.open {
            self.assigned.insert(workload.to_owned());
        }
    }

    /// Whether this session's sync is over, so that events may go.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The orchestrator said `synced`; the node holds `held`. `None` for a [`Synced`]
    /// outside a sync (a second one): nothing to do.
    pub fn finish<'a>(
        &mut self,
        synced: &Synced,
        held: impl IntoIterator<Item = &'a str>,
    ) -> Option<Finish> {
        if !self.open {
            return None;
        }
        self.open = false;
        self.done = true;
        let forget = match synced.mode {
            SyncMode::Changes => Vec::new(),
            SyncMode::Snapshot => held
                .into_iter()
                .filter(|w| !self.assigned.contains(*w))
                .map(str::to_owned)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        self.assigned.clear();
        Some(Finish {
            forget,
            events_through: synced.events_through,
        })
    }
}

#[cfg(test)]
// One base instant from the clock; the watch sees only what the test adds to it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::outbox::{Class, Outbox};

    #[test]
    fn a_session_that_leaves_the_node_waiting_past_the_deadline_is_stalled() {
        let t0 = Instant::now();
        let mut w = AnswerWatch::default();
        assert!(!w.stalled(false, t0));
        assert!(
            !w.stalled(true, t0 + Duration::from_secs(5)),
            "the wait starts here"
        );
        assert!(!w.stalled(true, t0 + Duration::from_secs(34)));
        assert!(w.stalled(true, t0 + Duration::from_secs(35)));
        // An answer restarts the wait; so does having nothing to wait for.
        w.answered();
        assert!(!w.stalled(true, t0 + Duration::from_secs(40)));
        assert!(!w.stalled(true, t0 + Duration::from_secs(69)));
        assert!(!w.stalled(false, t0 + Duration::from_secs(70)));
        assert!(!w.stalled(true, t0 + Duration::from_secs(71)));
        assert!(w.stalled(true, t0 + Duration::from_secs(101)));
    }

    fn synced(mode: SyncMode, events_through: Option<u64>) -> Synced {
        Synced {
            mode,
            assigned: 0,
            unassigned: 0,
            events_through,
        }
    }

    #[test]
    fn a_hello_lists_what_fits_and_says_when_that_is_not_all() {
        let marks = |next, oldest| OutboxMarks {
            next,
            oldest,
            fresh: false,
        };
        let s = state([("a", 1), ("b", 2)], true, marks(10, 4));
        assert!(s.complete);
        assert_eq!(s.applied.len(), 2);
        assert_eq!((s.outbox_next, s.outbox_oldest), (10, 4));
        let names: Vec<String> = (0..SyncState::MAX_APPLIED + 1)
            .map(|i| format!("w{i}"))
            .collect();
        let s = state(names.iter().map(|n| (n.as_str(), 1)), true, marks(1, 1));
        assert!(!s.complete);
        assert_eq!(s.applied.len(), SyncState::MAX_APPLIED);
        let long = "x".repeat(64);
        assert!(!state([(long.as_str(), 1)], true, marks(1, 1)).complete);
        assert!(!state([], false, marks(1, 1)).complete);
        // An oldest past the next is never said.
        assert_eq!(state([], true, marks(5, 9)).outbox_oldest, 5);
    }

    #[test]
    fn a_snapshot_stops_what_it_did_not_assign_and_changes_stop_nothing() {
        let mut r = Resync::default();
        r.welcomed();
        assert!(!r.is_done());
        r.assigned("keep");
        let f = r
            .finish(&synced(SyncMode::Snapshot, None), ["keep", "old", "old"])
            .expect("in a sync");
        assert_eq!(f.forget, ["old"]);
        assert!(r.is_done());
        // The same answer again, outside a sync, does nothing.
        assert_eq!(r.finish(&synced(SyncMode::Snapshot, None), ["keep"]), None);
        r.welcomed();
        let f = r
            .finish(&synced(SyncMode::Changes, None), ["keep", "old"])
            .expect("in a sync");
        assert!(f.forget.is_empty());
    }

    #[test]
    fn assignments_between_sessions_do_not_count() {
        let mut r = Resync::default();
        r.assigned("early");
        r.welcomed();
        r.assigned("a");
        r.disconnected();
        assert!(!r.is_done());
        r.welcomed();
        let f = r
            .finish(&synced(SyncMode::Snapshot, None), ["early", "a"])
            .expect("in a sync");
        assert_eq!(f.forget, ["a", "early"]);
    }

    #[test]
    fn the_sync_passes_on_what_the_orchestrator_holds() {
        let mut r = Resync::default();
        r.welcomed();
        let f = r
            .finish(&synced(SyncMode::Changes, Some(500)), [])
            .expect("in a sync");
        assert_eq!(f.events_through, Some(500));
    }

    #[test]
    fn numbering_after_keeps_order_and_never_reuses_a_number() {
        let mut outbox = Outbox::new(1 << 20, 1);
        for i in 0..5u8 {
            outbox.push(Class::Event, "k", 100, vec![i]).expect("fits");
        }
        outbox.ack([1, 2]);
        assert_eq!(outbox.oldest(), 3);
        // Reset without knowing: its next number is one the orchestrator holds.
        assert!(outbox.number_after(500, false));
        let seqs: Vec<u64> = outbox.records().map(|r| r.seq).collect();
        assert_eq!(seqs, [501, 502, 503]);
        let bodies: Vec<u8> = outbox.records().map(|r| r.body[0]).collect();
        assert_eq!(bodies, [2, 3, 4]);
        assert_eq!(outbox.next_seq(), 504);
        assert_eq!(
            outbox
                .push(Class::Event, "k", 1, vec![9])
                .expect("fits")
                .seq,
            504
        );
        // Already past it: nothing moves, fresh or not.
        assert!(!outbox.number_after(500, false));
        assert!(!outbox.number_after(500, true));
        // An empty outbox just goes on from there.
        let mut empty = Outbox::new(1 << 20, 1);
        assert!(empty.number_after(41, false));
        assert_eq!(empty.next_seq(), 42);
        // A fresh one that made more than the orchestrator holds still moves: its low
        // numbers are another life's.
        let mut fresh = Outbox::new(1 << 20, 1);
        for i in 0..30u8 {
            fresh.push(Class::Event, "k", 100, vec![i]).expect("fits");
        }
        assert!(!fresh.clone().number_after(19, false), "not fresh: no sign");
        assert!(fresh.number_after(19, true));
        assert_eq!(fresh.oldest(), 20);
        assert_eq!(fresh.next_seq(), 50);
    }
}
