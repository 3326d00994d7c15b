//! The rules ARCHITECTURE.md lists under "Rules checked by tests", checked: a rule no test
//! checks drifts. Each rule is a function over plain inputs (a dependency graph, a source
//! text, a manifest) that returns what breaks it; one test per rule feeds it this workspace,
//! and `rules_catch` feeds each a small bad input, so that none passes by finding nothing.
//! Another test holds that section of ARCHITECTURE.md to the rules checked here.
//!
//! Nothing is built: the dependency graph comes from `cargo metadata`, resolved for this
//! machine's platform, and the rest from reading files.
//!
//! The source checks read code, not text: comments and the insides of string and character
//! literals are blanked first ([`source::code_only`]), so docs may name what code must not do.
//! Test code is skipped by brace matching: the item after a `#[cfg(test)]` ends at its first
//! `;` or at the `}` that closes its first `{` (outside parentheses and brackets), and a
//! `#[cfg(test)] mod NAME;` takes the file or directory of that module with it. It is a
//! matcher, not a parser: it finds the plain spellings (`Instant::now`, `sled::Db`), and the
//! cores' `clippy.toml` bans the clock reads that an alias would hide from it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A rule of ARCHITECTURE.md's "Rules checked by tests": its number there, what it says, and
/// what to do when it breaks.
struct Rule {
    number: u8,
    says: &'static str,
    fix: &'static str,
}

const CORES_DO_NO_IO: Rule = Rule {
    number: 1,
    says: "the cores depend on nothing that does I/O",
    fix: "Put the code that needs it in a shell crate, and hand the core its results. \
          edge-proto's `quic` feature links quinn: the cores use edge-proto without it.",
};
const PURE_CODE_READS_NO_CLOCK: Rule = Rule {
    number: 2,
    says: "the cores read no clock and touch no file, process or socket outside tests",
    fix: "Take `now` (or the wall time) as an argument, and leave files, processes and \
          sockets to the shell.",
};
const SLED_ONLY_IN_THE_STORE: Rule = Rule {
    number: 3,
    says: "only the store module uses sled, and only its crate depends on it",
    fix: "Go through the core's `Store` trait; new records belong in `orchestrator/src/store`.",
};
const TRACT_ONLY_IN_EDGE_AI: Rule = Rule {
    number: 4,
    says: "only edge-ai depends on tract, and the node links tract only through edge-ai",
    fix: "Run models through edge-ai. The orchestrator alone may depend on tract-onnx, to \
          validate the models operators push.",
};
const EVERY_WIRE_VARIANT_HAS_GOLDEN_BYTES: Rule = Rule {
    number: 5,
    says: "every variant of every wire enum is pinned by golden bytes",
    fix: "Encode the variant in a `fn golden_bytes*` test of proto/tests/wire.rs, written \
          `Enum::Variant`, and pin the hex it encodes to.",
};
const NO_UNSAFE_CODE: Rule = Rule {
    number: 6,
    says: "every crate forbids unsafe code through the workspace lints, but edge-memcpy denies it",
    fix: "Give the crate's Cargo.toml `[lints] workspace = true`, and keep \
          `unsafe_code = \"forbid\"` in the root Cargo.toml's `[workspace.lints.rust]`; \
          edge-memcpy (node-daemon/memcpy) alone says `unsafe_code = \"deny\"` itself, so \
          that each unsafe item in it carries its own `#[allow(unsafe_code)]`.",
};
/// The one manifest that may leave the workspace's lints, to deny unsafe code rather than
/// forbid it: the x86_64 musl `memcpy`, in assembly.
const UNSAFE_DENIED: &str = "node-daemon/memcpy/Cargo.toml";

const RULES: [&Rule; 6] = [
    &CORES_DO_NO_IO,
    &PURE_CODE_READS_NO_CLOCK,
    &SLED_ONLY_IN_THE_STORE,
    &TRACT_ONLY_IN_EDGE_AI,
    &EVERY_WIRE_VARIANT_HAS_GOLDEN_BYTES,
    &NO_UNSAFE_CODE,
];

/// Fails naming the rule and every place that breaks it.
fn holds(rule: &Rule, broken: &[String]) {
    assert!(
        broken.is_empty(),
        "ARCHITECTURE.md, \"Rules checked by tests\", rule {} ({}) is broken:\n  {}\n{}",
        rule.number,
        rule.says,
        broken.join("\n  "),
        rule.fix
    );
}

/// The crates that decide without I/O, where their sources live, and the attributes whose
/// items are not part of the core: tests everywhere, and edge-proto's frame I/O over quinn.
const CORES: &[(&str, &str, &[&str])] = &[
    (
        "edge-proto",
        "proto",
        &["#[cfg(test)]", "#[cfg(feature=\"quic\")]"],
    ),
    ("node-core", "node-daemon/core", &["#[cfg(test)]"]),
    ("orchestrator-core", "orchestrator/core", &["#[cfg(test)]"]),
];

/// Crates that do I/O (or exist to), with their families (`tokio-util`, `hyper-util`,
/// `tract-core`), which no core may link.
const IO_CRATES: &[&str] = &[
    "tokio", "quinn", "sled", "axum", "hyper", "mio", "socket2", "reqwest", "ureq", "tract",
];

/// Ways to read the clock.
const CLOCK_READS: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "OffsetDateTime::now_utc",
    "OffsetDateTime::now_local",
    "Utc::now",
    "Local::now",
    ".elapsed()",
];

/// Ways to reach a file, a process or a socket from std. `std::net`'s address types are
/// plain values, so only its sockets are named.
const STD_IO: &[&str] = &[
    "std::fs",
    "std::process",
    "std::os::unix::net",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "std::thread::sleep",
];

/// The crates that may depend on sled, and the module paths (from the workspace root) that
/// may name it.
const SLED_CRATES: &[&str] = &["orchestrator"];
const SLED_HOMES: &[&str] = &["orchestrator/src/store"];

