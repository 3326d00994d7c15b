//! Digests and hex: sha256 as both ends write it, and the one hex codec of the crate.
//!
//! Artifacts are named by their sha256 as 64 lowercase hex digits (the orchestrator's store, the
//! node's cache, `ArtifactRequest` on the wire), and people see digests and pins as
//! `sha256:` and those digits (`edgectl artifact push`, a join file's `ca_hash`). Node ids are 32
//! hex digits. There is one writer and one reader of each form, here.

use alloc::string::String;
use core::fmt;

/// sha256 of an artifact's bytes, or of a certificate's DER.
pub type Digest = [u8; 32];

/// How a digest is written for people: this, then 64 hex digits.
pub const SHA256_PREFIX: &str = "sha256:";

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hex, two digits a byte, written straight into a formatter.
#[derive(Debug, Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for b in self.0 {
            f.write_char(char::from(HEX_DIGITS[usize::from(b >> 4)]))?;
            f.write_char(char::from(HEX_DIGITS[usize::from(b & 0xf)]))?;
        }
        Ok(())
    }
}

/// `bytes` as lowercase hex, two digits a byte.
pub fn encode_hex(bytes: &[u8]) -> String {
    alloc::format!("{}", Hex(bytes))
}

/// Parses exactly `2 * N` hex digits, either case, into `N` bytes.
pub fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        // Invariant: two hex digits make at most 255.
        *o = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// 64 lowercase hex digits.
pub fn to_hex(digest: &Digest) -> String {
    encode_hex(digest)
}

/// Parses exactly 64 hex digits, either case.
pub fn from_hex(text: &str) -> Option<Digest> {
    decode_hex(text)
}

/// Parses exactly 64 lowercase hex digits: only the form [`to_hex`] writes.
pub fn from_lower_hex(text: &str) -> Option<Digest> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    from_hex(text)
}

/// `sha256:` and 64 lowercase hex digits.
pub fn to_prefixed(digest: &Digest) -> String {
    alloc::format!("{SHA256_PREFIX}{}", Hex(digest))
}

/// Parses `sha256:` and 64 hex digits of either case: a pin or digest as a person may have
/// copied it.
pub fn from_prefixed(text: &str) -> Option<Digest> {
    from_hex(text.strip_prefix(SHA256_PREFIX)?)
}

/// Parses `sha256:` and 64 lowercase hex digits: only the form [`to_prefixed`] writes.
pub fn from_lower_prefixed(text: &str) -> Option<Digest> {
    from_lower_hex(text.strip_prefix(SHA256_PREFIX)?)
}

/// sha256 of `bytes`, e.g. of a certificate's DER.
#[cfg(feature = "quic")]
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// sha256 and length of everything `reader` yields, read in pieces of 64 KiB: a Pi Zero has
/// little memory to spare. Blocking.
#[cfg(feature = "quic")]
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<(Digest, u64)> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = alloc::vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        context.update(&buf[..n]);
        len += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    Ok((out, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_hex_digests() {
        let d: Digest = core::array::from_fn(|i| i as u8 * 7);
        let name = to_hex(&d);
        assert_eq!(from_lower_hex(&name), Some(d));
        assert_eq!(from_lower_hex(&name.to_uppercase()), None);
        assert_eq!(from_hex(&name.to_uppercase()), Some(d));
        assert_eq!(from_lower_hex(&name[1..]), None);
        assert_eq!(
            from_lower_hex(&alloc::format!("{}.part", &name[..59])),
            None
        );
        assert_eq!(from_hex("é"), None);
    }

    #[test]
    fn hex_of_any_length_round_trips() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode_hex(&bytes), "000fa5ff");
        assert_eq!(alloc::format!("{}", Hex(&bytes)), "000fa5ff");
        assert_eq!(decode_hex::<4>("000FA5ff"), Some(bytes));
        assert_eq!(decode_hex::<4>("000fa5f"), None);
        assert_eq!(decode_hex::<4>("000fa5fff"), None);
        assert_eq!(decode_hex::<2>("0g00"), None);
        assert_eq!(decode_hex::<1>("é"), None);
        assert_eq!(encode_hex(&[]), "");
        assert_eq!(decode_hex::<0>(""), Some([]));
    }

    #[cfg(feature = "quic")]
    #[test]
    fn sha256_of_bytes() {
        assert_eq!(
            to_hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_reader(&b"hello"[..]).expect("read"),
            (sha256(b"hello"), 5)
        );
    }

    #[test]
    fn prefixed_digests() {
        let d: Digest = core::array::from_fn(|i| i as u8);
        let text = to_prefixed(&d);
        assert!(text.starts_with("sha256:000102"), "{text}");
        assert_eq!(text.len(), SHA256_PREFIX.len() + 64);
        assert_eq!(from_lower_prefixed(&text), Some(d));
        assert_eq!(
            from_prefixed(&text.to_uppercase().replace("SHA256", "sha256")),
            Some(d)
        );
        assert_eq!(
            from_lower_prefixed(&text.to_uppercase().replace("SHA256", "sha256")),
            None
        );
        assert_eq!(from_prefixed(&text[SHA256_PREFIX.len()..]), None);
        assert_eq!(from_prefixed(&text.replace("sha256:", "sha1:")), None);
        assert_eq!(from_prefixed(&alloc::format!("{text}0")), None);
    }
}
