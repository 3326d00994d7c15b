//! The scheduler core against its promises: it never overcommits a node, every placement meets
//! every requirement, replicas spread, a partial placement says why for every node, and the
//! same input gives the same placement. Examples first, then properties over generated fleets.

mod common;

use common::{DIGEST, GIB, MIB, spec};
use std::collections::{BTreeMap, BTreeSet};

use edge_proto::NodeId;
use orchestrator_core::scheduler::{
    Fit, LatLon, LeastAllocated, NodeView, Outcome, RejectReason, Resources, Scheduler, Score,
    haversine_km,
};
use orchestrator_core::workload::{Arch, Placement, WorkloadSpec};
use proptest::prelude::*;
use serde_json::json;

const BERLIN: LatLon = LatLon {
    lat: 52.52,
    lon: 13.405,
};
const POTSDAM: LatLon = LatLon {
    lat: 52.39,
    lon: 13.06,
};
const PARIS: LatLon = LatLon {
    lat: 48.8566,
    lon: 2.3522,
};

/// Unique ids whose order is unrelated to `i`: a bijection of u128.
fn id(i: u32) -> NodeId {
    NodeId(
        u128::from(i)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            .to_be_bytes(),
    )
}

/// An online 4-CPU, 4 GiB, 32 GiB-free x86_64 node with nothing on it.
fn node(i: u32) -> NodeView {
    NodeView {
        id: id(i),
        name: format!("node-{i}"),
        online: true,
        cordoned: false,
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        devices: Vec::new(),
        location: None,
        capacity: Resources {
            cpu_millis: 4000,
            memory_bytes: 4 * GIB,
            disk_bytes: 32 * GIB,
        },
        allocated: Resources::default(),
        instances: BTreeMap::new(),
        ports_in_use: Vec::new(),
        history: Default::default(),
    }
}

