//! Artifact digests as people and the API write them: `sha256:` and 64 lowercase hex digits.
//! The bytes and their hex are `edge_proto::digest`'s; this adds the prefix.

use edge_proto::digest::{Digest, from_lower_hex, to_hex};

/// How a digest is written for people and in the API: `sha256:` then 64 lowercase hex digits.
pub const DIGEST_PREFIX: &str = "sha256:";

/// `sha256:` and 64 lowercase hex digits.
pub fn format_digest(digest: &Digest) -> String {
    format!("{DIGEST_PREFIX}{}", to_hex(digest))
}

/// Parses `sha256:` followed by 64 lowercase hex digits (the form [`format_digest`] writes).
pub fn parse_digest(text: &str) -> Option<Digest> {
    from_lower_hex(text.strip_prefix(DIGEST_PREFIX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_text() {
        let mut d = [0u8; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b"hello").as_ref());
        let text = format_digest(&d);
        assert_eq!(
            text,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(parse_digest(&text), Some(d));
        assert_eq!(parse_digest(&text.to_uppercase()), None);
        assert_eq!(parse_digest(&text[7..]), None);
        assert_eq!(parse_digest(&text[..70]), None);
        assert_eq!(parse_digest(&format!("{}g", &text[..70])), None);
    }
}