fn is_io_crate(name: &str) -> bool {
    IO_CRATES.iter().any(|c| {
        name == *c
            || name
                .strip_prefix(*c)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn is_tract(name: &str) -> bool {
    name == "tract" || name.starts_with("tract-")
}

// ---------------------------------------------------------------------------------------
// The checks, on plain inputs.

/// Rule 1 for one core: every package its normal dependencies (default features, resolved
/// for this platform) bring in, its own declarations for every platform, and its use of
/// edge-proto without `quic`.
fn io_in_core(graph: &graph::Graph, core: &str) -> Vec<String> {
    let Some(id) = graph.member(core) else {
        return vec![format!(
            "{core} is not a workspace member: name the core crates in tidy.rs's CORES"
        )];
    };
    let mut broken = Vec::new();
    let linked = graph.normal_closure(id, &[], true);
    let reached = linked.reach(graph, id, &[]);
    for pkg in reached.keys() {
        let name = &graph.packages[pkg].name;
        if is_io_crate(name) {
            broken.push(format!(
                "{core} links {name}: {}",
                linked.path(graph, &reached, pkg)
            ));
        }
    }
    for dep in &graph.packages[id].deps {
        // Linked on another platform only: the graph above, resolved for this one, lacks it.
        if let (None, Some(target), None, false) =
            (&dep.kind, &dep.target, &dep.resolved, dep.optional)
            && is_io_crate(&dep.name)
        {
            broken.push(format!("{core} depends on {} for {target}", dep.name));
        }
        if dep.name == "edge-proto" && dep.features.iter().any(|f| f == "quic") {
            broken.push(format!(
                "{core} depends on edge-proto with the `quic` feature"
            ));
        }
    }
    broken
}

/// Rule 2 for one file of a core (its code after [`source::strip_gated`]).
fn clock_and_io_reads(path: &str, src: &str, code: &str) -> Vec<String> {
    let mut broken = source::hits(path, src, code, CLOCK_READS);
    broken.extend(source::hits(path, src, code, STD_IO));
    broken
}

/// Rule 3, dependencies: members other than [`SLED_CRATES`] that declare sled.
fn sled_dependents(graph: &graph::Graph) -> Vec<String> {
    graph
        .members()
        .filter(|pkg| !SLED_CRATES.contains(&pkg.name.as_str()))
        .filter(|pkg| pkg.deps.iter().any(|d| d.name == "sled"))
        .map(|pkg| format!("{} depends on sled", pkg.name))
        .collect()
}

/// Rule 3, sources: a file outside [`SLED_HOMES`] (`path` is relative to the workspace root)
/// that names sled.
fn sled_uses(path: &str, src: &str) -> Vec<String> {
    if SLED_HOMES.iter().any(|home| path.starts_with(home)) {
        return Vec::new();
    }
    let code = source::code_only(src);
    source::hits(path, src, &code, &["sled::", "use sled", "crate sled"])
}

/// Rule 4: direct tract dependencies of members other than edge-ai (the orchestrator may have
/// tract-onnx), and tract reaching `node` other than through edge-ai.
fn tract_outside_edge_ai(graph: &graph::Graph, node: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for pkg in graph.members().filter(|pkg| pkg.name != "edge-ai") {
        for dep in pkg.deps.iter().filter(|d| is_tract(&d.name)) {
            if pkg.name == "orchestrator" && dep.name == "tract-onnx" {
                continue;
            }
            broken.push(format!("{} depends on {}", pkg.name, dep.name));
        }
    }
    let Some(id) = graph.member(node) else {
        broken.push(format!("{node} is not a workspace member"));
        return broken;
    };
    let linked = graph.normal_closure(id, &[], true);
    let reached = linked.reach(graph, id, &["edge-ai"]);
    for pkg in reached.keys() {
        let name = &graph.packages[pkg].name;
        if is_tract(name) {
            broken.push(format!(
                "{node} links {name} without edge-ai: {}",
                linked.path(graph, &reached, pkg)
            ));
        }
    }
    broken
}

/// Rule 5: the variants of the wire enums in `sources` (path, text) that no `fn golden_bytes*`
/// of `wire_rs` names.
fn variants_without_golden_bytes(sources: &[(String, String)], wire_rs: &str) -> Vec<String> {
    let golden = wire::golden_bodies(&source::code_only(wire_rs));
    let mut broken = Vec::new();
    for (path, src) in sources {
        let code = source::strip_gated(src, &["#[cfg(test)]"]).code;
        for (name, variants) in wire::wire_enums(&code) {
            for variant in variants {
                let named = format!("{name}::{variant}");
                if !golden.iter().any(|body| source::names(body, &named)) {
                    broken.push(format!(
                        "{path}: `{named}` has no golden bytes in proto/tests/wire.rs"
                    ));
                }
            }
        }
    }
    broken
}

/// Rule 6: the root manifest forbids unsafe code for the workspace, and every member manifest
/// (path, text) inherits the workspace's lints, but [`UNSAFE_DENIED`], which denies unsafe
/// code itself.
fn unsafe_not_forbidden(root: &str, members: &[(String, String)]) -> Vec<String> {
    let mut broken = Vec::new();
    match root.parse::<toml::Table>() {
        Ok(root) => {
            let level = root
                .get("workspace")
                .and_then(|w| w.get("lints"))
                .and_then(|l| l.get("rust"))
                .and_then(|r| r.get("unsafe_code"));
            let level = level.and_then(|l| l.as_str().or_else(|| l.get("level")?.as_str()));
            if level != Some("forbid") {
                broken.push(format!(
                    "Cargo.toml: [workspace.lints.rust] unsafe_code is {level:?}, not \"forbid\""
                ));
            }
        }
        Err(e) => broken.push(format!("Cargo.toml does not parse: {e}")),
    }
    for (path, text) in members {
        match text.parse::<toml::Table>() {
            Ok(manifest) => {
                let lints = manifest.get("lints");
                if path == UNSAFE_DENIED {
                    let level = lints
                        .and_then(|l| l.get("rust"))
                        .and_then(|r| r.get("unsafe_code"))
                        .and_then(toml::Value::as_str);
                    if level != Some("deny") {
                        broken.push(format!(
                            "{path}: [lints.rust] unsafe_code is {level:?}, not \"deny\""
                        ));
                    }
                    continue;
                }
                let inherits = lints
                    .and_then(|l| l.get("workspace"))
                    .and_then(toml::Value::as_bool);
                if inherits != Some(true) {
                    broken.push(format!("{path}: no `[lints] workspace = true`"));
                }
            }
            Err(e) => broken.push(format!("{path} does not parse: {e}")),
        }
    }
    broken
}

// ---------------------------------------------------------------------------------------
// This workspace, checked.

fn root() -> &'static Path {
    &workspace().root
}

/// The workspace's graph from `cargo metadata`, read once for all the tests here.
fn workspace() -> &'static graph::Graph {
    static GRAPH: OnceLock<graph::Graph> = OnceLock::new();
    GRAPH.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let version = run(Command::new(&cargo).arg("-vV"));
        let host = version
            .lines()
            .find_map(|line| line.strip_prefix("host: "))
            .expect("`cargo -vV` names the host");
        // Resolved for this platform only: every platform would take packages that only
        // other platforms use, which a build here never downloads.
        let metadata = run(Command::new(&cargo).current_dir(dir).args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            host,
        ]));
        let metadata = serde_json::from_str(&metadata).expect("cargo metadata prints JSON");
        graph::Graph::from_metadata(&metadata).expect("cargo metadata has the expected shape")
    })
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo prints UTF-8")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The rules in ARCHITECTURE.md's "Rules checked by tests", as (number, what it says): each
/// item `N. **What it says.**` of that section.
fn listed_rules(architecture_md: &str) -> Vec<(u8, String)> {
    let section = architecture_md
        .split("\n### ")
        .find(|s| s.starts_with("Rules checked by tests\n"))
        .unwrap_or_default();
    section
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.split_once(". **")?;
            let (says, _) = rest.split_once(".**")?;
            Some((number.parse().ok()?, says.to_owned()))
        })
        .collect()
}

/// ARCHITECTURE.md lists the rules checked here, in the words and numbers the failures use.
#[test]
fn architecture_md_lists_the_rules_checked_here() {
    let listed = listed_rules(&read(&root().join("ARCHITECTURE.md")));
    let checked: Vec<(u8, String)> = RULES
        .iter()
        .map(|rule| {
            let mut says = rule.says.to_owned();
            says[..1].make_ascii_uppercase();
            (rule.number, says)
        })
        .collect();
    assert_eq!(
        listed, checked,
        "ARCHITECTURE.md's \"Rules checked by tests\" (left) and RULES here (right) differ"
    );
}

