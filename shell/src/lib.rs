//! The shell pieces both binaries share: log setup ([`logging`]), the bounded HTTP/1 accept
//! loop ([`http`]) and its connection table ([`slots`], which the node's proxy shares), and
//! the Prometheus exposition ([`exposition`]), and the shutdown signals ([`shutdown`]).
//!
//! A shell crate: it may do I/O (tokio, hyper), so no core crate depends on it. It decides
//! nothing about nodes, workloads or the fleet; it only moves bytes within bounds.
#![forbid(unsafe_code)]

pub mod exposition;
pub mod http;
pub mod logging;
pub mod shutdown;
pub mod slots;
