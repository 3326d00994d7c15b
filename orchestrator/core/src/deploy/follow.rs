//! Instances whose node moves out of their workload's `near` radius, and `follow_near`.
//!
//! Placing checks `near` once; nodes move after. Whenever a node's record changes or its
//! session opens, each instance it holds of a workload with `near` is looked at again, by
//! [`scheduler::reach`] (the rule placing filters with):
//! - **Outside** and not yet told: one [`What::LeftNear`], and the holder is kept in
//!   `Deployment::left_near` so that further positions outside say nothing. Without
//!   `follow_near` that is all (`stays`). With it, a replicated instance moves,
//!   make-before-break: a replacement is placed beside it ([`crate::scheduler::Scheduler::place_more`]: the
//!   scheduler's usual choice among the nodes inside the radius, never one that runs an
//!   instance), `left_near` maps the holder to it (`moving`), and the original runs on until
//!   the replacement reports `running` ([`Deployments::follow_report`]); then the original is
//!   unassigned ([`What::Followed`]). With nowhere to go it waits (`waiting`, with the
//!   scheduler's reasons) and is tried again whenever nodes change
//!   ([`Deployments::follow_waiting`], which says [`What::Following`] once it places one). A
//!   per-node instance has nowhere to move: with `follow_near` the node no longer matches,
//!   so its instance is unassigned (`stopped`) and comes back through the usual placing once
//!   the node is inside again.
//! - **Inside** again while told: [`What::BackNear`]; a replacement not yet running is
//!   unassigned (the move is cancelled), and a later exit is told again.
//! - **Unknown** (the node has no fix): nothing changes; a move under way goes on.
//!
//! A replacement in flight is in `Deployment::nodes` (bound, assigned, counted by the
//! scheduler) but not counted against `replicas`: it and its original are one instance until
//! the move ends, so `reconcile` and replacements after a disconnect count them once. A move in
//! flight is left to end on its own terms: neither of its two nodes is replaced after
//! `max_disconnect_secs`. If its replacement is refused, drained or deleted, the move waits
//! again; if its original goes (drained, deleted, refused), the replacement simply stays.
//!
//! `left_near` is stored with the deployment (`DeploymentRecord::left_near`), so after a
//! restart a move in flight ends when its replacement reports `running` (a node reports every
//! instance's state after each reconnect) or is cancelled when its original is back inside,
//! and nothing is told twice. An exit whose event was never stored (the node's position was,
//! the deployment's batch not) is told when that node's session opens again.

use super::placer::Placer;
use super::{Deployment, Deployments, Effect, assign, name_of, record, unassign};
use crate::events::{What, orchestrator_event};
use crate::scheduler::{LatLon, Outcome, Reach, RejectReason, reach};
use crate::workload::Placement;
use edge_proto::{NodeId, WorkloadReport, WorkloadState};

/// How many of the scheduler's reasons a `waiting` event quotes.
const REASONS_SHOWN: usize = 3;

impl Deployment {
    /// Replacements placed for instances whose node left the radius, not yet running.
    pub(super) fn moving(&self) -> usize {
        self.left_near.values().filter(|r| r.is_some()).count()
    }

    /// Whether `node` is one side of a move in flight: an original with a replacement placed,
    /// or that replacement.
    pub(super) fn in_move(&self, node: NodeId) -> bool {
        self.left_near.get(&node).is_some_and(Option::is_some)
            || self.left_near.values().any(|r| *r == Some(node))
    }

    /// Drops what no longer holds after instances went (refused, drained, deleted, replaced):
    /// an original that holds nothing is no longer moving, and its replacement, if any, is an
    /// instance like the others; a replacement that went leaves its move waiting.
    pub(super) fn settle(&mut self) {
        let nodes = &self.nodes;
        self.left_near
            .retain(|original, _| nodes.contains_key(original));
        for replacement in self.left_near.values_mut() {
            if replacement.is_some_and(|r| !nodes.contains_key(&r)) {
                *replacement = None;
            }
        }
    }
}

/// Places what `d` is missing, counting a move's original and replacement once;
/// `released` more of its instances were released from the scheduler and are still in
/// `d.nodes`.
pub(super) fn place_missing(scheduler: &mut Placer, d: &Deployment, released: usize) -> Outcome {
    let moving = d.moving();
    match d.spec.placement() {
        Placement::Replicas(n) if moving > 0 => {
            let held = d.nodes.len().saturating_sub(moving + released);
            let missing = (n as usize).saturating_sub(held);
            scheduler.place_more(&d.spec, u32::try_from(missing).unwrap_or(u32::MAX))
        }
        _ => scheduler.place(&d.spec),
    }
}

