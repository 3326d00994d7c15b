//! The node's caching reverse proxy: the shell around `node_core::proxy`.
//!
//! A request comes in on the [`listener`] (HTTP/1.1, keep-alive, bounded), is routed by the
//! table the node keeps from its workloads' `[[expose]]` and its config's upstreams
//! ([`proxy`]), goes through the [`cache`] and, on a miss, to a backend chosen, timed and
//! retried by [`upstream`]. [`metrics`] counts what happened; an access-log line at target
//! `edge_proxy::access` says it. A workload that scales to zero is started on a cache miss by
//! the node's [`Waker`] and kept up while requests are in flight to it ([`wake`]).
//!
//! **Invariant.** It decides nothing itself: routes, backend choice, breakers, retries and
//! cache policy come from `node_core::proxy`; this crate moves bytes, reads the clock and
//! keeps files. Nothing a client sends becomes a metric label.
#![forbid(unsafe_code)]

pub mod body;
pub mod cache;
pub mod listener;
pub mod metrics;
pub mod peer_tls;
pub mod proxy;
pub mod upstream;
pub mod wake;

pub use listener::{Limits, serve, serve_tls};
pub use metrics::ProxyMetrics;
pub use peer_tls::PeerTls;
pub use proxy::{FromPeers, Peer, Proxy, Routing, Settings};
pub use wake::{Activity, WakeError, Waker};

use bytes::Bytes;

/// Why a body could not be read or written through the proxy.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and answer that passes through the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;
