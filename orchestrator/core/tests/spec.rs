//! The workload spec as users write it: the documented examples parse, every bound refuses
//! the value just past it with the field's path, and no input (malformed, mistyped, unknown,
//! oversized or hostile) does anything but return an error.

use orchestrator_core::workload::{
    Arch, Balance, DeviceKind, DeviceRequirement, Driver, MAX_SPEC_BYTES, Placement, Probe,
    RestartPolicy, SpecError, WorkloadSpec,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The example in PRODUCT.md ("User-facing contract"), with a real digest.
fn product_example() -> String {
    format!(
        r#"
name = "hello"
version = "1.0.0"
artifact = "{DIGEST}"          # the executable, from `edgectl artifact push`
args = ["--port", "8080"]
env = {{ GREETING = "hi" }}
replicas = 2                     # or: placement = "per-node"
[resources]
cpu_millis = 250
memory_bytes = 33554432
[requirements]
arch = ["aarch64", "x86_64"]
labels = {{ site = "berlin" }}
near = {{ lat = 52.52, lon = 13.40, radius_km = 50 }}
[restart]
policy = "always"                # always | on-failure | never
[health]
http = {{ port = 8080, path = "/healthz" }}
interval_secs = 5
"#
    )
}

/// Every field the spec has.
fn full_example() -> String {
    format!(
        r#"
name = "hello"
version = "1.0.0"
artifact = "{DIGEST}"
command = "hello"
args = ["--port", "8080"]
env = {{ GREETING = "hi" }}
working_dir = "/tmp"
ports = [8080]
replicas = 2
[resources]
cpu_millis = 250
memory_bytes = 33554432
disk_bytes = 10485760
[requirements]
arch = ["aarch64", "x86_64"]
labels = {{ site = "berlin" }}
devices = ["gpu", "/dev/video0"]
near = {{ lat = 52.52, lon = 13.40, radius_km = 50 }}
[restart]
policy = "on-failure"
[health]
http = {{ port = 8080, path = "/healthz" }}
interval_secs = 5
timeout_secs = 2
failure_threshold = 3
success_threshold = 1
[[expose]]
port = 8080
host = "Shop.Example.com"
path_prefix = "/api"
weight = 10
timeout_secs = 5
retries = 0
cache = false
stale_if_offline_secs = 0
balance = "least-requests"
[[expose]]
port = 9090
path_prefix = "/"
[scale_to_zero]
idle_secs = 300
"#
    )
}

/// The smallest valid spec, as JSON.
fn base() -> Value {
    json!({
        "name": "hello",
        "version": "1.0.0",
        "artifact": DIGEST,
        "resources": { "cpu_millis": 250, "memory_bytes": 33554432 }
    })
}

/// `base()` with the value at a dotted path set, creating tables on the way.
fn with(path: &str, value: Value) -> Value {
    let mut v = base();
    set(&mut v, path, value);
    v
}

fn set(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, key) in keys.iter().enumerate() {
        let obj = cur.as_object_mut().expect("path runs through objects");
        if i + 1 == keys.len() {
            obj.insert((*key).to_owned(), value);
            return;
        }
        cur = obj.entry(*key).or_insert_with(|| json!({}));
    }
}

/// `base()` without the value at a dotted path.
fn without(path: &str) -> Value {
    let mut v = base();
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let obj = if parent.is_empty() {
        v.as_object_mut()
    } else {
        v.pointer_mut(&format!("/{}", parent.replace('.', "/")))
            .and_then(Value::as_object_mut)
    }
    .expect("parent exists");
    obj.remove(key);
    v
}

fn json_err(v: &Value) -> SpecError {
    let bytes = serde_json::to_vec(v).expect("serializable");
    match WorkloadSpec::from_json(&bytes) {
        Ok(spec) => panic!("accepted {}: {spec:?}", short(v)),
        Err(e) => e,
    }
}

fn json_ok(v: &Value) -> WorkloadSpec {
    let bytes = serde_json::to_vec(v).expect("serializable");
    WorkloadSpec::from_json(&bytes).unwrap_or_else(|e| panic!("refused {}: {e}", short(v)))
}

/// A value as a failure message may show it.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(300)], s.len())
    } else {
        s
    }
}

/// The error names `field` exactly and its message says `needle`.
#[track_caller]
fn assert_field(e: &SpecError, field: &str, needle: &str) {
    let text = e.to_string();
    assert_eq!(e.field(), Some(field), "wrong field in {text:?}");
    assert!(
        text.starts_with(&format!("{field}: ")),
        "{text:?} does not start with the path {field:?}"
    );
    assert!(text.contains(needle), "{text:?} does not say {needle:?}");
    assert_sane(e);
}

/// Every message is one short line.
#[track_caller]
fn assert_sane(e: &SpecError) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line message {text:?}");
    assert!(text.len() < 1024, "{} bytes of message", text.len());
}

#[track_caller]
fn refuses(v: Value, field: &str, needle: &str) {
    assert_field(&json_err(&v), field, needle);
}

fn toml_err(text: &str) -> SpecError {
    match WorkloadSpec::from_toml(text) {
        Ok(spec) => panic!("accepted {text}: {spec:?}"),
        Err(e) => e,
    }
}

fn base_toml() -> String {
    format!(
        "name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{DIGEST}\"\n\
         [resources]\ncpu_millis = 250\nmemory_bytes = 33554432\n"
    )
}

// ---------------------------------------------------------------------------------------------
// What parses.

