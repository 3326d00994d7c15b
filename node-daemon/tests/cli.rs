//! `edge-node` as an operator meets it at a shell: what it prints for a config file that is
//! wrong, missing or fine.

use node_daemon::config::ConfigFile;
use std::path::Path;
use std::process::{Command, Output};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn edge_node(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("EDGE_LOG", "info")
        .output()
        .expect("edge-node runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs both commands that read a config on a file that fails, and returns what each wrote to
/// stderr; checks that they failed and wrote nothing to stdout.
fn failures(config: &Path) -> Vec<String> {
    [&["check-config"][..], &["run"][..]]
        .iter()
        .map(|args| {
            let out = edge_node(args, config);
            assert!(
                !out.status.success(),
                "{args:?} accepted {}",
                config.display()
            );
            assert_eq!(text(&out.stdout), "", "{args:?}");
            text(&out.stderr)
        })
        .collect()
}

#[test]
fn a_bad_value_is_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "version = 1\nname = \"Shop 1\"\ndata_dir = \"/tmp/x\"\n\
         [orchestrator]\naddress = \"o.example:7443\"\n",
    )
    .expect("write");
    for stderr in failures(&config) {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("edge-node: name: "), "{stderr}");
    }
}

#[test]
fn a_toml_error_is_printed_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    let contents = "version = 1\nname = \"shop-1\"\nbogus = 3\n";
    std::fs::write(&config, contents).expect("write");
    // The parser's message spans lines (it shows where in the file): exactly that, once.
    let error = ConfigFile::from_toml(contents).expect_err("unknown field");
    let expected = format!("edge-node: {}\n", error.to_string().trim_end());
    assert!(expected.lines().count() > 1, "{expected}");
    for stderr in failures(&config) {
        assert_eq!(stderr, expected);
        assert_eq!(stderr.matches("unknown field `bogus`").count(), 1);
    }
}

#[test]
fn a_missing_file_says_why_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("absent.toml");
    let os_error = std::fs::File::open(&config)
        .expect_err("absent")
        .to_string();
    for stderr in failures(&config) {
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&*config.to_string_lossy()), "{stderr}");
        assert_eq!(stderr.matches(&os_error).count(), 1, "{stderr}");
    }
}

#[test]
fn check_config_summarises_a_complete_file_without_the_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"shop-berlin-1\"\ndata_dir = \"/var/lib/edge-node\"\n\
             labels = {{ site = \"berlin\", floor = \"2\" }}\n\
             location = {{ lat = 52.52, lon = 13.405 }}\n\
             status_listen = \"127.0.0.1:7450\"\n\
             [orchestrator]\naddress = \"orchestrator.example.net:7443\"\n\
             [join]\ntoken = \"abcdef.{SECRET}\"\n\
             ca_hash = \"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n"
        ),
    )
    .expect("write");
    let out = edge_node(&["check-config"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    for expected in [
        "shop-berlin-1",
        "orchestrator.example.net:7443",
        "/var/lib/edge-node",
        "floor=2, site=berlin",
        "52.52, 13.405",
        "127.0.0.1:7450",
        "present (token abcdef.",
        "sha256:0011",
        "liveness       fast, keep-alive every 1 s, offline after 4 s without a packet; status every 10 s",
    ] {
        assert!(summary.contains(expected), "{expected:?} in:\n{summary}");
    }
    assert!(!summary.contains(SECRET), "{summary}");
    assert!(
        !summary.contains('{') && !summary.contains("Config"),
        "{summary}"
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_config_shows_the_liveness_profile_and_its_status_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    for (liveness, expected) in [
        (
            "\"metered\"",
            "metered, keep-alive every 20 s, offline after 60 s without a packet; status every 300 s",
        ),
        (
            "{ keep_alive_secs = 5, idle_timeout_secs = 30 }",
            "keep-alive every 5 s, offline after 30 s without a packet; status every 10 s",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "version = 1\nname = \"cell-1\"\ndata_dir = \"/var/lib/edge-node\"\n\
                 liveness = {liveness}\n[orchestrator]\naddress = \"o.example.net:7443\"\n"
            ),
        )
        .expect("write");
        let out = edge_node(&["check-config"], &config);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let summary = text(&out.stdout);
        assert!(
            summary.contains(&format!("liveness       {expected}")),
            "{expected:?} in:\n{summary}"
        );
    }
}

#[test]
fn check_config_says_what_a_join_file_will_provide() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "version = 1\ndata_dir = \"/var/lib/edge-node\"\n\
         join_file = [\"/boot/firmware/edge-join.toml\"]\n",
    )
    .expect("write");
    let out = edge_node(&["check-config"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    let line = |key: &str| {
        summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{summary}"))
            .to_owned()
    };
    for key in ["name", "orchestrator", "labels", "location", "join"] {
        assert!(line(key).ends_with("from the join file"), "{summary}");
    }
    assert!(line("join_file").ends_with("/boot/firmware/edge-join.toml"));
    assert!(!summary.contains("status_listen"), "not set: {summary}");
    assert!(!summary.contains('{'), "{summary}");
}
