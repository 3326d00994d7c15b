//! Names, labels, location, data dir, status interval and version: each field's own rules.

use super::*;

#[test]
fn example_parses() {
    let c = Config::from_toml(EXAMPLE).expect("the documented example is valid");
    assert_eq!(c.name(), "shop-berlin-1");
    assert_eq!(c.name_wire().as_str(), "shop-berlin-1");
    assert_eq!(c.data_dir(), Path::new("/var/lib/edge-node"));
    assert_eq!(c.labels().get("site").map(String::as_str), Some("berlin"));
    assert_eq!(
        c.location(),
        Some(GeoPoint {
            lat: 52.52,
            lon: 13.405,
            alt_m: None
        })
    );
    assert_eq!(c.status_interval(), Duration::from_secs(10));
    assert_eq!(
        c.orchestrator().host(),
        &Host::Dns("orchestrator.example.net".into())
    );
    assert_eq!(c.orchestrator().port(), 7443);
    assert_eq!(
        c.orchestrator().to_string(),
        "orchestrator.example.net:7443"
    );
    let join = c.join().expect("example has [join]");
    assert_eq!(join.token.id(), "abcdef");
    assert_eq!(
        join.token.as_str(),
        "abcdef.0123456789abcdef0123456789abcdef"
    );
    assert_eq!(join.ca_hash.as_bytes()[0], 0x00);
    assert_eq!(join.ca_hash.as_bytes()[1], 0x11);
    assert_eq!(join.ca_hash.as_bytes()[31], 0xff);
    assert_eq!(
        join.ca_hash.to_string(),
        "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    );
}

#[test]
fn product_md_example_parses() {
    // The contract in PRODUCT.md, with a real token and hash.
    let toml = r#"
version = 1
name = "shop-berlin-1"
data_dir = "/var/lib/edge-node"
labels = { site = "berlin" }
location = { lat = 52.52, lon = 13.405 }
[orchestrator]
address = "orchestrator.example.net:7443"
[join]                 # used on first start only
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"
"#;
    Config::from_toml(toml).expect("PRODUCT.md example is valid");
}

#[test]
fn optional_fields_default() {
    let toml = r#"
version = 1
name = "n1"
data_dir = "/d"
[orchestrator]
address = "10.0.0.1:7443"
"#;
    let c = Config::from_toml(toml).expect("minimal config is valid");
    assert!(c.labels().is_empty());
    assert!(c.labels_wire().is_empty());
    assert_eq!(c.location(), None);
    assert_eq!(c.location_wire(), None);
    assert_eq!(c.status_interval(), DEFAULT_STATUS_INTERVAL);
    assert!(c.join().is_none());
    assert_eq!(
        c.orchestrator().host(),
        &Host::Ip(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)))
    );
}

#[test]
fn wire_conversions() {
    let toml = example_with(
        r#"labels = { site = "berlin" }"#,
        r#"labels = { zone = "a", site = "berlin", "example.com/tier" = "edge" }"#,
    )
    .replace(
        "location = { lat = 52.52, lon = 13.405 }",
        "location = { lat = -33, lon = 151.2, alt_m = 58.5 }",
    );
    let c = Config::from_toml(&toml).expect("valid");
    let labels = c.labels_wire();
    let keys: Vec<&str> = labels.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["example.com/tier", "site", "zone"], "sorted by key");
    assert_eq!(labels[1].value.as_str(), "berlin");
    let loc = c.location_wire().expect("has a location");
    assert_eq!((loc.lat, loc.lon, loc.alt_m), (-33.0, 151.2, Some(58.5)));
    assert!(loc.is_valid());
}

