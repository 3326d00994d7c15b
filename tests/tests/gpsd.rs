//! The location harness itself: a real gpsd, fed by gpsfake with a generated drive, reports
//! where the drive says the car is, loses and regains the fix with it, keeps its pace, goes
//! away and comes back on its port, and leaves no process behind.

use edge_tests::PATIENCE;
use edge_tests::gpsd::{FakeGps, Replay};
use edge_tests::nmea::Drive;
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longer than any line gpsd writes for one receiver (a SKY with all its satellites is a
/// few kilobytes).
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// Marienplatz, Munich.
const START: (f64, f64) = (48.1374, 11.5755);

/// A gpsd client that asked for JSON reports, as a node will.
struct Watch {
    reader: BufReader<TcpStream>,
}

impl Watch {
    fn open(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).expect("gpsd accepts");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        stream
            .write_all(b"?WATCH={\"enable\":true,\"json\":true};\n")
            .expect("watch");
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// The next report of class `TPV`; `None` once gpsd has closed the connection. Fails on
    /// [`PATIENCE`] of silence.
    fn next_tpv(&mut self) -> Option<Value> {
        loop {
            let report = self.next_report()?;
            if report["class"] == "TPV" {
                return Some(report);
            }
        }
    }

    fn next_report(&mut self) -> Option<Value> {
        let mut line = String::new();
        let read = (&mut self.reader).take(MAX_LINE_BYTES).read_line(&mut line);
        match read {
            Ok(0) => None,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Ok(_) => {
                assert!(
                    line.ends_with('\n'),
                    "a line of over {MAX_LINE_BYTES} bytes"
                );
                Some(serde_json::from_str(&line).expect("gpsd writes JSON"))
            }
            Err(e) => panic!("no report from gpsd within {PATIENCE:?}: {e}"),
        }
    }

    /// Whether gpsd says nothing more for `quiet`.
    fn silent_for(&mut self, quiet: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(quiet))
            .expect("read timeout");
        let mut byte = [0; 1];
        let silent = matches!(
            self.reader.read(&mut byte),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
        );
        self.reader
            .get_ref()
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        silent
    }
}

/// The epoch of `drive` a TPV reports.
fn epoch_of(drive: &Drive, tpv: &Value) -> usize {
    let time = tpv["time"].as_str().expect("every TPV here has a time");
    drive
        .epoch_at(time)
        .unwrap_or_else(|| panic!("{time} is not in the drive"))
}

/// The pids of the gpsd processes serving `port` (gpsfake starts them with `-S PORT`).
fn gpsd_serving(port: u16) -> Vec<u32> {
    let port = port.to_string();
    let dir = std::fs::read_dir("/proc").expect("/proc");
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie's command line is empty: it serves nothing.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|exe| exe.ends_with(b"gpsd"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-S" && w[1] == port.as_bytes())
        })
        .collect()
}

