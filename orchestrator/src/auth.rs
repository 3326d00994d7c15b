//! Operator API tokens: HS256 JWTs with a role, signed with a secret that lives in the store.
//!
//! The secret is made once, on first start, and kept in store meta key `api.secret`, so tokens
//! survive a restart. There is no revocation list: a token is good until it expires, and
//! replacing the secret (delete the meta key) revokes every token at once. This module never
//! reads the clock except in the convenience wrappers [`ApiAuth::issue`] and
//! [`ApiAuth::verify`]; the `_at` variants take `now`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orchestrator_core::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The store meta key that holds the signing secret.
pub const SECRET_META_KEY: &str = "api.secret";
const SECRET_LEN: usize = 32;
/// The file in the data dir that `edge-orchestrator serve` writes the admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// How long the admin token written at start-up is good for. It is re-issued on every start.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);

/// What a token may do. Ordered: `Admin > Operator > Viewer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything except join tokens.
    Viewer,
    /// Changes workloads.
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
    /// Signed by us, but past its expiry.
    #[error("bearer token expired")]
    Expired,
}

/// Issues and checks API tokens.
pub struct ApiAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("ApiAuth").finish_non_exhaustive()
    }
}

impl ApiAuth {
    /// Loads the signing secret from `store`, making and storing a random one on first start.
    pub fn load_or_create(store: &dyn Store) -> Result<Self, StoreError> {
        if let Some(secret) = store.meta(SECRET_META_KEY)? {
            if secret.len() != SECRET_LEN {
                return Err(StoreError::Corrupt {
                    key: SECRET_META_KEY.to_owned(),
                    reason: format!("{} bytes, expected {SECRET_LEN}", secret.len()),
                });
            }
            return Ok(Self::from_secret(&secret));
        }
        let mut secret = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| StoreError::Backend("the OS random source failed".into()))?;
        store.put_meta(SECRET_META_KEY, &secret)?;
        tracing::info!("created the API token signing secret");
        Ok(Self::from_secret(&secret))
    }

    /// An authority with a given secret. For tests and tools; the server uses
    /// [`ApiAuth::load_or_create`].
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked by us against the caller's `now`, without leeway.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `sub` with `role`, good for `ttl` from now.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> String {
        self.issue_at(sub, role, SystemTime::now(), ttl)
    }

    /// A token for `sub` with `role`, issued at `now`, good for `ttl`.
    pub fn issue_at(&self, sub: &str, role: Role, now: SystemTime, ttl: Duration) -> String {
        let iat = unix_secs(now);
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        };
        // Invariant: HMAC signing of a plain struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of our claims cannot fail")
    }

    /// Checks a token (the JWT text, without the `Bearer ` prefix) against the clock.
    pub fn verify(&self, bearer: &str) -> Result<Claims, AuthError> {
        self.verify_at(bearer, SystemTime::now())
    }

    /// Checks a token as of `now`.
    pub fn verify_at(&self, bearer: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?;
        if unix_secs(now) >= data.claims.exp {
            return Err(AuthError::Expired);
        }
        Ok(data.claims)
    }
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

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::store::MemStore;

    #[test]
    fn a_token_round_trips_and_expires() {
        let auth = ApiAuth::from_secret(&[7; 32]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = auth.issue_at("ci", Role::Viewer, now, Duration::from_secs(60));
        let claims = auth.verify_at(&token, now).expect("fresh token");
        assert_eq!(claims.sub, "ci");
        assert_eq!(claims.role, Role::Viewer);
        assert_eq!(claims.exp, claims.iat + 60);
        assert_eq!(
            auth.verify_at(&token, now + Duration::from_secs(60)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let auth = ApiAuth::from_secret(&[7; 32]);
        let other = ApiAuth::from_secret(&[8; 32]);
        let token = other.issue("x", Role::Admin, Duration::from_secs(60));
        assert_eq!(auth.verify(&token), Err(AuthError::BadSignature));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert_eq!(auth.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(auth.verify("a.b.c"), Err(AuthError::Malformed));
        // alg "none" with our claims.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiZXhwIjo0MDAwMDAwMDAwLCJpYXQiOjB9.";
        assert_eq!(auth.verify(none), Err(AuthError::Malformed));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
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
    fn the_secret_is_kept_in_the_store() {
        let store = MemStore::default();
        let first = ApiAuth::load_or_create(&store).expect("create");
        let token = first.issue("admin", Role::Admin, Duration::from_secs(60));
        let again = ApiAuth::load_or_create(&store).expect("load");
        assert_eq!(again.verify(&token).map(|c| c.role), Ok(Role::Admin));
        store.put_meta(SECRET_META_KEY, b"short").expect("put");
        assert!(matches!(
            ApiAuth::load_or_create(&store),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
