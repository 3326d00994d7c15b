//! Purging the proxy's cache when the orchestrator asks (`OrchStreamOpen::Purge`, served by
//! [`crate::streams`]).
//!
//! Only removes what the request names from this node's cache, on the blocking pool (the
//! disk store deletes files); it never touches routes, backends or anything else the proxy
//! holds. A node without `[proxy]` has no cache and says so.

use edge_proto::{PurgeReply, PurgeRequest};
use edge_proxy::cache::{Cache, Purge};
use tracing::info;

/// Why a purge has no answer to give.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The purge panicked on the blocking pool: what it removed is gone, nothing is known of
    /// the rest. Our bug; the stream is reset, so the orchestrator reports the node failed.
    #[error("the purge failed: {0}")]
    Panicked(String),
}

/// Carries out `req` on `cache` (`None`: the node runs no proxy) and says what came of it.
pub async fn purge(cache: Option<&Cache>, req: PurgeRequest) -> Result<PurgeReply, PurgeError> {
    let Some(cache) = cache.cloned() else {
        info!("cache purge asked of a node without [proxy]: nothing to purge");
        return Ok(PurgeReply::NoCache);
    };
    let target = to_cache(req);
    let (kind, host, path) = match &target {
        Purge::Key {
            host,
            path_and_query,
        } => ("key", Some(host.clone()), path_and_query.clone()),
        Purge::Prefix { host, path_prefix } => ("prefix", host.clone(), path_prefix.clone()),
    };
    let n = tokio::task::spawn_blocking(move || cache.purge(&target))
        .await
        .map_err(|e| PurgeError::Panicked(e.to_string()))?;
    info!(purged = n, kind, host = host.as_deref().unwrap_or("*"), %path, "proxy cache purged");
    Ok(PurgeReply::Purged {
        count: u64::try_from(n).unwrap_or(u64::MAX),
    })
}

/// The wire's request as the cache names the same thing.
fn to_cache(req: PurgeRequest) -> Purge {
    match req {
        PurgeRequest::Key {
            host,
            path_and_query,
        } => Purge::Key {
            host: host.into_string(),
            path_and_query: path_and_query.into_string(),
        },
        PurgeRequest::Prefix { host, path_prefix } => Purge::Prefix {
            host: host.map(|h| h.into_string()),
            path_prefix: path_prefix.into_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::Str;

    #[test]
    fn the_wire_bound_on_a_key_is_the_cache_s() {
        assert_eq!(
            PurgeRequest::MAX_PATH_AND_QUERY_BYTES,
            node_core::proxy::cache::MAX_PATH_AND_QUERY_LEN
        );
    }

    #[tokio::test]
    async fn a_node_without_a_proxy_has_no_cache() {
        let req = PurgeRequest::Prefix {
            host: None,
            path_prefix: Str::new("/").expect("fits"),
        };
        assert!(matches!(purge(None, req).await, Ok(PurgeReply::NoCache)));
    }
}
