//! Replacement after a long disconnect, on a virtual clock: an instance whose node has been
//! away longer than `max_disconnect_secs` is placed again elsewhere, the original is kept on
//! record, and when its node returns the `reconcile` rule leaves exactly one. A node back
//! before the deadline sees nothing change.

mod common;

use common::{GIB, spec};
use edge_proto::{NodeId, OrchMsg, WorkloadReport, WorkloadState, text};
use orchestrator_core::deploy::{Deployments, Effect};
use orchestrator_core::events::{Origin, What};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::workload::{Reconcile, SpecError, WorkloadSpec};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The orchestrator's clock when the node went away, in milliseconds.
const T0: u64 = 1_765_000_000_000;

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
            "accelerators": [], "board": null, "labels": {}, "location": null
        }
    });
    serde_json::from_str(&stored.to_string()).expect("a node record")
}

fn fleet(n: u8) -> Deployments {
    Deployments::load(Vec::new(), (0..n).map(|i| (node(i), true))).expect("loads")
}

fn sends(effects: &[Effect], unassign: bool) -> BTreeSet<NodeId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(id, OrchMsg::Assign(_)) if !unassign => Some(*id),
            Effect::Send(id, OrchMsg::Unassign(_)) if unassign => Some(*id),
            _ => None,
        })
        .collect()
}

fn events(effects: &[Effect]) -> Vec<(String, What)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(r) => {
                assert_eq!(r.origin, Origin::Orchestrator);
                Some((r.node.clone(), r.what.clone()))
            }
            _ => None,
        })
        .collect()
}

fn holders(d: &Deployments) -> BTreeSet<NodeId> {
    d.get("web")
        .expect("deployed")
        .nodes
        .iter()
        .map(|(id, _)| *id)
        .collect()
}

/// Two replicas of `web` on three nodes with `extra` on top; returns the controller, the two
/// holders and the spare node.
fn deployed(extra: Value) -> (Deployments, NodeId, NodeId, NodeId) {
    let mut d = fleet(3);
    let mut fields = json!({"replicas": 2});
    for (k, v) in extra.as_object().expect("an object") {
        fields[k] = v.clone();
    }
    d.apply(spec(fields), 1000).expect("deploys");
    let held: Vec<NodeId> = holders(&d).into_iter().collect();
    let spare = (0..3).map(id).find(|n| !held.contains(n)).expect("a spare");
    (d, held[0], held[1], spare)
}

/// `away` went away at T0 and `max_disconnect_secs` (60) passed: it is replaced on `spare`.
fn replaced(rule: &str) -> (Deployments, NodeId, NodeId, NodeId) {
    let (mut d, away, stays, spare) =
        deployed(json!({"max_disconnect_secs": 60, "reconcile": rule}));
    d.node_down(away, T0);
    let effects = d.tick(T0 + 60_000);
    assert_eq!(sends(&effects, false), BTreeSet::from([spare]));
    assert!(sends(&effects, true).is_empty(), "{effects:?}");
    (d, away, stays, spare)
}

#[test]
fn an_instance_is_replaced_once_its_node_has_been_away_longer_than_the_limit() {
    let (mut d, away, stays, spare) = deployed(json!({"max_disconnect_secs": 60}));
    d.node_down(away, T0);
    assert!(d.tick(T0 + 59_999).is_empty(), "not yet");
    assert_eq!(holders(&d), BTreeSet::from([away, stays]));

    let effects = d.tick(T0 + 60_000);
    assert!(
        matches!(effects.first(), Some(Effect::Persist(r)) if r.replaced.len() == 1),
        "the original is stored as replaced before anything is sent: {effects:?}"
    );
    assert_eq!(sends(&effects, false), BTreeSet::from([spare]));
    assert!(
        sends(&effects, true).is_empty(),
        "nothing is sent to the node that is away"
    );
    assert_eq!(
        events(&effects),
        [(
            away.to_string(),
            What::Replaced {
                workload: "web".into(),
                generation: 1,
                replacement: spare.to_string(),
                replacement_name: format!("node-{}", spare.0[0]),
                offline_secs: 60,
            }
        )]
    );
    assert_eq!(holders(&d), BTreeSet::from([stays, spare]));
    let view = d.get("web").expect("deployed");
    assert_eq!(
        view.replaced,
        [(away, spare)],
        "kept on record, not forgotten"
    );
    assert!(view.unplaced_reasons.is_empty());

    assert!(d.tick(T0 + 60_000).is_empty(), "the same tick again");
    assert!(d.tick(T0 + 3_600_000).is_empty(), "and later ones");
}