/// Kilometres rounded to the metre, for an event.
fn metres(km: f64) -> f64 {
    (km * 1000.0).round() / 1000.0
}

/// Why no node inside the radius took a replacement: the first few of the scheduler's
/// reasons, leaving out the nodes that run one already.
fn why_waiting(outcome: &Outcome) -> String {
    let rejects: Vec<_> = outcome
        .rejects
        .iter()
        .filter(|r| r.reason != RejectReason::AlreadyRuns)
        .collect();
    if rejects.is_empty() {
        return "no other node to place it on".to_owned();
    }
    let shown: Vec<String> = rejects
        .iter()
        .take(REASONS_SHOWN)
        .map(|r| format!("{}: {}", r.name, r.reason))
        .collect();
    let mut reason = format!(
        "no node inside the radius can take it: {}",
        shown.join("; ")
    );
    if rejects.len() > REASONS_SHOWN {
        reason.push_str(&format!(" (and {} more)", rejects.len() - REASONS_SHOWN));
    }
    reason
}

impl Deployments {
    /// Where a node is, as placing sees it.
    fn location_of(&self, node: NodeId) -> Option<LatLon> {
        let record = self.nodes.get(&node)?;
        record.info.location.map(|l| LatLon {
            lat: l.lat,
            lon: l.lon,
        })
    }

    /// `node`'s record changed or its session opened: each instance it holds of a workload
    /// with `near` is looked at against the node's location (see the module's doc).
    pub(super) fn near_changed(&mut self, node: NodeId) -> Vec<Effect> {
        let location = self.location_of(node);
        let names: Vec<String> = self
            .deployments
            .values()
            .filter(|d| d.spec.requirements().near.is_some() && d.nodes.contains_key(&node))
            .map(|d| d.spec.name().to_owned())
            .collect();
        let mut effects = Vec::new();
        for name in names {
            let Some(near) = self
                .deployments
                .get(&name)
                .and_then(|d| d.spec.requirements().near)
            else {
                continue;
            };
            match reach(near, location) {
                Reach::Unknown => {}
                Reach::Inside { km } => effects.extend(self.back_inside(&name, node, km)),
                Reach::Outside { km } => effects.extend(self.left(&name, node, km)),
            }
        }
        effects
    }

    /// `node`, which holds an instance of `name`, is `km` from its point, outside the radius.
    fn left(&mut self, name: &str, node: NodeId, km: f64) -> Vec<Effect> {
        let Some(d) = self.deployments.get(name) else {
            return Vec::new();
        };
        if d.left_near.contains_key(&node) {
            // Told already; a move, if any, is under way or waiting.
            return Vec::new();
        }
        let requirements = d.spec.requirements();
        let (Some(near), follow) = (requirements.near, requirements.follow_near) else {
            return Vec::new();
        };
        let (generation, placement) = (d.generation, d.spec.placement());
        let original = d
            .left_near
            .iter()
            .find(|(_, r)| **r == Some(node))
            .map(|(o, _)| *o);
        let mut sends = Vec::new();
        let (outcome, replacement, reason) = if let Some(original) = original {
            // A replacement that has not run yet left the radius itself: given up, and the
            // move waits for another node.
            let Some(d) = self.deployments.get_mut(name) else {
                return Vec::new();
            };
            d.nodes.remove(&node);
            d.left_near.insert(original, None);
            self.scheduler.release(&d.spec, node);
            sends.push(unassign(node, name));
            let reason = format!(
                "the replacement for {}, not yet running: placed again",
                name_of(&self.nodes, original)
            );
            ("stopped", None, Some(reason))
        } else if !follow {
            if let Some(d) = self.deployments.get_mut(name) {
                d.left_near.insert(node, None);
            }
            ("stays", None, None)
        } else if placement == Placement::PerNode {
            let Some(d) = self.deployments.get_mut(name) else {
                return Vec::new();
            };
            d.nodes.remove(&node);
            self.scheduler.release(&d.spec, node);
            sends.push(unassign(node, name));
            let reason = "per-node: the node no longer matches".to_owned();
            ("stopped", None, Some(reason))
        } else {
            let Some(d) = self.deployments.get_mut(name) else {
                return Vec::new();
            };
            let outcome = self.scheduler.place_more(&d.spec, 1);
            d.left_near.insert(node, outcome.bound.first().copied());
            for id in &outcome.bound {
                d.nodes.insert(*id, super::Admission::Pending);
                sends.push(assign(*id, d));
            }
            match outcome.bound.first() {
                Some(r) => ("moving", Some(*r), None),
                None => ("waiting", None, Some(why_waiting(&outcome))),
            }
        };
        let event = orchestrator_event(
            node,
            self.now_ms,
            What::LeftNear {
                workload: name.to_owned(),
                generation,
                distance_km: metres(km),
                radius_km: near.radius_km,
                outcome: outcome.to_owned(),
                replacement: replacement.map(|r| r.to_string()),
                replacement_name: replacement.map(|r| name_of(&self.nodes, r)),
                reason,
            },
        );
        let Some(d) = self.deployments.get(name) else {
            return Vec::new();
        };
        let mut effects = vec![Effect::Persist(record(d)), Effect::Record(event)];
        effects.extend(sends);
        effects
    }

