//! The `[proxy]` table: no table, no proxy; defaults; every bound one past it, named by its
//! path; unknown keys; hostile and oversized values.

use super::*;
use crate::spec::Balance;

/// The example with a `[proxy]` table appended.
fn with_proxy(table: &str) -> String {
    format!("{EXAMPLE}{table}")
}

/// `[proxy]` listening on port 80, with `extra` lines in the table.
fn proxy(extra: &str) -> String {
    with_proxy(&format!("[proxy]\nlisten = \"0.0.0.0:80\"\n{extra}\n"))
}

/// `[proxy]` with one upstream of `lines`.
fn upstream(lines: &str) -> String {
    with_proxy(&format!(
        "[proxy]\nlisten = \"0.0.0.0:80\"\n[[proxy.upstream]]\n{lines}\n"
    ))
}

fn proxy_of(toml: &str) -> ProxyConfig {
    let c = Config::from_toml(toml).unwrap_or_else(|e| panic!("valid: {e}\n{toml}"));
    c.proxy().cloned().expect("a [proxy] table")
}

#[test]
fn no_table_no_proxy() {
    let c = Config::from_toml(EXAMPLE).expect("valid");
    assert!(c.proxy().is_none());
    assert!(
        ConfigFile::from_toml(EXAMPLE)
            .expect("valid")
            .proxy()
            .is_none()
    );
}

#[test]
fn a_listen_address_alone_takes_every_default() {
    let p = proxy_of(&proxy(""));
    assert_eq!(p.listen(), "0.0.0.0:80".parse().expect("addr"));
    assert_eq!(p.stale_if_offline_secs(), 86_400);
    assert_eq!(p.max_connections(), 1024);
    assert_eq!(p.header_timeout(), Duration::from_secs(10));
    assert_eq!(p.max_body_bytes(), 16 << 20);
    assert_eq!(p.route_samples_interval(), Some(Duration::from_secs(60)));
    assert!(p.prewarm(), "pre-warming is on unless turned off");
    assert_eq!(p.prewarm_threshold_percent(), 50);
    let cache = p.cache();
    assert_eq!(
        (cache.memory_bytes, cache.disk_bytes, cache.max_object_bytes),
        (8 << 20, 256 << 20, 8 << 20)
    );
    assert!(cache.enabled());
    assert!(p.upstreams().is_empty());
    assert_eq!(p.peer_listen(), None, "no peer listener unless asked for");
}

#[test]
fn every_field_is_read() {
    let p = proxy_of(&with_proxy(
        r#"
[proxy]
listen = "[::]:8080"
stale_if_offline_secs = 0
max_connections = 64
header_timeout_secs = 5
max_body_bytes = 1048576
route_samples_interval_secs = 0
prewarm = false
prewarm_threshold_percent = 30
[proxy.cache]
memory_bytes = 4194304
disk_bytes = 0
max_object_bytes = 1048576
[[proxy.upstream]]
origin = "http://10.0.0.5:8080/static/"
host = "Shop.Example.com"
path_prefix = "/static"
timeout_secs = 5
retries = 0
cache = false
stale_if_offline_secs = 600
balance = "round-robin"
[[proxy.upstream]]
origin = "http://[2001:db8::5]"
path_prefix = "/"
"#,
    ));
    assert_eq!(p.listen(), "[::]:8080".parse().expect("addr"));
    assert_eq!(p.stale_if_offline_secs(), 0);
    assert_eq!(p.max_connections(), 64);
    assert_eq!(p.header_timeout(), Duration::from_secs(5));
    assert_eq!(p.max_body_bytes(), 1 << 20);
    assert_eq!(p.route_samples_interval(), None, "0: no samples");
    assert!(!p.prewarm());
    assert_eq!(p.prewarm_threshold_percent(), 30);
    assert_eq!(p.cache().disk_bytes, 0, "no disk store");
    let [shop, rest] = p.upstreams() else {
        panic!("two upstreams: {:?}", p.upstreams());
    };
    assert_eq!(shop.origin.host, "10.0.0.5");
    assert_eq!(shop.origin.port, 8080);
    assert_eq!(shop.origin.base_path, "/static");
    assert_eq!(shop.origin.authority(), "10.0.0.5:8080");
    assert_eq!(shop.host.as_deref(), Some("shop.example.com"));
    assert_eq!(shop.path_prefix.as_deref(), Some("/static"));
    assert_eq!(shop.timeout(), Duration::from_secs(5));
    assert_eq!((shop.retries, shop.cache), (0, false));
    assert_eq!(shop.stale_if_offline(), Some(Duration::from_secs(600)));
    assert_eq!(shop.balance, Balance::RoundRobin);
    assert_eq!(rest.origin.authority(), "[2001:db8::5]:80");
    assert_eq!(rest.host, None);
    assert_eq!((rest.timeout_secs, rest.retries, rest.cache), (30, 2, true));
    assert_eq!(rest.balance, Balance::PeakEwma);
    assert_eq!(
        rest.stale_if_offline(),
        None,
        "an upstream's default is the table's: 0 here"
    );
}

