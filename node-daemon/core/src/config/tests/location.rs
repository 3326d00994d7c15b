//! `location`: a fixed point or a gpsd receiver, its fallback and its report policy, and how a
//! join file's point fills in.

use super::*;
use crate::location::ReportPolicy;

const LOC: &str = "location = { lat = 52.52, lon = 13.405 }";

fn with_location(location: &str) -> String {
    example_with(LOC, location)
}

fn location_of(toml: &str) -> LocationConfig {
    Config::from_toml(toml)
        .expect("valid")
        .location_config()
        .expect("has a location")
        .clone()
}

#[test]
fn a_fixed_location_is_the_point_with_the_default_policy() {
    let berlin = GeoPoint {
        lat: 52.52,
        lon: 13.405,
        alt_m: None,
    };
    for written in [
        LOC,
        r#"location = { source = "fixed", lat = 52.52, lon = 13.405 }"#,
    ] {
        let c = Config::from_toml(&with_location(written)).expect("valid");
        let location = c.location_config().expect("has a location");
        assert_eq!(location.source, LocationSource::Fixed(berlin));
        assert_eq!(location.report, ReportPolicy::default());
        assert_eq!(c.location(), Some(berlin));
    }
    let policy = location_of(&with_location(
        "location = { lat = 1, lon = 2, report_max_secs = 60 }",
    ))
    .report;
    assert_eq!(policy.max_interval, Duration::from_secs(60));
}

