//! The config's tests, by concern. Each builds on the documented example and changes one
//! line of it, so a test never passes by checking something other than what it names.

use super::*;

mod address;
mod fields;
mod join;
mod location;
mod parse;
mod proxy;

const EXAMPLE: &str = r#"
version = 1
name = "shop-berlin-1"
data_dir = "/var/lib/edge-node"
labels = { site = "berlin" }
location = { lat = 52.52, lon = 13.405 }
status_interval_secs = 10
[orchestrator]
address = "orchestrator.example.net:7443"
[join]
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;

/// The example with line `from` replaced by `to`. Panics if `from` is not in it, so a test
/// never silently checks the unmodified example.
fn example_with(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "example has no {from:?}");
    EXAMPLE.replacen(from, to, 1)
}

/// Asserts the text is rejected as `Invalid` for `field`, and returns the reason.
fn invalid_field(toml: &str, field: &str) -> String {
    match Config::from_toml(toml) {
        Err(ConfigError::Invalid(e)) => {
            assert_eq!(
                e.path().as_str(),
                field,
                "wrong field; reason: {}",
                e.message()
            );
            e.message().to_owned()
        }
        other => panic!("expected Invalid at {field}, got {other:?}"),
    }
}

fn parse_error(toml: &str) -> String {
    match Config::from_toml(toml) {
        Err(e @ ConfigError::Parse(_)) => e.to_string(),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
