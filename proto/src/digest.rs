//! Artifact digests: sha256, written as 64 lowercase hex digits. Both ends name artifacts
//! this way (the orchestrator's store, the node's cache, `ArtifactRequest` on the wire), so
//! there is one writer and one reader of the form.

use alloc::string::String;

/// sha256 of an artifact's bytes.
pub type Digest = [u8; 32];

/// 64 lowercase hex digits.
pub fn to_hex(digest: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Parses exactly 64 hex digits, either case.
pub fn from_hex(text: &str) -> Option<Digest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        // Invariant: two hex digits make at most 255.
        *o = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// Parses exactly 64 lowercase hex digits: only the form [`to_hex`] writes.
pub fn from_lower_hex(text: &str) -> Option<Digest> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    from_hex(text)
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
}
