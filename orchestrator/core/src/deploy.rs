//! Deployments: the workloads the operator asked for, and which node holds each instance.
//!
//! [`Deployments`] owns the [`Scheduler`](crate::scheduler::Scheduler) snapshot and keeps it in step with the registry
//! (nodes coming, going, cordoned, drained, deleted) and with the nodes' answers (a refused
//! admission moves the instance to the next best node). Every input returns [`Effect`]s: the
//! records to persist and the messages to send, in order. The caller persists before it sends,
//! so a node never runs an assignment the orchestrator could forget.
//!
//! An offline node keeps its instances: an edge node runs on through a cut link, and moving
//! its work elsewhere would double it when the link returns. Only a drain, a deletion or a
//! refusal moves an instance, and, for a workload with `max_disconnect_secs`, the node's
//! absence lasting longer than that ([`Deployments::tick`]): a replacement is placed on
//! another node, and the original is kept on record as replaced (it no longer counts, and
//! its node reporting it is not told to stop it). When that node's session opens again, the
//! workload's `reconcile` rule decides which of the two survives, and the other is
//! unassigned. A node that returns before the deadline sees nothing change.
//!
//! A node that moves out of a workload's `near` radius is told of once, and with
//! `follow_near` its instance moves to a node inside, make-before-break ([`follow`]).
//!
//! **Invariants.** Pure: no I/O, no clock (time comes in as `now_ms`, milliseconds since the
//! Unix epoch on the orchestrator's clock), no randomness. Every instance the scheduler has
//! bound belongs to exactly one deployment's `nodes`, and the reverse. Whenever a node's
//! session opens it is sent an `Assign` for every instance it holds that it did not say it
//! holds at that generation, and an `Unassign` for anything it said or reports that it
//! does not hold.

use crate::events::{What, orchestrator_event};
use crate::fleet::NodeRecord;
pub use crate::image::{ArtifactFacts, ImageFacts};
use crate::scheduler::learned::Predictor;
use crate::scheduler::{NodeReject, NodeView, Outcome, RejectReason, Resources};
use crate::workload::{
    Balance, Driver, Expose, HealthCheck, Placement, Probe, Reconcile, RestartPolicy, SpecError,
    WorkloadSpec,
};
use edge_proto::{
    AdmissionReply, Assignment, HealthProbe, OrchMsg, Seq, Str, Unassign, WorkloadReport, text,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

mod follow;
mod placer;

use placer::Placer;
pub use placer::{
    HISTORY_WINDOW_MS, MAX_ARTIFACTS, MAX_EVENTS, MAX_TRACKED, MIN_FETCH_BYTES, PlacementStatus,
};

/// Something the caller must do, in order.
// Effects live only until the caller carries them out; boxing the message would cost an
// allocation per send for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this deployment to the store before sending what follows.
    Persist(DeploymentRecord),
    /// Remove this deployment from the store.
    Forget(String),
    /// Send this to the node's live session, if it has one; it is sent again when the node
    /// next connects.
    Send(edge_proto::NodeId, OrchMsg),
    /// Store this event of the orchestrator's (with the deployments of the same batch) before
    /// sending what follows.
    Record(crate::events::EventRecord),
}

/// A deployment as stored: the spec as its JSON, and where its instances are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub spec: serde_json::Value,
    pub generation: u64,
    pub artifact_size: u64,
    /// With `driver = "oci"`: the image's platforms as the image store knew them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFacts>,
    /// Node ids (hex) holding an instance.
    pub nodes: Vec<String>,
    /// Instances on nodes that were away too long, kept on record until their node returns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<ReplacedRecord>,
    /// Instances whose node left the workload's `near` radius and was told so, with the node
    /// a replacement was placed on while that has not reported running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_near: Vec<LeftNearRecord>,
}

/// An instance whose node (hex id) left its workload's `near` radius; `replacement` (hex id)
/// takes over once it runs, if one was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftNearRecord {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// An instance replaced while its node was away: the node (hex id) and the node that got
/// the replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedRecord {
    pub node: String,
    pub replacement: String,
}

impl DeploymentRecord {
    pub fn name(&self) -> Option<&str> {
        self.spec.get("name").and_then(|n| n.as_str())
    }
}

/// Where an instance stands with its node, from the orchestrator's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Admission {
    /// Assigned; the node has not answered yet.
    Pending,
    /// The node admitted it.
    Admitted,
}

#[derive(Debug, Clone)]
struct Deployment {
    spec: WorkloadSpec,
    generation: u64,
    artifact: ArtifactFacts,
    /// The message every holder gets; built once per generation.
    assignment: Assignment,
    nodes: BTreeMap<edge_proto::NodeId, Admission>,
    /// Nodes that refused this generation, with the reason they gave.
    refusals: BTreeMap<edge_proto::NodeId, String>,
    /// Nodes away too long whose instance was replaced, with the node the replacement went
    /// to. Not in `nodes`: they do not count, and the scheduler has released them.
    replaced: BTreeMap<edge_proto::NodeId, edge_proto::NodeId>,
    /// Holders whose node left the spec's `near` radius (told once), each with the node a
    /// replacement is placed on until it runs. Both are in `nodes`; the two count as one
    /// against `replicas` (see [`follow`]).
    left_near: BTreeMap<edge_proto::NodeId, Option<edge_proto::NodeId>>,
}

