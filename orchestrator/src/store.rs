//! [`SledStore`]: the core's [`Store`] on the orchestrator's disk (the CA, join tokens, API
//! tokens, the node registry and the deployments). Records are JSON so an operator can read a dump, and
//! every write that a peer will rely on is durable before it returns: a node must never hold a
//! certificate the orchestrator forgot.
//!
//! Durable means synced, and sled's `flush` alone is not: on Linux it writes its log with
//! `sync_file_range`, which neither flushes the drive's cache nor records a grown file's
//! size, and its `sync_all` comes only from a background thread every 500 ms; large items go
//! to files under `blobs/` that it never syncs, and its `conf` is written unsynced once. So
//! every write here ends in [`SledStore::durable`]: sled's flush, then one `fdatasync` of its
//! log and of any blob file not synced yet. One call per write method: a committer batch of
//! deployment effects pays for one, however many records it holds.
//!
//! Registry records carry a revision (`rev`): a write never replaces a stored record with an
//! older one, so concurrent writes of the same token or node may land in any order.
//!
//! Only this module touches sled.

use edge_proto::NodeId;
use orchestrator_core::access::ApiTokenRecord;
use orchestrator_core::deploy::DeploymentRecord;
use orchestrator_core::events::{EventRecord, MAX_EVENTS_PER_NODE, Origin, Shelf};
use orchestrator_core::fleet::NodeRecord;
use orchestrator_core::store::{DeploymentWrite, Store, StoreError, StoredSeqs};
use orchestrator_core::tokens::TokenRecord;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The store on local disk.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    tokens: sled::Tree,
    api_tokens: sled::Tree,
    nodes: sled::Tree,
    deployments: sled::Tree,
    /// Nodes' events under the node's id (16 bytes) and sequence number (8, big-endian).
    events: sled::Tree,
    /// The orchestrator's events about a node, keyed the same way in a tree of their own, so
    /// a node's sequence numbers never meet the ones the store gives these.
    orchestrator_events: sled::Tree,
    /// How many events of each node `events` holds: counted once per node, then kept as
    /// events come and go, so that storing a batch costs the batch, not the node's history.
    held: std::sync::Mutex<std::collections::HashMap<NodeId, usize>>,
    /// Nodes' load samples (statuses and metric summaries), keyed like `events` and kept
    /// apart with a bound of their own, so that weeks of samples never push events out.
    samples: sled::Tree,
    held_samples: std::sync::Mutex<std::collections::HashMap<NodeId, usize>>,
    /// Nodes' sampled proxy attempts, for training: a shelf of their own too.
    route_samples: sled::Tree,
    held_route_samples: std::sync::Mutex<std::collections::HashMap<NodeId, usize>>,
    /// sled's log (`DIR/db`), opened again to sync it: sled keeps its own handle private.
    log: File,
    /// `DIR/blobs/`, where sled puts items too large for its log, and the blob files synced
    /// so far (each is written once, under a new name, and later removed).
    blobs: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
}

/// A node's events may run this far past their shelf's bound (or a quarter of it, if less)
/// before the oldest go, so that trimming happens once per this many events rather than with
/// every batch.
const TRIM_SLACK: usize = 1_000;