#[test]
fn rule_1_the_cores_depend_on_nothing_that_does_io() {
    let graph = workspace();
    let mut broken = Vec::new();
    for (core, _, _) in CORES {
        broken.extend(io_in_core(graph, core));
    }
    // The walk follows edges: both cores reach edge-proto.
    for core in ["node-core", "orchestrator-core"] {
        let id = graph.member(core).expect("a core");
        let reached = graph.normal_closure(id, &[], true).reach(graph, id, &[]);
        assert!(
            reached
                .keys()
                .any(|p| graph.packages[p].name == "edge-proto"),
            "{core} reaches {reached:?}"
        );
    }
    holds(&CORES_DO_NO_IO, &broken);
}

#[test]
fn rule_2_the_cores_read_no_clock() {
    let mut broken = Vec::new();
    for (core, dir, gates) in CORES {
        let files = source::ungated_files(&root().join(dir).join("src"), gates);
        assert!(files.len() > 1, "{core}: found no sources under {dir}/src");
        for (path, src, code) in files {
            broken.extend(clock_and_io_reads(&relative(&path), &src, &code));
        }
    }
    holds(&PURE_CODE_READS_NO_CLOCK, &broken);
}

#[test]
fn rule_3_sled_stays_in_the_store() {
    let mut broken = sled_dependents(workspace());
    let files = source::rust_files(root());
    assert!(
        files.iter().any(|f| relative(f).starts_with(SLED_HOMES[0])),
        "the store module is not at {}: update SLED_HOMES",
        SLED_HOMES[0]
    );
    for path in files {
        broken.extend(sled_uses(&relative(&path), &read(&path)));
    }
    holds(&SLED_ONLY_IN_THE_STORE, &broken);
}

#[test]
fn rule_4_tract_comes_only_through_edge_ai() {
    let graph = workspace();
    holds(
        &TRACT_ONLY_IN_EDGE_AI,
        &tract_outside_edge_ai(graph, "node-daemon"),
    );
    // The walk sees tract where it is: below edge-ai, when the node links edge-ai.
    let node = graph.member("node-daemon").expect("the node");
    let reached = graph
        .normal_closure(node, &[], true)
        .reach(graph, node, &[]);
    let names: Vec<&str> = reached
        .keys()
        .map(|p| graph.packages[p].name.as_str())
        .collect();
    assert!(
        !names.contains(&"edge-ai") || names.iter().any(|n| is_tract(n)),
        "{names:?}"
    );
}

#[test]
fn rule_5_every_wire_variant_has_golden_bytes() {
    let sources: Vec<(String, String)> = source::rust_files(&root().join("proto/src"))
        .into_iter()
        .map(|path| (relative(&path), read(&path)))
        .collect();
    let wire_rs = read(&root().join("proto/tests/wire.rs"));
    let found: Vec<String> = sources
        .iter()
        .flat_map(|(_, src)| wire::wire_enums(&source::code_only(src)))
        .map(|(name, _)| name)
        .collect();
    assert!(
        found.iter().any(|n| n == "NodeMsg") && found.iter().any(|n| n == "OrchMsg"),
        "the wire enums were not found in proto/src (found {found:?})"
    );
    holds(
        &EVERY_WIRE_VARIANT_HAS_GOLDEN_BYTES,
        &variants_without_golden_bytes(&sources, &wire_rs),
    );
}

#[test]
fn rule_6_every_crate_forbids_unsafe_code() {
    let graph = workspace();
    let members: Vec<(String, String)> = graph
        .members()
        .map(|pkg| (relative(&pkg.manifest_path), read(&pkg.manifest_path)))
        .collect();
    assert!(members.len() >= CORES.len(), "{members:?}");
    holds(
        &NO_UNSAFE_CODE,
        &unsafe_not_forbidden(&read(&root().join("Cargo.toml")), &members),
    );
}

// ---------------------------------------------------------------------------------------
// Each check, fed a small bad input: a rule whose check cannot fail checks nothing.

mod rules_catch {
    use super::*;
    use serde_json::{Value, json};

