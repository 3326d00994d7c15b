//! The node's outbox in the daemon: every instance state change recorded as an event on
//! disk (`edge-outbox`), sent to the orchestrator one batch at a time while a session is up,
//! and forgotten once the orchestrator says it stored it. What happens while the node is
//! offline, or before a crash, reaches the orchestrator later with the time it happened.
//!
//! The decisions (order, shedding, acknowledgements) are `node_core::outbox`'s. Writes are
//! made durable (one `fdatasync`) before anything is sent about them. They run on the
//! daemon's loop: instance state changes are rare, and each costs one small write. The
//! handle is shared with `ctl`, which records local operators' actions and shows the outbox.

use edge_outbox::{OutboxStore, StoreError};
use edge_proto::{
    EventBatch, EventGap, EventKind, EventsStored, List, NodeEvent, NodeMsg, OperatorAction,
    OperatorVerb, WorkloadReport, text,
};
use node_core::outbox::{Class, Outbox};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use tracing::{info, warn};

/// The most bytes of events in one batch.
const BATCH_BYTES: u64 = 48 * 1024;
/// Batches out at once, waiting for their acknowledgement: enough to keep the link busy
/// while the orchestrator stores one, few enough that a lost connection resends little.
pub const WINDOW: usize = 4;

/// The outbox and its log, behind a handle the daemon's loop and `ctl` share.
#[derive(Debug, Clone)]
pub struct EventOutbox(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    store: OutboxStore,
    outbox: Outbox,
    /// Batches out and not acknowledged: at most [`WINDOW`].
    in_flight: usize,
    /// The last report recorded of each workload, to tell a change from a repeat.
    last: BTreeMap<String, WorkloadReport>,
}

/// What `edge-node ctl outbox` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub events: usize,
    pub status: usize,
    pub metrics: usize,
    pub used_bytes: u64,
    pub budget_bytes: u64,
    /// When the oldest record still to send happened (ms since the Unix epoch).
    pub oldest_at_ms: Option<u64>,
    pub next_seq: u64,
    pub metrics_downsampled: u64,
    pub status_coalesced: u64,
    pub events_dropped: u64,
    /// Batches out, waiting for the orchestrator's acknowledgement.
    pub batches_in_flight: usize,
}

