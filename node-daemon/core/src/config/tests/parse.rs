//! What is refused before or while parsing: malformed TOML, unknown fields, wrong types,
//! oversized text, and whatever text at all without a panic.

use super::*;

#[test]
fn malformed_toml_reports_line_and_column() {
    let msg = parse_error(&example_with(
        r#"name = "shop-berlin-1""#,
        r#"name = "unterminated"#,
    ));
    assert!(msg.contains("line"), "{msg}");
    let msg = parse_error("version = 1\nname = \n");
    assert!(msg.contains("line 2"), "{msg}");
    parse_error("");
    parse_error("\u{0}\u{1}binary garbage");
    // A duplicate key is malformed TOML, not a silent overwrite.
    parse_error(&example_with(
        r#"name = "shop-berlin-1""#,
        "name = \"a\"\nname = \"b\"",
    ));
}

#[test]
fn unknown_fields_are_refused() {
    let msg = parse_error(&example_with(
        r#"name = "shop-berlin-1""#,
        "name = \"shop-berlin-1\"\nnmae = \"typo\"",
    ));
    assert!(msg.contains("nmae"), "{msg}");
    let msg = parse_error(&example_with(
        "location = { lat = 52.52, lon = 13.405 }",
        "location = { lat = 52.52, lon = 13.405, altitude = 3 }",
    ));
    assert!(msg.contains("altitude"), "{msg}");
    let msg = parse_error(&example_with(
        r#"address = "orchestrator.example.net:7443""#,
        "address = \"orchestrator.example.net:7443\"\nport = 1",
    ));
    assert!(msg.contains("port"), "{msg}");
    parse_error(&format!("{EXAMPLE}\n[extra]\nx = 1\n"));
}

#[test]
fn wrong_types_are_parse_errors() {
    parse_error(&example_with(r#"name = "shop-berlin-1""#, "name = 5"));
    parse_error(&example_with(
        r#"labels = { site = "berlin" }"#,
        "labels = { site = 5 }",
    ));
    parse_error(&example_with(
        "location = { lat = 52.52, lon = 13.405 }",
        r#"location = { lat = "52.52", lon = 13.405 }"#,
    ));
    parse_error(&example_with("version = 1", r#"version = "1""#));
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    // Not valid TOML, so a parse would fail differently: the size check comes first.
    let big = "#".repeat(MAX_CONFIG_BYTES + 1);
    assert!(matches!(
        Config::from_toml(&big),
        Err(ConfigError::TooLarge { .. })
    ));
    // Exactly at the limit is parsed.
    let padded = format!("{EXAMPLE}{}", "#".repeat(MAX_CONFIG_BYTES - EXAMPLE.len()));
    assert_eq!(padded.len(), MAX_CONFIG_BYTES);
    Config::from_toml(&padded).expect("a file of exactly the limit is accepted");
}

proptest::proptest! {
    /// Whatever the text, parsing returns; it never panics.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        let _ = Config::from_toml(&s);
    }

    /// Any value for any field of the example gives Ok or an error, never a panic.
    #[test]
    fn arbitrary_field_values_never_panic(
        line in proptest::sample::select(vec![
            r#"name = "shop-berlin-1""#,
            r#"address = "orchestrator.example.net:7443""#,
            r#"token = "abcdef.0123456789abcdef0123456789abcdef""#,
            r#"labels = { site = "berlin" }"#,
            r#"data_dir = "/var/lib/edge-node""#,
        ]),
        value in "\\PC{0,80}",
    ) {
        let key = line.split_once(" = ").map_or("", |(k, _)| k);
        let replacement = if key == "labels" {
            format!("labels = {{ {} = {} }}", toml_str(&value), toml_str(&value))
        } else {
            format!("{key} = {}", toml_str(&value))
        };
        let _ = Config::from_toml(&example_with(line, &replacement));
    }
}