/// One deployment as the operator sees it; the API turns it into its JSON view.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentView {
    pub name: String,
    pub version: String,
    pub generation: u64,
    pub spec: serde_json::Value,
    /// How many instances are wanted: replicas, or for a per-node workload the matching nodes.
    pub wanted: u32,
    /// Nodes holding an instance, by id, with whether they admitted it.
    pub nodes: Vec<(edge_proto::NodeId, Admission)>,
    /// Nodes that refused the admission, with the reason they gave.
    pub refusals: Vec<(edge_proto::NodeId, String)>,
    /// Why the nodes that hold no instance cannot take one (empty when complete).
    pub unplaced_reasons: Vec<NodeReject>,
    /// Instances replaced while their node was away (the node, then the replacement's node),
    /// kept until their node returns.
    pub replaced: Vec<(edge_proto::NodeId, edge_proto::NodeId)>,
    /// Holders whose node left the `near` radius, with the node a replacement is placed on
    /// while it has not reported running (both are in `nodes`, and count as one).
    pub left_near: Vec<(edge_proto::NodeId, Option<edge_proto::NodeId>)>,
}

/// Every deployment and the scheduler snapshot they are placed on, ranked by the learned
/// score ([`crate::scheduler::learned::Learned`]): with no model (the default) it places
/// exactly as [`crate::scheduler::LeastAllocated`] does. Module `deploy::placer` says what it remembers
/// of each node for a model.
#[derive(Debug, Default)]
pub struct Deployments {
    scheduler: Placer,
    deployments: BTreeMap<String, Deployment>,
    /// What the registry says of each node, to rebuild its view after changes.
    nodes: BTreeMap<edge_proto::NodeId, NodeRecord>,
    /// The nodes with a session.
    online: BTreeSet<edge_proto::NodeId>,
    /// Since when (ms) each node without a session has been away, as far as this process
    /// knows: from its session's end, or for a node already away at load, from the first
    /// tick (the orchestrator cannot tell how long it was away while itself was down, and
    /// replacing every absent instance after an orchestrator outage would double them).
    offline_since: BTreeMap<edge_proto::NodeId, u64>,
    /// The newest time (ms) the caller handed in (`tick` every second, sessions opening and
    /// ending): the time of the events decided on inputs that carry none (a node's new
    /// record, an instance's report).
    now_ms: u64,
}

/// The lowercase name of a state a node reports for an instance, as the API shows it and as
/// the `edge_instance_transitions` metric labels it.
pub fn state_name(state: edge_proto::WorkloadState) -> &'static str {
    use edge_proto::WorkloadState as S;
    match state {
        S::Pending => "pending",
        S::Downloading => "downloading",
        S::Starting => "starting",
        S::Running => "running",
        S::Unhealthy => "unhealthy",
        S::Backoff => "backoff",
        S::Failed => "failed",
        S::Stopped => "stopped",
    }
}

/// A stored record that cannot be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stored deployment {name:?}: {reason}")]
pub struct LoadError {
    pub name: String,
    pub reason: String,
}

impl Deployments {
    /// The deployments as stored, on the registry's nodes (`online` says which have a
    /// session). Sends nothing: each node gets its assignments when its session opens.
    pub fn load(
        records: Vec<DeploymentRecord>,
        nodes: impl IntoIterator<Item = (NodeRecord, bool)>,
    ) -> Result<Self, LoadError> {
        let mut me = Self::default();
        let mut online = BTreeMap::new();
        for (record, up) in nodes {
            online.insert(record.id, up);
            if up {
                me.online.insert(record.id);
            }
            me.nodes.insert(record.id, record);
        }
        for record in records {
            let name = record.name().unwrap_or("?").to_owned();
            let bad = |reason: String| LoadError {
                name: name.clone(),
                reason,
            };
            let bytes = serde_json::to_vec(&record.spec).map_err(|e| bad(e.to_string()))?;
            let spec = WorkloadSpec::from_json(&bytes).map_err(|e| bad(e.to_string()))?;
            let artifact = ArtifactFacts {
                size: record.artifact_size,
                image: record.image.clone(),
            };
            let spec = artifact.constrain(spec);
            let assignment =
                assignment(&spec, record.generation, &artifact).map_err(|e| bad(e.to_string()))?;
            let mut held = BTreeMap::new();
            for id in &record.nodes {
                let id = edge_proto::NodeId::parse(id).ok_or_else(|| bad(format!("node {id}")))?;
                // A node deleted since is dropped here; the next reconcile replaces it.
                if me.nodes.contains_key(&id) {
                    held.insert(id, Admission::Pending);
                }
            }
            let mut replaced = BTreeMap::new();
            for r in &record.replaced {
                let parse = |id: &str| {
                    edge_proto::NodeId::parse(id).ok_or_else(|| bad(format!("node {id}")))
                };
                let (node, replacement) = (parse(&r.node)?, parse(&r.replacement)?);
                if me.nodes.contains_key(&node) && !held.contains_key(&node) {
                    replaced.insert(node, replacement);
                }
            }
            let mut left_near = BTreeMap::new();
            for l in &record.left_near {
                let parse = |id: &str| {
                    edge_proto::NodeId::parse(id).ok_or_else(|| bad(format!("node {id}")))
                };
                let node = parse(&l.node)?;
                let replacement = l.replacement.as_deref().map(parse).transpose()?;
                if held.contains_key(&node) {
                    let replacement = replacement.filter(|r| held.contains_key(r) && *r != node);
                    left_near.insert(node, replacement);
                }
            }
            me.deployments.insert(
                spec.name().to_owned(),
                Deployment {
                    spec,
                    generation: record.generation,
                    artifact,
                    assignment,
                    nodes: held,
                    refusals: BTreeMap::new(),
                    replaced,
                    left_near,
                },
            );
        }
        let views: Vec<NodeView> = me
            .nodes
            .values()
            .map(|r| me.view(r, online.get(&r.id).copied().unwrap_or(false)))
            .collect();
        me.scheduler = Placer::new(views);
        for d in me.deployments.values() {
            me.scheduler
                .set_artifact_size(d.spec.artifact(), d.artifact.size);
        }
        Ok(me)
    }

