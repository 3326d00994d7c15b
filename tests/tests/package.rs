//! The node daemon's Debian package, as `cross/package.sh` makes it: built from the host's
//! debug binary under the x86_64-gateway profile (amd64), so that no cross toolchain is
//! needed, and checked the way an installing user meets it: control fields, file list,
//! conffiles, the default config and the systemd unit. `--lint` makes the script itself run
//! lintian and `systemd-analyze verify`; it exits non-zero when either objects. The unit's
//! sandbox is held to the exposure `systemd-analyze security` gave it when it was last
//! tightened, alone and with the drop-in that lets it run containers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Runs `bash cross/package.sh ARGS` from the workspace root.
fn package_sh<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("bash")
        .arg(workspace().join("cross/package.sh"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("bash runs")
}

/// Runs a command that must succeed and returns its stdout.
fn stdout_of(command: &mut Command) -> String {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A line-level TOML check, enough for the flat file the package installs: every line is
/// blank, a comment, a `[table]` header or a `key = value` pair with a bare key.
fn assert_plain_toml(text: &str) {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header.split(']').next().unwrap_or_default();
            assert!(
                header.contains(']') && !name.is_empty(),
                "line {}: bad table header {line:?}",
                n + 1
            );
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: neither a table nor key = value: {line:?}", n + 1));
        let key = key.trim();
        assert!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "line {}: bad key {key:?}",
            n + 1
        );
        assert!(!value.trim().is_empty(), "line {}: no value", n + 1);
    }
}

#[test]
fn x86_64_gateway_package_installs_the_daemon_its_config_and_a_hardened_unit() {
    let binary = edge_tests::binary("edge-node");
    let out = tempfile::tempdir().expect("temp dir");
    let run = package_sh([
        OsStr::new("x86_64-gateway"),
        OsStr::new("--binary"),
        binary.as_os_str(),
        OsStr::new("--out"),
        out.path().as_os_str(),
        OsStr::new("--lint"),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "package.sh --lint failed (lintian or systemd-analyze verify objected):\n{stderr}"
    );

    let debs: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("out dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("deb")))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb in {}: {debs:?}",
        out.path().display()
    );
    let deb = &debs[0];
    let name = deb.file_name().and_then(OsStr::to_str).expect("a name");
    assert!(
        name.starts_with("edge-node_") && name.ends_with("-1_amd64.deb"),
        "{name}"
    );
    let printed = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        printed.lines().last().map(Path::new),
        Some(deb.as_path()),
        "the script prints the package's path last"
    );

    let field = |f: &str| {
        stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "edge-node");
    assert_eq!(field("Architecture"), "amd64");
    let version = field("Version");
    assert!(
        version.ends_with("-1") && version.starts_with(|c: char| c.is_ascii_digit()),
        "version {version:?}"
    );
    assert_eq!(name, format!("edge-node_{version}_amd64.deb"));

    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb));
    for path in [
        "./usr/bin/edge-node",
        "./etc/edge-node/node.toml",
        "./lib/systemd/system/edge-node.service",
        "./usr/share/edge-node/containers.conf",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with(" ./usr/bin/edge-node")),
        "/usr/bin/edge-node is root's and 0755:\n{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r--r-- root/root")
                && l.ends_with(" ./usr/share/edge-node/containers.conf")),
        "the containers drop-in is root's and 0644:\n{listing}"
    );
    // Shipped, never active by itself: nothing in the package lands in a drop-in directory.
    assert!(
        !listing.lines().any(|l| l.contains(".service.d/")),
        "no drop-in is installed where systemd reads it:\n{listing}"
    );

    let control = out.path().join("control");
    stdout_of(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    let conffiles = read(&control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/edge-node/node.toml"),
        "conffiles: {conffiles:?}"
    );

    let root = out.path().join("root");
    stdout_of(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    // The config's schema is the daemon's business (and its own tests'); here: the profile's
    // [config] table arrived as a file of its own.
    let config = read(&root.join("etc/edge-node/node.toml"));
    assert_plain_toml(&config);
    assert!(
        config
            .lines()
            .any(|l| l.trim() == r#"data_dir = "/var/lib/edge-node""#),
        "{config}"
    );
    assert!(
        config.lines().any(|l| l.starts_with("[reserve]")),
        "[config.reserve] became [reserve]:\n{config}"
    );
    assert!(
        !config
            .lines()
            .any(|l| l.trim_start().starts_with("[config")),
        "no [config...] table is left:\n{config}"
    );

    let unit = read(&root.join("lib/systemd/system/edge-node.service"));
    for directive in [
        "Type=notify",
        "Delegate=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "{directive} missing"
        );
    }
    assert!(
        unit.lines().any(|l| l.starts_with("WatchdogSec=")),
        "WatchdogSec missing"
    );
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/edge-node run --config /etc/edge-node/node.toml"),
        "ExecStart runs the packaged binary with the packaged config"
    );
}

