//! A container's runtime config as runc reads it: the command, environment and user a
//! workload ends up with, the isolation it gets, and every input refused before anything
//! runs. Checked on the serialised JSON where the field names matter.

use node_core::oci::{
    Arch, CAPABILITIES, ConfigError, ContainerSettings, DEFAULT_PATH, DENIED_SYSCALLS,
    ImageDefaults, MAX_ARG_BYTES, MAX_ARGS, MAX_EXEC_BYTES, MAX_NOFILE_HARD, MAX_WRITABLE_PATHS,
    RuntimeConfig, RuntimeFeatures, SecretsMount, StopSignalError, User, UserError,
    default_seccomp, resolve_user, runtime_config,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
    ImageDefaults {
        entrypoint: owned(entrypoint),
        cmd: owned(cmd),
        ..ImageDefaults::default()
    }
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

fn settings() -> ContainerSettings {
    ContainerSettings::new("web-1", "/edge/web-1", Arch::Aarch64)
}

fn config(image: &ImageDefaults, settings: &ContainerSettings) -> RuntimeConfig {
    runtime_config(image, settings, &User::ROOT).expect("valid config")
}

fn refused(image: &ImageDefaults, settings: &ContainerSettings) -> ConfigError {
    runtime_config(image, settings, &User::ROOT).expect_err("refused")
}

fn to_json(config: &RuntimeConfig) -> Value {
    serde_json::to_value(config).expect("serialises")
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The command.

#[test]
fn the_command_is_the_entrypoint_then_the_images_cmd() {
    let c = config(
        &image(&["/docker-entrypoint.sh"], &["nginx", "-g", "daemon off;"]),
        &settings(),
    );
    assert_eq!(
        c.process.args,
        ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    );
}

#[test]
fn the_workloads_args_replace_the_cmd_and_keep_the_entrypoint() {
    let mut s = settings();
    s.args = Some(owned(&["redis-server", "--port", "7000"]));
    let c = config(&image(&["/entry"], &["redis-server"]), &s);
    assert_eq!(c.process.args, ["/entry", "redis-server", "--port", "7000"]);

    s.args = Some(Vec::new());
    let c = config(&image(&["/entry"], &["ignored"]), &s);
    assert_eq!(c.process.args, ["/entry"], "empty args still replace Cmd");
}

#[test]
fn an_entrypoint_or_a_cmd_alone_is_a_command() {
    assert_eq!(
        config(&image(&["/bin/app", "serve"], &[]), &settings())
            .process
            .args,
        ["/bin/app", "serve"]
    );
    assert_eq!(
        config(&image(&[], &["sh", "-c", "exec app"]), &settings())
            .process
            .args,
        ["sh", "-c", "exec app"]
    );
    let mut s = settings();
    s.args = Some(owned(&["/bin/other"]));
    assert_eq!(
        config(&image(&[], &["sh"]), &s).process.args,
        ["/bin/other"]
    );
}

#[test]
fn no_command_at_all_is_refused() {
    assert_eq!(
        refused(&image(&[], &[]), &settings()),
        ConfigError::NoCommand
    );
    let mut s = settings();
    s.args = Some(Vec::new());
    assert_eq!(
        refused(&image(&[], &["sh"]), &s),
        ConfigError::NoCommand,
        "args replace Cmd even when empty"
    );
    let e = refused(&image(&[""], &["x"]), &settings());
    assert_eq!(e.field(), "image Entrypoint");
    assert!(e.to_string().contains("empty string"), "{e}");
}

#[test]
fn an_argument_with_nul_or_too_long_is_refused_by_field_and_index() {
    let mut s = settings();
    s.args = Some(owned(&["ok", "b\0ad"]));
    assert_eq!(
        refused(&image(&["/e"], &[]), &s),
        ConfigError::Arg {
            field: "args",
            index: 1,
            reason: "contains a NUL byte"
        }
    );
    let long = "x".repeat(MAX_ARG_BYTES + 1);
    let e = refused(&image(&["/e"], &[long.as_str()]), &settings());
    assert!(
        matches!(
            e,
            ConfigError::Arg {
                field: "image Cmd",
                index: 0,
                ..
            }
        ),
        "{e:?}"
    );

    let many = vec!["a".to_string(); MAX_ARGS];
    let e = refused(
        &ImageDefaults {
            entrypoint: vec!["/e".into()],
            cmd: many,
            ..ImageDefaults::default()
        },
        &settings(),
    );
    assert_eq!(
        e,
        ConfigError::TooManyArgs {
            count: MAX_ARGS + 1
        }
    );
}

#[test]
fn arguments_and_environment_together_have_a_size_limit() {
    let big = "x".repeat(100_000);
    let mut s = settings();
    s.args = Some(vec![big; 11]);
    let e = refused(&image(&["/e"], &[]), &s);
    assert!(
        matches!(e, ConfigError::ExecTooLarge { bytes } if bytes > MAX_EXEC_BYTES),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The environment.

#[test]
fn the_workload_overrides_the_image_and_the_node_overrides_both() {
    let mut img = image(&["/e"], &[]);
    img.env = owned(&["PATH=/app/bin:/bin", "MODE=image", "KEEP=1", "EMPTY="]);
    let mut s = settings();
    s.env = vars(&[
        ("MODE", "spec"),
        ("EDGE_NODE_ADDRESS", "spoofed"),
        ("NEW", "a=b"),
    ]);
    s.node_env = vars(&[("EDGE_NODE_ADDRESS", "10.0.0.7")]);
    assert_eq!(
        config(&img, &s).process.env,
        [
            "PATH=/app/bin:/bin",
            "MODE=spec",
            "KEEP=1",
            "EMPTY=",
            "EDGE_NODE_ADDRESS=10.0.0.7",
            "NEW=a=b",
        ],
        "each name once, where it first appeared, with the last source's value"
    );
}

#[test]
fn path_defaults_when_no_one_sets_it() {
    let c = config(&image(&["/e"], &[]), &settings());
    assert_eq!(c.process.env, [format!("PATH={DEFAULT_PATH}")]);

    let mut s = settings();
    s.env = vars(&[("PATH", "/opt/bin")]);
    let mut img = image(&["/e"], &[]);
    img.env = owned(&["PATH=/image/bin"]);
    assert_eq!(config(&img, &s).process.env, ["PATH=/opt/bin"]);
}

#[test]
fn bad_variables_are_refused_naming_their_source() {
    let mut img = image(&["/e"], &[]);
    img.env = owned(&["NOEQUALS"]);
    let e = refused(&img, &settings());
    assert_eq!(e.field(), "image Env");
    assert!(e.to_string().contains("has no `=`"), "{e}");

    img.env = owned(&["=value"]);
    assert_eq!(refused(&img, &settings()).field(), "image Env");

    let img = image(&["/e"], &[]);
    for (name, value, reason) in [
        ("A=B", "x", "the name contains `=`"),
        ("", "x", "the name is empty"),
        ("A\0", "x", "contains a NUL byte"),
        ("A", "x\0y", "contains a NUL byte"),
    ] {
        let mut s = settings();
        s.env = vars(&[(name, value)]);
        match refused(&img, &s) {
            ConfigError::Env {
                field, reason: r, ..
            } => {
                assert_eq!((field, r), ("env", reason), "{name:?}={value:?}");
            }
            other => panic!("{other:?}"),
        }
        let mut s = settings();
        s.node_env = vars(&[(name, value)]);
        assert_eq!(refused(&img, &s).field(), "node_env");
    }
}

// ---------------------------------------------------------------------------------------
// The working directory.

#[test]
fn the_working_directory_is_the_workloads_else_the_images_else_root() {
    let mut img = image(&["/e"], &[]);
    assert_eq!(config(&img, &settings()).process.cwd, "/");
    img.working_dir = Some(String::new());
    assert_eq!(config(&img, &settings()).process.cwd, "/", "empty is none");
    img.working_dir = Some("/srv".into());
    assert_eq!(config(&img, &settings()).process.cwd, "/srv");
    let mut s = settings();
    s.working_dir = Some("/data".into());
    assert_eq!(config(&img, &s).process.cwd, "/data");
}

#[test]
fn a_relative_working_directory_is_refused() {
    let mut img = image(&["/e"], &[]);
    img.working_dir = Some("app".into());
    let e = refused(&img, &settings());
    assert_eq!(e.field(), "image WorkingDir");
    assert!(e.to_string().contains("absolute"), "{e}");

    let mut s = settings();
    s.working_dir = Some("./x".into());
    assert_eq!(refused(&image(&["/e"], &[]), &s).field(), "working_dir");
    s.working_dir = Some("/a\0b".into());
    assert_eq!(refused(&image(&["/e"], &[]), &s).field(), "working_dir");
    s.working_dir = Some(format!("/{}", "d".repeat(5000)));
    assert!(
        refused(&image(&["/e"], &[]), &s)
            .to_string()
            .contains("4095")
    );
}

// ---------------------------------------------------------------------------------------
// The user.

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
+nisuser::::::
nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
";

const GROUP: &str = "\
root:x:0:root
daemon:x:1:
wheel:x:10:root,app
nginx:x:101:
app:x:1000:
video:x:44:app , nginx
audio:x:29:app
wheel:x:10:app
";

fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> User {
    User {
        uid,
        gid,
        additional_gids: additional_gids.to_vec(),
    }
}

#[test]
fn every_user_form_resolves_as_docker_does() {
    let r = |u: Option<&str>| resolve_user(u, PASSWD, GROUP);
    assert_eq!(r(None), Ok(user(0, 0, &[10])), "root with root's groups");
    assert_eq!(r(Some("")), Ok(user(0, 0, &[10])));
    assert_eq!(r(Some("app")), Ok(user(1000, 1000, &[10, 44, 29])));
    assert_eq!(r(Some("1000")), Ok(user(1000, 1000, &[10, 44, 29])));
    assert_eq!(
        r(Some("nginx")),
        Ok(user(101, 101, &[44])),
        "members are trimmed"
    );
    assert_eq!(
        r(Some("app:audio")),
        Ok(user(1000, 29, &[])),
        "a group replaces the rest"
    );
    assert_eq!(r(Some("1000:44")), Ok(user(1000, 44, &[])));
    assert_eq!(
        r(Some("app:7")),
        Ok(user(1000, 7, &[])),
        "a gid need not be listed"
    );
    assert_eq!(r(Some("101:wheel")), Ok(user(101, 10, &[])));
    assert_eq!(
        r(Some("4242")),
        Ok(user(4242, 0, &[])),
        "an unlisted uid gets gid 0"
    );
    assert_eq!(r(Some("4242:4243")), Ok(user(4242, 4243, &[])));
    assert_eq!(r(Some("0007")), Ok(user(7, 0, &[])), "digits are an id");
}

#[test]
fn names_the_image_does_not_list_are_errors_and_ids_still_work_without_files() {
    assert_eq!(
        resolve_user(Some("postgres"), PASSWD, GROUP),
        Err(UserError::UnknownUser {
            name: "\"postgres\"".into()
        })
    );
    assert_eq!(
        resolve_user(Some("app:staff"), PASSWD, GROUP),
        Err(UserError::UnknownGroup {
            name: "\"staff\"".into()
        })
    );
    // No /etc/passwd or /etc/group in the image (a static binary on scratch).
    assert_eq!(resolve_user(None, "", ""), Ok(User::ROOT));
    assert_eq!(
        resolve_user(Some("65534:65534"), "", ""),
        Ok(user(65534, 65534, &[]))
    );
    assert!(matches!(
        resolve_user(Some("nobody"), "", ""),
        Err(UserError::UnknownUser { .. })
    ));
    let e = resolve_user(Some("app:staff"), PASSWD, "").expect_err("no group file");
    assert!(e.to_string().contains("/etc/group"), "{e}");
}

#[test]
fn colon_games_and_huge_ids_are_malformed_not_panics() {
    let r = |u: &str| resolve_user(Some(u), PASSWD, GROUP);
    for bad in [":", ":0", "0:", "app:", ":app", "a:b:c", "0:0:0", "::"] {
        assert!(
            matches!(r(bad), Err(UserError::Malformed { .. })),
            "{bad:?}: {:?}",
            r(bad)
        );
    }
    for huge in [
        "4294967295",
        "4294967296",
        "99999999999999999999999",
        "0:4294967295",
    ] {
        assert!(
            matches!(r(huge), Err(UserError::IdOutOfRange { .. })),
            "{huge:?}: {:?}",
            r(huge)
        );
    }
    assert_eq!(r("4294967294"), Ok(user(4_294_967_294, 0, &[])));
    let long = "a".repeat(100_000);
    let e = r(&long).expect_err("too long");
    assert!(
        e.to_string().len() < 200,
        "the error quotes only a prefix: {e}"
    );
    assert!(
        matches!(r("-1"), Err(UserError::UnknownUser { .. })),
        "not a number"
    );
}

#[test]
fn hostile_passwd_and_group_text_is_skipped_line_by_line() {
    let colons = ":".repeat(1_000_000);
    let long_name = "n".repeat(1_000_000);
    let passwd = format!(
        "{colons}\n{long_name}:x:5:5::/:/bin/sh\nbroken\nnan:x:abc:0::/:\n\
         big:x:99999999999:0::/:\nneg:x:-1:0::/:\nminus:x:4294967295:0::/:\n\
         \u{0}:x:6:6::/:\nweb:x:33:33::/:/bin/sh\r\nweb:x:34:34::/:\n"
    );
    let members = vec!["x"; 200_000].join(",");
    let group = format!(
        "g1:x:7:{members},web\n{colons}\nbad:x:notanumber:web\nweird:x:8:web:extra\n\
         tiny:x:9\nnet:x:60:web\n"
    );
    assert_eq!(
        resolve_user(Some("web"), &passwd, &group),
        Ok(user(33, 33, &[7, 60])),
        "the first good line wins; CRLF is a line end; malformed lines are skipped"
    );
    assert!(resolve_user(Some("nan"), &passwd, &group).is_err());
    assert!(resolve_user(Some("big"), &passwd, &group).is_err());
    assert_eq!(
        resolve_user(Some(&long_name), &passwd, &group).map(|u| u.uid),
        Err(UserError::Malformed {
            user: format!("\"{}\"…", "n".repeat(40)),
            reason: "longer than 256 bytes"
        }),
    );
    assert_eq!(
        resolve_user(Some("5"), &passwd, &group).map(|u| u.uid),
        Ok(5)
    );
}

#[test]
fn a_user_in_more_groups_than_the_kernel_allows_is_refused() {
    let many: String = (1..=70_000u32)
        .map(|gid| format!("g{gid}:x:{gid}:app\n"))
        .collect();
    assert_eq!(
        resolve_user(Some("app"), PASSWD, &many),
        Err(UserError::TooManyGroups {
            name: "\"app\"".into()
        })
    );
    let enough: String = (1..=65_000u32)
        .map(|gid| format!("g{gid}:x:{gid}:app\n"))
        .collect();
    let u = resolve_user(Some("app"), PASSWD, &enough).expect("within NGROUPS_MAX");
    assert_eq!(
        u.additional_gids.len(),
        64_999,
        "without the primary group 1000"
    );
}

proptest! {
    #[test]
    fn resolving_never_panics(user in ".{0,40}", passwd in "[a-z0-9:\n,#+-]{0,200}", group in "[a-z0-9:\n,]{0,200}") {
        let _ = resolve_user(Some(&user), &passwd, &group);
    }

    #[test]
    fn a_numeric_uid_always_resolves_to_itself(uid in 0u32..u32::MAX, passwd in "[a-z0-9:\n]{0,200}") {
        let resolved = resolve_user(Some(&uid.to_string()), &passwd, "").expect("numeric");
        prop_assert_eq!(resolved.uid, uid);
    }
}

#[test]
fn the_user_lands_in_the_process() {
    let u = resolve_user(Some("app"), PASSWD, GROUP).expect("app");
    let c = runtime_config(&image(&["/e"], &[]), &settings(), &u).expect("valid");
    let j = to_json(&c);
    assert_eq!(
        j["process"]["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 44, 29]})
    );
    let root = to_json(&config(&image(&["/e"], &[]), &settings()));
    assert_eq!(root["process"]["user"], json!({"uid": 0, "gid": 0}));
}

// ---------------------------------------------------------------------------------------
// The JSON runc reads.

#[test]
fn the_json_has_the_runtime_specs_names() {
    let mut s = settings();
    s.memory_bytes = Some(256 << 20);
    s.cpu_millis = Some(500);
    let j = to_json(&config(&image(&["/e"], &["x"]), &s));
    assert_eq!(j["ociVersion"], "1.0.2");
    assert_eq!(j["process"]["terminal"], false);
    assert_eq!(j["process"]["noNewPrivileges"], true);
    assert_eq!(j["process"]["cwd"], "/");
    assert_eq!(
        j["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 1024}])
    );
    assert_eq!(j["root"], json!({"path": "rootfs", "readonly": false}));
    assert_eq!(j["hostname"], "web-1");
    assert_eq!(j["linux"]["cgroupsPath"], "/edge/web-1");
    assert!(
        j["linux"]["maskedPaths"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("/proc/kcore")))
    );
    assert!(
        j["linux"]["readonlyPaths"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("/proc/sys")))
    );
    assert_eq!(
        j["linux"]["resources"]["memory"],
        json!({"limit": 268435456})
    );
    assert_eq!(
        j["linux"]["resources"]["cpu"],
        json!({"quota": 50000, "period": 100000})
    );
    assert!(
        !j.to_string().contains("null"),
        "nothing optional is written as null: {j}"
    );
}

#[test]
fn the_container_gets_pid_mount_ipc_uts_and_the_hosts_network() {
    let j = to_json(&config(&image(&["/e"], &[]), &settings()));
    assert_eq!(
        j["linux"]["namespaces"],
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]),
        "no network namespace: the proxy reaches the ports on the host; no user namespace"
    );
}

#[test]
fn limits_are_absent_unless_set_and_the_cpu_quota_has_the_kernels_floor() {
    let j = to_json(&config(&image(&["/e"], &[]), &settings()));
    let resources = j["linux"]["resources"].as_object().expect("resources");
    assert!(!resources.contains_key("memory") && !resources.contains_key("cpu"));

    let mut s = settings();
    s.cpu_millis = Some(2500);
    let c = config(&image(&["/e"], &[]), &s);
    let cpu = c.linux.resources.cpu.expect("cpu");
    assert_eq!(
        (cpu.quota, cpu.period),
        (250_000, 100_000),
        "two and a half CPUs"
    );
    s.cpu_millis = Some(3);
    let cpu = config(&image(&["/e"], &[]), &s)
        .linux
        .resources
        .cpu
        .expect("cpu");
    assert_eq!(cpu.quota, 1000, "the kernel refuses a quota under 1 ms");
}

#[test]
fn the_open_files_limit_is_the_nodes_to_choose() {
    let mut s = settings();
    s.nofile_hard = 20_000;
    let j = to_json(&config(&image(&["/e"], &[]), &s));
    assert_eq!(
        j["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 1024}])
    );
    s.nofile_hard = 512;
    let c = config(&image(&["/e"], &[]), &s);
    assert_eq!(
        (c.process.rlimits[0].soft, c.process.rlimits[0].hard),
        (512, 512)
    );
    for bad in [0, MAX_NOFILE_HARD + 1] {
        s.nofile_hard = bad;
        assert_eq!(refused(&image(&["/e"], &[]), &s).field(), "nofile_hard");
    }
}

#[test]
fn limits_out_of_range_are_refused() {
    let img = image(&["/e"], &[]);
    let mut s = settings();
    s.memory_bytes = Some(4096);
    assert_eq!(refused(&img, &s).field(), "memory_bytes");
    s.memory_bytes = Some(u64::MAX);
    assert_eq!(refused(&img, &s).field(), "memory_bytes");
    let mut s = settings();
    s.cpu_millis = Some(0);
    assert_eq!(refused(&img, &s).field(), "cpu_millis");
    s.cpu_millis = Some(u32::MAX);
    assert_eq!(refused(&img, &s).field(), "cpu_millis");
    let mut s = settings();
    s.tmpfs_size_bytes = 0;
    assert_eq!(
        refused(&img, &s).field(),
        "tmpfs_size_bytes",
        "size=0 is unlimited"
    );
}

#[test]
fn devices_are_denied_but_the_pseudo_devices() {
    let j = to_json(&config(&image(&["/e"], &[]), &settings()));
    let devices = j["linux"]["resources"]["devices"]
        .as_array()
        .expect("devices");
    assert_eq!(
        devices[0],
        json!({"allow": false, "access": "rwm"}),
        "deny all first"
    );
    let allowed: Vec<(i64, Option<i64>)> = devices[1..]
        .iter()
        .map(|d| {
            assert_eq!(
                (d["allow"].as_bool(), d["type"].as_str()),
                (Some(true), Some("c"))
            );
            (d["major"].as_i64().expect("major"), d["minor"].as_i64())
        })
        .collect();
    assert_eq!(
        allowed,
        [
            (1, Some(3)),
            (1, Some(5)),
            (1, Some(7)),
            (1, Some(8)),
            (1, Some(9)),
            (5, Some(0)),
            (5, Some(2)),
            (136, None)
        ]
    );
}

#[test]
fn capabilities_are_the_reduced_set_without_raw_sockets_or_mknod() {
    let j = to_json(&config(&image(&["/e"], &[]), &settings()));
    let caps = &j["process"]["capabilities"];
    let set = json!(CAPABILITIES);
    assert_eq!(caps["bounding"], set);
    assert_eq!(caps["effective"], set);
    assert_eq!(caps["permitted"], set);
    assert!(caps.get("ambient").is_none() && caps.get("inheritable").is_none());
    for absent in [
        "CAP_NET_RAW",
        "CAP_MKNOD",
        "CAP_SETFCAP",
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
    ] {
        assert!(!CAPABILITIES.contains(&absent), "{absent}");
    }
    for present in [
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_CHOWN",
        "CAP_KILL",
    ] {
        assert!(CAPABILITIES.contains(&present), "{present}");
    }
}

// ---------------------------------------------------------------------------------------
// Mounts.

fn mount<'a>(j: &'a Value, destination: &str) -> Option<&'a Value> {
    j["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["destination"] == destination)
}

fn destinations(c: &RuntimeConfig) -> Vec<&str> {
    c.mounts.iter().map(|m| m.destination.as_str()).collect()
}

#[test]
fn every_container_gets_the_runtime_mounts_and_a_read_only_sys() {
    let c = config(&image(&["/e"], &[]), &settings());
    assert_eq!(
        destinations(&c),
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    let j = to_json(&c);
    let sys = mount(&j, "/sys").expect("/sys");
    assert_eq!(sys["type"], "sysfs");
    assert!(
        sys["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro"))
    );
    let cgroup = mount(&j, "/sys/fs/cgroup").expect("cgroup");
    assert_eq!(cgroup["type"], "cgroup");
    assert!(
        cgroup["options"]
            .as_array()
            .expect("options")
            .contains(&json!("ro"))
    );
    assert_eq!(
        mount(&j, "/dev").expect("/dev")["options"],
        json!(["nosuid", "strictatime", "mode=755", "size=65536k"])
    );
}

#[test]
fn a_read_only_root_gets_a_tmpfs_on_tmp() {
    let mut s = settings();
    let writable = to_json(&config(&image(&["/e"], &[]), &s));
    assert!(
        mount(&writable, "/tmp").is_none(),
        "a writable root keeps the image's /tmp"
    );

    s.readonly_root = true;
    let j = to_json(&config(&image(&["/e"], &[]), &s));
    assert_eq!(j["root"]["readonly"], true);
    let tmp = mount(&j, "/tmp").expect("/tmp");
    assert_eq!(tmp["type"], "tmpfs");
    assert_eq!(
        tmp["options"],
        json!(["nosuid", "nodev", "mode=1777", format!("size={}", 64 << 20)])
    );
}

#[test]
fn writable_paths_are_tmpfs_owned_by_the_user_and_mounted_parent_first() {
    let mut s = settings();
    s.readonly_root = true;
    s.tmpfs_size_bytes = 1 << 20;
    s.writable_paths = owned(&["/var/cache/nginx/", "/var//cache", "/run"]);
    let u = user(101, 101, &[]);
    let c = runtime_config(&image(&["/e"], &[]), &s, &u).expect("valid");
    assert_eq!(
        destinations(&c)[7..],
        ["/run", "/tmp", "/var/cache", "/var/cache/nginx"],
        "normalised, and a mount inside another after it"
    );
    let j = to_json(&c);
    assert_eq!(
        mount(&j, "/run").expect("/run")["options"],
        json!([
            "nosuid",
            "nodev",
            "mode=755",
            "uid=101",
            "gid=101",
            "size=1048576"
        ])
    );
}

#[test]
fn the_secrets_and_the_resolver_are_read_only_binds() {
    let mut s = settings();
    s.secrets = Some(SecretsMount {
        host_dir: "/var/lib/edge/secrets/web".into(),
        container_dir: "/run/secrets".into(),
    });
    s.writable_paths = owned(&["/run"]);
    s.resolv_conf = Some("/etc/resolv.conf".into());
    s.hosts_file = Some("/etc/hosts".into());
    let c = config(&image(&["/e"], &[]), &s);
    assert_eq!(
        destinations(&c)[7..],
        ["/etc/hosts", "/etc/resolv.conf", "/run", "/run/secrets"],
        "the secrets after the tmpfs they sit in"
    );
    let j = to_json(&c);
    assert_eq!(
        mount(&j, "/run/secrets").expect("secrets"),
        &json!({
            "destination": "/run/secrets",
            "type": "bind",
            "source": "/var/lib/edge/secrets/web",
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        })
    );
    assert_eq!(
        mount(&j, "/etc/resolv.conf").expect("resolv")["options"][1],
        "ro"
    );
}

#[test]
fn mount_destinations_that_would_break_the_container_are_refused() {
    let img = image(&["/e"], &[]);
    for (path, reason) in [
        ("tmp", "must be an absolute path"),
        ("/", "must not be `/`"),
        ("//", "must not be `/`"),
        (
            "/proc",
            "must not be under /proc, /sys or /dev, which the runtime mounts",
        ),
        (
            "/sys/kernel",
            "must not be under /proc, /sys or /dev, which the runtime mounts",
        ),
        (
            "/dev/",
            "must not be under /proc, /sys or /dev, which the runtime mounts",
        ),
        ("/var/../etc", "has a `.` or `..` component"),
        ("/a/./b", "has a `.` or `..` component"),
    ] {
        let mut s = settings();
        s.writable_paths = vec![path.into()];
        match refused(&img, &s) {
            ConfigError::Path {
                field, reason: r, ..
            } => {
                assert_eq!((field, r), ("writable_paths", reason), "{path}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    let mut s = settings();
    s.writable_paths = owned(&["/data", "/data/"]);
    assert!(
        refused(&img, &s)
            .to_string()
            .contains("another mount's destination")
    );
    s.writable_paths = vec!["/x".into(); MAX_WRITABLE_PATHS + 1];
    assert_eq!(
        refused(&img, &s),
        ConfigError::TooManyWritablePaths {
            count: MAX_WRITABLE_PATHS + 1
        }
    );

    let mut s = settings();
    s.secrets = Some(SecretsMount {
        host_dir: "relative".into(),
        container_dir: "/run/secrets".into(),
    });
    assert_eq!(refused(&img, &s).field(), "secrets.host_dir");
    s.secrets = Some(SecretsMount {
        host_dir: "/s".into(),
        container_dir: "/proc/self".into(),
    });
    assert_eq!(refused(&img, &s).field(), "secrets.container_dir");
    s.secrets = Some(SecretsMount {
        host_dir: "/s".into(),
        container_dir: "/etc/hosts".into(),
    });
    s.hosts_file = Some("/etc/hosts".into());
    assert_eq!(refused(&img, &s).field(), "secrets.container_dir");
}

// ---------------------------------------------------------------------------------------
// Hostname and cgroup.

#[test]
fn hostnames_are_dns_names_of_at_most_64_bytes() {
    let img = image(&["/e"], &[]);
    for good in ["web", "web-1.edge", "a", "db_0", &"h".repeat(64)] {
        let s = ContainerSettings::new(good, "/edge/x", Arch::X86_64);
        assert!(runtime_config(&img, &s, &User::ROOT).is_ok(), "{good}");
    }
    for bad in [
        "",
        "-web",
        "web-",
        "a..b",
        ".a",
        "a b",
        "wéb",
        "a/b",
        "x\n",
        &"h".repeat(65),
    ] {
        let s = ContainerSettings::new(bad, "/edge/x", Arch::X86_64);
        assert_eq!(refused(&img, &s).field(), "hostname", "{bad:?}");
    }
}

#[test]
fn the_cgroup_path_is_absolute_and_stays_below_the_root() {
    let img = image(&["/e"], &[]);
    for bad in [
        "edge/web",
        "/",
        "/edge/../..",
        "/edge//web",
        "/edge/web/",
        "/./x",
        "/a\nb",
        "",
    ] {
        let s = ContainerSettings::new("web", bad, Arch::X86_64);
        assert_eq!(refused(&img, &s).field(), "cgroups_path", "{bad:?}");
    }
    let long = format!("/{}", "c".repeat(5000));
    let s = ContainerSettings::new("web", long, Arch::X86_64);
    assert!(refused(&img, &s).to_string().contains("4095"));
}

// ---------------------------------------------------------------------------------------
// Seccomp.

#[test]
fn seccomp_is_present_only_when_asked_and_for_the_nodes_arch() {
    let img = image(&["/e"], &[]);
    let j = to_json(&config(&img, &settings()));
    assert!(j["linux"].get("seccomp").is_none());

    for (arch, archs) in [
        (
            Arch::X86_64,
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ),
        (Arch::Aarch64, json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])),
        (Arch::Arm, json!(["SCMP_ARCH_ARM"])),
    ] {
        let mut s = ContainerSettings::new("web", "/edge/web", arch);
        s.seccomp = true;
        let j = to_json(&config(&img, &s));
        let seccomp = &j["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(seccomp["architectures"], archs, "{arch:?}");
        assert_eq!(seccomp["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["syscalls"][0]["errnoRet"], 1);
    }
}

#[test]
fn the_profile_refuses_what_reaches_the_kernel_and_keeps_threads_working() {
    let profile = default_seccomp(Arch::X86_64);
    let denied = &profile.syscalls[0].names;
    for name in [
        "init_module",
        "finit_module",
        "delete_module",
        "create_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "acct",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "stime",
        "open_by_handle_at",
        "name_to_handle_at",
        "lookup_dcookie",
        "quotactl",
        "syslog",
        "vhangup",
        "iopl",
        "ioperm",
        "unshare",
        "setns",
        "uselib",
        "nfsservctl",
        "get_kernel_syms",
        "query_module",
        "kcmp",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        "personality",
    ] {
        assert!(denied.iter().any(|d| d == name), "{name} is refused");
    }
    assert_eq!(denied.len(), DENIED_SYSCALLS.len());
    for needed in [
        "clone", "clone3", "execve", "socket", "read", "futex", "mmap", "prctl",
    ] {
        assert!(
            !denied.iter().any(|d| d == needed),
            "{needed} stays unconditional"
        );
    }

    let j = serde_json::to_value(&profile).expect("json");
    assert_eq!(
        j["syscalls"][1],
        json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 0, "value": 0x1000_0000u64, "valueTwo": 0x1000_0000u64,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        }),
        "only a clone into a new user namespace"
    );
    assert_eq!(
        j["syscalls"][2],
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}),
        "ENOSYS, so that libc falls back to clone"
    );
}

// ---------------------------------------------------------------------------------------
// The runtime's features.

/// `runc features` of runc 1.1.5 (Debian 12), capabilities left out.
const RUNC_1_1_5: &str = r#"{
    "ociVersionMin": "1.0.0",
    "ociVersionMax": "1.0.2-dev",
    "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
    "mountOptions": ["bind", "ro", "rbind", "nosuid", "nodev", "noexec", "strictatime"],
    "linux": {
        "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
        "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": true},
        "seccomp": {
            "enabled": true,
            "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                        "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                        "SCMP_ACT_TRAP"],
            "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                          "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
            "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64",
                      "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
                      "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
                      "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_X32",
                      "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"]
        },
        "apparmor": {"enabled": true},
        "selinux": {"enabled": true}
    },
    "annotations": {"io.github.seccomp.libseccomp.version": "2.5.4"}
}"#;

