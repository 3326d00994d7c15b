//! The connections a listener holds, at most so many, and which one to close to make room.
//!
//! Both HTTP listeners (the one here in [`http`](crate::http) and the node's proxy) keep a
//! table like this: a new connection at the cap closes one that a stranger could be holding
//! a slot with (waiting for a head, or idle between requests), never one whose request is
//! being served. What "may be closed" means is the connection's own state ([`Slot::evict`]);
//! which of those goes first is the listener's ranking ([`Slots::make_room`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, oneshot};

/// A connection's state as the table sees it.
pub trait Slot: Send + Sync + 'static {
    /// Marks it closed for room if its state allows that now; whether it did. Once it
    /// returns true, the connection must not start a request.
    fn evict(&self) -> bool;
}

struct Open<C> {
    conn: Arc<C>,
    evict: oneshot::Sender<()>,
}

/// The table: at most `max` connections, in the order they came.
pub struct Slots<C> {
    max: usize,
    table: Mutex<(u64, BTreeMap<u64, Open<C>>)>,
    /// Woken when a connection's slot is freed.
    freed: Notify,
}

impl<C> std::fmt::Debug for Slots<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("max", &self.max)
            .field("open", &self.table().1.len())
            .finish()
    }
}

impl<C> Slots<C> {
    fn table(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, Open<C>>)> {
        // Every change is one insert or remove: consistent across a panic elsewhere.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Slot> Slots<C> {
    /// A table of at most `max` connections (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            table: Mutex::new((0, BTreeMap::new())),
            freed: Notify::new(),
        })
    }

    /// Completes when a slot is freed after this call: take it before [`make_room`]
    /// (Self::make_room) to wait without missing one.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// Whether there is room for one more connection: at once below the cap; at the cap,
    /// after closing one. The candidates are the connections `rank` ranks, tried from the
    /// highest rank (the oldest first among equals) until one [`evicts`](Slot::evict).
    pub fn make_room<K: Ord>(&self, mut rank: impl FnMut(&C) -> Option<K>) -> bool {
        let mut table = self.table();
        let open = &mut table.1;
        if open.len() < self.max {
            return true;
        }
        let mut candidates: Vec<(K, u64)> = open
            .iter()
            .filter_map(|(id, o)| Some((rank(&o.conn)?, *id)))
            .collect();
        // Highest rank first; among equals, the lowest id: the oldest.
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let victim = candidates
            .into_iter()
            .map(|(_, id)| id)
            .find(|id| open.get(id).is_some_and(|o| o.conn.evict()));
        match victim.and_then(|id| open.remove(&id)) {
            Some(o) => {
                let _ = o.evict.send(());
                true
            }
            None => false,
        }
    }

    /// Holds a slot for `conn`. The guard frees it when dropped, however the connection's
    /// task ends; the receiver completes if the connection is closed to make room.
    pub fn open(self: &Arc<Self>, conn: Arc<C>) -> (SlotGuard<C>, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut table = self.table();
        let id = table.0;
        table.0 += 1;
        table.1.insert(id, Open { conn, evict });
        let guard = SlotGuard {
            slots: Arc::clone(self),
            id,
        };
        (guard, evicted)
    }

    /// Closes every connection that may be closed now, then waits for the rest to end.
    pub async fn drain(&self) {
        {
            let mut table = self.table();
            let closing: Vec<u64> = table
                .1
                .iter()
                .filter(|(_, o)| o.conn.evict())
                .map(|(id, _)| *id)
                .collect();
            for id in closing {
                if let Some(o) = table.1.remove(&id) {
                    let _ = o.evict.send(());
                }
            }
        }
        loop {
            let freed = self.freed.notified();
            if self.table().1.is_empty() {
                return;
            }
            freed.await;
        }
    }
}

/// A connection's slot, freed when dropped.
pub struct SlotGuard<C: Slot> {
    slots: Arc<Slots<C>>,
    id: u64,
}