#[test]
fn the_product_example_parses() {
    let spec = WorkloadSpec::from_toml(&product_example()).expect("the documented example");
    assert_eq!(spec.name(), "hello");
    assert_eq!(spec.version(), "1.0.0");
    assert_eq!(spec.artifact().to_string(), DIGEST);
    assert_eq!(spec.command(), None);
    assert_eq!(spec.args(), ["--port", "8080"]);
    assert_eq!(spec.env().get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(spec.placement(), Placement::Replicas(2));
    assert_eq!(spec.resources().cpu_millis, 250);
    assert_eq!(spec.resources().memory_bytes, 33_554_432);
    assert_eq!(spec.resources().disk_bytes, 0);
    let req = spec.requirements();
    assert_eq!(req.arch, [Arch::X86_64, Arch::Aarch64], "sorted");
    assert_eq!(req.labels.get("site").map(String::as_str), Some("berlin"));
    let near = req.near.expect("near");
    assert_eq!((near.lat, near.lon, near.radius_km), (52.52, 13.40, 50.0));
    assert_eq!(spec.restart(), RestartPolicy::Always);
    let health = spec.health().expect("health");
    assert_eq!(
        health.probe,
        Probe::Http {
            port: 8080,
            path: "/healthz".into()
        }
    );
    assert_eq!(health.interval_secs, 5);
    assert_eq!(health.timeout_secs, 2, "default");
    assert_eq!(health.failure_threshold, 3, "default");
    assert_eq!(health.success_threshold, 1, "default");
}

#[test]
fn every_field_parses() {
    let spec = WorkloadSpec::from_toml(&full_example()).expect("full example");
    assert_eq!(spec.command(), Some("hello"));
    assert_eq!(spec.working_dir(), Some("/tmp"));
    assert_eq!(spec.resources().disk_bytes, 10_485_760);
    assert_eq!(
        spec.requirements().devices,
        [
            DeviceRequirement::Kind(DeviceKind::Gpu),
            DeviceRequirement::Path("/dev/video0".into())
        ]
    );
    assert_eq!(spec.restart(), RestartPolicy::OnFailure);
    let [api, root] = spec.expose() else {
        panic!("two routes: {:?}", spec.expose());
    };
    assert_eq!(api.port, 8080);
    assert_eq!(api.host.as_deref(), Some("shop.example.com"), "lower-cased");
    assert_eq!(api.path_prefix.as_deref(), Some("/api"));
    assert_eq!(
        (api.weight, api.timeout_secs, api.retries, api.cache),
        (10, 5, 0, false)
    );
    assert_eq!(api.stale_if_offline_secs, 0);
    assert_eq!(api.balance, Balance::LeastRequests);
    assert_eq!((root.port, root.host.as_deref()), (9090, None));
    assert_eq!(spec.ports(), [8080, 9090], "an exposed port is listened on");
    assert_eq!(spec.scale_to_zero().map(|s| s.idle_secs), Some(300));
}

#[test]
fn a_route_takes_the_defaults_it_leaves_out() {
    let spec = json_ok(&with(
        "expose",
        json!([{"port": 8080, "host": "a.example"}]),
    ));
    let [route] = spec.expose() else {
        panic!("one route: {:?}", spec.expose());
    };
    assert_eq!(route.path_prefix, None);
    assert_eq!(route.weight, 100);
    assert_eq!(route.timeout_secs, 30);
    assert_eq!(route.retries, 2);
    assert!(route.cache);
    assert_eq!(route.stale_if_offline_secs, 86_400);
    assert_eq!(route.balance, Balance::PeakEwma);
    assert_eq!(spec.scale_to_zero(), None);
    assert_eq!(spec.ports(), [8080]);
    // Listed ports keep their order; an exposed one already listed is not added twice.
    let mut v = with("ports", json!([9000, 8080]));
    set(
        &mut v,
        "expose",
        json!([{"port": 8080, "path_prefix": "/"}, {"port": 7000, "path_prefix": "/b"}]),
    );
    assert_eq!(json_ok(&v).ports(), [9000, 8080, 7000]);
    // Per-node placement may scale to zero: each node's instance on its own traffic.
    let mut v = with("placement", json!("per-node"));
    set(&mut v, "expose", json!([{"port": 80, "path_prefix": "/"}]));
    set(&mut v, "scale_to_zero", json!({"idle_secs": 60}));
    let spec = json_ok(&v);
    assert_eq!(spec.placement(), Placement::PerNode);
    assert_eq!(spec.scale_to_zero().map(|s| s.idle_secs), Some(60));
}

#[test]
fn defaults_of_a_minimal_spec() {
    let spec = WorkloadSpec::from_toml(&base_toml()).expect("minimal spec");
    assert_eq!(spec.placement(), Placement::Replicas(1));
    assert_eq!(spec.restart(), RestartPolicy::Always);
    assert!(spec.health().is_none());
    assert!(spec.args().is_empty() && spec.env().is_empty() && spec.ports().is_empty());
    let req = spec.requirements();
    assert!(req.arch.is_empty() && req.labels.is_empty() && req.devices.is_empty());
    assert!(req.near.is_none());
    assert!(spec.expose().is_empty() && spec.scale_to_zero().is_none());
    assert_eq!(json_ok(&base()), spec, "TOML and JSON read the same");
}

#[test]
fn per_node_placement_and_other_probes() {
    let spec = json_ok(&with("placement", json!("per-node")));
    assert_eq!(spec.placement(), Placement::PerNode);
    let spec = json_ok(&with("health", json!({"tcp": {"port": 80}})));
    assert_eq!(
        spec.health().map(|h| &h.probe),
        Some(&Probe::Tcp { port: 80 })
    );
    let spec = json_ok(&with(
        "health",
        json!({"exec": {"command": "check", "args": ["-q"]}, "interval_secs": 30, "timeout_secs": 29}),
    ));
    let health = spec.health().expect("health");
    assert_eq!(
        health.probe,
        Probe::Exec {
            command: "check".into(),
            args: vec!["-q".into()]
        }
    );
    assert_eq!((health.interval_secs, health.timeout_secs), (30, 29));
    let spec = json_ok(&with("health", json!({"exec": {"command": "/bin/true"}})));
    assert!(spec.health().is_some(), "an absolute path is a command too");
    let spec = json_ok(&with("health", json!({"http": {"port": 80}})));
    assert_eq!(
        spec.health().map(|h| &h.probe),
        Some(&Probe::Http {
            port: 80,
            path: "/".into()
        }),
        "the path defaults to /"
    );
}

#[test]
fn the_edges_of_every_bound_are_accepted() {
    json_ok(&with("name", json!("a")));
    json_ok(&with("name", json!("a".repeat(63))));
    json_ok(&with("name", json!("0-a")));
    json_ok(&with("version", json!("v".repeat(64))));
    json_ok(&with("version", json!("1.0.0-rc.1+build.5~x")));
    // 64 arguments of 4096 bytes would be over the spec's size limit on their own.
    json_ok(&with("args", json!(vec!["x"; 64])));
    json_ok(&with("args", json!(vec!["x".repeat(4096); 32])));
    let env: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("V_{i}"), json!("x".repeat(2048))))
        .collect();
    json_ok(&with("env", Value::Object(env)));
    let env: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("V_{i}"), json!("x".repeat(4096))))
        .collect();
    json_ok(&with("env", Value::Object(env)));
    json_ok(&with("env", json!({"_": "", "a1": "new\nline is fine"})));
    json_ok(&with("ports", json!([1, 65535])));
    json_ok(&with("replicas", json!(1)));
    json_ok(&with("replicas", json!(10_000)));
    json_ok(&with("resources.cpu_millis", json!(1)));
    json_ok(&with("resources.cpu_millis", json!(1_000_000)));
    json_ok(&with("resources.memory_bytes", json!(1u64 << 20)));
    json_ok(&with("resources.memory_bytes", json!(1u64 << 40)));
    json_ok(&with("resources.disk_bytes", json!(0)));
    json_ok(&with(
        "requirements.near",
        json!({"lat": -90, "lon": 180, "radius_km": 20037}),
    ));
    json_ok(&with(
        "requirements.near",
        json!({"lat": 90.0, "lon": -180.0, "radius_km": 1e-9}),
    ));
    let labels: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("k{i}"), json!("v".repeat(63))))
        .collect();
    json_ok(&with("requirements.labels", Value::Object(labels)));
    json_ok(&with(
        "requirements.labels",
        json!({"example.com/zone_A-1": "", &"k".repeat(63): "v"}),
    ));
    json_ok(&with(
        "requirements.arch",
        json!(["x86_64", "aarch64", "arm", "riscv64"]),
    ));
    json_ok(&with(
        "requirements.devices",
        json!([
            "gpu",
            "npu",
            "video",
            "gpio",
            format!("/dev/{}", "d".repeat(91))
        ]),
    ));
    json_ok(&with(
        "health",
        json!({"tcp": {"port": 1}, "interval_secs": 3600, "timeout_secs": 3599,
               "failure_threshold": 100, "success_threshold": 100}),
    ));
    json_ok(&with(
        "health",
        json!({"tcp": {"port": 1}, "interval_secs": 2, "timeout_secs": 1,
               "failure_threshold": 1, "success_threshold": 1}),
    ));
    let route = |extra: Value| {
        let mut r = json!({"port": 1, "path_prefix": "/"});
        if let (Some(r), Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        with("expose", json!([r]))
    };
    json_ok(&route(json!({"port": 65535})));
    for (key, low, high) in [
        ("weight", 0, 1000),
        ("timeout_secs", 1, 3600),
        ("retries", 0, 10),
        ("stale_if_offline_secs", 0, 365 * 86_400),
    ] {
        json_ok(&route(json!({ key: low })));
        json_ok(&route(json!({ key: high })));
    }
    for balance in ["peak-ewma", "round-robin", "least-requests"] {
        json_ok(&route(json!({ "balance": balance })));
    }
    let longest_host = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    json_ok(&route(json!({ "host": longest_host })));
    json_ok(&route(
        json!({ "path_prefix": format!("/{}", "p".repeat(1023)) }),
    ));
    for host in [
        "192.0.2.1",
        "2001:db8::1",
        "[::1]",
        "localhost",
        "a-1.b-2.example",
    ] {
        json_ok(&route(json!({ "host": host })));
    }
    let sixteen: Vec<Value> = (0..16)
        .map(|i| json!({"port": 8000 + i, "path_prefix": format!("/r{i}")}))
        .collect();
    json_ok(&with("expose", json!(sixteen)));
    for idle in [1, 86_400] {
        let mut v = route(json!({}));
        set(&mut v, "scale_to_zero", json!({ "idle_secs": idle }));
        json_ok(&v);
    }
}