#[test]
fn runc_1_1_reports_seccomp_namespaces_and_both_cgroup_versions() {
    let f = RuntimeFeatures::parse(RUNC_1_1_5);
    assert!(f.reported && f.seccomp && f.cgroup_v1 && f.cgroup_v2);
    assert!(f.namespaces.iter().any(|n| n == "network"));
    assert!(f.missing_namespaces().is_empty());
    for arch in [Arch::X86_64, Arch::Aarch64, Arch::Arm] {
        assert!(f.seccomp_for(arch), "{arch:?}");
    }
}

#[test]
fn a_runtime_without_features_gets_conservative_defaults() {
    // runc 1.0 answers `features` with its usage on stderr and nothing on stdout.
    for text in [
        "",
        "   ",
        "No help topic for 'features'",
        "null",
        "[1,2]",
        "{\"linux\":",
        "\"x\"",
    ] {
        let f = RuntimeFeatures::parse(text);
        assert_eq!(f, RuntimeFeatures::default(), "{text:?}");
        assert!(!f.seccomp_for(Arch::Aarch64));
        assert!(
            f.missing_namespaces().is_empty(),
            "silence is no reason to refuse"
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(RuntimeFeatures::parse(&deep), RuntimeFeatures::default());
}

#[test]
fn seccomp_is_claimed_only_when_the_profile_can_be_installed() {
    let f = RuntimeFeatures::parse(r#"{"linux": {"seccomp": {"enabled": false}}}"#);
    assert!(f.reported && !f.seccomp);
    let f = RuntimeFeatures::parse(r#"{"linux": {"seccomp": {"enabled": "yes"}}}"#);
    assert!(!f.seccomp, "a wrong type is not a yes");
    let f = RuntimeFeatures::parse(r#"{"linux": {"seccomp": {"enabled": true}}}"#);
    assert!(
        f.seccomp && f.seccomp_for(Arch::X86_64),
        "nothing listed: enabled is enough"
    );
    let f = RuntimeFeatures::parse(
        r#"{"linux": {"seccomp": {"enabled": true, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_KILL"]}}}"#,
    );
    assert!(!f.seccomp, "no SCMP_ACT_ERRNO");
    let f = RuntimeFeatures::parse(
        r#"{"linux": {"seccomp": {"enabled": true, "operators": ["SCMP_CMP_EQ"]}}}"#,
    );
    assert!(!f.seccomp, "no SCMP_CMP_MASKED_EQ for the clone rule");
    let f = RuntimeFeatures::parse(
        r#"{"linux": {"seccomp": {"enabled": true, "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_ARM"]}}}"#,
    );
    assert!(!f.seccomp_for(Arch::X86_64), "no X32");
    assert!(f.seccomp_for(Arch::Arm));
    assert!(!f.seccomp_for(Arch::Aarch64));
}

#[test]
fn a_runtime_lacking_a_namespace_says_which() {
    let f = RuntimeFeatures::parse(r#"{"linux": {"namespaces": ["mount", "uts", "network"]}}"#);
    assert_eq!(f.missing_namespaces(), ["pid", "ipc"]);
    assert!(!f.cgroup_v1 && !f.cgroup_v2);
}

// ---------------------------------------------------------------------------------------
// The stop signal and the architecture.

#[test]
fn the_stop_signal_is_the_images_or_sigterm() {
    let with = |s: Option<&str>| ImageDefaults {
        stop_signal: s.map(str::to_owned),
        ..ImageDefaults::default()
    };
    let cases = [
        (None, 15),
        (Some(""), 15),
        (Some("SIGQUIT"), 3),
        (Some("quit"), 3),
        (Some("SIGWINCH"), 28),
        (Some("9"), 9),
        (Some("SIGRTMIN+3"), 37),
        (Some("RTMAX-1"), 63),
        (Some("SIGIO"), 29),
    ];
    for (signal, number) in cases {
        assert_eq!(with(signal).stop_signal_number(), Ok(number), "{signal:?}");
    }
    for bad in [
        "0",
        "65",
        "SIGFOO",
        "SIG",
        "RTMIN+31",
        "RTMAX-64",
        "-9",
        "99999999999999999999",
    ] {
        assert!(
            matches!(
                with(Some(bad)).stop_signal_number(),
                Err(StopSignalError::Unknown { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn arch_names_are_rusts() {
    assert_eq!(Arch::from_target("x86_64"), Some(Arch::X86_64));
    assert_eq!(Arch::from_target("aarch64"), Some(Arch::Aarch64));
    assert_eq!(Arch::from_target("arm"), Some(Arch::Arm));
    assert_eq!(Arch::from_target("riscv64"), None);
}

#[test]
fn crun_first_on_cgroup_v2_and_runc_first_on_v1_or_hybrid() {
    assert_eq!(node_core::oci::runtime_preference(true), ["crun", "runc"]);
    assert_eq!(node_core::oci::runtime_preference(false), ["runc", "crun"]);
}
