//! OCI images without a container daemon: the image layout in an archive, its blobs checked
//! against their digests, and layers unpacked into a cache where nothing they hold can reach
//! outside it.
//!
//! A shell crate over `std::fs` (no tokio): the orchestrator reads pushed archives with it
//! ([`archive::import`]) and the node unpacks layers ([`layer::unpack`]) and builds a root
//! filesystem from them ([`rootfs::assemble`]). It decides nothing about workloads or nodes.
//!
//! **Invariants.** Nothing it unpacks or assembles is written outside the destination it was
//! given; it never follows a symlink an image supplied (it creates them, never resolves
//! them); it never holds an image in memory (blobs stream to disk while hashed, only JSON
//! documents under a size limit are read whole); and every byte it keeps was checked against
//! a digest. Layers are checked by one checker ([`layer`]) whether they are only scanned (on
//! import) or unpacked (on the node), so the two can never disagree about what is hostile.
#![forbid(unsafe_code)]

pub mod archive;
pub mod build;
pub mod digest;
mod entries;
pub mod image;
pub mod layer;
mod partial;
mod path;
pub mod rootfs;

pub use archive::{ImportError, Imported, Limits, import};
pub use digest::{Digest, DigestError};
pub use image::{Compression, arch_name};
pub use layer::{LayerError, LayerLimits, LayerSummary, UnpackOptions, scan, unpack};
pub use rootfs::{Files, RootfsError, RootfsSummary, assemble, assemble_with};

/// Longest peer-supplied text quoted in an error, in characters.
const SHOWN_CHARS: usize = 200;

/// Peer-supplied text as quoted in an error: truncated so that a hostile name cannot make a
/// log line or an API response arbitrarily large.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Peer-supplied bytes (a tar entry name) as quoted in an error: lossy UTF-8, truncated.
pub(crate) fn shown_bytes(bytes: &[u8]) -> String {
    shown(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_long_names_truncated() {
        let long = "é".repeat(500);
        let quoted = super::shown(&long);
        assert_eq!(quoted.chars().count(), super::SHOWN_CHARS + 3);
        assert_eq!(super::shown("etc/passwd"), "etc/passwd");
    }
}
