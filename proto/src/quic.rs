//! Frames over a QUIC stream, and the transport settings both peers use (feature `quic`).
//!
//! Liveness rides on QUIC itself (see [`crate::liveness`]): the node sends keep-alives and
//! advertises its idle timeout, the orchestrator advertises [`MAX_IDLE_TIMEOUT`], and the
//! connection dies after the smaller, the node's, without a packet.

use crate::frame::{DecodeError, PREFIX_LEN, body_len, try_encode};
use crate::liveness::{Liveness, MAX_IDLE_TIMEOUT};
use alloc::vec::Vec;
use core::time::Duration;
use serde::Serialize;

/// How often a quiet node on the default profile proves it is alive.
pub const KEEP_ALIVE: Duration = Liveness::FAST.keep_alive;
/// How long without a packet before a default node's connection is dead. With one keep-alive
/// a second, three lost in a row are tolerated and a dead node is noticed within 4 s.
pub const IDLE_TIMEOUT: Duration = Liveness::FAST.idle_timeout;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream or connection failed underneath.
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadExactError),
}

/// Reads one frame body. `Ok(None)` when the peer finished the stream between frames.
///
/// Not cancel-safe: dropped while a frame is half read (a losing `select!` branch, a
/// timeout), the bytes it has taken are lost and the stream is out of step from then on. A
/// loop that waits on other things too reads in a task of its own that feeds a channel; a
/// timeout around it must abandon the stream.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, ReadError> {
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(DecodeError::Truncated.into()),
        Err(e) => return Err(e.into()),
    }
    let mut body = alloc::vec![0u8; body_len(prefix)?];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ReadError::Decode(DecodeError::Truncated),
        other => ReadError::Stream(other),
    })?;
    Ok(Some(body))
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The message does not fit a frame: ours to fix, nothing was sent.
    #[error(transparent)]
    TooLarge(#[from] DecodeError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::WriteError),
}

/// Writes one message as a frame.
///
/// Not cancel-safe either: dropped midway, it leaves half a frame on the stream. Write in a
/// `select!` arm's body, never in a branch future.
pub async fn write_msg<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), WriteError> {
    let frame = try_encode(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// The node's transport: keep-alives and the idle timeout of its `liveness` profile.
pub fn client_transport(liveness: Liveness) -> quinn::TransportConfig {
    let mut t = transport(liveness.idle_timeout);
    t.keep_alive_interval(Some(liveness.keep_alive));
    t
}

/// The orchestrator's transport: no keep-alives of its own, and the longest idle timeout a
/// node may ask for, so that each connection lives by its node's (QUIC takes the smaller).
/// A handshake is bounded apart from this (the server's `HANDSHAKE_TIMEOUT`).
pub fn server_transport() -> quinn::TransportConfig {
    transport(MAX_IDLE_TIMEOUT)
}

/// Settings for both ends: the idle timeout, and small stream limits, since a node needs one
/// control stream.
fn transport(idle_timeout: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Invariant: profiles are checked to at most MAX_IDLE_TIMEOUT (600 s), far below the
    // varint limit of an idle timeout.
    t.max_idle_timeout(Some(
        idle_timeout
            .min(MAX_IDLE_TIMEOUT)
            .try_into()
            .expect("idle timeout fits a varint"),
    ));
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Control traffic is small: keep per-connection buffers small so thousands of sessions fit.
    t.stream_receive_window((256u32 * 1024).into());
    t.receive_window((512u32 * 1024).into());
    t.send_window(512 * 1024);
    // The only datagrams are the orchestrator's liveness probes, one byte each, acknowledged
    // by QUIC and never read: keep the few that wait small (older ones are dropped).
    t.datagram_receive_buffer_size(Some(PROBE_BUFFER_BYTES));
    t
}

/// What a connection keeps of datagrams nobody reads.
const PROBE_BUFFER_BYTES: usize = 1024;
