//! The orchestrator's address: what `host:port` accepts and how it refuses the rest.

use super::*;

#[test]
fn addresses() {
    let line = r#"address = "orchestrator.example.net:7443""#;
    let parse = |addr: &str| {
        Config::from_toml(&example_with(
            line,
            &format!("address = {}", toml_str(addr)),
        ))
    };
    for (good, shown) in [
        (
            "orchestrator.example.net:7443",
            "orchestrator.example.net:7443",
        ),
        (
            "orchestrator.example.net.:7443",
            "orchestrator.example.net:7443",
        ),
        ("localhost:1", "localhost:1"),
        ("192.0.2.10:65535", "192.0.2.10:65535"),
        ("[2001:db8::1]:7443", "[2001:db8::1]:7443"),
        ("[::1]:7443", "[::1]:7443"),
        ("xn--bcher-kva.example:443", "xn--bcher-kva.example:443"),
    ] {
        let c = parse(good).unwrap_or_else(|e| panic!("{good} is valid: {e}"));
        assert_eq!(c.orchestrator().to_string(), shown);
    }
    for bad in [
        "",
        "orchestrator.example.net",
        "orchestrator.example.net:",
        "orchestrator.example.net:0",
        "orchestrator.example.net:65536",
        "orchestrator.example.net:-1",
        "orchestrator.example.net:https",
        ":7443",
        "2001:db8::1:7443",
        "[2001:db8::1]",
        "[2001:db8::1:7443",
        "[not-ip]:7443",
        "bad_host.example:7443",
        "-bad.example:7443",
        "a..b:7443",
        "300.1.2.3:7443",
        "1.2.3:7443",
        "host name:7443",
        "quic://orchestrator.example.net:7443",
    ] {
        match parse(bad) {
            Err(ConfigError::Invalid(e)) => {
                assert_eq!(e.path().as_str(), "orchestrator.address", "{bad}: {e}");
            }
            other => panic!("{bad:?} should be invalid, got {other:?}"),
        }
    }
    let reason = invalid_field(
        &example_with(line, r#"address = "orchestrator.example.net""#),
        "orchestrator.address",
    );
    assert!(reason.contains("no port"), "{reason}");
    let reason = invalid_field(
        &example_with(line, r#"address = "orchestrator.example.net:0""#),
        "orchestrator.address",
    );
    assert!(reason.contains("port 0"), "{reason}");
    let reason = invalid_field(
        &example_with(line, r#"address = "quic://orchestrator.example.net:7443""#),
        "orchestrator.address",
    );
    assert!(reason.contains(r#"drop "quic://""#), "{reason}");
    let reason = invalid_field(
        &example_with(line, r#"address = "2001:db8::1:7443""#),
        "orchestrator.address",
    );
    assert!(reason.contains("brackets"), "{reason}");
    let long = format!("address = \"{}.example:7443\"", "a".repeat(10_000));
    let reason = invalid_field(&example_with(line, &long), "orchestrator.address");
    assert!(reason.len() < 200, "{reason}");
}
