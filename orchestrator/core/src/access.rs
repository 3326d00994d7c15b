//! Who may use the operator API: the roles, the API tokens on record, and the rules for
//! issuing, checking and revoking them.
//!
//! A token is a signed JWT (the shell signs and checks signatures); its `jti` is the id of an
//! [`ApiTokenRecord`] kept here and in the store. The record, never the token text, is what
//! the registry knows: a token is good only while its record is on file, unexpired and not
//! revoked, so revoking one takes effect on the next request and lasts across restarts.
//!
//! Rules, decided here and nowhere else:
//! - Through the API, an admin issues `viewer` and `operator` tokens only ([`Actor::Api`]),
//!   and revokes any token but the admin token. The one admin token is the orchestrator's
//!   own, written to `DATA_DIR/admin.token`; revoking it through the API would leave no admin
//!   until a restart, so it is replaced instead (`serve --rotate-admin-token`).
//! - At start the orchestrator keeps the admin token in that file while it is on record,
//!   unrevoked and good for at least [`ADMIN_TOKEN_RENEW_SECS`]; otherwise (no file, a token
//!   not on record, revoked, expiring) it issues a new one and revokes every other admin
//!   token ([`ApiTokens::admin_token_plan`]). Rotating is removing the file.
//!
//! Like the rest of the crate: no I/O, no clock (`now_unix` comes in), no randomness (the
//! caller hands in the id).

use std::collections::BTreeMap;
use std::fmt;

use edge_proto::field::{FieldError, FieldPath};
use serde::{Deserialize, Serialize};

/// How long the admin token is good for.
pub const ADMIN_TOKEN_TTL_SECS: u64 = 365 * 86_400;
/// An admin token with less than this left is replaced at the next start.
pub const ADMIN_TOKEN_RENEW_SECS: u64 = 30 * 86_400;
/// Who the admin token is for, and who issues it.
pub const ADMIN_SUBJECT: &str = "admin";
pub const ORCHESTRATOR_ISSUER: &str = "edge-orchestrator";
/// Bounds of a token's subject, in characters.
pub const SUBJECT_MAX_CHARS: usize = 64;
/// A token id: this many random bytes, written as hex.
pub const TOKEN_ID_BYTES: usize = 16;

/// What a token may do. Ordered: `Admin > Operator > Viewer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything except join and API tokens.
    Viewer,
    /// Also changes workloads and artifacts, and cordons and drains nodes.
    Operator,
    /// Everything: join tokens, API tokens, deleting nodes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as kept on record: everything about it except its text, which is shown once
/// when it is issued and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// The token's `jti`: [`TOKEN_ID_BYTES`] random bytes as lowercase hex.
    pub id: String,
    pub role: Role,
    /// Who it is for, e.g. `ci`.
    pub subject: String,
    /// Who issued it: an admin token's subject, or [`ORCHESTRATOR_ISSUER`].
    pub issued_by: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
    /// When it was revoked, if it was.
    #[serde(default)]
    pub revoked_unix: Option<u64>,
}

/// Where a token stands at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl ApiTokenRecord {
    /// Revoked wins over expired: it says what someone did.
    pub fn state(&self, now_unix: u64) -> TokenState {
        if self.revoked_unix.is_some() {
            TokenState::Revoked
        } else if now_unix >= self.expires_unix {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

/// Why a correctly signed token is refused. Each is the caller's to fix (with another token),
/// never worth retrying as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its id is not on record: issued before tokens had ids, or by a store since replaced.
    #[error("bearer token is not on record; ask an admin for a new one")]
    Unknown,
    /// An admin revoked it.
    #[error("bearer token was revoked")]
    Revoked,
    /// Past its expiry.
    #[error("bearer token expired")]
    Expired,
}

/// Who asks for a token or a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    /// A caller of the API with this role and subject: may hand out lesser roles only, and
    /// revoke any token but an admin token.
    Api { role: Role, subject: &'a str },
    /// The orchestrator itself: its admin token, and tokens tools and tests make directly.
    Orchestrator,
}

/// Why a token was not issued. The API answers each with 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// A role the issuer may not hand out, or a subject out of bounds.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The id is on record already: the caller's random source repeated itself. Not the
    /// requester's fault; retry with a fresh id.
    #[error("token id {0} is taken")]
    IdTaken(String),
}

