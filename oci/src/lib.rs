//! OCI images without a container daemon: the image layout in an archive, its blobs checked
//! against their digests, and layers unpacked into a cache where nothing they hold can reach
//! outside it.
//!
//! A shell crate over `std::fs` (no tokio): the orchestrator reads pushed archives with it and
//! the node unpacks layers with it. It decides nothing about workloads or nodes.
#![forbid(unsafe_code)]