    /// Creates or replaces a deployment and places what it is missing. Applying the spec a
    /// deployment already has changes nothing and sends nothing. A valid spec whose assignment
    /// would not fit the wire is refused with the field at fault.
    pub fn apply(
        &mut self,
        spec: WorkloadSpec,
        artifact: impl Into<ArtifactFacts>,
    ) -> Result<(Outcome, Vec<Effect>), SpecError> {
        let artifact = artifact.into();
        let spec = artifact.constrain(spec);
        let name = spec.name().to_owned();
        let mut effects = Vec::new();
        let generation = match self.deployments.get(&name) {
            Some(d) if d.spec == spec && d.artifact == artifact => {
                return Ok((Outcome::default(), effects));
            }
            Some(d) => d.generation + 1,
            None => 1,
        };
        let new_assignment = assignment(&spec, generation, &artifact)?;
        self.scheduler
            .set_artifact_size(spec.artifact(), artifact.size);
        // The old instances are released and the new spec placed from scratch: the placement
        // is deterministic, so a change that still fits stays where it was.
        let before: Vec<edge_proto::NodeId> = match self.deployments.remove(&name) {
            Some(old) => {
                self.scheduler.remove_workload(&old.spec);
                old.nodes.into_keys().collect()
            }
            None => Vec::new(),
        };
        self.scheduler.forget_refusals(&name);
        let outcome = self.scheduler.place(&spec);
        let nodes: BTreeMap<_, _> = outcome
            .bound
            .iter()
            .map(|id| (*id, Admission::Pending))
            .collect();
        let deployment = Deployment {
            spec,
            generation,
            artifact,
            assignment: new_assignment,
            nodes,
            refusals: BTreeMap::new(),
            // A new spec starts over: a replaced instance that returns is one the
            // deployment no longer holds, and is stopped like any other.
            replaced: BTreeMap::new(),
            // Placed from scratch, within the radius: nothing has left it.
            left_near: BTreeMap::new(),
        };
        effects.push(Effect::Persist(record(&deployment)));
        for id in before {
            if !deployment.nodes.contains_key(&id) {
                effects.push(unassign(id, &name));
            }
        }
        for id in deployment.nodes.keys() {
            effects.push(assign(*id, &deployment));
        }
        self.deployments.insert(name, deployment);
        Ok((outcome, effects))
    }

    /// Removes a deployment and stops its instances. `None` if there is no such deployment.
    pub fn delete(&mut self, name: &str) -> Option<Vec<Effect>> {
        let d = self.deployments.remove(name)?;
        self.scheduler.remove_workload(&d.spec);
        if !self
            .deployments
            .values()
            .any(|o| o.spec.artifact() == d.spec.artifact())
        {
            self.scheduler.forget_artifact_size(d.spec.artifact());
        }
        let mut effects = vec![Effect::Forget(name.to_owned())];
        effects.extend(d.nodes.keys().map(|id| unassign(*id, name)));
        Some(effects)
    }

