//! The deployments controller: placements become assignments, refusals move instances,
//! sessions get their assignments again, drains and deletions move or stop instances, and
//! everything it persists loads back to the same state.

mod common;

use common::{GIB, MIB, spec};
use edge_proto::{
    AdmissionReply, Applied, Assignment, NodeId, OrchMsg, SyncMode, SyncState, WorkloadReport,
    WorkloadState, text,
};
use orchestrator_core::deploy::{Admission, DeploymentRecord, Deployments, Effect, assignment};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::image::{ArtifactFacts, ImageFacts, PlatformFacts};
use orchestrator_core::scheduler::RejectReason;
use orchestrator_core::workload::{Arch, ArtifactDigest};
use serde_json::json;
use std::collections::BTreeSet;

fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

fn node(i: u8) -> NodeRecord {
    let stored = json!({
        "id": id(i).to_string(),
        "name": format!("node-{i}"),
        "enrolled_unix": 0,
        "last_seen_unix": 0,
        "info": {
            "arch": "x86_64", "os": "linux", "os_version": "", "kernel": "", "hostname": "",
            "cpus": 2, "cpu_model": "",
            "memory_bytes": 2 * GIB, "disk_bytes": 32 * GIB, "disk_free_bytes": 16 * GIB,
            "accelerators": [], "board": null,
            "labels": {"site": if i.is_multiple_of(2) { "berlin" } else { "paris" }},
            "location": null
        }
    });
    serde_json::from_str(&stored.to_string()).expect("a node record")
}

/// A controller over nodes 0..n, all online.
fn fleet(n: u8) -> Deployments {
    Deployments::load(Vec::new(), (0..n).map(|i| (node(i), true))).expect("loads")
}

fn assigned_to(effects: &[Effect]) -> BTreeSet<NodeId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(id, OrchMsg::Assign(_)) => Some(*id),
            _ => None,
        })
        .collect()
}

fn unassigned_from(effects: &[Effect]) -> BTreeSet<NodeId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(id, OrchMsg::Unassign(_)) => Some(*id),
            _ => None,
        })
        .collect()
}

fn holders(d: &Deployments, name: &str) -> BTreeSet<NodeId> {
    d.get(name)
        .expect("deployed")
        .nodes
        .iter()
        .map(|(id, _)| *id)
        .collect()
}

fn records(effects: &[Effect]) -> Vec<DeploymentRecord> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn reply(name: &str, generation: u64, rejected: Option<&str>) -> AdmissionReply {
    AdmissionReply {
        workload: text(name),
        generation,
        rejected: rejected.map(text),
    }
}

#[test]
fn a_deploy_persists_then_assigns_and_a_repeat_changes_nothing() {
    let mut d = fleet(4);
    let (outcome, effects) = d
        .apply(spec(json!({"replicas": 3})), 1000)
        .expect("deploys");
    assert_eq!(outcome.bound.len(), 3);
    assert!(
        matches!(effects.first(), Some(Effect::Persist(_))),
        "persisted before anything is sent: {effects:?}"
    );
    let to = assigned_to(&effects);
    assert_eq!(to.len(), 3);
    assert_eq!(to, holders(&d, "web"));
    let Some(Effect::Send(_, OrchMsg::Assign(a))) = effects.get(1) else {
        panic!("an assignment: {effects:?}");
    };
    assert_eq!((a.workload.as_str(), a.generation), ("web", 1));
    assert_eq!(a.artifact_size, 1000);
    assert_eq!(a.memory_bytes, Some(256 * MIB));

    let (_, again) = d
        .apply(spec(json!({"replicas": 3})), 1000)
        .expect("deploys");
    assert!(again.is_empty(), "the same spec again does nothing");
    let view = d.get("web").expect("deployed");
    assert_eq!((view.generation, view.wanted), (1, 3));
    assert!(view.unplaced_reasons.is_empty());
}

