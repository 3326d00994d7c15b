//! The join settings and the join file: shapes, secrets kept, and how a packaged config is
//! completed.

use super::*;

#[test]
fn bad_join_tokens_never_echo_the_secret() {
    let line = r#"token = "abcdef.0123456789abcdef0123456789abcdef""#;
    let secret = "0123456789abcdef0123456789abcdeZ";
    for bad in [
        "".to_owned(),
        "abcdef0123456789abcdef0123456789abcdef".to_owned(),
        format!("abcde.{secret}"),
        format!("ABCDEF.{secret}"),
        "abcdef.0123456789abcdef0123456789abcde".to_owned(),
        format!("abcdef.{secret}"),
        "abcdef.0123456789abcdef0123456789abcdef.x".to_owned(),
        "abcdef.0123456789abcdef0123456789abcdef ".to_owned(),
    ] {
        let toml = example_with(line, &format!("token = {}", toml_str(&bad)));
        let reason = invalid_field(&toml, "join.token");
        assert!(!reason.contains("0123456789"), "secret echoed: {reason}");
        assert!(reason.contains("ID.SECRET"), "{reason}");
    }
}

#[test]
fn join_token_debug_is_redacted() {
    let c = Config::from_toml(EXAMPLE).expect("valid");
    let debug = format!("{c:?}");
    assert!(debug.contains("abcdef.<redacted>"), "{debug}");
    assert!(
        !debug.contains("0123456789abcdef"),
        "secret in Debug: {debug}"
    );
}

#[test]
fn bad_ca_hashes() {
    let line =
        r#"ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff""#;
    let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    for bad in [
        String::new(),
        hex64.to_owned(),
        format!("sha1:{hex64}"),
        format!("SHA256:{hex64}"),
        format!("sha256:{}", &hex64[..63]),
        format!("sha256:{hex64}0"),
        format!("sha256:{}g", &hex64[..63]),
        format!("sha256: {}", &hex64[..63]),
        format!("sha256:{}é", &hex64[..62]),
    ] {
        let toml = example_with(line, &format!("ca_hash = {}", toml_str(&bad)));
        let reason = invalid_field(&toml, "join.ca_hash");
        assert_eq!(reason, "expected sha256: followed by 64 hex digits");
    }
}

#[test]
fn join_needs_both_fields() {
    let msg = parse_error(&example_with(
        r#"token = "abcdef.0123456789abcdef0123456789abcdef""#,
        "",
    ));
    assert!(msg.contains("token"), "{msg}");
}

/// A packaged config: the device-specific values come from a join file.
const PACKAGED: &str = r#"
version = 1
data_dir = "/var/lib/edge-node"
join_file = ["/boot/firmware/edge-join.toml", "/boot/edge-join.toml"]
status_listen = "127.0.0.1:7450"
[reserve]
memory_bytes = 100663296
"#;

const JOIN: &str = r#"
orchestrator = "orch.example.net:7443"
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
name = "pi-7"
location = { lat = 48.1, lon = 11.6 }
labels = { site = "munich" }
"#;

#[test]
fn packaged_config_is_completed_by_the_join_file() {
    let file = ConfigFile::from_toml(PACKAGED).expect("valid");
    assert_eq!(file.join_files().len(), 2);
    assert_eq!(
        file.status_listen(),
        Some("127.0.0.1:7450".parse().expect("addr"))
    );
    let err = file.complete(None).expect_err("no name yet").to_string();
    assert_eq!(err, "name: is not set here, and no join file provided it");

    let join = JoinFile::from_bytes(JOIN.as_bytes()).expect("valid join file");
    let c = file.complete(Some(&join)).expect("complete");
    assert_eq!(c.name(), "pi-7");
    assert_eq!(c.orchestrator().to_string(), "orch.example.net:7443");
    assert_eq!(c.labels()["site"], "munich");
    assert_eq!(c.location().map(|l| l.lat), Some(48.1));
    assert_eq!(c.join().map(|j| j.token.id()), Some("abcdef"));
    assert_eq!(c.reserve().memory_bytes, 100_663_296);
    assert_eq!(
        c.reserve().disk_bytes,
        Reserve::default().disk_bytes,
        "unset fields keep their default"
    );
}