    /// A node's session opened (or the node enrolled) at `now_ms`, and it said `said` at
    /// hello about what it holds. Where an instance of it was replaced while it was away,
    /// the workload's `reconcile` rule keeps one of the two; then it gets what differs from
    /// what it said ([`crate::sync::plan`]: the assignments it lacks or holds at another
    /// generation, and an unassignment of each workload it holds and should not), or every
    /// assignment it holds when it said nothing. What was waiting for room is placed again
    /// before the plan is made, so the plan covers it. An instance the node said it holds
    /// at the current generation is admitted: the node admitted it before. Returns the plan
    /// with the effects.
    pub fn node_up(
        &mut self,
        record: NodeRecord,
        said: Option<&edge_proto::SyncState>,
        now_ms: u64,
    ) -> (crate::sync::Plan, Vec<Effect>) {
        let id = record.id;
        self.advance(now_ms);
        self.online.insert(id);
        self.offline_since.remove(&id);
        let returning: Vec<String> = self
            .deployments
            .values()
            .filter(|d| d.replaced.contains_key(&id))
            .map(|d| d.spec.name().to_owned())
            .collect();
        let mut effects = Vec::new();
        for name in returning {
            effects.extend(self.returned(&name, id, now_ms));
        }
        // After the rule: the view counts the original again if it was kept.
        let view = self.view(&record, true);
        self.nodes.insert(id, record);
        self.scheduler.upsert_node(view);
        // Where it is now, for what it holds of workloads with `near`: an exit whose event
        // was lost with an orchestrator crash is told now.
        effects.extend(self.near_changed(id));
        // What was waiting for room first: the plan then sees every instance this node
        // ends up with, and sends none of them twice.
        effects.extend(self.reconcile());
        effects.extend(self.follow_waiting());
        let held = self
            .deployments
            .values()
            .filter(|d| d.nodes.contains_key(&id))
            .map(|d| (d.spec.name(), d.generation));
        let plan = crate::sync::plan(said, held);
        for name in &plan.current {
            if let Some(d) = self.deployments.get_mut(name)
                && let Some(admission) = d.nodes.get_mut(&id)
            {
                *admission = Admission::Admitted;
                // It holds the artifact: likely in its cache, for a placement model.
                self.scheduler.holds(id, d.spec.artifact());
            }
        }
        for name in &plan.assign {
            if let Some(d) = self.deployments.get(name) {
                let message = assign(id, d);
                // Placed just now, or kept by a reconcile rule: sent already.
                if !effects.contains(&message) {
                    effects.push(message);
                }
            }
        }
        for name in &plan.unassign {
            let message = unassign(id, name);
            // A reconcile rule may have stopped it already.
            if !effects.contains(&message) {
                effects.push(message);
            }
        }
        (plan, effects)
    }

    /// A node's session ended at `now_ms`. Its instances stay where they are; a workload
    /// with `max_disconnect_secs` gets a replacement if the node stays away that long.
    pub fn node_down(&mut self, id: edge_proto::NodeId, now_ms: u64) {
        self.advance(now_ms);
        self.scheduler.set_online(id, false);
        self.online.remove(&id);
        self.offline_since.entry(id).or_insert(now_ms);
    }

