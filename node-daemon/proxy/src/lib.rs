//! The node's caching reverse proxy: the shell around `node_core::proxy`.
//!
//! - [`cache`]: the HTTP cache, in memory and on disk, as a layer in front of an origin.
//!
//! **Invariant.** It decides nothing itself: routes, backend choice, breakers, retries and
//! cache policy come from `node_core::proxy`; this crate moves bytes, reads the clock and
//! keeps files.
#![forbid(unsafe_code)]

pub mod cache;

use bytes::Bytes;

/// Why a body could not be read or written through the proxy.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and answer that passes through the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;
