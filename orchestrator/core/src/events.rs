//! What nodes' outboxes send, as the orchestrator keeps it: each event under its node and
//! sequence number, with the time it happened on the node's clock and the time it arrived.
//! Beside them, what the orchestrator itself decided about a node's instances (a replacement
//! placed, a reconcile when the node returned, the node leaving or re-entering a workload's
//! `near` radius and the instance following it), under that node in a series of its own
//! ([`Origin::Orchestrator`]) that the store numbers, so the two never share a key.
//!
//! A batch is stored whole, then acknowledged ([`acknowledgement`]); the same batch again (a
//! lost acknowledgement, a node that restarted before it heard one) lands on the same keys
//! and changes nothing. A run of events a node dropped (its outbox was full) is kept as a
//! gap under its first sequence number, which no event of that node carries.
//!
//! **Invariant.** No I/O and no clock: the shell stores the records and passes the time in.

use crate::deploy::state_name;
use edge_proto::{EventBatch, EventKind, EventsStored, List, LocationReport, NodeId, OperatorVerb};
use serde::{Deserialize, Serialize};

/// The most events kept per node; the oldest go first.
pub const MAX_EVENTS_PER_NODE: usize = 10_000;
/// The most load samples (statuses, metric summaries) kept per node, apart from its events:
/// a week of five-minute summaries, with room for statuses.
pub const MAX_SAMPLES_PER_NODE: usize = 4_000;
/// The most windows of sampled proxy attempts kept per node, apart from its events and load
/// samples: at most 8 attempts each, so up to 2,048 attempts per node (four hours of
/// one-minute windows), about 300 KiB.
pub const MAX_ROUTE_SAMPLES_PER_NODE: usize = 256;
/// The most events one query returns.
pub const MAX_QUERY: usize = 1_000;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The node's id, in hex.
    pub node: String,
    /// The node's sequence number (a gap's first).
    pub seq: u64,
    /// When it happened, on the node's clock, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// When the orchestrator received it, on its own clock.
    pub received_ms: u64,
    /// Who made it; records stored before there were two origins are the node's.
    #[serde(default)]
    pub origin: Origin,
    pub what: What,
}

/// Who made an event, and so whose series of sequence numbers it is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The node's outbox: its own sequence numbers, its own clock.
    #[default]
    Node,
    /// The orchestrator: numbered by the store, on the orchestrator's clock.
    Orchestrator,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A workload instance changed state.
    Instance {
        workload: String,
        generation: u64,
        state: String,
        restarts: u32,
        pid: Option<u32>,
        exit_code: Option<i32>,
        message: String,
    },
    /// A local operator restarted or stopped a workload through `edge-node ctl`.
    Operator {
        /// `restart` or `stop`.
        action: String,
        workload: String,
        /// The operator's user id on the node.
        uid: Option<u32>,
    },
    /// The node refused an assignment of the workload.
    Refused {
        workload: String,
        generation: u64,
        reason: String,
    },
    /// The node's load while it had no session.
    Status {
        cpu_percent: f32,
        memory_used_bytes: u64,
        disk_free_bytes: u64,
        uptime_secs: u64,
    },
    /// The node's load over the `window_secs` before the event's time, from `samples`
    /// samples.
    Metrics {
        window_secs: u32,
        samples: u32,
        cpu_percent: Spread<f32>,
        memory_used_bytes: Spread<u64>,
        disk_free_bytes_min: u64,
    },
    /// Where the node was at the event's time: a point of its track.
    Location(TrackPoint),
    /// A sample of the node proxy's attempts over the `window_secs` before the event's
    /// time, of `attempts` in all: what routing models are trained on (see [`RouteRows`]).
    RouteSamples {
        window_secs: u32,
        attempts: u64,
        samples: Vec<RouteSampleRecord>,
    },
    /// Events the node dropped: sequence numbers `seq..=last`, `count` of them events.
    Gap {
        last: u64,
        count: u64,
        last_at_ms: u64,
    },
    /// The node (the record's) was away longer than the workload's `max_disconnect_secs`:
    /// its instance is kept on record as replaced, and `replacement` (a node id) runs one.
    Replaced {
        workload: String,
        generation: u64,
        replacement: String,
        replacement_name: String,
        /// How long the node had been away, in seconds.
        offline_secs: u64,
    },
    /// The replaced node (the record's) returned and the workload's `reconcile` rule chose
    /// which instance survives: `kept` is `original` or `replacement`; `stopped` is the node
    /// (id) whose instance was unassigned, if any.
    Reconciled {
        workload: String,
        generation: u64,
        rule: String,
        kept: String,
        replacement: Option<String>,
        stopped: Option<String>,
        stopped_name: Option<String>,
    },
    /// The node (the record's) holds an instance of a workload with `near` and is now
    /// `distance_km` from its point, beyond `radius_km`. Said once per exit: not again while
    /// the node stays outside, again after it came back inside ([`What::BackNear`]). `outcome`:
    /// `stays` (no `follow_near`: the instance runs on), `moving` (a replacement was placed
    /// on `replacement`; the instance runs until the replacement runs), `waiting` (no node
    /// inside can take one, `reason` says why; tried again as nodes change) or `stopped`
    /// (per-node with `follow_near`: the node no longer matches and its instance was
    /// unassigned; or the node held a replacement not yet running, given up and placed
    /// again).
    LeftNear {
        workload: String,
        generation: u64,
        distance_km: f64,
        radius_km: f64,
        outcome: String,
        replacement: Option<String>,
        replacement_name: Option<String>,
        reason: Option<String>,
    },
    /// A move that was `waiting` found a node inside the radius: a replacement for the
    /// instance on the node (the record's) was placed on `replacement`.
    Following {
        workload: String,
        generation: u64,
        replacement: String,
        replacement_name: String,
    },
    /// The replacement on `to` reported running: the instance on `from` (the record's node,
    /// which left the radius) was unassigned. The move is over.
    Followed {
        workload: String,
        generation: u64,
        from: String,
        from_name: String,
        to: String,
        to_name: String,
    },
    /// The node (the record's), which had left the radius, is back inside it (`distance_km`
    /// from the point) and still holds its instance. A move not finished is cancelled:
    /// `stopped` is the node whose replacement was unassigned, if one was placed.
    BackNear {
        workload: String,
        generation: u64,
        distance_km: f64,
        radius_km: f64,
        stopped: Option<String>,
        stopped_name: Option<String>,
    },
}

