//! The wire protocol between edge nodes and the orchestrator.
//!
//! Everything a peer can send is a bounded type: strings and lists are `heapless` with a fixed
//! capacity and byte blobs are [`Blob`]s that check their length before they allocate, so an
//! oversized field is a [`DecodeError`], never an allocation the peer chose. Messages travel as
//! length-prefixed frames ([`frame`]) of at most [`MAX_FRAME_LEN`] bytes, encoded with postcard.
//!
//! postcard has no field names: the order of fields and variants *is* the format. Change it only by
//! appending, and pin every message with a golden-bytes test (`tests/wire.rs`).
//!
//! [`field`] holds what both ends need to check operator input the same way: field paths and
//! errors, and the rules for names, labels and coordinates, bounded by the wire types above.
//!
//! This crate is `no_std` + `alloc` and does no I/O: it is shared by the node, the orchestrator
//! and the simulation, and may one day run on a microcontroller.
#![cfg_attr(not(feature = "quic"), no_std)]

extern crate alloc;

mod bounded;
pub mod digest;
mod events;
pub mod field;
pub mod frame;
pub mod liveness;
mod msg;
mod purge;
#[cfg(feature = "quic")]
pub mod quic;
mod traffic;

pub use bounded::{Seq, Str};
pub use events::{
    EventBatch, EventGap, EventKind, EventsStored, MetricSummary, NodeEvent, OperatorAction,
    OperatorVerb, RouteSample, RouteSamples,
};
pub use frame::{DecodeError, FrameDecoder, MAX_FRAME_LEN, decode, encode, try_encode};
pub use msg::*;
pub use purge::{PurgeReply, PurgeRequest};
pub use traffic::{LATENCY_BUCKETS_US, RouteTraffic, TrafficReport};

/// The ALPN identifier of the protocol family. Within it, [`Hello::versions`] and
/// [`Welcome::version`] negotiate the exact message set.
pub const ALPN: &[u8] = b"edge/1";

/// Protocol versions this build speaks, newest first. What each added:
/// - 1: the message set up to [`ModelPurpose::Route`] models.
/// - 2: [`ModelPurpose::Warm`] in `OrchMsg::Model`: a node of version 1 cannot decode such
///   an offer, so it is never sent one (see [`ModelPurpose::since`]).
pub const SUPPORTED_VERSIONS: &[u16] = &[2, 1];

/// The server name every orchestrator certificate carries and every node verifies. Nodes pin
/// the orchestrator's CA, so the name does not depend on the address a node dials.
pub const ORCHESTRATOR_SERVER_NAME: &str = "orchestrator.edge";

/// Picks the highest version both sides speak.
pub fn negotiate_version(offered: &[u16]) -> Option<u16> {
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| offered.contains(v))
}