#[test]
fn the_json_shape_is_stable_and_parses_back() {
    let spec = WorkloadSpec::from_toml(&full_example()).expect("full example");
    let value = serde_json::to_value(&spec).expect("serializes");
    let expected = json!({
        "name": "hello",
        "version": "1.0.0",
        "driver": "exec",
        "artifact": DIGEST,
        "image": null,
        "allow_setuid": false,
        "read_only_root": false,
        "command": "hello",
        "args": ["--port", "8080"],
        "env": {"GREETING": "hi"},
        "working_dir": "/tmp",
        "ports": [8080, 9090],
        "replicas": 2,
        "placement": null,
        "resources": {"cpu_millis": 250, "memory_bytes": 33554432, "disk_bytes": 10485760},
        "requirements": {
            "arch": ["x86_64", "aarch64"],
            "labels": {"site": "berlin"},
            "devices": ["gpu", "/dev/video0"],
            "near": {"lat": 52.52, "lon": 13.4, "radius_km": 50.0},
            "follow_near": false
        },
        "restart": {"policy": "on-failure"},
        "health": {
            "http": {"port": 8080, "path": "/healthz"},
            "tcp": null,
            "exec": null,
            "interval_secs": 5,
            "timeout_secs": 2,
            "failure_threshold": 3,
            "success_threshold": 1
        },
        "expose": [
            {
                "port": 8080,
                "host": "shop.example.com",
                "path_prefix": "/api",
                "weight": 10,
                "timeout_secs": 5,
                "retries": 0,
                "cache": false,
                "stale_if_offline_secs": 0,
                "balance": "least-requests"
            },
            {
                "port": 9090,
                "host": null,
                "path_prefix": "/",
                "weight": 100,
                "timeout_secs": 30,
                "retries": 2,
                "cache": true,
                "stale_if_offline_secs": 86400,
                "balance": "peak-ewma"
            }
        ],
        "scale_to_zero": {"idle_secs": 300},
        "max_disconnect_secs": null,
        "reconcile": null
    });
    assert_eq!(value, expected);

    for spec in [
        spec,
        WorkloadSpec::from_toml(&product_example()).expect("example"),
        json_ok(&base()),
        json_ok(&with("placement", json!("per-node"))),
        json_ok(&with(
            "health",
            json!({"exec": {"command": "c", "args": ["a"]}}),
        )),
        json_ok(&with("health", json!({"tcp": {"port": 9}}))),
        json_ok(&with(
            "expose",
            json!([{"port": 1, "host": "[2001:DB8::1]"}, {"port": 2, "host": "A.example", "path_prefix": "/x"}]),
        )),
    ] {
        let bytes = serde_json::to_vec(&spec).expect("serializes");
        let back = WorkloadSpec::from_json(&bytes).expect("our own JSON parses");
        assert_eq!(back, spec);
    }
    let minimal = serde_json::to_value(json_ok(&base())).expect("serializes");
    assert_eq!(minimal["command"], Value::Null, "absent values are null");
    assert_eq!(minimal["health"], Value::Null);
    assert_eq!(minimal["requirements"]["near"], Value::Null);
    assert_eq!(minimal["expose"], json!([]));
    assert_eq!(minimal["scale_to_zero"], Value::Null);
    assert_eq!(minimal["replicas"], json!(1));
    let per_node =
        serde_json::to_value(json_ok(&with("placement", json!("per-node")))).expect("serializes");
    assert_eq!(per_node["replicas"], Value::Null);
    assert_eq!(per_node["placement"], json!("per-node"));
}

// ---------------------------------------------------------------------------------------------
// Every bound, one past it.

#[test]
fn name_bounds() {
    refuses(with("name", json!("")), "name", "must not be empty");
    refuses(with("name", json!("a".repeat(64))), "name", "at most 63");
    refuses(with("name", json!("Hello")), "name", "'H'");
    refuses(
        with("name", json!("-hello")),
        "name",
        "start or end with '-'",
    );
    refuses(
        with("name", json!("hello-")),
        "name",
        "start or end with '-'",
    );
    refuses(with("name", json!("hel lo")), "name", "' '");
    refuses(with("name", json!("hel.lo")), "name", "'.'");
    refuses(with("name", json!("héllo")), "name", "'é'");
}

#[test]
fn version_bounds() {
    refuses(with("version", json!("")), "version", "must not be empty");
    refuses(
        with("version", json!("1".repeat(65))),
        "version",
        "at most 64",
    );
    refuses(with("version", json!("1.0 beta")), "version", "' '");
    refuses(with("version", json!("1.0\n")), "version", "'\\n'");
    refuses(
        with("version", json!("1.0\u{e9}")),
        "version",
        "printable ASCII",
    );
}

#[test]
fn artifact_bounds() {
    let hex = &DIGEST["sha256:".len()..];
    for bad in [
        hex.to_owned(),
        format!("sha512:{hex}"),
        format!("sha256:{}", &hex[1..]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}g", &hex[1..]),
        String::new(),
    ] {
        refuses(with("artifact", json!(bad)), "artifact", "64 lowercase hex");
    }
}

