//! A UDP relay that stands between nodes and the orchestrator: it can drop everything (a
//! partition), drop a share of datagrams (a lossy link), hold each datagram a while (a slow
//! link), and counts the bytes it carries each way. We have no netem here; this is our
//! network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Counters and the switch shared with the relay task.
#[derive(Debug, Default)]
pub struct Link {
    cut: AtomicBool,
    /// Percent of datagrams dropped, each way (0: none).
    loss_percent: AtomicU32,
    /// How long each datagram is held before it goes on, each way (0: not held).
    delay_ms: AtomicU64,
    /// Bytes of UDP payload from nodes to the orchestrator, and back.
    pub up_bytes: AtomicU64,
    pub down_bytes: AtomicU64,
    pub up_packets: AtomicU64,
    pub down_packets: AtomicU64,
}

impl Link {
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
    /// Drops `percent` (at most 100) of the datagrams each way, at random.
    pub fn lossy(&self, percent: u32) {
        self.loss_percent.store(percent.min(100), Ordering::SeqCst);
    }
    /// Holds every datagram `delay` before passing it on (zero: passes at once). Held
    /// datagrams keep their order, as on a real link: QUIC cannot open a packet that
    /// overtakes the one carrying its keys, and reordering would cost a retransmit.
    pub fn delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    /// A clean link again: not cut, nothing dropped, nothing held.
    pub fn clear(&self) {
        self.heal();
        self.lossy(0);
        self.delay(Duration::ZERO);
    }
    /// Whether this datagram goes: the link is up and the loss draw spares it.
    fn passes(&self) -> bool {
        let loss = self.loss_percent.load(Ordering::SeqCst);
        !self.is_cut() && (loss == 0 || fastrand::u32(0..100) >= loss)
    }
    fn held(&self) -> Option<Duration> {
        let ms = self.delay_ms.load(Ordering::SeqCst);
        (ms > 0).then(|| Duration::from_millis(ms))
    }
    /// (bytes up, bytes down)
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up_bytes.load(Ordering::SeqCst),
            self.down_bytes.load(Ordering::SeqCst),
        )
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    /// What nodes dial instead of the orchestrator.
    pub addr: SocketAddr,
    pub link: Arc<Link>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Relays datagrams from 127.0.0.1:0 to `target`, one upstream socket per client so the
    /// orchestrator sees each node as its own peer.
    pub async fn start(target: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let addr = front.local_addr().expect("relay addr");
        let link = Arc::new(Link::default());
        let task = tokio::spawn(run(front, target, link.clone()));
        Relay { addr, link, task }
    }
}

async fn run(front: Arc<UdpSocket>, target: SocketAddr, link: Arc<Link>) {
    let delayed = delay_line();
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if !link.passes() {
            continue;
        }
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let sock = Arc::new(sock);
                upstreams.insert(client, sock.clone());
                tokio::spawn(back(sock.clone(), front.clone(), client, link.clone()));
                sock
            }
        };
        link.up_bytes.fetch_add(n as u64, Ordering::SeqCst);
        link.up_packets.fetch_add(1, Ordering::SeqCst);
        forward(&link, &delayed, upstream, buf[..n].to_vec(), target).await;
    }
}

async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    link: Arc<Link>,
) {
    let delayed = delay_line();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        if !link.passes() {
            continue;
        }
        link.down_bytes.fetch_add(n as u64, Ordering::SeqCst);
        link.down_packets.fetch_add(1, Ordering::SeqCst);
        forward(&link, &delayed, front.clone(), buf[..n].to_vec(), client).await;
    }
}

/// A datagram held until `.0`, then sent from `.1` to `.3`.
type Held = (Instant, Arc<UdpSocket>, Vec<u8>, SocketAddr);

/// One direction's held datagrams, sent in the order they came, each at its time: a task
/// that ends when the direction's loop does.
fn delay_line() -> mpsc::UnboundedSender<Held> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Held>();
    tokio::spawn(async move {
        while let Some((at, socket, datagram, to)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = socket.send_to(&datagram, to).await;
        }
    });
    tx
}

/// Sends `datagram` from `socket` to `to`, at once or, through `delayed`, after the link's
/// delay (and never before a datagram held before it, should the delay have shrunk).
async fn forward(
    link: &Link,
    delayed: &mpsc::UnboundedSender<Held>,
    socket: Arc<UdpSocket>,
    datagram: Vec<u8>,
    to: SocketAddr,
) {
    match link.held() {
        None => {
            let _ = socket.send_to(&datagram, to).await;
        }
        Some(delay) => {
            let _ = delayed.send((Instant::now() + delay, socket, datagram, to));
        }
    }
}
