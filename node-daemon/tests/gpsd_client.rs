//! The location client against a fake gpsd of our own: a TCP listener on 127.0.0.1 port 0
//! that checks the client's `?WATCH` and writes scripted lines, as gpsd 3.22 writes them.
//!
//! Time is tokio's paused clock: it jumps to the next timer whenever every task waits, so
//! a stall timeout or a backoff takes no real time. A script's `sleep` is gpsd's pace (a fix
//! a second) or a scenario's step (gpsd starts later), never a wait for the client: the
//! tests wait on what the client publishes, under a deadline.

use node_core::location::{FixQuality, Refusal, Report, ReportPolicy, Source};
use node_daemon::config::{GeoPoint, LocationConfig, LocationSource};
use node_daemon::location::{LocationHandle, Tuning, WATCH, spawn, spawn_with};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, sleep};

const BERLIN: (f64, f64) = (52.52, 13.405);

/// The latitude `metres` north of Berlin.
fn north(metres: f64) -> f64 {
    BERLIN.0 + metres / 111_195.08
}

/// A 3D fix as gpsd 3.22 writes it (the fields a u-blox receiver fills), `lat` as given.
fn tpv(lat: f64) -> String {
    format!(
        r#"{{"class":"TPV","device":"/dev/ttyACM0","status":2,"mode":3,"time":"2026-12-07T09:10:11.000Z","leapseconds":18,"ept":0.005,"lat":{lat:.9},"lon":{lon:.9},"altHAE":78.200,"altMSL":34.000,"alt":34.000,"epx":2.101,"epy":2.947,"epv":5.152,"track":0.0000,"magtrack":4.2440,"magvar":4.2,"speed":0.012,"climb":0.000,"eps":5.89,"epc":10.30,"geoidSep":44.200,"eph":3.620,"sep":6.520}}"#,
        lon = BERLIN.1
    )
}

/// What gpsd 3.22 says on a connection before the first fix.
const GREETING: [&str; 3] = [
    r#"{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}"#,
    r#"{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/ttyACM0","driver":"u-blox","activated":"2026-12-07T09:10:01.511Z","flags":1,"native":1,"bps":9600,"parity":"N","stopbits":1,"cycle":1.00,"mincycle":0.25}]}"#,
    r#"{"class":"WATCH","enable":true,"json":true,"nmea":false,"raw":0,"scaled":false,"timing":false,"split24":false,"pps":false}"#,
];

fn gpsd_at(addr: SocketAddr, fallback: Option<GeoPoint>) -> LocationConfig {
    LocationConfig {
        source: LocationSource::Gpsd {
            address: addr.to_string(),
            fallback,
        },
        report: ReportPolicy::default(),
    }
}

/// A listener on the given address (port 0: any), which may have been another's a moment
/// ago (gpsd restarting on its port).
fn listen(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind");
    socket.listen(16).expect("listen")
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

/// Waits for `future` at most two minutes of the paused clock.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 120 s"))
}

/// Accepts a client and checks it asks for JSON reports.
async fn accept(listener: &TcpListener) -> TcpStream {
    let (mut stream, _) = within("a connection", listener.accept())
        .await
        .expect("accept");
    let mut request = Vec::new();
    let mut byte = [0u8];
    while request.last() != Some(&b'\n') {
        assert!(request.len() < 200, "no newline in {request:?}");
        let n = within("the watch", stream.read(&mut byte))
            .await
            .expect("read");
        assert_eq!(n, 1, "closed after {request:?}");
        request.push(byte[0]);
    }
    assert_eq!(request, WATCH);
    assert_eq!(request, b"?WATCH={\"enable\":true,\"json\":true};\n");
    stream
}

async fn send(stream: &mut TcpStream, line: &str) {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .expect("write");
}

async fn greet(stream: &mut TcpStream) {
    for line in GREETING {
        send(stream, line).await;
    }
}

/// Waits until the client's current location is at latitude `lat`.
async fn current_at(handle: &mut LocationHandle, lat: f64) -> Report {
    let rounded = |x: f64| (x * 1e9).round();
    let report = within(
        "the current location",
        handle
            .current
            .wait_for(|r| r.is_some_and(|r| rounded(r.fix.lat) == rounded(lat))),
    )
    .await
    .expect("the client runs");
    report.expect("a location")
}

async fn next_report(handle: &mut LocationHandle) -> Report {
    within("a report", handle.reports.recv())
        .await
        .expect("the client runs")
}

