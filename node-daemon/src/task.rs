//! A background task that lives as long as its owner.

/// Aborts its task when dropped: a task of the daemon's (a socket's server, a watcher) ends
/// with whatever holds it.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