impl SledStore {
    /// Opens (or creates) the store in `dir`. The directory is made private to this user: it
    /// holds the CA key.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        restrict(dir, 0o700)?;
        let db = sled::Config::new()
            .path(dir)
            // Our records are small and few; the default 1 GiB cache only invites growth.
            .cache_capacity(8 << 20)
            .open()
            .map_err(backend)?;
        for entry in std::fs::read_dir(dir).map_err(backend)? {
            let path = entry.map_err(backend)?.path();
            if path.is_file() {
                restrict(&path, 0o600)?;
                // sled wrote `conf` (and may have written `db`) without a sync; once here.
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(backend)?;
            }
        }
        sync_dir(dir)?;
        let log = File::open(dir.join("db")).map_err(backend)?;
        let store = Self {
            meta: db.open_tree("meta").map_err(backend)?,
            tokens: db.open_tree("tokens").map_err(backend)?,
            api_tokens: db.open_tree("api_tokens").map_err(backend)?,
            nodes: db.open_tree("nodes").map_err(backend)?,
            deployments: db.open_tree("deployments").map_err(backend)?,
            events: db.open_tree("events").map_err(backend)?,
            orchestrator_events: db.open_tree("orchestrator_events").map_err(backend)?,
            held: std::sync::Mutex::default(),
            samples: db.open_tree("node_samples").map_err(backend)?,
            held_samples: std::sync::Mutex::default(),
            route_samples: db.open_tree("route_samples").map_err(backend)?,
            held_route_samples: std::sync::Mutex::default(),
            db,
            log,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        };
        store.durable()?;
        Ok(store)
    }

    /// Makes every write so far durable: sled's flush, then one `fdatasync` of its log, and
    /// of each blob file sled wrote since the last call (rare: items over a quarter of a
    /// segment), with the blob directory synced when one was added.
    fn durable(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        self.log.sync_data().map_err(backend)?;
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut added = false;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(backend(e)),
        };
        for entry in entries {
            let name = entry.map_err(backend)?.file_name();
            if !synced.contains(&name) {
                File::open(self.blobs.join(&name))
                    .and_then(|f| f.sync_data())
                    .map_err(backend)?;
                added = true;
            }
            present.insert(name);
        }
        if added {
            sync_dir(&self.blobs)?;
        }
        *synced = present;
        Ok(())
    }

    /// Writes `value` under `key` unless the stored record has a newer `rev`, durably.
    fn put_newer<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
        rev: u64,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(backend)?;
        tree.fetch_and_update(key, |old| match old {
            Some(old) if stored_rev(old) > rev => Some(old.to_vec()),
            _ => Some(bytes.clone()),
        })
        .map_err(backend)?;
        self.durable()?;
        Ok(())
    }
}

/// The `rev` of a stored registry record; 0 for one written before revisions existed.
fn stored_rev(bytes: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Rev {
        #[serde(default)]
        rev: u64,
    }
    serde_json::from_slice::<Rev>(bytes).map_or(0, |r| r.rev)
}

fn scan_json<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.map_err(backend)?;
            serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

