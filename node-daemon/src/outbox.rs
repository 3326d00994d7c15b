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
    EventBatch, EventGap, EventKind, EventsStored, List, LocationReport, MetricSummary, NodeEvent,
    NodeMsg, OperatorAction, OperatorVerb, RouteSamples, Status, WorkloadReport, text,
};
use node_core::config::OutboxSettings;
use node_core::outbox::{Class, Drain, Outbox, Pacer};
use node_core::sync::OutboxMarks;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};
use tracing::{info, warn};

/// The most bytes of events in one batch.
const BATCH_BYTES: u64 = 48 * 1024;
/// Batches out at once, waiting for their acknowledgement.
pub const WINDOW: usize = Drain::WINDOW;

/// The key of the node's own load records: the status class coalesces by key.
const LOAD_KEY: &str = "node";
/// The key of the node's track points.
const LOCATION_KEY: &str = "location";
/// The key of the proxy's sampled attempts.
const ROUTE_SAMPLES_KEY: &str = "route-samples";

/// The outbox and its log, behind a handle the daemon's loop and `ctl` share.
#[derive(Debug, Clone)]
pub struct EventOutbox(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    store: OutboxStore,
    outbox: Outbox,
    drain: Drain,
    /// `uplink_bytes_per_sec`, and the clock it reads (from the outbox's opening).
    pacer: Option<(Pacer, Instant)>,
    /// When the pacer lets the next batch go, while it holds one back.
    paced_until: Option<Instant>,
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
    /// When the first record still to send (by sequence number) happened, in ms since the
    /// Unix epoch.
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

    /// Opens `DATA_DIR/outbox/` within `settings.max_bytes`, replaying what a previous run
    /// left; the drain keeps to `settings.uplink_bytes_per_sec`, if set.
    pub fn open(data_dir: &Path, settings: OutboxSettings) -> Result<Self, StoreError> {
        let (store, outbox, recovery) = OutboxStore::open(data_dir, settings.max_bytes)?;
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
            drain: Drain::default(),
            pacer: settings
                .uplink_bytes_per_sec
                .map(|rate| (Pacer::new(rate), Instant::now())),
            paced_until: None,
            last: BTreeMap::new(),
        }))))
    }

    /// Records what `msg` says happened, if it is an event (an instance's state change, a
    /// refused assignment).
    pub fn record(&self, msg: &NodeMsg) {
        match msg {
            NodeMsg::Workload(report) => {
                // The supervisor says a workload's state again when nothing changed (the
                // same spec assigned again after every reconnect): that is no event, and
                // recording it would show a change that did not happen.
                {
                    let inner = &mut *self.lock();
                    let key = report.workload.as_str();
                    if inner.last.get(key) == Some(&**report) {
                        return;
                    }
                    inner.last.insert(key.to_owned(), (**report).clone());
                }
                self.push(&report.workload, &EventKind::Instance((**report).clone()))
            }
            NodeMsg::Admission(reply) if reply.rejected.is_some() => {
                self.push(&reply.workload, &EventKind::Refused((**reply).clone()))
            }
            _ => {}
        }
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

    /// Records the node's load, sampled while it has no session: the status class, of
    /// which only the newest is kept when the outbox runs short of room.
    pub fn record_status(&self, status: &Status) {
        self.push_as(Class::Status, LOAD_KEY, &EventKind::Status(*status));
    }

    /// Records a window's summary of the node's load: the metrics class, thinned first
    /// when the outbox runs short of room.
    pub fn record_metrics(&self, summary: MetricSummary) {
        self.push_as(Class::Metric, LOAD_KEY, &EventKind::Metrics(summary));
    }

    /// Records a point of the node's track: the metrics class, so that a full outbox thins
    /// a long track evenly rather than keeping only its end.
    pub fn record_location(&self, report: LocationReport) {
        self.push_as(Class::Metric, LOCATION_KEY, &EventKind::Location(report));
    }

    /// Records a window's sample of the proxy's attempts, for training routing models: the
    /// metrics class, thinned first when the outbox runs short of room.
    pub fn record_route_samples(&self, samples: RouteSamples) {
        self.push_as(
            Class::Metric,
            ROUTE_SAMPLES_KEY,
            &EventKind::RouteSamples(Box::new(samples)),
        );
    }

    fn push(&self, key: &str, kind: &EventKind) {
        self.push_as(Class::Event, key, kind);
    }

    fn push_as(&self, class: Class, key: &str, kind: &EventKind) {
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
            .push(&mut inner.outbox, class, key, now_ms(), body)
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
            oldest_at_ms: o.first().map(|r| r.at_ms),
            next_seq: o.next_seq(),
            metrics_downsampled: shed.metrics_downsampled,
            status_coalesced: shed.status_coalesced,
            events_dropped: shed.events_dropped,
            batches_in_flight: inner.drain.in_flight(),
        }
    }

    /// Whether anything sent on this session waits for the orchestrator's acknowledgement.
    pub fn awaiting_ack(&self) -> bool {
        let inner = self.lock();
        inner.drain.awaiting(&inner.outbox)
    }

    /// The next batch to send, unless [`WINDOW`] batches are out already or nothing waits.
    pub fn next_batch(&self) -> Option<NodeMsg> {
        let inner = &mut *self.lock();
        // On a paced uplink a batch is at most what the bucket holds, and waits for it.
        let mut max_bytes = BATCH_BYTES;
        if let Some((pacer, origin)) = inner.pacer.as_mut() {
            let now = origin.elapsed();
            let wait = pacer.wait(now, BATCH_BYTES);
            if !wait.is_zero() {
                inner.paced_until = Some(Instant::now() + wait);
                return None;
            }
            max_bytes = pacer.allowance(now).clamp(1, BATCH_BYTES);
        }
        inner.paced_until = None;
        let batch = inner.drain.next(
            &mut inner.outbox,
            max_bytes,
            EventBatch::MAX_EVENTS,
            EventBatch::MAX_GAPS,
        )?;
        if let Some((pacer, origin)) = inner.pacer.as_mut() {
            let bytes: u64 = batch.records.iter().map(|r| r.cost()).sum();
            pacer.spent(origin.elapsed(), bytes);
        }
        let gaps = batch.gaps.into_iter().map(EventGap::from);
        let mut events = List::new();
        for record in batch.records {
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
        Some(NodeMsg::Events(Box::new(EventBatch {
            events,
            gaps: List::from_iter(gaps),
        })))
    }

    /// When the uplink's pace lets the next batch go, if it holds one back now: the daemon
    /// sends then.
    pub fn paced_until(&self) -> Option<Instant> {
        self.lock().paced_until
    }

    /// The orchestrator stored what `stored` names: forget it. Not synced: should a power
    /// cut lose the forgetting, the events go again and the orchestrator, which keys them
    /// by node and sequence number, stores nothing twice.
    pub fn stored(&self, stored: &EventsStored) {
        let inner = &mut *self.lock();
        inner.drain.acked();
        let done = inner
            .store
            .ack(&mut inner.outbox, stored.seqs.iter().copied())
            .and_then(|()| inner.store.ack_gaps(&mut inner.outbox, stored.gaps_through))
            .and_then(|()| inner.store.compact_if_due(&inner.outbox));
        if let Err(error) = done {
            warn!(%error, "outbox: could not forget acknowledged events");
        }
    }

    /// What a hello says of the outbox.
    pub fn marks(&self) -> OutboxMarks {
        let inner = self.lock();
        OutboxMarks {
            next: inner.outbox.next_seq(),
            oldest: inner.outbox.oldest(),
            fresh: inner.store.is_fresh(),
        }
    }

    /// The sync said the orchestrator holds this node's sequence numbers up to `through`:
    /// where the outbox's own could meet them (it was lost or reset), it numbers above.
    pub fn synced(&self, through: Option<u64>) {
        let inner = &mut *self.lock();
        match inner.store.number_after(&mut inner.outbox, through) {
            Ok(true) => warn!(
                through = through.unwrap_or_default(),
                next_seq = inner.outbox.next_seq(),
                "outbox: numbered behind what the orchestrator holds (lost or reset); moved above it"
            ),
            Ok(false) => {}
            Err(error) => warn!(%error, "outbox: could not renumber"),
        }
    }

    /// The session ended: what was out and not acknowledged goes again next time.
    pub fn disconnected(&self) {
        let inner = &mut *self.lock();
        inner.drain.disconnected(&mut inner.outbox);
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
    use edge_proto::{AdmissionReply, WorkloadReport, WorkloadState};

    fn budget(max_bytes: u64) -> OutboxSettings {
        OutboxSettings {
            max_bytes,
            ..OutboxSettings::default()
        }
    }

    fn report(state: WorkloadState) -> NodeMsg {
        NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text("till"),
            generation: 1,
            state,
            restarts: 0,
            pid: Some(7),
            exit_code: None,
            message: text(""),
        }))
    }

    /// The `i`th restart of a crash-looping workload: a change each time.
    fn restarted(i: usize) -> NodeMsg {
        NodeMsg::Workload(Box::new(WorkloadReport {
            workload: text("till"),
            generation: 1,
            state: WorkloadState::Backoff,
            restarts: u32::try_from(i).unwrap_or(u32::MAX),
            pid: None,
            exit_code: Some(1),
            message: text("exited with status 1"),
        }))
    }

    fn admission(rejected: Option<&str>) -> NodeMsg {
        NodeMsg::Admission(Box::new(AdmissionReply {
            workload: text("till"),
            generation: 2,
            rejected: rejected.map(text),
        }))
    }

    fn kinds(batch: Option<NodeMsg>) -> Vec<EventKind> {
        match batch {
            Some(NodeMsg::Events(batch)) => batch.events.iter().map(|e| e.kind.clone()).collect(),
            other => panic!("a batch of events, not {other:?}"),
        }
    }

    #[test]
    fn state_changes_refusals_and_operator_actions_are_events_kept_across_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = EventOutbox::open(dir.path(), budget(1 << 20)).expect("opens");
        outbox.record(&report(WorkloadState::Running));
        outbox.record(&admission(None));
        outbox.record(&admission(Some("no room")));
        outbox.record(&NodeMsg::Runtime(Box::new(edge_proto::RuntimeInfo {
            limits: edge_proto::LimitsKind::Rlimit,
            container_runtimes: Default::default(),
            model_operators: Default::default(),
        })));
        outbox.record_operator(OperatorVerb::Stop, "till", Some(0));
        assert_eq!(
            outbox.summary().events,
            3,
            "an admitted assignment is no event: {:?}",
            kinds(outbox.next_batch())
        );
        drop(outbox);

        let outbox = EventOutbox::open(dir.path(), budget(1 << 20)).expect("reopens");
        let sent = kinds(outbox.next_batch());
        assert!(matches!(sent[0], EventKind::Instance(_)), "{sent:?}");
        assert!(
            matches!(&sent[1], EventKind::Refused(r) if r.rejected.as_deref() == Some("no room")),
            "{sent:?}"
        );
        assert!(matches!(sent[2], EventKind::Operator(_)), "{sent:?}");
        assert_eq!(outbox.summary().batches_in_flight, 1);
    }

    #[test]
    fn a_window_of_batches_goes_out_and_an_acknowledgement_frees_a_slot() {
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = EventOutbox::open(dir.path(), budget(16 << 20)).expect("opens");
        let n = EventBatch::MAX_EVENTS * (WINDOW + 1);
        for i in 0..n {
            outbox.record(&restarted(i));
        }
        let mut out = Vec::new();
        while let Some(NodeMsg::Events(batch)) = outbox.next_batch() {
            out.push(batch);
        }
        assert_eq!(out.len(), WINDOW, "at most {WINDOW} batches out at once");
        let first = &out[0];
        outbox.stored(&EventsStored {
            seqs: first.events.iter().map(|e| e.seq).collect(),
            gaps_through: 0,
        });
        assert!(
            outbox.next_batch().is_some(),
            "the acknowledgement made room"
        );
        assert_eq!(outbox.summary().events, n - EventBatch::MAX_EVENTS);
        // A lost connection: everything unacknowledged goes again.
        outbox.disconnected();
        assert_eq!(outbox.summary().batches_in_flight, 0);
        assert!(outbox.next_batch().is_some());
    }

    #[test]
    fn a_paced_uplink_holds_batches_back_and_says_until_when() {
        let dir = tempfile::tempdir().expect("tmp");
        let settings = OutboxSettings {
            max_bytes: 1 << 20,
            uplink_bytes_per_sec: Some(1024),
            ..OutboxSettings::default()
        };
        let outbox = EventOutbox::open(dir.path(), settings).expect("opens");
        for i in 0..100 {
            outbox.record(&restarted(i));
        }
        let first = kinds(outbox.next_batch());
        assert!(
            !first.is_empty() && first.len() < 100,
            "a second's worth goes: {} events",
            first.len()
        );
        assert_eq!(outbox.paced_until(), None);
        assert!(outbox.next_batch().is_none(), "the bucket is empty");
        let until = outbox.paced_until().expect("held back");
        let wait = until.saturating_duration_since(Instant::now());
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(2));
    }

    #[test]
    fn a_report_that_repeats_the_last_is_no_event() {
        let running = |pid| {
            NodeMsg::Workload(Box::new(WorkloadReport {
                workload: text("till"),
                generation: 1,
                state: WorkloadState::Running,
                restarts: 0,
                pid: Some(pid),
                exit_code: None,
                message: text("running"),
            }))
        };
        let dir = tempfile::tempdir().expect("tmp");
        let outbox = EventOutbox::open(dir.path(), budget(1 << 20)).expect("open");
        outbox.record(&running(7));
        // Said again after a reconnect: nothing changed.
        outbox.record(&running(7));
        assert_eq!(outbox.summary().events, 1);
        // A new process is a change, and so is the old one again after it.
        outbox.record(&running(8));
        outbox.record(&running(7));
        assert_eq!(outbox.summary().events, 3);
    }
}
