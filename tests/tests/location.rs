//! Live location with the real gpsd: a node whose receiver (gpsfake replaying a recorded
//! drive into Debian's gpsd) drives out of a workload's `near` radius. The orchestrator
//! follows where the node is (its record, its fix, its track, with the fix lost for a
//! while on the way), and a workload with `follow_near` moves to a node inside the radius,
//! the original kept until the new one runs. Then the van drives on with its link cut: the
//! leg reaches the track when the link returns, with the times it was driven.

use edge_tests::gpsd::{FakeGps, Replay};
use edge_tests::nmea::Drive;
use edge_tests::relay::Relay;
use edge_tests::{PATIENCE, TestNode, TestOrchestrator, eventually, node_config};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;

/// Polls `check` every 50 ms until it holds or `within` has passed; whether it held.
async fn until<F: Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
    }
}

/// Where the drive starts: the workload's `near` point.
const START: (f64, f64) = (52.5200, 13.4050);
/// The drive is played ten times faster than it was driven: 50 km/h becomes about 139 m
/// a second, still well below the 300 m/s a receiver's fix may jump.
const PACE: f64 = 10.0;

async fn node(orch: &TestOrchestrator, name: &str) -> Value {
    let (status, node) = orch.api("GET", &format!("/v1/nodes/{name}"), None).await;
    assert_eq!(status, 200, "{node}");
    node
}

async fn track(orch: &TestOrchestrator, name: &str) -> Vec<Value> {
    let (status, track) = orch
        .api("GET", &format!("/v1/nodes/{name}/track"), None)
        .await;
    assert_eq!(status, 200, "{track}");
    track["points"].as_array().cloned().unwrap_or_default()
}