#[test]
fn upstreams_serve_stale_as_long_as_the_table_says_unless_they_say_otherwise() {
    let p = proxy_of(&with_proxy(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nstale_if_offline_secs = 3600\n\
         [[proxy.upstream]]\norigin = \"http://a\"\npath_prefix = \"/a\"\n\
         [[proxy.upstream]]\norigin = \"http://b\"\npath_prefix = \"/b\"\nstale_if_offline_secs = 0\n",
    ));
    let stale: Vec<u32> = p
        .upstreams()
        .iter()
        .map(|u| u.stale_if_offline_secs)
        .collect();
    assert_eq!(stale, [3600, 0]);
    assert_eq!(p.listen().port(), 0, "port 0 takes any free port");
}

#[test]
fn a_packaged_config_keeps_its_proxy_when_completed() {
    let packaged = "version = 1\ndata_dir = \"/var/lib/edge-node\"\n\
                    join_file = [\"/boot/edge-join.toml\"]\n\
                    [proxy]\nlisten = \"0.0.0.0:80\"\n[proxy.cache]\nmemory_bytes = 4194304\n";
    let file = ConfigFile::from_toml(packaged).expect("valid");
    let from_file = file.proxy().cloned().expect("a proxy");
    assert_eq!(from_file.cache().memory_bytes, 4 << 20);
    let join = JoinFile::from_bytes(
        b"orchestrator = \"orch.example.net:7443\"\n\
          token = \"abcdef.0123456789abcdef0123456789abcdef\"\n\
          ca_hash = \"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n\
          name = \"pi-7\"\n",
    )
    .expect("valid join file");
    let c = file.complete(Some(&join)).expect("complete");
    assert_eq!(c.proxy(), Some(&from_file));
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(String, &str, &str)] = &[
        (
            proxy("").replace("0.0.0.0:80", "80"),
            "proxy.listen",
            "not IP:port",
        ),
        (
            proxy("").replace("0.0.0.0:80", "localhost:80"),
            "proxy.listen",
            "not IP:port",
        ),
        (
            proxy("").replace("0.0.0.0:80", "0.0.0.0:65536"),
            "proxy.listen",
            "not IP:port",
        ),
        (
            proxy("").replace("0.0.0.0:80", ""),
            "proxy.listen",
            "not IP:port",
        ),
        (
            proxy("stale_if_offline_secs = -1"),
            "proxy.stale_if_offline_secs",
            "out of range 0..=31536000",
        ),
        (
            proxy("stale_if_offline_secs = 31536001"),
            "proxy.stale_if_offline_secs",
            "out of range",
        ),
        (
            proxy("max_connections = 0"),
            "proxy.max_connections",
            "out of range 1..=65536",
        ),
        (
            proxy("max_connections = 65537"),
            "proxy.max_connections",
            "out of range",
        ),
        (
            proxy("route_samples_interval_secs = 86401"),
            "proxy.route_samples_interval_secs",
            "out of range 0..=86400",
        ),
        (
            proxy("route_samples_interval_secs = -1"),
            "proxy.route_samples_interval_secs",
            "out of range",
        ),
        (
            proxy("prewarm_threshold_percent = 0"),
            "proxy.prewarm_threshold_percent",
            "out of range 1..=99",
        ),
        (
            proxy("prewarm_threshold_percent = 100"),
            "proxy.prewarm_threshold_percent",
            "out of range 1..=99",
        ),
        (
            proxy("header_timeout_secs = 0"),
            "proxy.header_timeout_secs",
            "out of range 1..=300",
        ),
        (
            proxy("header_timeout_secs = 301"),
            "proxy.header_timeout_secs",
            "out of range",
        ),
        (
            proxy("max_body_bytes = 0"),
            "proxy.max_body_bytes",
            "out of range",
        ),
        (
            proxy("max_body_bytes = 9223372036854775807"),
            "proxy.max_body_bytes",
            "out of range",
        ),
        (
            proxy("[proxy.cache]\nmemory_bytes = -1"),
            "proxy.cache.memory_bytes",
            "out of range",
        ),
        (
            proxy("[proxy.cache]\ndisk_bytes = -1"),
            "proxy.cache.disk_bytes",
            "out of range",
        ),
        (
            proxy("[proxy.cache]\nmax_object_bytes = 0"),
            "proxy.cache.max_object_bytes",
            "out of range",
        ),
        (
            proxy("[proxy.cache]\nmemory_bytes = 1048576\ndisk_bytes = 0"),
            "proxy.cache.max_object_bytes",
            "8388608 (the default) is more than either store holds",
        ),
        (
            proxy("[proxy.cache]\nmax_object_bytes = 268435457"),
            "proxy.cache.max_object_bytes",
            "more than either store holds",
        ),
        (
            upstream("origin = \"https://a.example\"\nhost = \"a\""),
            "proxy.upstream[0].origin",
            "plain HTTP to origins for now",
        ),
        (
            upstream("origin = \"a.example\"\nhost = \"a\""),
            "proxy.upstream[0].origin",
            "not a URL",
        ),
        (
            upstream("origin = \"http://a.example:0\"\nhost = \"a\""),
            "proxy.upstream[0].origin",
            "out of range",
        ),
        (
            upstream("origin = \"http://a.example/?x=1\"\nhost = \"a\""),
            "proxy.upstream[0].origin",
            "query",
        ),
        (
            upstream("origin = \"http://a.example\""),
            "proxy.upstream[0]",
            "give host, path_prefix or both",
        ),
        (
            upstream("origin = \"http://a\"\nhost = \"a b\""),
            "proxy.upstream[0].host",
            "' '",
        ),
        (
            upstream("origin = \"http://a\"\nhost = \"a:80\""),
            "proxy.upstream[0].host",
            "no port",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"x\""),
            "proxy.upstream[0].path_prefix",
            "start with '/'",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/a/../b\""),
            "proxy.upstream[0].path_prefix",
            "segment",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/\"\ntimeout_secs = 0"),
            "proxy.upstream[0].timeout_secs",
            "out of range 1..=3600",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/\"\ntimeout_secs = 3601"),
            "proxy.upstream[0].timeout_secs",
            "out of range",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/\"\nretries = 11"),
            "proxy.upstream[0].retries",
            "out of range 0..=10",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/\"\nretries = -1"),
            "proxy.upstream[0].retries",
            "out of range",
        ),
        (
            upstream(
                "origin = \"http://a\"\npath_prefix = \"/\"\nstale_if_offline_secs = 31536001",
            ),
            "proxy.upstream[0].stale_if_offline_secs",
            "out of range",
        ),
        (
            upstream("origin = \"http://a\"\npath_prefix = \"/\"\nbalance = \"random\""),
            "proxy.upstream[0].balance",
            "peak-ewma, round-robin or least-requests",
        ),
        (
            upstream(
                "origin = \"http://a\"\nhost = \"a.example\"\n[[proxy.upstream]]\norigin = \"http://b\"\nhost = \"A.EXAMPLE\"",
            ),
            "proxy.upstream[1]",
            "same host and path_prefix as proxy.upstream[0]",
        ),
    ];
    for (toml, field, needle) in cases {
        let reason = invalid_field(toml, field);
        assert!(
            reason.contains(needle),
            "{field}: {reason:?} lacks {needle:?}"
        );
        assert!(reason.len() < 300 && !reason.contains('\n'), "{reason:?}");
    }
}

