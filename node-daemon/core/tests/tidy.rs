//! The rules `lib.rs` states for this crate, checked: no I/O crate anywhere in its dependency
//! tree, and no clock read outside tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do I/O, and the families they head (`tokio-util`, `hyper-util`, ...).
const IO_CRATES: &[&str] = &["tokio", "quinn", "sled", "axum", "hyper", "mio"];

/// Ways to read the clock.
const CLOCK_READS: &[&str] = &["Instant::now", "SystemTime::now"];

#[test]
fn no_io_crate_in_the_dependency_tree() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "node-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(names.contains(&"edge-proto"), "unexpected tree:\n{tree}");
    let io: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            IO_CRATES
                .iter()
                .any(|c| name == c || name.starts_with(&format!("{c}-")))
        })
        .collect();
    assert!(
        io.is_empty(),
        "node-core depends on I/O crates {io:?}:\n{tree}"
    );
}

#[test]
fn no_clock_read_outside_tests() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 1, "no sources under {}", src.display());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        // Tests sit at the end of a file, behind `#[cfg(test)]`, or in files of their own
        // that their parent declares that way (`tests.rs`, `tests/`).
        if is_test_file(&src, &file) {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            if CLOCK_READS.iter().any(|read| line.contains(read)) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core reads the clock; take `now` as an argument instead:\n{}",
        found.join("\n")
    );
}

fn is_test_file(src: &Path, file: &Path) -> bool {
    file.strip_prefix(src).is_ok_and(|rel| {
        rel.components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