#[test]
fn full_label_set_fits_the_wire() {
    let mut labels = String::from("[labels]\n");
    for i in 0..MAX_LABELS {
        let key = format!("k{i:0>62}");
        labels.push_str(&format!("{key} = \"{}\"\n", "v".repeat(63)));
    }
    let toml = example_with(r#"labels = { site = "berlin" }"#, "")
        .replace("[orchestrator]", &format!("{labels}[orchestrator]"));
    let c = Config::from_toml(&toml).expect("32 labels of maximal size are valid");
    let wire = c.labels_wire();
    assert_eq!(wire.len(), MAX_LABELS);
    assert!(
        wire.iter()
            .all(|l| l.key.len() == 63 && l.value.len() == 63)
    );
}

#[test]
fn version_must_be_supported() {
    let reason = invalid_field(&example_with("version = 1", "version = 2"), "version");
    assert!(reason.contains("version 1"), "{reason}");
    invalid_field(&example_with("version = 1", "version = 0"), "version");
    invalid_field(&example_with("version = 1", "version = -1"), "version");
}

#[test]
fn newer_version_with_new_fields_says_version() {
    let toml = example_with("version = 1", "version = 2\nsome_new_field = true");
    invalid_field(&toml, "version");
}

#[test]
fn missing_version_is_a_parse_error() {
    let msg = parse_error(&example_with("version = 1", ""));
    assert!(msg.contains("version"), "{msg}");
}

#[test]
fn bad_names() {
    for bad in [
        "", "Shop", "shop_1", "-shop", "shop-", "shöp", "shop 1", "shop\n1",
    ] {
        let toml = example_with(
            r#"name = "shop-berlin-1""#,
            &format!("name = {}", toml_str(bad)),
        );
        invalid_field(&toml, "name");
    }
    let ok = "a".repeat(63);
    let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{ok}\""));
    Config::from_toml(&toml).expect("63 characters is the limit, inclusive");
}

#[test]
fn ten_thousand_char_name_is_refused_briefly() {
    let long = "a".repeat(10_000);
    let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{long}\""));
    let reason = invalid_field(&toml, "name");
    assert!(reason.contains("10000"), "{reason}");
    assert!(reason.len() < 200, "the value is not echoed: {reason}");
    let long = "A".repeat(50);
    let toml = example_with(r#"name = "shop-berlin-1""#, &format!("name = \"{long}\""));
    let reason = invalid_field(&toml, "name");
    assert!(reason.contains('…'), "long values are cut: {reason}");
}