    /// A dependency in a fake manifest: name, kind (`None` normal, or `dev`), optional,
    /// features.
    type FakeDep<'a> = (&'a str, Option<&'a str>, bool, &'a [&'a str]);
    /// A fake package: name, dependencies, `[features]`.
    type FakePackage<'a> = (&'a str, &'a [FakeDep<'a>], &'a [(&'a str, &'a [&'a str])]);

    fn id(name: &str) -> String {
        format!("fake#{name}@1.0.0")
    }

    /// `cargo metadata` output for `packages`, every one a workspace member, every declared
    /// dependency resolved (as cargo does when some member turns it on).
    fn metadata(packages: &[FakePackage]) -> Value {
        let pkgs: Vec<Value> = packages
            .iter()
            .map(|(name, deps, features)| {
                let deps: Vec<Value> = deps
                    .iter()
                    .map(|(dep, kind, optional, features)| {
                        json!({"name": dep, "rename": null, "kind": kind, "target": null,
                               "optional": optional, "uses_default_features": true,
                               "features": features})
                    })
                    .collect();
                let features: serde_json::Map<String, Value> = features
                    .iter()
                    .map(|(f, on)| ((*f).to_owned(), json!(on)))
                    .collect();
                json!({"name": name, "id": id(name), "dependencies": deps, "features": features,
                       "manifest_path": format!("/ws/{name}/Cargo.toml")})
            })
            .collect();
        let nodes: Vec<Value> = packages
            .iter()
            .map(|(name, deps, _)| {
                let deps: Vec<Value> = deps
                    .iter()
                    .map(|(dep, kind, _, _)| {
                        json!({"name": dep.replace('-', "_"), "pkg": id(dep),
                               "dep_kinds": [{"kind": kind, "target": null}]})
                    })
                    .collect();
                json!({"id": id(name), "deps": deps})
            })
            .collect();
        json!({
            "packages": pkgs,
            "workspace_members": packages.iter().map(|(n, _, _)| id(n)).collect::<Vec<_>>(),
            "workspace_root": "/ws",
            "resolve": {"nodes": nodes},
        })
    }

    fn graph(packages: &[FakePackage]) -> graph::Graph {
        graph::Graph::from_metadata(&metadata(packages)).expect("fake metadata parses")
    }

    #[test]
    fn rule_1_an_io_crate_below_a_core_behind_a_feature() {
        let net: FakeDep = ("helper", None, false, &["net"]);
        let plain: FakeDep = ("helper", None, false, &[]);
        let helper: FakePackage = (
            "helper",
            &[
                ("tokio", None, true, &[]),
                ("socket2", Some("dev"), false, &[]),
            ],
            &[("net", &["dep:tokio"])],
        );
        let tokio: FakePackage = ("tokio", &[], &[]);
        let socket2: FakePackage = ("socket2", &[], &[]);

        let with_net = graph(&[("node-core", &[net], &[]), helper, tokio, socket2]);
        let broken = io_in_core(&with_net, "node-core");
        assert_eq!(
            broken,
            ["node-core links tokio: node-core -> helper -> tokio"]
        );

        // The same helper without the feature links no tokio, and a dev-dependency is not
        // linked: what a feature or a test pulls in elsewhere is not the core's.
        let without = graph(&[("node-core", &[plain], &[]), helper, tokio, socket2]);
        assert_eq!(io_in_core(&without, "node-core"), Vec::<String>::new());

        // `name/feature` turns on an optional dependency too; `name?/feature` does not.
        let strong = graph(&[
            ("node-core", &[("helper", None, false, &["net2"])], &[]),
            (
                "helper",
                &[("tokio", None, true, &[])],
                &[("net2", &["tokio/net"])],
            ),
            tokio,
        ]);
        assert_eq!(io_in_core(&strong, "node-core").len(), 1);
        let weak = graph(&[
            ("node-core", &[("helper", None, false, &["net2"])], &[]),
            (
                "helper",
                &[("tokio", None, true, &[])],
                &[("net2", &["tokio?/net"])],
            ),
            tokio,
        ]);
        assert_eq!(io_in_core(&weak, "node-core"), Vec::<String>::new());
    }

    #[test]
    fn rule_1_a_core_on_edge_proto_with_quic() {
        let g = graph(&[
            (
                "orchestrator-core",
                &[("edge-proto", None, false, &["quic"])],
                &[],
            ),
            (
                "edge-proto",
                &[("quinn", None, true, &[])],
                &[("quic", &["dep:quinn"])],
            ),
            ("quinn", &[], &[]),
        ]);
        let broken = io_in_core(&g, "orchestrator-core");
        assert!(
            broken.contains(
                &"orchestrator-core links quinn: orchestrator-core -> edge-proto -> quinn"
                    .to_owned()
            ),
            "{broken:?}"
        );
        assert!(
            broken.iter().any(|b| b.contains("with the `quic` feature")),
            "{broken:?}"
        );
        // edge-proto alone, without features, links no quinn; a default feature would.
        assert_eq!(io_in_core(&g, "edge-proto"), Vec::<String>::new());
        let by_default = graph(&[
            (
                "edge-proto",
                &[("quinn", None, true, &[])],
                &[("quic", &["dep:quinn"]), ("default", &["quic"])],
            ),
            ("quinn", &[], &[]),
        ]);
        assert_eq!(io_in_core(&by_default, "edge-proto").len(), 1);
        assert_eq!(io_in_core(&by_default, "no-such-core").len(), 1);
    }

    #[test]
    fn rule_2_a_clock_read_outside_tests() {
        let src = r#"
            //! Never `Instant::now` here; /* nor SystemTime::now() */
            fn label() -> &'static str { "Instant::now" }
            fn deadline() -> Instant {
                std::time::Instant :: now () + TIMEOUT
            }
            #[cfg(test)]
            mod tests {
                fn brace() -> char { '}' }
                fn t() { let _ = Instant::now(); let _ = "}"; }
            }
            fn wall() -> u64 { SystemTime::now().duration_since(UNIX_EPOCH) }
            fn later(t: Instant) -> bool { t.elapsed() > LIMIT }
            fn date() { OffsetDateTime::now_utc(); tokio::time::Instant::now(); }
            fn fine(clock: &Clock) { clock.now(); MyInstant::nowhere(); }
            fn file() { std::fs::read("x"); }
        "#;
        let code = source::strip_gated(src, &["#[cfg(test)]"]).code;
        let broken = clock_and_io_reads("core/src/x.rs", src, &code);
        let lines: Vec<&str> = broken
            .iter()
            .map(|b| b.split(": ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            lines,
            [
                "core/src/x.rs:5",
                "core/src/x.rs:12",
                "core/src/x.rs:13",
                "core/src/x.rs:14",
                "core/src/x.rs:16",
            ],
            "{broken:#?}"
        );
    }

    #[test]
    fn rule_2_skips_gated_items_and_module_files() {
        let src = "#[cfg(feature = \"quic\")]\npub mod quic;\n#[cfg(test)]\nmod tests;\n\
                   #[cfg(feature = \"quic\")]\npub fn read(r: impl std::io::Read) { let _: [u8; 2] = [0; 2]; }\n\
                   pub fn kept() {}";
        let gated = source::strip_gated(src, &["#[cfg(test)]", "#[cfg(feature=\"quic\")]"]);
        assert_eq!(gated.gated_mods, ["quic", "tests"]);
        assert_eq!(
            gated.code.split_whitespace().collect::<Vec<_>>(),
            ["pub", "fn", "kept()", "{}"]
        );
        // `#[cfg(test)] mod tests;` in `config/mod.rs` is `config/tests.rs` or `config/tests/`;
        // in `restart.rs`, `restart/tests.rs` or `restart/tests/`.
        assert_eq!(
            source::module_paths(Path::new("src/config/mod.rs"), "tests"),
            [
                PathBuf::from("src/config/tests.rs"),
                PathBuf::from("src/config/tests")
            ]
        );
        assert_eq!(
            source::module_paths(Path::new("src/restart.rs"), "tests"),
            [
                PathBuf::from("src/restart/tests.rs"),
                PathBuf::from("src/restart/tests")
            ]
        );
        // An inner attribute gates the rest of its file.
        let whole = source::strip_gated(
            "#![cfg(test)]\nfn f() { Instant::now(); }",
            &["#[cfg(test)]"],
        );
        assert!(whole.code.trim().is_empty(), "{:?}", whole.code);
    }

    #[test]
    fn rule_3_sled_outside_the_store() {
        let src = "//! Unlike sled::Db, this is ours.\nuse sled::Db;\nfn f() -> &'static str { \"sled::\" }";
        assert_eq!(
            sled_uses("orchestrator/src/registry.rs", src),
            ["orchestrator/src/registry.rs:2: `sled::` in `use sled::Db;`"]
        );
        assert_eq!(
            sled_uses("orchestrator/src/store.rs", src),
            Vec::<String>::new()
        );
        assert_eq!(
            sled_uses("node-daemon/src/x.rs", "extern crate sled;").len(),
            1
        );
        let g = graph(&[
            ("orchestrator", &[("sled", None, false, &[])], &[]),
            ("node-daemon", &[("sled", Some("dev"), false, &[])], &[]),
            ("sled", &[], &[]),
        ]);
        assert_eq!(sled_dependents(&g), ["node-daemon depends on sled"]);
    }

    #[test]
    fn rule_4_tract_reaching_the_node_around_edge_ai() {
        let through_edge_ai = graph(&[
            ("node-daemon", &[("edge-ai", None, false, &[])], &[]),
            ("edge-ai", &[("tract-core", None, false, &[])], &[]),
            ("orchestrator", &[("tract-onnx", None, false, &[])], &[]),
            ("tract-core", &[], &[]),
            ("tract-onnx", &[], &[]),
        ]);
        assert_eq!(
            tract_outside_edge_ai(&through_edge_ai, "node-daemon"),
            Vec::<String>::new()
        );
        let around = graph(&[
            (
                "node-daemon",
                &[("edge-ai", None, false, &[]), ("helper", None, false, &[])],
                &[],
            ),
            ("edge-ai", &[("tract-core", None, false, &[])], &[]),
            ("helper", &[("tract-onnx", None, false, &[])], &[]),
            ("tract-core", &[], &[]),
            ("tract-onnx", &[], &[]),
        ]);
        assert_eq!(
            tract_outside_edge_ai(&around, "node-daemon"),
            [
                "helper depends on tract-onnx",
                "node-daemon links tract-onnx without edge-ai: node-daemon -> helper -> tract-onnx",
            ]
        );
    }

    #[test]
    fn rule_5_a_variant_without_golden_bytes() {
        let msg = r#"
            /// Not on the wire.
            #[derive(Debug)]
            pub enum Local { Skipped }
            #[derive(Debug, Serialize, Deserialize)]
            pub enum Msg {
                /// Documented.
                #[serde(rename = "x")]
                Hello { versions: List<u16, 8>, agent: Text<64> },
                Pairs(Vec<(u8, u8)>),
                Bye,
            }
            #[cfg(test)]
            mod tests {
                #[derive(Serialize)]
                enum OnlyInTests { Ignored }
            }
        "#;
        // `Hello` in the test, `Pairs` in a value it encodes; `Bye` only in a string, a test
        // of another kind and a function no golden test calls.
        let wire_rs = r#"
            fn pairs() -> Msg { Msg :: Pairs(vec![]) }
            fn sample() -> Msg { pairs() }
            fn arb_sample() -> Msg { Msg::Bye }
            #[test]
            fn golden_bytes_of_msgs() {
                let h = encode(&Msg::Hello { versions: v(), agent: a() });
                assert_eq!(hex(&encode(&sample())), "Msg::Bye");
            }
            #[test]
            fn round_trips() { let _ = Msg::Bye; }
        "#;
        let sources = [("proto/src/msg.rs".to_owned(), msg.to_owned())];
        assert_eq!(
            variants_without_golden_bytes(&sources, wire_rs),
            ["proto/src/msg.rs: `Msg::Bye` has no golden bytes in proto/tests/wire.rs"]
        );
        let code = source::strip_gated(msg, &["#[cfg(test)]"]).code;
        assert_eq!(
            wire::wire_enums(&code),
            [(
                "Msg".to_owned(),
                vec!["Hello".into(), "Pairs".into(), "Bye".into()]
            )]
        );
    }

    #[test]
    fn rule_6_a_crate_without_the_workspace_lints() {
        let root = "[workspace.lints.rust]\nunsafe_code = \"forbid\"\n";
        let inherits = "[package]\nname = \"a\"\n[lints]\nworkspace = true\n";
        let own = "[package]\nname = \"b\"\n[lints.rust]\nunsafe_code = \"allow\"\n";
        let members = [
            ("a/Cargo.toml".to_owned(), inherits.to_owned()),
            ("b/Cargo.toml".to_owned(), own.to_owned()),
        ];
        assert_eq!(
            unsafe_not_forbidden(root, &members),
            ["b/Cargo.toml: no `[lints] workspace = true`"]
        );
        // The one exception must deny unsafe code itself, and denying it is no exception
        // for any other crate.
        let allows = "[package]\nname = \"edge-memcpy\"\n[lints.rust]\nunsafe_code = \"allow\"\n";
        let denies = allows.replace("allow", "deny");
        assert_eq!(
            unsafe_not_forbidden(root, &[(UNSAFE_DENIED.to_owned(), allows.to_owned())]),
            [format!(
                "{UNSAFE_DENIED}: [lints.rust] unsafe_code is Some(\"allow\"), not \"deny\""
            )]
        );
        assert_eq!(
            unsafe_not_forbidden(root, &[(UNSAFE_DENIED.to_owned(), denies.clone())]),
            Vec::<String>::new()
        );
        assert_eq!(
            unsafe_not_forbidden(root, &[("c/Cargo.toml".to_owned(), denies)]),
            ["c/Cargo.toml: no `[lints] workspace = true`"]
        );
        let lax = "[workspace.lints.rust]\nunsafe_code = { level = \"deny\" }\n";
        assert_eq!(unsafe_not_forbidden(lax, &members[..1]).len(), 1);
        let strict = "[workspace.lints.rust]\nunsafe_code = { level = \"forbid\" }\n";
        assert_eq!(
            unsafe_not_forbidden(strict, &members[..1]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_rule_missing_from_architecture_md() {
        let md = "# A\n### Rules checked by tests\nIntro.\n1. **The cores do no I/O.** More.\n   \
                  Wrapped.\n3. **Sled stays put.** Text.\n### Next\n4. **Not a rule here.**\n";
        assert_eq!(
            listed_rules(md),
            [
                (1, "The cores do no I/O".to_owned()),
                (3, "Sled stays put".to_owned())
            ]
        );
    }

    #[test]
    fn code_only_keeps_positions_and_blanks_literals() {
        let src = "let s = r#\"a \"{\" b\"#; let c = '\\''; let l: &'a str = \"x\\\"}\"; /* a /* b */ } */ x";
        let code = source::code_only(src);
        assert_eq!(code.chars().count(), src.chars().count());
        assert!(!code.contains('{') && !code.contains('}'), "{code}");
        assert!(code.contains("&'a str") && code.ends_with(" x"), "{code}");
    }
}

// ---------------------------------------------------------------------------------------

/// Reading sources: code without comments and literals, gated items skipped, names found.
mod source {
    use std::path::{Path, PathBuf};

    /// `src` with comments and the insides of string, byte string, raw string and character
    /// literals replaced by spaces, character for character with newlines kept, so that
    /// positions and line numbers are those of `src`.
    pub fn code_only(src: &str) -> String {
        let chars: Vec<char> = src.chars().collect();
        let mut out: Vec<char> = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if c == '/' && next == Some('/') {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(' ');
                    i += 1;
                }
            } else if c == '/' && next == Some('*') {
                // Block comments nest.
                let mut depth = 0usize;
                while i < chars.len() {
                    let pair = (chars[i], chars.get(i + 1).copied());
                    if pair == ('/', Some('*')) || pair == ('*', Some('/')) {
                        depth = if pair.0 == '/' { depth + 1 } else { depth - 1 };
                        out.extend([' ', ' ']);
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        out.push(blank(chars[i]));
                        i += 1;
                    }
                }
            } else if let Some((open, hashes)) = raw_string_at(&chars, i) {
                out.extend_from_slice(&chars[i..i + open]);
                i += open;
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                while i < chars.len() {
                    if chars[i..].starts_with(&close) {
                        out.extend_from_slice(&close);
                        i += close.len();
                        break;
                    }
                    out.push(blank(chars[i]));
                    i += 1;
                }
            } else if c == '"' || (c == '\'' && is_char_literal(&chars, i)) {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\\' {
                        out.push(' ');
                        if let Some(&escaped) = chars.get(i + 1) {
                            out.push(blank(escaped));
                        }
                        i += 2;
                    } else if chars[i] == c {
                        out.push(c);
                        i += 1;
                        break;
                    } else {
                        out.push(blank(chars[i]));
                        i += 1;
                    }
                }
            } else {
                out.push(c);
                i += 1;
            }
        }
        out.into_iter().collect()
    }

    fn blank(c: char) -> char {
        if c == '\n' { '\n' } else { ' ' }
    }

    pub fn is_ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    /// At `i`, `r"`, `r#"`, `br"`, `cr##"` ...: the length of that opening and its `#`s.
    fn raw_string_at(chars: &[char], i: usize) -> Option<(usize, usize)> {
        if i > 0 && is_ident(chars[i - 1]) {
            return None;
        }
        let mut j = i;
        if matches!(chars.get(j), Some('b' | 'c')) {
            j += 1;
        }
        if chars.get(j) != Some(&'r') {
            return None;
        }
        j += 1;
        let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
        j += hashes;
        (chars.get(j) == Some(&'"')).then_some((j + 1 - i, hashes))
    }

    /// Whether the `'` at `i` opens a character literal (`'a'`, `'\n'`) rather than a
    /// lifetime or a label (`'a`).
    fn is_char_literal(chars: &[char], i: usize) -> bool {
        chars.get(i + 1) == Some(&'\\') || chars.get(i + 2) == Some(&'\'')
    }

    /// What [`strip_gated`] leaves.
    #[derive(Debug)]
    pub struct Ungated {
        /// [`code_only`] of the source, with the gated items blanked.
        pub code: String,
        /// The modules declared `mod NAME;` under a gate: their files are gated too.
        pub gated_mods: Vec<String>,
    }

    /// [`code_only`] of `src`, with every item after an attribute in `gates` (compared
    /// without whitespace, e.g. `#[cfg(test)]`) blanked: up to its first `;`, or through the
    /// `}` that closes its first `{`, outside parentheses and brackets. An inner attribute
    /// (`#![cfg(test)]`) blanks the rest of the block or file it opens.
    pub fn strip_gated(src: &str, gates: &[&str]) -> Ungated {
        let text: Vec<char> = src.chars().collect();
        let code: Vec<char> = code_only(src).chars().collect();
        let mut out = code.clone();
        let mut gated_mods = Vec::new();
        let mut i = 0;
        while i < code.len() {
            let Some((attr_end, inner)) = attribute_at(&code, i) else {
                i += 1;
                continue;
            };
            // The attribute's own text (`code` has blanked the strings in it), inner or not.
            let attr: String = text[i..attr_end]
                .iter()
                .filter(|c| !c.is_whitespace())
                .collect();
            let attr = attr.replacen("#!", "#", 1);
            if !gates.contains(&attr.as_str()) {
                i = attr_end;
                continue;
            }
            let end = if inner {
                block_end(&code, attr_end)
            } else {
                item_end(&code, attr_end)
            };
            let item: String = code[attr_end..end].iter().collect();
            if let Some(name) = declared_mod(&item) {
                gated_mods.push(name);
            }
            for c in &mut out[i..end] {
                *c = blank(*c);
            }
            i = end;
        }
        Ungated {
            code: out.into_iter().collect(),
            gated_mods,
        }
    }

    /// At `i`, an attribute `#[...]` or `#![...]`: where it ends, and whether it is inner.
    pub fn attribute_at(code: &[char], i: usize) -> Option<(usize, bool)> {
        if code.get(i) != Some(&'#') {
            return None;
        }
        let mut j = skip_space(code, i + 1);
        let inner = code.get(j) == Some(&'!');
        if inner {
            j = skip_space(code, j + 1);
        }
        if code.get(j) != Some(&'[') {
            return None;
        }
        let mut depth = 0usize;
        for (k, &c) in code.iter().enumerate().skip(j) {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((k + 1, inner));
                    }
                }
                _ => {}
            }
        }
        None
    }

    pub fn skip_space(code: &[char], mut i: usize) -> usize {
        while code.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        i
    }

    /// The end of the item that starts at `start`: after its first `;` or the `}` closing its
    /// first `{`, outside parentheses and brackets.
    pub fn item_end(code: &[char], start: usize) -> usize {
        let mut depth = 0i32;
        for (j, &c) in code.iter().enumerate().skip(start) {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ';' if depth == 0 => return j + 1,
                '{' if depth == 0 => return block_end(code, j + 1),
                _ => {}
            }
        }
        code.len()
    }

    /// After the `}` that closes the block `start` is in, or the end of the file.
    pub fn block_end(code: &[char], start: usize) -> usize {
        let mut depth = 1usize;
        for (j, &c) in code.iter().enumerate().skip(start) {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
        }
        code.len()
    }

    /// `NAME` of an item `mod NAME;` (with any visibility).
    fn declared_mod(item: &str) -> Option<String> {
        let words: Vec<&str> = item.trim().strip_suffix(';')?.split_whitespace().collect();
        match words.as_slice() {
            [.., "mod", name] => Some((*name).to_owned()),
            _ => None,
        }
    }

    /// Where module `name`, declared in `file`, lives: `name.rs` or `name/` beside `file` if
    /// it is a `lib.rs`, `main.rs` or `mod.rs`, else in the directory named after `file`.
    pub fn module_paths(file: &Path, name: &str) -> [PathBuf; 2] {
        let parent = file.parent().unwrap_or(Path::new(""));
        let is_root = file
            .file_name()
            .is_some_and(|f| f == "lib.rs" || f == "main.rs" || f == "mod.rs");
        let dir = match file.file_stem() {
            Some(stem) if !is_root => parent.join(stem),
            _ => parent.to_path_buf(),
        };
        [dir.join(format!("{name}.rs")), dir.join(name)]
    }

    /// The `.rs` files under `dir`, sorted, skipping `target` and hidden directories.
    pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_dir() {
                    if !name.starts_with('.') && name != "target" {
                        dirs.push(path);
                    }
                } else if name.ends_with(".rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    /// The files under `src` with their text and their code without gated items, leaving out
    /// the files of modules declared under a gate.
    pub fn ungated_files(src: &Path, gates: &[&str]) -> Vec<(PathBuf, String, String)> {
        let mut files = Vec::new();
        let mut gated: Vec<PathBuf> = Vec::new();
        for path in rust_files(src) {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let ungated = strip_gated(&text, gates);
            for name in &ungated.gated_mods {
                gated.extend(module_paths(&path, name));
            }
            files.push((path, text, ungated.code));
        }
        files.retain(|(path, _, _)| !gated.iter().any(|g| path.starts_with(g)));
        files
    }

    /// `code` without the spaces around `::` and `.` and before `(`, so that
    /// `Instant :: now ()` reads `Instant::now()`.
    pub fn squeeze(code: &str) -> String {
        let chars: Vec<char> = code.chars().collect();
        let mut out = String::with_capacity(code.len());
        for (k, &c) in chars.iter().enumerate() {
            if c.is_whitespace() {
                let before = out.chars().next_back();
                let after = chars[k + 1..].iter().find(|c| !c.is_whitespace());
                if matches!(before, Some(':' | '.')) || matches!(after, Some(':' | '.' | '(')) {
                    continue;
                }
            }
            out.push(c);
        }
        out
    }

    /// Whether squeezed `code` names `pattern` whole: not as part of a longer identifier.
    pub fn names(code: &str, pattern: &str) -> bool {
        let starts_ident = pattern.chars().next().is_some_and(is_ident);
        let ends_ident = pattern.chars().next_back().is_some_and(is_ident);
        code.match_indices(pattern).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = code[at + pattern.len()..].chars().next();
            let glued_before = starts_ident && before.is_some_and(is_ident);
            let glued_after = ends_ident && after.is_some_and(is_ident);
            !glued_before && !glued_after
        })
    }

    /// Each line of `code` that names one of `patterns`, once, as
    /// ``path:line: `pattern` in `the line of src` ``.
    pub fn hits(path: &str, src: &str, code: &str, patterns: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for (n, (line, text)) in code.lines().zip(src.lines()).enumerate() {
            let line = squeeze(line);
            if let Some(pattern) = patterns.iter().find(|p| names(&line, p)) {
                found.push(format!(
                    "{path}:{}: `{pattern}` in `{}`",
                    n + 1,
                    text.trim()
                ));
            }
        }
        found
    }
}

