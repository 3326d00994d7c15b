//! The node's outbox, as decisions: what the orchestrator must still learn, in which order it
//! goes, and what gives way when the disk budget is full.
//!
//! Every record gets a sequence number when it is added, and keeps the wall time it happened
//! at. Records come in three classes, sent in this order: [`Class::Event`] (state changes,
//! exits, restarts, refusals, operator actions), then [`Class::Status`] (the latest of each
//! thing, so older ones can be coalesced), then [`Class::Metric`] (windowed summaries, which
//! can be thinned); within a class, oldest first.
//!
//! The outbox holds at most its budget of bytes. When a new record does not fit, room is made
//! in this order, each step counted:
//! 1. metrics are downsampled: the one in the densest stretch goes (of those between two
//!    others, the one whose neighbours are closest in time), so what is left spans the same
//!    time at a coarser step; the last two go oldest first;
//! 2. status is coalesced: of the records with the same key, only the newest stays;
//! 3. events are dropped, oldest first, each run of dropped sequence numbers recorded as a
//!    [`Gap`] that goes to the orchestrator in their place.
//!
//! A record the orchestrator acknowledged is gone; one sent and not acknowledged is sent
//! again after a reconnect. [`Pacer`] spreads the drain over the uplink's byte budget.
//!
//! **Invariant.** No I/O and no clock: the daemon's shell stores what this decides and passes
//! `now` in. The outbox never holds more than its budget, never drops an event while a
//! metric or a coalescable status is left, and accounts for every sequence number it gave
//! out: stored, acknowledged, or counted as shed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a record is, which decides its place in the drain and what may happen to it when
/// the budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Sent first, dropped last: instance state changes, exits, restarts, health changes,
    /// admission refusals, local operator actions.
    Event,
    /// The latest of something (a workload's state): older records of the same key may be
    /// coalesced into the newest.
    Status,
    /// Windowed summaries: thinned first when room is short.
    Metric,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Event, Class::Status, Class::Metric];

    fn index(self) -> usize {
        self as usize
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub class: Class,
    /// What a newer [`Class::Status`] record replaces: the same key. Unused for the others.
    pub key: String,
    /// When it happened, in milliseconds since the Unix epoch (the node's wall clock): kept
    /// as it was, however late the record is sent.
    pub at_ms: u64,
    pub body: Vec<u8>,
}

impl Record {
    /// What the record costs against the budget: its body and key, and a fixed overhead for
    /// the rest.
    pub fn cost(&self) -> u64 {
        cost(&self.key, &self.body)
    }
}

/// What a record costs beyond its key and body: sequence number, class, time, framing.
pub const RECORD_OVERHEAD_BYTES: u64 = 32;

fn cost(key: &str, body: &[u8]) -> u64 {
    RECORD_OVERHEAD_BYTES + key.len() as u64 + body.len() as u64
}

/// A run of events the outbox dropped to make room: sequence numbers `first..=last`, of
/// which `count` were events (the rest of the run were other records, shed or sent), between
/// `first_at_ms` and `last_at_ms`. The orchestrator shows it where the events would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
}

impl From<Gap> for edge_proto::EventGap {
    fn from(g: Gap) -> Self {
        Self {
            first: g.first,
            last: g.last,
            count: g.count,
            first_at_ms: g.first_at_ms,
            last_at_ms: g.last_at_ms,
        }
    }
}

/// What was shed to make room, by step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    /// Metric records thinned out.
    pub metrics_downsampled: u64,
    /// Status records replaced by a newer one of the same key.
    pub status_coalesced: u64,
    /// Events dropped (also in [`Outbox::gaps`]).
    pub events_dropped: u64,
}

/// Why a record was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The record alone is larger than the whole budget.
    #[error("a record of {cost} bytes is larger than the outbox's budget of {budget} bytes")]
    TooLarge { cost: u64, budget: u64 },
    /// Nothing left to shed: the budget holds only the newest status of each key, which
    /// the outbox never drops (a budget far too small for the node's workloads).
    #[error("no room: the budget of {budget} bytes is full of the newest status of each key")]
    Full { budget: u64 },
}

/// What adding a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub seq: u64,
    /// The sequence numbers removed to make room, for the shell to delete from its store.
    pub removed: Vec<u64>,
}

/// The outbox: the records waiting for the orchestrator, within a byte budget.
#[derive(Debug, Clone)]
pub struct Outbox {
    budget: u64,
    used: u64,
    next_seq: u64,
    records: BTreeMap<u64, Record>,
    /// How many of `records` are of each class, by [`Class::index`]: asked on every status
    /// read, which must not walk a queue of 100,000.
    counts: [usize; 3],
    /// Sent on the current connection and not acknowledged yet.
    in_flight: BTreeSet<u64>,
    gaps: Vec<Gap>,
    shed: Shed,
}

