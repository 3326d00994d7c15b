//! `location-cost`: what a node's live location costs up the link, and how long a
//! `follow_near` workload takes to follow its area when its node drives out of it.
//!
//! One orchestrator and enrolled node daemons run in this process (the `edge-tests`
//! harness); each node's receiver is a real gpsd fed by gpsfake (`edge_tests::gpsd`) playing
//! a drive written as NMEA (`edge_tests::nmea`).
//!
//! 1. Bytes up the link. Three nodes at once, each dialing through its own counting UDP
//!    relay, for `--secs`: a van driving at 50 km/h (gpsd, the default report policy: a
//!    report every `report_min_secs` = 5 s, since it moves 50 m in 3.6 s), a parked van (gpsd,
//!    a few metres of receiver jitter, so only the `report_max_secs` heartbeat), and the
//!    anchor, the same node with a fixed `location = { lat, lon }` idling: what liveness
//!    costs (its own heartbeat comes every 300 s, outside a shorter window). The drives are
//!    played in real time. A parked node at the default reports 12 times an hour: waiting
//!    for that is not a benchmark, so the parked node runs with `report_max_secs =
//!    --parked-max-secs`, the bytes of one report are its excess over the anchor divided by
//!    its reports, and its hourly figure at the default is the anchor's plus 12 of those.
//!    Reports are counted on the orchestrator's side (the track, `GET /v1/nodes/NAME/track`).
//!    Bytes per hour add 28 B of IP and UDP header per packet to the UDP payload.
//! 2. Following a `near` radius. A shop (fixed location) and a van (gpsd) stand inside a
//!    1 km radius; a `follow_near` workload runs on the van; the van drives out east at
//!    50 km/h, the drive played `--pace` times faster than real time. The crossing is the
//!    first epoch farther than the radius from the centre, divided by the pace, from when
//!    gpsd came back with the new leg. Then we poll the API every 20 ms until the workload
//!    runs on the shop and the van's instance is gone. The parts: crossing to the
//!    orchestrator's `left_near` event (its `at_ms`), crossing to the replacement running.
//!    Once per `--report-min-secs` value and round, alternating; medians printed.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use clap::Parser;
use edge_benches::stats::median_f64;
use edge_tests::gpsd::{FakeGps, Replay};
use edge_tests::nmea::{Drive, distance_m};
use edge_tests::relay::Relay;
use edge_tests::{TestNode, TestOrchestrator, eventually, now_ms};
use node_daemon::config::Config;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// IP and UDP headers, per packet.
const HEADER_BYTES: f64 = 28.0;
/// The `near` centre, where every drive starts.
const CENTRE: (f64, f64) = (52.5200, 13.4050);
/// The shop, about 370 m from the centre.
const SHOP: (f64, f64) = (52.5210, 13.4100);
const RADIUS_KM: f64 = 1.0;
const SPEED_KMH: f64 = 50.0;
/// The default `report_max_secs`: a parked node's heartbeat.
const DEFAULT_MAX_SECS: f64 = 300.0;
/// How long to wait for anything that should take seconds; a bound on a hang.
const WAIT: Duration = Duration::from_secs(90);
/// How often the follow rounds look at the API.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(
    name = "location-cost",
    about = "Bytes a live location costs up the link, and time to follow a near radius"
)]
struct Args {
    /// How long to count the three nodes' traffic.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// The parked node's `report_max_secs` during the count (scaled to the default 300 s).
    #[arg(long, default_value_t = 10)]
    parked_max_secs: u64,
    /// Rounds of the follow measurement, per `--report-min-secs` value.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The van's `report_min_secs` in the follow rounds, comma-separated.
    #[arg(long, default_value = "1,5", value_delimiter = ',')]
    report_min_secs: Vec<u64>,
    /// How many times faster than real time the follow rounds play the drive out.
    #[arg(long, default_value_t = 10.0)]
    pace: f64,
    /// Skip the follow rounds.
    #[arg(long)]
    bytes_only: bool,
}

/// A node config as the daemon reads it: default liveness and status interval.
fn config(
    name: &str,
    data: &Path,
    orchestrator: SocketAddr,
    token: &str,
    ca: &str,
    location: &str,
) -> anyhow::Result<Config> {
    Config::from_toml(&format!(
        "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\nlocation = {location}\n\
         [orchestrator]\naddress = \"{orchestrator}\"\n[join]\ntoken = \"{token}\"\n\
         ca_hash = \"{ca}\"\n",
        data.display()
    ))
    .with_context(|| format!("{name}'s config"))
}