#[test]
fn a_container_names_its_image_and_nothing_of_an_executable() {
    let mut oci = without("artifact");
    set(&mut oci, "driver", json!("oci"));
    set(&mut oci, "image", json!(DIGEST));
    let spec = json_ok(&oci);
    assert_eq!(spec.driver(), Driver::Oci);
    assert_eq!(spec.image().map(|d| d.to_string()).as_deref(), Some(DIGEST));
    let value = serde_json::to_value(&spec).expect("serializes");
    assert_eq!(
        (&value["driver"], &value["artifact"], &value["image"]),
        (&json!("oci"), &Value::Null, &json!(DIGEST))
    );
    let back = serde_json::to_vec(&value).expect("serializes");
    assert_eq!(WorkloadSpec::from_json(&back), Ok(spec));

    // The same in a file.
    let text = base_toml().replace(
        &format!("artifact = \"{DIGEST}\""),
        &format!("driver = \"oci\"\nimage = \"{DIGEST}\""),
    );
    assert_eq!(
        WorkloadSpec::from_toml(&text).map(|s| s.driver()),
        Ok(Driver::Oci)
    );

    // An executable is the default, and says so.
    let exec = json_ok(&base());
    assert_eq!((exec.driver(), exec.image()), (Driver::Exec, None));

    let mut both = oci.clone();
    set(&mut both, "artifact", json!(DIGEST));
    refuses(both, "artifact", "artifact is for driver \"exec\"");
    refuses(
        with("image", json!(DIGEST)),
        "image",
        "image is for driver \"oci\"",
    );
    let mut no_image = oci.clone();
    no_image.as_object_mut().expect("an object").remove("image");
    refuses(no_image, "image", "missing");
    refuses(without("artifact"), "artifact", "missing");
    let mut bad_image = oci.clone();
    set(&mut bad_image, "image", json!("busybox:latest"));
    refuses(bad_image, "image", "64 lowercase hex");
    refuses(
        with("driver", json!("docker")),
        "driver",
        "\"docker\" is not one of \"exec\", \"oci\"",
    );
    let mut setuid = oci.clone();
    set(&mut setuid, "allow_setuid", json!(true));
    assert!(json_ok(&setuid).allow_setuid());
    assert!(!json_ok(&oci).allow_setuid(), "not unless the spec says");
    refuses(
        with("allow_setuid", json!(true)),
        "allow_setuid",
        "only for driver \"oci\"",
    );
    let mut read_only = oci.clone();
    set(&mut read_only, "read_only_root", json!(true));
    assert!(json_ok(&read_only).read_only_root());
    assert!(
        !json_ok(&oci).read_only_root(),
        "writable unless the spec says"
    );
    refuses(
        with("read_only_root", json!(true)),
        "read_only_root",
        "only for driver \"oci\"",
    );
    let mut with_command = oci;
    set(&mut with_command, "command", json!("run.sh"));
    refuses(with_command, "command", "entrypoint");
}

#[test]
fn command_and_working_dir_bounds() {
    refuses(with("command", json!("")), "command", "must not be empty");
    refuses(
        with("command", json!("bin/hello")),
        "command",
        "without '/'",
    );
    refuses(with("command", json!("..")), "command", "file name");
    refuses(with("command", json!("a\0b")), "command", "NUL");
    refuses(
        with("command", json!("c".repeat(256))),
        "command",
        "at most 255",
    );
    refuses(
        with("working_dir", json!("tmp")),
        "working_dir",
        "absolute path",
    );
    refuses(with("working_dir", json!("/t\0")), "working_dir", "NUL");
    refuses(
        with("working_dir", json!(format!("/{}", "d".repeat(4096)))),
        "working_dir",
        "at most 4096",
    );
}

#[test]
fn args_bounds() {
    refuses(
        with("args", json!(vec!["x"; 65])),
        "args",
        "65 arguments; at most 64",
    );
    refuses(
        with("args", json!(["ok", "x".repeat(4097)])),
        "args[1]",
        "4097 bytes long; at most 4096",
    );
    refuses(with("args", json!(["ok", "ok", "a\0"])), "args[2]", "NUL");
}

#[test]
fn env_bounds() {
    let env: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("V{i}"), json!("x"))).collect();
    refuses(
        with("env", Value::Object(env)),
        "env",
        "65 variables; at most 64",
    );
    refuses(
        with("env", json!({"BAD NAME": "x"})),
        "env.\"BAD NAME\"",
        "[A-Za-z_][A-Za-z0-9_]*",
    );
    refuses(with("env", json!({"1X": "x"})), "env.1X", "[A-Za-z_]");
    refuses(with("env", json!({"A-B": "x"})), "env.A-B", "[A-Za-z_]");
    refuses(
        with("env", json!({"": "x"})),
        "env.\"\"",
        "must not be empty",
    );
    refuses(
        with("env", json!({"A\nB": "x"})),
        "env.\"A\\nB\"",
        "[A-Za-z_]",
    );
    refuses(
        with("env", json!({ "N".repeat(256): "x" })),
        &format!("env.\"{}\"…", "N".repeat(40)),
        "at most 255",
    );
    refuses(
        with("env", json!({"BIG": "x".repeat(4097)})),
        "env.BIG",
        "4097 bytes long; at most 4096",
    );
    refuses(with("env", json!({"NUL": "a\0"})), "env.NUL", "NUL");
}

#[test]
fn ports_bounds() {
    refuses(
        with("ports", json!([80, 0])),
        "ports[1]",
        "0 out of range 1..=65535",
    );
    refuses(
        with("ports", json!([65536])),
        "ports[0]",
        "65536 out of range 1..=65535",
    );
    refuses(
        with("ports", json!([-1])),
        "ports[0]",
        "-1 out of range 1..=65535",
    );
    refuses(
        with("ports", json!([80, 443, 80])),
        "ports[2]",
        "80 is listed twice",
    );
    let many: Vec<u16> = (1..=65).collect();
    refuses(with("ports", json!(many)), "ports", "65 ports; at most 64");
}

#[test]
fn replicas_and_placement_bounds() {
    refuses(
        with("replicas", json!(0)),
        "replicas",
        "0 out of range 1..=10000",
    );
    refuses(
        with("replicas", json!(10_001)),
        "replicas",
        "10001 out of range 1..=10000",
    );
    refuses(with("replicas", json!(-3)), "replicas", "out of range");
    let mut both = with("replicas", json!(2));
    set(&mut both, "placement", json!("per-node"));
    refuses(both, "replicas", "not both");
    refuses(
        with("placement", json!("everywhere")),
        "placement",
        "\"everywhere\" is not a placement",
    );
}

#[test]
fn resources_bounds() {
    refuses(
        with("resources.cpu_millis", json!(0)),
        "resources.cpu_millis",
        "0 out of range 1..=1000000",
    );
    refuses(
        with("resources.cpu_millis", json!(1_000_001)),
        "resources.cpu_millis",
        "out of range",
    );
    refuses(
        with("resources.memory_bytes", json!((1 << 20) - 1)),
        "resources.memory_bytes",
        "must be at least 1 MiB",
    );
    refuses(
        with("resources.memory_bytes", json!(-1)),
        "resources.memory_bytes",
        "must be at least 1 MiB",
    );
    refuses(
        with("resources.memory_bytes", json!((1u64 << 40) + 1)),
        "resources.memory_bytes",
        "must be at most 1 TiB",
    );
    refuses(
        with("resources.disk_bytes", json!(-1)),
        "resources.disk_bytes",
        "out of range",
    );
    refuses(
        with("resources.disk_bytes", json!((16u64 << 40) + 1)),
        "resources.disk_bytes",
        "out of range",
    );
    refuses(
        without("resources.cpu_millis"),
        "resources.cpu_millis",
        "missing",
    );
    refuses(without("resources"), "resources", "missing");
}

#[test]
fn arch_bounds() {
    refuses(
        with("requirements.arch", json!(["x86_64", "sparc"])),
        "requirements.arch[1]",
        "\"sparc\" is not an architecture we know",
    );
    refuses(
        with("requirements.arch", json!(["arm", "arm"])),
        "requirements.arch[1]",
        "listed twice",
    );
    refuses(
        with("requirements.arch", json!(["AARCH64"])),
        "requirements.arch[0]",
        "not an architecture",
    );
}