/// The most gaps kept; past it, the two oldest merge.
pub const MAX_GAPS: usize = 64;

impl Outbox {
    /// An empty outbox of `budget` bytes whose first record will be `next_seq` (1 for a new
    /// node; one past the largest the store held for a restarted one).
    pub fn new(budget: u64, next_seq: u64) -> Self {
        Self {
            budget,
            used: 0,
            next_seq: next_seq.max(1),
            records: BTreeMap::new(),
            counts: [0; 3],
            in_flight: BTreeSet::new(),
            gaps: Vec::new(),
            shed: Shed::default(),
        }
    }

    /// The outbox the store held: `records` as they were saved, with `gaps` and `shed` as
    /// saved. Records past the budget (a smaller budget after an upgrade) are shed as
    /// [`push`](Self::push) would.
    pub fn restore(
        budget: u64,
        records: impl IntoIterator<Item = Record>,
        gaps: Vec<Gap>,
        shed: Shed,
        next_seq: u64,
    ) -> (Self, Vec<u64>) {
        let mut outbox = Self::new(budget, next_seq);
        outbox.gaps = gaps;
        outbox.shed = shed;
        for record in records {
            outbox.next_seq = outbox.next_seq.max(record.seq + 1);
            outbox.used += record.cost();
            outbox.counts[record.class.index()] += 1;
            if let Some(old) = outbox.records.insert(record.seq, record) {
                outbox.used -= old.cost();
                outbox.counts[old.class.index()] -= 1;
            }
        }
        let removed = outbox.make_room(0);
        (outbox, removed)
    }