impl EventOutbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens `DATA_DIR/outbox/` within `budget_bytes`, replaying what a previous run left.
    pub fn open(data_dir: &Path, budget_bytes: u64) -> Result<Self, StoreError> {
        let (store, outbox, recovery) = OutboxStore::open(data_dir, budget_bytes)?;
        if recovery.records > 0 || recovery.torn_bytes > 0 {
            info!(
                events = recovery.records,
                torn_bytes = recovery.torn_bytes,
                "outbox: events still to send"
            );
        }
        Ok(Self(Arc::new(Mutex::new(Inner {
            store,
            outbox,
            in_flight: 0,
            last: BTreeMap::new(),
        }))))
    }

    /// Records what `msg` says happened, if it is an event (an instance's state change).
    pub fn record(&self, msg: &NodeMsg) {
        let NodeMsg::Workload(report) = msg else {
            return;
        };
        // The supervisor says a workload's state again when nothing changed (the same spec
        // assigned again after every reconnect): that is no event, and recording it would
        // show a state change that did not happen after every reconnect.
        {
            let inner = &mut *self.lock();
            let key = report.workload.as_str();
            if inner.last.get(key) == Some(&**report) {
                return;
            }
            inner.last.insert(key.to_owned(), (**report).clone());
        }
        self.push(&report.workload, &EventKind::Instance((**report).clone()));
    }

    /// Records a local operator's action on `workload` (through `edge-node ctl`).
    pub fn record_operator(&self, verb: OperatorVerb, workload: &str, uid: Option<u32>) {
        let action = OperatorAction {
            verb,
            workload: text(workload),
            uid,
        };
        self.push(workload, &EventKind::Operator(action));
    }

    fn push(&self, key: &str, kind: &EventKind) {
        let body = match postcard::to_allocvec(kind) {
            Ok(body) => body,
            Err(error) => {
                warn!(%error, "outbox: an event that does not encode");
                return;
            }
        };
        let inner = &mut *self.lock();
        let pushed = inner
            .store
            .push(&mut inner.outbox, Class::Event, key, now_ms(), body)
            .and_then(|_| inner.store.commit());
        if let Err(error) = pushed {
            warn!(%error, "outbox: could not record an event");
        }
    }

    /// What the outbox holds now.
    pub fn summary(&self) -> Summary {
        let inner = self.lock();
        let o = &inner.outbox;
        let shed = o.shed();
        Summary {
            events: o.waiting(Class::Event),
            status: o.waiting(Class::Status),
            metrics: o.waiting(Class::Metric),
            used_bytes: o.used(),
            budget_bytes: o.budget(),
            oldest_at_ms: o.records().map(|r| r.at_ms).min(),
            next_seq: o.next_seq(),
            metrics_downsampled: shed.metrics_downsampled,
            status_coalesced: shed.status_coalesced,
            events_dropped: shed.events_dropped,
            batches_in_flight: inner.in_flight,
        }
    }

    /// The next batch to send, unless [`WINDOW`] batches are out already or nothing waits.
    pub fn next_batch(&self) -> Option<NodeMsg> {
        let inner = &mut *self.lock();
        if inner.in_flight >= WINDOW {
            return None;
        }
        let records = inner
            .outbox
            .next_batch_of(BATCH_BYTES, EventBatch::MAX_EVENTS);
        // The gaps go with a batch sent while no other is out, so that a window of batches
        // does not carry them several times.
        let gap_room = if inner.in_flight == 0 {
            EventBatch::MAX_GAPS
        } else {
            0
        };
        let gaps: Vec<EventGap> = inner
            .outbox
            .gaps()
            .iter()
            .take(gap_room)
            .map(|g| EventGap {
                first: g.first,
                last: g.last,
                count: g.count,
                first_at_ms: g.first_at_ms,
                last_at_ms: g.last_at_ms,
            })
            .collect();
        let mut events = List::new();
        for record in records {
            match postcard::from_bytes::<EventKind>(&record.body) {
                // The batch was cut to the wire's bound: every one fits.
                Ok(kind) => {
                    let _ = events.push(NodeEvent {
                        seq: record.seq,
                        at_ms: record.at_ms,
                        kind,
                    });
                }
                // Written by this code; anything else is damage the checksum missed.
                Err(error) => {
                    warn!(seq = record.seq, %error, "outbox: a record that does not decode")
                }
            }
        }
        if events.is_empty() && gaps.is_empty() {
            return None;
        }
        inner.in_flight += 1;
        Some(NodeMsg::Events(Box::new(EventBatch {
            events,
            gaps: List::from_iter(gaps),
        })))
    }

    /// The orchestrator stored what `stored` names: forget it. Not synced: should a power
    /// cut lose the forgetting, the events go again and the orchestrator, which keys them
    /// by node and sequence number, stores nothing twice.
    pub fn stored(&self, stored: &EventsStored) {
        let inner = &mut *self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        let done = inner
            .store
            .ack(&mut inner.outbox, stored.seqs.iter().copied())
            .and_then(|()| inner.store.ack_gaps(&mut inner.outbox, stored.gaps_through))
            .and_then(|()| inner.store.compact_if_due(&inner.outbox));
        if let Err(error) = done {
            warn!(%error, "outbox: could not forget acknowledged events");
        }
    }

    /// The session ended: what was out and not acknowledged goes again next time.
    pub fn disconnected(&self) {
        let inner = &mut *self.lock();
        inner.in_flight = 0;
        inner.outbox.reconnected();
    }
}

/// The wall clock in milliseconds since the Unix epoch: an event keeps when it happened, and
/// the clock offset is measured against it.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::WorkloadState;

    fn report(pid: u32) -> NodeMsg {
        NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text("till"),
            generation: 1,
            state: WorkloadState::Running,
            restarts: 0,
            pid: Some(pid),
            exit_code: None,
            message: text("running"),
        }))
    }

    #[test]
    fn a_report_that_repeats_the_last_is_no_event() {
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = EventOutbox::open(dir.path(), 1 << 20).expect("open");
        outbox.record(&report(7));
        // Said again after a reconnect: nothing changed.
        outbox.record(&report(7));
        assert_eq!(outbox.summary().events, 1);
        // A new process is a change, and so is the old one again after it.
        outbox.record(&report(8));
        outbox.record(&report(7));
        assert_eq!(outbox.summary().events, 3);
    }
}