#[test]
fn label_bounds() {
    let labels: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    refuses(
        with("requirements.labels", Value::Object(labels)),
        "requirements.labels",
        "33 labels; at most 32",
    );
    refuses(
        with("requirements.labels", json!({"bad key": "v"})),
        "requirements.labels.\"bad key\"",
        "' '",
    );
    refuses(
        with("requirements.labels", json!({"": "v"})),
        "requirements.labels.\"\"",
        "must not be empty",
    );
    refuses(
        with("requirements.labels", json!({ "k".repeat(64): "v" })),
        &format!("requirements.labels.\"{}\"…", "k".repeat(40)),
        "64 characters long; at most 63",
    );
    refuses(
        with("requirements.labels", json!({"site": "v".repeat(64)})),
        "requirements.labels.site",
        "64 bytes long; at most 63",
    );
    refuses(
        with("requirements.labels", json!({"site": "ber\nlin"})),
        "requirements.labels.site",
        "control character",
    );
}

#[test]
fn device_bounds() {
    refuses(
        with("requirements.devices", json!(["gpu", "tpu"])),
        "requirements.devices[1]",
        "neither an accelerator kind",
    );
    refuses(
        with("requirements.devices", json!(["/dev/"])),
        "requirements.devices[0]",
        "must name a device",
    );
    refuses(
        with("requirements.devices", json!(["/dev/../etc/shadow"])),
        "requirements.devices[0]",
        "must name a device",
    );
    refuses(
        with("requirements.devices", json!(["/dev/video 0"])),
        "requirements.devices[0]",
        "' '",
    );
    refuses(
        with("requirements.devices", json!(["gpu", "gpu"])),
        "requirements.devices[1]",
        "listed twice",
    );
    refuses(
        with(
            "requirements.devices",
            json!([format!("/dev/{}", "d".repeat(92))]),
        ),
        "requirements.devices[0]",
        "97 bytes long; at most 96",
    );
    let many: Vec<String> = (0..17).map(|i| format!("/dev/d{i}")).collect();
    refuses(
        with("requirements.devices", json!(many)),
        "requirements.devices",
        "17 devices; at most 16",
    );
}

#[test]
fn near_bounds() {
    let near = |lat: f64, lon: f64, r: f64| {
        with(
            "requirements.near",
            json!({"lat": lat, "lon": lon, "radius_km": r}),
        )
    };
    refuses(
        near(91.0, 0.0, 1.0),
        "requirements.near.lat",
        "91 is out of range -90..=90",
    );
    refuses(
        near(-90.5, 0.0, 1.0),
        "requirements.near.lat",
        "-90.5 is out of range -90..=90",
    );
    refuses(
        near(0.0, 180.1, 1.0),
        "requirements.near.lon",
        "180.1 is out of range -180..=180",
    );
    refuses(
        near(0.0, 0.0, 0.0),
        "requirements.near.radius_km",
        "above 0",
    );
    refuses(
        near(0.0, 0.0, -5.0),
        "requirements.near.radius_km",
        "above 0",
    );
    refuses(
        near(0.0, 0.0, 20_037.5),
        "requirements.near.radius_km",
        "at most 20037",
    );
    refuses(
        with("requirements.near", json!({"lat": 1, "lon": 2})),
        "requirements.near.radius_km",
        "missing",
    );
    // TOML, unlike JSON, can say nan and inf.
    let e = toml_err(&format!(
        "{}[requirements]\nnear = {{ lat = nan, lon = 0, radius_km = 5 }}\n",
        base_toml()
    ));
    assert_field(&e, "requirements.near.lat", "not a finite number");
    let e = toml_err(&format!(
        "{}[requirements]\nnear = {{ lat = 0, lon = 0, radius_km = inf }}\n",
        base_toml()
    ));
    assert_field(&e, "requirements.near.radius_km", "not a finite number");
}

#[test]
fn follow_near_needs_near_and_shows_back() {
    let near = json!({"lat": 52.52, "lon": 13.40, "radius_km": 50});
    let mut v = with("requirements.near", near.clone());
    set(&mut v, "requirements.follow_near", json!(true));
    let spec = json_ok(&v);
    assert!(spec.requirements().follow_near);
    let shown = serde_json::to_value(&spec).expect("serializes");
    assert_eq!(shown["requirements"]["follow_near"], json!(true));
    assert_eq!(json_ok(&shown), spec, "our own JSON parses back");

    let toml = format!(
        "{}[requirements]\nnear = {{ lat = 52.52, lon = 13.40, radius_km = 50 }}\n\
         follow_near = true\n",
        base_toml()
    );
    assert_eq!(WorkloadSpec::from_toml(&toml).expect("toml"), spec);

    // Off by default, and off or null is fine without `near`.
    assert!(!json_ok(&base()).requirements().follow_near);
    assert!(
        !json_ok(&with("requirements.near", near))
            .requirements()
            .follow_near
    );
    assert!(
        !json_ok(&with("requirements.follow_near", json!(false)))
            .requirements()
            .follow_near
    );
    assert!(
        !json_ok(&with("requirements.follow_near", Value::Null))
            .requirements()
            .follow_near
    );
    let minimal = serde_json::to_value(json_ok(&base())).expect("serializes");
    assert_eq!(minimal["requirements"]["follow_near"], json!(false));

    refuses(
        with("requirements.follow_near", json!(true)),
        "requirements.follow_near",
        "only with requirements.near",
    );
    for bad in [json!("yes"), json!(1), json!([true]), json!({})] {
        refuses(
            with("requirements.follow_near", bad),
            "requirements.follow_near",
            "invalid type",
        );
    }
    let e = toml_err(&format!(
        "{}[requirements]\nfollow_near = true\n",
        base_toml()
    ));
    assert_field(
        &e,
        "requirements.follow_near",
        "only with requirements.near",
    );
}

#[test]
fn restart_bounds() {
    refuses(
        with("restart.policy", json!("sometimes")),
        "restart.policy",
        "\"sometimes\" is not a policy",
    );
    for (policy, want) in [
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure),
        ("never", RestartPolicy::Never),
    ] {
        assert_eq!(
            json_ok(&with("restart.policy", json!(policy))).restart(),
            want
        );
    }
}

