//! The node's live location without a socket or a clock: gpsd's lines as a receiver and gpsd
//! 3.22 write them (and as nobody should), the filter's judgement of fixes, and when the
//! reporter tells the orchestrator. Time is a `Duration` the tests choose, so an hour of
//! driving runs in microseconds.

use node_core::config::GeoPoint;
use node_core::location::gpsd::MAX_LINE_BYTES;
use node_core::location::{
    Filter, FilterPolicy, Fix, FixQuality, Message, Observation, ParseError, Refusal, Report,
    ReportPolicy, Reporter, Source, distance_m, parse_line,
};
use proptest::prelude::*;
use std::time::Duration;

// ----- gpsd's lines -----

/// A 3D fix as gpsd 3.22 writes it with a u-blox receiver (every field the spec lists for a
/// TPV, in gpsd's order), with its CR-LF less the LF.
const TPV_3D: &str = r#"{"class":"TPV","device":"/dev/ttyACM0","status":2,"mode":3,"time":"2026-12-07T09:10:11.000Z","leapseconds":18,"ept":0.005,"lat":52.520008333,"lon":13.404954000,"altHAE":111.300,"altMSL":67.100,"alt":67.100,"epx":2.101,"epy":2.947,"epv":5.152,"track":0.0000,"magtrack":4.2440,"magvar":4.2,"speed":0.012,"climb":0.000,"eps":5.89,"epc":10.30,"ecefx":3783262.64,"ecefy":902057.03,"ecefz":5038171.40,"ecefvx":0.01,"ecefvy":0.00,"ecefvz":-0.01,"ecefpAcc":7.52,"ecefvAcc":0.03,"velN":0.012,"velE":0.001,"velD":-0.000,"geoidSep":44.200,"eph":3.620,"sep":6.520}"#;

fn tpv_fix(line: &str) -> Fix {
    match parse_line(line.as_bytes()) {
        Ok(Message::Tpv(Observation::Fix(fix))) => fix,
        other => panic!("expected a fix from {line}, got {other:?}"),
    }
}

fn refused(line: &[u8]) -> ParseError {
    match parse_line(line) {
        Err(e) => e,
        Ok(m) => panic!("expected an error, got {m:?}"),
    }
}

#[test]
fn a_gpsd_3_22_fix_in_three_dimensions() {
    let fix = tpv_fix(&format!("{TPV_3D}\r"));
    assert_eq!(
        fix,
        Fix {
            lat: 52.520008333,
            lon: 13.404954,
            alt_m: Some(67.1),
            accuracy_m: Some(3.62),
            quality: FixQuality::ThreeD,
            time_ms: Some(1_796_634_611_000),
        }
    );
    assert_eq!(fix.quality.as_str(), "3d");
}