/// Reading the wire enums and the golden-bytes tests.
mod wire {
    use super::source::{block_end, is_ident, names, skip_space, squeeze};

    fn ident_at(chars: &[char], i: usize) -> Option<(String, usize)> {
        let len = chars[i..].iter().take_while(|&&c| is_ident(c)).count();
        (len > 0).then(|| (chars[i..i + len].iter().collect(), i + len))
    }

    /// The items of `code` ([`super::source::code_only`]) that `keyword` (`enum`, `fn`)
    /// opens: their name, where the name ends, and where the item's attributes start.
    fn items<'a>(
        chars: &'a [char],
        keyword: &'a str,
    ) -> impl Iterator<Item = (String, usize, usize)> + 'a {
        (0..chars.len()).filter_map(move |i| {
            if i > 0 && is_ident(chars[i - 1]) {
                return None;
            }
            let (word, end) = ident_at(chars, i)?;
            if word != keyword {
                return None;
            }
            let (name, name_end) = ident_at(chars, skip_space(chars, end))?;
            // The attributes and visibility before the keyword: back to the end of the
            // previous item, or the start of the block it sits in.
            let head = chars[..i]
                .iter()
                .rposition(|c| matches!(c, ';' | '}' | '{'))
                .map_or(0, |p| p + 1);
            Some((name, name_end, head))
        })
    }

    /// The enums of `code` that derive `Serialize` or `Deserialize` (every such enum is on the
    /// wire), each with its variants in order.
    pub fn wire_enums(code: &str) -> Vec<(String, Vec<String>)> {
        let chars: Vec<char> = code.chars().collect();
        let mut enums = Vec::new();
        for (name, name_end, head) in items(&chars, "enum") {
            let attrs = squeeze(&chars[head..name_end].iter().collect::<String>());
            if !(attrs.contains("derive(")
                && (names(&attrs, "Serialize") || names(&attrs, "Deserialize")))
            {
                continue;
            }
            let Some(open) = chars[name_end..].iter().position(|&c| c == '{') else {
                continue;
            };
            enums.push((name, variants(&chars, name_end + open + 1)));
        }
        enums
    }

    /// The variant names of the enum body starting at `start`: at the body's top level, the
    /// first identifier after the `{` or a `,`, past any attributes.
    fn variants(chars: &[char], start: usize) -> Vec<String> {
        let mut found = Vec::new();
        let mut depth = 0usize;
        let mut expect = true;
        let mut k = start;
        while k < chars.len() {
            let c = chars[k];
            if depth == 0 && expect {
                if let Some((end, _)) = super::source::attribute_at(chars, k) {
                    k = end;
                    continue;
                }
                if let Some((name, end)) = ident_at(chars, k) {
                    found.push(name);
                    expect = false;
                    k = end;
                    continue;
                }
            }
            match c {
                '(' | '[' | '{' => depth += 1,
                '}' if depth == 0 => break,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => expect = true,
                _ => {}
            }
            k += 1;
        }
        found
    }

    /// The bodies, squeezed, of the functions of `code` whose names start with
    /// `golden_bytes`, and of the functions of `code` they call, directly or not (`caps()`,
    /// `assignment()`: the values they encode).
    pub fn golden_bodies(code: &str) -> Vec<String> {
        let chars: Vec<char> = code.chars().collect();
        let fns: Vec<(String, String)> = items(&chars, "fn")
            .filter_map(|(name, name_end, _)| {
                let open = name_end + chars[name_end..].iter().position(|&c| c == '{')?;
                let end = block_end(&chars, open + 1);
                Some((name, squeeze(&chars[open..end].iter().collect::<String>())))
            })
            .collect();
        let mut taken: Vec<bool> = fns
            .iter()
            .map(|(name, _)| name.starts_with("golden_bytes"))
            .collect();
        loop {
            let called: Vec<usize> = (0..fns.len())
                .filter(|&j| !taken[j])
                .filter(|&j| {
                    let call = format!("{}(", fns[j].0);
                    fns.iter()
                        .zip(&taken)
                        .any(|((_, body), &taken)| taken && names(body, &call))
                })
                .collect();
            if called.is_empty() {
                break;
            }
            for j in called {
                taken[j] = true;
            }
        }
        fns.into_iter()
            .zip(taken)
            .filter_map(|((_, body), taken)| taken.then_some(body))
            .collect()
    }
}