#[test]
fn a_node_back_before_the_deadline_sees_no_change() {
    let (mut d, away, stays, _) = deployed(json!({"max_disconnect_secs": 60}));
    let before = d.assignment_of("web").expect("deployed").clone();
    d.node_down(away, T0);
    assert!(d.tick(T0 + 30_000).is_empty());
    let effects = d.node_up(node(away.0[0]), None, T0 + 59_000).1;
    // The same assignment, same generation: a node running it leaves the process alone.
    assert_eq!(
        effects,
        [Effect::Send(away, OrchMsg::Assign(Box::new(before)))],
        "no unassign, no new spec, nothing stored"
    );
    assert!(d.tick(T0 + 3_600_000).is_empty(), "its absence is over");
    assert_eq!(holders(&d), BTreeSet::from([away, stays]));
}

#[test]
fn without_max_disconnect_secs_an_absent_node_keeps_its_instance() {
    let (mut d, away, stays, _) = deployed(json!({}));
    d.node_down(away, T0);
    assert!(d.tick(T0 + 365 * 86_400_000).is_empty());
    assert_eq!(holders(&d), BTreeSet::from([away, stays]));
}

#[test]
fn keep_original_stops_the_replacement_and_leaves_the_original_alone() {
    let (mut d, away, stays, spare) = replaced("keep_original");
    let generation = d.get("web").expect("deployed").generation;
    let effects = d.node_up(node(away.0[0]), None, T0 + 90_000).1;
    assert_eq!(sends(&effects, true), BTreeSet::from([spare]));
    assert!(matches!(effects.first(), Some(Effect::Persist(r)) if r.replaced.is_empty()));
    // The original gets the assignment it runs, same generation: untouched.
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Send(n, OrchMsg::Assign(a)) if *n == away && a.generation == generation)));
    assert_eq!(
        events(&effects),
        [(
            away.to_string(),
            What::Reconciled {
                workload: "web".into(),
                generation,
                rule: "keep_original".into(),
                kept: "original".into(),
                replacement: Some(spare.to_string()),
                stopped: Some(spare.to_string()),
                stopped_name: Some(format!("node-{}", spare.0[0])),
            }
        )]
    );
    assert_eq!(
        holders(&d),
        BTreeSet::from([away, stays]),
        "exactly two again"
    );
    assert!(d.get("web").expect("deployed").replaced.is_empty());

    // The same session opening again decides nothing new.
    let again = d.node_up(node(away.0[0]), None, T0 + 91_000).1;
    assert!(events(&again).is_empty() && sends(&again, true).is_empty());
    assert!(d.tick(T0 + 200_000).is_empty());
}