#[test]
fn a_fix_in_two_dimensions_has_no_altitude_and_takes_the_larger_error() {
    let fix = tpv_fix(
        r#"{"class":"TPV","device":"/dev/ttyUSB0","mode":2,"time":"2026-12-07T09:10:12.250Z","ept":0.005,"lat":-33.8568,"lon":151.2153,"altHAE":40.0,"epx":12.5,"epy":30.25,"track":90.0,"speed":1.5}"#,
    );
    assert_eq!(fix.quality, FixQuality::TwoD);
    assert_eq!(fix.quality.as_str(), "2d");
    assert_eq!(fix.alt_m, None, "a 2D fix's altitude is not current");
    assert_eq!(fix.accuracy_m, Some(30.25));
    assert_eq!(fix.time_ms, Some(1_796_634_612_250));
    // One of the two alone.
    let fix = tpv_fix(r#"{"class":"TPV","mode":2,"lat":1,"lon":2,"epy":7}"#);
    assert_eq!(fix.accuracy_m, Some(7.0));
    let fix = tpv_fix(r#"{"class":"TPV","mode":2,"lat":1,"lon":2}"#);
    assert_eq!((fix.accuracy_m, fix.time_ms), (None, None));
}

#[test]
fn altitude_is_above_sea_level_whatever_gpsd_names_it() {
    // 3.20 and later: altMSL wins over altHAE.
    let fix = tpv_fix(r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"altHAE":100,"altMSL":60}"#);
    assert_eq!(fix.alt_m, Some(60.0));
    // Only the ellipsoid's height: less the geoid's separation when given.
    let fix = tpv_fix(r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"altHAE":100,"geoidSep":44}"#);
    assert_eq!(fix.alt_m, Some(56.0));
    let fix = tpv_fix(r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"altHAE":100}"#);
    assert_eq!(fix.alt_m, Some(100.0));
    // Before 3.20: `alt`, and `time` in seconds (protocol 3.1).
    let fix = tpv_fix(
        r#"{"class":"TPV","tag":"MID2","device":"/dev/ttyUSB0","time":1253593667.430,"ept":0.005,"lat":38.88945123,"lon":-77.03522143,"alt":146.911,"track":180.0000,"speed":0.194,"climb":-0.157,"mode":3}"#,
    );
    assert_eq!(fix.alt_m, Some(146.911));
    assert_eq!(fix.time_ms, Some(1_253_593_667_430));
}

#[test]
fn no_fix_reports() {
    for (line, time_ms) in [
        (r#"{"class":"TPV","device":"/dev/ttyACM0","mode":1}"#, None),
        (
            r#"{"class":"TPV","device":"/dev/ttyACM0","mode":0,"time":"2026-12-07T09:10:11.000Z","ept":0.005,"leapseconds":18}"#,
            Some(1_796_634_611_000),
        ),
        // A no-fix report's stale position is not a fix.
        (r#"{"class":"TPV","mode":1,"lat":52.5,"lon":13.4}"#, None),
    ] {
        assert_eq!(
            parse_line(line.as_bytes()).expect("a no-fix TPV"),
            Message::Tpv(Observation::NoFix { time_ms }),
            "{line}"
        );
    }
}

#[test]
fn the_other_classes() {
    assert_eq!(
        parse_line(
            br#"{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}"#
        )
        .expect("valid"),
        Message::Version {
            release: "3.22".into(),
            proto_major: 3,
            proto_minor: 14
        }
    );
    assert_eq!(
        parse_line(
            br#"{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/ttyACM0","driver":"u-blox","subtype":"SW ROM CORE 3.01 (107888),HW 00080000","activated":"2026-12-07T09:10:01.511Z","flags":1,"native":1,"bps":9600,"parity":"N","stopbits":1,"cycle":1.00,"mincycle":0.25}]}"#
        )
        .expect("valid"),
        Message::Devices { count: 1 }
    );
    assert_eq!(
        parse_line(br#"{"class":"DEVICES","devices":[]}"#).expect("valid"),
        Message::Devices { count: 0 }
    );
    assert_eq!(
        parse_line(
            br#"{"class":"WATCH","enable":true,"json":true,"nmea":false,"raw":0,"scaled":false,"timing":false,"split24":false,"pps":false}"#
        )
        .expect("valid"),
        Message::Watch { enabled: true }
    );
    for other in [
        r#"{"class":"SKY","device":"/dev/ttyACM0","xdop":0.54,"ydop":0.77,"satellites":[{"PRN":2,"el":34.0,"az":253.0,"ss":33.0,"used":true,"gnssid":0,"svid":2}]}"#,
        r#"{"class":"ERROR","message":"Unrecognized request 'FOO'"}"#,
        r#"{"class":"PPS","device":"/dev/pps0","real_sec":1796634611,"real_nsec":0}"#,
        r#"{"class":""}"#,
    ] {
        assert_eq!(
            parse_line(other.as_bytes()).expect("valid"),
            Message::Other,
            "{other}"
        );
    }
    // What a peer names itself is truncated.
    let long = format!(
        r#"{{"class":"VERSION","release":"{}","proto_major":3}}"#,
        "x".repeat(5000)
    );
    let Message::Version { release, .. } = parse_line(long.as_bytes()).expect("valid") else {
        panic!("a version");
    };
    assert_eq!(release.len(), 32);
}

#[test]
fn a_line_over_the_bound_is_refused_before_parsing() {
    // Valid JSON padded with spaces: only the length can refuse it.
    let exactly = format!("{TPV_3D}{}", " ".repeat(MAX_LINE_BYTES - TPV_3D.len()));
    assert_eq!(exactly.len(), MAX_LINE_BYTES);
    tpv_fix(&exactly);
    let over = format!("{exactly} ");
    let e = refused(over.as_bytes());
    assert!(
        matches!(e, ParseError::TooLong { len } if len == MAX_LINE_BYTES + 1),
        "{e:?}"
    );
    assert_eq!(e.as_str(), "too_long");
    // Not even looked at: a megabyte of garbage is the same error.
    assert!(matches!(
        refused(&vec![b'{'; 1 << 20]),
        ParseError::TooLong { .. }
    ));
}

#[test]
fn malformed_and_hostile_lines_each_get_their_error() {
    for line in [
        &b""[..],
        b"   \r",
        b"not json",
        b"{",
        br#"{"class":"TPV","mode":3,"lat":52.5,"lon":13.4"#,
        br#"{"class":"TPV","mode":3,"lat":NaN,"lon":0}"#,
        br#"{"class":"TPV","mode":3,"lat":Infinity,"lon":0}"#,
        br#"{"class":"TPV","mode":3,"lat":1e400,"lon":0}"#,
        b"{\"class\":\"TPV\",\"device\":\"\xff\xfe\",\"mode\":1}",
        br#"{"class":"TPV"} {"class":"TPV"}"#,
    ] {
        let e = refused(line);
        assert!(matches!(e, ParseError::NotJson(_)), "{line:?}: {e:?}");
        assert_eq!(e.as_str(), "not_json");
    }
    // Nested past serde_json's depth limit: an error, not a blown stack.
    let deep = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    assert!(matches!(refused(deep.as_bytes()), ParseError::NotJson(_)));

    for line in [&b"[1,2]"[..], b"\"TPV\"", b"42", b"null", b"true"] {
        assert!(matches!(refused(line), ParseError::NotObject), "{line:?}");
    }
    for line in [
        &b"{}"[..],
        br#"{"class":5}"#,
        br#"{"class":null}"#,
        br#"{"klass":"TPV","mode":3}"#,
    ] {
        let e = refused(line);
        assert!(matches!(e, ParseError::NoClass), "{line:?}");
        assert_eq!(e.as_str(), "no_class");
    }
    for (line, field) in [
        (r#"{"class":"TPV"}"#, "mode"),
        (r#"{"class":"TPV","mode":"3","lat":1,"lon":2}"#, "mode"),
        (r#"{"class":"TPV","mode":4,"lat":1,"lon":2}"#, "mode"),
        (r#"{"class":"TPV","mode":-1}"#, "mode"),
        (r#"{"class":"TPV","mode":2.5,"lat":1,"lon":2}"#, "mode"),
        (r#"{"class":"TPV","mode":3,"lat":"52.5","lon":2}"#, "lat"),
        (r#"{"class":"TPV","mode":3,"lat":1,"lon":[2]}"#, "lon"),
        (
            r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"eph":"3"}"#,
            "eph",
        ),
        (
            r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"altMSL":{}}"#,
            "altMSL",
        ),
        (
            r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"altHAE":1,"geoidSep":"x"}"#,
            "geoidSep",
        ),
        (
            r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"time":"yesterday"}"#,
            "time",
        ),
        (
            r#"{"class":"TPV","mode":3,"lat":1,"lon":2,"time":-5}"#,
            "time",
        ),
        (r#"{"class":"TPV","mode":1,"time":true}"#, "time"),
        (r#"{"class":"VERSION","proto_major":-3}"#, "proto_major"),
        (r#"{"class":"DEVICES","devices":{}}"#, "devices"),
        (r#"{"class":"WATCH","enable":"yes"}"#, "enable"),
    ] {
        let e = refused(line.as_bytes());
        assert!(
            matches!(e, ParseError::BadField { field: f } if f == field),
            "{line}: {e:?}"
        );
        assert_eq!(e.as_str(), "bad_field");
    }
    for (line, mode) in [
        (r#"{"class":"TPV","mode":3,"lon":13.4}"#, 3),
        (r#"{"class":"TPV","mode":2,"lat":52.5}"#, 2),
        (r#"{"class":"TPV","mode":2,"lat":null,"lon":null}"#, 2),
    ] {
        let e = refused(line.as_bytes());
        assert!(
            matches!(e, ParseError::MissingPosition { mode: m } if m == mode),
            "{line}: {e:?}"
        );
        assert_eq!(e.as_str(), "missing_position");
    }
    // Every kind is in the metric's label set.
    for e in [
        refused(b"x"),
        refused(b"1"),
        refused(b"{}"),
        refused(br#"{"class":"TPV"}"#),
        refused(br#"{"class":"TPV","mode":3}"#),
        refused(&vec![b' '; MAX_LINE_BYTES + 1]),
    ] {
        assert!(ParseError::KINDS.contains(&e.as_str()), "{e:?}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_line(&line);
    }

    /// TPV objects with every field present or not, of any JSON type.
    #[test]
    fn arbitrary_tpvs_never_panic(
        fields in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "mode", "lat", "lon", "alt", "altHAE", "altMSL", "geoidSep", "eph",
                    "epx", "epy", "time",
                ]),
                prop_oneof![
                    any::<f64>().prop_filter("JSON has no NaN", |v| v.is_finite())
                        .prop_map(|v| v.to_string()),
                    any::<i64>().prop_map(|v| v.to_string()),
                    (0u8..5).prop_map(|v| v.to_string()),
                    "[ -~]{0,30}".prop_map(|s| serde_json::Value::String(s).to_string()),
                    Just("null".to_string()),
                    Just("\"2026-12-07T09:10:11.5Z\"".to_string()),
                ],
            ),
            0..12,
        )
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let line = format!("{{\"class\":\"TPV\",{}}}", body.join(","));
        let _ = parse_line(line.as_bytes());
    }
}

// ----- distances -----

#[test]
fn distances_on_the_globe() {
    let at = |lat, lon| fix(lat, lon);
    assert_eq!(distance_m(&at(52.52, 13.405), &at(52.52, 13.405)), 0.0);
    // A degree of longitude on the equator: 2πR/360.
    let degree = distance_m(&at(0.0, 0.0), &at(0.0, 1.0));
    assert!((degree - 111_195.08).abs() < 0.1, "{degree}");
    // Berlin to Munich: 504 km.
    let d = distance_m(&at(52.52, 13.405), &at(48.137, 11.575));
    assert!((d - 504_000.0).abs() < 2_000.0, "{d}");
    // Across the antimeridian it is short.
    let d = distance_m(&at(0.0, 179.9), &at(0.0, -179.9));
    assert!((d - 22_239.0).abs() < 1.0, "{d}");
    // Antipodes: half the circumference, not NaN.
    let d = distance_m(&at(90.0, 0.0), &at(-90.0, 0.0));
    assert!((d - std::f64::consts::PI * 6_371_008.8).abs() < 1.0, "{d}");
    assert!(distance_m(&at(f64::NAN, 0.0), &at(0.0, 0.0)).is_nan());
}

// ----- the filter -----

const BERLIN: (f64, f64) = (52.52, 13.405);

fn fix(lat: f64, lon: f64) -> Fix {
    Fix {
        lat,
        lon,
        alt_m: None,
        accuracy_m: Some(5.0),
        quality: FixQuality::TwoD,
        time_ms: None,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The point `metres` north of `from`.
fn north_of(from: (f64, f64), metres: f64) -> (f64, f64) {
    (from.0 + metres / 111_195.08, from.1)
}

#[test]
fn impossible_numbers_are_refused() {
    let mut filter = Filter::default();
    let judge = |filter: &mut Filter, fix: Fix| filter.handle(secs(0.0), Observation::Fix(fix));
    for bad in [
        fix(f64::NAN, 13.4),
        fix(52.5, f64::NAN),
        fix(f64::INFINITY, 13.4),
        fix(52.5, f64::NEG_INFINITY),
        Fix {
            alt_m: Some(f64::NAN),
            ..fix(52.5, 13.4)
        },
    ] {
        assert_eq!(judge(&mut filter, bad), Err(Refusal::NotFinite), "{bad:?}");
    }
    for bad in [
        fix(90.000_001, 0.0),
        fix(-91.0, 0.0),
        fix(0.0, 180.5),
        fix(0.0, -181.0),
        Fix {
            alt_m: Some(150_000.0),
            ..fix(52.5, 13.4)
        },
        Fix {
            alt_m: Some(-5_000.0),
            ..fix(52.5, 13.4)
        },
    ] {
        assert_eq!(judge(&mut filter, bad), Err(Refusal::OutOfRange), "{bad:?}");
    }
    assert_eq!(filter.anchor(), None, "nothing refused is believed");
    // The edges are on the globe.
    assert!(judge(&mut filter, fix(-90.0, 180.0)).is_ok());
    // Labels are a fixed set.
    let labels: Vec<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels, ["not_finite", "out_of_range", "jump"]);
}

#[test]
fn a_bad_error_estimate_is_dropped_not_the_fix() {
    let mut filter = Filter::default();
    for (t, accuracy) in [(0.0, -1.0), (1.0, f64::NAN), (2.0, f64::INFINITY)] {
        let given = Fix {
            accuracy_m: Some(accuracy),
            ..fix(BERLIN.0, BERLIN.1)
        };
        assert_eq!(
            filter.handle(secs(t), Observation::Fix(given)),
            Ok(Observation::Fix(Fix {
                accuracy_m: None,
                ..given
            }))
        );
    }
}

#[test]
fn a_500_km_jump_in_a_second_is_refused_and_the_anchor_stays() {
    let mut filter = Filter::default();
    let home = fix(BERLIN.0, BERLIN.1);
    assert!(filter.handle(secs(0.0), Observation::Fix(home)).is_ok());
    let (lat, lon) = north_of(BERLIN, 500_000.0);
    assert_eq!(
        filter.handle(secs(1.0), Observation::Fix(fix(lat, lon))),
        Err(Refusal::Jump)
    );
    assert_eq!(filter.anchor(), Some(&home));
    // The next good fix is judged against the anchor, not the glitch.
    let near = fix(north_of(BERLIN, 10.0).0, BERLIN.1);
    assert!(filter.handle(secs(2.0), Observation::Fix(near)).is_ok());
}

#[test]
fn a_real_relocation_re_anchors_after_three_agreeing_fixes() {
    let mut filter = Filter::default();
    assert!(
        filter
            .handle(secs(0.0), Observation::Fix(fix(BERLIN.0, BERLIN.1)))
            .is_ok()
    );
    // gpsd held the stale fix while the node was carried 200 km; now it sees where it is,
    // with some noise.
    let away = north_of(BERLIN, 200_000.0);
    let at = |noise: f64| fix(north_of(away, noise).0, away.1);
    assert_eq!(
        filter.handle(secs(1.0), Observation::Fix(at(0.0))),
        Err(Refusal::Jump)
    );
    assert_eq!(
        filter.handle(secs(2.0), Observation::Fix(at(8.0))),
        Err(Refusal::Jump)
    );
    assert!(filter.handle(secs(3.0), Observation::Fix(at(-4.0))).is_ok());
    assert_eq!(filter.anchor(), Some(&at(-4.0)));
    assert!(filter.handle(secs(4.0), Observation::Fix(at(3.0))).is_ok());
    // And Berlin is now the jump.
    assert_eq!(
        filter.handle(secs(5.0), Observation::Fix(fix(BERLIN.0, BERLIN.1))),
        Err(Refusal::Jump)
    );
}

#[test]
fn glitches_that_disagree_never_move_the_anchor() {
    let mut filter = Filter::default();
    let home = fix(BERLIN.0, BERLIN.1);
    assert!(filter.handle(secs(0.0), Observation::Fix(home)).is_ok());
    let a = north_of(BERLIN, 300_000.0);
    let b = north_of(BERLIN, -300_000.0);
    for t in 1..100 {
        let glitch = if t % 2 == 0 { a } else { b };
        assert_eq!(
            filter.handle(
                secs(f64::from(t)),
                Observation::Fix(fix(glitch.0, glitch.1))
            ),
            Err(Refusal::Jump)
        );
    }
    assert_eq!(filter.anchor(), Some(&home));
    // Two agreeing glitches, a good fix between them and the third: the run starts over.
    for t in [100.0, 101.0] {
        assert!(
            filter
                .handle(secs(t), Observation::Fix(fix(a.0, a.1)))
                .is_err()
        );
    }
    assert!(filter.handle(secs(102.0), Observation::Fix(home)).is_ok());
    assert!(
        filter
            .handle(secs(103.0), Observation::Fix(fix(a.0, a.1)))
            .is_err()
    );
    assert_eq!(filter.anchor(), Some(&home));
}

#[test]
fn a_steady_drive_at_50_km_h_is_believed() {
    let mut filter = Filter::default();
    let speed = 50.0 / 3.6;
    for t in 0..3600 {
        let t = f64::from(t);
        let (lat, lon) = north_of((10.0, 20.0), speed * t);
        assert!(
            filter
                .handle(secs(t), Observation::Fix(fix(lat, lon)))
                .is_ok(),
            "at {t} s"
        );
    }
}

#[test]
fn time_allows_for_the_journey_and_noise_for_an_instant() {
    let mut filter = Filter::default();
    assert!(
        filter
            .handle(secs(0.0), Observation::Fix(fix(BERLIN.0, BERLIN.1)))
            .is_ok()
    );
    // An hour later, 200 km away: a drive, not a jump.
    let away = north_of(BERLIN, 200_000.0);
    assert!(
        filter
            .handle(secs(3600.0), Observation::Fix(fix(away.0, away.1)))
            .is_ok()
    );
    // Two fixes in the same instant, 30 m apart: noise.
    let near = north_of(away, 30.0);
    assert!(
        filter
            .handle(secs(3600.0), Observation::Fix(fix(near.0, near.1)))
            .is_ok()
    );
}

#[test]
fn fix_loss_passes_through() {
    let mut filter = Filter::default();
    let lost = Observation::NoFix { time_ms: Some(7) };
    assert_eq!(filter.handle(secs(0.0), lost), Ok(lost));
    // A fix that says it is none is a no-fix observation.
    let none = Fix {
        quality: FixQuality::NoFix,
        time_ms: Some(9),
        ..fix(f64::NAN, 0.0)
    };
    assert_eq!(
        filter.handle(secs(1.0), Observation::Fix(none)),
        Ok(Observation::NoFix { time_ms: Some(9) })
    );
}

#[test]
fn relocate_after_one_turns_the_jump_check_off() {
    let mut filter = Filter::new(FilterPolicy {
        relocate_after: 0,
        ..FilterPolicy::default()
    });
    assert!(
        filter
            .handle(secs(0.0), Observation::Fix(fix(0.0, 0.0)))
            .is_ok()
    );
    assert!(
        filter
            .handle(secs(1.0), Observation::Fix(fix(45.0, 90.0)))
            .is_ok()
    );
}

// ----- the reporter -----

const BERLIN_POINT: GeoPoint = GeoPoint {
    lat: 52.52,
    lon: 13.405,
    alt_m: Some(34.0),
};

/// Runs `reporter` as the shell does: each observation at its time, and in between a poll
/// at every time the reporter asked to be woken. Returns the reports and when they went.
fn run(
    reporter: &mut Reporter,
    observations: impl IntoIterator<Item = (Duration, Observation)>,
    until: Duration,
) -> Vec<(Duration, Report)> {
    let mut out = Vec::new();
    let wake = |reporter: &mut Reporter, out: &mut Vec<_>, until: Duration| {
        while let Some(due) = reporter.next_due().filter(|d| *d <= until) {
            if let Some(r) = reporter.poll(due) {
                out.push((due, r));
            }
        }
    };
    for (at, observation) in observations {
        wake(reporter, &mut out, at);
        if let Some(r) = reporter.observe(at, observation) {
            out.push((at, r));
        }
    }
    wake(reporter, &mut out, until);
    out
}

fn observed(lat: f64, lon: f64, t: u64) -> Observation {
    Observation::Fix(Fix {
        time_ms: Some(1_796_634_611_000 + t * 1000),
        ..fix(lat, lon)
    })
}

#[test]
fn the_first_fix_goes_at_once() {
    let mut reporter = Reporter::new(ReportPolicy::default(), None);
    assert_eq!(reporter.poll(secs(0.0)), None);
    assert_eq!(
        reporter.next_due(),
        None,
        "nothing to report, nothing to wake for"
    );
    let report = reporter
        .observe(secs(42.0), observed(BERLIN.0, BERLIN.1, 0))
        .expect("the first fix");
    assert_eq!(report.source, Source::Gpsd);
    assert_eq!(report.fix.quality, FixQuality::TwoD);
    assert_eq!(reporter.current(), Some(report));
}

#[test]
fn a_drive_at_50_km_h_reports_every_5_s_by_the_minimum_interval() {
    let speed = 50.0 / 3.6;
    let drive = |policy: ReportPolicy| {
        let mut reporter = Reporter::new(policy, None);
        let fixes = (0..600u64).map(|t| {
            let (lat, lon) = north_of(BERLIN, speed * t as f64);
            (Duration::from_secs(t), observed(lat, lon, t))
        });
        run(&mut reporter, fixes, Duration::from_secs(599))
    };
    // 50 m is 3.6 s of driving, but reports are at least 5 s apart: every 5 s.
    let reports = drive(ReportPolicy::default());
    let times: Vec<u64> = reports.iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, (0..600).step_by(5).collect::<Vec<_>>());
    // With a 1 s minimum, the distance decides: the first whole second past 50 m, every 4 s.
    let reports = drive(ReportPolicy {
        min_interval: Duration::from_secs(1),
        ..ReportPolicy::default()
    });
    let times: Vec<u64> = reports.iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, (0..600).step_by(4).collect::<Vec<_>>());
    for pair in reports.windows(2) {
        let moved = distance_m(&pair[0].1.fix, &pair[1].1.fix);
        assert!(moved > 50.0 && moved < 60.0, "{moved}");
    }
}

#[test]
fn a_parked_node_reports_only_its_heartbeat() {
    let mut reporter = Reporter::new(ReportPolicy::default(), None);
    let mut rng = fastrand::Rng::with_seed(5);
    let jitter = |rng: &mut fastrand::Rng| (rng.f64() - 0.5) * 10.0;
    let fixes: Vec<_> = (0..=3600u64)
        .map(|t| {
            let (lat, lon) = north_of(BERLIN, jitter(&mut rng));
            let lon = lon + jitter(&mut rng) / 68_000.0;
            (Duration::from_secs(t), observed(lat, lon, t))
        })
        .collect();
    let reports = run(&mut reporter, fixes, Duration::from_secs(3600));
    let times: Vec<u64> = reports.iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, (0..=3600).step_by(300).collect::<Vec<_>>());
    // Each heartbeat carries the position of its moment.
    assert!(reports.iter().all(|(_, r)| r.fix.quality.has_fix()));
}

#[test]
fn fix_loss_and_return_are_reported() {
    let mut reporter = Reporter::new(ReportPolicy::default(), None);
    let mut observations: Vec<_> = (0..=100u64)
        .map(|t| (Duration::from_secs(t), observed(BERLIN.0, BERLIN.1, t)))
        .collect();
    // A tunnel: gpsd says mode 1 every second.
    observations.extend((101..=200u64).map(|t| {
        (
            Duration::from_secs(t),
            Observation::NoFix {
                time_ms: Some(1_796_634_611_000 + t * 1000),
            },
        )
    }));
    // Out of it, 150 m further on.
    let out = north_of(BERLIN, 150.0);
    observations
        .extend((201..=300u64).map(|t| (Duration::from_secs(t), observed(out.0, out.1, t))));
    let reports = run(&mut reporter, observations, Duration::from_secs(300));
    let summary: Vec<(u64, FixQuality)> = reports
        .iter()
        .map(|(t, r)| (t.as_secs(), r.fix.quality))
        .collect();
    assert_eq!(
        summary,
        [
            (0, FixQuality::TwoD),
            (101, FixQuality::NoFix),
            (201, FixQuality::TwoD),
        ]
    );
    // The loss carries the last fix's place and time, from the receiver.
    let lost = reports[1].1;
    assert_eq!(lost.source, Source::Gpsd);
    assert_eq!((lost.fix.lat, lost.fix.lon), BERLIN);
    assert_eq!(lost.fix.time_ms, Some(1_796_634_611_000 + 100_000));
    assert_eq!(reports[2].1.fix.lat, out.0);
}

#[test]
fn a_loss_right_after_a_report_waits_for_the_minimum_interval() {
    let mut reporter = Reporter::new(ReportPolicy::default(), None);
    let observations = [
        (secs(0.0), observed(BERLIN.0, BERLIN.1, 0)),
        (secs(1.0), Observation::NoFix { time_ms: None }),
    ];
    let reports = run(&mut reporter, observations, secs(30.0));
    let times: Vec<f64> = reports.iter().map(|(t, _)| t.as_secs_f64()).collect();
    assert_eq!(times, [0.0, 5.0]);
    assert_eq!(reports[1].1.fix.quality, FixQuality::NoFix);
}

#[test]
fn a_silent_receiver_counts_as_having_lost_its_fix() {
    let mut reporter = Reporter::new(ReportPolicy::default(), None);
    // Fixes until 100 s, then nothing at all: gpsd died, or the receiver was unplugged.
    let fixes = (0..=100u64).map(|t| (Duration::from_secs(t), observed(BERLIN.0, BERLIN.1, t)));
    let reports = run(&mut reporter, fixes, Duration::from_secs(1000));
    let summary: Vec<(u64, FixQuality)> = reports
        .iter()
        .map(|(t, r)| (t.as_secs(), r.fix.quality))
        .collect();
    // Stale 10 s after the last fix; then the heartbeat carries on.
    assert_eq!(
        summary,
        [
            (0, FixQuality::TwoD),
            (110, FixQuality::NoFix),
            (410, FixQuality::NoFix),
            (710, FixQuality::NoFix),
        ]
    );
}

#[test]
fn the_fallback_stands_in_until_the_first_fix() {
    let mut reporter = Reporter::new(ReportPolicy::default(), Some(BERLIN_POINT));
    let fallback = Report {
        source: Source::Fixed,
        fix: Fix {
            lat: 52.52,
            lon: 13.405,
            alt_m: Some(34.0),
            accuracy_m: None,
            quality: FixQuality::NoFix,
            time_ms: None,
        },
    };
    assert_eq!(reporter.current(), Some(fallback));
    // Reported at once, and as the heartbeat while the receiver has no fix.
    let mut observations: Vec<_> = (0..=700u64)
        .map(|t| (Duration::from_secs(t), Observation::NoFix { time_ms: None }))
        .collect();
    // The first fix, right next to the fallback: the source changed, so it is due.
    observations.push((Duration::from_secs(702), observed(52.52, 13.405, 702)));
    let reports = run(&mut reporter, observations, Duration::from_secs(702));
    let times: Vec<u64> = reports.iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, [0, 300, 600, 702]);
    assert!(reports[..3].iter().all(|(_, r)| *r == fallback));
    assert_eq!(reports[3].1.source, Source::Gpsd);
    // Lost again: the last fix, not the fallback.
    let lost = reporter
        .observe(
            Duration::from_secs(800),
            Observation::NoFix { time_ms: None },
        )
        .expect("the loss is due");
    assert_eq!(
        (lost.source, lost.fix.quality),
        (Source::Gpsd, FixQuality::NoFix)
    );
}

#[test]
fn a_fixed_location_is_a_heartbeat() {
    let mut reporter = Reporter::new(
        ReportPolicy {
            max_interval: Duration::from_secs(60),
            ..ReportPolicy::default()
        },
        Some(BERLIN_POINT),
    );
    let reports = run(&mut reporter, [], Duration::from_secs(600));
    let times: Vec<u64> = reports.iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, (0..=600).step_by(60).collect::<Vec<_>>());
    assert!(reports.iter().all(|(_, r)| r.source == Source::Fixed));
}

/// One step of an arbitrary history: how long after the last one, and what gpsd said.
#[derive(Debug, Clone)]
enum Step {
    /// A fix this many metres north and east of the origin.
    Fix {
        north: f64,
        east: f64,
    },
    NoFix,
    /// Nothing observed: only the clock moves.
    Quiet,
}

fn step() -> impl Strategy<Value = (u64, Step)> {
    (
        0u64..20_000,
        prop_oneof![
            6 => (-500.0..500.0f64, -500.0..500.0f64)
                .prop_map(|(north, east)| Step::Fix { north, east }),
            1 => Just(Step::NoFix),
            1 => Just(Step::Quiet),
        ],
    )
}

proptest! {
    /// Whatever gpsd says and whenever: reports are never closer together than the minimum
    /// interval, and never farther apart than the maximum while the shell polls when asked.
    #[test]
    fn reports_keep_to_the_intervals(
        steps in proptest::collection::vec(step(), 1..300),
        min_secs in 1u64..20,
        extra_secs in 0u64..100,
        distance_m in 1u32..200,
        fallback in any::<bool>(),
    ) {
        let policy = ReportPolicy {
            distance_m,
            min_interval: Duration::from_secs(min_secs),
            max_interval: Duration::from_secs(min_secs + extra_secs),
        };
        let mut reporter = Reporter::new(policy, fallback.then_some(BERLIN_POINT));
        let mut now = Duration::ZERO;
        let mut observations = Vec::new();
        for (gap_ms, step) in steps {
            now += Duration::from_millis(gap_ms);
            let observation = match step {
                Step::Fix { north, east } => {
                    let (lat, lon) = north_of(BERLIN, north);
                    observed(lat, lon + east / 68_000.0, 0)
                }
                Step::NoFix => Observation::NoFix { time_ms: None },
                Step::Quiet => continue,
            };
            observations.push((now, observation));
        }
        let until = now + Duration::from_secs(1000);
        let reports = run(&mut reporter, observations, until);
        for pair in reports.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            prop_assert!(gap >= policy.min_interval, "{gap:?} < min, {pair:?}");
            prop_assert!(gap <= policy.max_interval, "{gap:?} > max, {pair:?}");
        }
        // Once anything was reported, the heartbeat never stops.
        if let Some((last, _)) = reports.last() {
            prop_assert!(until - *last < policy.max_interval);
        }
        // With a fallback, something is reported at once.
        if fallback {
            prop_assert_eq!(reports.first().map(|(t, _)| *t), Some(Duration::ZERO));
        }
    }
}