fn reasons(out: &Outcome) -> BTreeMap<NodeId, RejectReason> {
    out.rejects
        .iter()
        .map(|r| (r.node, r.reason.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Examples.

#[test]
fn replicas_spread_one_per_node() {
    let mut s = Scheduler::new((0..3).map(node));
    let out = s.place(&spec(json!({"replicas": 3})));
    assert_eq!(out.wanted, 3);
    assert!(out.is_complete() && out.rejects.is_empty());
    let distinct: BTreeSet<NodeId> = out.bound.iter().copied().collect();
    assert_eq!(distinct.len(), 3);
    for i in 0..3 {
        assert_eq!(s.instances_of("web", id(i)), 1);
        assert_eq!(
            s.allocated(id(i)),
            Some(Resources {
                cpu_millis: 500,
                memory_bytes: 256 * MIB,
                disk_bytes: 0
            })
        );
    }
    // More replicas than nodes: instances never share a node, and each says so.
    let more = spec(json!({"replicas": 6}));
    let out = s.place(&more);
    assert_eq!((out.wanted, out.bound.len()), (3, 0));
    assert!(
        out.rejects
            .iter()
            .all(|r| r.reason == RejectReason::AlreadyRuns)
    );
    assert_eq!(out.rejects.len(), 3);
    assert_eq!(s.instances("web"), 3);
    // A second placement of a complete workload adds nothing.
    let out = s.place(&spec(json!({"replicas": 3})));
    assert_eq!(out, Outcome::default());
}

#[test]
fn the_least_allocated_node_wins() {
    let mut busy = node(0);
    busy.allocated = Resources {
        cpu_millis: 3000,
        memory_bytes: 3 * GIB,
        disk_bytes: 0,
    };
    let mut s = Scheduler::new([busy, node(1)]);
    let out = s.place(&spec(json!({})));
    assert_eq!(out.bound, [id(1)]);
}

#[test]
fn ties_go_to_the_lowest_node_id() {
    let nodes: Vec<NodeView> = (0..10).map(node).collect();
    let lowest = nodes.iter().map(|n| n.id).min().expect("nodes");
    let mut s = Scheduler::new(nodes);
    assert_eq!(s.place(&spec(json!({}))).bound, [lowest]);
}

#[test]
fn near_prefers_the_closer_node_and_excludes_the_far_one() {
    let mut berlin = node(0);
    berlin.location = Some(BERLIN);
    let mut potsdam = node(1);
    potsdam.location = Some(POTSDAM);
    let mut paris = node(2);
    paris.location = Some(PARIS);
    let nowhere = node(3);
    let mut s = Scheduler::new([potsdam, paris, nowhere, berlin]);
    let w = spec(json!({
        "replicas": 2,
        "requirements": {"near": {"lat": 52.52, "lon": 13.40, "radius_km": 50}}
    }));
    let out = s.place(&w);
    assert_eq!(out.bound, [id(0), id(1)], "Berlin first, then Potsdam");
    assert!(out.rejects.is_empty());
    assert!(
        matches!(s.why_not(&w, id(2)), Some(RejectReason::TooFar { km }) if (km - 878.0).abs() < 10.0),
        "Paris is ~878 km from Berlin"
    );
    assert_eq!(s.why_not(&w, id(3)), Some(RejectReason::NoLocation));
    // With both in range full, a third replica has nowhere to go.
    let big = spec(json!({
        "name": "big",
        "replicas": 3,
        "resources": {"cpu_millis": 3000, "memory_bytes": 256 * MIB},
        "requirements": {"near": {"lat": 52.52, "lon": 13.40, "radius_km": 50}}
    }));
    let out = s.place(&big);
    assert_eq!(out.bound.len(), 2);
    let why = reasons(&out);
    assert_eq!(why.len(), 4, "every node explained: {why:?}");
    assert_eq!(why[&id(0)], RejectReason::AlreadyRuns);
    assert!(matches!(why[&id(2)], RejectReason::TooFar { .. }));
}

#[test]
fn every_reason_is_reported() {
    let mut nodes = Vec::new();
    let mut n = |i: u32, f: &dyn Fn(&mut NodeView)| {
        let mut v = node(i);
        v.labels.insert("site".into(), "berlin".into());
        v.devices = vec!["gpu".into(), "/dev/dri/renderD128".into()];
        v.location = Some(BERLIN);
        f(&mut v);
        nodes.push(v);
    };
    n(0, &|v| v.online = false);
    n(1, &|v| v.cordoned = true);
    n(2, &|v| v.arch = "riscv64".into());
    n(3, &|v| {
        v.labels.insert("site".into(), "paris".into());
    });
    n(4, &|v| v.devices = vec!["npu".into()]);
    n(5, &|v| v.location = None);
    n(6, &|v| v.location = Some(PARIS));
    n(7, &|v| v.ports_in_use = vec![8080]);
    n(8, &|v| v.allocated.cpu_millis = 3800);
    n(9, &|v| v.allocated.memory_bytes = 4 * GIB - MIB);
    n(10, &|v| v.capacity.disk_bytes = MIB);
    n(11, &|_| {});
    let mut s = Scheduler::new(nodes);
    let w = spec(json!({
        "replicas": 2,
        "ports": [8080],
        "resources": {"cpu_millis": 500, "memory_bytes": 256 * MIB, "disk_bytes": 10 * MIB},
        "requirements": {
            "arch": ["x86_64", "aarch64"],
            "labels": {"site": "berlin"},
            "devices": ["gpu"],
            "near": {"lat": 52.52, "lon": 13.40, "radius_km": 50}
        }
    }));
    let out = s.place(&w);
    assert_eq!(out.bound, [id(11)]);
    assert_eq!(out.unplaced(), 1);
    let why = reasons(&out);
    assert_eq!(why.len(), 12, "one reason per node: {why:?}");
    assert_eq!(why[&id(0)], RejectReason::NotOnline);
    assert_eq!(why[&id(1)], RejectReason::Cordoned);
    assert_eq!(
        why[&id(2)],
        RejectReason::Arch {
            have: "riscv64".into()
        }
    );
    assert_eq!(why[&id(3)], RejectReason::Label { key: "site".into() });
    assert_eq!(why[&id(4)], RejectReason::Device { want: "gpu".into() });
    assert_eq!(why[&id(5)], RejectReason::NoLocation);
    assert!(matches!(why[&id(6)], RejectReason::TooFar { .. }));
    assert_eq!(why[&id(7)], RejectReason::Port { port: 8080 });
    assert_eq!(
        why[&id(8)],
        RejectReason::Cpu {
            free: 200,
            want: 500
        }
    );
    assert_eq!(
        why[&id(9)],
        RejectReason::Memory {
            free: MIB,
            want: 256 * MIB
        }
    );
    assert_eq!(
        why[&id(10)],
        RejectReason::Disk {
            free: MIB,
            want: 10 * MIB
        }
    );
    // The node that took one cannot take the second: instances never share a node.
    assert_eq!(why[&id(11)], RejectReason::AlreadyRuns);
    assert_eq!(s.why_not(&w, id(11)), Some(RejectReason::AlreadyRuns));
    assert_eq!(s.why_not(&w, id(99)), None, "unknown node");

    let shown = serde_json::to_value(&out.rejects[0]).expect("serializes");
    assert_eq!(shown["node"], json!(out.rejects[0].node.to_string()));
    assert!(shown["reason"].is_string(), "{shown}");
    let text = RejectReason::Cpu {
        free: 200,
        want: 500,
    }
    .to_string();
    assert_eq!(text, "cpu: 200m free, 500m wanted");
}

#[test]
fn a_refused_admission_goes_to_the_next_best_node() {
    let mut s = Scheduler::new((0..3).map(node));
    let w = spec(json!({}));
    let first = s.place(&w).bound[0];
    let out = s.reject(&w, first);
    assert_eq!(out.wanted, 1);
    let second = out.bound[0];
    assert_ne!(second, first);
    assert_eq!(s.instances_of("web", first), 0);
    assert_eq!(s.allocated(first), Some(Resources::default()));
    assert_eq!(s.why_not(&w, first), Some(RejectReason::Refused));
    let third = s.reject(&w, second).bound[0];
    assert!(third != first && third != second);
    // Every node refused: nothing left, and each says so.
    let out = s.reject(&w, third);
    assert_eq!(out.unplaced(), 1);
    assert!(
        out.rejects
            .iter()
            .all(|r| r.reason == RejectReason::Refused)
    );
    assert_eq!(s.instances("web"), 0);
    // A refusal survives an update of the node, not its removal.
    s.upsert_node(node(0));
    assert_eq!(s.why_not(&w, id(0)), Some(RejectReason::Refused));
    s.forget_refusals("web");
    assert_eq!(s.why_not(&w, id(0)), None);
    assert_eq!(s.place(&w).bound.len(), 1);
}

#[test]
fn release_and_remove_workload_free_what_was_taken() {
    let mut s = Scheduler::new((0..3).map(node));
    let w = spec(json!({"replicas": 3, "ports": []}));
    let out = s.place(&w);
    assert_eq!(out.bound.len(), 3);
    assert!(s.release(&w, id(0)));
    assert_eq!(s.instances_of("web", id(0)), 0);
    assert_eq!(s.allocated(id(0)).map(|r| r.cpu_millis), Some(0));
    assert_eq!(s.place(&w).bound, [id(0)], "the missing replica comes back");
    let freed = s.remove_workload(&w);
    let mut expected = vec![(id(0), 1), (id(1), 1), (id(2), 1)];
    expected.sort();
    assert_eq!(freed, expected);
    assert_eq!(s.allocated(id(0)), Some(Resources::default()));
    assert_eq!(s.instances("web"), 0);
    assert!(!s.release(&w, id(0)));
}

#[test]
fn a_container_goes_only_where_its_image_has_a_platform() {
    let mut nodes: Vec<NodeView> = (0..4).map(node).collect();
    nodes[1].arch = "aarch64".into();
    nodes[2].arch = "arm".into();
    nodes[3].arch = "riscv64".into();
    let mut s = Scheduler::new(nodes);
    let w =
        spec(json!({"driver": "oci", "image": DIGEST, "artifact": null, "placement": "per-node"}))
            .with_image_arch(vec![Arch::Aarch64, Arch::X86_64, Arch::Arm]);
    let out = s.place(&w);
    assert_eq!(
        out.wanted, 3,
        "the three nodes the image has a platform for"
    );
    let mut expected = vec![id(0), id(1), id(2)];
    expected.sort();
    assert_eq!(out.bound, expected);
    assert!(out.is_complete());
    let why: BTreeMap<NodeId, RejectReason> = s
        .explain(&w)
        .into_iter()
        .map(|r| (r.node, r.reason))
        .collect();
    assert_eq!(
        why[&id(3)],
        RejectReason::ImageArch {
            have: "riscv64".into()
        }
    );
    assert_eq!(why[&id(3)].to_string(), "the image has no riscv64 platform");
    // The spec's own arch requirement still applies on top of the image's.
    let only_arm = spec(json!({
        "name": "arm-only", "driver": "oci", "image": DIGEST, "artifact": null,
        "placement": "per-node", "requirements": {"arch": ["arm", "riscv64"]}
    }))
    .with_image_arch(vec![Arch::Arm, Arch::X86_64]);
    let out = s.place(&only_arm);
    assert_eq!(out.bound, [id(2)]);
    let why: BTreeMap<NodeId, RejectReason> = s
        .explain(&only_arm)
        .into_iter()
        .map(|r| (r.node, r.reason))
        .collect();
    assert!(matches!(why[&id(0)], RejectReason::Arch { .. }));
    assert!(matches!(why[&id(3)], RejectReason::ImageArch { .. }));
}

#[test]
fn per_node_places_one_on_every_matching_node() {
    let mut nodes: Vec<NodeView> = (0..5).map(node).collect();
    nodes[1].arch = "aarch64".into();
    nodes[2].allocated.cpu_millis = 4000;
    let mut s = Scheduler::new(nodes);
    let w = spec(json!({"placement": "per-node", "requirements": {"arch": ["x86_64"]}}));
    let out = s.place(&w);
    assert_eq!(out.wanted, 4, "four x86_64 nodes");
    let mut expected = vec![id(0), id(3), id(4)];
    expected.sort();
    assert_eq!(out.bound, expected);
    let why = reasons(&out);
    assert_eq!(why.len(), 2);
    assert!(matches!(why[&id(1)], RejectReason::Arch { .. }));
    assert!(matches!(why[&id(2)], RejectReason::Cpu { .. }));
    // Nothing new: nothing placed, the same two reasons.
    let again = s.place(&w);
    assert_eq!((again.wanted, again.bound.len()), (1, 0));
    assert_eq!(again.rejects, out.rejects);
    // Room on node 2: it gets one, the outcome is complete and says nothing; asking still
    // explains node 1.
    let mut roomy = node(2);
    roomy.arch = "x86_64".into();
    s.upsert_node(roomy);
    let done = s.place(&w);
    assert_eq!(done.bound, [id(2)]);
    assert!(done.is_complete() && done.rejects.is_empty());
    assert_eq!(s.explain(&w).len(), 1);
    // A new node gets one.
    s.upsert_node(node(7));
    assert_eq!(s.place(&w).bound, [id(7)]);
}

#[test]
fn node_state_changes_are_seen() {
    let mut s = Scheduler::new((0..2).map(node));
    let w = spec(json!({"replicas": 2}));
    assert!(s.set_online(id(0), false));
    assert!(s.set_cordoned(id(1), true));
    assert!(!s.set_online(id(9), true));
    let out = s.place(&w);
    assert_eq!(out.bound.len(), 0);
    assert_eq!(
        reasons(&out).into_values().collect::<Vec<_>>().len(),
        2,
        "both explained"
    );
    s.set_online(id(0), true);
    s.set_cordoned(id(1), false);
    assert_eq!(s.place(&w).bound.len(), 2);
    assert!(s.remove_node(id(0)));
    assert!(!s.remove_node(id(0)));
    assert_eq!(s.len(), 1);
    assert_eq!(s.instances("web"), 1, "the removed node's instance is gone");
    let out = s.place(&w);
    assert_eq!(
        (out.wanted, out.bound.len()),
        (1, 0),
        "node-1 runs one already"
    );
    s.upsert_node(node(2));
    assert_eq!(s.place(&w).bound, [id(2)]);
}

#[test]
fn a_node_over_its_capacity_takes_only_what_it_has_none_of_left_to_give() {
    // A node whose disk filled up under its instances: more allocated than there is.
    let mut full = node(0);
    full.capacity.disk_bytes = 10 * MIB;
    full.allocated.disk_bytes = 20 * MIB;
    let mut s = Scheduler::new([full]);
    let no_disk = spec(json!({"name": "no-disk"}));
    assert_eq!(s.place(&no_disk).bound, [id(0)]);
    let disk = spec(json!({
        "name": "disk",
        "resources": {"cpu_millis": 1, "memory_bytes": MIB, "disk_bytes": 1}
    }));
    let out = s.place(&disk);
    assert_eq!(
        reasons(&out)[&id(0)],
        RejectReason::Disk { free: 0, want: 1 }
    );
    assert_eq!(s.allocated(id(0)).map(|r| r.disk_bytes), Some(20 * MIB));
}

#[test]
fn a_refusal_moves_one_instance_not_all_of_them() {
    let mut s = Scheduler::new([node(0), node(1)]);
    let w = spec(json!({"replicas": 2}));
    assert_eq!(s.place(&w).bound.len(), 2);
    let out = s.reject(&w, id(0));
    assert_eq!(out.unplaced(), 1, "no third node to move to");
    assert_eq!(s.instances_of("web", id(1)), 1, "the other one stays");
    assert_eq!(s.allocated(id(1)).map(|r| r.cpu_millis), Some(500));
    assert_eq!(s.allocated(id(0)).map(|r| r.cpu_millis), Some(0));
}

#[test]
fn instances_on_offline_nodes_still_count() {
    let mut away = node(0);
    away.online = false;
    away.instances.insert("web".into(), 2);
    let mut s = Scheduler::new([away, node(1)]);
    let out = s.place(&spec(json!({"replicas": 3})));
    assert_eq!(out.wanted, 1);
    assert_eq!(out.bound, [id(1)]);
    assert_eq!(s.node(id(0)).map(|n| n.instances_of("web")), Some(2));
}

#[test]
fn from_record_reads_the_registry() {
    use orchestrator_core::fleet::NodeRecord;
    // Built from its stored JSON so that fields others add to the registry do not break this.
    // (From text: `fleet::hex_id` borrows the id's string, which a `Value` cannot lend.)
    let stored = json!({
        "id": id(1).to_string(),
        "name": "shop-berlin-1",
        "enrolled_unix": 0,
        "last_seen_unix": 0,
        "info": {
            "arch": "aarch64",
            "os": "linux",
            "os_version": "",
            "kernel": "",
            "hostname": "",
            "cpus": 4,
            "cpu_model": "",
            "memory_bytes": 512 * MIB,
            "disk_bytes": 32 * GIB,
            "disk_free_bytes": 10 * GIB,
            "accelerators": [{"kind": "gpu", "name": "v3d", "path": "/dev/dri/renderD128"}],
            "board": null,
            "labels": {"site": "berlin"},
            "location": {"lat": 52.52, "lon": 13.405}
        }
    });
    let record: NodeRecord =
        serde_json::from_str(&stored.to_string()).expect("a stored node record");
    let v = NodeView::from_record(&record, true);
    assert_eq!(v.capacity.cpu_millis, 4000);
    assert_eq!(v.capacity.disk_bytes, 10 * GIB);
    assert_eq!(v.devices, ["/dev/dri/renderD128", "gpu"]);
    assert_eq!(v.location, Some(BERLIN));
    let mut s = Scheduler::new([v]);
    let w = spec(json!({
        "requirements": {"arch": ["aarch64"], "labels": {"site": "berlin"},
                         "devices": ["gpu", "/dev/dri/renderD128"],
                         "near": {"lat": 52.5, "lon": 13.4, "radius_km": 10}}
    }));
    assert_eq!(s.place(&w).bound, [id(1)]);
}

#[test]
fn outcome_json_shape() {
    let mut busy = node(0);
    busy.ports_in_use = vec![80];
    let mut s = Scheduler::new([busy, node(1)]);
    let out = s.place(&spec(json!({"replicas": 2, "ports": [80]})));
    let v = serde_json::to_value(&out).expect("serializes");
    assert_eq!(
        v,
        json!({
            "wanted": 2,
            "bound": [id(1).to_string()],
            "rejects": [
                {"node": id(0).to_string(), "name": "node-0", "reason": "port", "port": 80},
                {"node": id(1).to_string(), "name": "node-1", "reason": "already_runs"}
            ]
        })
    );
}

// ---------------------------------------------------------------------------------------------
// The score.

/// Packs instances onto the fullest node that still fits: the opposite of the default.
#[derive(Debug)]
struct MostAllocated;

impl Score for MostAllocated {
    fn score(&self, fit: &Fit<'_>) -> f64 {
        -fit.free_share_after()
    }
}

/// What a [`Recorder`] saw of one fit, and what the default score made of it.
#[derive(Debug, Clone)]
struct Seen {
    node: NodeId,
    free: Resources,
    want: Resources,
    free_share_after: f64,
    proximity: Option<f64>,
    default_score: f64,
}

/// Remembers every fit it was asked about, and ranks like the default.
#[derive(Debug, Default)]
struct Recorder(std::cell::RefCell<Vec<Seen>>);

impl Score for Recorder {
    fn score(&self, fit: &Fit<'_>) -> f64 {
        let default_score = LeastAllocated.score(fit);
        self.0.borrow_mut().push(Seen {
            node: fit.node(),
            free: fit.free(),
            want: fit.want(),
            free_share_after: fit.free_share_after(),
            proximity: fit.proximity(),
            default_score,
        });
        default_score
    }
}

#[test]
fn another_score_changes_the_choice_but_never_what_fits() {
    // Node 0 has half its CPU and memory taken; node 1 is empty; node 2 is too full to fit.
    let mut half = node(0);
    half.allocated = Resources {
        cpu_millis: 2000,
        memory_bytes: 2 * GIB,
        disk_bytes: 0,
    };
    let mut full = node(2);
    full.allocated = Resources {
        cpu_millis: 1000,
        memory_bytes: 4 * GIB,
        disk_bytes: 0,
    };
    let fleet = [half, node(1), full];
    let w = spec(json!({}));

    let mut spread = Scheduler::new(fleet.clone());
    assert_eq!(spread.place(&w).bound, [id(1)], "the default spreads");
    let mut packed = Scheduler::with_score(MostAllocated, fleet.clone());
    assert_eq!(packed.place(&w).bound, [id(0)], "this one packs");

    // Asked for more than fits, a score still binds only where the instance fits.
    let mut packed = Scheduler::with_score(MostAllocated, fleet);
    let out = packed.place(&spec(json!({"replicas": 3})));
    assert_eq!(
        out.bound.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([id(0), id(1)])
    );
    assert!(matches!(
        reasons(&out).get(&id(2)),
        Some(RejectReason::Memory { .. })
    ));
}

#[test]
fn the_default_score_is_least_allocated_then_closeness() {
    // Berlin is busier but at the centre; Potsdam (~26 km away) is empty.
    let mut berlin = node(0);
    berlin.location = Some(BERLIN);
    berlin.allocated = Resources {
        cpu_millis: 1000,
        memory_bytes: GIB,
        disk_bytes: 0,
    };
    let mut potsdam = node(1);
    potsdam.location = Some(POTSDAM);
    let near = |radius_km: f64| {
        spec(
            json!({"requirements": {"near": {"lat": BERLIN.lat, "lon": BERLIN.lon, "radius_km": radius_km}}}),
        )
    };
    // Within 50 km, Potsdam is half-way to the edge: closeness outweighs load.
    let mut s = Scheduler::new([berlin.clone(), potsdam.clone()]);
    assert_eq!(s.place(&near(50.0)).bound, [id(0)]);
    // Within 5000 km both are about as close: the emptier node wins.
    let mut s = Scheduler::new([berlin.clone(), potsdam.clone()]);
    assert_eq!(s.place(&near(5000.0)).bound, [id(1)]);
    // And the score is what LeastAllocated says it is, for both nodes.
    let w = near(50.0);
    let free_share = |n: &NodeView| {
        let want = w.resources();
        0.5 * ((n.capacity.cpu_millis - n.allocated.cpu_millis - want.cpu_millis) as f64
            / n.capacity.cpu_millis as f64
            + (n.capacity.memory_bytes - n.allocated.memory_bytes - want.memory_bytes) as f64
                / n.capacity.memory_bytes as f64)
    };
    let recorder = Recorder::default();
    let mut s = Scheduler::with_score(recorder, [berlin.clone(), potsdam.clone()]);
    s.place(&w);
    let seen = s.score().0.borrow().clone();
    assert_eq!(seen.len(), 2, "one fit per feasible node: {seen:?}");
    for fit in seen {
        let view = if fit.node == id(0) { &berlin } else { &potsdam };
        assert_eq!(fit.want, w.resources());
        assert_eq!(
            fit.free.cpu_millis,
            view.capacity.cpu_millis - view.allocated.cpu_millis
        );
        let share = fit.free_share_after;
        assert!((share - free_share(view)).abs() < 1e-12, "{fit:?}");
        let p = fit.proximity.expect("the spec has near");
        let km = view
            .location
            .map(|l| haversine_km(l, BERLIN))
            .expect("located");
        assert!((p - (1.0 - km / 50.0)).abs() < 0.01, "{p} at {km} km");
        assert_eq!(fit.default_score, 0.5 * share + 0.5 * p);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties over generated fleets.

const SITES: [&str; 3] = ["berlin", "paris", "rome"];
const CITIES: [LatLon; 3] = [
    BERLIN,
    PARIS,
    LatLon {
        lat: 41.9,
        lon: 12.5,
    },
];

fn arb_node(i: u32) -> impl Strategy<Value = NodeView> {
    (
        (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.1),
            prop::sample::select(vec!["x86_64", "aarch64", "arm", "riscv64", "mips"]),
            prop::option::weighted(0.8, 0..SITES.len()),
            prop::option::weighted(0.5, prop::bool::ANY),
            prop::collection::btree_set(
                prop::sample::select(vec!["gpu", "npu", "/dev/video0"]),
                0..3,
            ),
        ),
        (
            prop::option::weighted(0.85, (0..CITIES.len(), -3.0..3.0f64, -3.0..3.0f64)),
            1u64..=8,
            (256 * MIB)..(8 * GIB),
            0..(16 * GIB),
            (0.0..1.0f64, 0.0..1.0f64, 0.0..1.0f64),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
        ),
    )
        .prop_map(
            move |(
                (online, cordoned, arch, site, tier, devices),
                (location, cpus, memory, disk, (fc, fm, fd), shrunk, port),
            )| {
                let mut v = node(i);
                v.online = online;
                v.cordoned = cordoned;
                v.arch = arch.into();
                if let Some(s) = site {
                    v.labels.insert("site".into(), SITES[s].into());
                }
                if let Some(t) = tier {
                    v.labels
                        .insert("tier".into(), if t { "edge" } else { "core" }.into());
                }
                v.devices = devices.into_iter().map(str::to_owned).collect();
                v.location = location.map(|(c, dlat, dlon)| LatLon {
                    lat: CITIES[c].lat + dlat,
                    lon: CITIES[c].lon + dlon,
                });
                v.capacity = Resources {
                    cpu_millis: cpus * 1000,
                    memory_bytes: memory,
                    disk_bytes: disk,
                };
                // Sometimes more is taken than there is: a node that shrank.
                let scale = if shrunk { 1.2 } else { 1.0 };
                v.allocated = Resources {
                    cpu_millis: (v.capacity.cpu_millis as f64 * fc * scale) as u64,
                    memory_bytes: (v.capacity.memory_bytes as f64 * fm * scale) as u64,
                    disk_bytes: (v.capacity.disk_bytes as f64 * fd * scale) as u64,
                };
                if port {
                    v.ports_in_use = vec![8080];
                }
                v
            },
        )
}

fn arb_fleet() -> impl Strategy<Value = Vec<NodeView>> {
    (0u32..300).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

fn arb_workload(name: String) -> impl Strategy<Value = WorkloadSpec> {
    (
        prop::option::weighted(0.8, 1u32..40),
        1u64..3000,
        MIB..(2 * GIB),
        prop::option::weighted(0.3, 0..(GIB)),
        prop::collection::btree_set(
            prop::sample::select(vec!["x86_64", "aarch64", "arm", "riscv64"]),
            0..3,
        ),
        prop::option::weighted(0.3, 0..SITES.len()),
        prop::option::weighted(0.2, prop::sample::select(vec!["gpu", "npu", "/dev/video0"])),
        prop::option::weighted(0.4, (0..CITIES.len(), 1.0..800.0f64)),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            move |(replicas, cpu, memory, disk, arch, site, devices, near, port)| {
                let mut v = json!({
                    "name": name,
                    "version": "1",
                    "artifact": DIGEST,
                    "resources": {"cpu_millis": cpu, "memory_bytes": memory},
                    "requirements": {
                        "arch": arch.into_iter().collect::<Vec<_>>(),
                        "devices": devices.into_iter().collect::<Vec<_>>(),
                    },
                });
                match replicas {
                    Some(n) => v["replicas"] = json!(n),
                    None => v["placement"] = json!("per-node"),
                }
                if let Some(d) = disk {
                    v["resources"]["disk_bytes"] = json!(d);
                }
                if let Some(s) = site {
                    v["requirements"]["labels"] = json!({"site": SITES[s]});
                }
                if let Some((c, r)) = near {
                    v["requirements"]["near"] =
                        json!({"lat": CITIES[c].lat, "lon": CITIES[c].lon, "radius_km": r});
                }
                if port {
                    v["ports"] = json!([8080]);
                }
                let bytes = serde_json::to_vec(&v).expect("serializable");
                WorkloadSpec::from_json(&bytes).expect("generated specs are valid")
            },
        )
}

fn arb_workloads() -> impl Strategy<Value = Vec<WorkloadSpec>> {
    (1usize..6).prop_flat_map(|n| {
        (0..n)
            .map(|i| arb_workload(format!("w{i}")))
            .collect::<Vec<_>>()
    })
}

/// The test's own statement of the requirements, independent of the scheduler's index.
fn meets_requirements(n: &NodeView, w: &WorkloadSpec) -> bool {
    let req = w.requirements();
    n.online
        && !n.cordoned
        && (req.arch.is_empty() || req.arch.iter().any(|a| a.as_str() == n.arch))
        && req.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v))
        && req
            .devices
            .iter()
            .all(|d| n.devices.iter().any(|x| x == d.as_str()))
        && req.near.is_none_or(|near| {
            n.location.is_some_and(|l| {
                haversine_km(
                    l,
                    LatLon {
                        lat: near.lat,
                        lon: near.lon,
                    },
                ) <= near.radius_km + 1e-6
            })
        })
}

fn fits(n: &NodeView, w: &WorkloadSpec) -> bool {
    let want = w.resources();
    let free = |cap: u64, used: u64| cap.saturating_sub(used);
    n.instances_of(w.name()) == 0
        && want.cpu_millis <= free(n.capacity.cpu_millis, n.allocated.cpu_millis)
        && want.memory_bytes <= free(n.capacity.memory_bytes, n.allocated.memory_bytes)
        && want.disk_bytes <= free(n.capacity.disk_bytes, n.allocated.disk_bytes)
        && w.ports().iter().all(|p| !n.ports_in_use.contains(p))
}

/// Whether a reason the scheduler gave is true of the node as it is now.
fn reason_holds(n: &NodeView, w: &WorkloadSpec, r: &RejectReason) -> bool {
    let req = w.requirements();
    let want = w.resources();
    match r {
        RejectReason::AlreadyRuns => n.instances_of(w.name()) > 0,
        RejectReason::NotOnline => !n.online,
        RejectReason::Cordoned => n.cordoned,
        RejectReason::Refused => false,
        RejectReason::Arch { have } => {
            *have == n.arch && !req.arch.iter().any(|a| a.as_str() == n.arch)
        }
        RejectReason::ImageArch { have } => {
            *have == n.arch && !w.image_arch().iter().any(|a| a.as_str() == n.arch)
        }
        RejectReason::Label { key } => n.labels.get(key) != req.labels.get(key),
        RejectReason::Device { want } => !n.devices.contains(want),
        RejectReason::NoLocation => req.near.is_some() && n.location.is_none(),
        RejectReason::TooFar { km } => req.near.is_some_and(|near| *km > near.radius_km - 1e-6),
        RejectReason::Port { port } => w.ports().contains(port) && n.ports_in_use.contains(port),
        RejectReason::Cpu { free, want: x } => {
            *x == want.cpu_millis
                && *free == n.capacity.cpu_millis.saturating_sub(n.allocated.cpu_millis)
                && free < x
        }
        RejectReason::Memory { free, want: x } => {
            *x == want.memory_bytes
                && *free
                    == n.capacity
                        .memory_bytes
                        .saturating_sub(n.allocated.memory_bytes)
                && free < x
        }
        RejectReason::Disk { free, want: x } => {
            *x == want.disk_bytes
                && *free == n.capacity.disk_bytes.saturating_sub(n.allocated.disk_bytes)
                && free < x
        }
    }
}

fn snapshot(s: &Scheduler) -> BTreeMap<NodeId, NodeView> {
    s.node_ids()
        .map(|id| (id, s.node(id).expect("listed node")))
        .collect()
}

fn run(fleet: &[NodeView], workloads: &[WorkloadSpec]) -> Vec<Outcome> {
    let mut s = Scheduler::new(fleet.iter().cloned());
    workloads.iter().map(|w| s.place(w)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn placements_keep_every_promise(fleet in arb_fleet(), workloads in arb_workloads()) {
        let mut s = Scheduler::new(fleet.iter().cloned());
        for w in &workloads {
            let before = snapshot(&s);
            let feasible = before
                .values()
                .filter(|n| meets_requirements(n, w) && fits(n, w))
                .count();
            let out = s.place(w);
            let after = snapshot(&s);

            // What was asked: everything missing, and never more than that.
            let matching_without = before
                .values()
                .filter(|n| meets_requirements(n, w) && n.instances_of(w.name()) == 0)
                .count();
            match w.placement() {
                Placement::Replicas(n) => prop_assert_eq!(out.wanted, n, "fresh workload"),
                Placement::PerNode => prop_assert_eq!(out.wanted as usize, matching_without),
            }
            prop_assert!(out.bound.len() <= out.wanted as usize);

            let mut placed: BTreeMap<NodeId, u64> = BTreeMap::new();
            for id in &out.bound {
                *placed.entry(*id).or_default() += 1;
            }
            for (id, n) in &placed {
                let b = &before[id];
                // Every requirement is met.
                prop_assert!(meets_requirements(b, w), "{} does not meet {:?}", b.name, w.requirements());
                // Never overcommitted: what was there plus what we added fits the capacity.
                let want = w.resources();
                let a = &after[id];
                prop_assert_eq!(a.allocated.cpu_millis, b.allocated.cpu_millis + n * want.cpu_millis);
                prop_assert_eq!(a.allocated.memory_bytes, b.allocated.memory_bytes + n * want.memory_bytes);
                prop_assert_eq!(a.allocated.disk_bytes, b.allocated.disk_bytes + n * want.disk_bytes);
                // (A node may start over its capacity, having shrunk; asking for 0 of something
                // it has none of left still fits.)
                prop_assert!(a.allocated.cpu_millis <= a.capacity.cpu_millis);
                prop_assert!(a.allocated.memory_bytes <= a.capacity.memory_bytes);
                prop_assert!(want.disk_bytes == 0 || a.allocated.disk_bytes <= a.capacity.disk_bytes);
                // A port is never taken twice on a node.
                for p in w.ports() {
                    prop_assert!(!b.ports_in_use.contains(p));
                    prop_assert_eq!(*n, 1);
                }
                prop_assert_eq!(u64::from(a.instances_of(w.name())), *n);
            }
            // Nodes we did not place on are untouched.
            for (id, a) in &after {
                if !placed.contains_key(id) {
                    prop_assert_eq!(&before[id], a);
                }
            }

            match w.placement() {
                Placement::Replicas(n) => {
                    // Instances never share a node, and enough feasible nodes take them all.
                    prop_assert!(placed.values().all(|c| *c == 1), "{:?}", placed);
                    if feasible >= n as usize {
                        prop_assert!(out.is_complete());
                    }
                    if out.is_complete() {
                        prop_assert!(out.rejects.is_empty());
                    } else {
                        // Partial: a true reason for every node, and no node could take one.
                        prop_assert_eq!(out.rejects.len(), after.len());
                        prop_assert_eq!(&out.rejects, &s.explain(w));
                        for r in &out.rejects {
                            let a = &after[&r.node];
                            prop_assert!(reason_holds(a, w, &r.reason), "{}: {:?} is not true", a.name, r.reason);
                            prop_assert!(!(meets_requirements(a, w) && fits(a, w)), "{} could take one", a.name);
                        }
                    }
                }
                Placement::PerNode => {
                    prop_assert!(placed.values().all(|c| *c == 1));
                    // Every node without an instance says why, truthfully; in the outcome when
                    // a matching node was left out, and always on asking.
                    let rejects = s.explain(w);
                    if out.is_complete() {
                        prop_assert!(out.rejects.is_empty());
                    } else {
                        prop_assert_eq!(&out.rejects, &rejects);
                    }
                    let explained: BTreeSet<NodeId> = rejects.iter().map(|r| r.node).collect();
                    for (id, a) in &after {
                        prop_assert_eq!(a.instances_of(w.name()) == 0, explained.contains(id));
                    }
                    for r in &rejects {
                        prop_assert!(reason_holds(&after[&r.node], w, &r.reason), "{:?}", r.reason);
                    }
                }
            }
            let mut sorted = out.rejects.clone();
            sorted.sort_by_key(|r| r.node);
            prop_assert_eq!(&sorted, &out.rejects);
        }
    }

    #[test]
    fn placement_is_deterministic(fleet in arb_fleet(), workloads in arb_workloads()) {
        let first = run(&fleet, &workloads);
        prop_assert_eq!(&first, &run(&fleet, &workloads));
        // Whatever order the nodes arrive in.
        let mut reversed = fleet.clone();
        reversed.reverse();
        prop_assert_eq!(&first, &run(&reversed, &workloads));
    }

    #[test]
    fn refusals_move_instances_and_keep_promises(fleet in arb_fleet(), w in arb_workload("r".into())) {
        let mut s = Scheduler::new(fleet.iter().cloned());
        let mut out = s.place(&w);
        let mut model: BTreeMap<NodeId, u32> = BTreeMap::new();
        for id in &out.bound {
            *model.entry(*id).or_default() += 1;
        }
        let mut refused = BTreeSet::new();
        // Every node refuses, one instance at a time, until nothing new is placed.
        while let Some(&node) = out.bound.first() {
            refused.insert(node);
            out = s.reject(&w, node);
            if let Some(n) = model.get_mut(&node) {
                *n -= 1;
            }
            for id in &out.bound {
                prop_assert!(!refused.contains(id), "a refusing node was tried again");
                *model.entry(*id).or_default() += 1;
            }
        }
        for v in &fleet {
            let want = model.get(&v.id).copied().unwrap_or(0);
            prop_assert_eq!(s.instances_of(w.name(), v.id), want);
        }
        for id in &refused {
            prop_assert_eq!(s.why_not(&w, *id), Some(RejectReason::Refused));
        }
        // Releasing everything gives back exactly what the fleet had.
        s.remove_workload(&w);
        for v in &fleet {
            prop_assert_eq!(s.allocated(v.id), Some(v.allocated));
        }
    }
}