/// The dependency graph `cargo metadata` prints, and what building a package links.
mod graph {
    use super::*;
    use serde_json::Value;

    /// A dependency as its package's manifest declares it.
    #[derive(Debug, Clone)]
    pub struct Dep {
        /// The package depended on.
        pub name: String,
        /// The name the declaring package gives it: its `rename`, else `name`.
        pub key: String,
        /// `None` for a normal dependency, else `dev` or `build`.
        pub kind: Option<String>,
        pub target: Option<String>,
        pub optional: bool,
        pub default_features: bool,
        pub features: Vec<String>,
        /// The package it resolves to on this platform; `None` if it does not apply here.
        pub resolved: Option<String>,
    }

    #[derive(Debug, Clone)]
    pub struct Package {
        pub name: String,
        pub manifest_path: PathBuf,
        pub features: BTreeMap<String, Vec<String>>,
        pub deps: Vec<Dep>,
    }

    #[derive(Debug)]
    pub struct Graph {
        pub root: PathBuf,
        /// Package ids.
        pub members: Vec<String>,
        /// By package id.
        pub packages: BTreeMap<String, Package>,
    }

    fn text(v: &Value, field: &str) -> Result<String, String> {
        v.get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no string `{field}` in {v}"))
    }

    fn texts(v: Option<&Value>) -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, String> {
        v.get(field)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("no array `{field}`"))
    }

    /// One resolved dependency of a package: (package name, kind, target, package id).
    type Resolved = (String, Option<String>, Option<String>, String);

    impl Graph {
        pub fn from_metadata(meta: &Value) -> Result<Graph, String> {
            let mut names = BTreeMap::new();
            for pkg in array(meta, "packages")? {
                names.insert(text(pkg, "id")?, text(pkg, "name")?);
            }
            // What each package's dependencies resolved to: (package name, kind, target) ->
            // the package id, per package.
            let mut resolved: BTreeMap<String, Vec<Resolved>> = BTreeMap::new();
            let resolve = meta.get("resolve").ok_or("no resolve")?;
            for node in array(resolve, "nodes")? {
                let entry = resolved.entry(text(node, "id")?).or_default();
                for dep in array(node, "deps")? {
                    let pkg = text(dep, "pkg")?;
                    let name = names.get(&pkg).ok_or(format!("unknown package {pkg}"))?;
                    for kind in array(dep, "dep_kinds")? {
                        let field =
                            |f: &str| kind.get(f).and_then(Value::as_str).map(str::to_owned);
                        entry.push((name.clone(), field("kind"), field("target"), pkg.clone()));
                    }
                }
            }
            let mut packages = BTreeMap::new();
            for pkg in array(meta, "packages")? {
                let id = text(pkg, "id")?;
                let mut deps = Vec::new();
                for dep in array(pkg, "dependencies")? {
                    let name = text(dep, "name")?;
                    let kind = dep.get("kind").and_then(Value::as_str).map(str::to_owned);
                    let target = dep.get("target").and_then(Value::as_str).map(str::to_owned);
                    let found = resolved.get(&id).and_then(|r| {
                        r.iter()
                            .find(|(n, k, t, _)| *n == name && *k == kind && *t == target)
                            .map(|(_, _, _, pkg)| pkg.clone())
                    });
                    deps.push(Dep {
                        key: text(dep, "rename").unwrap_or_else(|_| name.clone()),
                        name,
                        kind,
                        target,
                        optional: dep
                            .get("optional")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        default_features: dep
                            .get("uses_default_features")
                            .and_then(Value::as_bool)
                            .unwrap_or(true),
                        features: texts(dep.get("features")),
                        resolved: found,
                    });
                }
                let features = pkg
                    .get("features")
                    .and_then(Value::as_object)
                    .map(|f| f.iter().map(|(k, v)| (k.clone(), texts(Some(v)))).collect())
                    .unwrap_or_default();
                packages.insert(
                    id.clone(),
                    Package {
                        name: text(pkg, "name")?,
                        manifest_path: PathBuf::from(text(pkg, "manifest_path")?),
                        features,
                        deps,
                    },
                );
            }
            let members = texts(meta.get("workspace_members"));
            Ok(Graph {
                root: PathBuf::from(text(meta, "workspace_root")?),
                members,
                packages,
            })
        }

        /// The id of the workspace member called `name`.
        pub fn member(&self, name: &str) -> Option<&str> {
            self.members
                .iter()
                .find(|id| self.packages.get(*id).is_some_and(|p| p.name == name))
                .map(String::as_str)
        }

        pub fn members(&self) -> impl Iterator<Item = &Package> {
            self.members.iter().filter_map(|id| self.packages.get(id))
        }

        /// What building `root` with `features` (and its default features, if `default`)
        /// compiles: the normal dependencies cargo turns on, following the feature rules
        /// (`dep:name`, `name/feature`, `name?/feature`, default features), unified per
        /// package as cargo's resolver does for one build.
        pub fn normal_closure(&self, root: &str, features: &[&str], default: bool) -> Closure {
            let mut enabled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let start = enabled.entry(root.to_owned()).or_default();
            start.extend(features.iter().map(|f| (*f).to_owned()));
            if default {
                start.insert("default".to_owned());
            }
            loop {
                let mut changed = false;
                let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                let ids: Vec<String> = enabled.keys().cloned().collect();
                for id in ids {
                    let Some(pkg) = self.packages.get(&id) else {
                        continue;
                    };
                    // The package's features, closed over its own `[features]` table, and
                    // what they ask of its dependencies: (key, feature, weak).
                    let mut on = enabled[&id].clone();
                    let mut queue: Vec<String> = on.iter().cloned().collect();
                    let mut asks: Vec<(String, Option<String>, bool)> = Vec::new();
                    while let Some(feature) = queue.pop() {
                        let implicit = pkg.deps.iter().any(|d| d.optional && d.key == feature);
                        let entries = match pkg.features.get(&feature) {
                            Some(entries) => entries.clone(),
                            None if implicit => vec![format!("dep:{feature}")],
                            None => Vec::new(),
                        };
                        for entry in entries {
                            if let Some(key) = entry.strip_prefix("dep:") {
                                asks.push((key.to_owned(), None, false));
                            } else if let Some((key, f)) = entry.split_once('/') {
                                let (key, weak) = match key.strip_suffix('?') {
                                    Some(key) => (key, true),
                                    None => (key, false),
                                };
                                asks.push((key.to_owned(), Some(f.to_owned()), weak));
                            } else if on.insert(entry.clone()) {
                                queue.push(entry);
                            }
                        }
                    }
                    for dep in pkg.deps.iter().filter(|d| d.kind.is_none()) {
                        let Some(target) = &dep.resolved else {
                            continue;
                        };
                        let switched_on = asks.iter().any(|(k, _, weak)| *k == dep.key && !weak);
                        if dep.optional && !switched_on {
                            continue;
                        }
                        let mut want: BTreeSet<String> = dep.features.iter().cloned().collect();
                        if dep.default_features {
                            want.insert("default".to_owned());
                        }
                        want.extend(
                            asks.iter()
                                .filter(|(k, _, _)| *k == dep.key)
                                .filter_map(|(_, f, _)| f.clone()),
                        );
                        edges.entry(id.clone()).or_default().insert(target.clone());
                        changed |= !enabled.contains_key(target);
                        let theirs = enabled.entry(target.clone()).or_default();
                        for feature in want {
                            changed |= theirs.insert(feature);
                        }
                    }
                    if on.len() > enabled[&id].len() {
                        enabled.insert(id, on);
                        changed = true;
                    }
                }
                if !changed {
                    return Closure { edges };
                }
            }
        }
    }

    /// The edges of one build: package id -> the ids it links.
    #[derive(Debug)]
    pub struct Closure {
        edges: BTreeMap<String, BTreeSet<String>>,
    }

    impl Closure {
        /// Every package reachable from `root` without passing through a package named in
        /// `avoid`, with the package it was first reached from (breadth first: the shortest
        /// path).
        pub fn reach(
            &self,
            graph: &Graph,
            root: &str,
            avoid: &[&str],
        ) -> BTreeMap<String, Option<String>> {
            let mut parents = BTreeMap::from([(root.to_owned(), None)]);
            let mut queue = VecDeque::from([root.to_owned()]);
            while let Some(id) = queue.pop_front() {
                for next in self.edges.get(&id).into_iter().flatten() {
                    let name = graph.packages.get(next).map_or("", |p| p.name.as_str());
                    if avoid.contains(&name) || parents.contains_key(next) {
                        continue;
                    }
                    parents.insert(next.clone(), Some(id.clone()));
                    queue.push_back(next.clone());
                }
            }
            parents
        }

        /// `a -> b -> c`: the path [`Closure::reach`] found to `id`, by package names.
        pub fn path(
            &self,
            graph: &Graph,
            parents: &BTreeMap<String, Option<String>>,
            id: &str,
        ) -> String {
            let mut names = Vec::new();
            let mut at = Some(id.to_owned());
            while let Some(id) = at {
                names.push(
                    graph
                        .packages
                        .get(&id)
                        .map_or(id.clone(), |p| p.name.clone()),
                );
                at = parents.get(&id).cloned().flatten();
            }
            names.reverse();
            names.join(" -> ")
        }
    }
}
