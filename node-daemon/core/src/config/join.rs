//! How a node enrolls: the `[join]` settings (token and CA pin), and the join file an operator
//! drops on the boot partition of a freshly flashed card, which also names the node.
//!
//! The join token is a secret: no error message here quotes it, and its `Debug` shows the id
//! only.

use super::address::OrchestratorAddress;
use super::error::{ConfigError, invalid};
use super::raw::{RawJoin, RawJoinFile, VersionProbe};
use super::validate::{check_version, validate_labels, validate_location, validate_name};
use super::{GeoPoint, MAX_JOIN_FILE_BYTES};
use edge_proto::digest::{self, Hex, SHA256_PREFIX};
use edge_proto::field::FieldPath;
use std::collections::BTreeMap;
use std::fmt;

/// The join file an operator writes onto the boot partition (FAT, so editable from any PC):
/// everything a freshly flashed node needs to enroll.
///
/// ```toml
/// orchestrator = "orchestrator.example.net:7443"
/// token = "abcdef.0123456789abcdef0123456789abcdef"
/// ca_hash = "sha256:..."
/// name = "shop-berlin-1"                      # optional: else the config file's
/// location = { lat = 52.52, lon = 13.405 }    # optional
/// labels = { site = "berlin" }                # optional
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JoinFile {
    pub orchestrator: OrchestratorAddress,
    pub join: JoinSettings,
    pub name: Option<String>,
    pub location: Option<GeoPoint>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// The `[join]` table: how to enroll on first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettings {
    pub token: JoinToken,
    pub ca_hash: CaHash,
}

/// A join token, `ID.SECRET`: a 6-character id and a 32-character secret, both `[a-z0-9]`.
/// Its `Debug` shows the id only, so a logged config never leaks the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

/// The SHA-256 the node expects of the orchestrator's CA, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaHash([u8; 32]);

impl JoinFile {
    /// Parses a join file as an operator's PC may have saved it: UTF-8 with or without a byte
    /// order mark, LF or CRLF line ends. UTF-16 (what some editors write) is refused with a
    /// message saying so.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_JOIN_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                max_bytes: MAX_JOIN_FILE_BYTES,
            });
        }
        if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
            return Err(ConfigError::NotText(
                "the file is UTF-16; save it as UTF-8 (plain text)",
            ));
        }
        let bytes = bytes
            .strip_prefix(b"\xef\xbb\xbf".as_slice())
            .unwrap_or(bytes);
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::NotText("save the file as UTF-8 (plain text)"))?;
        if let Ok(VersionProbe {
            version: Some(version),
        }) = toml::from_str::<VersionProbe>(text)
        {
            check_version(version)?;
        }
        let raw: RawJoinFile = toml::from_str(text)?;
        let orchestrator = OrchestratorAddress::parse(&raw.orchestrator)
            .map_err(|reason| invalid("orchestrator", reason))?;
        let join = validate_join(
            RawJoin {
                token: raw.token,
                ca_hash: raw.ca_hash,
            },
            &FieldPath::root(),
        )?;
        Ok(Self {
            orchestrator,
            join,
            name: raw.name.map(validate_name).transpose()?,
            location: raw.location.map(validate_location).transpose()?,
            labels: raw.labels.map(validate_labels).transpose()?,
        })
    }
}

impl JoinToken {
    /// The token's public id, the part before the `.`.
    pub fn id(&self) -> &str {
        self.0.split_once('.').map_or("", |(id, _)| id)
    }

    /// The whole token, secret included, for the enrollment request. Never log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id())
    }
}

impl CaHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", Hex(&self.0))
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaHash({self})")
    }
}

/// `at` is where the fields sit: `join` in the config file, the top level in a join file.
pub(super) fn validate_join(raw: RawJoin, at: &FieldPath) -> Result<JoinSettings, ConfigError> {
    let token = parse_join_token(raw.token, &at.field("token"))?;
    let ca_hash = parse_ca_hash(&raw.ca_hash).ok_or_else(|| {
        invalid(
            at.field("ca_hash"),
            "expected sha256: followed by 64 hex digits",
        )
    })?;
    Ok(JoinSettings { token, ca_hash })
}

/// Checks the token's shape. The reasons never include the token: it is a secret.
fn parse_join_token(token: String, path: &FieldPath) -> Result<JoinToken, ConfigError> {
    const ID_LEN: usize = 6;
    const SECRET_LEN: usize = 32;
    let refused = |reason: &str| {
        invalid(
            path.clone(),
            format!(
                "{reason}; expected ID.SECRET, {ID_LEN} and {SECRET_LEN} lowercase letters or digits (as printed by `edgectl token create`)"
            ),
        )
    };
    let part_ok = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let Some((id, secret)) = token.split_once('.') else {
        return Err(refused("no '.' between ID and SECRET"));
    };
    if !part_ok(id, ID_LEN) {
        return Err(refused("the ID part is malformed"));
    }
    if !part_ok(secret, SECRET_LEN) {
        return Err(refused("the SECRET part is malformed"));
    }
    Ok(JoinToken(token))
}

/// `sha256:` and 64 hex digits of either case, as `edgectl token create` prints it or a
/// person copies it.
fn parse_ca_hash(s: &str) -> Option<CaHash> {
    digest::from_prefixed(s).map(CaHash)
}