#[tokio::test(start_paused = true)]
async fn a_stream_of_fixes_becomes_reports() {
    let listener = listen(any_port());
    let mut handle = spawn(&gpsd_at(listener.local_addr().expect("addr"), None));
    assert_eq!(*handle.current.borrow(), None, "no fix, no fallback");
    let mut gpsd = accept(&listener).await;
    let start = Instant::now();
    // Driving north at 50 km/h, a fix a second, for 30 s.
    let speed = 50.0 / 3.6;
    let script = tokio::spawn(async move {
        greet(&mut gpsd).await;
        for t in 0..=30 {
            send(&mut gpsd, &tpv(north(speed * f64::from(t)))).await;
            sleep(Duration::from_secs(1)).await;
        }
        gpsd
    });
    // 50 m is 3.6 s of driving: every report is due as soon as 5 s have passed.
    let mut last_lat = f64::MIN;
    for n in 0..=6u64 {
        let report = next_report(&mut handle).await;
        let at = Instant::now() - start;
        assert!(
            at.abs_diff(Duration::from_secs(5 * n)) < Duration::from_millis(100),
            "report {n} at {at:?}"
        );
        assert_eq!(report.source, Source::Gpsd);
        assert_eq!(report.fix.quality, FixQuality::ThreeD);
        assert_eq!(report.fix.alt_m, Some(34.0));
        assert_eq!(report.fix.accuracy_m, Some(3.62));
        assert_eq!(report.fix.time_ms, Some(1_796_634_611_000));
        assert!(report.fix.lat > last_lat);
        last_lat = report.fix.lat;
    }
    let _gpsd = script.await.expect("script");
    current_at(&mut handle, north(speed * 30.0)).await;
    let counters = &handle.counters;
    assert_eq!(counters.fixes(), 31);
    assert_eq!(counters.reports(), 7);
    assert_eq!(
        (counters.reconnects(), counters.stalls()),
        (0, 0),
        "one connection all along"
    );
}

#[tokio::test(start_paused = true)]
async fn implausible_positions_are_refused_and_counted() {
    let listener = listen(any_port());
    let mut handle = spawn(&gpsd_at(listener.local_addr().expect("addr"), None));
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    send(&mut gpsd, &tpv(BERLIN.0)).await;
    let first = next_report(&mut handle).await;
    assert_eq!(first.fix.lat, BERLIN.0);
    for line in [
        // Off the globe.
        r#"{"class":"TPV","mode":3,"lat":95.0,"lon":13.405}"#.to_string(),
        // NaN is no JSON; the filter sees it only from elsewhere.
        r#"{"class":"TPV","mode":3,"lat":NaN,"lon":13.405}"#.to_string(),
        // A fix without a position.
        r#"{"class":"TPV","mode":3,"lon":13.405}"#.to_string(),
        // 500 km in a second.
        tpv(north(500_000.0)),
    ] {
        sleep(Duration::from_secs(1)).await;
        send(&mut gpsd, &line).await;
    }
    sleep(Duration::from_secs(1)).await;
    send(&mut gpsd, &tpv(north(10.0))).await;
    // The last line is read, so every one before it was.
    let now = current_at(&mut handle, north(10.0)).await;
    assert_eq!(now.source, Source::Gpsd);
    let counters = &handle.counters;
    assert_eq!(counters.refused(Refusal::OutOfRange), 1);
    assert_eq!(counters.refused(Refusal::Jump), 1);
    assert_eq!(counters.refused(Refusal::NotFinite), 0);
    assert_eq!(counters.parse_errors("not_json"), 1);
    assert_eq!(counters.parse_errors("missing_position"), 1);
    assert_eq!(counters.fixes(), 2);
    // Nothing believed moved the node 50 m: no report beyond the first.
    assert!(handle.reports.try_recv().is_err());
    assert_eq!(
        counters.reconnects(),
        0,
        "bad lines never cost the connection"
    );
}