#[test]
fn keep_replacement_stops_the_original_on_its_node() {
    let (mut d, away, stays, spare) = replaced("keep_replacement");
    let effects = d.node_up(node(away.0[0]), None, T0 + 90_000).1;
    assert_eq!(sends(&effects, true), BTreeSet::from([away]));
    assert!(
        !sends(&effects, false).contains(&away),
        "the returning node is not given it back"
    );
    let (node_hex, what) = &events(&effects)[0];
    assert_eq!(node_hex, &away.to_string());
    assert!(matches!(what, What::Reconciled { kept, stopped, .. }
        if kept == "replacement" && stopped.as_deref() == Some(away.to_string().as_str())));
    assert_eq!(holders(&d), BTreeSet::from([stays, spare]));
    let again = d.node_up(node(away.0[0]), None, T0 + 91_000).1;
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_replaced_node_reporting_its_instance_is_not_told_to_stop_before_the_rule() {
    let (mut d, away, _, _) = replaced("keep_original");
    let report = WorkloadReport {
        workload: text("web"),
        generation: 1,
        state: WorkloadState::Running,
        restarts: 0,
        pid: Some(7),
        exit_code: None,
        message: text(""),
    };
    assert!(d.report(away, &report).is_empty());
}

#[test]
fn with_nowhere_to_go_the_instance_stays_and_is_tried_at_each_tick() {
    let mut d = fleet(2);
    d.apply(spec(json!({"replicas": 2, "max_disconnect_secs": 5})), 1)
        .expect("deploys");
    d.node_down(id(0), T0);
    assert!(d.tick(T0 + 10_000).is_empty(), "no other node can take it");
    assert!(d.tick(T0 + 20_000).is_empty());
    assert_eq!(holders(&d), BTreeSet::from([id(0), id(1)]));
    // A node that can take it arrives: the next tick places the replacement there.
    d.node_up(node(2), None, T0 + 21_000);
    let effects = d.tick(T0 + 22_000);
    assert_eq!(sends(&effects, false), BTreeSet::from([id(2)]));
    assert_eq!(holders(&d), BTreeSet::from([id(1), id(2)]));
}

#[test]
fn what_is_stored_loads_back_and_the_rule_applies_after_a_restart() {
    let (mut d, away, stays, spare) = deployed(json!({"max_disconnect_secs": 60}));
    d.node_down(away, T0);
    let effects = d.tick(T0 + 60_000);
    let Some(Effect::Persist(record)) = effects.first() else {
        panic!("stored: {effects:?}");
    };
    let json = serde_json::to_string(record).expect("json");
    let record = serde_json::from_str(&json).expect("reads back");
    let nodes = (0..3).map(|i| (node(i), false));
    let mut after = Deployments::load(vec![record], nodes).expect("loads");
    assert_eq!(after.get("web").expect("loaded").replaced, [(away, spare)]);
    after.node_up(node(stays.0[0]), None, T0 + 100_000);
    after.node_up(node(spare.0[0]), None, T0 + 100_000);
    let effects = after.node_up(node(away.0[0]), None, T0 + 100_000).1;
    assert_eq!(sends(&effects, true), BTreeSet::from([spare]));
    assert_eq!(holders(&after), BTreeSet::from([away, stays]));
}

#[test]
fn after_a_restart_an_absent_node_gets_the_whole_limit_again() {
    let mut d = fleet(3);
    let (_, effects) = d
        .apply(
            spec(json!({"replicas": 2, "max_disconnect_secs": 60})),
            1000,
        )
        .expect("deploys");
    let Some(Effect::Persist(record)) = effects.first() else {
        panic!("stored: {effects:?}");
    };
    let away = *holders(&d).first().expect("held");
    let nodes = (0..3).map(|i| (node(i), id(i) != away));
    let mut after = Deployments::load(vec![record.clone()], nodes).expect("loads");
    assert!(after.tick(T0).is_empty(), "the first tick starts its clock");
    assert!(after.tick(T0 + 59_000).is_empty());
    assert_eq!(sends(&after.tick(T0 + 60_000), false).len(), 1);
}

#[test]
fn a_spec_change_or_a_drain_ends_the_record_of_a_replaced_instance() {
    let (mut d, away, _, _) = replaced("keep_original");
    let effects = d.drain(away);
    assert_eq!(sends(&effects, true), BTreeSet::from([away]));
    assert!(d.get("web").expect("deployed").replaced.is_empty());

    let (mut d, away, _, _) = replaced("keep_original");
    d.apply(
        spec(json!({"replicas": 2, "max_disconnect_secs": 60, "version": "2"})),
        1000,
    )
    .expect("deploys");
    assert!(d.get("web").expect("deployed").replaced.is_empty());
    let report = WorkloadReport {
        workload: text("web"),
        generation: 1,
        state: WorkloadState::Running,
        restarts: 0,
        pid: Some(7),
        exit_code: None,
        message: text(""),
    };
    assert_eq!(
        sends(&d.report(away, &report), true),
        BTreeSet::from([away]),
        "the old instance is stopped when its node says it runs it"
    );
}

// ---------------------------------------------------------------------------------------------
// The spec's fields.

fn base() -> Value {
    json!({
        "name": "web",
        "version": "1",
        "artifact": common::DIGEST,
        "resources": {"cpu_millis": 500, "memory_bytes": 1 << 20}
    })
}

fn parse(extra: Value) -> Result<WorkloadSpec, SpecError> {
    let mut v = base();
    for (k, x) in extra.as_object().expect("an object") {
        v[k] = x.clone();
    }
    WorkloadSpec::from_json(&serde_json::to_vec(&v).expect("json"))
}

fn refused(extra: Value, field: &str, needle: &str) {
    let e = parse(extra.clone()).expect_err(&format!("{extra} is refused"));
    assert_eq!(e.field(), Some(field), "{extra}: {e}");
    let text = e.to_string();
    assert!(text.contains(needle), "{extra}: {text}");
    assert!(
        text.len() < 300,
        "an error quotes little of the input: {text}"
    );
}

#[test]
fn the_fields_parse_with_their_default_and_show_back() {
    let spec = parse(json!({"max_disconnect_secs": 300})).expect("valid");
    let r = spec.replacement().expect("set");
    assert_eq!(
        (r.max_disconnect_secs, r.reconcile),
        (300, Reconcile::KeepOriginal)
    );
    let spec =
        parse(json!({"max_disconnect_secs": 1, "reconcile": "keep_replacement"})).expect("valid");
    assert_eq!(
        spec.replacement().map(|r| r.reconcile),
        Some(Reconcile::KeepReplacement)
    );
    assert!(
        parse(json!({"max_disconnect_secs": 31_536_000}))
            .expect("a year")
            .replacement()
            .is_some()
    );
    let shown = serde_json::to_value(&spec).expect("json");
    assert_eq!(shown["max_disconnect_secs"], json!(1));
    assert_eq!(shown["reconcile"], json!("keep_replacement"));
    let back = WorkloadSpec::from_json(&serde_json::to_vec(&shown).expect("json"));
    assert_eq!(back.expect("our own JSON parses"), spec);

    let plain = parse(json!({})).expect("valid");
    assert!(plain.replacement().is_none());
    let shown = serde_json::to_value(&plain).expect("json");
    assert_eq!(
        (&shown["max_disconnect_secs"], &shown["reconcile"]),
        (&Value::Null, &Value::Null)
    );
    assert!(parse(json!({"max_disconnect_secs": null, "reconcile": null})).is_ok());

    let toml = format!(
        "name = \"web\"\nversion = \"1\"\nartifact = \"{}\"\nreplicas = 2\n\
         max_disconnect_secs = 120\nreconcile = \"keep_original\"\n\
         [resources]\ncpu_millis = 1\nmemory_bytes = 1048576\n",
        common::DIGEST
    );
    let spec = WorkloadSpec::from_toml(&toml).expect("toml");
    assert_eq!(spec.replacement().map(|r| r.max_disconnect_secs), Some(120));
    let bad = toml.replace("= 120", "= 0");
    let e = WorkloadSpec::from_toml(&bad).expect_err("refused");
    assert_eq!(e.field(), Some("max_disconnect_secs"), "{e}");
    let bad = toml.replace("\"keep_original\"", "\"keep_both\"");
    let e = WorkloadSpec::from_toml(&bad).expect_err("refused");
    assert_eq!(e.field(), Some("reconcile"), "{e}");
}

#[test]
fn hostile_values_are_refused_naming_the_field() {
    for secs in [
        json!(0),
        json!(-1),
        json!(31_536_001),
        json!(i64::MAX),
        json!(i64::MIN),
    ] {
        refused(
            json!({ "max_disconnect_secs": secs }),
            "max_disconnect_secs",
            "out of range 1..=31536000",
        );
    }
    for secs in [
        json!(1e30),
        json!(2.5),
        json!("60"),
        json!(true),
        json!([60]),
        json!({}),
        json!(u64::MAX),
    ] {
        let extra = json!({ "max_disconnect_secs": secs });
        let e = parse(extra.clone()).expect_err("refused");
        assert_eq!(e.field(), Some("max_disconnect_secs"), "{extra}: {e}");
    }
    for rule in [
        "",
        "KEEP_ORIGINAL",
        "keep-original",
        "keep_both",
        "keep_original\0",
    ] {
        refused(
            json!({"max_disconnect_secs": 60, "reconcile": rule}),
            "reconcile",
            "keep_original",
        );
    }
    refused(
        json!({"max_disconnect_secs": 60, "reconcile": "x".repeat(200_000)}),
        "reconcile",
        "is not a rule",
    );
    for rule in [json!(1), json!(true), json!(["keep_original"])] {
        let extra = json!({"max_disconnect_secs": 60, "reconcile": rule});
        let e = parse(extra.clone()).expect_err("refused");
        assert_eq!(e.field(), Some("reconcile"), "{extra}: {e}");
    }
    refused(
        json!({"reconcile": "keep_original"}),
        "reconcile",
        "only with max_disconnect_secs",
    );
    refused(
        json!({"placement": "per-node", "max_disconnect_secs": 60}),
        "max_disconnect_secs",
        "per-node",
    );
    refused(
        json!({"placement": "per-node", "reconcile": "keep_replacement"}),
        "reconcile",
        "only with max_disconnect_secs",
    );
}
