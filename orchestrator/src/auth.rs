//! Operator API tokens: HS256 JWTs with a role and an id (`jti`), signed with a secret that
//! lives in the store, and checked against the tokens on record on every request.
//!
//! The secret is made once, on first start, and kept in store meta key `api.secret`, so tokens
//! survive a restart. Every token issued has a record in the store
//! (`orchestrator_core::access`): a token is good while its record is there, unexpired and not
//! revoked, so `DELETE /v1/api-tokens/{id}` takes effect on the next request and after a
//! restart. The token text is never stored. Replacing the secret (delete the meta key) still
//! revokes every token at once.
//!
//! The admin token lives in `DATA_DIR/admin.token` (mode 0600): [`admin_token_at_start`] keeps
//! the one there while it is good, and otherwise issues a new one and revokes the others, so
//! removing the file rotates it. Only the convenience wrappers read the clock; the `_at`
//! variants take `now`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orchestrator_core::access::{
    self, Actor, AdminTokenPlan, ApiTokenRecord, ApiTokens, IssueError, Refused, Revocation,
    RevokeError,
};
use orchestrator_core::session::unix_secs;
use orchestrator_core::store::{MemStore, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

pub use orchestrator_core::access::Role;

/// The store meta key that holds the signing secret.
pub const SECRET_META_KEY: &str = "api.secret";
const SECRET_LEN: usize = 32;
/// The file in the data dir that `edge-orchestrator serve` writes the admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// How long the admin token is good for; it is replaced at a start when less than
/// [`access::ADMIN_TOKEN_RENEW_SECS`] is left.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(access::ADMIN_TOKEN_TTL_SECS);
/// The most of `admin.token` read: a token is a few hundred bytes.
const ADMIN_TOKEN_MAX_BYTES: u64 = 8 * 1024;

/// The claims an API token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to, e.g. `admin` or `ci`.
    pub sub: String,
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The token's id: its record in the store. Empty in tokens issued before ids existed,
    /// which are therefore not on record.
    #[serde(default)]
    pub jti: String,
}

/// Why a bearer token was refused. Every variant is the caller's fault and maps to 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or an empty token.
    #[error("missing bearer token")]
    Missing,
    /// Not `Bearer <jwt>`, not a JWT, not HS256, or claims we do not understand.
    #[error("malformed bearer token")]
    Malformed,
    /// A well-formed token that this orchestrator did not sign.
    #[error("bearer token signature is not valid")]
    BadSignature,
    /// Signed by us, but expired, revoked or not on record.
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueFailed {
    /// The request broke a rule (a role too high, a bad subject): 400.
    #[error(transparent)]
    Refused(#[from] IssueError),
    /// The record could not be stored; nothing was issued. May be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a token was not revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeFailed {
    /// No such token (404), or one the caller may not revoke (403).
    #[error(transparent)]
    Refused(#[from] RevokeError),
    /// The revocation is in effect but could not be stored; it may not survive a restart.
    /// Retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token just issued: its text, shown once, and its record.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub record: ApiTokenRecord,
}

/// Issues, checks and revokes API tokens.
pub struct ApiAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Where token records go; written before a token is handed out or a revocation answered.
    store: Arc<dyn Store>,
    tokens: Mutex<ApiTokens>,
}

impl fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("ApiAuth").finish_non_exhaustive()
    }
}

