//! Request collapsing: one trip to the origin per key at a time, the other requests for that
//! key wait for it and then look in the cache again.
//!
//! The leader holds a [`Flight`]; dropping it (the fill is done, or the leader's future was
//! dropped because its client went away) takes the key out of the map and wakes every
//! waiter. So no path leaves a waiter hanging or the map holding a key nobody fills.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use node_core::proxy::cache::CacheKey;
use tokio::sync::watch;

type Map = HashMap<CacheKey, (u64, watch::Receiver<()>)>;

/// The keys some request is fetching from the origin now.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<Map>>,
    next_id: Mutex<u64>,
}

/// A request's part in a key's trip to the origin.
pub(crate) enum Role {
    /// Go to the origin; the others wait until this is dropped.
    Lead(Flight),
    /// Another request is on its way: wait for [`Wait::done`], then look again.
    Wait(Wait),
    /// Nobody is on the way and this request does not lead (it would store nothing).
    Alone,
}

impl Flights {
    /// Joins the trip in flight for `key`, or starts one if `may_lead`.
    pub(crate) fn join(&self, key: &CacheKey, may_lead: bool) -> Role {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, rx)) = map.get(key) {
            return Role::Wait(Wait(rx.clone()));
        }
        if !may_lead {
            return Role::Alone;
        }
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
            *next = next.wrapping_add(1);
            *next
        };
        let (tx, rx) = watch::channel(());
        map.insert(key.clone(), (id, rx));
        Role::Lead(Flight {
            map: Arc::clone(&self.map),
            key: key.clone(),
            id,
            _done: tx,
        })
    }

    /// How many keys are in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The leader's hold on a key: dropped, it wakes the waiters.
pub(crate) struct Flight {
    map: Arc<Mutex<Map>>,
    key: CacheKey,
    id: u64,
    /// Closed when the flight is dropped, after the key left the map: that is the signal.
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// A waiter's view of a flight.
pub(crate) struct Wait(watch::Receiver<()>);

impl Wait {
    /// Returns once the leader is done, however it ended. Cancel-safe.
    pub(crate) async fn done(mut self) {
        // The value never changes: `changed` returns only when the sender is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::new("h", "/k").expect("key")
    }

    #[tokio::test]
    async fn waiters_wake_when_the_leader_is_dropped_and_the_key_is_free_again() {
        let flights = Flights::default();
        let Role::Lead(flight) = flights.join(&key(), true) else {
            panic!("the first leads");
        };
        let Role::Wait(wait) = flights.join(&key(), true) else {
            panic!("the second waits");
        };
        assert!(matches!(flights.join(&key(), false), Role::Wait(_)));
        let waiting = tokio::spawn(wait.done());
        drop(flight);
        waiting.await.expect("the waiter wakes");
        assert_eq!(flights.len(), 0);
        assert!(matches!(flights.join(&key(), false), Role::Alone));
        assert!(matches!(flights.join(&key(), true), Role::Lead(_)));
    }

    #[tokio::test]
    async fn an_old_flight_does_not_remove_a_newer_one() {
        let flights = Flights::default();
        let Role::Lead(first) = flights.join(&key(), true) else {
            panic!("leads");
        };
        // Taken out by hand, as if done, and a new leader came.
        flights.map.lock().expect("lock").remove(&key());
        let Role::Lead(_second) = flights.join(&key(), true) else {
            panic!("leads");
        };
        drop(first);
        assert_eq!(flights.len(), 1);
    }
}
