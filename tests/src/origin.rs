//! A static origin for the node's proxy: plain HTTP/1.1 on a thread, one answer per
//! connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An origin that answers every request with `body` until `down`: fresh for a minute under
/// `/doc`, stale at once elsewhere.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    /// Requests it answered.
    pub hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Origin {
    pub fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
        let addr = listener.local_addr().expect("origin address");
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (counted, gone) = (hits.clone(), down.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if gone.load(Ordering::SeqCst) {
                    return; // the listener closes: connections are refused from now on
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let max_age = if head.starts_with(b"GET /doc") { 60 } else { 0 };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncache-control: max-age={max_age}\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { addr, hits, down }
    }

    /// Takes the origin down: the next connection ends it, and later ones are refused.
    pub fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
