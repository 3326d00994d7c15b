//! The caching reverse proxy's decisions, without sockets: which route a request takes,
//! which backend serves it, when a backend is shut out and when a request may be tried again,
//! what a cache may store and serve, and the headers a hop adds and removes.
//!
//! The shell (crate `edge-proxy`) moves the bytes and reads the clock; everything here takes
//! `now` and the caller's random draws, so each decision is tested without a socket.
//!
//! - [`route`]: the route table (host and/or path prefix to a workload's port or an origin),
//!   longest match first, weighted splits between versions.
//! - [`balance`]: the backend choice behind one trait ([`balance::Choose`]): power of two
//!   choices over peak-EWMA latency by default, round-robin, least requests.
//! - [`learned`]: the backend choice by a routing model (the features it reads, what its
//!   predictions decide, when it steps aside for peak-EWMA P2C).
//! - [`samples`]: a fair sample of the proxy's attempts (features and outcomes) between two
//!   reports: what routing models are trained on.
//! - [`breaker`]: a circuit breaker per backend (consecutive failures or error rate,
//!   half-open probes).
//! - [`tiers`]: where a workload's request may go beyond its instances here: the nearest
//!   peer nodes, then the route's origins; the distance between two places.
//! - [`retry`]: which requests may be retried, and the retry budget.
//! - [`headers`]: hop-by-hop removal, `Forwarded`/`X-Forwarded-For`/`Via`, the loop guard,
//!   W3C `traceparent`.
//! - [`cache`]: the cache policy (RFC 9111, through `http-cache-semantics`), cache keys, what
//!   an unsafe method invalidates, how long stale answers may be served while the origin is
//!   down.
//! - [`cache_status`]: the `Cache-Status` header value (RFC 9211).

pub mod balance;
pub mod breaker;
pub mod cache;
pub mod cache_status;
pub mod headers;
pub mod learned;
pub mod retry;
pub mod route;
pub mod samples;
pub mod tiers;
