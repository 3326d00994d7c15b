//! The registry handle: the core's [`Fleet`] behind a lock, the fleet CA, and the store the
//! registry's records go to. The QUIC server (enrollment, sessions) and the API (nodes,
//! tokens) share it.
//!
//! Every change made here is persisted before the call returns; changes the session machine
//! decides come back as [`Change`]s that the caller hands to [`Registry::persist`] in order.

use crate::pki::{Ca, PkiError};
use edge_proto::NodeId;
use orchestrator_core::events::EventRecord;
use orchestrator_core::fleet::{Change, Fleet, NodeRecord};
use orchestrator_core::store::{Store, StoreError, StoredSeqs};
use orchestrator_core::tokens::{self, TokenRecord};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

const META_CA_CERT: &str = "ca.crt";
const META_CA_KEY: &str = "ca.key";

/// Why the registry could not be opened. Ours, never a peer's.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored CA is unusable, or a new one could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Nodes, join tokens, live sessions and the CA.
pub struct Registry {
    store: Arc<dyn Store>,
    ca: Ca,
    fleet: Mutex<Fleet>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ca", &self.ca.hash())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Loads the CA and the registry from `store`, making a CA on first start. Every node
    /// starts offline.
    pub fn open(store: Arc<dyn Store>) -> Result<Self, OpenError> {
        Self::open_with(store, crate::pki::NODE_CERT_VALIDITY)
    }

    /// [`Registry::open`], signing node certificates valid for `node_cert_validity`.
    pub fn open_with(
        store: Arc<dyn Store>,
        node_cert_validity: std::time::Duration,
    ) -> Result<Self, OpenError> {
        let ca = match (store.meta(META_CA_CERT)?, store.meta(META_CA_KEY)?) {
            (Some(cert), Some(key)) => Ca::from_pem(
                &String::from_utf8_lossy(&cert),
                &String::from_utf8_lossy(&key),
            )?,
            _ => {
                let ca = Ca::generate(SystemTime::now())?;
                store.put_meta(META_CA_KEY, ca.key_pem().as_bytes())?;
                store.put_meta(META_CA_CERT, ca.cert_pem().as_bytes())?;
                tracing::info!(ca_hash = %ca.hash(), "created the fleet CA");
                ca
            }
        };
        let ca = ca.with_node_validity(node_cert_validity);
        let fleet = Fleet::new(store.tokens()?, store.nodes()?);
        Ok(Self {
            store,
            ca,
            fleet: Mutex::new(fleet),
        })
    }

    /// The fleet CA: signs node certificates and the server's own.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The registry. Never hold the guard across an await.
    pub fn fleet(&self) -> MutexGuard<'_, Fleet> {
        // A panic while holding the lock leaves the registry as consistent as the last
        // completed call; carry on rather than take the whole server down.
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node's record and whether it has a live session.
    pub fn node(&self, id: NodeId) -> Option<(NodeRecord, bool)> {
        let fleet = self.fleet();
        fleet.node(id).map(|r| (r.clone(), fleet.is_online(id)))
    }

    /// Writes a registry change to the store. Blocking: it ends in a flush.
    /// Stores nodes' events (see `orchestrator_core::events`); durable when it returns.
    pub fn put_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        self.store.put_events(events)
    }

    /// Which of `node`'s outbox sequence numbers are stored from `from` on (at most
    /// `limit`), and the highest: for the sync when its session opens.
    pub fn node_event_seqs(
        &self,
        node: NodeId,
        from: u64,
        limit: usize,
    ) -> Result<StoredSeqs, StoreError> {
        self.store.node_event_seqs(node, from, limit)
    }

    /// The stored events of `node` (hex id) or of every node.
    pub fn events(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        self.store.events(node)
    }

    pub fn persist(&self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Token(t) => self.store.put_token(t),
            Change::Node(n) => self.store.put_node(n),
            Change::NodeDeleted(id) => self.store.delete_node(*id),
        }
    }

    /// Makes and stores a join token; returns the token text (shown once) and its record.
    /// Blocking.
    pub fn create_token(
        &self,
        ttl_secs: u64,
        uses: u32,
        description: String,
    ) -> Result<(String, TokenRecord), StoreError> {
        let rng = ring::rand::SystemRandom::new();
        let mut fill = |buf: &mut [u8]| {
            // The OS RNG failing is not something to recover from.
            ring::rand::SecureRandom::fill(&rng, buf).expect("the OS random source works");
        };
        let now = crate::clock::now_unix();
        let (text, record) = tokens::create(&mut fill, now, ttl_secs, uses, description);
        self.store.put_token(&record)?;
        self.fleet().add_token(record.clone());
        Ok((text, record))
    }
}