fn gpsd_location(gps: &FakeGps, policy: &str) -> String {
    format!("{{ source = \"gpsd\", gpsd = \"{}\"{policy} }}", gps.addr())
}

/// Starts gpsd for `drive` without holding up the runtime's other tasks.
fn start_gps(drive: &Drive, replay: Replay) -> FakeGps {
    tokio::task::block_in_place(|| FakeGps::start(drive, replay))
}

async fn get(orch: &TestOrchestrator, path: &str) -> anyhow::Result<Value> {
    let (status, body) = orch.api("GET", path, None).await;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    Ok(body)
}

/// The `at_ms` of every point of `name`'s track.
async fn track(orch: &TestOrchestrator, name: &str) -> anyhow::Result<Vec<u64>> {
    let t = get(orch, &format!("/v1/nodes/{name}/track")).await?;
    Ok(t["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["at_ms"].as_u64())
        .collect())
}

async fn wait_online(orch: &TestOrchestrator, name: &str) -> anyhow::Result<()> {
    if eventually(WAIT, || orch.online(name)).await.is_none() {
        bail!("{name} did not come online");
    }
    Ok(())
}

/// Polls `check` every [`POLL`] until it holds; when it did, or an error after [`WAIT`].
async fn until<F: Future<Output = anyhow::Result<bool>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + WAIT;
    let mut poll = tokio::time::interval(POLL);
    loop {
        poll.tick().await;
        if check().await? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {WAIT:?}");
        }
    }
}

/// The date, the machine: what a figure is worth depends on them.
fn header() {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "location-cost, {date}; nproc {nproc}; CPU {cpu}; Linux {}",
        kernel.trim()
    );
}

// ---- 1. bytes up the link ------------------------------------------------------------------

/// One node of the byte count, behind its own relay.
struct Subject {
    label: &'static str,
    name: &'static str,
    relay: Relay,
    node: TestNode,
    /// Its receiver, for the gpsd nodes.
    gps: Option<FakeGps>,
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    up_bytes: u64,
    up_packets: u64,
    down_bytes: u64,
    down_packets: u64,
}

fn counts(relay: &Relay) -> Counts {
    let l = &relay.link;
    Counts {
        up_bytes: l.up_bytes.load(Ordering::SeqCst),
        up_packets: l.up_packets.load(Ordering::SeqCst),
        down_bytes: l.down_bytes.load(Ordering::SeqCst),
        down_packets: l.down_packets.load(Ordering::SeqCst),
    }
}

/// What one node sent in the window.
struct Measured {
    /// Up the link, headers included.
    up_wire: f64,
    up_packets: u64,
    /// Down the link, headers included.
    down_wire: f64,
    reports: usize,
}

async fn subject(
    orch: &TestOrchestrator,
    token: &str,
    label: &'static str,
    name: &'static str,
    gps: Option<FakeGps>,
    location: String,
) -> anyhow::Result<Subject> {
    let relay = Relay::start(orch.orch.quic_addr).await;
    let data = orch.dir.path().join(name);
    let config = config(name, &data, relay.addr, token, &orch.ca_hash(), &location)?;
    let node = TestNode::spawn(config);
    Ok(Subject {
        label,
        name,
        relay,
        node,
        gps,
    })
}

