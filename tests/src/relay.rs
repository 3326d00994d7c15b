//! A UDP relay that stands between nodes and the orchestrator: it can drop everything (a
//! partition) and counts the bytes it carries each way. We have no netem here; this is our
//! network.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Counters and the switch shared with the relay task.
#[derive(Debug, Default)]
pub struct Link {
    cut: AtomicBool,
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
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        if link.is_cut() {
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
        let _ = upstream.send_to(&buf[..n], target).await;
    }
}

async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    link: Arc<Link>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        if link.is_cut() {
            continue;
        }
        link.down_bytes.fetch_add(n as u64, Ordering::SeqCst);
        link.down_packets.fetch_add(1, Ordering::SeqCst);
        let _ = front.send_to(&buf[..n], client).await;
    }
}
