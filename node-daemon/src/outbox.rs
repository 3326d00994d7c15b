//! The node's outbox in the daemon: every instance state change recorded as an event on
//! disk (`edge-outbox`), sent to the orchestrator one batch at a time while a session is up,
//! and forgotten once the orchestrator says it stored it. What happens while the node is
//! offline, or before a crash, reaches the orchestrator later with the time it happened.
//!
//! The decisions (order, shedding, acknowledgements) are `node_core::outbox`'s. Writes are
//! made durable (one `fdatasync`) before anything is sent about them. They run on the
//! daemon's loop: instance state changes are rare, and each costs one small write.

use edge_outbox::{OutboxStore, StoreError};
use edge_proto::{EventBatch, EventGap, EventKind, EventsStored, List, NodeEvent, NodeMsg};
use node_core::outbox::{Class, Outbox};
use std::path::Path;
use std::time::SystemTime;
use tracing::{info, warn};

/// The bytes the outbox may hold on disk. (A board profile will set its own.)
pub const BUDGET_BYTES: u64 = 4 << 20;
/// The most bytes of events in one batch.
const BATCH_BYTES: u64 = 16 * 1024;

/// The outbox and its log.
#[derive(Debug)]
pub struct EventOutbox {
    store: OutboxStore,
    outbox: Outbox,
    /// A batch is out and not acknowledged: send no other until it is.
    waiting: bool,
}

impl EventOutbox {
    /// Opens `DATA_DIR/outbox/`, replaying what a previous run left.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let (store, outbox, recovery) = OutboxStore::open(data_dir, BUDGET_BYTES)?;
        if recovery.records > 0 || recovery.torn_bytes > 0 {
            info!(
                events = recovery.records,
                torn_bytes = recovery.torn_bytes,
                "outbox: events still to send"
            );
        }
        Ok(Self {
            store,
            outbox,
            waiting: false,
        })
    }

    /// Records what `msg` says happened, if it is an event (an instance's state change).
    pub fn record(&mut self, msg: &NodeMsg) {
        let NodeMsg::Workload(report) = msg else {
            return;
        };
        let key = report.workload.to_string();
        let body = match postcard::to_allocvec(&EventKind::Instance((**report).clone())) {
            Ok(body) => body,
            Err(error) => {
                warn!(%error, "outbox: an event that does not encode");
                return;
            }
        };
        let pushed = self
            .store
            .push(&mut self.outbox, Class::Event, &key, now_ms(), body)
            .and_then(|_| self.store.commit());
        if let Err(error) = pushed {
            warn!(%error, "outbox: could not record an event");
        }
    }

    /// The next batch to send, unless one is out already or nothing waits.
    pub fn next_batch(&mut self) -> Option<NodeMsg> {
        if self.waiting {
            return None;
        }
        let records = self
            .outbox
            .next_batch_of(BATCH_BYTES, EventBatch::MAX_EVENTS);
        let gaps: Vec<EventGap> = self
            .outbox
            .gaps()
            .iter()
            .take(EventBatch::MAX_GAPS)
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
        self.waiting = true;
        Some(NodeMsg::Events(Box::new(EventBatch {
            events,
            gaps: List::from_iter(gaps),
        })))
    }

    /// The orchestrator stored what `stored` names: forget it.
    pub fn stored(&mut self, stored: &EventsStored) {
        self.waiting = false;
        let done = self
            .store
            .ack(&mut self.outbox, stored.seqs.iter().copied())
            .and_then(|()| self.store.ack_gaps(&mut self.outbox, stored.gaps_through))
            .and_then(|()| self.store.commit_and_compact(&self.outbox));
        if let Err(error) = done {
            warn!(%error, "outbox: could not forget acknowledged events");
        }
    }

    /// The session ended: what was out and not acknowledged goes again next time.
    pub fn disconnected(&mut self) {
        self.waiting = false;
        self.outbox.reconnected();
    }
}

/// The wall clock in milliseconds since the Unix epoch: an event keeps when it happened, and
/// the clock offset is measured against it.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
