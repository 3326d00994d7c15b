//! Frames over a QUIC stream, and the transport settings both peers use (feature `quic`).
//!
//! Liveness rides on QUIC itself: the node sends a keep-alive every [`KEEP_ALIVE`], and either
//! side drops the connection after [`IDLE_TIMEOUT`] without a packet, which is how the
//! orchestrator notices a dead process or a cut link. Per node that costs one small packet each
//! way per [`KEEP_ALIVE`] while nothing else is said.

use crate::frame::{DecodeError, PREFIX_LEN, body_len, try_encode};
use alloc::vec::Vec;
use core::time::Duration;
use serde::Serialize;

/// How often a quiet node proves it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long without a packet before a connection is dead. With one keep-alive a second, three
/// lost in a row are tolerated and a dead node is noticed within 4 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

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

/// Transport settings for both ends: idle timeout, keep-alive (the caller decides who sends it)
/// and small stream limits, since a node needs one control stream.
pub fn transport(keep_alive: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Invariant: 4 s is far below the varint limit of an idle timeout.
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("idle timeout fits a varint"),
    ));
    t.keep_alive_interval(keep_alive.then_some(KEEP_ALIVE));
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