/// The nodes the API lists an instance of `workload` on, with their states.
async fn instances(orch: &TestOrchestrator, workload: &str) -> Vec<(String, String)> {
    let (_, w) = orch
        .api("GET", &format!("/v1/workloads/{workload}"), None)
        .await;
    w["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["node"].as_str()?.into(), i["state"].as_str()?.into())))
        .collect()
}

/// The orchestrator's events of `kind` about `node`.
async fn decided(orch: &TestOrchestrator, node: &str, kind: &str) -> Vec<Value> {
    let (_, events) = orch
        .api("GET", &format!("/v1/events?node={node}"), None)
        .await;
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// Degrees east of `START` a point is, in metres (the drive heads due east).
fn east_m(point: &Value) -> f64 {
    let lon = point["lon"].as_f64().expect("lon");
    (lon - START.1).to_radians() * 6_371_008.8 * START.0.to_radians().cos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drives_away_is_followed_and_its_workload_moves_to_a_node_inside() {
    let orch = TestOrchestrator::start().await;
    let token = orch.token(2);
    let (van_dir, shop_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );

    // The van waits at the start, its receiver reporting a fix every (played) second.
    let waiting = Drive::from(START.0, START.1).parked_jittering(600, 3.0);
    let mut gps = FakeGps::start(&waiting, Replay::faster(PACE).looping());
    // The van's link, to cut.
    let link = Relay::start(orch.orch.quic_addr).await;
    let (van, van_board) = TestNode::spawn_with_board(node_config(
        "van",
        van_dir.path(),
        link.addr,
        Some((&token, &orch.ca_hash())),
        &format!(
            "location = {{ source = \"gpsd\", gpsd = \"{}\", report_min_secs = 1 }}",
            gps.addr()
        ),
    ));
    // The shop, at a fixed point inside the radius; cordoned until the van runs the
    // workload, so that it starts on the van.
    let shop = TestNode::spawn(node_config(
        "shop",
        shop_dir.path(),
        orch.orch.quic_addr,
        Some((&token, &orch.ca_hash())),
        "location = { lat = 52.5210, lon = 13.4100 }",
    ));
    for name in ["van", "shop"] {
        assert!(
            eventually(PATIENCE, || orch.online(name)).await.is_some(),
            "{name} online"
        );
    }
    let (status, body) = orch.api("POST", "/v1/nodes/shop/cordon", None).await;
    assert_eq!(status, 200, "{body}");

    // The van's position reaches the orchestrator from its receiver.
    let located = until(PATIENCE, || async {
        let van = node(&orch, "van").await;
        // gpsd's first report of a receiver is 2D; a parked van reports no change after.
        let fix = &van["location_fix"];
        fix["source"] == "gpsd" && (fix["quality"] == "2d" || fix["quality"] == "3d")
    })
    .await;
    let seen = node(&orch, "van").await;
    assert!(located, "the van's fix on its record: {seen}");
    assert!(east_m(&seen["location"]).abs() < 50.0, "{seen}");
    assert!(
        seen["location_fix"]["age_secs"].as_u64().is_some(),
        "{seen}"
    );

    let digest = orch.artifact(b"#!/bin/sh\nexec sleep 600\n").await;
    let spec = json!({
        "name": "kiosk",
        "version": "1.0.0",
        "artifact": digest,
        "replicas": 1,
        "resources": {"cpu_millis": 50, "memory_bytes": 16 << 20},
        "requirements": {
            "near": {"lat": START.0, "lon": START.1, "radius_km": 1.0},
            "follow_near": true
        }
    });
    let (status, body) = orch.api("POST", "/v1/workloads", Some(spec)).await;
    assert_eq!(status, 201, "{body}");
    let on_van = until(PATIENCE, || async {
        instances(&orch, "kiosk").await == [("van".to_owned(), "running".to_owned())]
    })
    .await;
    assert!(on_van, "{:?}", instances(&orch, "kiosk").await);
    let (status, body) = orch.api("POST", "/v1/nodes/shop/uncordon", None).await;
    assert_eq!(status, 200, "{body}");

    // The van drives 3 km east, loses its fix for 30 s on the way, and drives on.
    let journey = Drive::from(START.0, START.1)
        .straight(90.0, 50.0, 216)
        .fix_lost(30)
        .straight(90.0, 50.0, 60)
        .parked(600);
    gps.play(&journey, Replay::faster(PACE));

    // The kiosk follows the area: it runs on the shop, and the van's instance is gone.
    let moved = until(2 * PATIENCE, || async {
        instances(&orch, "kiosk").await == [("shop".to_owned(), "running".to_owned())]
    })
    .await;
    assert!(
        moved,
        "{:?}; van events {:?}",
        instances(&orch, "kiosk").await,
        decided(&orch, "van", "left_near").await
    );
    let left = decided(&orch, "van", "left_near").await;
    assert_eq!(left.len(), 1, "told once: {left:?}");
    assert_eq!(left[0]["outcome"], "moving", "{left:?}");
    // Past the 1 km radius when it was seen, as said to the metre: a point half a metre past
    // it reads 1.0.
    assert!(
        left[0]["distance_km"].as_f64().is_some_and(|d| d >= 1.0),
        "{left:?}"
    );
    let followed = decided(&orch, "van", "followed").await;
    assert_eq!(followed.len(), 1, "{followed:?}");
    assert_eq!(followed[0]["to_name"], "shop", "{followed:?}");

    // The whole drive is on the track, in order, with the fix lost and found again.
    let done = until(2 * PATIENCE, || async {
        track(&orch, "van")
            .await
            .last()
            .is_some_and(|p| p["quality"] == "3d" && east_m(p) > 3_500.0)
    })
    .await;
    let points = track(&orch, "van").await;
    assert!(done, "the end of the drive on the track: {points:#?}");
    let qualities: Vec<&str> = points
        .iter()
        .filter_map(|p| p["quality"].as_str())
        .collect();
    let lost = qualities
        .iter()
        .position(|q| *q == "none")
        .expect("the fix loss is on the track");
    assert!(
        qualities[lost..].contains(&"3d"),
        "and the fix came back: {qualities:?}"
    );
    let driving: Vec<f64> = points
        .iter()
        .filter(|p| p["quality"] == "3d")
        .map(east_m)
        .collect();
    assert!(
        driving.windows(2).all(|w| w[1] >= w[0] - 50.0),
        "eastwards, oldest first: {driving:?}"
    );
    assert!(
        driving.len() >= 10,
        "a point at least every report_min_secs while it moves: {driving:?}"
    );
    assert!(points.iter().all(|p| p["source"] == "gpsd"), "{points:#?}");

    // The van's record is where it ended, and so is its own status.
    let van_now = node(&orch, "van").await;
    assert!(east_m(&van_now["location"]) > 3_500.0, "{van_now}");
    assert_eq!(van_now["location_fix"]["quality"], "3d", "{van_now}");
    let shown = van_board
        .get()
        .location
        .expect("the van's /status location");
    assert_eq!((shown.source, shown.quality), ("gpsd", "3d"));

    // Out of coverage: the link is cut, and the van drives 1 km north.
    let end = *journey.positions().last().expect("a drive");
    link.link.cut();
    assert!(
        eventually(PATIENCE, || !orch.online("van")).await.is_some(),
        "the van offline"
    );
    let cut_ms = edge_tests::now_ms();
    let north = Drive::from(end.lat, end.lon)
        .straight(0.0, 50.0, 72)
        .parked(600);
    gps.play(&north, Replay::faster(PACE));
    let far_north = end.lat + 0.008;
    assert!(
        eventually(PATIENCE, || van_board
            .get()
            .location
            .is_some_and(|l| l.lat > far_north))
        .await
        .is_some(),
        "the van drove north: {:?}",
        van_board.get().location
    );
    let heal_ms = edge_tests::now_ms();
    link.link.heal();
    // Back in coverage: the leg arrives with the times it was driven.
    let synced = until(2 * PATIENCE, || async {
        track(&orch, "van")
            .await
            .iter()
            .any(|p| p["lat"].as_f64().is_some_and(|lat| lat > far_north))
    })
    .await;
    let points = track(&orch, "van").await;
    assert!(synced, "the offline leg on the track: {points:#?}");
    let offline: Vec<&Value> = points
        .iter()
        .filter(|p| {
            p["at_ms"]
                .as_u64()
                .is_some_and(|t| (cut_ms..=heal_ms).contains(&t))
        })
        .collect();
    assert!(
        offline.len() >= 3,
        "points recorded while the link was cut, with their own times: {points:#?}"
    );
    assert!(
        offline
            .windows(2)
            .all(|w| w[1]["lat"].as_f64() >= w[0]["lat"].as_f64()),
        "northwards, in order: {offline:#?}"
    );
    let van_now = node(&orch, "van").await;
    assert!(
        van_now["location"]["lat"]
            .as_f64()
            .is_some_and(|lat| lat > far_north),
        "{van_now}"
    );
    drop(gps);
    for n in [van, shop] {
        tokio::time::timeout(Duration::from_secs(30), n.stop())
            .await
            .expect("the node stops")
            .expect("cleanly");
    }
}
