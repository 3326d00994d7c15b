//! The session machine when a node that has a live session dials again: the same machine
//! coming back replaces its dead connection; a copy of its identity on another machine is
//! refused, and the conflict is kept for the operator to see.

use edge_proto::{
    Capabilities, Hello, Intent, LimitsKind, List, NodeId, NodeMsg, OrchMsg, RejectCode,
    RuntimeInfo, Text, encode, text,
};
use orchestrator_core::fleet::{CONFLICT_SHOWN_SECS, Fleet, NodeInfo, NodeRecord, SessionId};
use orchestrator_core::session::{
    Action, Ctx, Event, LIVENESS_WINDOW, Liveness, NodeSigner, ServerSession, SignError,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const NODE: NodeId = NodeId([7; 16]);
const T0: u64 = 1_800_000_000;

/// Sessions here never enroll, so nothing is signed.
#[derive(Debug)]
struct NoSigner;

impl NodeSigner for NoSigner {
    fn sign_node_csr(&self, _: &[u8], _: NodeId, _: SystemTime) -> Result<Vec<u8>, SignError> {
        Err(SignError::Internal("no CA in this test".into()))
    }

    fn ca_der(&self) -> &[u8] {
        &[]
    }
}

fn caps() -> Capabilities {
    Capabilities {
        arch: text("aarch64"),
        os: text("linux"),
        os_version: Text::new(),
        kernel: Text::new(),
        hostname: text("pi"),
        cpus: 4,
        cpu_model: Text::new(),
        memory_bytes: 1 << 29,
        disk_bytes: 1 << 34,
        disk_free_bytes: 1 << 33,
        accelerators: List::new(),
        board: None,
        labels: List::new(),
        location: None,
    }
}

fn fleet() -> Fleet {
    Fleet::new(
        Vec::new(),
        vec![NodeRecord {
            id: NODE,
            name: "shop-1".into(),
            enrolled_unix: T0,
            last_seen_unix: T0,
            info: NodeInfo::from(&caps()),
            load: None,
            cordoned: false,
            position: None,
            rev: 1,
        }],
    )
}

/// The world one session lives in: the registry and the wall clock.
struct World {
    fleet: Fleet,
    now_unix: u64,
}

impl World {
    fn new() -> Self {
        Self {
            fleet: fleet(),
            now_unix: T0,
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            fleet: &mut self.fleet,
            ca: &NoSigner,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(self.now_unix),
            fresh_id: NodeId([9; 16]),
        }
    }

    /// A connection of `NODE` from `remote` that has said hello.
    fn dial(&mut self, id: SessionId, remote: &str) -> (ServerSession, Vec<Action>) {
        let mut s = ServerSession::new(id, Some(NODE), some_instant())
            .with_remote(remote.parse::<SocketAddr>().expect("addr"));
        let hello = encode(&NodeMsg::Hello(Hello {
            versions: List::from_iter([1]),
            intent: Intent::Session,
            node_id: Some(NODE),
            agent: text("edge-node/test"),
            sync: None,
        }));
        s.handle_frame(&hello[4..], &mut self.ctx());
        let actions = drain(&mut s);
        (s, actions)
    }
}

/// An instant for a session to start at: its value does not matter, since no test here
/// reaches the hello deadline it sets.
#[allow(clippy::disallowed_methods)]
fn some_instant() -> Instant {
    Instant::now()
}

fn drain(s: &mut ServerSession) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn welcomed(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Send(OrchMsg::Welcome(_))))
}

#[test]
fn a_node_without_a_live_session_is_welcomed_at_once() {
    let mut w = World::new();
    let (first, actions) = w.dial(1, "192.0.2.1:4000");
    assert!(welcomed(&actions));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CheckLiveness { .. }))
    );
    assert_eq!(first.node(), Some(NODE));
    assert_eq!(w.fleet.session_of(NODE), Some(1));
}

#[test]
fn a_second_connection_waits_while_the_first_is_watched() {
    let mut w = World::new();
    w.dial(1, "192.0.2.1:4000");
    let (second, actions) = w.dial(2, "198.51.100.9:5000");
    assert_eq!(
        actions,
        vec![Action::CheckLiveness {
            session: 1,
            window: LIVENESS_WINDOW,
        }]
    );
    assert_eq!(second.node(), None, "not a session yet");
    assert_eq!(
        w.fleet.session_of(NODE),
        Some(1),
        "the first keeps it meanwhile"
    );
}

