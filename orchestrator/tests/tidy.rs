//! Rules ARCHITECTURE.md writes down for the orchestrator's shells and core, checked: a rule
//! no test checks drifts.
//!
//! - Hex and the `sha256:` form of a digest have one home, `edge_proto::digest`: no other
//!   source formats bytes as hex or writes the prefix by hand.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file's code before its `#[cfg(test)]` module, without comment lines: docs and
/// tests may spell out a digest.
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What writes hex or a digest's prefix by hand, in `code`. Percent-encoding (`%{b:02X}`) is
/// URL syntax, not a digest.
fn hand_written_hex(code: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    for needle in [":02x}", ":02X}", ":x}", ":X}"] {
        let by_hand = code.match_indices(needle).any(|(i, _)| {
            let spec_start = code[..i].rfind('{').unwrap_or(0);
            !code[..spec_start].ends_with('%')
        });
        if by_hand {
            found.push(needle);
        }
    }
    // A string literal that starts with the prefix and goes on with a digest (hex, or a
    // placeholder for it). Not an escaped quote inside a message, nor the field name
    // `sha256: ...` of one.
    let literal = code.match_indices("\"sha256:").any(|(i, needle)| {
        let next = code[i + needle.len()..].chars().next();
        !code[..i].ends_with('\\') && next.is_some_and(|c| c == '{' || c.is_ascii_hexdigit())
    });
    if literal {
        found.push("\"sha256:");
    }
    found
}

#[test]
fn hex_and_digest_forms_come_from_edge_proto_digest() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("core/src"), &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for needle in hand_written_hex(&non_test_code(&text)) {
            broken.push(format!("{}: {needle}", file.display()));
        }
    }
    assert!(
        broken.is_empty(),
        "use edge_proto::digest (encode_hex, Hex, to_prefixed, SHA256_PREFIX): {broken:#?}"
    );
}

/// The check above finds what it looks for.
#[test]
fn the_check_sees_hand_written_hex() {
    assert_eq!(
        hand_written_hex(r#"let s = format!("{b:02x}");"#),
        vec![":02x}"]
    );
    assert_eq!(
        hand_written_hex(r#"format!("sha256:{}", h)"#),
        vec!["\"sha256:"]
    );
    assert_eq!(
        hand_written_hex(r#"const PIN: &str = "sha256:0a1b";"#),
        vec!["\"sha256:"]
    );
    assert!(hand_written_hex(r#"format!("{} is not \"sha256:\" and hex", x)"#).is_empty());
    assert!(hand_written_hex(r#"format!("sha256: {v:?} is not hex")"#).is_empty());
    assert!(hand_written_hex(r#"write!(out, "%{b:02X}")"#).is_empty());
    let tests_only = "fn f() {}\n#[cfg(test)]\nmod tests { const D: &str = \"sha256:00\"; }";
    assert!(hand_written_hex(&non_test_code(tests_only)).is_empty());
}
