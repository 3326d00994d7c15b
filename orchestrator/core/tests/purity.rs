//! The rules `src/lib.rs` writes down, checked: the core depends on nothing that does I/O,
//! and reads no clock outside its tests. A rule no test checks drifts.

use std::path::{Path, PathBuf};

/// Crates that do I/O (or exist to), which the core must not depend on.
const IO_CRATES: &[&str] = &[
    "tokio", "quinn", "sled", "axum", "hyper", "mio", "socket2", "ureq", "reqwest",
];

/// Clock reads: time comes into the core as an argument.
const CLOCK_READS: &[&str] = &["Instant::now", "SystemTime::now"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The names of the `[dependencies]` in this crate's Cargo.toml.
fn dependencies() -> Vec<String> {
    let text = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("read Cargo.toml");
    let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .expect("a [dependencies] table")
        .keys()
        .cloned()
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file's code before its `#[cfg(test)]` module (the core's test modules come
/// last), without comment lines: docs may name what the code must not do.
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_core_depends_on_nothing_that_does_io() {
    let deps = dependencies();
    assert!(deps.iter().any(|d| d == "edge-proto"), "{deps:?}");
    for dep in &deps {
        assert!(
            !IO_CRATES.contains(&dep.as_str()),
            "orchestrator-core depends on {dep}, which does I/O; put that code in the shell"
        );
    }
    // edge-proto is no_std without its `quic` feature, which links quinn.
    let text = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("read Cargo.toml");
    let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
    let proto = &manifest["dependencies"]["edge-proto"];
    let features = proto
        .get("features")
        .and_then(|f| f.as_array())
        .map_or(&[][..], Vec::as_slice);
    assert!(
        !features.iter().any(|f| f.as_str() == Some("quic")),
        "edge-proto's quic feature links quinn and tokio"
    );
}

#[test]
fn the_core_reads_no_clock_and_names_no_io_crate() {
    let mut files = Vec::new();
    rust_files(&manifest_dir().join("src"), &mut files);
    assert!(files.len() > 5, "found the sources: {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let code = non_test_code(&text);
        let code = code.as_str();
        for needle in CLOCK_READS {
            if code.contains(needle) {
                broken.push(format!("{}: {needle}", file.display()));
            }
        }
        for krate in IO_CRATES {
            for needle in [format!("{krate}::"), format!("use {krate}")] {
                if code.contains(&needle) {
                    broken.push(format!("{}: {needle}", file.display()));
                }
            }
        }
        if code.contains("std::fs") || code.contains("std::net") {
            broken.push(format!("{}: std::fs or std::net", file.display()));
        }
    }
    assert!(broken.is_empty(), "the core must not do I/O: {broken:#?}");
}

/// The checks above find what they look for (a test that cannot fail proves nothing).
#[test]
fn the_checks_see_a_clock_read_and_skip_tests_and_comments() {
    let code = "fn f() { let t = std::time::Instant::now(); }\n#[cfg(test)]\nmod tests {}";
    assert!(non_test_code(code).contains("Instant::now"));
    let test_only = "fn f() {}\n#[cfg(test)]\nmod tests { fn g() { SystemTime::now(); } }";
    assert!(!non_test_code(test_only).contains("SystemTime::now"));
    let docs = "//! never `Instant::now`\n    /// nor SystemTime::now\nfn f() {}";
    assert!(!non_test_code(docs).contains("::now"));
}