#[test]
fn gpsd_defaults() {
    let c = Config::from_toml(&with_location(r#"location = { source = "gpsd" }"#)).expect("valid");
    let location = c.location_config().expect("has a location");
    assert_eq!(
        location.source,
        LocationSource::Gpsd {
            address: DEFAULT_GPSD_ADDRESS.into(),
            fallback: None
        }
    );
    assert_eq!(DEFAULT_GPSD_ADDRESS, "127.0.0.1:2947");
    assert_eq!(
        location.report,
        ReportPolicy {
            distance_m: 50,
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(300),
        }
    );
    // No fallback: no location to say before the receiver has a fix.
    assert_eq!(c.location(), None);
    assert_eq!(c.location_wire(), None);
}

#[test]
fn gpsd_with_everything() {
    let c = Config::from_toml(&with_location(
        r#"location = { source = "gpsd", gpsd = "GPS.Local:10000", lat = -33.9, lon = 151.2, alt_m = 58.5, report_distance_m = 100000, report_min_secs = 3600, report_max_secs = 86400 }"#,
    ))
    .expect("valid");
    let fallback = GeoPoint {
        lat: -33.9,
        lon: 151.2,
        alt_m: Some(58.5),
    };
    let location = c.location_config().expect("has a location");
    assert_eq!(
        location.source,
        LocationSource::Gpsd {
            address: "gps.local:10000".into(),
            fallback: Some(fallback)
        }
    );
    assert_eq!(
        location.report,
        ReportPolicy {
            distance_m: 100_000,
            min_interval: Duration::from_secs(3600),
            max_interval: Duration::from_secs(86_400),
        }
    );
    // The fallback is what existing callers see.
    assert_eq!(c.location(), Some(fallback));
    assert_eq!(c.location_wire().map(|l| l.lat), Some(-33.9));
    // The smallest policy, and min = max.
    let policy = location_of(&with_location(
        r#"location = { source = "gpsd", report_distance_m = 1, report_min_secs = 1, report_max_secs = 1 }"#,
    ))
    .report;
    assert_eq!(policy.distance_m, 1);
    assert_eq!(policy.min_interval, policy.max_interval);
}

#[test]
fn gpsd_addresses_are_written_back_in_one_form() {
    for (written, kept) in [
        ("127.0.0.1:2947", "127.0.0.1:2947"),
        ("localhost:2947", "localhost:2947"),
        ("gpsd.lan.:1", "gpsd.lan:1"),
        ("[::1]:2947", "[::1]:2947"),
        ("[2001:DB8:0::1]:65535", "[2001:db8::1]:65535"),
    ] {
        let location = location_of(&with_location(&format!(
            r#"location = {{ source = "gpsd", gpsd = "{written}" }}"#
        )));
        let LocationSource::Gpsd { address, .. } = location.source else {
            panic!("a gpsd source");
        };
        assert_eq!(address, kept, "{written}");
    }
}

#[test]
fn bad_gpsd_addresses_name_the_field() {
    let bad = |address: &str| {
        invalid_field(
            &with_location(&format!(
                "location = {{ source = \"gpsd\", gpsd = {} }}",
                toml_str(address)
            )),
            "location.gpsd",
        )
    };
    assert!(bad("").contains("empty"));
    assert!(bad("localhost:0").contains("port 0"));
    assert!(bad("localhost:65536").contains("1..=65535"));
    assert!(bad("localhost:").contains("1..=65535"));
    assert!(bad("localhost:gps").contains("1..=65535"));
    assert!(bad("localhost").contains("no port"));
    assert!(bad(":2947").contains("no host"));
    assert!(bad("::1:2947").contains("brackets"));
    assert!(bad("tcp://localhost:2947").contains("scheme"));
    bad("[::1:2947");
    bad("gps d:2947");
    bad("-gpsd:2947");
    bad("300.1.1.1:2947");
    bad("gpsd\u{0}:2947");
    bad("gpsd\n:2947");
    // A huge string (as large as a config file may be) is refused by its length, and the
    // message does not echo it.
    let huge = format!("{}:2947", "a".repeat(60_000));
    let reason = bad(&huge);
    assert!(reason.contains("bytes long"), "{reason}");
    assert!(reason.len() < 200, "{reason}");
    // Exactly the longest host name is fine; one more byte is not.
    let label = "a".repeat(63);
    let longest = format!("{label}.{label}.{label}.{}", "a".repeat(61));
    assert_eq!(longest.len(), 253);
    location_of(&with_location(&format!(
        r#"location = {{ source = "gpsd", gpsd = "{longest}:2947" }}"#
    )));
    bad(&format!("{longest}a:2947"));
}

#[test]
fn bad_sources_and_points_name_the_field() {
    let bad = |location: &str, field: &str| invalid_field(&with_location(location), field);
    let reason = bad(r#"location = { source = "glonass" }"#, "location.source");
    assert!(reason.contains("\"fixed\" or \"gpsd\""), "{reason}");
    bad(r#"location = { source = "GPSD" }"#, "location.source");
    bad(r#"location = { source = "" }"#, "location.source");
    // A fixed location needs its point, and has no gpsd.
    bad(r#"location = { source = "fixed" }"#, "location.lat");
    bad("location = { report_max_secs = 60 }", "location.lat");
    bad(
        r#"location = { lat = 1, lon = 2, gpsd = "127.0.0.1:2947" }"#,
        "location.gpsd",
    );
    // lat and lon go together, alt_m only with them; in either source.
    for source in ["", r#"source = "gpsd", "#] {
        bad(&format!("location = {{ {source}lat = 1 }}"), "location.lon");
        bad(&format!("location = {{ {source}lon = 1 }}"), "location.lat");
        bad(
            &format!("location = {{ {source}alt_m = 1 }}"),
            "location.alt_m",
        );
        bad(
            &format!("location = {{ {source}lat = 91, lon = 0 }}"),
            "location.lat",
        );
        bad(
            &format!("location = {{ {source}lat = 0, lon = -180.01 }}"),
            "location.lon",
        );
        for nonfinite in ["inf", "-inf", "nan"] {
            bad(
                &format!("location = {{ {source}lat = {nonfinite}, lon = 0 }}"),
                "location.lat",
            );
            bad(
                &format!("location = {{ {source}lat = 0, lon = {nonfinite} }}"),
                "location.lon",
            );
            bad(
                &format!("location = {{ {source}lat = 0, lon = 0, alt_m = {nonfinite} }}"),
                "location.alt_m",
            );
        }
    }
}

#[test]
fn bad_report_policies_name_the_field() {
    let bad = |keys: &str, field: &str| {
        invalid_field(
            &with_location(&format!("location = {{ source = \"gpsd\", {keys} }}")),
            field,
        )
    };
    for v in [
        "0",
        "-1",
        "100001",
        "9223372036854775807",
        "-9223372036854775808",
    ] {
        let reason = bad(
            &format!("report_distance_m = {v}"),
            "location.report_distance_m",
        );
        assert!(reason.contains("1..=100000"), "{reason}");
    }
    for v in ["0", "-5", "3601"] {
        bad(
            &format!("report_min_secs = {v}"),
            "location.report_min_secs",
        );
    }
    for v in ["0", "86401"] {
        bad(
            &format!("report_max_secs = {v}"),
            "location.report_max_secs",
        );
    }
    let reason = bad(
        "report_min_secs = 60, report_max_secs = 59",
        "location.report_max_secs",
    );
    assert!(
        reason.contains("less than report_min_secs (60)"),
        "{reason}"
    );
    // A minimum above the default maximum names the minimum: that is what was written.
    let reason = bad("report_min_secs = 301", "location.report_min_secs");
    assert!(reason.contains("report_max_secs"), "{reason}");
    // A fixed location checks them too.
    invalid_field(
        &with_location("location = { lat = 1, lon = 2, report_max_secs = 0 }"),
        "location.report_max_secs",
    );
}

#[test]
fn wrong_shapes_and_unknown_keys_are_parse_errors() {
    for (location, named) in [
        (r#"location = { source = "gpsd", gpds = "x:1" }"#, "gpds"),
        (
            r#"location = { source = "gpsd", report_every_secs = 5 }"#,
            "report_every_secs",
        ),
        ("location = { lat = 1, lon = 2, altitude = 3 }", "altitude"),
    ] {
        let msg = parse_error(&with_location(location));
        assert!(msg.contains(named), "{msg}");
    }
    parse_error(&with_location(
        r#"location = { source = "gpsd", gpsd = 2947 }"#,
    ));
    parse_error(&with_location(r#"location = { source = 1 }"#));
    parse_error(&with_location(
        r#"location = { source = "gpsd", report_min_secs = 1.5 }"#,
    ));
    parse_error(&with_location(
        r#"location = { source = "gpsd", report_min_secs = "5" }"#,
    ));
    parse_error(&with_location(r#"location = "gpsd""#));
}

const PACKAGED_GPSD: &str = r#"
version = 1
data_dir = "/var/lib/edge-node"
join_file = ["/boot/edge-join.toml"]
location = { source = "gpsd" }
"#;

const JOIN: &str = r#"
orchestrator = "orch.example.net:7443"
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
name = "pi-7"
location = { lat = 48.1, lon = 11.6 }
"#;

#[test]
fn a_join_files_point_is_the_fallback_of_a_gpsd_source_without_one() {
    let join = JoinFile::from_bytes(JOIN.as_bytes()).expect("valid join file");
    let munich = GeoPoint {
        lat: 48.1,
        lon: 11.6,
        alt_m: None,
    };
    let file = ConfigFile::from_toml(PACKAGED_GPSD).expect("valid");
    assert_eq!(file.location(), None);
    let c = file.complete(Some(&join)).expect("complete");
    assert_eq!(
        c.location_config().map(|l| &l.source),
        Some(&LocationSource::Gpsd {
            address: DEFAULT_GPSD_ADDRESS.into(),
            fallback: Some(munich)
        })
    );
    assert_eq!(c.location(), Some(munich));

    // The config file's own fallback wins.
    let own = PACKAGED_GPSD.replace(
        r#"{ source = "gpsd" }"#,
        r#"{ source = "gpsd", lat = 1, lon = 2 }"#,
    );
    let c = ConfigFile::from_toml(&own)
        .expect("valid")
        .complete(Some(&join))
        .expect("complete");
    assert_eq!(c.location().map(|p| p.lat), Some(1.0));

    // Without a location in the config file, the join file's point is a fixed location.
    let fixed = PACKAGED_GPSD.replace("location = { source = \"gpsd\" }\n", "");
    let c = ConfigFile::from_toml(&fixed)
        .expect("valid")
        .complete(Some(&join))
        .expect("complete");
    assert_eq!(c.location_config(), Some(&LocationConfig::fixed(munich)));
}

#[test]
fn a_join_file_takes_only_a_fixed_point() {
    let gpsd = JOIN.replace(
        "location = { lat = 48.1, lon = 11.6 }",
        r#"location = { source = "gpsd" }"#,
    );
    assert!(matches!(
        JoinFile::from_bytes(gpsd.as_bytes()),
        Err(ConfigError::Parse(_))
    ));
}