/// Why a revocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// No token with this id is on record. 404.
    #[error("no API token with this id")]
    Unknown,
    /// An admin token, asked through the API. 403: replace it instead.
    #[error(
        "the admin token is not revoked through the API, which would leave no admin until a \
         restart; replace it with `edge-orchestrator serve --rotate-admin-token`"
    )]
    AdminToken,
}

/// What to do about the admin token when the orchestrator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTokenPlan {
    /// The token in the file is good: keep it.
    Keep,
    /// Issue a new admin token, and revoke these (every other active admin token), so that
    /// one admin token is good at a time.
    Issue { revoke: Vec<String> },
}

/// Whether a revocation changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now: persist this record.
    Revoked(ApiTokenRecord),
    /// It was revoked before; nothing to persist.
    Already(ApiTokenRecord),
}

/// The API tokens on record.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    by_id: BTreeMap<String, ApiTokenRecord>,
}

impl ApiTokens {
    /// The registry as the store kept it.
    pub fn new(records: impl IntoIterator<Item = ApiTokenRecord>) -> Self {
        Self {
            by_id: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    /// A token to issue, checked against the rules; nothing changes until [`Self::insert`],
    /// which the shell calls once the record is stored.
    pub fn prepare(
        &self,
        id: String,
        role: Role,
        subject: &str,
        issuer: Actor<'_>,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Result<ApiTokenRecord, IssueError> {
        let issued_by = match issuer {
            Actor::Api {
                role: caller,
                subject: by,
            } => {
                if role == Role::Admin {
                    return Err(FieldError::new(
                        "role",
                        "admin tokens are not issued through the API; an admin issues viewer \
                         and operator tokens. The admin token is DATA_DIR/admin.token",
                    )
                    .into());
                }
                if role > caller {
                    return Err(FieldError::new(
                        "role",
                        format!("a {caller} token cannot issue {role} tokens"),
                    )
                    .into());
                }
                by
            }
            Actor::Orchestrator => ORCHESTRATOR_ISSUER,
        };
        check_subject(&FieldPath::new("subject"), subject)?;
        if self.by_id.contains_key(&id) {
            return Err(IssueError::IdTaken(id));
        }
        Ok(ApiTokenRecord {
            id,
            role,
            subject: subject.to_owned(),
            issued_by: issued_by.to_owned(),
            issued_unix: now_unix,
            expires_unix: now_unix.saturating_add(ttl_secs),
            revoked_unix: None,
        })
    }

    /// Puts a record on file (one [`Self::prepare`] made, now stored).
    pub fn insert(&mut self, record: ApiTokenRecord) {
        self.by_id.insert(record.id.clone(), record);
    }

    /// The record of a correctly signed token with id `id`, if it is good at `now_unix`.
    pub fn check(&self, id: &str, now_unix: u64) -> Result<&ApiTokenRecord, Refused> {
        let record = self.by_id.get(id).ok_or(Refused::Unknown)?;
        match record.state(now_unix) {
            TokenState::Active => Ok(record),
            TokenState::Expired => Err(Refused::Expired),
            TokenState::Revoked => Err(Refused::Revoked),
        }
    }

    /// Revokes the token `id` as of `now_unix`, if `by` may. The change is in effect at once;
    /// the shell persists what [`Revocation::Revoked`] carries.
    pub fn revoke(
        &mut self,
        id: &str,
        now_unix: u64,
        by: Actor<'_>,
    ) -> Result<Revocation, RevokeError> {
        let record = self.by_id.get_mut(id).ok_or(RevokeError::Unknown)?;
        if record.role == Role::Admin && matches!(by, Actor::Api { .. }) {
            return Err(RevokeError::AdminToken);
        }
        if record.revoked_unix.is_some() {
            return Ok(Revocation::Already(record.clone()));
        }
        record.revoked_unix = Some(now_unix);
        Ok(Revocation::Revoked(record.clone()))
    }

    /// Every token on record, by id.
    pub fn iter(&self) -> impl Iterator<Item = &ApiTokenRecord> {
        self.by_id.values()
    }

    /// What to do at start, given the id of the token in `DATA_DIR/admin.token` (`None` when
    /// there is no file, or what it holds is not a token this orchestrator signed).
    pub fn admin_token_plan(&self, in_file: Option<&str>, now_unix: u64) -> AdminTokenPlan {
        let keep = in_file.and_then(|id| self.by_id.get(id)).is_some_and(|r| {
            r.role == Role::Admin
                && r.state(now_unix) == TokenState::Active
                && r.expires_unix.saturating_sub(now_unix) >= ADMIN_TOKEN_RENEW_SECS
        });
        if keep {
            return AdminTokenPlan::Keep;
        }
        AdminTokenPlan::Issue {
            revoke: self
                .by_id
                .values()
                .filter(|r| r.role == Role::Admin && r.state(now_unix) == TokenState::Active)
                .map(|r| r.id.clone())
                .collect(),
        }
    }
}

/// A subject: 1 to [`SUBJECT_MAX_CHARS`] characters, none of them a control character (it
/// goes into logs).
pub fn check_subject(path: &FieldPath, subject: &str) -> Result<(), FieldError> {
    let chars = subject.chars().count();
    if chars == 0 || chars > SUBJECT_MAX_CHARS || subject.chars().any(char::is_control) {
        return Err(FieldError::new(
            path.clone(),
            format!("use 1 to {SUBJECT_MAX_CHARS} printable characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn id(n: u8) -> String {
        edge_proto::digest::encode_hex(&[n; TOKEN_ID_BYTES])
    }

    fn issued(tokens: &mut ApiTokens, n: u8, role: Role, ttl: u64) -> ApiTokenRecord {
        let r = tokens
            .prepare(id(n), role, "s", Actor::Orchestrator, NOW, ttl)
            .expect("issue");
        tokens.insert(r.clone());
        r
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn through_the_api_an_admin_issues_lesser_roles_only() {
        let tokens = ApiTokens::default();
        let admin = Actor::Api {
            role: Role::Admin,
            subject: "admin",
        };
        for role in [Role::Viewer, Role::Operator] {
            let r = tokens
                .prepare(id(1), role, "ci", admin, NOW, 60)
                .expect("a lesser role");
            assert_eq!((r.role, r.issued_by.as_str()), (role, "admin"));
            assert_eq!(r.expires_unix, NOW + 60);
        }
        let e = tokens
            .prepare(id(1), Role::Admin, "ci", admin, NOW, 60)
            .expect_err("no admin tokens through the API");
        assert!(
            e.to_string()
                .starts_with("role: admin tokens are not issued"),
            "{e}"
        );
        let viewer = Actor::Api {
            role: Role::Viewer,
            subject: "dash",
        };
        let e = tokens
            .prepare(id(1), Role::Operator, "ci", viewer, NOW, 60)
            .expect_err("no higher role than the caller's");
        assert_eq!(
            e.to_string(),
            "role: a viewer token cannot issue operator tokens"
        );
        for bad in ["", "a\nb", &"x".repeat(65)] {
            let e = tokens
                .prepare(id(1), Role::Viewer, bad, admin, NOW, 60)
                .expect_err("bad subject");
            assert!(e.to_string().starts_with("subject: "), "{e}");
        }
        tokens
            .prepare(id(1), Role::Viewer, &"é".repeat(64), admin, NOW, 60)
            .expect("64 characters, not bytes");
    }

    #[test]
    fn a_token_is_good_while_on_record_unexpired_and_unrevoked() {
        let mut tokens = ApiTokens::default();
        let r = issued(&mut tokens, 1, Role::Viewer, 60);
        assert_eq!(tokens.check(&r.id, NOW).map(|r| r.role), Ok(Role::Viewer));
        assert_eq!(tokens.check(&r.id, NOW + 60), Err(Refused::Expired));
        assert_eq!(tokens.check(&id(9), NOW), Err(Refused::Unknown));
        assert_eq!(tokens.check("", NOW), Err(Refused::Unknown));
        let admin = Actor::Api {
            role: Role::Admin,
            subject: "admin",
        };
        let Ok(Revocation::Revoked(revoked)) = tokens.revoke(&r.id, NOW + 1, admin) else {
            panic!("revoked now");
        };
        assert_eq!(revoked.revoked_unix, Some(NOW + 1));
        assert_eq!(tokens.check(&r.id, NOW + 2), Err(Refused::Revoked));
        assert!(matches!(
            tokens.revoke(&r.id, NOW + 5, admin),
            Ok(Revocation::Already(r)) if r.revoked_unix == Some(NOW + 1)
        ));
        assert_eq!(tokens.revoke(&id(9), NOW, admin), Err(RevokeError::Unknown));
        // The admin token is replaced, not revoked, through the API; the orchestrator may.
        let admin_token = issued(&mut tokens, 3, Role::Admin, 60);
        assert_eq!(
            tokens.revoke(&admin_token.id, NOW, admin),
            Err(RevokeError::AdminToken)
        );
        assert_eq!(
            tokens.check(&admin_token.id, NOW).map(|r| r.role),
            Ok(Role::Admin)
        );
        assert!(matches!(
            tokens.revoke(&admin_token.id, NOW, Actor::Orchestrator),
            Ok(Revocation::Revoked(_))
        ));
        // What the store kept is what the registry knows after a restart.
        let again = ApiTokens::new(tokens.iter().cloned());
        assert_eq!(again.check(&r.id, NOW + 2), Err(Refused::Revoked));
        assert_eq!(
            again.prepare(r.id.clone(), Role::Viewer, "s", Actor::Orchestrator, NOW, 1),
            Err(IssueError::IdTaken(r.id))
        );
    }

    #[test]
    fn the_admin_token_is_kept_until_it_is_gone_revoked_or_nearly_expired() {
        let mut tokens = ApiTokens::default();
        assert_eq!(
            tokens.admin_token_plan(None, NOW),
            AdminTokenPlan::Issue { revoke: vec![] }
        );
        let admin = issued(&mut tokens, 1, Role::Admin, ADMIN_TOKEN_TTL_SECS);
        let viewer = issued(&mut tokens, 2, Role::Viewer, ADMIN_TOKEN_TTL_SECS);
        assert_eq!(
            tokens.admin_token_plan(Some(&admin.id), NOW + 86_400),
            AdminTokenPlan::Keep
        );
        // No file (rotation), a file with a viewer's token or an unknown id: a new admin
        // token, and the old one revoked.
        let replace = AdminTokenPlan::Issue {
            revoke: vec![admin.id.clone()],
        };
        assert_eq!(tokens.admin_token_plan(None, NOW), replace);
        assert_eq!(tokens.admin_token_plan(Some(&viewer.id), NOW), replace);
        assert_eq!(tokens.admin_token_plan(Some(&id(7)), NOW), replace);
        // Close to its expiry.
        let late = admin.expires_unix - ADMIN_TOKEN_RENEW_SECS;
        assert_eq!(
            tokens.admin_token_plan(Some(&admin.id), late - 1),
            AdminTokenPlan::Keep
        );
        assert_eq!(tokens.admin_token_plan(Some(&admin.id), late + 1), replace);
        // Revoked: replaced, and nothing left to revoke.
        let _ = tokens.revoke(&admin.id, NOW, Actor::Orchestrator);
        assert_eq!(
            tokens.admin_token_plan(Some(&admin.id), NOW),
            AdminTokenPlan::Issue { revoke: vec![] }
        );
    }
}
