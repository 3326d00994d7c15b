//! The orchestrator's shells around `orchestrator-core`: the fleet's CA, the QUIC server nodes
//! keep a session with, the operator API, the sled store, and `edge-orchestrator` and
//! `edgectl`.
//!
//! The shells share narrow handles, each owned by the module that keeps it: [`registry`]
//! (nodes, tokens, the CA), [`deployer`] (the deployments, routes to peers, the committer),
//! [`links`] (live connections and session outboxes), [`reports`] (what nodes last said about
//! their instances) and the artifact store ([`artifacts`]). [`app`] makes them and hands each
//! shell the ones it needs; the API never imports the QUIC server, nor the server the API.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod artifacts;
pub mod auth;
pub mod clock;
pub mod demo;
pub mod deployer;
pub mod images;
pub mod links;
pub mod logs;
pub mod metrics;
pub mod models;
pub mod node_admin;
pub mod pki;
pub mod placement;
pub mod purge;
mod records;
pub mod registry;
pub mod reports;
pub mod server;
pub mod store;
pub mod traffic;
