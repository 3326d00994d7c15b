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
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

const META_CA_CERT: &str = "ca.crt";
const META_CA_KEY: &str = "ca.key";
/// The CA being rotated to, empty when none: see [`Registry::rotate_ca`].
const META_NEXT_CERT: &str = "ca.next.crt";
const META_NEXT_KEY: &str = "ca.next.key";
/// The nodes moved onto the next CA, one hex id a line.
const META_NEXT_MOVED: &str = "ca.next.moved";
/// `done` from the moment the next CA starts to replace the current one until it has: a
/// start that finds it finishes the copy (two meta writes cannot be one).
const META_ROTATION: &str = "ca.rotation";

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
    cas: RwLock<Authority>,
    /// The QUIC endpoint whose TLS follows the CAs, once the server has one.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    fleet: Mutex<Fleet>,
}

/// The fleet's CAs: the current one and, during a rotation, the next.
///
/// **Rotation.** `next` signs every node certificate from the start of the rotation
/// (renewals, and a new certificate pushed to each node for the key its session proved),
/// with both CAs as the node's trust. The server's client verifier takes certificates of
/// both; its own certificate stays on `current`, which every node trusts, until every node
/// in the registry has been moved. Then `next` becomes `current` and the old CA is dropped:
/// the server's certificate and its client roots are the new CA's alone.
#[derive(Debug)]
struct Authority {
    current: Arc<Ca>,
    next: Option<Arc<Ca>>,
    /// Nodes given a certificate of `next` (or seen presenting one).
    moved: BTreeSet<NodeId>,
}

