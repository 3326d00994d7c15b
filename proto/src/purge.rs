//! Purging a node's proxy cache: what the orchestrator asks for on an
//! `OrchStreamOpen::Purge` stream, and the node's one answer.
//!
//! Field and variant order is the wire format: append only, and pin every variant in
//! `tests/wire.rs`.

use crate::bounded::Str;
use crate::msg::Expose;
use serde::{Deserialize, Serialize};

/// What to remove from a node's proxy cache. The orchestrator checks both forms by
/// `field`'s rules before it sends them; the node's cache matches nothing for a value it
/// cannot read as a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeRequest {
    /// Every stored variant of one target: a host (lower case; an IPv6 address in
    /// brackets, as a `Host` header carries it) and a path with its query.
    Key {
        host: Str<{ Expose::MAX_HOST_LEN }>,
        path_and_query: Str<{ PurgeRequest::MAX_PATH_AND_QUERY_BYTES }>,
    },
    /// Every target whose path and query start with `path_prefix`, on `host` or, without
    /// one, on every host.
    Prefix {
        host: Option<Str<{ Expose::MAX_HOST_LEN }>>,
        path_prefix: Str<{ Expose::MAX_PATH_PREFIX_BYTES }>,
    },
}

impl PurgeRequest {
    /// The longest path and query a key purge names: the longest target the node's cache
    /// stores under a key.
    pub const MAX_PATH_AND_QUERY_BYTES: usize = 8 * 1024;
}

/// The node's answer on a purge stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeReply {
    /// Done: this many stored responses were removed (0 when nothing matched).
    Purged { count: u64 },
    /// The node runs no proxy (its config has no `[proxy]` table), so it has no cache.
    NoCache,
}
