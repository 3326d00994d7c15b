//! Join tokens: `ID.SECRET`, like kubeadm's bootstrap tokens.
//!
//! The ID (6 characters) finds the record; the SECRET (32 characters) proves the holder got it
//! from an operator. Only sha256 of the secret is stored. A token expires and has a number of
//! uses. This module is pure: it takes `now` and never touches the store.

use serde::{Deserialize, Serialize};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const ID_LEN: usize = 6;
pub const SECRET_LEN: usize = 32;

/// A stored join token. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex sha256 of the secret.
    pub secret_sha256: String,
    pub created_unix: u64,
    pub expires_unix: u64,
    pub uses_left: u32,
    pub description: String,
    /// The registry's revision when this version was made (see `NodeRecord::rev`).
    #[serde(default)]
    pub rev: u64,
}

/// Why a token was not accepted. Each maps to a wire [`edge_proto::RejectCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `ID.SECRET` of the right lengths and alphabet.
    #[error("token is not of the form ID.SECRET")]
    Malformed,
    /// No token with this ID, or the secret does not match.
    #[error("unknown token or wrong secret")]
    Bad,
    #[error("token expired")]
    Expired,
    #[error("token has no uses left")]
    Spent,
}

impl TokenError {
    pub fn reject_code(self) -> edge_proto::RejectCode {
        use edge_proto::RejectCode as C;
        match self {
            Self::Malformed | Self::Bad => C::BadToken,
            Self::Expired => C::TokenExpired,
            Self::Spent => C::TokenSpent,
        }
    }
}

/// Makes a new token. Returns the text to hand to the operator (shown once) and the record.
pub fn create(
    rng: &mut dyn FnMut(&mut [u8]),
    now_unix: u64,
    ttl_secs: u64,
    uses: u32,
    description: String,
) -> (String, TokenRecord) {
    let id = random_word(rng, ID_LEN);
    let secret = random_word(rng, SECRET_LEN);
    let record = TokenRecord {
        secret_sha256: sha256_hex(secret.as_bytes()),
        created_unix: now_unix,
        expires_unix: now_unix.saturating_add(ttl_secs),
        uses_left: uses,
        description,
        id: id.clone(),
        rev: 0,
    };
    (format!("{id}.{secret}"), record)
}

/// Splits `ID.SECRET`, checking lengths and alphabet.
pub fn parse(token: &str) -> Result<(&str, &str), TokenError> {
    let (id, secret) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    if ok(id, ID_LEN) && ok(secret, SECRET_LEN) {
        Ok((id, secret))
    } else {
        Err(TokenError::Malformed)
    }
}

impl TokenRecord {
    /// Checks `secret` and spends one use. On error the record is unchanged.
    pub fn redeem(&mut self, secret: &str, now_unix: u64) -> Result<(), TokenError> {
        let given = sha256_hex(secret.as_bytes());
        if !constant_time_eq(given.as_bytes(), self.secret_sha256.as_bytes()) {
            return Err(TokenError::Bad);
        }
        if now_unix >= self.expires_unix {
            return Err(TokenError::Expired);
        }
        if self.uses_left == 0 {
            return Err(TokenError::Spent);
        }
        self.uses_left -= 1;
        Ok(())
    }
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_word(rng: &mut dyn FnMut(&mut [u8]), len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rng(&mut bytes);
    // 256 is not a multiple of 36, so this leans slightly towards the first 4 letters; a
    // 32-character secret keeps over 160 bits of entropy regardless.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Lowercase hex of sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    edge_proto::digest::encode_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> impl FnMut(&mut [u8]) {
        let mut r = fastrand::Rng::with_seed(7);
        move |buf: &mut [u8]| r.fill(buf)
    }

    #[test]
    fn a_token_is_spent_by_its_uses_and_expires() {
        let (text, mut rec) = create(&mut rng(), 1000, 60, 2, String::new());
        let (id, secret) = parse(&text).expect("we made it");
        assert_eq!(id, rec.id);
        assert!(!rec.secret_sha256.contains(secret));
        assert_eq!(rec.redeem(secret, 1001), Ok(()));
        assert_eq!(rec.redeem(secret, 1002), Ok(()));
        assert_eq!(rec.redeem(secret, 1003), Err(TokenError::Spent));
        let (text, mut rec) = create(&mut rng(), 1000, 60, 5, String::new());
        let (_, secret) = parse(&text).expect("we made it");
        assert_eq!(rec.redeem(secret, 1060), Err(TokenError::Expired));
        assert_eq!(rec.uses_left, 5, "a refused redeem spends nothing");
        assert_eq!(
            rec.redeem(&"a".repeat(SECRET_LEN), 1001),
            Err(TokenError::Bad)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            ".",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef0123456789abcdef",
            "abcde.0123456789abcdef0123456789abcdef",
            "abcdef.0123456789abcdef0123456789abcdef0",
            "abcdef.0123456789abcdef0123456789abcde\u{e9}",
            "abcdef.0123456789abcdef.123456789abcdef",
        ] {
            assert_eq!(parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }
}
