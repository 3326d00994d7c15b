//! systemd's service notifications (`sd_notify`): `READY=1` once the node serves, `STATUS=`
//! lines that `systemctl status` shows, `WATCHDOG=1` keep-alives, and `STOPPING=1`.
//!
//! The protocol is one datagram per message to the Unix socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` for the abstract namespace). Without systemd the variable is unset and every
//! call does nothing, so the daemon calls these unconditionally. A send that fails is logged and
//! dropped: a notification is never worth stopping the node for.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::debug;

/// The longest `STATUS=` text sent; systemd shows one line.
const MAX_STATUS_BYTES: usize = 200;

/// Where notifications go, and how often systemd wants a keep-alive.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    /// Notifications that could not be sent (the receiver's queue full, systemd gone).
    dropped: AtomicU64,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service: `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` when `WatchdogSec=` is set (ignored if `WATCHDOG_PID` names another
    /// process).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog_usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .filter(|_| for_us)
            .and_then(|v| v.trim().parse::<u64>().ok());
        Self::new(socket.as_deref(), watchdog_usec)
    }

    /// Notifications to `socket` (a path or `@abstract`), with a watchdog timeout of
    /// `watchdog_usec` microseconds. `None`, an empty name or an unusable socket gives a
    /// notifier that does nothing.
    pub fn new(socket: Option<&str>, watchdog_usec: Option<u64>) -> Self {
        let target = socket.filter(|s| !s.is_empty()).and_then(|name| {
            let addr = address(name)
                .inspect_err(|e| debug!(socket = name, error = %e, "NOTIFY_SOCKET unusable"))
                .ok()?;
            // Non-blocking: a receiver that stops reading (its queue full) must cost us a
            // dropped notification, never a stuck runtime.
            let sock = UnixDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .inspect_err(|e| debug!(error = %e, "cannot open a notify socket"))
                .ok()?;
            Some((sock, addr))
        });
        let watchdog = watchdog_usec
            .filter(|&us| us > 0)
            .map(Duration::from_micros);
        Self {
            target,
            watchdog,
            dropped: AtomicU64::new(0),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::new(None, None)
    }

    /// How often to call [`Notifier::watchdog`]: half of systemd's timeout, as it advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog).map(|d| d / 2)
    }

    /// The node serves: systemd may consider the service started.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line description of what the node is doing.
    pub fn status(&self, text: &str) {
        let mut line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if line.len() > MAX_STATUS_BYTES {
            let mut cut = MAX_STATUS_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.send(&format!("STATUS={line}"));
    }

    /// The node is alive; systemd restarts it if these stop for longer than `WatchdogSec`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// The node is shutting down on purpose.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// How many notifications could not be sent so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(message.as_bytes(), addr)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "sd_notify failed");
        }
    }
}

fn address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let name = path.to_str().expect("utf-8 path").to_owned();
        (dir, sock, name)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_each_message_as_one_datagram() {
        let (_dir, sock, name) = listener();
        let n = Notifier::new(Some(&name), Some(30_000_000));
        n.ready();
        n.status("waiting for the join file\nat /boot/firmware");
        n.watchdog();
        n.stopping();
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(
            recv(&sock),
            "STATUS=waiting for the join file at /boot/firmware",
            "one line"
        );
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(recv(&sock), "STOPPING=1");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn a_receiver_that_never_reads_never_blocks_us() {
        let (_dir, sock, name) = listener();
        let n = std::sync::Arc::new(Notifier::new(Some(&name), Some(1_000)));
        // Far more than a Unix datagram queue holds (net.unix.max_dgram_qlen, 512 by default).
        let queue: u64 = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .ok()
            .and_then(|q| q.trim().parse().ok())
            .unwrap_or(512);
        let sent = 10 * queue.max(512);
        // On a thread of its own, so that a send that blocks fails this test instead of
        // hanging it.
        let (done, finished) = std::sync::mpsc::channel();
        let sender = n.clone();
        std::thread::spawn(move || {
            for _ in 0..sent {
                sender.watchdog();
            }
            let _ = done.send(sender.dropped());
        });
        let dropped = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("every send returns while nobody reads");
        sock.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 64];
        let mut delivered = 0;
        while sock.recv(&mut buf).is_ok() {
            delivered += 1;
        }
        assert!(dropped > 0, "the queue filled up: {delivered} delivered");
        assert!(delivered > 0);
        assert_eq!(delivered + dropped, sent, "each one delivered or counted");
        // Read again, the receiver gets what follows.
        sock.set_nonblocking(false).expect("blocking");
        n.ready();
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(n.dropped(), dropped);
    }

    #[test]
    fn abstract_socket() {
        let name = format!("edge-node-test-{}", std::process::id());
        let addr = address(&format!("@{name}")).expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Notifier::new(Some(&format!("@{name}")), None).ready();
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn long_status_is_cut_on_a_char_boundary() {
        let (_dir, sock, name) = listener();
        Notifier::new(Some(&name), None).status(&"ü".repeat(300));
        let got = recv(&sock);
        assert!(got.len() <= "STATUS=".len() + MAX_STATUS_BYTES);
        assert!(got.ends_with('ü'));
    }

    #[test]
    fn without_systemd_nothing_happens() {
        for n in [
            Notifier::disabled(),
            Notifier::new(Some(""), Some(1_000_000)),
            Notifier::new(Some("/nonexistent/dir/notify.sock"), Some(1_000_000)),
        ] {
            n.ready();
            n.watchdog();
        }
        assert_eq!(Notifier::disabled().watchdog_interval(), None);
        assert_eq!(
            Notifier::new(Some(""), Some(1_000_000)).watchdog_interval(),
            None,
            "no keep-alives without a socket"
        );
        let (_dir, _sock, name) = listener();
        assert_eq!(
            Notifier::new(Some(&name), Some(0)).watchdog_interval(),
            None,
            "WATCHDOG_USEC=0 means off"
        );
    }
}