    /// Adds a record; sheds what it must to stay within the budget (see the module docs).
    pub fn push(
        &mut self,
        class: Class,
        key: &str,
        at_ms: u64,
        body: Vec<u8>,
    ) -> Result<Pushed, PushError> {
        let cost = cost(key, &body);
        if cost > self.budget {
            return Err(PushError::TooLarge {
                cost,
                budget: self.budget,
            });
        }
        let removed = self.make_room(cost);
        if self.used + cost > self.budget {
            return Err(PushError::Full {
                budget: self.budget,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.used += cost;
        self.counts[class.index()] += 1;
        self.records.insert(
            seq,
            Record {
                seq,
                class,
                key: key.to_owned(),
                at_ms,
                body,
            },
        );
        Ok(Pushed { seq, removed })
    }

    /// The records to send next, at most `max_bytes` of them (at least one if any waits):
    /// not in flight, events first, then status, then metrics, oldest first within each.
    /// They are in flight from now until acknowledged or [`reconnected`](Self::reconnected).
    pub fn next_batch(&mut self, max_bytes: u64) -> Vec<Record> {
        self.next_batch_of(max_bytes, usize::MAX)
    }

    /// [`next_batch`](Self::next_batch), of at most `max_records` records too.
    pub fn next_batch_of(&mut self, max_bytes: u64, max_records: usize) -> Vec<Record> {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for class in Class::ALL {
            if self.counts[class.index()] == 0 {
                continue;
            }
            for record in self.records.values().filter(|r| r.class == class) {
                if self.in_flight.contains(&record.seq) {
                    continue;
                }
                let cost = record.cost();
                let full = bytes + cost > max_bytes || batch.len() >= max_records;
                if !batch.is_empty() && full {
                    return self.mark_in_flight(batch);
                }
                bytes += cost;
                batch.push(record.clone());
            }
        }
        self.mark_in_flight(batch)
    }

    fn mark_in_flight(&mut self, batch: Vec<Record>) -> Vec<Record> {
        self.in_flight.extend(batch.iter().map(|r| r.seq));
        batch
    }

    /// The orchestrator stored these: they are gone. Returns those that were here, for the
    /// shell to delete; an unknown or repeated acknowledgement changes nothing.
    pub fn ack(&mut self, seqs: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut gone = Vec::new();
        for seq in seqs {
            self.in_flight.remove(&seq);
            if let Some(record) = self.records.remove(&seq) {
                self.used -= record.cost();
                self.counts[record.class.index()] -= 1;
                gone.push(seq);
            }
        }
        gone
    }

    /// The connection ended: whatever was in flight and not acknowledged goes again.
    pub fn reconnected(&mut self) {
        self.in_flight.clear();
    }

    /// Records sent on this connection and not acknowledged yet.
    pub fn records_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The gaps the orchestrator has not acknowledged.
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// The orchestrator stored the gaps up to and including `last`.
    pub fn ack_gaps(&mut self, last: u64) {
        self.gaps.retain(|g| g.last > last);
    }

    pub fn shed(&self) -> Shed {
        self.shed
    }

    /// Bytes held, against [`budget`](Self::budget).
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lowest sequence number still held, a record's or an unacknowledged gap's
    /// (`next_seq` when nothing is).
    pub fn oldest(&self) -> u64 {
        let record = self.records.keys().next().copied();
        let gap = self.gaps.iter().map(|g| g.first).min();
        record.into_iter().chain(gap).min().unwrap_or(self.next_seq)
    }

    /// The orchestrator holds sequence numbers up to `through`. If this outbox would give
    /// one of them again, everything it holds is moved up to start past `through`, in the
    /// same order, and numbering goes on from there. A `fresh` outbox (its log made anew,
    /// while the node's identity is older) may hold such numbers already, and moves if its
    /// oldest is at or below `through`; any other moves only if its next one is (it was
    /// reset without knowing). Returns whether anything moved; nothing may be in flight
    /// when it does (it is asked before the first batch of a session).
    pub fn number_after(&mut self, through: u64, fresh: bool) -> bool {
        let lowest = if fresh { self.oldest() } else { self.next_seq };
        if lowest > through {
            return false;
        }
        let shift = through + 1 - self.oldest();
        // Inserted one by one, in order: no sort to compile in for a rare move.
        let mut moved = BTreeMap::new();
        for (_, mut r) in core::mem::take(&mut self.records) {
            r.seq += shift;
            moved.insert(r.seq, r);
        }
        self.records = moved;
        for gap in &mut self.gaps {
            gap.first += shift;
            gap.last += shift;
        }
        self.in_flight.clear();
        self.next_seq += shift;
        true
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The stored record `seq`, if it is still here.
    pub fn get(&self, seq: u64) -> Option<&Record> {
        self.records.get(&seq)
    }

    /// The stored records, by sequence number.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// How many records of `class` wait.
    pub fn waiting(&self, class: Class) -> usize {
        self.counts[class.index()]
    }

    /// The record that has waited longest: the first by sequence number.
    pub fn first(&self) -> Option<&Record> {
        self.records.values().next()
    }

    /// Sheds until `incoming` more bytes fit, by the steps of the module docs; returns what
    /// went.
    fn make_room(&mut self, incoming: u64) -> Vec<u64> {
        let mut removed = Vec::new();
        let fits = |outbox: &Self| outbox.used + incoming <= outbox.budget;
        // 1. Metrics, from the densest stretch.
        while !fits(self) {
            let Some(seq) = self.densest_metric() else {
                break;
            };
            self.remove(seq, &mut removed);
            self.shed.metrics_downsampled += 1;
        }
        // 2. Status: the older records of each key.
        if !fits(self) {
            let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
            for r in self.records.values().filter(|r| r.class == Class::Status) {
                newest.insert(&r.key, r.seq);
            }
            let older: Vec<u64> = self
                .records
                .values()
                .filter(|r| r.class == Class::Status && newest.get(r.key.as_str()) != Some(&r.seq))
                .map(|r| r.seq)
                .collect();
            for seq in older {
                if fits(self) {
                    break;
                }
                self.remove(seq, &mut removed);
                self.shed.status_coalesced += 1;
            }
        }
        // 3. Events, oldest first, into gaps.
        while !fits(self) {
            let Some(event) = self
                .records
                .values()
                .find(|r| r.class == Class::Event)
                .map(|r| (r.seq, r.at_ms))
            else {
                break;
            };
            self.remove(event.0, &mut removed);
            self.shed.events_dropped += 1;
            self.add_gap(event.0, event.1);
        }
        removed
    }

    /// The metric to thin out next: of those with a metric on each side, the one whose
    /// neighbours are closest in time (the oldest of equals), so that what is left spans the
    /// same time at a coarser step; with fewer than three, the oldest.
    fn densest_metric(&self) -> Option<u64> {
        let metrics: Vec<(u64, u64)> = self
            .records
            .values()
            .filter(|r| r.class == Class::Metric)
            .map(|r| (r.seq, r.at_ms))
            .collect();
        if metrics.len() < 3 {
            return metrics.first().map(|m| m.0);
        }
        metrics
            .windows(3)
            .min_by_key(|w| (w[2].1.saturating_sub(w[0].1), w[1].0))
            .map(|w| w[1].0)
    }

    fn remove(&mut self, seq: u64, removed: &mut Vec<u64>) {
        if let Some(record) = self.records.remove(&seq) {
            self.used -= record.cost();
            self.counts[record.class.index()] -= 1;
            self.in_flight.remove(&seq);
            removed.push(seq);
        }
    }

    /// Records the dropped event `seq`: it extends the newest gap when no stored event lies
    /// between them, else starts a new one.
    fn add_gap(&mut self, seq: u64, at_ms: u64) {
        if let Some(last) = self.gaps.last_mut() {
            let event_between = self
                .records
                .range(last.last + 1..seq)
                .any(|(_, r)| r.class == Class::Event);
            if !event_between && last.last < seq {
                last.last = seq;
                last.count += 1;
                last.first_at_ms = last.first_at_ms.min(at_ms);
                last.last_at_ms = last.last_at_ms.max(at_ms);
                return;
            }
        }
        self.gaps.push(Gap {
            first: seq,
            last: seq,
            count: 1,
            first_at_ms: at_ms,
            last_at_ms: at_ms,
        });
        if self.gaps.len() > MAX_GAPS {
            let second = self.gaps.remove(1);
            let first = &mut self.gaps[0];
            first.last = second.last;
            first.count += second.count;
            first.first_at_ms = first.first_at_ms.min(second.first_at_ms);
            first.last_at_ms = first.last_at_ms.max(second.last_at_ms);
        }
    }
}

/// One connection's drain of an outbox: up to [`Drain::WINDOW`] batches out at once, each
/// waiting for the orchestrator's acknowledgement, so the link stays busy while the
/// orchestrator stores one. Gaps go with a batch sent while no other is out, so that a window
/// does not carry them several times. A lost connection sends everything unacknowledged
/// again: the orchestrator keys what it stores by node and sequence number, so a batch
/// stored twice is stored once.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    in_flight: usize,
}

/// What [`Drain::next`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
    pub gaps: Vec<Gap>,
}

impl Drain {
    /// Batches out at once.
    pub const WINDOW: usize = 4;

    /// The next batch (at most `max_bytes` and `max_records` records, `max_gaps` gaps), or
    /// `None` while the window is full or nothing waits.
    pub fn next(
        &mut self,
        outbox: &mut Outbox,
        max_bytes: u64,
        max_records: usize,
        max_gaps: usize,
    ) -> Option<Batch> {
        if self.in_flight >= Self::WINDOW {
            return None;
        }
        let gap_room = if self.in_flight == 0 { max_gaps } else { 0 };
        let records = outbox.next_batch_of(max_bytes, max_records);
        let gaps: Vec<Gap> = outbox.gaps().iter().take(gap_room).copied().collect();
        if records.is_empty() && gaps.is_empty() {
            return None;
        }
        self.in_flight += 1;
        Some(Batch { records, gaps })
    }

    /// A batch was acknowledged (the caller acknowledges its records in the outbox).
    pub fn acked(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The connection ended: nothing is out any more, and what was goes again.
    pub fn disconnected(&mut self, outbox: &mut Outbox) {
        self.in_flight = 0;
        outbox.reconnected();
    }

    /// Batches out now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether anything sent on this connection waits for its acknowledgement: a batch out,
    /// or a record whose batch's count an unrelated acknowledgement already took.
    pub fn awaiting(&self, outbox: &Outbox) -> bool {
        self.in_flight > 0 || outbox.records_in_flight() > 0
    }
}

/// Spreads the drain over an uplink's byte budget: a token bucket of `bytes_per_sec`, holding
/// at most one second of it. Time comes in as `now` (any monotonic origin).
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_sec: u64,
    tokens: f64,
    at: Option<Duration>,
}

impl Pacer {
    /// `bytes_per_sec` of 0 means no limit.
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            tokens: bytes_per_sec as f64,
            at: None,
        }
    }

    /// How many bytes may go now: what the bucket holds (everything with no limit).
    pub fn allowance(&mut self, now: Duration) -> u64 {
        if self.bytes_per_sec == 0 {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens.max(0.0) as u64
    }

    /// `bytes` went at `now`; a batch may overdraw the bucket (at least one record always
    /// goes), and the next wait repays it.
    pub fn spent(&mut self, now: Duration, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// How long until at least `bytes` (capped at a second's worth) may go.
    pub fn wait(&mut self, now: Duration, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        let want = (bytes.min(self.bytes_per_sec)) as f64;
        if self.tokens >= want {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((want - self.tokens) / self.bytes_per_sec as f64)
    }

    fn refill(&mut self, now: Duration) {
        let rate = self.bytes_per_sec as f64;
        if let Some(at) = self.at {
            let elapsed = now.saturating_sub(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(rate);
        }
        self.at = Some(now);
    }
}