#[test]
fn gpsd_reports_the_drive_loses_the_fix_with_it_and_finds_it_again() {
    // 1.5 km at 50 km/h (108 s), 10 s without a fix, 1.5 km more: 227 epochs.
    let drive = Drive::from(START.0, START.1)
        .straight(60.0, 50.0, 108)
        .fix_lost(10)
        .straight(150.0, 50.0, 108);
    let positions = drive.positions();
    let last = drive.epochs() - 1;
    let gps = FakeGps::start(&drive, Replay::faster(25.0));
    let port = gps.addr().port();
    assert_eq!(gpsd_serving(port).len(), 1, "one gpsd on port {port}");
    let mut watch = Watch::open(gps.addr());

    let (mut fixes_before, mut lost, mut fixes_after) = (0, 0, 0);
    let mut previous: Option<usize> = None;
    loop {
        let tpv = watch.next_tpv().expect("gpsd stays up");
        let epoch = epoch_of(&drive, &tpv);
        let expected = positions[epoch];
        let mode = tpv["mode"].as_u64().expect("a mode");
        if mode >= 2 {
            assert!(expected.has_fix, "a fix at epoch {epoch}: {tpv}");
            let (lat, lon) = (tpv["lat"].as_f64(), tpv["lon"].as_f64());
            let (lat, lon) = lat.zip(lon).expect("a fix has a position");
            let off = expected.distance_m(lat, lon);
            assert!(off < 1.0, "epoch {epoch} is {off:.2} m off: {tpv}");
            if lost == 0 {
                fixes_before += 1;
            } else {
                fixes_after += 1;
            }
        } else {
            assert!(!expected.has_fix, "no fix at epoch {epoch}: {tpv}");
            assert!(tpv.get("lat").is_none(), "no position without a fix: {tpv}");
            assert_eq!(fixes_after, 0, "one loss: {tpv}");
            lost += 1;
        }
        // Every epoch, in order, from the first this client saw (the first epoch of all
        // is reported twice: before and after gpsd knows what ends an epoch).
        if let Some(previous) = previous {
            assert!(
                epoch == previous + 1 || (epoch, previous) == (0, 0),
                "epoch {epoch} after {previous}"
            );
        }
        previous = Some(epoch);
        if epoch == last {
            break;
        }
    }
    assert!(fixes_before > 50, "{fixes_before} fixes before the loss");
    assert_eq!(lost, 10);
    assert_eq!(fixes_after, 108);

    // Played once: then the receiver goes away, and gpsd stays up.
    let gone = watch.next_report().expect("gpsd stays up");
    assert_eq!(
        (&gone["class"], &gone["activated"]),
        (&"DEVICE".into(), &0.into()),
        "{gone}"
    );
    assert!(
        watch.silent_for(Duration::from_secs(1)),
        "no reports after the drive"
    );
    assert!(
        Watch::open(gps.addr())
            .next_report()
            .is_some_and(|r| r["class"] == "VERSION")
    );

    drop(gps);
    assert_eq!(
        gpsd_serving(port),
        Vec::<u32>::new(),
        "no gpsd outlives FakeGps"
    );
    assert!(
        watch.next_report().is_none(),
        "the connection closes with gpsd"
    );
}

#[test]
fn gpsd_keeps_real_time_goes_away_and_comes_back_on_its_port() {
    let drive = Drive::from(START.0, START.1)
        .straight(0.0, 30.0, 60)
        .parked_jittering(60, 3.0);
    let mut gps = FakeGps::start(&drive, Replay::real_time());
    let addr = gps.addr();
    let mut watch = Watch::open(addr);

    // The first report of each of four epochs: an epoch a second.
    let mut arrivals: Vec<(usize, Instant)> = Vec::new();
    while arrivals.len() < 4 {
        let epoch = epoch_of(&drive, &watch.next_tpv().expect("gpsd stays up"));
        if arrivals.last().is_none_or(|&(last, _)| epoch != last) {
            arrivals.push((epoch, Instant::now()));
        }
    }
    let (first, last) = (arrivals[0], arrivals[3]);
    assert_eq!(last.0 - first.0, 3, "{arrivals:?}");
    let per_epoch = (last.1 - first.1) / 3;
    assert!(
        (800..1300).contains(&per_epoch.as_millis()),
        "{per_epoch:?} an epoch"
    );

    gps.stop_gpsd();
    assert!(watch.next_report().is_none(), "the connection closes");
    assert_eq!(gpsd_serving(addr.port()), Vec::<u32>::new());
    let refused = TcpStream::connect(addr).expect_err("nobody listens");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    gps.restart();
    assert_eq!(gps.addr(), addr, "the same port");
    let mut watch = Watch::open(addr);
    let epoch = epoch_of(&drive, &watch.next_tpv().expect("gpsd is back"));
    assert!(epoch < 3, "the drive starts again, at epoch {epoch}");
}

#[test]
fn a_looping_replay_starts_the_drive_again_after_its_end() {
    let drive = Drive::from(START.0, START.1).straight(270.0, 20.0, 4);
    let gps = FakeGps::start(&drive, Replay::faster(50.0).looping());
    let mut watch = Watch::open(gps.addr());
    let mut epochs = Vec::new();
    // Two whole rounds at least.
    while epochs.iter().filter(|&&e| e == 4).count() < 2 {
        epochs.push(epoch_of(&drive, &watch.next_tpv().expect("gpsd stays up")));
    }
    let wraps = epochs.windows(2).filter(|w| w == &[4, 0]).count();
    assert!(wraps >= 1, "{epochs:?}");
}