#[test]
fn a_refusal_moves_the_instance_and_the_reason_is_kept() {
    let mut d = fleet(3);
    let (_, effects) = d.apply(spec(json!({"replicas": 2})), 0).expect("deploys");
    let first: Vec<NodeId> = assigned_to(&effects).into_iter().collect();
    let spare = (0..3)
        .map(id)
        .find(|n| !first.contains(n))
        .expect("one spare");

    // A reply to an older generation is ignored.
    assert!(
        d.admission(first[0], &reply("web", 0, Some("old")))
            .is_empty()
    );
    assert!(
        d.admission(first[1], &reply("web", 1, None)).is_empty(),
        "an admission needs nothing done"
    );
    let effects = d.admission(first[0], &reply("web", 1, Some("memory: 10 free")));
    assert_eq!(assigned_to(&effects), BTreeSet::from([spare]));
    assert_eq!(records(&effects).len(), 1, "the move is persisted");
    let view = d.get("web").expect("deployed");
    assert_eq!(
        view.nodes,
        {
            let mut v = vec![(first[1], Admission::Admitted), (spare, Admission::Pending)];
            v.sort();
            v
        },
        "the admitted one stays, the spare is pending"
    );
    assert_eq!(view.refusals, [(first[0], "memory: 10 free".to_owned())]);

    // Nowhere left to go: the instance is unplaced and the refusal is the reason.
    let effects = d.admission(spare, &reply("web", 1, Some("disk")));
    assert!(assigned_to(&effects).is_empty());
    let view = d.get("web").expect("deployed");
    assert_eq!(view.nodes.len(), 1);
    assert!(
        view.unplaced_reasons
            .iter()
            .any(|r| r.node == spare && r.reason == RejectReason::Refused)
    );
}

#[test]
fn offline_nodes_keep_their_instances_and_get_them_again_on_reconnect() {
    let mut d = fleet(2);
    d.apply(spec(json!({"placement": "per-node"})), 0)
        .expect("deploys");
    d.node_down(id(0), 0);
    assert_eq!(
        holders(&d, "web").len(),
        2,
        "nothing moves while a node is away"
    );
    let effects = d.node_up(node(0), None, 0).1;
    assert_eq!(assigned_to(&effects), BTreeSet::from([id(0)]));
    assert!(records(&effects).is_empty(), "nothing changed to persist");
}

/// What a node says at hello: these workloads at these generations, all it holds.
fn said(applied: &[(&str, u64)]) -> SyncState {
    SyncState {
        applied: applied
            .iter()
            .map(|(w, g)| Applied {
                workload: text(w),
                generation: *g,
            })
            .collect(),
        complete: true,
        outbox_next: 1,
        outbox_oldest: 1,
        outbox_fresh: false,
    }
}

#[test]
fn a_node_that_says_what_it_holds_gets_only_what_changed() {
    let mut d = fleet(2);
    d.apply(spec(json!({"placement": "per-node"})), 0)
        .expect("deploys");
    d.node_down(id(0), 0);
    // Back with what it had: nothing to send, and it counts as admitted.
    let (plan, effects) = d.node_up(node(0), Some(&said(&[("web", 1)])), 0);
    assert_eq!(plan.mode, SyncMode::Changes);
    assert!(assigned_to(&effects).is_empty(), "{effects:?}");
    assert!(unassigned_from(&effects).is_empty(), "{effects:?}");
    let view = d.get("web").expect("deployed");
    assert!(view.nodes.contains(&(id(0), Admission::Admitted)));
    // Again, the same: still nothing (applying a sync twice changes nothing).
    d.node_down(id(0), 0);
    let (_, effects) = d.node_up(node(0), Some(&said(&[("web", 1)])), 0);
    assert!(effects.iter().all(|e| !matches!(e, Effect::Send(..))));

    // A new version and a deletion while it was away.
    d.node_down(id(0), 0);
    d.apply(
        spec(json!({"placement": "per-node", "version": "2.0.0"})),
        0,
    )
    .expect("deploys");
    let (plan, effects) = d.node_up(node(0), Some(&said(&[("web", 1), ("old", 4)])), 0);
    assert_eq!(plan.assign, ["web"], "{plan:?} {:?}", d.get("web"));
    assert_eq!(plan.unassign, ["old"]);
    let Some(Effect::Send(_, OrchMsg::Assign(a))) = effects
        .iter()
        .find(|e| matches!(e, Effect::Send(to, OrchMsg::Assign(_)) if *to == id(0)))
    else {
        panic!("an assignment: {effects:?}");
    };
    assert_eq!(a.generation, 2);
    assert_eq!(unassigned_from(&effects), BTreeSet::from([id(0)]));

    // One that cannot say everything gets everything.
    d.node_down(id(0), 0);
    let mut partial = said(&[("web", 2)]);
    partial.complete = false;
    let (plan, effects) = d.node_up(node(0), Some(&partial), 0);
    assert_eq!(plan.mode, SyncMode::Snapshot);
    assert_eq!(assigned_to(&effects), BTreeSet::from([id(0)]));
}

