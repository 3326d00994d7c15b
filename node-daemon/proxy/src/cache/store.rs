//! Where stored responses live: a memory tier and an optional disk tier, each bounded in
//! bytes and evicting its least recently used entries.
//!
//! **How the tiers share the work.** With a disk tier, every response stored goes to disk
//! (write-through) and into memory as well when it fits there. Memory therefore holds the
//! recently used set, disk everything, and dropping a memory copy costs nothing. A response
//! read from disk is copied into memory (promotion on every disk hit: simple, and what was
//! just read is the likeliest to be read again). An entry evicted from disk goes from memory
//! too unless memory still holds it, in which case it lives on in memory until evicted there.
//! Without a disk tier, memory is all there is.
//!
//! After a restart the disk tier's order of use starts from the files' modification times.
//!
//! One lock guards the index; file writes happen outside it, while the renames and removals
//! that change what the index describes happen under it, so the index and the directory
//! agree. Callers on the async runtime run [`Store::insert`] and [`Store::load`] on the
//! blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use node_core::proxy::cache::CacheKey;

use super::disk::{self, Dir};
use super::entry::{Entry, VariantId};

/// Variants kept per key: a response that varies on a header each client sets differently
/// (`User-Agent`) would otherwise fill the cache with one resource.
pub(crate) const MAX_VARIANTS: usize = 16;

/// What a disk file may weigh beyond its body: the metadata and the checksum.
const MAX_FILE_OVERHEAD: u64 = (1 << 20) + 64;

/// How much the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes held in memory, as the memory bound counts them.
    pub memory_bytes: u64,
    /// Bytes of the disk store's files.
    pub disk_bytes: u64,
    /// Stored responses (each variant counts), in either tier.
    pub entries: usize,
}

/// A stored response found for a key: in memory already, or to be read from disk.
pub(crate) enum Candidate {
    Memory(Arc<Entry>),
    Disk(VariantId, u64),
}

pub(crate) struct Store {
    state: Mutex<State>,
    memory_max: u64,
    disk: Option<(Dir, u64)>,
    /// The largest file read back: the largest body plus the metadata.
    max_file: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("usage", &self.usage())
            .finish()
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<CacheKey, Vec<VariantId>>,
    slots: HashMap<VariantId, Slot>,
    memory_lru: BTreeMap<u64, VariantId>,
    disk_lru: BTreeMap<u64, VariantId>,
    memory_bytes: u64,
    disk_bytes: u64,
    tick: u64,
}

struct Slot {
    key: CacheKey,
    memory: Option<InMemory>,
    disk: Option<OnDisk>,
}

struct InMemory {
    entry: Arc<Entry>,
    weight: u64,
    tick: u64,
}

struct OnDisk {
    len: u64,
    tick: u64,
    /// Which write this is: a reader that found the file bad drops it only if it is still
    /// the one it read.
    generation: u64,
}

