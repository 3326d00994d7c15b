//! What a node's outbox sends, and the orchestrator's acknowledgement once it stored it.
//!
//! Each event carries the sequence number the node gave it and the wall time (on the node's
//! clock) it happened at, however late it arrives. The orchestrator stores a batch, then
//! answers [`EventsStored`] with the sequence numbers it holds; a node forgets only those.
//! Storing an event twice (a batch resent after a lost acknowledgement) changes nothing: the
//! node and the sequence number are its key.

use crate::msg::{
    AdmissionReply, List, LocationReport, MAX_NAME_LEN, Status, Text, WorkloadReport,
};
use serde::{Deserialize, Serialize};

/// A batch of events from the node's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: List<NodeEvent, { EventBatch::MAX_EVENTS }>,
    /// Runs of events the node dropped because its outbox was full, in their place.
    pub gaps: List<EventGap, { EventBatch::MAX_GAPS }>,
}

impl EventBatch {
    /// The most events in one batch: the largest batch (128 instance reports with 256-byte
    /// messages and the longest names) still fits a frame.
    pub const MAX_EVENTS: usize = 128;
    pub const MAX_GAPS: usize = 8;
}

/// One event, as the node recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The node's sequence number: unique per node, never reused.
    pub seq: u64,
    /// When it happened, in milliseconds since the Unix epoch on the node's clock.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Events are made one at a time and rarely; boxing the report would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum EventKind {
    /// A workload instance changed state: started, exited, restarted, became unhealthy.
    Instance(WorkloadReport),
    /// A local operator acted through `edge-node ctl`.
    Operator(OperatorAction),
    /// The node refused an assignment (`rejected` says why).
    Refused(AdmissionReply),
    /// The node's load while it had no session (live status goes straight to the
    /// orchestrator otherwise). Of the status class: under pressure only the newest is kept.
    Status(Status),
    /// A summary of the node's load over a window that ended at the event's time. Of the
    /// metrics class: under pressure they are thinned out first.
    Metrics(MetricSummary),
    /// Where the node was at the event's time: a point of its track. Of the metrics class:
    /// under pressure a long track is thinned evenly.
    Location(LocationReport),
    /// A sample of the proxy's attempts on its backends over a window that ended at the
    /// event's time: what routing models are trained on. Of the metrics class. Boxed: at
    /// over a kilobyte, it would make every event of a batch as large.
    RouteSamples(alloc::boxed::Box<RouteSamples>),
}

/// Up to [`RouteSamples::MAX_SAMPLES`] attempts drawn at random (each equally likely) from the
/// `attempts` the proxy made in the `window_secs` before the event's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSamples {
    pub window_secs: u32,
    pub attempts: u64,
    pub samples: List<RouteSample, { RouteSamples::MAX_SAMPLES }>,
}

impl RouteSamples {
    /// The most samples in one event: eight attempts a window are plenty to learn from across
    /// a fleet, and cost an idle uplink little.
    pub const MAX_SAMPLES: usize = 8;
    /// The most features per sample: room for the node's routing schema to grow.
    pub const MAX_FEATURES: usize = 32;
    /// The names of the features a sample carries, in order: node-core's `ROUTE_FEATURES`
    /// (a test there keeps the two the same), for whoever reads samples without the node's
    /// crates. Only ever grows at its end, as the schema does.
    pub const FEATURE_NAMES: [&'static str; 13] = [
        "peak_ewma_ms",
        "mean_ms",
        "tail_ms",
        "floor_ms",
        "in_flight",
        "failure_rate",
        "half_open",
        "unmeasured",
        "idle_ms",
        "distance_km",
        "local",
        "host_cpu",
        "host_memory",
    ];
}

/// One attempt: the chosen backend's features at the moment it was chosen, in the order and
/// units of the node's routing schema (node-core's `ROUTE_FEATURES`, which only ever grows at
/// its end), and how the attempt went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSample {
    pub features: List<f32, { RouteSamples::MAX_FEATURES }>,
    /// From sending the attempt to its answer's head or its failure, in milliseconds.
    pub latency_ms: f32,
    /// Refused, reset, timed out, or answered 502-504.
    pub failed: bool,
}

/// The node's load over `window_secs` up to the event's time, from `samples` status samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub window_secs: u32,
    pub samples: u32,
    pub cpu_percent_min: f32,
    pub cpu_percent_mean: f32,
    pub cpu_percent_max: f32,
    pub memory_used_bytes_min: u64,
    pub memory_used_bytes_mean: u64,
    pub memory_used_bytes_max: u64,
    pub disk_free_bytes_min: u64,
}

/// What a local operator did, to which workload, and as which user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    pub verb: OperatorVerb,
    pub workload: Text<MAX_NAME_LEN>,
    /// The caller's user id, from the socket's peer credentials.
    pub uid: Option<u32>,
}

/// The actions `edge-node ctl` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorVerb {
    Restart,
    Stop,
}

/// Sequence numbers `first..=last`, of which `count` were events the node dropped, between
/// `first_at_ms` and `last_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventGap {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
}

/// The orchestrator stored these events and the gaps up to `gaps_through` (a gap's `last`);
/// the node may forget them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsStored {
    pub seqs: List<u64, { EventBatch::MAX_EVENTS }>,
    pub gaps_through: u64,
}