#[test]
fn the_config_file_wins_over_the_join_file() {
    let join = JoinFile::from_bytes(JOIN.as_bytes()).expect("valid join file");
    let c = ConfigFile::from_toml(EXAMPLE)
        .expect("valid")
        .complete(Some(&join))
        .expect("complete");
    assert_eq!(c.name(), "shop-berlin-1");
    assert_eq!(c.labels()["site"], "berlin");
    assert_eq!(
        c.orchestrator().to_string(),
        "orchestrator.example.net:7443"
    );
}

#[test]
fn a_complete_config_without_a_join_file_says_what_is_missing() {
    let no_name = EXAMPLE.replace("name = \"shop-berlin-1\"\n", "");
    assert_eq!(invalid_field(&no_name, "name"), "is not set");
    let no_address = EXAMPLE.replace("address = \"orchestrator.example.net:7443\"\n", "");
    assert_eq!(
        invalid_field(&no_address, "orchestrator.address"),
        "is not set"
    );
}

#[test]
fn bad_provisioning_fields() {
    let field = |toml: &str| match ConfigFile::from_toml(toml) {
        Err(ConfigError::Invalid(e)) => e.path().to_string(),
        other => panic!("expected Invalid, got {other:?}"),
    };
    let with = |from: &str, to: &str| {
        assert!(PACKAGED.contains(from));
        PACKAGED.replacen(from, to, 1)
    };
    assert_eq!(
        field(&with("\"/boot/edge-join.toml\"", "\"boot/edge-join.toml\"")),
        "join_file[1]"
    );
    assert_eq!(
        field(&with("\"/boot/edge-join.toml\"", "\"/boot/\\u0000\"")),
        "join_file[1]"
    );
    let many = format!("join_file = [{}]", ["\"/a\""; 9].join(", "));
    assert_eq!(
        field(&with(
            "join_file = [\"/boot/firmware/edge-join.toml\", \"/boot/edge-join.toml\"]",
            &many
        )),
        "join_file"
    );
    assert_eq!(
        field(&with("127.0.0.1:7450", "localhost:7450")),
        "status_listen"
    );
    assert_eq!(
        field(&with("memory_bytes = 100663296", "memory_bytes = -1")),
        "reserve.memory_bytes"
    );
    assert!(matches!(
        ConfigFile::from_toml(&with("memory_bytes", "memroy_bytes")),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn join_file_errors_name_the_field_and_keep_the_secret() {
    let bad = |from: &str, to: &str| {
        assert!(JOIN.contains(from));
        match JoinFile::from_bytes(JOIN.replacen(from, to, 1).as_bytes()) {
            Err(ConfigError::Invalid(e)) => {
                assert!(!e.message().contains("0123456789abcdef0123"), "{e}");
                e.path().to_string()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    };
    assert_eq!(bad("abcdef.0123", "abcdef_0123"), "token");
    assert_eq!(bad("sha256:0011", "sha256:zz11"), "ca_hash");
    assert_eq!(
        bad("orch.example.net:7443", "orch.example.net"),
        "orchestrator"
    );
    assert_eq!(bad("pi-7", "-pi-7"), "name");
    assert_eq!(bad("lat = 48.1", "lat = nan"), "location.lat");
    assert_eq!(bad("site = ", "\"s i t e\" = "), "labels.\"s i t e\"");
    assert!(matches!(
        JoinFile::from_bytes(b"token = \"x\""),
        Err(ConfigError::Parse(_))
    ));
    assert!(matches!(
        JoinFile::from_bytes(format!("version = 9\n{JOIN}").as_bytes()),
        Err(ConfigError::Invalid(e)) if e.path() == "version"
    ));
    assert!(matches!(
        JoinFile::from_bytes(&vec![b'#'; MAX_JOIN_FILE_BYTES + 1]),
        Err(ConfigError::TooLarge { .. })
    ));
}

proptest::proptest! {
    #[test]
    fn arbitrary_join_files_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
        let _ = JoinFile::from_bytes(&bytes);
    }
}