    /// Time passed: every instance whose node has been away longer than its workload's
    /// `max_disconnect_secs` at `now_ms` is replaced on another node that can take it (the
    /// scheduler's filters, so never the absent node), and the original kept on record as
    /// replaced. One with nowhere to go stays as it is and is tried again at the next tick.
    /// The same `now_ms` again changes nothing. Neither node of a move after a `near` exit
    /// is replaced: the move ends when its replacement runs, or is given up when its original
    /// is back inside.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        self.advance(now_ms);
        self.scheduler.expire();
        for id in self.nodes.keys() {
            if !self.online.contains(id) {
                self.offline_since.entry(*id).or_insert(now_ms);
            }
        }
        let mut due = Vec::new();
        for d in self.deployments.values() {
            let Some(r) = d.spec.replacement() else {
                continue;
            };
            let after_ms = u64::from(r.max_disconnect_secs).saturating_mul(1000);
            for id in d.nodes.keys() {
                if let Some(since) = self.offline_since.get(id)
                    && now_ms.saturating_sub(*since) >= after_ms
                    && !d.in_move(*id)
                {
                    due.push((d.spec.name().to_owned(), *id, now_ms.saturating_sub(*since)));
                }
            }
        }
        let mut effects = Vec::new();
        for (name, id, away_ms) in due {
            effects.extend(self.replace(&name, id, away_ms, now_ms));
        }
        effects
    }

    /// Places a replacement for the instance of `name` on `absent`, if some node can take it.
    fn replace(
        &mut self,
        name: &str,
        absent: edge_proto::NodeId,
        away_ms: u64,
        now_ms: u64,
    ) -> Vec<Effect> {
        let Some(d) = self.deployments.get_mut(name) else {
            return Vec::new();
        };
        self.scheduler.release(&d.spec, absent);
        let outcome = follow::place_missing(&mut self.scheduler, d, 1);
        let Some(&replacement) = outcome.bound.first() else {
            // Nowhere to go: the instance stays bound where it is.
            if let Some(record) = self.nodes.get(&absent) {
                let view = self.view(record, false);
                self.scheduler.upsert_node(view);
            }
            return Vec::new();
        };
        d.nodes.remove(&absent);
        d.refusals.remove(&absent);
        d.replaced.insert(absent, replacement);
        for id in &outcome.bound {
            d.nodes.insert(*id, Admission::Pending);
        }
        // A move that waited for a node inside the radius is replaced like any instance.
        d.settle();
        let event = orchestrator_event(
            absent,
            now_ms,
            What::Replaced {
                workload: name.to_owned(),
                generation: d.generation,
                replacement: replacement.to_string(),
                replacement_name: name_of(&self.nodes, replacement),
                offline_secs: away_ms / 1000,
            },
        );
        let mut effects = vec![Effect::Persist(record(d)), Effect::Record(event)];
        effects.extend(outcome.bound.iter().map(|id| assign(*id, d)));
        effects
    }

    /// The replaced node `original` of `name` returned at `now_ms`: the workload's rule
    /// keeps one instance, the other is unassigned. The counterpart is the replacement, or
    /// whatever took its place since (it was itself replaced); with none left, the original
    /// stays if the workload is short of one, else it goes.
    fn returned(&mut self, name: &str, original: edge_proto::NodeId, now_ms: u64) -> Vec<Effect> {
        let Some(d) = self.deployments.get_mut(name) else {
            return Vec::new();
        };
        let Some(first) = d.replaced.remove(&original) else {
            return Vec::new();
        };
        let mut counterpart = Some(first);
        let mut steps = 0;
        while let Some(c) = counterpart
            && !d.nodes.contains_key(&c)
        {
            steps += 1;
            counterpart = d
                .replaced
                .get(&c)
                .copied()
                .filter(|_| steps <= d.replaced.len());
        }
        let rule = d
            .spec
            .replacement()
            .map(|r| r.reconcile)
            .unwrap_or_default();
        let short = match d.spec.placement() {
            Placement::Replicas(n) => d.nodes.len() < n as usize,
            Placement::PerNode => false,
        };
        // The counterpart may be moving after a `near` exit: the original takes its place, so
        // the replacement it was moving to is not wanted either.
        let mut surplus = None;
        let stopped = match (rule, counterpart) {
            (Reconcile::KeepOriginal, Some(c)) => {
                if let Some(Some(r)) = d.left_near.remove(&c) {
                    d.nodes.remove(&r);
                    self.scheduler.release(&d.spec, r);
                    surplus = Some(r);
                }
                d.nodes.remove(&c);
                self.scheduler.release(&d.spec, c);
                d.nodes.insert(original, Admission::Pending);
                Some(c)
            }
            (Reconcile::KeepReplacement, Some(_)) => Some(original),
            (_, None) if short => {
                d.nodes.insert(original, Admission::Pending);
                None
            }
            (_, None) => Some(original),
        };
        d.settle();
        let kept = if stopped == Some(original) {
            "replacement"
        } else {
            "original"
        };
        let event = orchestrator_event(
            original,
            now_ms,
            What::Reconciled {
                workload: name.to_owned(),
                generation: d.generation,
                rule: rule.as_str().to_owned(),
                kept: kept.to_owned(),
                replacement: counterpart.map(|c| c.to_string()),
                stopped: stopped.map(|s| s.to_string()),
                stopped_name: stopped.map(|s| name_of(&self.nodes, s)),
            },
        );
        let mut effects = vec![Effect::Persist(record(d)), Effect::Record(event)];
        effects.extend(stopped.map(|s| unassign(s, name)));
        effects.extend(surplus.map(|s| unassign(s, name)));
        effects
    }

    /// The registry's record of a node changed (capabilities, cordon, location). What was
    /// waiting for room is placed; what the node holds of workloads with `near` is looked at
    /// against where it is now ([`follow`]), and moves waiting for a node inside their radius
    /// are tried again.
    pub fn node_changed(&mut self, record: NodeRecord, online: bool) -> Vec<Effect> {
        let id = record.id;
        if online {
            self.online.insert(id);
        } else {
            self.online.remove(&id);
        }
        let view = self.view(&record, online);
        self.nodes.insert(id, record);
        self.scheduler.upsert_node(view);
        let mut effects = self.reconcile();
        effects.extend(self.near_changed(id));
        effects.extend(self.follow_waiting());
        effects
    }

    /// The node was deleted: its instances go elsewhere.
    pub fn node_removed(&mut self, id: edge_proto::NodeId) -> Vec<Effect> {
        self.nodes.remove(&id);
        self.online.remove(&id);
        self.offline_since.remove(&id);
        self.scheduler.remove_node(id);
        let mut effects = Vec::new();
        for d in self.deployments.values_mut() {
            d.refusals.remove(&id);
            let replaced = d.replaced.remove(&id).is_some();
            if d.nodes.remove(&id).is_some() || replaced {
                effects.push(Effect::Persist(record(d)));
            }
        }
        effects.extend(self.reconcile());
        effects.extend(self.follow_waiting());
        effects
    }

    /// Moves every instance off a node (which the caller has cordoned, so none comes back).
    pub fn drain(&mut self, id: edge_proto::NodeId) -> Vec<Effect> {
        let mut effects = Vec::new();
        for d in self.deployments.values_mut() {
            if d.nodes.remove(&id).is_some() {
                self.scheduler.release(&d.spec, id);
                effects.push(Effect::Persist(record(d)));
                effects.push(unassign(id, d.spec.name()));
            } else if d.replaced.remove(&id).is_some() {
                effects.push(Effect::Persist(record(d)));
                effects.push(unassign(id, d.spec.name()));
            }
        }
        effects.extend(self.reconcile());
        effects.extend(self.follow_waiting());
        effects
    }

    /// A node answered an assignment. A refusal of the current generation moves the instance
    /// to the next best node.
    pub fn admission(&mut self, node: edge_proto::NodeId, reply: &AdmissionReply) -> Vec<Effect> {
        let Some(d) = self.deployments.get_mut(reply.workload.as_str()) else {
            return Vec::new();
        };
        if reply.generation != d.generation || !d.nodes.contains_key(&node) {
            return Vec::new();
        }
        let Some(reason) = &reply.rejected else {
            d.nodes.insert(node, Admission::Admitted);
            return Vec::new();
        };
        d.nodes.remove(&node);
        d.refusals.insert(node, reason.to_string());
        let moving = d.moving() > 0;
        let outcome = self.scheduler.reject(&d.spec, node);
        let mut effects = Vec::new();
        for id in &outcome.bound {
            d.nodes.insert(*id, Admission::Pending);
        }
        effects.push(Effect::Persist(record(d)));
        effects.extend(outcome.bound.iter().map(|id| assign(*id, d)));
        if moving {
            // The scheduler counted a move's two instances as two: what it left missing is
            // placed now, and a move whose replacement refused waits for another node.
            effects.extend(fill(&mut self.scheduler, d));
            effects.extend(self.follow_waiting());
        }
        effects
    }

    /// A node reported a workload. One it does not hold (deleted or moved while the node was
    /// away) is stopped; one replaced while it was away waits for the `reconcile` rule. A
    /// replacement placed after a `near` exit that reports running ends its move: the
    /// original is unassigned ([`follow`]).
    pub fn report(&mut self, node: edge_proto::NodeId, report: &WorkloadReport) -> Vec<Effect> {
        if let Some(d) = self.deployments.get(report.workload.as_str())
            && d.nodes.contains_key(&node)
        {
            self.scheduler.reported(
                node,
                &d.spec,
                d.artifact.size,
                report.generation == d.generation,
                report.state,
                report.restarts,
            );
        }
        let held = self
            .deployments
            .get(report.workload.as_str())
            .is_some_and(|d| d.nodes.contains_key(&node) || d.replaced.contains_key(&node));
        if held {
            self.follow_report(node, report)
        } else if report.state == edge_proto::WorkloadState::Stopped {
            Vec::new()
        } else {
            vec![unassign(node, report.workload.as_str())]
        }
    }

    /// The time is `now_ms` (milliseconds since the Unix epoch, never going back): what the
    /// decisions that carry no time of their own (a deploy, an admission, a report) are
    /// stamped with, and what an instance's time from bind to running is measured by. The
    /// shell hands it in before each of them.
    pub fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.scheduler.now_ms = self.now_ms;
    }

    /// Places with `model` from now on (a placement model was pushed, or one loaded at
    /// start), or with the fallback for the reason given; its drift is measured afresh.
    pub fn set_place_model(&mut self, model: Predictor) {
        self.scheduler.set_model(model);
    }

    /// Whether placement uses the model or the fallback and why, with the model's drift.
    pub fn placement(&self) -> PlacementStatus {
        self.scheduler.status()
    }

    /// The shell saw `node` fetch `bytes` of an artifact in `elapsed_ms`: its download rate,
    /// for a placement model (transfers under [`MIN_FETCH_BYTES`] are ignored).
    pub fn artifact_fetched(&mut self, node: edge_proto::NodeId, bytes: u64, elapsed_ms: u64) {
        self.scheduler.fetched(node, bytes, elapsed_ms);
    }

    /// Places what every incomplete deployment is missing.
    pub fn reconcile(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        for d in self.deployments.values_mut() {
            effects.extend(fill(&mut self.scheduler, d));
        }
        effects
    }

    /// Every deployment, by name.
    pub fn list(&self) -> Vec<DeploymentView> {
        self.deployments.values().map(|d| self.show(d)).collect()
    }

    /// Whether a workload of that name is deployed.
    pub fn contains(&self, name: &str) -> bool {
        self.deployments.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<DeploymentView> {
        self.deployments.get(name).map(|d| self.show(d))
    }

    /// The assignment every holder of `name` gets, as of its current generation.
    pub fn assignment_of(&self, name: &str) -> Option<&Assignment> {
        self.deployments.get(name).map(|d| &d.assignment)
    }

    /// Every deployment's current assignment, by name.
    pub fn assignments(&self) -> impl Iterator<Item = &Assignment> {
        self.deployments.values().map(|d| &d.assignment)
    }

    /// The workloads a node holds, by name.
    pub fn held_by(&self, node: edge_proto::NodeId) -> Vec<String> {
        self.deployments
            .values()
            .filter(|d| d.nodes.contains_key(&node))
            .map(|d| d.spec.name().to_owned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.deployments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
    }

    fn show(&self, d: &Deployment) -> DeploymentView {
        // A move's original and replacement are one instance.
        let held = u32::try_from(d.nodes.len().saturating_sub(d.moving())).unwrap_or(u32::MAX);
        // Explaining looks at every node: only when something is missing.
        let (wanted, rejects) = match d.spec.placement() {
            Placement::Replicas(n) if held >= n => (n, Vec::new()),
            Placement::Replicas(n) => (n, self.scheduler.explain(&d.spec)),
            // Every node holding one, plus every node without one that matches (those the
            // scheduler explains with a capacity reason, not a mismatch).
            Placement::PerNode => {
                let rejects = self.scheduler.explain(&d.spec);
                let short = rejects.iter().filter(|r| fits_but_full(&r.reason)).count();
                (
                    held.saturating_add(u32::try_from(short).unwrap_or(u32::MAX)),
                    rejects,
                )
            }
        };
        let complete = held >= wanted;
        DeploymentView {
            name: d.spec.name().to_owned(),
            version: d.spec.version().to_owned(),
            generation: d.generation,
            spec: serde_json::to_value(&d.spec).unwrap_or_default(),
            wanted,
            nodes: d.nodes.iter().map(|(id, a)| (*id, *a)).collect(),
            refusals: d.refusals.iter().map(|(id, r)| (*id, r.clone())).collect(),
            unplaced_reasons: if complete { Vec::new() } else { rejects },
            replaced: d.replaced.iter().map(|(a, b)| (*a, *b)).collect(),
            left_near: d.left_near.iter().map(|(a, b)| (*a, *b)).collect(),
        }
    }

    /// A registry record as the scheduler sees it, with what this node holds.
    fn view(&self, record: &NodeRecord, online: bool) -> NodeView {
        let mut view = NodeView::from_record(record, online);
        view.cordoned = record.cordoned;
        for d in self.deployments.values() {
            if d.nodes.contains_key(&record.id) {
                let want = d.spec.resources();
                view.allocated = Resources {
                    cpu_millis: view.allocated.cpu_millis + want.cpu_millis,
                    memory_bytes: view.allocated.memory_bytes + want.memory_bytes,
                    disk_bytes: view.allocated.disk_bytes + want.disk_bytes,
                };
                view.instances.insert(d.spec.name().to_owned(), 1);
                view.ports_in_use.extend_from_slice(d.spec.ports());
            }
        }
        view
    }
}

/// A reason that a matching node gives when it is only short of room (or offline, cordoned,
/// refused): it would count for a per-node workload.
fn fits_but_full(reason: &RejectReason) -> bool {
    matches!(
        reason,
        RejectReason::NotOnline
            | RejectReason::Cordoned
            | RejectReason::Refused
            | RejectReason::Port { .. }
            | RejectReason::Cpu { .. }
            | RejectReason::Memory { .. }
            | RejectReason::Disk { .. }
    )
}

/// Places what `d` is missing (a move's two instances counted once), after dropping what no
/// longer holds of its moves.
fn fill(scheduler: &mut Placer, d: &mut Deployment) -> Vec<Effect> {
    d.settle();
    // The common case after a reconnect: nothing missing, nothing to ask.
    if let Placement::Replicas(n) = d.spec.placement()
        && d.nodes.len() - d.moving() >= n as usize
    {
        return Vec::new();
    }
    let outcome = follow::place_missing(scheduler, d, 0);
    if outcome.bound.is_empty() {
        return Vec::new();
    }
    for id in &outcome.bound {
        d.nodes.insert(*id, Admission::Pending);
    }
    let mut effects = vec![Effect::Persist(record(d))];
    effects.extend(outcome.bound.iter().map(|id| assign(*id, d)));
    effects
}

fn record(d: &Deployment) -> DeploymentRecord {
    DeploymentRecord {
        spec: serde_json::to_value(&d.spec).unwrap_or_default(),
        generation: d.generation,
        artifact_size: d.artifact.size,
        image: d.artifact.image.clone(),
        nodes: d.nodes.keys().map(ToString::to_string).collect(),
        replaced: d
            .replaced
            .iter()
            .map(|(node, replacement)| ReplacedRecord {
                node: node.to_string(),
                replacement: replacement.to_string(),
            })
            .collect(),
        // As `settle` leaves it, whatever was changed since: what loads is consistent.
        left_near: d
            .left_near
            .iter()
            .filter(|(node, _)| d.nodes.contains_key(node))
            .map(|(node, replacement)| LeftNearRecord {
                node: node.to_string(),
                replacement: replacement
                    .filter(|r| d.nodes.contains_key(r))
                    .map(|r| r.to_string()),
            })
            .collect(),
    }
}

/// A node's name for an event, or its id if the registry no longer has it.
fn name_of(nodes: &BTreeMap<edge_proto::NodeId, NodeRecord>, id: edge_proto::NodeId) -> String {
    nodes
        .get(&id)
        .map_or_else(|| id.to_string(), |n| n.name.clone())
}

fn assign(node: edge_proto::NodeId, d: &Deployment) -> Effect {
    Effect::Send(node, OrchMsg::Assign(Box::new(d.assignment.clone())))
}

fn unassign(node: edge_proto::NodeId, name: &str) -> Effect {
    Effect::Send(
        node,
        OrchMsg::Unassign(Unassign {
            workload: text(name),
        }),
    )
}

/// The message a node gets for `spec`. The spec's own bounds are mostly the wire's; where the
/// wire is tighter, or the whole would not fit one frame, the error names the field. A
/// container's `artifact` must carry the image's platforms: without them a node would take
/// the image for an executable.
pub fn assignment(
    spec: &WorkloadSpec,
    generation: u64,
    artifact: &ArtifactFacts,
) -> Result<Assignment, SpecError> {
    let invalid = |field: &str, reason: &str| SpecError::invalid(field, reason);
    let image = match (spec.driver(), &artifact.image) {
        (Driver::Exec, _) => None,
        (Driver::Oci, None) => {
            return Err(invalid(
                "image",
                "not in the image store; push it first (edgectl image push)",
            ));
        }
        (Driver::Oci, Some(image)) => Some(
            image
                .to_wire(spec)
                .ok_or_else(|| invalid("image", "more platforms than a node can be told of"))?,
        ),
    };
    if spec.command().is_some() {
        return Err(invalid(
            "command",
            "not supported yet: the artifact itself is the executable",
        ));
    }
    let args = spec
        .args()
        .iter()
        .map(|a| Str::new(a.as_str()))
        .collect::<Option<Vec<_>>>()
        .and_then(Seq::new)
        .ok_or_else(|| invalid("args", "too many or too long"))?;
    let env = spec
        .env()
        .iter()
        .map(|(k, v)| Some((Str::new(k.as_str())?, Str::new(v.as_str())?)))
        .collect::<Option<Vec<_>>>()
        .and_then(Seq::new)
        .ok_or_else(|| invalid("env", "a name over 128 bytes or a value over 4096"))?;
    let working_dir = match spec.working_dir() {
        Some(d) => Some(Str::new(d).ok_or_else(|| invalid("working_dir", "over 1024 bytes"))?),
        None => None,
    };
    let health = match spec.health() {
        Some(h) => Some(health(h).ok_or_else(|| invalid("health", "probe too long"))?),
        None => None,
    };
    let expose = spec
        .expose()
        .iter()
        .map(expose)
        .collect::<Option<Vec<_>>>()
        .and_then(Seq::new)
        .ok_or_else(|| {
            invalid(
                "expose",
                "too many routes, or a host or path prefix too long",
            )
        })?;
    let resources = spec.resources();
    let a = Assignment {
        workload: text(spec.name()),
        version: text(spec.version()),
        generation,
        artifact: *spec.artifact().as_bytes(),
        artifact_size: artifact.size,
        args,
        env,
        working_dir,
        cpu_millis: Some(u32::try_from(resources.cpu_millis).unwrap_or(u32::MAX)),
        memory_bytes: Some(resources.memory_bytes),
        disk_bytes: (resources.disk_bytes > 0).then_some(resources.disk_bytes),
        restart: match spec.restart() {
            RestartPolicy::Always => edge_proto::RestartPolicy::Always,
            RestartPolicy::OnFailure => edge_proto::RestartPolicy::OnFailure,
            RestartPolicy::Never => edge_proto::RestartPolicy::Never,
        },
        health,
        expose,
        scale_to_zero_idle_secs: spec.scale_to_zero().map(|s| s.idle_secs),
        image,
    };
    if edge_proto::try_encode(&OrchMsg::Assign(Box::new(a.clone()))).is_err() {
        return Err(invalid(
            "args",
            "args, env, health and expose together exceed one 64 KiB frame",
        ));
    }
    Ok(a)
}

/// A route as the wire carries it; `None` if a value is over the wire's bound, which the
/// spec's validation rules out.
fn expose(e: &Expose) -> Option<edge_proto::Expose> {
    Some(edge_proto::Expose {
        port: e.port,
        host: match e.host.as_deref() {
            Some(h) => Some(Str::new(h)?),
            None => None,
        },
        path_prefix: match e.path_prefix.as_deref() {
            Some(p) => Some(Str::new(p)?),
            None => None,
        },
        weight: e.weight,
        timeout_secs: e.timeout_secs,
        retries: e.retries,
        cache: e.cache,
        stale_if_offline_secs: e.stale_if_offline_secs,
        balance: match e.balance {
            Balance::PeakEwma => edge_proto::Balance::PeakEwma,
            Balance::RoundRobin => edge_proto::Balance::RoundRobin,
            Balance::LeastRequests => edge_proto::Balance::LeastRequests,
        },
    })
}

fn health(h: &HealthCheck) -> Option<HealthProbe> {
    let check = match &h.probe {
        Probe::Http { port, path } => edge_proto::HealthCheck::Http {
            port: *port,
            path: Str::new(path.as_str())?,
        },
        Probe::Tcp { port } => edge_proto::HealthCheck::Tcp { port: *port },
        Probe::Exec { command, args } => edge_proto::HealthCheck::Exec {
            command: Str::new(command.as_str())?,
            args: Seq::new(
                args.iter()
                    .map(|a| Str::new(a.as_str()))
                    .collect::<Option<Vec<_>>>()?,
            )?,
        },
    };
    Some(HealthProbe {
        check,
        interval_secs: h.interval_secs,
        timeout_secs: h.timeout_secs,
        success_threshold: u8::try_from(h.success_threshold).ok()?,
        failure_threshold: u8::try_from(h.failure_threshold).ok()?,
    })
}