impl<C: Slot> std::fmt::Debug for SlotGuard<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard").field("id", &self.id).finish()
    }
}

impl<C: Slot> Drop for SlotGuard<C> {
    fn drop(&mut self) {
        self.slots.table().1.remove(&self.id);
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

    /// Evictable while `free`; remembers an eviction.
    struct Conn {
        free: AtomicBool,
        rank: AtomicU8,
        evicted: AtomicBool,
    }

    impl Conn {
        fn new(free: bool, rank: u8) -> Arc<Self> {
            Arc::new(Self {
                free: AtomicBool::new(free),
                rank: AtomicU8::new(rank),
                evicted: AtomicBool::new(false),
            })
        }
    }

    impl Slot for Conn {
        fn evict(&self) -> bool {
            let free = self.free.swap(false, Ordering::AcqRel);
            if free {
                self.evicted.store(true, Ordering::Release);
            }
            free
        }
    }

    fn rank(conn: &Conn) -> Option<u8> {
        Some(conn.rank.load(Ordering::Acquire))
    }

    #[tokio::test]
    async fn below_the_cap_there_is_room_and_at_it_the_highest_ranked_free_one_goes() {
        let slots = Slots::new(3);
        let busy = Conn::new(false, 9);
        let low = Conn::new(true, 1);
        let high = Conn::new(true, 5);
        let (_busy, _) = slots.open(busy.clone());
        let (_low, _) = slots.open(low.clone());
        assert!(slots.make_room(rank));
        let (_high, mut high_evicted) = slots.open(high.clone());

        assert!(slots.make_room(rank), "a free connection makes room");
        assert!(high.evicted.load(Ordering::Acquire), "the highest ranked");
        assert!(!busy.evicted.load(Ordering::Acquire), "never a busy one");
        assert!(high_evicted.try_recv().is_ok(), "its task is told");

        let (_again, _) = slots.open(Conn::new(false, 0));
        assert!(slots.make_room(rank), "the low one goes next");
        assert!(low.evicted.load(Ordering::Acquire));
        let (_last, _) = slots.open(Conn::new(false, 0));
        assert!(!slots.make_room(rank), "every slot is busy");
    }

    #[tokio::test]
    async fn among_equals_the_oldest_goes_and_unranked_ones_stay() {
        let slots = Slots::new(3);
        let unranked = Conn::new(true, 0);
        let older = Conn::new(true, 1);
        let newer = Conn::new(true, 1);
        let (_u, _) = slots.open(unranked.clone());
        let (_o, _) = slots.open(older.clone());
        let (_n, _) = slots.open(newer.clone());
        assert!(slots.make_room(|c: &Conn| (c.rank.load(Ordering::Acquire) > 0).then_some(1)));
        assert!(older.evicted.load(Ordering::Acquire));
        assert!(!newer.evicted.load(Ordering::Acquire));
        assert!(!unranked.evicted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_dropped_guard_frees_its_slot_and_drain_waits_for_the_busy() {
        let slots = Slots::new(1);
        let (guard, _) = slots.open(Conn::new(false, 0));
        assert!(!slots.make_room(rank));
        let freed = slots.freed();
        drop(guard);
        freed.await;
        assert!(slots.make_room(rank));

        let idle = Conn::new(true, 0);
        let (idle_guard, mut idle_evicted) = slots.open(idle.clone());
        let (busy_guard, _) = slots.open(Conn::new(false, 0));
        let drained = tokio::spawn({
            let slots = slots.clone();
            async move { slots.drain().await }
        });
        // The idle one is told to close; the drain ends once both guards are gone.
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut idle_evicted)
            .await
            .expect("told in time")
            .expect("told to close");
        assert!(idle.evicted.load(Ordering::Acquire));
        drop(idle_guard);
        drop(busy_guard);
        tokio::time::timeout(std::time::Duration::from_secs(10), drained)
            .await
            .expect("drained in time")
            .expect("the drain task");
    }
}