#[test]
fn the_proxy_and_the_status_endpoint_need_ports_of_their_own() {
    let with_status = |status: &str, listen: &str| {
        example_with(
            "status_interval_secs = 10",
            &format!("status_listen = \"{status}\""),
        ) + &format!("[proxy]\nlisten = \"{listen}\"\n")
    };
    for (status, listen) in [
        ("127.0.0.1:7450", "127.0.0.1:7450"),
        ("127.0.0.1:7450", "0.0.0.0:7450"),
        ("0.0.0.0:80", "192.0.2.1:80"),
    ] {
        let reason = invalid_field(&with_status(status, listen), "proxy.listen");
        assert!(reason.contains("status_listen"), "{reason}");
    }
    for (status, listen) in [
        ("127.0.0.1:7450", "0.0.0.0:80"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("127.0.0.1:80", "192.0.2.1:80"),
    ] {
        Config::from_toml(&with_status(status, listen))
            .unwrap_or_else(|e| panic!("{status} and {listen} do not clash: {e}"));
    }
}

/// The example with `local_address` for the orchestrator link and a `[proxy]` table that
/// serves peers on `peer`.
fn with_peer(local_address: Option<&str>, peer: &str) -> String {
    let local = local_address
        .map(|a| format!("local_address = \"{a}\"\n"))
        .unwrap_or_default();
    example_with(
        "address = \"orchestrator.example.net:7443\"",
        &format!("address = \"orchestrator.example.net:7443\"\n{local}"),
    ) + &format!("[proxy]\nlisten = \"0.0.0.0:80\"\npeer_listen = \"{peer}\"\n")
}

#[test]
fn peers_are_served_where_peer_listen_says() {
    let c = Config::from_toml(&with_peer(None, "[::]:8443")).expect("valid");
    let proxy = c.proxy().expect("a [proxy] table");
    assert_eq!(
        proxy.peer_listen(),
        Some("[::]:8443".parse().expect("addr"))
    );
    let c = Config::from_toml(&with_peer(Some("10.0.0.7"), "0.0.0.0:0")).expect("valid");
    assert_eq!(
        c.proxy().and_then(ProxyConfig::peer_listen),
        Some("0.0.0.0:0".parse().expect("addr")),
        "port 0 takes a free port, as tests do"
    );
}

#[test]
fn peers_are_told_the_listener_or_the_local_address_behind_an_unspecified_one() {
    let addr = |s: &str| -> SocketAddr { s.parse().expect("addr") };
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    assert_eq!(
        advertised_peer_addr(addr("192.0.2.7:8443"), Some(ip("10.0.0.1"))),
        Some(addr("192.0.2.7:8443")),
        "a named address is advertised as it is"
    );
    assert_eq!(
        advertised_peer_addr(addr("0.0.0.0:8443"), Some(ip("10.0.0.1"))),
        Some(addr("10.0.0.1:8443"))
    );
    assert_eq!(
        advertised_peer_addr(addr("[::]:9000"), Some(ip("2001:db8::5"))),
        Some(addr("[2001:db8::5]:9000"))
    );
    assert_eq!(
        advertised_peer_addr(addr("[::]:9000"), Some(ip("10.0.0.1"))),
        Some(addr("10.0.0.1:9000")),
        "`::` takes IPv4 too"
    );
    assert_eq!(advertised_peer_addr(addr("0.0.0.0:8443"), None), None);
    assert_eq!(
        advertised_peer_addr(addr("0.0.0.0:8443"), Some(ip("2001:db8::5"))),
        None,
        "an IPv4 listener cannot be reached at an IPv6 address"
    );
    assert_eq!(
        advertised_peer_addr(addr("[::]:8443"), Some(ip("::"))),
        None,
        "an unspecified local address says nothing"
    );
}

#[test]
fn peer_listen_needs_a_port_of_its_own_and_a_reachable_address() {
    for (peer, needle) in [
        ("0.0.0.0:80", "proxy.listen"),
        ("127.0.0.1:80", "proxy.listen"),
        ("8443", "not IP:port"),
        ("peers.example:8443", "not IP:port"),
        ("0.0.0.0:65536", "not IP:port"),
        ("", "not IP:port"),
    ] {
        let reason = invalid_field(&with_peer(None, peer), "proxy.peer_listen");
        assert!(reason.contains(needle), "{peer}: {reason}");
    }
    let status = example_with(
        "status_interval_secs = 10",
        "status_listen = \"127.0.0.1:7450\"",
    ) + "[proxy]\nlisten = \"0.0.0.0:80\"\npeer_listen = \"0.0.0.0:7450\"\n";
    let reason = invalid_field(&status, "proxy.peer_listen");
    assert!(reason.contains("status_listen"), "{reason}");
    let reason = invalid_field(
        &with_peer(Some("2001:db8::5"), "0.0.0.0:8443"),
        "proxy.peer_listen",
    );
    assert!(reason.contains("local_address"), "{reason}");
    for (local, peer) in [
        (Some("2001:db8::5"), "[::]:8443"),
        (Some("10.0.0.1"), "0.0.0.0:8443"),
        (None, "0.0.0.0:8443"),
        (Some("2001:db8::5"), "192.0.2.7:8443"),
        (None, "127.0.0.1:0"),
    ] {
        Config::from_toml(&with_peer(local, peer))
            .unwrap_or_else(|e| panic!("{local:?} and {peer} are fine: {e}"));
    }
}

#[test]
fn a_hostile_peer_listen_gets_a_short_error() {
    for value in [
        "x".repeat(10 * 1024),
        "0.0.0.0:8443\\nINFO forged".to_owned(),
    ] {
        let reason = invalid_field(&with_peer(None, &value), "proxy.peer_listen");
        assert!(
            reason.len() < 300 && !reason.contains('\n'),
            "{} bytes: {reason}",
            reason.len()
        );
    }
    let msg = parse_error(&proxy("peer_listen = 8443"));
    assert!(msg.contains("peer_listen"), "{msg}");
}

#[test]
fn the_cache_may_be_off_and_upstreams_fill_their_bound() {
    let off = proxy_of(&proxy(
        "[proxy.cache]\nmemory_bytes = 0\ndisk_bytes = 0\nmax_object_bytes = 1",
    ));
    assert!(!off.cache().enabled());
    let mut table = String::from("[proxy]\nlisten = \"0.0.0.0:80\"\n");
    for i in 0..MAX_UPSTREAMS {
        table.push_str(&format!(
            "[[proxy.upstream]]\norigin = \"http://o{i}\"\npath_prefix = \"/p{i}\"\n"
        ));
    }
    assert_eq!(
        proxy_of(&with_proxy(&table)).upstreams().len(),
        MAX_UPSTREAMS
    );
    table.push_str("[[proxy.upstream]]\norigin = \"http://o\"\npath_prefix = \"/extra\"\n");
    let reason = invalid_field(&with_proxy(&table), "proxy.upstream");
    assert!(reason.contains("65 upstreams; at most 64"), "{reason}");
}

#[test]
fn unknown_keys_and_missing_ones_are_refused() {
    let msg = parse_error(&proxy("listn = \"0.0.0.0:81\""));
    assert!(msg.contains("listn"), "{msg}");
    let msg = parse_error(&with_proxy("[proxy]\nmax_connections = 1\n"));
    assert!(msg.contains("listen"), "{msg}");
    let msg = parse_error(&proxy("[proxy.cache]\nmemory = 1"));
    assert!(msg.contains("memory"), "{msg}");
    let msg = parse_error(&upstream("origin = \"http://a\"\npath = \"/\""));
    assert!(msg.contains("path"), "{msg}");
    let msg = parse_error(&upstream("host = \"a\""));
    assert!(msg.contains("origin"), "{msg}");
    parse_error(&proxy("max_connections = \"many\""));
    let msg = parse_error(&proxy("prewarm = \"yes\""));
    assert!(msg.contains("prewarm"), "{msg}");
    parse_error(&proxy("prewarm = 1"));
    parse_error(&proxy("prewarm_threshold_percent = 0.5"));
    parse_error(&upstream(
        "origin = \"http://a\"\nhost = \"a\"\ncache = \"yes\"",
    ));
    parse_error(&with_proxy("[proxy]\nlisten = 80\n"));
    parse_error(&with_proxy("proxy = \"on\"\n"));
}

#[test]
fn hostile_values_get_short_errors_that_quote_little() {
    let long = "x".repeat(10 * 1024);
    for (toml, field) in [
        (proxy("").replace("0.0.0.0:80", &long), "proxy.listen"),
        (
            upstream(&format!("origin = \"http://{long}\"\nhost = \"a\"")),
            "proxy.upstream[0].origin",
        ),
        (
            upstream(&format!("origin = \"http://a/{long}\"\nhost = \"a\"")),
            "proxy.upstream[0].origin",
        ),
        (
            upstream(&format!("origin = \"http://a\"\nhost = \"{long}\"")),
            "proxy.upstream[0].host",
        ),
        (
            upstream(&format!("origin = \"http://a\"\npath_prefix = \"/{long}\"")),
            "proxy.upstream[0].path_prefix",
        ),
        (
            upstream(&format!(
                "origin = \"http://a\"\npath_prefix = \"/\"\nbalance = \"{long}\""
            )),
            "proxy.upstream[0].balance",
        ),
    ] {
        let reason = invalid_field(&toml, field);
        assert!(reason.len() < 300, "{} bytes: {reason}", reason.len());
    }
    for (value, field, shows) in [
        ("http://a\\u0000b", "proxy.upstream[0].origin", "\\0"),
        ("http://a/\\nINFO forged", "proxy.upstream[0].origin", "\\n"),
        (
            "http://user:hunter2@a",
            "proxy.upstream[0].origin",
            "user info",
        ),
    ] {
        let reason = invalid_field(
            &upstream(&format!("origin = \"{value}\"\nhost = \"a\"")),
            field,
        );
        assert!(reason.contains(shows), "{reason}");
        assert!(
            !reason.contains("hunter2") && !reason.contains('\n'),
            "{reason}"
        );
    }
    let reason = invalid_field(
        &upstream("origin = \"http://a\"\nhost = \"caf\u{e9}.example\""),
        "proxy.upstream[0].host",
    );
    assert!(reason.contains("'é'"), "{reason}");
}

proptest::proptest! {
    /// Any value for any of the table's strings gives Ok or an error naming a `proxy` field,
    /// never a panic.
    #[test]
    fn arbitrary_values_never_panic(
        key in proptest::sample::select(vec!["origin", "host", "path_prefix", "balance"]),
        value in "\\PC{0,80}",
        listen in "\\PC{0,30}",
    ) {
        let mut lines = vec![
            ("origin", "\"http://a\"".to_owned()),
            ("host", "\"a\"".to_owned()),
        ];
        lines.retain(|(k, _)| *k != key);
        lines.push((key, toml_str(&value)));
        let body: Vec<String> = lines.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let toml = with_proxy(&format!(
            "[proxy]\nlisten = {}\n[[proxy.upstream]]\n{}\n",
            toml_str(&listen),
            body.join("\n")
        ));
        if let Err(ConfigError::Invalid(e)) = Config::from_toml(&toml) {
            proptest::prop_assert!(e.path().as_str().starts_with("proxy."), "{e}");
        }
    }
}