/// Where a CA rotation stands, for the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// The CA nodes pin and the server presents.
    pub ca_hash: String,
    /// The CA being rotated to, `None` when no rotation is under way.
    pub next_ca_hash: Option<String>,
    /// Names of the nodes still to be moved onto the next CA (offline ones move when they
    /// return; deleting a node also stops it holding the rotation up).
    pub waiting_for: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ca", &self.ca().hash())
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
        let stored = |cert: &str, key: &str| -> Result<Option<Ca>, OpenError> {
            match (store.meta(cert)?, store.meta(key)?) {
                (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => Ok(Some(Ca::from_pem(
                    &String::from_utf8_lossy(&c),
                    &String::from_utf8_lossy(&k),
                )?)),
                _ => Ok(None),
            }
        };
        // A rotation that was finishing when the process stopped: finish it.
        if store.meta(META_ROTATION)?.as_deref() == Some(b"done".as_slice())
            && let Some(next) = stored(META_NEXT_CERT, META_NEXT_KEY)?
        {
            finish_in_store(store.as_ref(), &next)?;
        }
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
        let next = stored(META_NEXT_CERT, META_NEXT_KEY)?
            .map(|next| Arc::new(next.with_node_validity(node_cert_validity)));
        let moved = match (&next, store.meta(META_NEXT_MOVED)?) {
            (Some(_), Some(list)) => String::from_utf8_lossy(&list)
                .lines()
                .filter_map(NodeId::parse)
                .collect(),
            _ => BTreeSet::new(),
        };
        let fleet = Fleet::new(store.tokens()?, store.nodes()?);
        Ok(Self {
            store,
            cas: RwLock::new(Authority {
                current: Arc::new(ca),
                next,
                moved,
            }),
            endpoint: Mutex::new(None),
            fleet: Mutex::new(fleet),
        })
    }

    fn cas(&self) -> std::sync::RwLockReadGuard<'_, Authority> {
        // Every write leaves the CAs whole (they are swapped, never edited in place).
        self.cas.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The fleet CA: the one nodes pin, which signs the server's certificate and
    /// enrollments (a node enrolled during a rotation is moved at its first session).
    pub fn ca(&self) -> Arc<Ca> {
        self.cas().current.clone()
    }

    /// The CA that signs renewals: the next one during a rotation.
    pub fn signer(&self) -> Arc<Ca> {
        let cas = self.cas();
        cas.next.clone().unwrap_or_else(|| cas.current.clone())
    }

    /// What a node renewed now must trust: the signer first, then the other CA.
    pub fn trust(&self) -> Vec<Vec<u8>> {
        let cas = self.cas();
        match &cas.next {
            Some(next) => vec![next.cert_der().to_vec(), cas.current.cert_der().to_vec()],
            None => vec![cas.current.cert_der().to_vec()],
        }
    }

    /// The QUIC server's TLS for the CAs as they are now.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, crate::server::EndpointError> {
        let cas = self.cas();
        let roots: Vec<&Ca> = std::iter::once(cas.current.as_ref())
            .chain(cas.next.as_deref())
            .collect();
        crate::server::server_config_for(&cas.current, &roots)
    }

    /// Hands the registry the endpoint whose TLS it keeps up with the CAs.
    pub fn attach_endpoint(&self, endpoint: quinn::Endpoint) {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
    }

    fn refresh_tls(&self) {
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(endpoint) = endpoint {
            match self.server_config() {
                Ok(config) => endpoint.set_server_config(Some(config)),
                Err(error) => tracing::error!(%error, "could not rebuild the server's TLS"),
            }
        }
    }

    /// Where a CA rotation stands.
    pub fn rotation(&self) -> Rotation {
        let cas = self.cas();
        let fleet = self.fleet();
        let waiting_for = match &cas.next {
            Some(_) => fleet
                .nodes()
                .filter(|n| !cas.moved.contains(&n.id))
                .map(|n| n.name.clone())
                .collect(),
            None => Vec::new(),
        };
        Rotation {
            ca_hash: cas.current.hash(),
            next_ca_hash: cas.next.as_ref().map(|n| n.hash()),
            waiting_for,
        }
    }

    /// Starts rotating to a new CA, unless a rotation is under way. Blocking: it writes to
    /// the store. The caller then moves the nodes that are online ([`Registry::move_node`]).
    pub fn rotate_ca(&self) -> Result<Rotation, OpenError> {
        {
            let mut cas = self.cas.write().unwrap_or_else(|e| e.into_inner());
            if cas.next.is_none() {
                let next = Ca::generate_successor(SystemTime::now())?
                    .with_node_validity(cas.current.node_validity());
                self.store.put_meta(META_NEXT_MOVED, b"")?;
                self.store
                    .put_meta(META_NEXT_KEY, next.key_pem().as_bytes())?;
                self.store
                    .put_meta(META_NEXT_CERT, next.cert_pem().as_bytes())?;
                tracing::info!(from = %cas.current.hash(), to = %next.hash(), "CA rotation started");
                cas.next = Some(Arc::new(next));
                cas.moved.clear();
            }
        }
        self.refresh_tls();
        self.finish_if_done()?;
        Ok(self.rotation())
    }

    /// Whether a node presenting `cert_der` must be moved onto the next CA.
    pub fn needs_move(&self, cert_der: &[u8]) -> bool {
        self.cas()
            .next
            .as_ref()
            .is_some_and(|next| !next.issued(cert_der))
    }

    /// `node` holds a certificate of the next CA (sent, or presented); once every node does,
    /// the rotation finishes. Blocking: it writes to the store.
    pub fn moved(&self, node: NodeId) -> Result<(), OpenError> {
        {
            let mut cas = self.cas.write().unwrap_or_else(|e| e.into_inner());
            if cas.next.is_none() || !cas.moved.insert(node) {
                return Ok(());
            }
            let list: String = cas.moved.iter().map(|id| format!("{id}\n")).collect();
            self.store.put_meta(META_NEXT_MOVED, list.as_bytes())?;
        }
        self.finish_if_done()
    }

    /// Finishes the rotation once every node in the registry holds a certificate of the next
    /// CA: the server's certificate moves to it and the old CA is dropped.
    pub fn finish_if_done(&self) -> Result<(), OpenError> {
        let done = {
            let cas = self.cas();
            let fleet = self.fleet();
            cas.next.is_some() && fleet.nodes().all(|n| cas.moved.contains(&n.id))
        };
        if !done {
            return Ok(());
        }
        {
            let mut cas = self.cas.write().unwrap_or_else(|e| e.into_inner());
            let Some(next) = cas.next.take() else {
                return Ok(());
            };
            finish_in_store(self.store.as_ref(), &next)?;
            tracing::info!(from = %cas.current.hash(), to = %next.hash(),
                "CA rotation finished: the server presents the new CA, the old one is dropped");
            cas.current = next;
            cas.moved.clear();
        }
        self.refresh_tls();
        Ok(())
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

    /// The stored windows of sampled proxy attempts of `node` (hex id), or of every node.
    pub fn route_samples(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        self.store.route_samples(node)
    }

    pub fn persist(&self, change: &Change) -> Result<(), StoreError> {
        if let Change::NodeDeleted(_) = change {
            // A deleted node no longer holds a rotation up.
            let _ = self.finish_if_done();
        }
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

/// Makes `next` the stored CA: marked first, so that a stop between the writes is finished
/// at the next start.
fn finish_in_store(store: &dyn Store, next: &Ca) -> Result<(), StoreError> {
    store.put_meta(META_ROTATION, b"done")?;
    store.put_meta(META_CA_KEY, next.key_pem().as_bytes())?;
    store.put_meta(META_CA_CERT, next.cert_pem().as_bytes())?;
    store.put_meta(META_NEXT_CERT, b"")?;
    store.put_meta(META_NEXT_KEY, b"")?;
    store.put_meta(META_NEXT_MOVED, b"")?;
    store.put_meta(META_ROTATION, b"")
}