    /// `node`, which holds an instance of `name`, is `km` from its point, inside the radius.
    fn back_inside(&mut self, name: &str, node: NodeId, km: f64) -> Vec<Effect> {
        let Some(d) = self.deployments.get_mut(name) else {
            return Vec::new();
        };
        let Some(replacement) = d.left_near.remove(&node) else {
            return Vec::new();
        };
        let Some(near) = d.spec.requirements().near else {
            return Vec::new();
        };
        if let Some(r) = replacement {
            d.nodes.remove(&r);
            self.scheduler.release(&d.spec, r);
        }
        let event = orchestrator_event(
            node,
            self.now_ms,
            What::BackNear {
                workload: name.to_owned(),
                generation: d.generation,
                distance_km: metres(km),
                radius_km: near.radius_km,
                stopped: replacement.map(|r| r.to_string()),
                stopped_name: replacement.map(|r| name_of(&self.nodes, r)),
            },
        );
        let mut effects = vec![Effect::Persist(record(d)), Effect::Record(event)];
        effects.extend(replacement.map(|r| unassign(r, name)));
        effects
    }

    /// Moves that wait for a node inside the radius are tried again: nodes changed.
    pub(super) fn follow_waiting(&mut self) -> Vec<Effect> {
        let waiting: Vec<(String, NodeId)> = self
            .deployments
            .values()
            .filter(|d| d.spec.requirements().follow_near)
            .flat_map(|d| {
                d.left_near
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(o, _)| (d.spec.name().to_owned(), *o))
            })
            .collect();
        let mut effects = Vec::new();
        for (name, original) in waiting {
            let location = self.location_of(original);
            let Some(d) = self.deployments.get_mut(&name) else {
                continue;
            };
            let Some(near) = d.spec.requirements().near else {
                continue;
            };
            // Back inside is the original's own change to tell; until then it stays put.
            if matches!(reach(near, location), Reach::Inside { .. }) {
                continue;
            }
            let outcome = self.scheduler.place_more(&d.spec, 1);
            let Some(&replacement) = outcome.bound.first() else {
                continue;
            };
            d.left_near.insert(original, Some(replacement));
            for id in &outcome.bound {
                d.nodes.insert(*id, super::Admission::Pending);
            }
            let event = orchestrator_event(
                original,
                self.now_ms,
                What::Following {
                    workload: name.clone(),
                    generation: d.generation,
                    replacement: replacement.to_string(),
                    replacement_name: name_of(&self.nodes, replacement),
                },
            );
            effects.push(Effect::Persist(record(d)));
            effects.push(Effect::Record(event));
            effects.extend(outcome.bound.iter().map(|id| assign(*id, d)));
        }
        effects
    }

    /// `node` reported an instance it holds: if that is a replacement now running, its move
    /// ends and the original is unassigned.
    pub(super) fn follow_report(&mut self, node: NodeId, report: &WorkloadReport) -> Vec<Effect> {
        if report.state != WorkloadState::Running {
            return Vec::new();
        }
        let name = report.workload.as_str();
        let Some(d) = self.deployments.get_mut(name) else {
            return Vec::new();
        };
        if report.generation != d.generation {
            return Vec::new();
        }
        let Some(original) = d
            .left_near
            .iter()
            .find(|(_, r)| **r == Some(node))
            .map(|(o, _)| *o)
        else {
            return Vec::new();
        };
        d.left_near.remove(&original);
        d.nodes.remove(&original);
        d.refusals.remove(&original);
        self.scheduler.release(&d.spec, original);
        let event = orchestrator_event(
            original,
            self.now_ms,
            What::Followed {
                workload: name.to_owned(),
                generation: d.generation,
                from: original.to_string(),
                from_name: name_of(&self.nodes, original),
                to: node.to_string(),
                to_name: name_of(&self.nodes, node),
            },
        );
        vec![
            Effect::Persist(record(d)),
            Effect::Record(event),
            unassign(original, name),
        ]
    }
}