#[test]
fn bad_data_dir() {
    invalid_field(
        &example_with(r#"data_dir = "/var/lib/edge-node""#, r#"data_dir = """#),
        "data_dir",
    );
    invalid_field(
        &example_with(
            r#"data_dir = "/var/lib/edge-node""#,
            r#"data_dir = "/var/\u0000x""#,
        ),
        "data_dir",
    );
}

#[test]
fn bad_label_keys_and_values() {
    let cases = [
        (r#"labels = { "bad key" = "x" }"#, r#"labels."bad key""#),
        (r#"labels = { "" = "x" }"#, r#"labels."""#),
        (r#"labels = { "a\nb" = "x" }"#, r#"labels."a\nb""#),
        (r#"labels = { "ключ" = "x" }"#, r#"labels."ключ""#),
        (r#"labels = { "a:b" = "x" }"#, r#"labels."a:b""#),
        (r#"labels = { site = "a\u0007b" }"#, "labels.site"),
        (r#"labels = { site = "line\nbreak" }"#, "labels.site"),
    ];
    for (line, field) in cases {
        invalid_field(
            &example_with(r#"labels = { site = "berlin" }"#, line),
            field,
        );
    }
    let long_key = format!(r#"labels = {{ {} = "x" }}"#, "k".repeat(64));
    invalid_field(
        &example_with(r#"labels = { site = "berlin" }"#, &long_key),
        &(format!("labels.{:?}", "k".repeat(40)) + "…"),
    );
    // 63 bytes is the limit, counted in bytes: 32 two-byte characters are 64 bytes.
    let long_value = format!(r#"labels = {{ site = "{}" }}"#, "é".repeat(32));
    let reason = invalid_field(
        &example_with(r#"labels = { site = "berlin" }"#, &long_value),
        "labels.site",
    );
    assert!(reason.contains("64 bytes"), "{reason}");
    let ok = r#"labels = { "example.com/zone_a-1" = "Berlin Mitte, 2nd floor", empty = "" }"#;
    Config::from_toml(&example_with(r#"labels = { site = "berlin" }"#, ok))
        .expect("dotted keys with / _ - and empty values are valid");
}

#[test]
fn label_key_with_newline_is_escaped_in_the_error() {
    let toml = example_with(
        r#"labels = { site = "berlin" }"#,
        r#"labels = { "evil\nkey" = "x" }"#,
    );
    let err = Config::from_toml(&toml).expect_err("newline in key");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "no raw newline in {msg:?}");
    assert!(msg.starts_with(r#"labels."evil\nkey": "#), "{msg}");
}

#[test]
fn thirty_three_labels() {
    let mut labels = String::from("[labels]\n");
    for i in 0..33 {
        labels.push_str(&format!("k{i} = \"v\"\n"));
    }
    let toml = example_with(r#"labels = { site = "berlin" }"#, "")
        .replace("[orchestrator]", &format!("{labels}[orchestrator]"));
    let reason = invalid_field(&toml, "labels");
    assert!(reason.contains("33"), "{reason}");
}

#[test]
fn bad_locations() {
    let loc = "location = { lat = 52.52, lon = 13.405 }";
    let reason = invalid_field(
        &example_with(loc, "location = { lat = 91, lon = 0 }"),
        "location.lat",
    );
    assert_eq!(reason, "91 is out of range -90..=90");
    invalid_field(
        &example_with(loc, "location = { lat = -90.0001, lon = 0 }"),
        "location.lat",
    );
    invalid_field(
        &example_with(loc, "location = { lat = 0, lon = 180.5 }"),
        "location.lon",
    );
    invalid_field(
        &example_with(loc, "location = { lat = 0, lon = -181 }"),
        "location.lon",
    );
    for nonfinite in ["nan", "+inf", "-inf", "-nan"] {
        invalid_field(
            &example_with(loc, &format!("location = {{ lat = {nonfinite}, lon = 0 }}")),
            "location.lat",
        );
        invalid_field(
            &example_with(loc, &format!("location = {{ lat = 0, lon = {nonfinite} }}")),
            "location.lon",
        );
        invalid_field(
            &example_with(
                loc,
                &format!("location = {{ lat = 0, lon = 0, alt_m = {nonfinite} }}"),
            ),
            "location.alt_m",
        );
    }
    // The edges are on the globe.
    Config::from_toml(&example_with(
        loc,
        "location = { lat = -90, lon = 180, alt_m = -430.5 }",
    ))
    .expect("poles and antimeridian are valid");
    // lat without lon names the missing field.
    invalid_field(&example_with(loc, "location = { lat = 1 }"), "location.lon");
}

#[test]
fn bad_status_interval() {
    let line = "status_interval_secs = 10";
    for bad in ["0", "-1", "3601", "9223372036854775807"] {
        invalid_field(
            &example_with(line, &format!("status_interval_secs = {bad}")),
            "status_interval_secs",
        );
    }
    let c = Config::from_toml(&example_with(line, "status_interval_secs = 3600"))
        .expect("3600 is the limit, inclusive");
    assert_eq!(c.status_interval(), Duration::from_secs(3600));
}

#[test]
fn liveness_profiles() {
    let line = "status_interval_secs = 10";
    let c = Config::from_toml(EXAMPLE).expect("valid");
    assert_eq!(c.liveness(), Liveness::FAST, "the default");
    let with = |to: &str| Config::from_toml(&example_with(line, to)).expect("valid");
    assert_eq!(with("liveness = \"fast\"").liveness(), Liveness::FAST);
    assert_eq!(
        with("liveness = \"fast\"").status_interval(),
        DEFAULT_STATUS_INTERVAL
    );
    // A metered node reports its status every 5 minutes unless told otherwise.
    let metered = with("liveness = \"metered\"");
    assert_eq!(metered.liveness(), Liveness::METERED);
    assert_eq!(metered.status_interval(), METERED_STATUS_INTERVAL);
    let told = with("liveness = \"metered\"\nstatus_interval_secs = 30");
    assert_eq!(told.status_interval(), Duration::from_secs(30));
    let own = with("liveness = { keep_alive_secs = 5, idle_timeout_secs = 15 }");
    assert_eq!(
        own.liveness(),
        Liveness {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
        }
    );
    assert_eq!(own.status_interval(), DEFAULT_STATUS_INTERVAL);
    let slow = with("liveness = { keep_alive_secs = 30, idle_timeout_secs = 600 }");
    assert_eq!(slow.liveness().idle_timeout, Duration::from_secs(600));
    assert_eq!(slow.status_interval(), METERED_STATUS_INTERVAL);
}

#[test]
fn bad_liveness() {
    let line = "status_interval_secs = 10";
    let bad = |to: &str, field: &str| invalid_field(&example_with(line, to), field);
    let why = bad("liveness = \"slow\"", "liveness");
    assert!(why.contains("\"fast\", \"metered\""), "{why}");
    assert!(why.contains("\"slow\""), "{why}");
    bad("liveness = \"\"", "liveness");
    bad("liveness = \"FAST\"", "liveness");
    bad(
        &format!("liveness = \"{}\"", "x".repeat(10_000)),
        "liveness",
    );
    bad("liveness = 60", "liveness");
    bad("liveness = true", "liveness");
    bad("liveness = [\"fast\"]", "liveness");
    let why = bad(
        "liveness = { keep_alive_secs = 5, idle_timeout_secs = 15, jitter = 1 }",
        "liveness.jitter",
    );
    assert!(why.contains("unknown field"), "{why}");
    bad(
        "liveness = { keep_alive_secs = 5, \"a b\" = 1, idle_timeout_secs = 15 }",
        "liveness.\"a b\"",
    );
    let why = bad(
        "liveness = { keep_alive_secs = 5 }",
        "liveness.idle_timeout_secs",
    );
    assert!(why.contains("missing"), "{why}");
    bad(
        "liveness = { idle_timeout_secs = 15 }",
        "liveness.keep_alive_secs",
    );
    bad("liveness = {}", "liveness.keep_alive_secs");
    for keep_alive in ["0", "-1", "301", "9223372036854775807", "1.5", "\"5\""] {
        bad(
            &format!("liveness = {{ keep_alive_secs = {keep_alive}, idle_timeout_secs = 600 }}"),
            "liveness.keep_alive_secs",
        );
    }
    for idle in ["0", "1", "601", "-9223372036854775808", "nan"] {
        bad(
            &format!("liveness = {{ keep_alive_secs = 1, idle_timeout_secs = {idle} }}"),
            "liveness.idle_timeout_secs",
        );
    }
    // One lost keep-alive must never kill the link.
    let why = bad(
        "liveness = { keep_alive_secs = 10, idle_timeout_secs = 19 }",
        "liveness.idle_timeout_secs",
    );
    assert!(why.contains("twice"), "{why}");
}

#[test]
fn the_outbox_table_sets_the_budget_and_the_uplink_pace() {
    let c = Config::from_toml(EXAMPLE).expect("valid");
    assert_eq!(c.outbox(), OutboxSettings::default());
    assert_eq!(c.outbox().max_bytes, 4 << 20);
    let with = |table: &str| format!("{EXAMPLE}[outbox]\n{table}\n");
    assert_eq!(c.outbox().metrics_window_secs, 300);
    let c = Config::from_toml(&with(
        "max_bytes = 16777216\nuplink_bytes_per_sec = 2048\nmetrics_window_secs = 60",
    ))
    .expect("valid");
    assert_eq!(c.outbox().max_bytes, 16 << 20);
    assert_eq!(c.outbox().uplink_bytes_per_sec, Some(2048));
    assert_eq!(c.outbox().metrics_window_secs, 60);
    for (table, field) in [
        ("max_bytes = 1000", "outbox.max_bytes"),
        ("max_bytes = -1", "outbox.max_bytes"),
        ("max_bytes = 9223372036854775807", "outbox.max_bytes"),
        ("uplink_bytes_per_sec = 0", "outbox.uplink_bytes_per_sec"),
        ("uplink_bytes_per_sec = -5", "outbox.uplink_bytes_per_sec"),
        ("metrics_window_secs = 4", "outbox.metrics_window_secs"),
        ("metrics_window_secs = -300", "outbox.metrics_window_secs"),
        ("metrics_window_secs = 86401", "outbox.metrics_window_secs"),
    ] {
        let message = invalid_field(&with(table), field);
        assert!(message.contains("out of range"), "{table}: {message}");
    }
    assert!(matches!(
        Config::from_toml(&with("max_byte = 65536")),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn the_containers_table_names_the_runtime() {
    let c = Config::from_toml(EXAMPLE).expect("valid");
    assert_eq!(c.containers().runtime, None, "found on PATH when not named");
    let with = |table: &str| format!("{EXAMPLE}[containers]\n{table}\n");
    let c = Config::from_toml(&with("runtime = \"/usr/local/bin/crun\"")).expect("valid");
    assert_eq!(
        c.containers().runtime.as_deref(),
        Some(Path::new("/usr/local/bin/crun"))
    );
    let message = invalid_field(&with("runtime = \"runc\""), "containers.runtime");
    assert!(message.contains("absolute path"), "{message}");
    let message = invalid_field(
        &with("runtime = \"/bin/\\u0000runc\""),
        "containers.runtime",
    );
    assert!(message.contains("NUL"), "{message}");
    let long = format!("runtime = \"/{}\"", "r".repeat(5000));
    let message = invalid_field(&with(&long), "containers.runtime");
    assert!(message.contains("at most 4096"), "{message}");
    assert!(
        message.len() < 200,
        "a hostile value is not echoed whole: {message}"
    );
    assert!(matches!(
        Config::from_toml(&with("runtimes = \"/usr/sbin/runc\"")),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn the_ctl_socket_is_in_the_data_dir_unless_the_file_says() {
    let c = Config::from_toml(EXAMPLE).expect("valid");
    assert_eq!(
        c.ctl().socket,
        Path::new("/var/lib/edge-node").join(CtlSettings::SOCKET_NAME)
    );
    assert_eq!(c.ctl().group, None);
    let with = |lines: &str| example_with("status_interval_secs = 10", lines);
    let c = Config::from_toml(&with(
        "status_interval_secs = 10\nctl_socket = \"/run/edge-node/ctl.sock\"\nctl_group = \"edge\"",
    ))
    .expect("valid");
    assert_eq!(c.ctl().socket, Path::new("/run/edge-node/ctl.sock"));
    assert_eq!(c.ctl().group.as_deref(), Some("edge"));
    let long = format!("ctl_socket = \"/{}\"", "s".repeat(200));
    for (line, field) in [
        ("ctl_socket = \"run/ctl.sock\"", "ctl_socket"),
        ("ctl_socket = \"/run/\\u0000\"", "ctl_socket"),
        (long.as_str(), "ctl_socket"),
        ("ctl_group = \"\"", "ctl_group"),
        ("ctl_group = \"-x\"", "ctl_group"),
        ("ctl_group = \"wheel; rm\"", "ctl_group"),
        (
            "ctl_group = \"a-very-long-group-name-beyond-32-chars\"",
            "ctl_group",
        ),
    ] {
        invalid_field(&with(line), field);
    }
}
