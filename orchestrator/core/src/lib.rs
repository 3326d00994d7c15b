//! The orchestrator's decisions, without I/O: what `edge-orchestrator` decides, apart from
//! how it moves bytes. As quinn-proto is to quinn, this crate is to the `orchestrator` crate's
//! shells (the QUIC server, the operator API, the sled store), which depend on it and never
//! the reverse.
//!
//! - [`pacing`]: the gate that paces hellos when many nodes reconnect at once, and the
//!   retry-after it gives the ones it turns away.
//! - [`access`]: who may use the operator API: roles, the API tokens on record, the rules
//!   for issuing, checking and revoking them, and keeping or replacing the admin token.
//! - [`fleet`]: the registry of nodes, join tokens and live sessions; returns the records to
//!   persist.
//! - [`tokens`]: join tokens `ID.SECRET`; only sha256 of the secret is kept.
//! - [`session`]: `ServerSession`, one node connection's state machine.
//! - [`workload`]: the workload spec, parsed and validated; every error names its field.
//! - [`scheduler`]: filter, score and bind, with the score behind the [`scheduler::Score`]
//!   trait.
//! - [`deploy`]: the deployments controller: specs in, placements and messages out.
//! - [`image`]: what the image store knows of a container image: its platforms, for the
//!   scheduler and the assignment.
//! - [`purge`]: a cache purge request checked by field, the nodes it targets, its answer.
//! - [`routes`]: where every exposed workload runs, as the nodes' proxies route to peers.
//! - [`traffic`]: the nodes' latest proxy traffic reports, cut to the routes the fleet
//!   serves, and what each adds to the fleet's totals.
//! - [`store`]: the [`store::Store`] trait the shells implement, the records it keeps, and
//!   [`store::MemStore`] for simulations and tests.
//!
//! **Invariants.** No I/O: this crate depends on none of tokio, quinn, sled, axum, hyper, mio
//! or socket2, directly or through another crate (`cargo tree -p orchestrator-core -e normal`
//! shows it), so nothing here can open a socket or a file. No clock: time comes in as an
//! argument (`now`, `now_unix`, `wall`); `Instant::now` and `SystemTime::now` are banned
//! outside tests by this crate's `clippy.toml`, and the workspace's `tests/tests/tidy.rs`
//! checks both rules.
//! No randomness except what the caller hands in (a random id, a fill function).
#![forbid(unsafe_code)]

pub mod access;
pub mod deploy;
pub mod events;
pub mod fleet;
pub mod image;
pub mod models;
pub mod pacing;
pub mod purge;
pub mod routes;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod sync;
pub mod tokens;
pub mod traffic;
pub mod workload;