/// One sampled attempt: the chosen backend's features when it was chosen, named by
/// [`edge_proto::RouteSamples::FEATURE_NAMES`] in order, and how the attempt went. Every
/// value is finite and the latency is not negative: a sample that is not is never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSampleRecord {
    pub features: Vec<f32>,
    pub latency_ms: f32,
    pub failed: bool,
}

impl RouteSampleRecord {
    /// `sample` as it is kept; `None` for one with a value that is not finite or a negative
    /// latency, which a well-behaved node never sends and JSON cannot hold.
    pub fn from_wire(sample: &edge_proto::RouteSample) -> Option<Self> {
        let finite = sample.latency_ms.is_finite()
            && sample.latency_ms >= 0.0
            && sample.features.iter().all(|v| v.is_finite());
        finite.then(|| Self {
            features: sample.features.to_vec(),
            latency_ms: sample.latency_ms,
            failed: sample.failed,
        })
    }
}

/// A node's position as its location source reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackPoint {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_m: Option<f64>,
    /// `gpsd` or `fixed`.
    pub source: String,
    /// The receiver's fix: `3d`, `2d`, or `none` (the position is the last fix's, or a
    /// fixed point).
    pub quality: String,
    /// The receiver's estimate of its horizontal error, in metres.
    pub accuracy_m: Option<f32>,
    /// When the receiver took the fix, in milliseconds since the Unix epoch (GNSS time).
    pub fix_ms: Option<u64>,
}

impl TrackPoint {
    /// The point a node reported; `None` for one off the globe or with a meaningless
    /// accuracy, which is never stored.
    pub fn from_report(r: &LocationReport) -> Option<Self> {
        r.is_valid().then(|| Self {
            lat: r.location.lat,
            lon: r.location.lon,
            alt_m: r.location.alt_m,
            source: r.source.as_str().to_owned(),
            quality: r.quality.as_str().to_owned(),
            accuracy_m: r.accuracy_m,
            fix_ms: r.fix_ms,
        })
    }

    /// Whether the position is the node's own now: a fix, or a fixed point. A GNSS node
    /// without a fix is somewhere it may have left.
    pub fn is_current(&self) -> bool {
        self.quality != "none" || self.source == "fixed"
    }
}

/// The least, mean and most of a measure over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread<T> {
    pub min: T,
    pub mean: T,
    pub max: T,
}