impl ApiAuth {
    /// Loads the signing secret and the tokens on record from `store`, making and storing a
    /// random secret on first start.
    pub fn load_or_create(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let secret = match store.meta(SECRET_META_KEY)? {
            Some(secret) if secret.len() != SECRET_LEN => {
                return Err(StoreError::Corrupt {
                    key: SECRET_META_KEY.to_owned(),
                    reason: format!("{} bytes, expected {SECRET_LEN}", secret.len()),
                });
            }
            Some(secret) => secret,
            None => {
                let mut secret = vec![0u8; SECRET_LEN];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| StoreError::Backend("the OS random source failed".into()))?;
                store.put_meta(SECRET_META_KEY, &secret)?;
                tracing::info!("created the API token signing secret");
                secret
            }
        };
        let tokens = ApiTokens::new(store.api_tokens()?);
        Ok(Self::with_store(&secret, store, tokens))
    }

    /// An authority with a given secret and its records in memory. For tests and tools; the
    /// server uses [`ApiAuth::load_or_create`].
    pub fn from_secret(secret: &[u8]) -> Self {
        Self::with_store(secret, Arc::new(MemStore::default()), ApiTokens::default())
    }

    fn with_store(secret: &[u8], store: Arc<dyn Store>, tokens: ApiTokens) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked by us against the caller's `now`, without leeway.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            store,
            tokens: Mutex::new(tokens),
        }
    }

    fn tokens(&self) -> MutexGuard<'_, ApiTokens> {
        // The registry is changed only by whole-value operations that cannot panic halfway.
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for `sub` with `role`, good for `ttl` from now, issued by the orchestrator
    /// itself (no role limit). Blocking: it stores the record.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> Result<Issued, IssueFailed> {
        self.issue_at(sub, role, SystemTime::now(), ttl)
    }

    /// [`ApiAuth::issue`] as of `now`.
    pub fn issue_at(
        &self,
        sub: &str,
        role: Role,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Issued, IssueFailed> {
        self.issue_as(Actor::Orchestrator, sub, role, now, ttl)
    }

    /// A token a caller of the API asked for: the core's rules decide whether `issuer` may
    /// have it. Blocking: the record is stored before the token exists.
    pub fn issue_as(
        &self,
        issuer: Actor<'_>,
        sub: &str,
        role: Role,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Issued, IssueFailed> {
        let now_unix = unix_secs(now);
        let record =
            self.tokens()
                .prepare(random_id()?, role, sub, issuer, now_unix, ttl.as_secs())?;
        self.store.put_api_token(&record)?;
        let claims = Claims {
            sub: record.subject.clone(),
            role: record.role,
            iat: record.issued_unix,
            exp: record.expires_unix,
            jti: record.id.clone(),
        };
        // Invariant: HMAC signing of a plain struct cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of our claims cannot fail");
        self.tokens().insert(record.clone());
        Ok(Issued { token, record })
    }

    /// Checks a token (the JWT text, without the `Bearer ` prefix) against the clock.
    pub fn verify(&self, bearer: &str) -> Result<Claims, AuthError> {
        self.verify_at(bearer, SystemTime::now())
    }

    /// Checks a token as of `now`: our signature, then its record (on file, unexpired, not
    /// revoked). The role is the record's.
    pub fn verify_at(&self, bearer: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let mut claims = self.signed_claims(bearer)?;
        let now_unix = unix_secs(now);
        if now_unix >= claims.exp {
            return Err(Refused::Expired.into());
        }
        claims.role = self.tokens().check(&claims.jti, now_unix)?.role;
        Ok(claims)
    }

    /// The claims of a token this orchestrator signed, whatever its record says.
    fn signed_claims(&self, bearer: &str) -> Result<Claims, AuthError> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })
    }

    /// Revokes the token with id `id` as of `now`, if `by` may: in effect at once, and
    /// stored before this returns. Blocking.
    pub fn revoke(
        &self,
        by: Actor<'_>,
        id: &str,
        now: SystemTime,
    ) -> Result<ApiTokenRecord, RevokeFailed> {
        let revocation = self.tokens().revoke(id, unix_secs(now), by)?;
        match revocation {
            Revocation::Already(record) => Ok(record),
            Revocation::Revoked(record) => {
                self.store.put_api_token(&record)?;
                Ok(record)
            }
        }
    }

    /// Every token on record, by id.
    pub fn records(&self) -> Vec<ApiTokenRecord> {
        self.tokens().iter().cloned().collect()
    }
}

/// Why the admin token could not be made ready at start.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("issuing the admin token: {0}")]
    Issue(#[from] IssueFailed),
    #[error("revoking the old admin token: {0}")]
    Revoke(#[from] RevokeFailed),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The admin token at start: the one in `DATA_DIR/admin.token` while it is on record, not
/// revoked and good for a while yet; otherwise a new one, with every other admin token
/// revoked. Either way the file ends up with mode 0600. Returns the token and the
/// file's path. Blocking.
pub fn admin_token_at_start(
    auth: &ApiAuth,
    data_dir: &Path,
) -> Result<(String, PathBuf), AdminTokenError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let file_error = |source| AdminTokenError::File {
        path: path.clone(),
        source,
    };
    let in_file = read_admin_token(&path).map_err(file_error)?;
    let claims = in_file.as_deref().and_then(|t| auth.signed_claims(t).ok());
    let now = SystemTime::now();
    let plan = auth
        .tokens()
        .admin_token_plan(claims.as_ref().map(|c| c.jti.as_str()), unix_secs(now));
    let revoke = match (plan, in_file) {
        // `Keep` names the token the file holds, so there is one. The file stays; only its
        // mode is made right, in case someone loosened it.
        (AdminTokenPlan::Keep, Some(token)) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(file_error)?;
            return Ok((token, path));
        }
        (AdminTokenPlan::Keep, None) => Vec::new(),
        (AdminTokenPlan::Issue { revoke }, _) => revoke,
    };
    // The new token is on record before the old ones are revoked, and those are revoked
    // before the file names the new one: a crash in between leaves a good token in the
    // file, or a revoked one that the next start replaces.
    let issued = auth.issue_at(access::ADMIN_SUBJECT, Role::Admin, now, ADMIN_TOKEN_TTL)?;
    for id in &revoke {
        auth.revoke(Actor::Orchestrator, id, now)?;
    }
    tracing::info!(
        token_id = %issued.record.id,
        revoked = revoke.len(),
        "issued a new admin API token"
    );
    let token = issued.token;
    write_admin_token(data_dir, &token).map_err(file_error)?;
    Ok((token, path))
}

