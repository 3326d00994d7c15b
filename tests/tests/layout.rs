//! `cross/link-gcc.sh`, the linker of every cross build: it links with the lld that ships with
//! Rust and lays out the functions its list names first, in the list's order, whatever hash or
//! crate disambiguator the build gave their symbols. Checked on a small C program whose
//! functions carry Rust symbol names, linked for this machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

/// In source order: cold, hot, warm. A plain link keeps that order.
const SOURCE: &str = r#"
int _ZN4demo4cold17h0123456789abcdefE(int x) { return x * 3 + 1; }
int _ZN4demo3hot17hfedcba9876543210E(int x) { return x * 5 + 2; }
int _RNvCsaz6eC2DG7lh_4demo4warm(int x) { return x * 7 + 3; }
int main(int argc, char **argv) {
    (void)argv;
    return _ZN4demo4cold17h0123456789abcdefE(argc) + _ZN4demo3hot17hfedcba9876543210E(argc)
        + _RNvCsaz6eC2DG7lh_4demo4warm(argc);
}
"#;

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Compiles SOURCE (one section per function, as rustc emits) and links it through
/// cross/link-gcc.sh with `list` as its list of hot functions. Returns the program.
fn link(dir: &Path, list: &str) -> PathBuf {
    let source = dir.join("demo.c");
    let object = dir.join("demo.o");
    let program = dir.join("demo");
    let list_file = dir.join("hot-functions.txt");
    fs::write(&source, SOURCE).expect("write the source");
    fs::write(&list_file, list).expect("write the list");
    run(Command::new("cc")
        .args(["-c", "-O1", "-ffunction-sections", "-o"])
        .args([&object, &source]));
    run(Command::new("bash")
        .arg(root().join("cross/link-gcc.sh"))
        .arg(&object)
        .arg("-o")
        .arg(&program)
        .env("EDGE_HOT_FUNCTIONS", &list_file)
        .env("EDGE_LINK_CC", "cc"));
    program
}

/// The address of every function symbol of `program`, by demangled name.
fn addresses(program: &Path) -> Vec<(String, u64)> {
    let out = run(Command::new("nm").arg("-C").arg(program));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            matches!(kind, "T" | "t").then(|| (name.to_string(), address))
        })
        .collect()
}

fn address_of(addresses: &[(String, u64)], prefix: &str) -> u64 {
    addresses
        .iter()
        .find(|(name, _)| name.starts_with(prefix))
        .map(|(_, address)| *address)
        .unwrap_or_else(|| panic!("no symbol {prefix} in {addresses:?}"))
}

/// The program's exit status: it must run as linked.
fn status_of(program: &Path) -> i32 {
    Command::new(program)
        .status()
        .expect("the program runs")
        .code()
        .expect("it exits")
}

#[test]
fn the_listed_functions_come_first_in_the_lists_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Keys as cross/hot-functions.sh writes them: no hash, no disambiguator.
    let program = link(dir.path(), "# hot first\ndemo::hot\ndemo::warm\n");
    let at = addresses(&program);
    let (hot, warm, cold) = (
        address_of(&at, "demo::hot"),
        address_of(&at, "demo::warm"),
        address_of(&at, "demo::cold"),
    );
    assert!(hot < warm, "hot {hot:#x} before warm {warm:#x}");
    assert!(warm < cold, "warm {warm:#x} before cold {cold:#x}");
    // 1*3+1 + 1*5+2 + 1*7+3
    assert_eq!(status_of(&program), 21);
}

#[test]
fn a_list_that_names_nothing_here_still_links_in_source_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = link(dir.path(), "other::function\n<bad name with spaces>\n\n");
    let at = addresses(&program);
    let (cold, hot) = (address_of(&at, "demo::cold"), address_of(&at, "demo::hot"));
    assert!(
        cold < hot,
        "source order kept: cold {cold:#x}, hot {hot:#x}"
    );
    assert_eq!(status_of(&program), 21);
}