#[test]
fn a_new_node_gets_what_was_waiting_for_room() {
    let mut d = fleet(1);
    let (outcome, _) = d.apply(spec(json!({"replicas": 2})), 0).expect("deploys");
    assert_eq!(outcome.unplaced(), 1);
    let waiting = d.get("web").expect("deployed");
    assert_eq!(waiting.unplaced_reasons.len(), 1);
    assert_eq!(
        waiting.unplaced_reasons[0].reason,
        RejectReason::AlreadyRuns
    );
    let effects = d.node_up(node(1), None, 0).1;
    assert_eq!(assigned_to(&effects), BTreeSet::from([id(1)]));
    assert!(d.get("web").expect("deployed").unplaced_reasons.is_empty());
}

#[test]
fn drain_moves_instances_and_cordon_keeps_them_away() {
    let mut d = fleet(3);
    d.apply(spec(json!({"replicas": 2})), 0).expect("deploys");
    let victim = *holders(&d, "web").iter().next().expect("a holder");
    let mut cordoned = node(victim.0[0]);
    cordoned.cordoned = true;
    let effects = d.node_changed(cordoned, true);
    assert!(effects.is_empty(), "cordoning alone moves nothing");
    let effects = d.drain(victim);
    assert_eq!(unassigned_from(&effects), BTreeSet::from([victim]));
    assert_eq!(assigned_to(&effects).len(), 1);
    assert!(!assigned_to(&effects).contains(&victim));
    assert!(!holders(&d, "web").contains(&victim));
    assert_eq!(holders(&d, "web").len(), 2);
    assert!(d.held_by(victim).is_empty());
}

#[test]
fn delete_forgets_and_stops_everywhere() {
    let mut d = fleet(3);
    d.apply(spec(json!({"replicas": 3})), 0).expect("deploys");
    let effects = d.delete("web").expect("existed");
    assert_eq!(effects[0], Effect::Forget("web".into()));
    assert_eq!(unassigned_from(&effects).len(), 3);
    assert!(d.get("web").is_none());
    assert!(d.delete("web").is_none());
    // Room is free again.
    let (outcome, _) = d
        .apply(spec(json!({"name": "other", "replicas": 3})), 0)
        .expect("deploys");
    assert!(outcome.is_complete());
}

#[test]
fn a_report_of_something_the_node_does_not_hold_stops_it() {
    let mut d = fleet(2);
    d.apply(spec(json!({"replicas": 1})), 0).expect("deploys");
    let holder = *holders(&d, "web").iter().next().expect("a holder");
    let other = if holder == id(0) { id(1) } else { id(0) };
    let report = |name: &str, state| WorkloadReport {
        workload: text(name),
        generation: 1,
        state,
        restarts: 0,
        pid: Some(7),
        exit_code: None,
        message: text(""),
    };
    assert!(
        d.report(holder, &report("web", WorkloadState::Running))
            .is_empty()
    );
    assert_eq!(
        unassigned_from(&d.report(other, &report("web", WorkloadState::Running))),
        BTreeSet::from([other])
    );
    assert_eq!(
        unassigned_from(&d.report(holder, &report("gone", WorkloadState::Running))),
        BTreeSet::from([holder])
    );
    assert!(
        d.report(holder, &report("gone", WorkloadState::Stopped))
            .is_empty(),
        "already stopped"
    );
}

#[test]
fn a_changed_spec_is_a_new_generation_on_the_nodes_that_fit_it() {
    let mut d = fleet(4);
    d.apply(spec(json!({"replicas": 4})), 0).expect("deploys");
    let (_, effects) = d
        .apply(
            spec(json!({"version": "2", "replicas": 4, "requirements": {"labels": {"site": "berlin"}}})),
            0,
        )
        .expect("deploys");
    let berlin = BTreeSet::from([id(0), id(2)]);
    assert_eq!(assigned_to(&effects), berlin);
    assert_eq!(unassigned_from(&effects), BTreeSet::from([id(1), id(3)]));
    let view = d.get("web").expect("deployed");
    assert_eq!((view.generation, view.version.as_str()), (2, "2"));
    assert_eq!(holders(&d, "web"), berlin);
    assert_eq!(
        view.unplaced_reasons.len(),
        4,
        "two short, every node says why"
    );
}

#[test]
fn a_deleted_node_s_instances_go_elsewhere() {
    let mut d = fleet(3);
    d.apply(spec(json!({"replicas": 2})), 0).expect("deploys");
    let gone = *holders(&d, "web").iter().next().expect("a holder");
    let effects = d.node_removed(gone);
    assert_eq!(assigned_to(&effects).len(), 1);
    assert!(!holders(&d, "web").contains(&gone));
    assert_eq!(holders(&d, "web").len(), 2);
}