/// The token in `path`, if the file exists and holds one.
fn read_admin_token(path: &Path) -> io::Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    if file
        .take(ADMIN_TOKEN_MAX_BYTES)
        .read_to_string(&mut text)
        .is_err()
    {
        // Not text: not a token of ours.
        return Ok(None);
    }
    let token = text.trim();
    Ok((!token.is_empty()).then(|| token.to_owned()))
}

/// A fresh token id: [`access::TOKEN_ID_BYTES`] random bytes as hex.
fn random_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; access::TOKEN_ID_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| StoreError::Backend("the OS random source failed".into()))?;
    Ok(edge_proto::digest::encode_hex(&bytes))
}

/// The token in an `Authorization` header value: `Bearer <token>` (the scheme is
/// case-insensitive, as HTTP says).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Writes `token` to `DATA_DIR/admin.token`, readable by this user only. The token goes to a
/// temporary file first and is renamed into place, so a crash never leaves half a token.
pub fn write_admin_token(data_dir: &Path, token: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let tmp = data_dir.join(format!("{ADMIN_TOKEN_FILE}.tmp"));
    // A leftover from a crash may have other permissions; `mode` applies only on creation.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    // Make the rename itself durable.
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(auth: &ApiAuth, sub: &str, role: Role, now: SystemTime, secs: u64) -> String {
        auth.issue_at(sub, role, now, Duration::from_secs(secs))
            .expect("issue")
            .token
    }

    #[test]
    fn a_token_round_trips_and_expires() {
        let auth = ApiAuth::from_secret(&[7; 32]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = issue(&auth, "ci", Role::Viewer, now, 60);
        let claims = auth.verify_at(&token, now).expect("fresh token");
        assert_eq!(claims.sub, "ci");
        assert_eq!(claims.role, Role::Viewer);
        assert_eq!(claims.exp, claims.iat + 60);
        assert_eq!(claims.jti.len(), 32, "{claims:?}");
        assert_eq!(
            auth.verify_at(&token, now + Duration::from_secs(60)),
            Err(Refused::Expired.into())
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let auth = ApiAuth::from_secret(&[7; 32]);
        let other = ApiAuth::from_secret(&[8; 32]);
        let token = issue(&other, "x", Role::Admin, SystemTime::now(), 60);
        assert_eq!(auth.verify(&token), Err(AuthError::BadSignature));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert_eq!(auth.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(auth.verify("a.b.c"), Err(AuthError::Malformed));
        // alg "none" with our claims.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MDAwMDAwMDAwLCJpYXQiOjB9.";
        assert_eq!(auth.verify(none), Err(AuthError::Malformed));
    }

    /// A token signed with our secret but without a record (one from before tokens had ids)
    /// is refused: only tokens on record can be listed and revoked.
    #[test]
    fn a_signed_token_off_the_record_is_refused() {
        let auth = ApiAuth::from_secret(&[7; 32]);
        let claims = Claims {
            sub: "admin".into(),
            role: Role::Admin,
            iat: 0,
            exp: u64::MAX,
            jti: String::new(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7; 32]),
        )
        .expect("sign");
        assert_eq!(auth.verify(&token), Err(Refused::Unknown.into()));
    }

    #[test]
    fn a_revoked_token_is_refused_at_once_and_after_a_reload() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let auth = ApiAuth::load_or_create(store.clone()).expect("create");
        let token = issue(&auth, "ci", Role::Operator, SystemTime::now(), 600);
        let id = auth.verify(&token).expect("good").jti;
        let record = auth
            .revoke(Actor::Orchestrator, &id, SystemTime::now())
            .expect("on record, and stored");
        assert!(record.revoked_unix.is_some());
        assert_eq!(auth.verify(&token), Err(Refused::Revoked.into()));
        let again = ApiAuth::load_or_create(store).expect("load");
        assert_eq!(again.verify(&token), Err(Refused::Revoked.into()));
        assert!(matches!(
            again.revoke(Actor::Orchestrator, "nope", SystemTime::now()),
            Err(RevokeFailed::Refused(RevokeError::Unknown))
        ));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("abc")), Err(AuthError::Malformed));
    }

    #[test]
    fn the_secret_and_the_records_are_kept_in_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let first = ApiAuth::load_or_create(store.clone()).expect("create");
        let token = issue(&first, "admin", Role::Admin, SystemTime::now(), 60);
        let again = ApiAuth::load_or_create(store.clone()).expect("load");
        assert_eq!(again.verify(&token).map(|c| c.role), Ok(Role::Admin));
        assert_eq!(again.records().len(), 1);
        store.put_meta(SECRET_META_KEY, b"short").expect("put");
        assert!(matches!(
            ApiAuth::load_or_create(store),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
