//! The edge node's decisions, without I/O: what the `node-daemon` shell asks before it acts.
//!
//! - [`session`]: [`NodeSession`](session::NodeSession), the node's link to the orchestrator as
//!   a state machine: when to dial and with which intent, what to say, when to report, how long
//!   to back off.
//! - [`admission`]: the node's own check of an assignment against what it measures.
//! - [`config`]: the config file and the join file, parsed and validated from text; every
//!   error names its field.
//! - [`restart`]: [`Lifecycle`](restart::Lifecycle), one workload instance's restart policy:
//!   when to spawn, probe, signal and restart, backoff and crash loops.
//! - [`backoff`]: exponential backoff with full jitter, for the session's dials and the
//!   restart policy alike; the caller draws the randomness.
//! - [`spec`]: [`WorkloadSpec`](spec::WorkloadSpec), a workload as the node runs it (and
//!   stores it), and its validation.
//! - [`outbox`]: [`Outbox`](outbox::Outbox), what the orchestrator must still learn: the
//!   drain order by class, acknowledgements and resends, and what is shed when the disk
//!   budget is full; [`Pacer`](outbox::Pacer), the uplink's byte budget.
//! - [`oci`]: a container's OCI runtime `config.json` from its image's config and the
//!   workload's settings (command, environment, user, mounts, limits, capabilities, seccomp
//!   profile), and what `runc features` says the runtime can do.
//! - [`renewal`]: [`Renewal`](renewal::Renewal), when the node asks for a new certificate:
//!   two thirds into its lifetime, by the orchestrator's clock as the welcome said it.
//! - [`location`]: where the node is, live: gpsd's JSON lines parsed, implausible fixes
//!   refused ([`Filter`](location::Filter)), and when a move is worth reporting
//!   ([`Reporter`](location::Reporter)).
//! - [`warm`]: [`Prewarm`](warm::Prewarm), whether to start a workload that scales to zero
//!   before its predicted first request, or keep an idle one up: a model's prediction, or
//!   today's rule (never early, asleep after `idle_secs`) without one.
//!
//! **Invariant.** Nothing here does I/O or reads the clock: the crate depends on no runtime,
//! socket, TLS, database or HTTP crate (tokio, quinn, sled, axum, hyper), time comes in as
//! `now` arguments, and randomness from the seeds and draws the caller passes. The
//! workspace's `tests/tests/tidy.rs` checks the first two, and this crate's `clippy.toml`
//! bans clock reads. That is what lets the simulation in `tests/` run a thousand nodes on a
//! virtual clock, and every test here run minutes of protocol time in microseconds.
#![forbid(unsafe_code)]

pub mod admission;
pub mod backoff;
pub mod config;
pub mod location;
pub mod oci;
pub mod outbox;
pub mod proxy;
pub mod renewal;
pub mod restart;
pub mod session;
pub mod spec;
pub mod summary;
pub mod sync;
pub mod warm;