async fn bytes(orch: &TestOrchestrator, token: &str, args: &Args) -> anyhow::Result<()> {
    let secs = args.secs.max(1);
    // Long enough for the set-up and the window, at one epoch a second.
    let epochs = u32::try_from(secs + 300).context("--secs")?;
    let driving = start_gps(
        &Drive::from(CENTRE.0, CENTRE.1).straight(90.0, SPEED_KMH, epochs),
        Replay::real_time(),
    );
    let parked = start_gps(
        &Drive::from(CENTRE.0, CENTRE.1).parked_jittering(epochs, 3.0),
        Replay::real_time(),
    );
    let driving_loc = gpsd_location(&driving, "");
    let parked_loc = gpsd_location(
        &parked,
        &format!(", report_max_secs = {}", args.parked_max_secs),
    );
    let subjects = vec![
        subject(
            orch,
            token,
            "driving 50 km/h (gpsd, default policy)",
            "driving",
            Some(driving),
            driving_loc,
        )
        .await?,
        subject(
            orch,
            token,
            "parked, 3 m jitter (gpsd)",
            "parked",
            Some(parked),
            parked_loc,
        )
        .await?,
        subject(
            orch,
            token,
            "anchor: fixed location, idle",
            "anchor",
            None,
            format!("{{ lat = {}, lon = {} }}", SHOP.0, SHOP.1),
        )
        .await?,
    ];
    for s in &subjects {
        wait_online(orch, s.name).await?;
    }
    // Each receiver's first report (and its 2D-then-3D second one) before the window. (A
    // fixed location's first report is not on the track: it is the node's record already.)
    for s in subjects.iter().filter(|s| s.gps.is_some()) {
        until(&format!("{}'s first report", s.name), || async {
            Ok(!track(orch, s.name).await?.is_empty())
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;

    let before: Vec<Counts> = subjects.iter().map(|s| counts(&s.relay)).collect();
    let (t, from_ms) = (Instant::now(), now_ms());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let window = t.elapsed().as_secs_f64();
    let until_ms = now_ms();
    let after: Vec<Counts> = subjects.iter().map(|s| counts(&s.relay)).collect();
    // A report made in the window may land a moment after it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut measured = Vec::new();
    for (s, (a, b)) in subjects.iter().zip(before.iter().zip(&after)) {
        let reports = track(orch, s.name)
            .await?
            .into_iter()
            .filter(|at| (from_ms..until_ms).contains(at))
            .count();
        let up_packets = b.up_packets - a.up_packets;
        let down_packets = b.down_packets - a.down_packets;
        measured.push(Measured {
            up_wire: (b.up_bytes - a.up_bytes) as f64 + up_packets as f64 * HEADER_BYTES,
            up_packets,
            down_wire: (b.down_bytes - a.down_bytes) as f64 + down_packets as f64 * HEADER_BYTES,
            reports,
        });
    }
    let per_hour = |bytes: f64| bytes / window * 3600.0;
    let anchor = &measured[2];
    let anchor_h = per_hour(anchor.up_wire);

    println!(
        "\n1. Bytes up the link (node -> orchestrator), {window:.1} s window, three nodes at once, \
         each through its own relay; drives in real time; 28 B IP+UDP header per packet counted"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>11} {:>11} {:>13} {:>11} {:>10}",
        "node", "reports", "packets", "up B", "up B/h", "vs anchor B/h", "B/report", "down B/h"
    );
    let mut parked_per_report = None;
    for (s, m) in subjects.iter().zip(&measured) {
        let h = per_hour(m.up_wire);
        let is_anchor = s.name == "anchor";
        let per_report =
            (!is_anchor && m.reports > 0).then(|| (m.up_wire - anchor.up_wire) / m.reports as f64);
        if s.name == "parked" {
            parked_per_report = per_report;
        }
        println!(
            "{:<40} {:>8} {:>8} {:>11.0} {:>11.0} {:>13} {:>11} {:>10.0}",
            s.label,
            m.reports,
            m.up_packets,
            m.up_wire,
            h,
            if is_anchor {
                "-".to_owned()
            } else {
                format!("{:+.0}", h - anchor_h)
            },
            per_report.map_or("-".to_owned(), |b| format!("{b:.0}")),
            per_hour(m.down_wire)
        );
        println!("metric location.{}.up_bytes_per_hour {h:.0}", s.name);
        println!("metric location.{}.reports {}", s.name, m.reports);
    }
    if anchor.reports > 0 {
        println!(
            "note: the anchor's own heartbeat ({} report(s)) fell in the window: the excesses \
             above are net of it",
            anchor.reports
        );
    }
    if let Some(b) = parked_per_report {
        let per_h = 3600.0 / DEFAULT_MAX_SECS;
        let parked_h = anchor_h + per_h * b;
        println!(
            "parked at the default report_max_secs = {DEFAULT_MAX_SECS:.0} s (measured with \
             report_max_secs = {} s and scaled): {per_h:.0} reports/h x {b:.0} B = {:.0} B/h on \
             top of the anchor's {anchor_h:.0} B/h = {parked_h:.0} B/h ({:+.1}%); a fixed \
             location sends the same heartbeat every 300 s, which the anchor's {window:.0} s \
             window leaves out",
            args.parked_max_secs,
            per_h * b,
            (parked_h / anchor_h - 1.0) * 100.0
        );
        println!("metric location.parked.default_up_bytes_per_hour {parked_h:.0}");
        println!("metric location.parked.bytes_per_report {b:.0}");
    }
    let driving = &measured[0];
    let driving_h = per_hour(driving.up_wire);
    println!(
        "driving / anchor, bytes up per hour: {driving_h:.0} / {anchor_h:.0} = {:.2}x; {:.1} MB \
         a day of driving against {:.1} MB idling",
        driving_h / anchor_h,
        driving_h * 24.0 / 1e6,
        anchor_h * 24.0 / 1e6
    );

    for s in subjects {
        let _ = tokio::time::timeout(Duration::from_secs(30), s.node.stop()).await;
        drop(s.relay);
        drop(s.gps);
    }
    Ok(())
}

// ---- 2. following a near radius -------------------------------------------------------------

/// One round: milliseconds from the crossing to the `left_near` event, and to the
/// replacement running with the van's instance gone.
struct Round {
    left_ms: f64,
    running_ms: f64,
}

/// The nodes the API lists an instance of `workload` on, with their states.
async fn instances(
    orch: &TestOrchestrator,
    workload: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let w = get(orch, &format!("/v1/workloads/{workload}")).await?;
    Ok(w["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["node"].as_str()?.into(), i["state"].as_str()?.into())))
        .collect())
}

/// The orchestrator's events of `kind` about `node`.
async fn decided(orch: &TestOrchestrator, node: &str, kind: &str) -> anyhow::Result<Vec<Value>> {
    let events = get(orch, &format!("/v1/events?node={node}")).await?;
    Ok(events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind && e["origin"] == "orchestrator")
        .cloned()
        .collect())
}

async fn post(orch: &TestOrchestrator, path: &str, body: Option<Value>) -> anyhow::Result<()> {
    let (status, answer) = orch.api("POST", path, body).await;
    if !(200..300).contains(&status) {
        bail!("POST {path}: {status} {answer}");
    }
    Ok(())
}

async fn follow_round(
    orch: &TestOrchestrator,
    token: &str,
    name: &str,
    report_min_secs: u64,
    pace: f64,
) -> anyhow::Result<Round> {
    let waiting = Drive::from(CENTRE.0, CENTRE.1).parked_jittering(600, 3.0);
    let mut gps = start_gps(&waiting, Replay::faster(pace).looping());
    let data = orch.dir.path().join(name);
    let location = gpsd_location(&gps, &format!(", report_min_secs = {report_min_secs}"));
    let config = config(
        name,
        &data,
        orch.orch.quic_addr,
        token,
        &orch.ca_hash(),
        &location,
    )?;
    let van = TestNode::spawn(config);
    wait_online(orch, name).await?;
    until(&format!("{name}'s fix"), || async {
        let fix = &get(orch, &format!("/v1/nodes/{name}")).await?["location_fix"];
        Ok(fix["source"] == "gpsd" && (fix["quality"] == "2d" || fix["quality"] == "3d"))
    })
    .await?;

    // The shop is cordoned until the workload runs on the van, so that it starts there.
    post(orch, "/v1/nodes/shop/cordon", None).await?;
    let workload = format!("kiosk-{name}");
    let digest = orch.artifact(b"#!/bin/sh\nexec sleep 600\n").await;
    let spec = json!({
        "name": workload,
        "version": "1.0.0",
        "artifact": digest,
        "replicas": 1,
        "resources": {"cpu_millis": 50, "memory_bytes": 16 << 20},
        "requirements": {
            "near": {"lat": CENTRE.0, "lon": CENTRE.1, "radius_km": RADIUS_KM},
            "follow_near": true
        }
    });
    post(orch, "/v1/workloads", Some(spec)).await?;
    let on_van = [(name.to_owned(), "running".to_owned())];
    until(&format!("{workload} running on {name}"), || async {
        Ok(instances(orch, &workload).await? == on_van)
    })
    .await?;
    post(orch, "/v1/nodes/shop/uncordon", None).await?;

    // Out east, well past the radius.
    let journey = Drive::from(CENTRE.0, CENTRE.1)
        .straight(90.0, SPEED_KMH, 216)
        .parked(600);
    let crossing = journey
        .positions()
        .iter()
        .position(|p| distance_m(p.lat, p.lon, CENTRE.0, CENTRE.1) > RADIUS_KM * 1000.0)
        .context("the journey leaves the radius")?;
    tokio::task::block_in_place(|| gps.play(&journey, Replay::faster(pace)));
    let (leg, leg_ms) = (Instant::now(), now_ms());
    let crossed = leg + Duration::from_secs_f64(crossing as f64 / pace);
    let crossed_ms = leg_ms as f64 + crossing as f64 * 1000.0 / pace;

    let on_shop = [("shop".to_owned(), "running".to_owned())];
    let running = until(&format!("{workload} running on the shop alone"), || async {
        Ok(instances(orch, &workload).await? == on_shop)
    })
    .await?;
    let left = decided(orch, name, "left_near").await?;
    let left_at = left
        .first()
        .and_then(|e| e["at_ms"].as_u64())
        .with_context(|| format!("{name}'s left_near event: {left:?}"))?;
    let followed = decided(orch, name, "followed").await?;
    if followed.first().is_none_or(|e| e["to_name"] != "shop") {
        bail!("{name}: no `followed` event to the shop: {followed:?}");
    }
    let running_ms = if running >= crossed {
        (running - crossed).as_secs_f64() * 1000.0
    } else {
        -((crossed - running).as_secs_f64() * 1000.0)
    };

    let _ = orch
        .api("DELETE", &format!("/v1/workloads/{workload}"), None)
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(30), van.stop()).await;
    drop(gps);
    Ok(Round {
        left_ms: left_at as f64 - crossed_ms,
        running_ms,
    })
}

async fn follow(orch: &TestOrchestrator, token: &str, args: &Args) -> anyhow::Result<()> {
    let data = orch.dir.path().join("shop");
    let shop = TestNode::spawn(config(
        "shop",
        &data,
        orch.orch.quic_addr,
        token,
        &orch.ca_hash(),
        &format!("{{ lat = {}, lon = {} }}", SHOP.0, SHOP.1),
    )?);
    wait_online(orch, "shop").await?;
    let crossing_s = RADIUS_KM * 1000.0 / (SPEED_KMH / 3.6);
    println!(
        "\n2. Crossing a near radius ({RADIUS_KM} km) at {SPEED_KMH} km/h to the follow_near \
         workload running on a node inside, the van's instance gone; drive played {}x real \
         time (crossing {:.1} s of wall time after the leg starts); API polled every {} ms",
        args.pace,
        crossing_s / args.pace,
        POLL.as_millis()
    );
    let mut results: Vec<(u64, Vec<Round>)> = args
        .report_min_secs
        .iter()
        .map(|&s| (s, Vec::new()))
        .collect();
    for round in 0..args.rounds {
        for (min_secs, rounds) in &mut results {
            let name = format!("van-{min_secs}s-{}", round + 1);
            let r = follow_round(orch, token, &name, *min_secs, args.pace).await?;
            println!(
                "report_min_secs {min_secs} round {}: crossing -> left_near {:.0} ms, -> \
                 replacement running {:.0} ms",
                round + 1,
                r.left_ms,
                r.running_ms
            );
            rounds.push(r);
        }
    }
    println!(
        "{:<18} {:>6} {:>24} {:>24} {:>26}",
        "report_min_secs",
        "rounds",
        "crossing->left_near ms",
        "left_near->running ms",
        "crossing->running ms"
    );
    for (min_secs, rounds) in &results {
        let left: Vec<f64> = rounds.iter().map(|r| r.left_ms).collect();
        let run: Vec<f64> = rounds.iter().map(|r| r.running_ms).collect();
        let between: Vec<f64> = rounds.iter().map(|r| r.running_ms - r.left_ms).collect();
        let (l, b, r) = (
            median_f64(&left).unwrap_or(f64::NAN),
            median_f64(&between).unwrap_or(f64::NAN),
            median_f64(&run).unwrap_or(f64::NAN),
        );
        println!(
            "{min_secs:<18} {:>6} {l:>24.0} {b:>24.0} {r:>26.0}",
            rounds.len()
        );
        println!("metric location.follow.min{min_secs}s.left_near_ms {l:.0}");
        println!("metric location.follow.min{min_secs}s.running_ms {r:.0}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), shop.stop()).await;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !(args.pace > 0.0 && args.pace <= 20.0) {
        bail!(
            "--pace {}: from above 0 to 20 (faster, a fix jumps more than a receiver may)",
            args.pace
        );
    }
    header();
    let orch = TestOrchestrator::start().await;
    let vans = args.rounds * args.report_min_secs.len();
    let token = orch.token(u32::try_from(4 + vans).unwrap_or(u32::MAX));
    bytes(&orch, &token, &args).await?;
    if !args.bytes_only {
        follow(&orch, &token, &args).await?;
    }
    orch.orch.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    edge_benches::run_tool("location-cost", Some(2), run(args))
}