#[test]
fn what_is_persisted_loads_back_the_same() {
    let mut d = fleet(3);
    let mut stored = std::collections::BTreeMap::new();
    let mut keep = |effects: Vec<Effect>| {
        for e in effects {
            match e {
                Effect::Persist(r) => {
                    stored.insert(r.name().expect("named").to_owned(), r);
                }
                Effect::Forget(name) => {
                    stored.remove(&name);
                }
                Effect::Send(..) | Effect::Record(_) => {}
            }
        }
    };
    keep(d.apply(spec(json!({"replicas": 2})), 5).expect("deploys").1);
    keep(
        d.apply(
            spec(json!({"name": "edge", "placement": "per-node",
                        "health": {"http": {"port": 8080, "path": "/healthz"}},
                        "env": {"A": "b"}, "args": ["--x"], "ports": [8080]})),
            7,
        )
        .expect("deploys")
        .1,
    );
    keep(d.apply(spec(json!({"name": "tmp"})), 0).expect("deploys").1);
    keep(d.delete("tmp").expect("existed"));
    let loaded = Deployments::load(
        stored.into_values().collect(),
        (0..3).map(|i| (node(i), false)),
    )
    .expect("loads");
    let shown = |d: &Deployments| {
        d.list()
            .into_iter()
            .map(|v| {
                let nodes: Vec<NodeId> = v.nodes.iter().map(|(id, _)| *id).collect();
                (v.name, v.generation, v.spec, nodes)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&loaded), shown(&d));
    assert_eq!(loaded.len(), 2);
}

#[test]
fn a_damaged_record_is_a_load_error_naming_it() {
    let bad = DeploymentRecord {
        spec: json!({
            "name": "broken", "version": "1",
            "resources": {"cpu_millis": 100, "memory_bytes": 16 << 20}
        }),
        generation: 1,
        artifact_size: 0,
        image: None,
        nodes: Vec::new(),
        replaced: Vec::new(),
        left_near: Vec::new(),
    };
    let err = Deployments::load(vec![bad], [(node(0), true)]).expect_err("refused");
    assert_eq!(err.name, "broken");
    assert!(err.reason.contains("artifact"), "{err}");
}

#[test]
fn routes_and_scale_to_zero_reach_the_node_as_written() {
    let web = spec(json!({
        "expose": [
            {"port": 8080, "host": "Shop.Example", "path_prefix": "/api", "weight": 5,
             "timeout_secs": 9, "retries": 1, "cache": false, "stale_if_offline_secs": 60,
             "balance": "round-robin"},
            {"port": 8081, "path_prefix": "/"},
            {"port": 8082, "host": "[2001:DB8::1]", "balance": "least-requests"},
        ],
        "scale_to_zero": {"idle_secs": 600}
    }));
    let a = assignment(&web, 1, &0.into()).expect("fits the wire");
    let routes: Vec<_> = a
        .expose
        .as_slice()
        .iter()
        .map(|e| {
            (
                e.port,
                e.host.as_ref().map(|h| h.as_str().to_owned()),
                e.path_prefix.as_ref().map(|p| p.as_str().to_owned()),
                e.weight,
                e.timeout_secs,
                e.retries,
                e.cache,
                e.stale_if_offline_secs,
                e.balance,
            )
        })
        .collect();
    use edge_proto::Balance::*;
    assert_eq!(
        routes,
        [
            (
                8080,
                Some("shop.example".into()),
                Some("/api".into()),
                5,
                9,
                1,
                false,
                60,
                RoundRobin
            ),
            (
                8081,
                None,
                Some("/".into()),
                100,
                30,
                2,
                true,
                86_400,
                PeakEwma
            ),
            (
                8082,
                Some("2001:db8::1".into()),
                None,
                100,
                30,
                2,
                true,
                86_400,
                LeastRequests
            ),
        ]
    );
    assert_eq!(a.scale_to_zero_idle_secs, Some(600));
    let plain = assignment(&spec(json!({})), 1, &0.into()).expect("fits");
    assert!(plain.expose.as_slice().is_empty());
    assert_eq!(plain.scale_to_zero_idle_secs, None);

    // Sixteen routes of the longest host and prefix fit one frame.
    let host = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    let routes: Vec<_> = (0..16)
        .map(|i| json!({"port": 8000 + i, "host": host, "path_prefix": format!("/{i:x}{}", "p".repeat(1021))}))
        .collect();
    let a = assignment(&spec(json!({"expose": routes})), 1, &0.into())
        .expect("sixteen full routes fit");
    assert_eq!(a.expose.as_slice().len(), 16);
}

#[test]
fn what_the_wire_cannot_carry_is_a_spec_error_with_its_field() {
    let with_command = spec(json!({"command": "run.sh"}));
    let err = assignment(&with_command, 1, &0.into()).expect_err("refused");
    assert_eq!(err.field(), Some("command"));
    let long_name = "A".repeat(200);
    let err =
        assignment(&spec(json!({"env": {long_name: "x"}})), 1, &0.into()).expect_err("refused");
    assert_eq!(err.field(), Some("env"));
    // 64 args of 4 KiB are each within the spec's bounds, but not one frame.
    let args: Vec<String> = (0..64).map(|_| "x".repeat(4000)).collect();
    let err = assignment(&spec(json!({"args": args})), 1, &0.into()).expect_err("refused");
    assert_eq!(err.field(), Some("args"));
    let mut d = fleet(1);
    assert!(d.apply(with_command, 0).is_err());
    assert!(d.is_empty(), "a refused spec leaves nothing behind");
}

fn image_facts(arch: &[Arch]) -> ImageFacts {
    ImageFacts {
        platforms: arch
            .iter()
            .enumerate()
            .map(|(i, a)| PlatformFacts {
                arch: *a,
                manifest: ArtifactDigest::parse(&format!("sha256:{:064x}", i + 1))
                    .expect("a digest"),
                manifest_size: 500 + i as u64,
                download_bytes: MIB,
                unpacked_bytes: 3 * MIB,
            })
            .collect(),
    }
}

#[test]
fn a_container_is_assigned_with_its_image_s_platforms_and_loads_back() {
    let oci = || spec(json!({"driver": "oci", "image": common::DIGEST, "artifact": null}));
    let err = assignment(&oci(), 1, &0.into()).expect_err("no image facts");
    assert_eq!(err.field(), Some("image"));
    assert!(err.to_string().contains("edgectl image push"), "{err}");

    let mut d = fleet(2);
    // An image only for aarch64 goes nowhere on x86_64 nodes, and says why.
    let arm_only = ArtifactFacts {
        size: 300,
        image: Some(image_facts(&[Arch::Aarch64])),
    };
    let (out, _) = d.apply(oci(), arm_only).expect("valid");
    assert!(out.bound.is_empty());
    let view = d.get("web").expect("deployed");
    assert!(
        view.unplaced_reasons.iter().all(|r| r.reason
            == RejectReason::ImageArch {
                have: "x86_64".into()
            }),
        "{:?}",
        view.unplaced_reasons
    );

    // The same image with an x86_64 platform too: a new generation, placed, and every node
    // told of both platforms, to pick its own.
    let both = ArtifactFacts {
        size: 300,
        image: Some(image_facts(&[Arch::Aarch64, Arch::X86_64])),
    };
    let (out, effects) = d.apply(oci(), both.clone()).expect("valid");
    assert_eq!(out.bound.len(), 1);
    let sent: Vec<&Assignment> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(_, OrchMsg::Assign(a)) => Some(&**a),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    let image = sent[0]
        .image
        .as_ref()
        .expect("a container assignment carries its image");
    let arches: Vec<&str> = image
        .platforms
        .as_slice()
        .iter()
        .map(|p| p.arch.as_str())
        .collect();
    assert_eq!(arches, ["aarch64", "x86_64"]);
    assert_eq!(image.platforms.as_slice()[1].manifest_size, 501);
    assert!(!image.allow_setuid, "the spec did not allow setuid files");
    assert!(
        !image.read_only_root,
        "a writable layer unless the spec says"
    );
    assert_eq!(sent[0].artifact_size, 300);
    assert_eq!(
        ArtifactDigest::parse(common::DIGEST).map(|d| *d.as_bytes()),
        Some(sent[0].artifact)
    );
    // Applying the same again changes nothing.
    assert!(d.apply(oci(), both).expect("valid").1.is_empty());

    let stored: Vec<DeploymentRecord> = records(&effects);
    assert!(
        stored[0].image.is_some(),
        "the platforms are stored with the deployment"
    );
    let loaded = Deployments::load(stored, (0..2).map(|i| (node(i), true))).expect("loads");
    assert_eq!(loaded.assignment_of("web"), d.assignment_of("web"));
}
