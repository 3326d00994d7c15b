//! The orchestrator: the fleet's CA and enrollment, the QUIC server nodes keep a session with,
//! the node registry, and the operator API.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_artifacts;
pub mod api_workloads;
pub mod app;
pub mod artifacts;
pub mod auth;
pub mod demo;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod store;