/// Where the store keeps an event, each shelf with its own bound per node, so that one kind
/// arriving in bulk never pushes another out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    /// Things that happened: [`MAX_EVENTS_PER_NODE`].
    Events,
    /// Samples of the node's load and position: [`MAX_SAMPLES_PER_NODE`].
    Samples,
    /// Sampled proxy attempts, for training: [`MAX_ROUTE_SAMPLES_PER_NODE`]. Not listed
    /// among the node's events; read as [`RouteRows`].
    RouteSamples,
}

impl Shelf {
    /// The most records a node keeps on this shelf; the oldest go first.
    pub fn bound(self) -> usize {
        match self {
            Self::Events => MAX_EVENTS_PER_NODE,
            Self::Samples => MAX_SAMPLES_PER_NODE,
            Self::RouteSamples => MAX_ROUTE_SAMPLES_PER_NODE,
        }
    }
}

impl What {
    /// Where the store keeps this event.
    pub fn shelf(&self) -> Shelf {
        match self {
            Self::Status { .. } | Self::Metrics { .. } | Self::Location(_) => Shelf::Samples,
            Self::RouteSamples { .. } => Shelf::RouteSamples,
            _ => Shelf::Events,
        }
    }
}

/// An event the orchestrator made about `node` at `at_ms` (its own clock). The store gives it
/// the next number of the orchestrator's series for that node.
pub fn orchestrator_event(node: NodeId, at_ms: u64, what: What) -> EventRecord {
    EventRecord {
        node: node.to_string(),
        seq: 0,
        at_ms,
        received_ms: at_ms,
        origin: Origin::Orchestrator,
        what,
    }
}

/// The records to store for `batch` from `node`, received at `received_ms`.
pub fn records(node: NodeId, batch: &EventBatch, received_ms: u64) -> Vec<EventRecord> {
    let node = node.to_string();
    let events = batch.events.iter().filter_map(|e| {
        Some(EventRecord {
            node: node.clone(),
            seq: e.seq,
            at_ms: e.at_ms,
            received_ms,
            origin: Origin::Node,
            what: match &e.kind {
                // A point off the globe is dropped (and acknowledged: sending it again would not
                // make it right).
                EventKind::Location(report) => What::Location(TrackPoint::from_report(report)?),
                EventKind::RouteSamples(window) => What::RouteSamples {
                    window_secs: window.window_secs,
                    attempts: window.attempts,
                    samples: window
                        .samples
                        .iter()
                        .filter_map(RouteSampleRecord::from_wire)
                        .collect(),
                },
                EventKind::Instance(report) => What::Instance {
                    workload: report.workload.to_string(),
                    generation: report.generation,
                    state: state_name(report.state).to_owned(),
                    restarts: report.restarts,
                    pid: report.pid,
                    exit_code: report.exit_code,
                    message: report.message.to_string(),
                },
                EventKind::Operator(action) => What::Operator {
                    action: match action.verb {
                        OperatorVerb::Restart => "restart",
                        OperatorVerb::Stop => "stop",
                    }
                    .to_owned(),
                    workload: action.workload.to_string(),
                    uid: action.uid,
                },
                EventKind::Refused(reply) => What::Refused {
                    workload: reply.workload.to_string(),
                    generation: reply.generation,
                    reason: reply
                        .rejected
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                },
                EventKind::Status(s) => What::Status {
                    cpu_percent: s.cpu_percent.clamp(0.0, 100.0),
                    memory_used_bytes: s.memory_used_bytes,
                    disk_free_bytes: s.disk_free_bytes,
                    uptime_secs: s.uptime_secs,
                },
                EventKind::Metrics(m) => What::Metrics {
                    window_secs: m.window_secs,
                    samples: m.samples,
                    cpu_percent: Spread {
                        min: m.cpu_percent_min.clamp(0.0, 100.0),
                        mean: m.cpu_percent_mean.clamp(0.0, 100.0),
                        max: m.cpu_percent_max.clamp(0.0, 100.0),
                    },
                    memory_used_bytes: Spread {
                        min: m.memory_used_bytes_min,
                        mean: m.memory_used_bytes_mean,
                        max: m.memory_used_bytes_max,
                    },
                    disk_free_bytes_min: m.disk_free_bytes_min,
                },
            },
        })
    });
    let gaps = batch.gaps.iter().map(|g| EventRecord {
        node: node.clone(),
        seq: g.first,
        at_ms: g.first_at_ms,
        received_ms,
        origin: Origin::Node,
        what: What::Gap {
            last: g.last,
            count: g.count,
            last_at_ms: g.last_at_ms,
        },
    });
    events.chain(gaps).collect()
}