#[tokio::test(start_paused = true)]
async fn a_mebibyte_line_is_thrown_away_and_the_next_line_read() {
    let listener = listen(any_port());
    let mut handle = spawn(&gpsd_at(listener.local_addr().expect("addr"), None));
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    send(&mut gpsd, &tpv(BERLIN.0)).await;
    current_at(&mut handle, BERLIN.0).await;
    let script = tokio::spawn(async move {
        gpsd.write_all(&vec![b'x'; 1 << 20]).await.expect("write");
        gpsd.write_all(b"\n").await.expect("write");
        send(&mut gpsd, &tpv(north(20.0))).await;
        gpsd
    });
    current_at(&mut handle, north(20.0)).await;
    let _gpsd = script.await.expect("script");
    let counters = &handle.counters;
    assert_eq!(counters.lines_too_long(), 1);
    assert_eq!(counters.parse_errors("not_json"), 0);
    assert_eq!(counters.reconnects(), 0, "the connection is kept");
    assert_eq!(counters.fixes(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_gpsd_is_given_up_and_dialled_again() {
    let listener = listen(any_port());
    let mut handle = spawn(&gpsd_at(listener.local_addr().expect("addr"), None));
    // Accepts, and then says nothing.
    let mut silent = accept(&listener).await;
    let start = Instant::now();
    let mut second = accept(&listener).await;
    let after = Instant::now() - start;
    assert!(
        after >= Duration::from_secs(10) && after <= Duration::from_secs(11),
        "dialled again after {after:?}"
    );
    // The client closed the silent connection.
    let mut buf = [0u8; 16];
    assert_eq!(
        within("the close", silent.read(&mut buf))
            .await
            .expect("read"),
        0
    );
    assert_eq!(handle.counters.stalls(), 1);
    assert_eq!(handle.counters.reconnects(), 1);
    // The new connection works.
    greet(&mut second).await;
    send(&mut second, &tpv(BERLIN.0)).await;
    assert_eq!(next_report(&mut handle).await.fix.lat, BERLIN.0);
}

#[tokio::test(start_paused = true)]
async fn gpsd_restarting_on_its_port_is_dialled_again() {
    let listener = listen(any_port());
    let addr = listener.local_addr().expect("addr");
    let mut handle = spawn(&gpsd_at(addr, None));
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    send(&mut gpsd, &tpv(BERLIN.0)).await;
    assert_eq!(next_report(&mut handle).await.fix.lat, BERLIN.0);
    // gpsd stops, and is back three seconds later on the same port.
    drop(gpsd);
    drop(listener);
    sleep(Duration::from_secs(3)).await;
    let listener = listen(addr);
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    send(&mut gpsd, &tpv(north(5.0))).await;
    let now = current_at(&mut handle, north(5.0)).await;
    assert_eq!(now.fix.quality, FixQuality::ThreeD);
    assert!(handle.counters.reconnects() >= 1);
    assert_eq!(handle.counters.stalls(), 0);
}

#[tokio::test(start_paused = true)]
async fn gpsd_absent_at_start_then_present() {
    // A port nobody listens on, for now.
    let addr = listen(any_port()).local_addr().expect("addr");
    let fallback = GeoPoint {
        lat: 48.137,
        lon: 11.575,
        alt_m: Some(519.0),
    };
    let mut handle = spawn(&gpsd_at(addr, Some(fallback)));
    // The fallback is the location at once, and reported at once.
    let shown = handle.current.borrow().expect("the fallback");
    assert_eq!((shown.source, shown.fix.lat), (Source::Fixed, 48.137));
    let report = next_report(&mut handle).await;
    assert_eq!(report, shown);
    assert_eq!(report.fix.quality, FixQuality::NoFix);
    // gpsd starts ten seconds later.
    sleep(Duration::from_secs(10)).await;
    assert!(
        handle.counters.reconnects() >= 3,
        "{} dials",
        handle.counters.reconnects()
    );
    let listener = listen(addr);
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    send(&mut gpsd, &tpv(BERLIN.0)).await;
    // The receiver's first fix replaces the fallback: due, since the source changed.
    let report = next_report(&mut handle).await;
    assert_eq!((report.source, report.fix.lat), (Source::Gpsd, BERLIN.0));
}

#[tokio::test(start_paused = true)]
async fn a_fixed_location_is_reported_at_once_and_as_a_heartbeat() {
    let point = GeoPoint {
        lat: BERLIN.0,
        lon: BERLIN.1,
        alt_m: None,
    };
    let config = LocationConfig {
        source: LocationSource::Fixed(point),
        report: ReportPolicy {
            max_interval: Duration::from_secs(60),
            ..ReportPolicy::default()
        },
    };
    let mut handle = spawn(&config);
    let start = Instant::now();
    for n in 0..3 {
        let report = next_report(&mut handle).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(60 * n));
        assert_eq!((report.source, report.fix.lat), (Source::Fixed, BERLIN.0));
    }
    assert_eq!(
        handle.current.borrow().map(|r| r.source),
        Some(Source::Fixed)
    );
}

#[tokio::test(start_paused = true)]
async fn reports_the_session_does_not_take_are_dropped_not_waited_for() {
    let listener = listen(any_port());
    let config = LocationConfig {
        report: ReportPolicy {
            min_interval: Duration::from_secs(1),
            ..ReportPolicy::default()
        },
        ..gpsd_at(listener.local_addr().expect("addr"), None)
    };
    let tuning = Tuning {
        reports_capacity: 1,
        ..Tuning::default()
    };
    let mut handle = spawn_with(&config, tuning);
    let mut gpsd = accept(&listener).await;
    greet(&mut gpsd).await;
    // 100 m a second: a report due with every fix; nobody takes them.
    for t in 0..5 {
        send(&mut gpsd, &tpv(north(100.0 * f64::from(t)))).await;
        sleep(Duration::from_secs(1)).await;
    }
    current_at(&mut handle, north(400.0)).await;
    assert_eq!(handle.counters.reports(), 1);
    assert_eq!(handle.counters.reports_dropped(), 4);
    // The one that waited is the first.
    assert_eq!(next_report(&mut handle).await.fix.lat, BERLIN.0);
}

#[tokio::test(start_paused = true)]
async fn stopping_the_client_closes_its_connection() {
    let listener = listen(any_port());
    let handle = spawn(&gpsd_at(listener.local_addr().expect("addr"), None));
    let mut gpsd = accept(&listener).await;
    handle.task.stop().await;
    let mut buf = [0u8; 16];
    assert_eq!(
        within("the close", gpsd.read(&mut buf))
            .await
            .expect("read"),
        0
    );
}