#[test]
fn a_copy_is_refused_while_the_live_session_stays() {
    let mut w = World::new();
    let (mut first, _) = w.dial(1, "192.0.2.1:4000");
    let (mut copy, _) = w.dial(2, "198.51.100.9:5000");
    copy.handle_liveness(1, Liveness::Live, &mut w.ctx());
    let actions = drain(&mut copy);
    let remote: SocketAddr = "198.51.100.9:5000".parse().expect("addr");
    assert!(
        matches!(
            &actions[..],
            [
                Action::Send(OrchMsg::Reject(r)),
                Action::Event(Event::IdentityConflict { node: NODE, remote: Some(from), refused: 1 }),
                Action::Close(Some(RejectCode::IdentityConflict), _),
            ] if r.code == RejectCode::IdentityConflict
                && r.message.as_str().contains("enroll it again")
                && *from == remote
        ),
        "{actions:?}"
    );
    assert!(copy.is_closed());
    copy.handle_closed(&mut w.ctx());
    assert!(
        drain(&mut copy).is_empty(),
        "the refused copy's close changes nothing"
    );
    assert_eq!(w.fleet.session_of(NODE), Some(1));
    assert_eq!(first.node(), Some(NODE), "the live session never noticed");
    assert!(drain(&mut first).is_empty());

    // Every refusal counts, and the conflict is shown for a while after the last.
    w.now_unix += 300;
    let (mut again, _) = w.dial(3, "198.51.100.9:5001");
    again.handle_liveness(1, Liveness::Live, &mut w.ctx());
    let conflict = w
        .fleet
        .conflict(NODE, w.now_unix)
        .expect("a conflict")
        .clone();
    assert_eq!(
        (conflict.first_unix, conflict.last_unix, conflict.refused),
        (T0, T0 + 300, 2)
    );
    assert_eq!(
        conflict.remote,
        Some("198.51.100.9:5001".parse().expect("addr"))
    );
    assert!(
        w.fleet
            .conflict(NODE, T0 + 300 + CONFLICT_SHOWN_SECS)
            .is_some()
    );
    assert!(
        w.fleet
            .conflict(NODE, T0 + 301 + CONFLICT_SHOWN_SECS)
            .is_none()
    );
}

#[test]
fn a_node_back_on_a_new_connection_replaces_its_silent_one() {
    for old in [Liveness::Silent, Liveness::Gone] {
        let mut w = World::new();
        let (mut first, _) = w.dial(1, "192.0.2.1:4000");
        let (mut back, _) = w.dial(2, "192.0.2.1:4001");
        back.handle_liveness(1, old, &mut w.ctx());
        let actions = drain(&mut back);
        assert_eq!(
            actions[..2],
            [
                Action::Event(Event::SessionReplaced { node: NODE, old }),
                Action::CloseReplaced(1),
            ]
        );
        assert!(welcomed(&actions));
        assert_eq!(back.node(), Some(NODE));
        assert_eq!(w.fleet.session_of(NODE), Some(2));
        assert!(w.fleet.conflict(NODE, w.now_unix).is_none());
        // The replaced session's close leaves the node online on its new one.
        first.handle_closed(&mut w.ctx());
        assert!(drain(&mut first).is_empty());
        assert!(w.fleet.is_online(NODE));
    }
}

#[test]
fn a_session_that_ends_while_watched_makes_way() {
    let mut w = World::new();
    let (mut first, _) = w.dial(1, "192.0.2.1:4000");
    let (mut back, _) = w.dial(2, "192.0.2.1:4001");
    first.handle_closed(&mut w.ctx());
    // Whatever the watch saw last, the session it watched is gone now.
    back.handle_liveness(1, Liveness::Live, &mut w.ctx());
    assert!(welcomed(&drain(&mut back)));
    assert_eq!(w.fleet.session_of(NODE), Some(2));
}

#[test]
fn an_answer_about_another_session_is_ignored() {
    let mut w = World::new();
    w.dial(1, "192.0.2.1:4000");
    let (mut second, _) = w.dial(2, "192.0.2.1:4001");
    second.handle_liveness(7, Liveness::Silent, &mut w.ctx());
    assert!(drain(&mut second).is_empty());
    assert_eq!(second.node(), None);
    assert_eq!(w.fleet.session_of(NODE), Some(1));
}

#[test]
fn a_deleted_node_is_refused_without_a_watch() {
    let mut w = World::new();
    w.dial(1, "192.0.2.1:4000");
    assert!(w.fleet.delete_node(NODE).is_some());
    let (s, actions) = w.dial(2, "192.0.2.1:4001");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send(OrchMsg::Reject(r)) if r.code == RejectCode::UnknownNode
        )),
        "{actions:?}"
    );
    assert!(s.is_closed());
}

fn renew_frame(csr: &[u8]) -> Vec<u8> {
    encode(&NodeMsg::Renew(Box::new(edge_proto::RenewRequest {
        csr_der: edge_proto::Der::new(csr.to_vec()).expect("fits"),
    })))[4..]
        .to_vec()
}

