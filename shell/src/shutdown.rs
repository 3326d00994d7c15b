//! Ctrl-C or SIGTERM, listened for from the moment [`Shutdown::listen`] is called.
//!
//! A daemon says it is ready (a line on stderr, a systemd notification) and a supervisor may
//! stop it the next instant. Registering for the signal only when the daemon starts waiting
//! for it leaves a window in which a SIGTERM finds a handler installed and nobody listening,
//! and is lost: the daemon then runs until killed. So the listener is made before the
//! daemon says anything, and waited on after.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A registration for SIGTERM and SIGINT.
#[derive(Debug)]
pub struct Shutdown {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl Shutdown {
    /// Listens from now on. Needs a tokio runtime with its I/O driver. A signal that cannot
    /// be listened for (no such signal on this system) is left to its default action.
    pub fn listen() -> Self {
        Self {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Until SIGTERM or SIGINT arrives, or has arrived since [`Shutdown::listen`].
    pub async fn wait(mut self) {
        async fn next(signal: Option<&mut Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(self.terminate.as_mut()) => {}
            () = next(self.interrupt.as_mut()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case that was lost: the signal comes after the listener is made and before
    /// anyone waits.
    #[tokio::test]
    async fn a_signal_between_listening_and_waiting_is_not_lost() {
        let shutdown = Shutdown::listen();
        let pid = std::process::id();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(30), shutdown.wait())
            .await
            .expect("the SIGTERM sent before waiting ends the wait");
    }
}