/// The acknowledgement of `batch`, once it is stored: every event's sequence number, and the
/// last gap's end.
pub fn acknowledgement(batch: &EventBatch) -> EventsStored {
    EventsStored {
        seqs: batch
            .events
            .iter()
            .map(|e| e.seq)
            .collect::<List<u64, { EventBatch::MAX_EVENTS }>>(),
        gaps_through: batch.gaps.iter().map(|g| g.last).max().unwrap_or(0),
    }
}

/// Of `events`, those a query asks for, oldest first by the clock that made them (then by
/// node, origin and sequence number), at most `limit` (and [`MAX_QUERY`]).
pub fn select(mut events: Vec<EventRecord>, since_ms: u64, limit: usize) -> Vec<EventRecord> {
    events.retain(|e| e.at_ms >= since_ms);
    events.sort_by(|a, b| {
        (a.at_ms, &a.node, a.origin, a.seq).cmp(&(b.at_ms, &b.node, b.origin, b.seq))
    });
    events.truncate(limit.min(MAX_QUERY));
    events
}

/// Of `events`, those that arrived at or after `received_since_ms` (the orchestrator's
/// clock), in the order they arrived (then as [`select`] orders them), at most `limit` (and
/// [`MAX_QUERY`]): what a follower polls for, so that an event that arrives late with an old
/// time is still seen, and one cut off by the limit comes in the next answer.
pub fn select_arrived(
    mut events: Vec<EventRecord>,
    received_since_ms: u64,
    since_ms: u64,
    limit: usize,
) -> Vec<EventRecord> {
    events.retain(|e| e.received_ms >= received_since_ms && e.at_ms >= since_ms);
    events.sort_by(|a, b| {
        (a.received_ms, a.at_ms, &a.node, a.origin, a.seq).cmp(&(
            b.received_ms,
            b.at_ms,
            &b.node,
            b.origin,
            b.seq,
        ))
    });
    events.truncate(limit.min(MAX_QUERY));
    events
}

/// Sampled proxy attempts as rows for training: the answer of
/// `GET /v1/telemetry/route-samples`, and what `edgectl telemetry export` writes as CSV.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRows {
    /// [`edge_proto::RouteSamples::FEATURE_NAMES`], then `latency_ms` and `failed`.
    pub columns: Vec<String>,
    /// One per attempt, oldest window first, a value per column; `failed` is 0 or 1.
    pub rows: Vec<Vec<f32>>,
    /// Samples left out for having another number of features than the columns name (a
    /// node of another version).
    pub skipped: u64,
    /// More rows matched than the query's limit: these are the oldest; ask again from the
    /// last window's time for the rest.
    pub truncated: bool,
}

/// The most rows one query of sampled attempts returns.
pub const MAX_ROUTE_ROWS: usize = 1_000_000;

impl RouteRows {
    /// The attempts of the windows in `records` at or after `since_ms`, oldest first, at most
    /// `limit` rows (and [`MAX_ROUTE_ROWS`]), whole windows only.
    pub fn select(mut records: Vec<EventRecord>, since_ms: u64, limit: usize) -> Self {
        records.retain(|e| e.at_ms >= since_ms);
        records.sort_by(|a, b| (a.at_ms, &a.node, a.seq).cmp(&(b.at_ms, &b.node, b.seq)));
        let width = edge_proto::RouteSamples::FEATURE_NAMES.len();
        let limit = limit.min(MAX_ROUTE_ROWS);
        let mut columns: Vec<String> = edge_proto::RouteSamples::FEATURE_NAMES
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        columns.extend(["latency_ms".to_owned(), "failed".to_owned()]);
        let mut out = Self {
            columns,
            rows: Vec::new(),
            skipped: 0,
            truncated: false,
        };
        for record in &records {
            let What::RouteSamples { samples, .. } = &record.what else {
                continue;
            };
            if out.rows.len() + samples.len() > limit {
                out.truncated = true;
                break;
            }
            for sample in samples {
                if sample.features.len() != width {
                    out.skipped += 1;
                    continue;
                }
                let mut row = sample.features.clone();
                row.extend([sample.latency_ms, f32::from(u8::from(sample.failed))]);
                out.rows.push(row);
            }
        }
        out
    }

