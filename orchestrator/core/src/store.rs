//! Durable state behind one trait: the CA, join tokens, API tokens, the node registry and the
//! deployments.
//!
//! The shell's `SledStore` keeps them on the orchestrator's disk; [`MemStore`] is for the
//! simulation and unit tests. A distributed backend will implement the same trait. Every
//! write that a peer will rely on must be durable before it returns: a node must never hold a
//! certificate the orchestrator forgot.
//!
//! Registry records carry a revision (`rev`): a write never replaces a stored record with an
//! older one, so concurrent writes of the same token or node may land in any order.

use crate::access::ApiTokenRecord;
use crate::deploy::DeploymentRecord;
use crate::events::{EventRecord, MAX_EVENTS_PER_NODE, Origin, Shelf};
use crate::fleet::NodeRecord;
use crate::tokens::TokenRecord;
use edge_proto::NodeId;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why the store failed. Never the peer's fault; the operation may be retried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored record does not decode: written by something else, or damaged.
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What the orchestrator keeps across restarts.
pub trait Store: Send + Sync + 'static {
    /// A small named value: the CA certificate and key, the API signing secret.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// The operator API's tokens on record (never their text). A write replaces the record
    /// with the same id and is durable when it returns: a revocation must survive a crash.
    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
    fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    fn delete_node(&self, id: NodeId) -> Result<(), StoreError>;

    fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Applies the writes in order and makes them durable together: one flush for the batch.
    /// An [`DeploymentWrite::Event`] is numbered here, next in its node's
    /// [`Origin::Orchestrator`] series (its `seq` is ignored), at most
    /// [`MAX_EVENTS_PER_NODE`](crate::events::MAX_EVENTS_PER_NODE) kept per node.
    fn write_deployments(&self, writes: &[DeploymentWrite<'_>]) -> Result<(), StoreError>;

    /// Stores nodes' outbox events under node and sequence number (the same one again
    /// changes nothing), durable when it returns, keeping at most
    /// [`MAX_EVENTS_PER_NODE`](crate::events::MAX_EVENTS_PER_NODE) per node, the lowest
    /// sequence numbers going first. The orchestrator's own events are kept apart (see
    /// [`Store::write_deployments`]): a node's numbers never overwrite them.
    fn put_events(&self, events: &[EventRecord]) -> Result<(), StoreError>;
    /// The stored events of `node` (hex id), or of every node, of both origins, but for the
    /// sampled proxy attempts ([`Store::route_samples`]).
    fn events(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError>;
    /// The stored windows of sampled proxy attempts ([`Shelf::RouteSamples`]) of `node` (hex
    /// id), or of every node.
    fn route_samples(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError>;
    /// Which of `node`'s outbox sequence numbers the store holds from `from` on (an event's,
    /// a gap's first), ascending, at most `limit` of them, and the highest it holds: what a
    /// sync at reconnect asks (see [`crate::sync`]).
    fn node_event_seqs(
        &self,
        node: NodeId,
        from: u64,
        limit: usize,
    ) -> Result<StoredSeqs, StoreError>;
}

/// The answer of [`Store::node_event_seqs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSeqs {
    pub from: Vec<u64>,
    pub highest: Option<u64>,
}

/// One change to the stored deployments, or an event the same decision made.
#[derive(Debug, Clone, Copy)]
pub enum DeploymentWrite<'a> {
    Put(&'a DeploymentRecord),
    Delete(&'a str),
    /// An event of [`Origin::Orchestrator`], stored with the deployments it explains.
    Event(&'a EventRecord),
}

/// A store in memory, for simulations and unit tests.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    meta: BTreeMap<String, Vec<u8>>,
    tokens: BTreeMap<String, TokenRecord>,
    api_tokens: BTreeMap<String, ApiTokenRecord>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    deployments: BTreeMap<String, DeploymentRecord>,
    events: BTreeMap<(String, u64), EventRecord>,
    samples: BTreeMap<(String, u64), EventRecord>,
    route_samples: BTreeMap<(String, u64), EventRecord>,
    orchestrator_events: BTreeMap<(String, u64), EventRecord>,
}

/// Inserts `event` under its node and `seq`, then drops the node's oldest beyond `cap`.
fn insert_bounded(map: &mut BTreeMap<(String, u64), EventRecord>, event: EventRecord, cap: usize) {
    let node = event.node.clone();
    map.insert((node.clone(), event.seq), event);
    let held: Vec<u64> = map
        .range((node.clone(), 0)..=(node.clone(), u64::MAX))
        .map(|((_, seq), _)| *seq)
        .collect();
    for seq in held.iter().take(held.len().saturating_sub(cap)) {
        map.remove(&(node.clone(), *seq));
    }
}

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        // A panic while holding this lock already failed the test that caused it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().meta.get(key).cloned())
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock().meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.lock().tokens.values().cloned().collect())
    }
    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .tokens
            .get(&token.id)
            .is_none_or(|t| t.rev <= token.rev)
        {
            inner.tokens.insert(token.id.clone(), token.clone());
        }
        Ok(())
    }
    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        Ok(self.lock().api_tokens.values().cloned().collect())
    }
    fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        self.lock()
            .api_tokens
            .insert(token.id.clone(), token.clone());
        Ok(())
    }
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.lock().nodes.values().cloned().collect())
    }
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.nodes.get(&node.id).is_none_or(|n| n.rev <= node.rev) {
            inner.nodes.insert(node.id, node.clone());
        }
        Ok(())
    }
    fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        self.lock().nodes.remove(&id);
        Ok(())
    }
    fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        Ok(self.lock().deployments.values().cloned().collect())
    }
    fn write_deployments(&self, writes: &[DeploymentWrite<'_>]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for write in writes {
            match write {
                DeploymentWrite::Put(d) => {
                    let name = d.name().unwrap_or_default().to_owned();
                    inner.deployments.insert(name, (*d).clone());
                }
                DeploymentWrite::Delete(name) => {
                    inner.deployments.remove(*name);
                }
                DeploymentWrite::Event(e) => {
                    let mut event = (*e).clone();
                    event.origin = Origin::Orchestrator;
                    event.seq = inner
                        .orchestrator_events
                        .range((e.node.clone(), 0)..=(e.node.clone(), u64::MAX))
                        .next_back()
                        .map_or(1, |((_, seq), _)| seq.saturating_add(1));
                    insert_bounded(&mut inner.orchestrator_events, event, MAX_EVENTS_PER_NODE);
                }
            }
        }
        Ok(())
    }
    fn put_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for event in events {
            let shelf = event.what.shelf();
            let map = match shelf {
                Shelf::Events => &mut inner.events,
                Shelf::Samples => &mut inner.samples,
                Shelf::RouteSamples => &mut inner.route_samples,
            };
            insert_bounded(map, event.clone(), shelf.bound());
        }
        Ok(())
    }
    fn events(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .events
            .values()
            .chain(inner.samples.values())
            .chain(inner.orchestrator_events.values())
            .filter(|e| node.is_none_or(|n| e.node == n))
            .cloned()
            .collect())
    }
    fn route_samples(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .route_samples
            .values()
            .filter(|e| node.is_none_or(|n| e.node == n))
            .cloned()
            .collect())
    }
    fn node_event_seqs(
        &self,
        node: NodeId,
        from: u64,
        limit: usize,
    ) -> Result<StoredSeqs, StoreError> {
        let inner = self.lock();
        let hex = node.to_string();
        let range = (hex.clone(), 0)..=(hex, u64::MAX);
        let held = || {
            inner
                .events
                .range(range.clone())
                .chain(inner.samples.range(range.clone()))
                .chain(inner.route_samples.range(range.clone()))
                .map(|((_, seq), _)| *seq)
        };
        let mut from_seqs: Vec<u64> = held().filter(|seq| *seq >= from).collect();
        from_seqs.sort_unstable();
        from_seqs.truncate(limit);
        Ok(StoredSeqs {
            from: from_seqs,
            highest: held().max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(uses_left: u32, rev: u64) -> TokenRecord {
        TokenRecord {
            id: "abcdef".into(),
            secret_sha256: String::new(),
            created_unix: 0,
            expires_unix: 10,
            uses_left,
            description: String::new(),
            rev,
        }
    }

    /// Writes of one record may land in any order; the store keeps the later version.
    #[test]
    fn an_older_record_never_replaces_a_newer_one() {
        let store = MemStore::default();
        store.put_token(&token(0, 7)).expect("put");
        store.put_token(&token(1, 6)).expect("put");
        assert_eq!(store.tokens().expect("read")[0].uses_left, 0);
        store.put_token(&token(5, 9)).expect("put");
        assert_eq!(store.tokens().expect("read")[0].uses_left, 5);
    }
}