/// A profile's `[config]` as `cross/package.sh` installs it: the table's lines, with
/// `[config.X]` headers become `[X]` and `[[config.X]]` ones `[[X]]`.
fn packaged_config(profile: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in profile.lines() {
        let header = line.trim_start();
        if header.starts_with('[') {
            let name = header.trim_start_matches('[');
            inside = name.starts_with("config]") || name.starts_with("config.");
            if inside && name.starts_with("config.") {
                let brackets = &header[..header.len() - name.len()];
                out.push_str(&format!("{brackets}{}\n", &name["config.".len()..]));
            }
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_board_s_config_is_one_the_node_takes_with_a_proxy_on_port_80() {
    let mut profiles: Vec<PathBuf> = std::fs::read_dir(workspace().join("targets"))
        .expect("targets/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("toml")))
        .collect();
    profiles.sort();
    assert_eq!(profiles.len(), 4, "{profiles:?}");
    for path in profiles {
        let text = read(&path);
        let config = packaged_config(&text);
        assert_plain_toml(&config);
        let file = node_core::config::ConfigFile::from_toml(&config)
            .unwrap_or_else(|e| panic!("{}: {e}\n{config}", path.display()));
        let proxy = file
            .proxy()
            .unwrap_or_else(|| panic!("{} has no [config.proxy]", path.display()));
        assert_eq!(
            proxy.listen(),
            "0.0.0.0:80".parse().expect("an address"),
            "{}",
            path.display()
        );
        let cache = proxy.cache();
        let profile: toml::Table = text.parse().expect("the profile is TOML");
        let budget = |key: &str| {
            profile["budget"][key]
                .as_integer()
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or_else(|| panic!("{}: budget.{key}", path.display()))
        };
        assert!(
            cache.disk_bytes <= budget("disk_bytes") / 2,
            "{}: a {} B disk cache leaves the artifacts less than half the data dir's budget",
            path.display(),
            cache.disk_bytes
        );
        assert!(
            cache.memory_bytes > 0 && cache.disk_bytes > 0,
            "{}: both stores are on",
            path.display()
        );
        let outbox = file.outbox().max_bytes;
        assert!(
            outbox > node_core::config::OutboxSettings::default().max_bytes
                && outbox <= budget("disk_bytes") / 16,
            "{}: the board sets an outbox budget of its own, {outbox} B, a sixteenth of its disk at most",
            path.display()
        );
    }
}

#[test]
fn the_packaged_config_keeps_every_table() {
    let profile = "triple = \"x\"\n[budget]\nrss_bytes = 1\n[config]\nversion = 1\n\
                   [config.reserve]\nmemory_bytes = 2\n[config.proxy]\nlisten = \"0.0.0.0:80\"\n\
                   [config.proxy.cache]\nmemory_bytes = 3\n[[config.proxy.upstream]]\n\
                   origin = \"http://a\"\n[other]\nx = 1\n";
    assert_eq!(
        packaged_config(profile),
        "version = 1\n[reserve]\nmemory_bytes = 2\n[proxy]\nlisten = \"0.0.0.0:80\"\n\
         [proxy.cache]\nmemory_bytes = 3\n[[proxy.upstream]]\norigin = \"http://a\"\n"
    );
}

#[test]
fn an_unknown_profile_is_refused_by_name() {
    let out = tempfile::tempdir().expect("temp dir");
    let run = package_sh([
        OsStr::new("no-such-board"),
        OsStr::new("--out"),
        out.path().as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "an unknown profile is an error");
    assert!(stderr.contains("no-such-board"), "{stderr}");
    assert!(
        std::fs::read_dir(out.path())
            .expect("out dir")
            .next()
            .is_none(),
        "nothing was written"
    );
}

#[test]
fn a_binary_for_another_architecture_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    // An ELF64 little-endian header, type EXEC, machine EM_AARCH64 (183), and nothing else:
    // all the script reads before it refuses.
    let mut header = [0u8; 64];
    header[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    header[16] = 2;
    header[18] = 183;
    header[20] = 1;
    let fake = dir.path().join("edge-node");
    std::fs::write(&fake, header).expect("write the fake binary");
    let out = dir.path().join("out");

    let run = package_sh([
        OsStr::new("x86_64-gateway"),
        OsStr::new("--binary"),
        fake.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "an aarch64 binary in an amd64 package"
    );
    assert!(
        stderr.contains("aarch64") && stderr.contains("amd64"),
        "the message names both architectures: {stderr}"
    );
    assert!(!out.exists(), "no package was made");
}

#[test]
fn a_missing_binary_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("edge-node");
    let run = package_sh([
        OsStr::new("pi-zero-2w"),
        OsStr::new("--binary"),
        missing.as_os_str(),
        OsStr::new("--out"),
        dir.path().as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a missing binary is an error");
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
}

/// The exposure `systemd-analyze security` gives the unit, as recorded in benches/RESULTS.md
/// and in the unit's own comment. It was 5.0 (MEDIUM) before the system call filter, UMask=,
/// ProtectProc= and the device policy; a change that raises it must say why there.
const UNIT_EXPOSURE_AT_MOST: f64 = 3.1;

/// The figure in `→ Overall exposure level for edge-node.service: 3.1 OK 🙂`.
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for edge-node.service:"))?;
    let (_, rest) = line.split_once("edge-node.service:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `systemd-analyze security --offline=yes ARGS`: its report, its stderr and the overall
/// exposure in the report. Fails the test when it does not run or gives no figure.
fn security(args: &[&std::ffi::OsStr]) -> (String, String, f64) {
    let analyze = edge_tests::installed("systemd-analyze", "systemd");
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("systemd-analyze runs");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} security --offline=yes {args:?} failed (it needs systemd 250 or newer):\n{stderr}",
        analyze.display()
    );
    let exposure = overall_exposure(&report)
        .unwrap_or_else(|| panic!("no overall exposure in the report:\n{report}\n{stderr}"));
    (report, stderr, exposure)
}

#[test]
fn the_unit_is_exposed_no_more_than_recorded() {
    // --offline (systemd 250 and later) scores the file itself: no systemd needs to run here,
    // and no unit needs to be installed.
    let unit = workspace().join("targets/edge-node.service");
    let (report, stderr, exposure) = security(&[unit.as_os_str()]);
    assert!(
        exposure <= UNIT_EXPOSURE_AT_MOST,
        "edge-node.service is exposed {exposure}, more than the recorded {UNIT_EXPOSURE_AT_MOST}:\n{report}"
    );
    // Every setting the score counts was understood: a misspelt or unknown value is ignored
    // with a warning, and would leave the unit less confined than it reads.
    assert!(
        !stderr.contains("edge-node.service:"),
        "systemd-analyze objected to the unit:\n{stderr}"
    );
}

/// The exposure with `targets/edge-node-containers.conf` in the unit's drop-in directory, as
/// recorded in benches/RESULTS.md and in the drop-in's own comment: what running containers
/// costs (mount and namespaces, CAP_SYS_ADMIN and CAP_NET_ADMIN for the runtime, the hostname).
const UNIT_WITH_CONTAINERS_EXPOSURE_AT_MOST: f64 = 4.1;

#[test]
fn the_unit_with_the_containers_drop_in_is_exposed_no_more_than_recorded() {
    // --root: the unit and its drop-in are looked up in a tree laid out as on a node, the unit
    // where the package puts it and the drop-in where the README has the administrator put it,
    // so the score is of what systemd would run, drop-in merged, not of a hand-merged copy.
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("lib/systemd/system");
    let dropins = root.path().join("etc/systemd/system/edge-node.service.d");
    std::fs::create_dir_all(&units).expect("unit dir");
    std::fs::create_dir_all(&dropins).expect("drop-in dir");
    std::fs::copy(
        workspace().join("targets/edge-node.service"),
        units.join("edge-node.service"),
    )
    .expect("copy the unit");
    std::fs::copy(
        workspace().join("targets/edge-node-containers.conf"),
        dropins.join("containers.conf"),
    )
    .expect("copy the drop-in");

    let root_arg = format!("--root={}", root.path().display());
    let (report, stderr, exposure) = security(&[
        std::ffi::OsStr::new(&root_arg),
        std::ffi::OsStr::new("edge-node.service"),
    ]);
    assert!(
        exposure <= UNIT_WITH_CONTAINERS_EXPOSURE_AT_MOST,
        "edge-node.service with containers.conf is exposed {exposure}, more than the recorded \
         {UNIT_WITH_CONTAINERS_EXPOSURE_AT_MOST}:\n{report}"
    );
    // The drop-in was read: the namespaces it allows show in the report. Without it the score
    // would be the unit's alone and the bound above would hold for nothing.
    assert!(
        exposure > UNIT_EXPOSURE_AT_MOST && report.contains("RestrictNamespaces=~mnt"),
        "the drop-in was not applied (exposure {exposure}):\n{report}"
    );
    // Nor user, network or cgroup namespaces: the drop-in's reset of RestrictNamespaces= is
    // followed by its allow-list, not left as "no restriction".
    for namespace in ["user", "net", "cgroup"] {
        let check = format!("RestrictNamespaces=~{namespace} ");
        let line = report.lines().find(|l| l.contains(&check));
        assert!(
            line.is_some_and(|l| l.starts_with('✓')),
            "{namespace} namespaces are still refused: {line:?}\n{report}"
        );
    }
    assert!(
        !stderr.contains("edge-node.service") && !stderr.contains("containers.conf"),
        "systemd-analyze objected to the unit or the drop-in:\n{stderr}"
    );
}

#[test]
fn the_exposure_is_read_from_the_report() {
    let report = "✗ UMask=  Files created by service are world-readable by default  0.1\n\n\
                  → Overall exposure level for edge-node.service: 3.1 OK 🙂\n";
    assert_eq!(overall_exposure(report), Some(3.1));
    assert_eq!(overall_exposure("nothing here"), None);
}

#[test]
fn without_apt_the_scripts_name_the_packages_and_what_is_missing() {
    // A PATH with bash alone: no apt-get, no dpkg, as on a distribution that is not Debian's.
    let bin = tempfile::tempdir().expect("temp dir");
    let bash = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("bash is installed");
    std::os::unix::fs::symlink(bash, bin.path().join("bash")).expect("symlink");
    let out = Command::new(bash)
        .arg("-c")
        .arg("set -e; source cross/apt.sh; apt_install lintian; echo installed")
        .env("PATH", bin.path())
        .current_dir(workspace())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a script goes no further: {stdout}");
    assert!(!stdout.contains("installed"), "{stdout}");
    assert!(
        stderr.contains("lintian") && stderr.contains("no apt-get"),
        "the message names the package and the missing piece: {stderr}"
    );
}