    /// The rows as the training CSV that `edge-sim route record` writes too (edge-sim's
    /// crate docs): the columns as the header line, then a line per row, each value as Rust
    /// prints it (the shortest form that reads back the same).
    pub fn to_csv(&self) -> String {
        use std::fmt::Write as _;
        let mut csv = self.columns.join(",");
        csv.push('\n');
        for row in &self.rows {
            for (i, value) in row.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(csv, "{sep}{value}");
            }
            csv.push('\n');
        }
        csv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{EventGap, NodeEvent, WorkloadReport, WorkloadState, text};

    fn batch() -> EventBatch {
        let event = |seq, at_ms, state| NodeEvent {
            seq,
            at_ms,
            kind: EventKind::Instance(WorkloadReport {
                workload: text("till"),
                generation: 2,
                state,
                restarts: 1,
                pid: Some(42),
                exit_code: None,
                message: text("started"),
            }),
        };
        EventBatch {
            events: [
                event(7, 5_000, WorkloadState::Running),
                event(9, 1_000, WorkloadState::Failed),
            ]
            .into_iter()
            .collect(),
            gaps: [EventGap {
                first: 3,
                last: 5,
                count: 2,
                first_at_ms: 500,
                last_at_ms: 900,
            }]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn a_batch_becomes_records_and_its_acknowledgement_names_what_was_in_it() {
        let node = NodeId([1; 16]);
        let records = records(node, &batch(), 9_999);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].node, node.to_string());
        assert_eq!(
            (records[0].seq, records[0].at_ms, records[0].received_ms),
            (7, 5_000, 9_999)
        );
        assert!(matches!(&records[0].what, What::Instance { state, .. } if state == "running"));
        assert_eq!(
            records[2].what,
            What::Gap {
                last: 5,
                count: 2,
                last_at_ms: 900
            }
        );
        let ack = acknowledgement(&batch());
        assert_eq!(ack.seqs.as_slice(), [7, 9]);
        assert_eq!(ack.gaps_through, 5);
        let empty = EventBatch {
            events: List::new(),
            gaps: List::new(),
        };
        assert_eq!(acknowledgement(&empty).gaps_through, 0);
    }

    fn route_batch(samples: Vec<edge_proto::RouteSample>, seq: u64, at_ms: u64) -> EventBatch {
        EventBatch {
            events: [NodeEvent {
                seq,
                at_ms,
                kind: EventKind::RouteSamples(Box::new(edge_proto::RouteSamples {
                    window_secs: 60,
                    attempts: 100,
                    samples: samples.into_iter().collect(),
                })),
            }]
            .into_iter()
            .collect(),
            gaps: List::new(),
        }
    }

    fn sample(first: f32, width: usize, latency_ms: f32, failed: bool) -> edge_proto::RouteSample {
        let mut features: List<f32, 32> = List::new();
        for i in 0..width {
            let _ = features.push(if i == 0 { first } else { i as f32 * 0.5 });
        }
        edge_proto::RouteSample {
            features,
            latency_ms,
            failed,
        }
    }