#[test]
fn a_renewal_is_for_the_node_of_the_session_and_only_once_established() {
    let mut w = World::new();
    let (mut s, _) = w.dial(1, "192.0.2.1:4000");
    s.handle_frame(&renew_frame(&[0x30, 0x00]), &mut w.ctx());
    let actions = drain(&mut s);
    assert!(
        matches!(&actions[..], [Action::Renew(node, req)] if *node == NODE && req.csr_der.as_slice() == [0x30, 0x00]),
        "{actions:?}"
    );
    assert!(!s.is_closed(), "a renewal leaves the session as it was");

    // Before a hello there is no node to renew for.
    let mut early = ServerSession::new(2, Some(NODE), some_instant());
    early.handle_frame(&renew_frame(&[0x30, 0x00]), &mut w.ctx());
    assert!(
        drain(&mut early).iter().any(|a| matches!(
            a,
            Action::Send(OrchMsg::Reject(r)) if r.code == RejectCode::Malformed
        )),
        "a renewal before the session is a protocol error"
    );
}

#[test]
fn a_node_deleted_during_its_session_gets_no_certificate() {
    let mut w = World::new();
    let (mut s, _) = w.dial(1, "192.0.2.1:4000");
    assert!(w.fleet.delete_node(NODE).is_some());
    s.handle_frame(&renew_frame(&[0x30, 0x00]), &mut w.ctx());
    let actions = drain(&mut s);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Renew(..))),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send(OrchMsg::Reject(r)) if r.code == RejectCode::UnknownNode
        )),
        "{actions:?}"
    );
}

#[test]
fn a_node_s_container_runtimes_and_model_operators_are_kept_through_its_capability_reports() {
    let mut fleet = fleet();
    let runtime = RuntimeInfo {
        limits: LimitsKind::CgroupV2,
        container_runtimes: [text("crun"), text("runc")].into_iter().collect(),
        model_operators: [text("Gemm"), text("Relu")].into_iter().collect(),
    };
    assert!(
        fleet.update_runtime(NODE, runtime.clone()).is_some(),
        "a change to store"
    );
    let info = |f: &Fleet| f.node(NODE).expect("known").info.clone();
    assert_eq!(info(&fleet).container_runtimes, ["crun", "runc"]);
    assert_eq!(info(&fleet).model_operators, ["Gemm", "Relu"]);
    assert_eq!(info(&fleet).limits.as_deref(), Some("cgroup-v2"));
    assert!(
        fleet.update_runtime(NODE, runtime).is_none(),
        "the same again: nothing"
    );
    fleet
        .update_capabilities(NODE, &caps(), T0 + 10)
        .expect("valid capabilities");
    assert_eq!(info(&fleet).container_runtimes, ["crun", "runc"]);
    assert_eq!(info(&fleet).model_operators, ["Gemm", "Relu"]);
    let none = RuntimeInfo {
        limits: LimitsKind::CgroupV2,
        container_runtimes: List::new(),
        model_operators: List::new(),
    };
    assert!(fleet.update_runtime(NODE, none).is_some());
    assert!(info(&fleet).container_runtimes.is_empty());
    assert!(info(&fleet).model_operators.is_empty());
}

/// A moving node's positions, from its outbox: the newest wins whatever order they arrive
/// in, a fix loss makes the node's location unknown for placement while the record keeps
/// the last fix, and capabilities (with the config's fallback) do not undo a position.
#[test]
fn the_newest_position_is_where_the_node_is_and_a_lost_fix_is_unknown() {
    use edge_proto::{FixQuality, Location, LocationReport, LocationSource};
    use orchestrator_core::events::TrackPoint;
    let mut fleet = fleet();
    let point = |lat: f64, quality: FixQuality| {
        TrackPoint::from_report(&LocationReport {
            location: Location {
                lat,
                lon: 13.4,
                alt_m: None,
            },
            source: LocationSource::Gpsd,
            quality,
            accuracy_m: Some(3.0),
            fix_ms: Some(T0 * 1000),
        })
        .expect("on the globe")
    };
    let record = |fleet: &Fleet| fleet.node(NODE).expect("enrolled").clone();

    assert!(
        fleet
            .update_position(NODE, &point(52.5, FixQuality::ThreeD), 2_000)
            .is_some()
    );
    assert_eq!(record(&fleet).info.location.map(|l| l.lat), Some(52.5));
    assert!(
        fleet
            .update_position(NODE, &point(52.4, FixQuality::ThreeD), 1_000)
            .is_none(),
        "an older point, synced late, is track only"
    );
    assert_eq!(record(&fleet).info.location.map(|l| l.lat), Some(52.5));

    let mut with_fallback = caps();
    with_fallback.location = Some(Location {
        lat: 1.0,
        lon: 1.0,
        alt_m: None,
    });
    fleet
        .update_capabilities(NODE, &with_fallback, T0 + 1)
        .expect("valid");
    assert_eq!(
        record(&fleet).info.location.map(|l| l.lat),
        Some(52.5),
        "the fallback does not move a node that reports positions"
    );

    assert!(
        fleet
            .update_position(NODE, &point(52.6, FixQuality::None), 3_000)
            .is_some()
    );
    let lost = record(&fleet);
    assert_eq!(lost.info.location, None, "unknown for `near`");
    let kept = lost.position.expect("the last fix is kept");
    assert_eq!(
        (kept.point.lat, kept.point.quality.as_str()),
        (52.6, "none")
    );
    assert_eq!(kept.at_ms, 3_000);
}