impl Store for SledStore {
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value).map_err(backend)?;
        self.durable()?;
        Ok(())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        scan_json(&self.tokens)
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.put_newer(&self.tokens, token.id.as_bytes(), token, token.rev)
    }

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        scan_json(&self.api_tokens)
    }

    fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(token).map_err(backend)?;
        self.api_tokens
            .insert(token.id.as_bytes(), bytes)
            .map_err(backend)?;
        self.durable()?;
        Ok(())
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        scan_json(&self.nodes)
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.put_newer(&self.nodes, &node.id.0, node, node.rev)
    }

    fn delete_node(&self, id: NodeId) -> Result<(), StoreError> {
        self.nodes.remove(id.0).map_err(backend)?;
        self.durable()?;
        Ok(())
    }

    fn deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        scan_json(&self.deployments)
    }

    fn write_deployments(&self, writes: &[DeploymentWrite<'_>]) -> Result<(), StoreError> {
        for write in writes {
            match write {
                DeploymentWrite::Put(d) => {
                    let bytes = serde_json::to_vec(d).map_err(backend)?;
                    let name = d.name().unwrap_or_default();
                    self.deployments.insert(name, bytes).map_err(backend)?;
                }
                DeploymentWrite::Delete(name) => {
                    self.deployments.remove(name).map_err(backend)?;
                }
                DeploymentWrite::Event(e) => self.append_orchestrator_event(e)?,
            }
        }
        self.durable()?;
        Ok(())
    }

    fn put_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let (mut held, mut held_samples, mut held_route_samples) = (
            counts(&self.held),
            counts(&self.held_samples),
            counts(&self.held_route_samples),
        );
        for event in events {
            let Some(node) = NodeId::parse(&event.node) else {
                return Err(StoreError::Backend(format!("no node id: {:?}", event.node)));
            };
            let shelf = event.what.shelf();
            let (tree, held) = match shelf {
                Shelf::Events => (&self.events, &mut held),
                Shelf::Samples => (&self.samples, &mut held_samples),
                Shelf::RouteSamples => (&self.route_samples, &mut held_route_samples),
            };
            let cap = shelf.bound();
            let bytes = serde_json::to_vec(event).map_err(backend)?;
            let count = held
                .entry(node)
                .or_insert_with(|| tree.scan_prefix(node.0).keys().count());
            let before = tree
                .insert(event_key(node, event.seq), bytes)
                .map_err(backend)?;
            if before.is_none() {
                *count += 1;
            }
            if *count > cap + TRIM_SLACK.min(cap / 4) {
                *count -= trim(tree, node, *count - cap)?;
            }
        }
        drop((held, held_samples, held_route_samples));
        self.durable()?;
        Ok(())
    }

    fn events(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        let mut all = Vec::new();
        for tree in [&self.events, &self.samples, &self.orchestrator_events] {
            match node {
                Some(hex) => {
                    let Some(node) = NodeId::parse(hex) else {
                        return Ok(Vec::new());
                    };
                    for v in tree.scan_prefix(node.0).values() {
                        let event = serde_json::from_slice(&v.map_err(backend)?).map_err(|e| {
                            StoreError::Corrupt {
                                key: format!("events/{hex}"),
                                reason: e.to_string(),
                            }
                        })?;
                        all.push(event);
                    }
                }
                None => all.extend(scan_json::<EventRecord>(tree)?),
            }
        }
        Ok(all)
    }

    fn route_samples(&self, node: Option<&str>) -> Result<Vec<EventRecord>, StoreError> {
        let Some(hex) = node else {
            return scan_json(&self.route_samples);
        };
        let Some(node) = NodeId::parse(hex) else {
            return Ok(Vec::new());
        };
        self.route_samples
            .scan_prefix(node.0)
            .values()
            .map(|v| {
                serde_json::from_slice(&v.map_err(backend)?).map_err(|e| StoreError::Corrupt {
                    key: format!("route_samples/{hex}"),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn node_event_seqs(
        &self,
        node: NodeId,
        from: u64,
        limit: usize,
    ) -> Result<StoredSeqs, StoreError> {
        let seq_of = |key: sled::IVec| {
            <[u8; 8]>::try_from(key.get(16..).unwrap_or_default())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: format!("events/{node}"),
                    reason: "a key of the wrong length".into(),
                })
        };
        let mut from_keys = Vec::new();
        let mut highest = None;
        for tree in [&self.events, &self.samples, &self.route_samples] {
            for key in tree
                .range(event_key(node, from)..=event_key(node, u64::MAX))
                .keys()
                .take(limit)
            {
                from_keys.push(seq_of(key.map_err(backend)?)?);
            }
            if let Some(key) = tree.scan_prefix(node.0).keys().next_back() {
                highest = highest.max(Some(seq_of(key.map_err(backend)?)?));
            }
        }
        from_keys.sort_unstable();
        from_keys.truncate(limit);
        Ok(StoredSeqs {
            from: from_keys,
            highest,
        })
    }
}

impl SledStore {
    /// Stores an orchestrator's event about its node under the next number of that node's
    /// series (unflushed: the batch it is part of flushes once).
    fn append_orchestrator_event(&self, e: &EventRecord) -> Result<(), StoreError> {
        let Some(node) = NodeId::parse(&e.node) else {
            return Err(StoreError::Backend(format!("no node id: {:?}", e.node)));
        };
        let last = self
            .orchestrator_events
            .scan_prefix(node.0)
            .keys()
            .next_back()
            .transpose()
            .map_err(backend)?;
        let seq = last
            .and_then(|k| <[u8; 8]>::try_from(k.get(16..)?).ok())
            .map_or(1, |b| u64::from_be_bytes(b).saturating_add(1));
        let mut event = e.clone();
        event.seq = seq;
        event.origin = Origin::Orchestrator;
        let bytes = serde_json::to_vec(&event).map_err(backend)?;
        self.orchestrator_events
            .insert(event_key(node, seq), bytes)
            .map_err(backend)?;
        // Rare (a replacement, a reconcile): counting them each time is cheap enough.
        let held = self.orchestrator_events.scan_prefix(node.0).keys().count();
        trim(
            &self.orchestrator_events,
            node,
            held.saturating_sub(MAX_EVENTS_PER_NODE),
        )
        .map(drop)
    }
}

/// A lock on the counts of events per node. A holder that panicked leaves a count off by at
/// most its batch, which only moves when the oldest are trimmed: taken as it is.
fn counts(
    m: &std::sync::Mutex<std::collections::HashMap<NodeId, usize>>,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, usize>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops `node`'s `over` oldest events in `tree`; returns how many went.
fn trim(tree: &sled::Tree, node: NodeId, over: usize) -> Result<usize, StoreError> {
    let oldest: Vec<sled::IVec> = tree
        .scan_prefix(node.0)
        .keys()
        .take(over)
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for key in &oldest {
        tree.remove(key).map_err(backend)?;
    }
    Ok(oldest.len())
}

/// An event's key: the node's id, then its sequence number big-endian, so that a node's
/// events sort by sequence number.
fn event_key(node: NodeId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&node.0);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Makes the names in `dir` durable (a new file, a removal).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::store::MemStore;

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

    /// Two enrollments spend a token's uses one after the other; their writes may land in
    /// either order, and the store keeps the later version.
    #[test]
    fn an_older_record_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let sled = SledStore::open(dir.path()).expect("open");
        let mem = MemStore::default();
        for store in [&sled as &dyn Store, &mem] {
            store.put_token(&token(0, 7)).expect("put");
            store.put_token(&token(1, 6)).expect("put");
            assert_eq!(store.tokens().expect("read")[0].uses_left, 0);
            store.put_token(&token(5, 9)).expect("put");
            assert_eq!(store.tokens().expect("read")[0].uses_left, 5);
        }
        drop(sled);
        let reopened = reopen(dir.path());
        assert_eq!(reopened.tokens().expect("read")[0].rev, 9);
    }

    /// Opens the store again once the previous handle's last background thread has let go
    /// of sled's file lock (it does so just after the handle is dropped).
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(e) if e.to_string().contains("WouldBlock") => {
                    assert!(std::time::Instant::now() < deadline, "still locked: {e}");
                    std::thread::yield_now();
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    fn node_event(node: NodeId, seq: u64) -> EventRecord {
        EventRecord {
            node: node.to_string(),
            seq,
            at_ms: seq,
            received_ms: seq,
            origin: Origin::Node,
            what: orchestrator_core::events::What::Gap {
                last: seq,
                count: 1,
                last_at_ms: seq,
            },
        }
    }

    /// Sampled proxy attempts sit on a shelf of their own: bounded by theirs, never listed
    /// among the node's events nor pushing them out, and still known to the sync at
    /// reconnect, so that a node does not send them again.
    #[test]
    fn sampled_attempts_are_kept_apart_within_their_own_bound() {
        use orchestrator_core::events::{MAX_ROUTE_SAMPLES_PER_NODE, What};
        let dir = tempfile::tempdir().expect("tmp");
        let store = SledStore::open(dir.path()).expect("open");
        let node = NodeId([6; 16]);
        let hex = node.to_string();
        store
            .put_events(&[node_event(node, 1), node_event(node, 2)])
            .expect("events");
        let window = |seq: u64| EventRecord {
            what: What::RouteSamples {
                window_secs: 60,
                attempts: seq,
                samples: Vec::new(),
            },
            ..node_event(node, seq)
        };
        let total = 3 * MAX_ROUTE_SAMPLES_PER_NODE as u64;
        let windows: Vec<EventRecord> = (3..3 + total).map(window).collect();
        for batch in windows.chunks(64) {
            store.put_events(batch).expect("put");
        }
        let kept = store.route_samples(Some(&hex)).expect("read");
        assert!(
            (MAX_ROUTE_SAMPLES_PER_NODE..=MAX_ROUTE_SAMPLES_PER_NODE * 5 / 4).contains(&kept.len()),
            "{} kept",
            kept.len()
        );
        assert_eq!(
            kept.last().map(|e| e.seq),
            Some(2 + total),
            "the newest stay"
        );
        assert_eq!(store.route_samples(None).expect("all").len(), kept.len());
        let events = store.events(Some(&hex)).expect("events");
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2],
            "the node's events, untouched and alone"
        );
        let seqs = store.node_event_seqs(node, 0, 10).expect("seqs");
        assert_eq!(seqs.highest, Some(2 + total));
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.route_samples(Some(&hex)).expect("read").len(),
            kept.len()
        );
    }

    /// A node's oldest events go once it has sent well past the most kept, the newest stay,
    /// each once; a batch sent again adds nothing, and a reopened store counts them afresh.
    #[test]
    fn a_node_keeps_its_newest_events_within_the_bound() {
        let dir = tempfile::tempdir().expect("tmp");
        let node = NodeId([5; 16]);
        let held = |store: &SledStore| -> Vec<u64> {
            store
                .events(Some(&node.to_string()))
                .expect("read")
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        let total = MAX_EVENTS_PER_NODE + TRIM_SLACK + 500;
        {
            let store = SledStore::open(dir.path()).expect("open");
            let batch: Vec<EventRecord> = (1..=128).map(|seq| node_event(node, seq)).collect();
            store.put_events(&batch).expect("put");
            store.put_events(&batch).expect("again");
            assert_eq!(held(&store).len(), 128, "a batch sent twice is stored once");
        }
        let store = reopen(dir.path());
        let all: Vec<EventRecord> = (1..=total as u64)
            .map(|seq| node_event(node, seq))
            .collect();
        for batch in all.chunks(128) {
            store.put_events(batch).expect("put");
        }
        let seqs = held(&store);
        assert!(
            seqs.len() >= MAX_EVENTS_PER_NODE && seqs.len() <= MAX_EVENTS_PER_NODE + TRIM_SLACK,
            "{} held",
            seqs.len()
        );
        let newest: Vec<u64> = ((total + 1 - seqs.len()) as u64..=total as u64).collect();
        assert_eq!(seqs, newest, "the newest, in order, each once");
    }

    /// The orchestrator's events about a node are numbered in a series of their own: a node's
    /// outbox numbers (the same ones again, too) never overwrite them, nor they the node's.
    #[test]
    fn orchestrator_events_never_share_a_key_with_a_node_s() {
        use orchestrator_core::events::{What, orchestrator_event};
        let dir = tempfile::tempdir().expect("tmp");
        let sled = SledStore::open(dir.path()).expect("open");
        let mem = MemStore::default();
        let node = NodeId([3; 16]);
        let replaced = orchestrator_event(
            node,
            5,
            What::Replaced {
                workload: "web".into(),
                generation: 1,
                replacement: NodeId([4; 16]).to_string(),
                replacement_name: "b".into(),
                offline_secs: 60,
            },
        );
        for store in [&sled as &dyn Store, &mem] {
            store
                .put_events(&[node_event(node, 1), node_event(node, 2)])
                .expect("put");
            store
                .write_deployments(&[
                    DeploymentWrite::Event(&replaced),
                    DeploymentWrite::Event(&replaced),
                ])
                .expect("write");
            store.put_events(&[node_event(node, 1)]).expect("again");
            let mut got: Vec<(Origin, u64)> = store
                .events(Some(&node.to_string()))
                .expect("read")
                .iter()
                .map(|e| (e.origin, e.seq))
                .collect();
            got.sort();
            assert_eq!(
                got,
                [
                    (Origin::Node, 1),
                    (Origin::Node, 2),
                    (Origin::Orchestrator, 1),
                    (Origin::Orchestrator, 2)
                ]
            );
            assert_eq!(store.events(None).expect("all").len(), 4);
            assert!(
                store
                    .events(Some(&NodeId([9; 16]).to_string()))
                    .expect("none")
                    .is_empty()
            );
        }
        drop(sled);
        let reopened = reopen(dir.path());
        reopened
            .write_deployments(&[DeploymentWrite::Event(&replaced)])
            .expect("write");
        let last = reopened
            .events(Some(&node.to_string()))
            .expect("read")
            .iter()
            .filter(|e| e.origin == Origin::Orchestrator)
            .map(|e| e.seq)
            .max();
        assert_eq!(last, Some(3), "numbering goes on after a restart");
    }

    /// sled writes an item too large for its log to a file of its own and never syncs it:
    /// the store syncs each such file once, and forgets it once sled removed it.
    #[test]
    fn a_large_item_sled_keeps_in_a_blob_file_is_synced() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SledStore::open(dir.path()).expect("open");
        let large = vec![b'x'; 300 << 10];
        store.put_meta("large", &large).expect("put");
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .expect("sled made its blob directory")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(!blobs.is_empty(), "a 300 KiB item is a blob");
        let synced = store.synced_blobs.lock().expect("lock").clone();
        assert!(
            blobs.iter().all(|b| synced.contains(b)),
            "{blobs:?} {synced:?}"
        );
        store.put_meta("large", b"small").expect("put");
        drop(store);
        let reopened = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.meta("large").expect("read").as_deref(),
            Some(&b"small"[..])
        );
    }
}
