//! The edge node daemon: who the node is, what it has, and its session with the orchestrator.
#![forbid(unsafe_code)]

pub mod applied;
pub mod artifacts;
pub mod capabilities;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod identity;
pub mod location;
pub mod metrics;
pub mod models;
pub mod notify;
pub mod oci;
pub mod outbox;
pub mod private_fs;
pub mod provision;
pub mod proxy;
pub mod service;
pub mod status;
pub mod streams;
pub mod supervisor;
pub mod task;
pub mod tls;
pub mod workloads;
