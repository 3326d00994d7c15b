//! Purging a node's proxy cache over that node's QUIC connection.
//!
//! [`purge_node`] opens a stream on the node's connection, sends an
//! `OrchStreamOpen::Purge` header and finishes its side; the node answers with one
//! `PurgeReply` and ends the stream. The whole exchange is bounded by [`PURGE_TIMEOUT`], so
//! a node that never answers costs the caller that long at most.
//!
//! This module never closes the node's connection, whatever the node sends on the stream;
//! a bad answer fails that purge alone.

use edge_proto::quic::{ReadError, WriteError, read_frame, write_msg};
use edge_proto::{DecodeError, OrchStreamOpen, PurgeReply, PurgeRequest, decode};
use std::time::Duration;

/// How long opening the stream, the node's purge and its answer may take together.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node's cache could not be purged.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The node runs no proxy, so it has no cache. Not retryable until its config has a
    /// `[proxy]` table.
    #[error("the node has no proxy cache (no [proxy] in its config)")]
    NoCache,
    /// No stream could be opened: the node's connection is closed or closing. Retryable
    /// once the node reconnects.
    #[error("opening a stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The request could not be sent. Retryable.
    #[error("sending the request: {0}")]
    Send(#[from] WriteError),
    /// The stream broke while reading: the node reset it (a node that predates purge
    /// streams refuses the header) or the connection was lost.
    #[error("reading the answer: {0}")]
    Stream(quinn::ReadExactError),
    /// The node's answer is not a purge reply. The node's bug; the connection stays.
    #[error("malformed answer from the node: {0}")]
    Malformed(DecodeError),
    /// No answer within [`PURGE_TIMEOUT`]. Retryable; the purge may still have happened.
    #[error("no answer from the node within {}s", PURGE_TIMEOUT.as_secs())]
    Timeout,
}

impl PurgeError {
    /// A short, fixed name for the kind of failure: for logs and any metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCache => "no_cache",
            Self::Connection(_) | Self::Send(_) | Self::Stream(_) => "connection",
            Self::Malformed(_) => "malformed",
            Self::Timeout => "timeout",
        }
    }
}

impl From<ReadError> for PurgeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Decode(e) => Self::Malformed(e),
            ReadError::Stream(e) => Self::Stream(e),
        }
    }
}

/// Asks the node on `conn` to purge what `req` names; how many stored responses it removed.
pub async fn purge_node(conn: &quinn::Connection, req: PurgeRequest) -> Result<u64, PurgeError> {
    tokio::time::timeout(PURGE_TIMEOUT, exchange(conn, req))
        .await
        .map_err(|_| PurgeError::Timeout)?
}

async fn exchange(conn: &quinn::Connection, req: PurgeRequest) -> Result<u64, PurgeError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_msg(&mut send, &OrchStreamOpen::Purge(req)).await?;
    // Nothing more to say: the node reads no further.
    let _ = send.finish();
    let reply = match read_frame(&mut recv).await? {
        Some(body) => decode::<PurgeReply>(&body).map_err(PurgeError::Malformed)?,
        None => {
            return Err(PurgeError::Malformed(DecodeError::Malformed(
                "the stream ended before the reply",
            )));
        }
    };
    match reply {
        PurgeReply::Purged { count } => Ok(count),
        PurgeReply::NoCache => Err(PurgeError::NoCache),
    }
}