    /// A node's sampled attempts are kept on a shelf of their own, without what JSON cannot
    /// hold (a hostile or broken node's NaN, infinity or negative latency), and come out as
    /// the training CSV, which leaves out and counts a sample of another width.
    #[test]
    fn sampled_attempts_are_kept_apart_clean_and_export_as_the_training_csv() {
        let node = NodeId([2; 16]);
        let good = sample(12.5, 13, 14.25, false);
        let batch = route_batch(
            vec![
                good.clone(),
                sample(f32::NAN, 13, 1.0, false),
                sample(1.0, 13, f32::INFINITY, false),
                sample(1.0, 13, -1.0, true),
                sample(3.0, 14, 2.0, true),
            ],
            5,
            2_000,
        );
        let stored = records(node, &batch, 3_000);
        let [record] = stored.as_slice() else {
            panic!("one record: {stored:?}");
        };
        assert_eq!(record.what.shelf(), Shelf::RouteSamples);
        let What::RouteSamples {
            window_secs,
            attempts,
            samples,
        } = &record.what
        else {
            panic!("route samples: {record:?}");
        };
        assert_eq!((*window_secs, *attempts, samples.len()), (60, 100, 2));
        let json = serde_json::to_string(record).expect("encodes");
        let back: EventRecord = serde_json::from_str(&json).expect("reads back");
        assert_eq!(&back, record);

        let earlier = records(
            node,
            &route_batch(vec![sample(1.0, 13, 3.0, true)], 4, 1_000),
            0,
        );
        let both = vec![record.clone(), earlier[0].clone()];
        let rows = RouteRows::select(both.clone(), 0, 100);
        assert_eq!(
            (rows.skipped, rows.truncated),
            (1, false),
            "the 14-feature sample"
        );
        let csv = rows.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "peak_ewma_ms,mean_ms,tail_ms,floor_ms,in_flight,failure_rate,half_open,unmeasured,\
             idle_ms,distance_km,local,host_cpu,host_memory,latency_ms,failed"
        );
        assert_eq!(
            lines[1..],
            [
                "1,0.5,1,1.5,2,2.5,3,3.5,4,4.5,5,5.5,6,3,1",
                "12.5,0.5,1,1.5,2,2.5,3,3.5,4,4.5,5,5.5,6,14.25,0",
            ],
            "oldest first"
        );
        let later = RouteRows::select(both.clone(), 1_500, 100);
        assert_eq!(later.rows.len(), 1, "the later window");
        assert_eq!(later.rows[0][0], 12.5);
        let first = RouteRows::select(both, 0, 1);
        assert_eq!(
            (first.rows.len(), first.truncated),
            (1, true),
            "whole windows, oldest first"
        );
        assert_eq!(first.rows[0][0], 1.0);
        assert_eq!(good.features.len(), 13);
    }

    #[test]
    fn a_query_is_oldest_first_from_its_time_and_bounded() {
        let records = records(NodeId([1; 16]), &batch(), 0);
        let all = select(records.clone(), 0, 10);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 9, 7]);
        let later = select(records.clone(), 1_000, 10);
        assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), [9, 7]);
        assert_eq!(select(records, 0, 1).len(), 1);
    }

    #[test]
    fn records_read_back_from_their_json() {
        for record in records(NodeId([2; 16]), &batch(), 1) {
            let json = serde_json::to_string(&record).expect("json");
            assert_eq!(
                serde_json::from_str::<EventRecord>(&json).expect("back"),
                record
            );
        }
    }

    #[test]
    fn orchestrator_events_say_so_and_older_records_are_the_node_s() {
        let event = orchestrator_event(
            NodeId([3; 16]),
            77,
            What::Reconciled {
                workload: "till".into(),
                generation: 2,
                rule: "keep_original".into(),
                kept: "original".into(),
                replacement: Some(NodeId([4; 16]).to_string()),
                stopped: Some(NodeId([4; 16]).to_string()),
                stopped_name: Some("shop-4".into()),
            },
        );
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["origin"], "orchestrator");
        assert_eq!(json["what"]["kind"], "reconciled");
        assert_eq!(json["what"]["kept"], "original");
        assert_eq!(
            serde_json::from_value::<EventRecord>(json).expect("back"),
            event
        );
        let mut old =
            serde_json::to_value(&records(NodeId([1; 16]), &batch(), 1)[0]).expect("json");
        old.as_object_mut().expect("object").remove("origin");
        let old: EventRecord = serde_json::from_value(old).expect("stored before origins");
        assert_eq!(old.origin, Origin::Node);
    }

    #[test]
    fn a_follower_sees_events_in_the_order_they_arrived() {
        let at = |seq, at_ms, received_ms| EventRecord {
            node: "ab".into(),
            seq,
            at_ms,
            received_ms,
            origin: Origin::Node,
            what: What::Gap {
                last: seq,
                count: 1,
                last_at_ms: at_ms,
            },
        };
        // A node offline for a week sends old events late.
        let events = vec![
            at(1, 9_000, 10_000),
            at(2, 1_000, 20_000),
            at(3, 2_000, 20_000),
        ];
        let seqs = |v: Vec<EventRecord>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(select_arrived(events.clone(), 20_000, 0, 10)), [2, 3]);
        assert_eq!(seqs(select_arrived(events.clone(), 0, 0, 10)), [1, 2, 3]);
        assert_eq!(
            seqs(select_arrived(events.clone(), 0, 0, 1)),
            [1],
            "the limit cuts the newest arrivals"
        );
        assert_eq!(seqs(select_arrived(events.clone(), 0, 1_500, 10)), [1, 3]);
        assert_eq!(
            seqs(select(events, 0, 10)),
            [2, 3, 1],
            "by the node's clock"
        );
    }
}
