//! Content addresses: the `sha256:<hex>` digests that name every blob of an image, and the
//! readers and writers that compute one while bytes stream past.
//!
//! This module only hashes and parses. It must never accept a digest it cannot verify:
//! algorithms other than sha256 are refused as unsupported rather than trusted unchecked.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// A sha256 content address: the digest of a blob's bytes exactly as stored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

/// Why a string is not a digest this crate can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix: an OCI digest always names its algorithm.
    #[error("digest {digest:?} has no algorithm prefix (expected sha256:<64 hex>)")]
    MissingAlgorithm {
        /// The offending text, truncated.
        digest: String,
    },
    /// A well-formed digest of another algorithm (sha512, blake3, ...): nothing here can
    /// verify it, so it is refused rather than taken on trust.
    #[error("unsupported digest algorithm {algorithm:?} (only sha256 is supported)")]
    UnsupportedAlgorithm {
        /// The algorithm named, truncated.
        algorithm: String,
    },
    /// `sha256:` followed by something other than 64 lowercase hex digits.
    #[error("digest {digest:?} is not sha256:<64 lowercase hex>")]
    Malformed {
        /// The offending text, truncated.
        digest: String,
    },
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`, the only form the OCI spec allows for sha256.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some((algorithm, encoded)) = text.split_once(':') else {
            return Err(DigestError::MissingAlgorithm {
                digest: crate::shown(text),
            });
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: crate::shown(algorithm),
            });
        }
        Self::from_hex(encoded).ok_or_else(|| DigestError::Malformed {
            digest: crate::shown(text),
        })
    }

    /// The digest whose hex form is `hex` (64 lowercase hex digits), as in a blob's file
    /// name `blobs/sha256/<hex>`; `None` for anything else.
    /// Uppercase hex is refused: the spec's grammar for sha256 is lowercase, and two
    /// spellings of one digest would make two names for one blob.
    pub fn from_hex(hex: &str) -> Option<Self> {
        edge_proto::digest::from_lower_hex(hex).map(Self)
    }

    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_ring(ring::digest::digest(&SHA256, bytes))
    }

    /// The 64 lowercase hex digits, as used for a blob's file name.
    pub fn hex(&self) -> String {
        edge_proto::digest::to_hex(&self.0)
    }

    fn from_ring(digest: ring::digest::Digest) -> Self {
        let mut out = [0u8; 32];
        // A SHA256 context always yields 32 bytes.
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A running sha256 and byte count.
struct Tally {
    context: Context,
    bytes: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            context: Context::new(&SHA256),
            bytes: 0,
        }
    }

    fn add(&mut self, data: &[u8]) {
        self.context.update(data);
        self.bytes += data.len() as u64;
    }

    fn finish(self) -> (Digest, u64) {
        (Digest::from_ring(self.context.finish()), self.bytes)
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    tally: Tally,
}

impl<R> HashingReader<R> {
    /// Hashes what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            tally: Tally::new(),
        }
    }

    /// Bytes read so far.
    pub fn byte_count(&self) -> u64 {
        self.tally.bytes
    }

    /// The digest and length of everything read, and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        let (digest, bytes) = self.tally.finish();
        (digest, bytes, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }
}

impl<R> fmt::Debug for HashingReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashingReader")
            .field("bytes", &self.tally.bytes)
            .finish_non_exhaustive()
    }
}

/// A writer that hashes and counts every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    tally: Tally,
}

impl<W> HashingWriter<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            tally: Tally::new(),
        }
    }

    /// Bytes written so far.
    pub fn byte_count(&self) -> u64 {
        self.tally.bytes
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        let (digest, bytes) = self.tally.finish();
        (digest, bytes, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Only what the inner writer accepted is part of the stream.
        let n = self.inner.write(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashingWriter")
            .field("bytes", &self.tally.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips_the_empty_digest() {
        let digest = Digest::parse(EMPTY).expect("a valid digest");
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(format!("{digest:?}"), EMPTY);
    }

    #[test]
    fn refuses_other_forms() {
        assert!(matches!(
            Digest::parse(&EMPTY.to_uppercase().replace("SHA256", "sha256")),
            Err(DigestError::Malformed { .. })
        ));
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse(&EMPTY[7..]),
            Err(DigestError::MissingAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse(&EMPTY[..70]),
            Err(DigestError::Malformed { .. })
        ));
    }

    #[test]
    fn adapters_hash_and_count() {
        let mut reader = HashingReader::new(&b"hello world"[..]);
        let mut sink = Vec::new();
        io::copy(&mut reader, &mut sink).expect("reading a slice");
        let (digest, bytes, _) = reader.finish();
        assert_eq!((digest, bytes), (Digest::of(b"hello world"), 11));

        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello world").expect("writing a vec");
        let (digest, bytes, out) = writer.finish();
        assert_eq!(
            (digest, bytes, out.as_slice()),
            (Digest::of(b"hello world"), 11, &b"hello world"[..])
        );
    }
}