#[test]
fn health_bounds() {
    let health = |extra: Value| {
        let mut h = json!({"tcp": {"port": 8080}});
        for (k, v) in extra.as_object().expect("object") {
            h[k] = v.clone();
        }
        with("health", h)
    };
    refuses(
        with("health", json!({"interval_secs": 5})),
        "health",
        "give exactly one of http, tcp, exec",
    );
    refuses(
        with("health", json!({"http": {"port": 1}, "tcp": {"port": 1}})),
        "health",
        "give exactly one of http, tcp, exec",
    );
    refuses(
        health(json!({"interval_secs": 0})),
        "health.interval_secs",
        "0 out of range 1..=3600",
    );
    refuses(
        health(json!({"interval_secs": 3601})),
        "health.interval_secs",
        "3601 out of range 1..=3600",
    );
    refuses(
        health(json!({"timeout_secs": 0})),
        "health.timeout_secs",
        "0 out of range 1..=3600",
    );
    refuses(
        health(json!({"interval_secs": 5, "timeout_secs": 5})),
        "health.timeout_secs",
        "5 must be less than health.interval_secs (5)",
    );
    refuses(
        health(json!({"interval_secs": 2})),
        "health.timeout_secs",
        "2 (the default) must be less than",
    );
    refuses(
        health(json!({"failure_threshold": 0})),
        "health.failure_threshold",
        "0 out of range 1..=100",
    );
    refuses(
        health(json!({"success_threshold": 101})),
        "health.success_threshold",
        "101 out of range 1..=100",
    );
    refuses(
        with("health", json!({"http": {"port": 0}})),
        "health.http.port",
        "0 out of range 1..=65535",
    );
    refuses(
        with("health", json!({"tcp": {"port": 70000}})),
        "health.tcp.port",
        "out of range",
    );
    refuses(
        with("health", json!({"http": {"port": 80, "path": "healthz"}})),
        "health.http.path",
        "must start with '/'",
    );
    refuses(
        with("health", json!({"http": {"port": 80, "path": "/a b"}})),
        "health.http.path",
        "percent-encode",
    );
    refuses(
        with(
            "health",
            json!({"http": {"port": 80, "path": format!("/{}", "p".repeat(1024))}}),
        ),
        "health.http.path",
        "at most 1024",
    );
    refuses(
        with("health", json!({"exec": {"command": "a/b"}})),
        "health.exec.command",
        "without '/'",
    );
    refuses(
        with("health", json!({"exec": {"command": ""}})),
        "health.exec.command",
        "must not be empty",
    );
    refuses(
        with(
            "health",
            json!({"exec": {"command": "c", "args": vec!["a"; 65]}}),
        ),
        "health.exec.args",
        "at most 64",
    );
    refuses(
        with(
            "health",
            json!({"exec": {"command": "c", "args": ["a", "\0"]}}),
        ),
        "health.exec.args[1]",
        "NUL",
    );
    refuses(
        with("health", json!({"exec": {"args": []}})),
        "health.exec.command",
        "missing",
    );
    refuses(
        with("health", json!({"http": {"path": "/"}})),
        "health.http.port",
        "missing",
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed, mistyped, unknown.

#[test]
fn expose_bounds() {
    let route = |fields: Value| with("expose", json!([fields]));
    let on = |extra: Value| {
        let mut r = json!({"port": 8080, "path_prefix": "/"});
        if let (Some(r), Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        route(r)
    };
    refuses(
        route(json!({"path_prefix": "/"})),
        "expose[0].port",
        "missing",
    );
    refuses(
        on(json!({"port": 0})),
        "expose[0].port",
        "out of range 1..=65535",
    );
    refuses(on(json!({"port": 65536})), "expose[0].port", "out of range");
    refuses(on(json!({"port": -1})), "expose[0].port", "out of range");
    refuses(on(json!({"port": "80"})), "expose[0].port", "invalid type");
    refuses(
        route(json!({"port": 80})),
        "expose[0]",
        "give host, path_prefix or both",
    );
    for (key, past) in [
        ("weight", json!(-1)),
        ("weight", json!(1001)),
        ("timeout_secs", json!(0)),
        ("timeout_secs", json!(3601)),
        ("retries", json!(-1)),
        ("retries", json!(11)),
        ("stale_if_offline_secs", json!(-1)),
        ("stale_if_offline_secs", json!(365 * 86_400 + 1)),
        ("weight", json!(i64::MAX)),
    ] {
        refuses(
            on(json!({ key: past })),
            &format!("expose[0].{key}"),
            "out of range",
        );
    }
    refuses(
        on(json!({"cache": "yes"})),
        "expose[0].cache",
        "invalid type",
    );
    refuses(
        on(json!({"balance": "random"})),
        "expose[0].balance",
        "peak-ewma",
    );
    refuses(
        on(json!({"balance": "Peak-EWMA"})),
        "expose[0].balance",
        "not a balance",
    );
    refuses(
        on(json!({"balance": 1})),
        "expose[0].balance",
        "invalid type",
    );
    refuses(on(json!({"path": "/"})), "expose[0].path", "unknown field");
    refuses(
        on(json!({"host": ""})),
        "expose[0].host",
        "must not be empty",
    );
    refuses(
        on(json!({"host": "shop.example.com:80"})),
        "expose[0].host",
        "no port",
    );
    refuses(on(json!({"host": "bad_host"})), "expose[0].host", "'_'");
    refuses(
        on(json!({"host": "x".repeat(254)})),
        "expose[0].host",
        "at most 253",
    );
    refuses(
        on(json!({"host": "a".repeat(64)})),
        "expose[0].host",
        "at most 63",
    );
    refuses(
        on(json!({"host": "evil\nINFO forged"})),
        "expose[0].host",
        "\\n",
    );
    refuses(on(json!({"host": "nul\u{0}"})), "expose[0].host", "\\0");
    refuses(on(json!({"host": "caf\u{e9}.de"})), "expose[0].host", "'é'");
    refuses(
        on(json!({"path_prefix": "api"})),
        "expose[0].path_prefix",
        "start with '/'",
    );
    refuses(
        on(json!({"path_prefix": format!("/{}", "p".repeat(1024))})),
        "expose[0].path_prefix",
        "at most 1024",
    );
    refuses(
        on(json!({"path_prefix": "/a b"})),
        "expose[0].path_prefix",
        "whitespace",
    );
    refuses(
        on(json!({"path_prefix": "/a?b"})),
        "expose[0].path_prefix",
        "query",
    );
    refuses(
        on(json!({"path_prefix": "/a/../b"})),
        "expose[0].path_prefix",
        "segment",
    );
    refuses(
        on(json!({"path_prefix": "/\u{0}"})),
        "expose[0].path_prefix",
        "control",
    );
    let same = json!([
        {"port": 1, "host": "a.example", "path_prefix": "/x"},
        {"port": 2, "host": "b.example"},
        {"port": 3, "host": "A.EXAMPLE", "path_prefix": "/x"},
    ]);
    refuses(
        with("expose", same),
        "expose[2]",
        "same host and path_prefix as expose[0]",
    );
    let seventeen: Vec<Value> = (0..17)
        .map(|i| json!({"port": 8000 + i, "path_prefix": format!("/r{i}")}))
        .collect();
    refuses(
        with("expose", json!(seventeen)),
        "expose",
        "17 routes; at most 16",
    );
    refuses(with("expose", json!({"port": 1})), "expose", "invalid type");
    refuses(with("expose", json!([1])), "expose[0]", "invalid type");

    refuses(
        with("scale_to_zero", json!({"idle_secs": 60})),
        "scale_to_zero",
        "needs at least one [[expose]]",
    );
    for idle in [0, 86_401, -5] {
        let mut v = on(json!({}));
        set(&mut v, "scale_to_zero", json!({ "idle_secs": idle }));
        refuses(v, "scale_to_zero.idle_secs", "out of range 1..=86400");
    }
    let mut v = on(json!({}));
    set(&mut v, "scale_to_zero", json!({}));
    refuses(v, "scale_to_zero.idle_secs", "missing");
    let mut v = on(json!({}));
    set(&mut v, "scale_to_zero", json!({"idle_secs": 5, "min": 1}));
    refuses(v, "scale_to_zero.min", "unknown field");
    let mut v = on(json!({}));
    set(&mut v, "scale_to_zero", json!(true));
    refuses(v, "scale_to_zero", "invalid type");

    // The ports bound counts the exposed ones too, so the stored spec parses back.
    let mut v = with("ports", json!((1..=64).collect::<Vec<u16>>()));
    set(&mut v, "expose", json!([{"port": 65, "path_prefix": "/"}]));
    refuses(v, "ports", "65 ports with those of [[expose]]; at most 64");
    let mut v = with("ports", json!((1..=64).collect::<Vec<u16>>()));
    set(&mut v, "expose", json!([{"port": 64, "path_prefix": "/"}]));
    json_ok(&v);

    // In TOML, the path names the table of the array.
    let text = format!(
        "{}[[expose]]\nport = 80\nhost = \"a.example\"\n[[expose]]\nport = 81\npath_prefix = \"/a/../b\"\n",
        base_toml()
    );
    assert_field(&toml_err(&text), "expose[1].path_prefix", "segment");
    let text = format!(
        "{}[[expose]]\nport = 80\nhost = \"a.example\"\ncolour = 1\n",
        base_toml()
    );
    assert_field(&toml_err(&text), "expose[0].colour", "unknown field");
    // As PRODUCT.md writes it: inline, among the top-level keys.
    let text = format!(
        "name = \"hello\"\nversion = \"1.0.0\"\nartifact = \"{DIGEST}\"\n\
         scale_to_zero = {{ idle_secs = 30 }}\n\
         [resources]\ncpu_millis = 250\nmemory_bytes = 33554432\n\
         [[expose]]\nport = 80\nhost = \"a.example\"\n"
    );
    let spec = WorkloadSpec::from_toml(&text).expect("inline scale_to_zero");
    assert_eq!(spec.scale_to_zero().map(|s| s.idle_secs), Some(30));
}

#[test]
fn missing_top_level_fields_are_named() {
    for field in ["name", "version", "artifact", "resources"] {
        refuses(without(field), field, "missing");
    }
    let e = toml_err("version = \"1\"\n");
    assert_field(&e, "name", "missing");
}

#[test]
fn malformed_toml_says_where() {
    for text in [
        "name = ",
        "name = \"unterminated\n",
        "[resources\n",
        "name = \"a\"\nname = \"b\"\n",
        "= 5",
        "\u{0}",
    ] {
        let e = toml_err(text);
        assert!(matches!(e, SpecError::Syntax { .. }), "{text:?}: {e:?}");
        assert!(e.to_string().contains("line "), "{text:?}: {e}");
        assert_sane(&e);
    }
    let e = toml_err(&format!("{}\nbad line here\n", base_toml()));
    assert!(e.to_string().contains("line 8"), "{e}");
}

#[test]
fn malformed_json_is_a_syntax_error() {
    for bytes in [
        &b""[..],
        b"{",
        b"{\"name\": ",
        b"{\"name\": \"a\",}",
        b"nul",
        b"\xff\xfe",
        b"{\"name\": \"\xff\"}",
    ] {
        let e = WorkloadSpec::from_json(bytes).expect_err("malformed");
        assert!(
            matches!(e, SpecError::Syntax { .. }),
            "{:?}: {e:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_sane(&e);
    }
    let mut good = serde_json::to_vec(&base()).expect("serializable");
    good.extend_from_slice(b" {}");
    let e = WorkloadSpec::from_json(&good).expect_err("trailing data");
    assert!(matches!(e, SpecError::Syntax { .. }), "{e:?}");
}

#[test]
fn wrong_types_name_the_field() {
    refuses(with("replicas", json!("two")), "replicas", "invalid type");
    refuses(with("replicas", json!(1.5)), "replicas", "invalid type");
    refuses(with("args", json!("--port")), "args", "invalid type");
    refuses(with("args", json!(["a", 5])), "args[1]", "invalid type");
    refuses(with("ports", json!(["80"])), "ports[0]", "invalid type");
    refuses(
        with("env", json!({"GREETING": 5})),
        "env.GREETING",
        "invalid type",
    );
    refuses(
        with("resources.memory_bytes", json!(u64::MAX)),
        "resources.memory_bytes",
        "invalid value",
    );
    refuses(with("resources", json!(5)), "resources", "invalid type");
    refuses(
        with("requirements", json!([])),
        "requirements",
        "invalid type",
    );
    refuses(
        with("requirements.near.lat", json!("north")),
        "requirements.near.lat",
        "invalid type",
    );
    refuses(
        with("health.tcp", json!(true)),
        "health.tcp",
        "invalid type",
    );
    refuses(with("name", Value::Null), "name", "invalid type");
    for bytes in [&b"[1, 2, 3]"[..], b"[1, 2", b"\"spec\"", b"5", b"null"] {
        let e = WorkloadSpec::from_json(bytes).expect_err("not an object");
        assert!(e.to_string().contains("expected a table"), "{e}");
        assert_sane(&e);
    }
    // serde would read a struct from its fields in order; a spec is written with names.
    refuses(
        with("resources", json!([250, 33554432])),
        "resources",
        "expected a table",
    );
    refuses(
        with("requirements.near", json!([1, 2, 3])),
        "requirements.near",
        "expected a table",
    );
    let e = toml_err(&format!(
        "name = \"hello\"\nversion = \"1\"\nartifact = \"{DIGEST}\"\nresources = [250, 33554432]\n"
    ));
    assert_field(&e, "resources", "expected a table");

    let e = toml_err(&format!("{}replicas = 1\n", base_toml()));
    // That `replicas` lands in [resources]: an unknown field there, named with its table.
    assert_field(&e, "resources.replicas", "unknown field");
    let e = toml_err(&base_toml().replace("cpu_millis = 250", "cpu_millis = \"250\""));
    assert_field(&e, "resources.cpu_millis", "invalid type");
    assert!(e.to_string().contains("line 5"), "{e}");
    let e = toml_err(&base_toml().replace("cpu_millis = 250", "cpu_millis = 2.5"));
    assert_field(&e, "resources.cpu_millis", "invalid type");
}

#[test]
fn unknown_fields_are_refused_at_every_level() {
    let cases = [
        ("colour", "colour"),
        ("resources.gpu", "resources.gpu"),
        ("requirements.zone", "requirements.zone"),
        ("requirements.near.alt_m", "requirements.near.alt_m"),
        ("restart.max_retries", "restart.max_retries"),
        ("health.grpc", "health.grpc"),
        ("health.http.host", "health.http.host"),
        ("health.tcp.host", "health.tcp.host"),
        ("health.exec.shell", "health.exec.shell"),
    ];
    for (path, field) in cases {
        let mut v = base();
        if path.starts_with("requirements.near") {
            set(
                &mut v,
                "requirements.near",
                json!({"lat": 1, "lon": 1, "radius_km": 1}),
            );
        }
        if let Some(probe) = path
            .strip_prefix("health.")
            .and_then(|p| p.split_once('.'))
            .map(|(probe, _)| probe)
        {
            let probe_value = match probe {
                "http" | "tcp" => json!({"port": 1}),
                _ => json!({"command": "c"}),
            };
            set(&mut v, &format!("health.{probe}"), probe_value);
        }
        set(&mut v, path, json!(1));
        let e = json_err(&v);
        assert_field(&e, field, "unknown field");
    }
    let e = toml_err(&format!("{}[extra]\nx = 1\n", base_toml()));
    assert_field(&e, "extra", "unknown field");
    let e = json_err(&with("weird key\n", json!(1)));
    assert_field(&e, "\"weird key\\n\"", "unknown field");
}

// ---------------------------------------------------------------------------------------------
// Oversized and hostile input.

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = "#".repeat(MAX_SPEC_BYTES + 1);
    assert!(matches!(
        WorkloadSpec::from_toml(&big),
        Err(SpecError::TooLarge { bytes, max_bytes }) if bytes == MAX_SPEC_BYTES + 1 && max_bytes == MAX_SPEC_BYTES
    ));
    let big_json = vec![b'['; MAX_SPEC_BYTES + 1];
    assert!(matches!(
        WorkloadSpec::from_json(&big_json),
        Err(SpecError::TooLarge { .. })
    ));
    // A megabyte string.
    let e = json_err(&with("name", json!("a".repeat(1 << 20))));
    assert!(matches!(e, SpecError::TooLarge { .. }), "{e:?}");
    assert_sane(&e);

    // Exactly at the limit is parsed.
    let mut text = base_toml();
    let pad = MAX_SPEC_BYTES - text.len();
    text.insert_str(0, &format!("#{}\n", " ".repeat(pad - 2)));
    assert_eq!(text.len(), MAX_SPEC_BYTES);
    WorkloadSpec::from_toml(&text).expect("a spec of exactly the limit");
}

#[test]
fn hostile_strings_get_short_errors() {
    let long = "x".repeat(200 * 1024);
    for (path, field) in [
        ("name", "name"),
        ("version", "version"),
        ("artifact", "artifact"),
        ("command", "command"),
        ("placement", "placement"),
        ("restart.policy", "restart.policy"),
    ] {
        let e = json_err(&with(path, json!(long)));
        assert_eq!(e.field(), Some(field), "{e}");
        assert_sane(&e);
    }
    // A long string where a number belongs: serde would quote all of it.
    let e = json_err(&with("replicas", json!(long)));
    assert_field(&e, "replicas", "invalid type");
    assert!(e.to_string().contains("…, expected i64"), "{e}");
    let e = json_err(&with("env", json!({ long.clone(): "x" })));
    assert_sane(&e);
    let e = json_err(&with(&long, json!(1)));
    assert_sane(&e);

    // Newlines and NULs never reach the message raw.
    let e = json_err(&with("name", json!("evil\nINFO forged log line")));
    assert_field(&e, "name", "\\n");
    let e = json_err(&with("name", json!("nul\0")));
    assert_field(&e, "name", "\\0");
    let e = json_err(&with("requirements.labels", json!({"site\r\nx": "v"})));
    assert_sane(&e);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let e = WorkloadSpec::from_json(json.as_bytes()).expect_err("nested arrays");
    assert_sane(&e);
    let json = format!("{{\"name\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
    let e = WorkloadSpec::from_json(json.as_bytes()).expect_err("nested arrays");
    assert_sane(&e);
    let toml = format!("name = {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let e = toml_err(&toml);
    assert_sane(&e);
    let toml = format!("name = {}1{}\n", "{a=".repeat(depth), "}".repeat(depth));
    let e = toml_err(&toml);
    assert_sane(&e);
    let toml = format!("{} = 1\n", vec!["a"; 20_000].join("."));
    let e = toml_err(&toml);
    assert_sane(&e);
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input.

/// JSON values, biased toward the spec's own field names so that the fuzz gets past the first
/// unknown field often.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("name".to_owned()),
        Just("version".to_owned()),
        Just("artifact".to_owned()),
        Just("args".to_owned()),
        Just("env".to_owned()),
        Just("ports".to_owned()),
        Just("replicas".to_owned()),
        Just("placement".to_owned()),
        Just("resources".to_owned()),
        Just("cpu_millis".to_owned()),
        Just("memory_bytes".to_owned()),
        Just("requirements".to_owned()),
        Just("near".to_owned()),
        Just("lat".to_owned()),
        Just("health".to_owned()),
        Just("http".to_owned()),
        Just("port".to_owned()),
        Just("expose".to_owned()),
        Just("host".to_owned()),
        Just("path_prefix".to_owned()),
        Just("scale_to_zero".to_owned()),
        Just("idle_secs".to_owned()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from(DIGEST)),
        Just(Value::from("per-node")),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        let bytes = serde_json::to_vec(&value).expect("serializable");
        if let Err(e) = WorkloadSpec::from_json(&bytes) {
            assert_sane(&e);
        }
    }

    #[test]
    fn a_valid_spec_with_one_field_replaced_never_panics(
        path in prop_oneof![
            Just("name"), Just("version"), Just("artifact"), Just("args"), Just("env"),
            Just("ports"), Just("replicas"), Just("placement"), Just("resources.cpu_millis"),
            Just("resources.memory_bytes"), Just("resources.disk_bytes"),
            Just("requirements.arch"), Just("requirements.labels"), Just("requirements.devices"),
            Just("requirements.near"), Just("requirements.near.lat"),
            Just("requirements.follow_near"), Just("restart.policy"),
            Just("health"), Just("health.http"), Just("health.interval_secs"),
            Just("expose"), Just("scale_to_zero"),
        ],
        value in arb_json(),
    ) {
        let v = with(path, value);
        let bytes = serde_json::to_vec(&v).expect("serializable");
        match WorkloadSpec::from_json(&bytes) {
            Ok(spec) => {
                // Whatever is accepted serializes to JSON that parses back the same.
                let again = serde_json::to_vec(&spec).expect("serializes");
                prop_assert_eq!(WorkloadSpec::from_json(&again).expect("round trip"), spec);
            }
            Err(e) => assert_sane(&e),
        }
    }

    /// Routes built from plausible and hostile parts: whatever is accepted keeps its bounds
    /// and parses back the same from its own JSON.
    #[test]
    fn routes_that_pass_keep_their_bounds_and_round_trip(
        routes in prop::collection::vec(
            (
                0i64..70_000,
                prop::option::of(prop_oneof![
                    Just("Shop.Example".to_owned()),
                    Just("[::1]".to_owned()),
                    Just("10.0.0.1".to_owned()),
                    "[a-zA-Z0-9.:_-]{0,20}",
                    ".{0,20}",
                ]),
                prop::option::of(prop_oneof![Just("/".to_owned()), "/[a-z0-9/.%?#]{0,20}", ".{0,20}"]),
                prop::option::of(-5i64..1100),
                prop::option::of(prop_oneof![Just("round-robin"), Just("peak-ewma"), Just("nope")]),
            ),
            0..20,
        ),
        idle in prop::option::of(-1i64..90_000),
    ) {
        let routes: Vec<Value> = routes
            .into_iter()
            .map(|(port, host, path_prefix, weight, balance)| {
                json!({"port": port, "host": host, "path_prefix": path_prefix,
                       "weight": weight, "balance": balance})
            })
            .collect();
        let mut v = with("expose", json!(routes));
        if let Some(idle) = idle {
            set(&mut v, "scale_to_zero", json!({"idle_secs": idle}));
        }
        let bytes = serde_json::to_vec(&v).expect("serializable");
        match WorkloadSpec::from_json(&bytes) {
            Ok(spec) => {
                prop_assert!(spec.expose().len() <= 16);
                for e in spec.expose() {
                    prop_assert!(e.host.is_some() || e.path_prefix.is_some());
                    prop_assert!(e.weight <= 1000);
                    prop_assert!(spec.ports().contains(&e.port));
                }
                prop_assert!(spec.scale_to_zero().is_none() || !spec.expose().is_empty());
                let again = serde_json::to_vec(&spec).expect("serializes");
                prop_assert_eq!(WorkloadSpec::from_json(&again).expect("round trip"), spec);
            }
            Err(e) => assert_sane(&e),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = WorkloadSpec::from_json(&bytes) {
            assert_sane(&e);
        }
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Err(e) = WorkloadSpec::from_toml(text)
        {
            assert_sane(&e);
        }
    }

    #[test]
    fn toml_ish_text_never_panics(text in "[a-z_=\\[\\]{}\",.0-9 \n#-]{0,300}") {
        if let Err(e) = WorkloadSpec::from_toml(&text) {
            assert_sane(&e);
        }
    }
}
