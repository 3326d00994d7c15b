//! The node links handle: each live connection, and each established session's outbox.
//!
//! The QUIC server registers a connection when it accepts one and an outbox once the session
//! is established, and removes both when the connection ends. Others reach a node only
//! through here: the deployments committer queues messages, the API opens log streams on a
//! node's connection and closes a deleted node's session. Nothing here decides anything.

use edge_proto::{NodeId, OrchMsg, RejectCode};
use orchestrator_core::fleet::SessionId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Messages queued for one node before [`NodeLinks::send`] says no.
pub const OUTBOX_DEPTH: usize = 1024;

/// The QUIC application close code for a reject: 0 for a normal close, else the code's
/// position plus one.
pub fn close_code(code: Option<RejectCode>) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.map_or(0, RejectCode::close_code))
}

/// Live connections and session outboxes.
#[derive(Debug)]
pub struct NodeLinks {
    next_session: AtomicU64,
    connections: Mutex<HashMap<SessionId, quinn::Connection>>,
    /// The outbox of each node's established session.
    outboxes: Mutex<HashMap<NodeId, (SessionId, mpsc::Sender<OrchMsg>)>>,
}

impl Default for NodeLinks {
    fn default() -> Self {
        Self {
            next_session: AtomicU64::new(1),
            connections: Mutex::new(HashMap::new()),
            outboxes: Mutex::new(HashMap::new()),
        }
    }
}

impl NodeLinks {
    /// An id for a new connection, unique for the life of the process.
    pub fn next_session(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<SessionId, quinn::Connection>> {
        // The maps stay consistent whatever panicked while holding the lock.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outboxes(&self) -> MutexGuard<'_, HashMap<NodeId, (SessionId, mpsc::Sender<OrchMsg>)>> {
        self.outboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection was accepted.
    pub fn add_connection(&self, session: SessionId, conn: quinn::Connection) {
        self.conns().insert(session, conn);
    }

    /// The connection's task is done with it.
    pub fn remove_connection(&self, session: SessionId) {
        self.conns().remove(&session);
    }

    /// A connection by its session id, while its task holds it.
    pub fn connection_of(&self, session: SessionId) -> Option<quinn::Connection> {
        self.conns().get(&session).cloned()
    }

    /// Closes a session's connection with a reject code, if it is still open.
    pub fn close_session(&self, session: SessionId, code: RejectCode, reason: &str) {
        if let Some(conn) = self.conns().remove(&session) {
            conn.close(close_code(Some(code)), reason.as_bytes());
        }
    }

    /// Drops every connection handle, so that a closed endpoint can release its socket.
    pub fn forget_connections(&self) {
        self.conns().clear();
    }

    /// `node`'s session is established: messages for it go to `tx`.
    pub fn set_outbox(&self, node: NodeId, session: SessionId, tx: mpsc::Sender<OrchMsg>) {
        self.outboxes().insert(node, (session, tx));
    }

    /// `session` ended: its outbox goes, unless a newer session of the node replaced it.
    pub fn clear_outbox(&self, node: NodeId, session: SessionId) {
        let mut outboxes = self.outboxes();
        if outboxes.get(&node).is_some_and(|(s, _)| *s == session) {
            outboxes.remove(&node);
        }
    }

    /// Queues `msg` for `node`'s live session. `false` if the node has no session now (it
    /// gets its assignments again when it next connects) or its outbox is full.
    pub fn send(&self, node: NodeId, msg: OrchMsg) -> bool {
        self.outboxes()
            .get(&node)
            .is_some_and(|(_, tx)| tx.try_send(msg).is_ok())
    }

    /// As [`NodeLinks::send`], only if `session` is still `node`'s live session: what
    /// answers one session's hello (its sync's end above all) means nothing to the next,
    /// and taken by it would end that one's sync before its own answer came.
    pub fn send_in(&self, node: NodeId, session: SessionId, msg: OrchMsg) -> bool {
        self.outboxes()
            .get(&node)
            .is_some_and(|(s, tx)| *s == session && tx.try_send(msg).is_ok())
    }

    /// The connection of `node`'s live session, to open streams on (logs).
    pub fn connection(&self, node: NodeId) -> Option<quinn::Connection> {
        let session = self.outboxes().get(&node).map(|(s, _)| *s)?;
        self.conns().get(&session).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{SyncMode, Synced};

    fn synced() -> OrchMsg {
        OrchMsg::Synced(Synced {
            mode: SyncMode::Snapshot,
            assigned: 0,
            unassigned: 0,
            events_through: None,
        })
    }

    #[test]
    fn what_answers_one_session_never_reaches_the_next() {
        let links = NodeLinks::default();
        let node = NodeId([7; 16]);
        let (first, mut first_rx) = mpsc::channel(4);
        let (second, mut second_rx) = mpsc::channel(4);
        links.set_outbox(node, 1, first);
        assert!(links.send_in(node, 1, synced()));
        assert!(first_rx.try_recv().is_ok());
        // The node dialled again before the first session's answer was sent.
        links.set_outbox(node, 2, second);
        assert!(!links.send_in(node, 1, synced()), "session 1 is gone");
        assert!(
            second_rx.try_recv().is_err(),
            "and session 2 got nothing of it"
        );
        assert!(links.send_in(node, 2, synced()));
        assert!(
            links.send(node, synced()),
            "unscoped messages go to the live session"
        );
        assert_eq!(std::iter::from_fn(|| second_rx.try_recv().ok()).count(), 2);
    }
}