impl Store {
    /// A store of at most `memory_max` bytes in memory and, with `disk`, at most its bytes
    /// in its directory, whose files are scanned now (bad ones removed, see [`disk`]).
    pub(crate) fn open(
        memory_max: u64,
        disk: Option<(&Path, u64)>,
        max_object_bytes: u64,
    ) -> io::Result<Self> {
        let max_file = max_object_bytes.saturating_add(MAX_FILE_OVERHEAD);
        let mut state = State::default();
        let disk = match disk {
            None => None,
            Some((path, max)) => {
                let dir = Dir::prepare(path)?;
                let mut found = dir.scan(max_file)?;
                found.sort_by_key(|f| f.modified);
                for file in found {
                    let tick = state.next_tick();
                    state.add_variant(&file.key, file.id);
                    state
                        .slots
                        .entry(file.id)
                        .or_insert_with(|| Slot {
                            key: file.key.clone(),
                            memory: None,
                            disk: None,
                        })
                        .disk = Some(OnDisk {
                        len: file.len,
                        tick,
                        generation: tick,
                    });
                    state.disk_lru.insert(tick, file.id);
                    state.disk_bytes = state.disk_bytes.saturating_add(file.len);
                }
                // A bound lowered since the last run: the oldest go.
                state.evict_disk(0, max, &dir);
                Some((dir, max))
            }
        };
        Ok(Self {
            state: Mutex::new(state),
            memory_max,
            disk,
            max_file,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored responses for `key`, most recently used first.
    pub(crate) fn candidates(&self, key: &CacheKey) -> Vec<Candidate> {
        let state = self.lock();
        let Some(ids) = state.keys.get(key) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, Candidate)> = ids
            .iter()
            .filter_map(|id| {
                let slot = state.slots.get(id)?;
                match (&slot.memory, &slot.disk) {
                    (Some(m), _) => Some((m.tick, Candidate::Memory(Arc::clone(&m.entry)))),
                    (None, Some(d)) => Some((d.tick, Candidate::Disk(*id, d.generation))),
                    (None, None) => None,
                }
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.into_iter().map(|(_, c)| c).collect()
    }

    /// The one stored response for `key`, if there is exactly one and memory holds it: what
    /// a plain request for a resource that does not vary finds.
    pub(crate) fn only_in_memory(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let state = self.lock();
        let [id] = state.keys.get(key)?.as_slice() else {
            return None;
        };
        let memory = state.slots.get(id)?.memory.as_ref()?;
        Some(Arc::clone(&memory.entry))
    }

    /// Marks `id` as just used. An entry among the most recently used quarter of each tier
    /// it is in stays where it is: moving it would change only the order of entries that
    /// are all far from eviction, and a hot entry would be moved on every request.
    pub(crate) fn touch(&self, id: &VariantId) {
        let mut state = self.lock();
        if state.recent(id) {
            return;
        }
        let tick = state.next_tick();
        let state = &mut *state;
        if let Some(slot) = state.slots.get_mut(id) {
            if let Some(m) = &mut slot.memory {
                state.memory_lru.remove(&m.tick);
                m.tick = tick;
                state.memory_lru.insert(tick, *id);
            }
            if let Some(d) = &mut slot.disk {
                state.disk_lru.remove(&d.tick);
                d.tick = tick;
                state.disk_lru.insert(tick, *id);
            }
        }
    }

    /// Reads the disk copy of `id` (of `generation`, from [`candidates`](Self::candidates))
    /// and copies it into memory. A file that fails its checks is removed. Blocking.
    pub(crate) fn load(&self, id: &VariantId, generation: u64) -> Option<Arc<Entry>> {
        let (dir, _) = self.disk.as_ref()?;
        let read = dir
            .read(id, self.max_file)
            .and_then(|bytes| disk::decode(id, bytes));
        let mut state = self.lock();
        let current = state
            .slots
            .get(id)
            .and_then(|s| s.disk.as_ref())
            .is_some_and(|d| d.generation == generation);
        match read {
            Ok(entry) => {
                let entry = Arc::new(entry);
                if current {
                    state.put_memory(*id, &entry, self.memory_max);
                }
                Some(entry)
            }
            Err(error) => {
                if current {
                    tracing::info!(%error, "cache file dropped");
                    state.drop_disk(id);
                    dir.remove(id);
                }
                None
            }
        }
    }

    /// Stores `entry`, replacing the response of the same variant: on disk if there is a
    /// disk tier and it fits, in memory if it fits. Returns whether it was stored at all.
    /// Blocking.
    pub(crate) fn insert(&self, entry: Arc<Entry>) -> bool {
        let id = entry.id();
        let written = self.disk.as_ref().and_then(|(dir, max)| {
            let bytes = disk::encode(&entry)
                .inspect_err(|error| tracing::warn!(%error, "cache entry not encoded"))
                .ok()?;
            let len = bytes.len() as u64;
            if len > *max || len > self.max_file {
                return None;
            }
            let temp = dir
                .write_temp(&id, &bytes)
                .inspect_err(|error| tracing::warn!(%error, "cache file not written"))
                .ok()?;
            Some((dir, *max, temp, len))
        });
        let mut state = self.lock();
        // The old response of this variant goes, whatever happens to the new one.
        if let Some(old) = state.remove(&id)
            && let Some((dir, _)) = &self.disk
            && old
        {
            dir.remove(&id);
        }
        let mut stored = false;
        if let Some((dir, max, temp, len)) = written {
            state.evict_disk(len, max, dir);
            match dir.commit(&temp, &id) {
                Ok(()) => {
                    state.put_disk(id, &entry.key, len);
                    stored = true;
                }
                Err(error) => tracing::warn!(%error, "cache file not renamed into place"),
            }
        }
        if state.put_memory(id, &entry, self.memory_max) {
            stored = true;
        }
        if stored {
            state.add_variant(&entry.key, id);
            while let Some(oldest) = state.oldest_variant_beyond(&entry.key, MAX_VARIANTS) {
                self.forget(&mut state, &oldest);
            }
        }
        stored
    }

    fn forget(&self, state: &mut State, id: &VariantId) {
        if state.remove(id) == Some(true)
            && let Some((dir, _)) = &self.disk
        {
            dir.remove(id);
        }
    }

    /// Removes the response `id`, if stored.
    pub(crate) fn remove_variant(&self, id: &VariantId) {
        let mut state = self.lock();
        self.forget(&mut state, id);
    }

    /// Removes every variant stored for `key`; returns how many.
    pub(crate) fn remove_key(&self, key: &CacheKey) -> usize {
        let mut state = self.lock();
        let ids = state.keys.get(key).cloned().unwrap_or_default();
        for id in &ids {
            self.forget(&mut state, id);
        }
        ids.len()
    }

    /// Removes every variant of every key under `path_prefix` (on `host`, if given);
    /// returns how many.
    pub(crate) fn remove_prefix(&self, host: Option<&str>, path_prefix: &str) -> usize {
        let mut state = self.lock();
        let ids: Vec<VariantId> = state
            .keys
            .iter()
            .filter(|(key, _)| key.is_under(host, path_prefix))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        for id in &ids {
            self.forget(&mut state, id);
        }
        ids.len()
    }

    pub(crate) fn usage(&self) -> Usage {
        let state = self.lock();
        Usage {
            memory_bytes: state.memory_bytes,
            disk_bytes: state.disk_bytes,
            entries: state.slots.len(),
        }
    }
}

impl State {
    /// Whether `id` is among the most recently used quarter of each tier that holds it: at
    /// most a quarter of a tier's entries were used since it was.
    fn recent(&self, id: &VariantId) -> bool {
        let Some(slot) = self.slots.get(id) else {
            return false;
        };
        let near_top = |tick: u64, len: usize| {
            let since = self.tick.wrapping_sub(tick);
            since < (len / 4) as u64
        };
        let memory = slot
            .memory
            .as_ref()
            .is_none_or(|m| near_top(m.tick, self.memory_lru.len()));
        let disk = slot
            .disk
            .as_ref()
            .is_none_or(|d| near_top(d.tick, self.disk_lru.len()));
        memory && disk && (slot.memory.is_some() || slot.disk.is_some())
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    fn add_variant(&mut self, key: &CacheKey, id: VariantId) {
        let ids = self.keys.entry(key.clone()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// The least recently used variant of `key` if it has more than `max`.
    fn oldest_variant_beyond(&self, key: &CacheKey, max: usize) -> Option<VariantId> {
        let ids = self.keys.get(key)?;
        if ids.len() <= max {
            return None;
        }
        ids.iter()
            .min_by_key(|id| {
                self.slots.get(*id).map_or(0, |s| {
                    let m = s.memory.as_ref().map_or(0, |m| m.tick);
                    let d = s.disk.as_ref().map_or(0, |d| d.tick);
                    m.max(d)
                })
            })
            .copied()
    }

    /// Puts a memory copy of `entry` (whose slot may exist), evicting others to make room.
    /// Returns false if it is larger than the whole tier.
    fn put_memory(&mut self, id: VariantId, entry: &Arc<Entry>, max: u64) -> bool {
        let weight = entry.weight();
        if weight > max {
            return false;
        }
        self.drop_memory(&id);
        self.evict_memory(weight, max);
        let tick = self.next_tick();
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            key: entry.key.clone(),
            memory: None,
            disk: None,
        });
        slot.memory = Some(InMemory {
            entry: Arc::clone(entry),
            weight,
            tick,
        });
        self.memory_lru.insert(tick, id);
        self.memory_bytes = self.memory_bytes.saturating_add(weight);
        self.add_variant(&entry.key, id);
        true
    }

    fn put_disk(&mut self, id: VariantId, key: &CacheKey, len: u64) {
        let tick = self.next_tick();
        let slot = self.slots.entry(id).or_insert_with(|| Slot {
            key: key.clone(),
            memory: None,
            disk: None,
        });
        slot.disk = Some(OnDisk {
            len,
            tick,
            generation: tick,
        });
        self.disk_lru.insert(tick, id);
        self.disk_bytes = self.disk_bytes.saturating_add(len);
    }

    fn drop_memory(&mut self, id: &VariantId) {
        if let Some(m) = self.slots.get_mut(id).and_then(|s| s.memory.take()) {
            self.memory_lru.remove(&m.tick);
            self.memory_bytes = self.memory_bytes.saturating_sub(m.weight);
        }
        self.forget_if_empty(id);
    }

    /// Drops the disk copy from the index (the caller removes the file).
    fn drop_disk(&mut self, id: &VariantId) {
        if let Some(d) = self.slots.get_mut(id).and_then(|s| s.disk.take()) {
            self.disk_lru.remove(&d.tick);
            self.disk_bytes = self.disk_bytes.saturating_sub(d.len);
        }
        self.forget_if_empty(id);
    }

    fn forget_if_empty(&mut self, id: &VariantId) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        if slot.memory.is_some() || slot.disk.is_some() {
            return;
        }
        let key = slot.key.clone();
        self.slots.remove(id);
        if let Some(ids) = self.keys.get_mut(&key) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.keys.remove(&key);
            }
        }
    }

    /// Removes both copies of `id` from the index; `Some(true)` if the caller must remove
    /// its file.
    fn remove(&mut self, id: &VariantId) -> Option<bool> {
        let on_disk = self.slots.get(id)?.disk.is_some();
        self.drop_memory(id);
        self.drop_disk(id);
        Some(on_disk)
    }

    fn evict_memory(&mut self, room: u64, max: u64) {
        while self.memory_bytes.saturating_add(room) > max {
            let Some((_, id)) = self.memory_lru.pop_first() else {
                break;
            };
            if let Some(m) = self.slots.get_mut(&id).and_then(|s| s.memory.take()) {
                self.memory_bytes = self.memory_bytes.saturating_sub(m.weight);
            }
            self.forget_if_empty(&id);
        }
    }

    fn evict_disk(&mut self, room: u64, max: u64, dir: &Dir) {
        while self.disk_bytes.saturating_add(room) > max {
            let Some((_, id)) = self.disk_lru.pop_first() else {
                break;
            };
            if let Some(d) = self.slots.get_mut(&id).and_then(|s| s.disk.take()) {
                self.disk_bytes = self.disk_bytes.saturating_sub(d.len);
                dir.remove(&id);
            }
            self.forget_if_empty(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use node_core::proxy::cache::admit;
    use std::time::{Duration, SystemTime};

    fn entry(path: &str, vary_value: &str, body_len: usize) -> Arc<Entry> {
        let key = CacheKey::new("example.com", path).expect("key");
        let mut response = HeaderMap::new();
        response.insert("cache-control", HeaderValue::from_static("max-age=60"));
        response.insert("vary", HeaderValue::from_static("x-v"));
        let mut request = HeaderMap::new();
        request.insert("x-v", HeaderValue::from_str(vary_value).expect("value"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let admitted =
            admit(&key, &Method::GET, &request, StatusCode::OK, &response, now).expect("storable");
        Arc::new(Entry {
            key,
            vary: admitted.vary,
            policy: admitted.policy,
            lifetime: admitted.lifetime,
            rules: admitted.rules,
            status: StatusCode::OK,
            headers: admitted.headers,
            body: Bytes::from(vec![b'x'; body_len]),
            memo: Default::default(),
        })
    }

    #[test]
    fn the_least_recently_used_entry_leaves_memory_first() {
        let one = entry("/1", "a", 1000);
        let store = Store::open(3 * one.weight(), None, 1 << 20).expect("open");
        for path in ["/1", "/2", "/3"] {
            assert!(store.insert(entry(path, "a", 1000)));
        }
        store.touch(&one.id());
        assert!(store.insert(entry("/4", "a", 1000)));
        let key = |p: &str| CacheKey::new("example.com", p).expect("key");
        assert_eq!(store.candidates(&key("/1")).len(), 1, "used recently, kept");
        assert!(store.candidates(&key("/2")).is_empty(), "the oldest went");
        assert_eq!(store.usage().entries, 3);
        assert!(store.usage().memory_bytes <= 3 * one.weight());
    }

    #[test]
    fn an_entry_larger_than_memory_is_not_stored_without_a_disk() {
        let store = Store::open(100, None, 1 << 20).expect("open");
        assert!(!store.insert(entry("/big", "a", 1000)));
        assert_eq!(store.usage(), Usage::default());
    }

    #[test]
    fn a_key_keeps_at_most_its_variant_limit() {
        let store = Store::open(1 << 24, None, 1 << 20).expect("open");
        for i in 0..MAX_VARIANTS + 5 {
            assert!(store.insert(entry("/v", &i.to_string(), 10)));
        }
        let key = CacheKey::new("example.com", "/v").expect("key");
        assert_eq!(store.candidates(&key).len(), MAX_VARIANTS);
        assert_eq!(store.usage().entries, MAX_VARIANTS);
    }

    #[test]
    fn the_same_variant_replaces_the_old_and_counts_once() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = Store::open(1 << 20, Some((root.path(), 1 << 20)), 1 << 20).expect("open");
        assert!(store.insert(entry("/a", "a", 100)));
        let first = store.usage();
        assert!(store.insert(entry("/a", "a", 100)));
        assert_eq!(store.usage(), first);
        assert_eq!(std::fs::read_dir(root.path()).expect("dir").count(), 1);
        let key = CacheKey::new("example.com", "/a").expect("key");
        assert_eq!(store.remove_key(&key), 1);
        assert_eq!(store.usage(), Usage::default());
        assert_eq!(std::fs::read_dir(root.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_disk_file_that_vanished_is_a_miss_and_leaves_the_index() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = Store::open(0, Some((root.path(), 1 << 20)), 1 << 20).expect("open");
        let e = entry("/a", "a", 100);
        assert!(store.insert(Arc::clone(&e)));
        let key = CacheKey::new("example.com", "/a").expect("key");
        let Some(Candidate::Disk(id, generation)) = store.candidates(&key).pop() else {
            panic!("on disk only");
        };
        for file in std::fs::read_dir(root.path()).expect("dir") {
            std::fs::remove_file(file.expect("entry").path()).expect("remove");
        }
        assert!(store.load(&id, generation).is_none());
        assert_eq!(store.usage(), Usage::default());
    }
}
