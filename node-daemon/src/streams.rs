//! Streams the orchestrator opens on the node's connection: a workload's log
//! (`OrchStreamOpen::Logs`), answered with a `LogsReply`, then the last lines the supervisor
//! kept, then, when asked to follow, every new line as it is printed; and a purge of the
//! proxy's cache (`OrchStreamOpen::Purge`, carried out by [`crate::proxy::purge`]), answered
//! with one `PurgeReply`.
//!
//! Each stream is its own task. A stream that says nothing in time, or says something that is
//! not a header the node serves, is reset; the connection and every other stream carry on.
//! This module only reads the supervisor's logs: it never starts, stops or changes a workload,
//! and never buffers more than one batch of lines per stream. A follower that cannot keep up
//! loses lines (and is told how many), never slows the workload or grows the node's memory.

use crate::supervisor::Supervisor;
use edge_proto::quic::{ReadError, WriteError, read_frame, write_msg};
use edge_proto::{DecodeError, LogLines, LogsReply, LogsRequest, OrchStreamOpen, decode};
use edge_proxy::cache::Cache;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{debug, warn};

/// How long a new stream may take to say what it is for.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The code a refused stream is reset and stopped with.
const REFUSED: quinn::VarInt = quinn::VarInt::from_u32(1);
/// The code a purge stream is reset with when the purge itself failed.
const PURGE_FAILED: quinn::VarInt = quinn::VarInt::from_u32(2);
/// Lines taken from a follow feed before they are sent. One batch packs into a few frames.
const FOLLOW_BATCH_LINES: usize = LogLines::MAX_LINES;

/// Why a stream from the orchestrator was refused or ended before its natural end.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No header arrived within [`OPEN_TIMEOUT`]. The orchestrator's fault; the stream is
    /// reset.
    #[error("no stream header within {}s", OPEN_TIMEOUT.as_secs())]
    Timeout,
    /// The header is not one the node serves, the stream ended before it, or (while
    /// following) bytes followed it. The orchestrator's fault; the stream is reset, the
    /// connection stays.
    #[error("bad stream: {0}")]
    Malformed(#[from] DecodeError),
    /// Reading failed underneath: the orchestrator reset the stream or the connection was
    /// lost. Nobody's bug; nothing to retry on this side.
    #[error("reading the stream: {0}")]
    Read(String),
    /// Writing failed: the orchestrator stopped reading or the connection was lost. Nobody's
    /// bug; the stream is over.
    #[error("writing the stream: {0}")]
    Write(#[from] WriteError),
}

impl StreamError {
    /// Whether the orchestrator broke the protocol (worth a warning), rather than went away.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::Timeout | Self::Malformed(_))
    }
}

/// How a logs stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// No such workload; `NotFound` sent.
    NotFound,
    /// The tail was sent and the stream finished.
    Tail,
    /// The orchestrator stopped reading or reset its side.
    ReaderGone,
    /// The workload was removed; the stream finished.
    WorkloadRemoved,
}

/// Accepts the streams the orchestrator opens on `conn` until the connection ends, serving
/// each in a task of its own.
/// `cache` is the proxy's, `None` on a node without `[proxy]`.
pub async fn serve(conn: quinn::Connection, supervisor: Supervisor, cache: Option<Cache>) {
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(supervisor.clone(), cache.clone(), send, recv));
            }
            Err(error) => {
                debug!(%error, "no more streams from the orchestrator on this connection");
                return;
            }
        }
    }
}

async fn serve_stream(
    supervisor: Supervisor,
    cache: Option<Cache>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req = match read_header(&mut recv).await {
        Ok(OrchStreamOpen::Logs(req)) => req,
        Ok(OrchStreamOpen::Purge(req)) => {
            let reply = match crate::proxy::purge::purge(cache.as_ref(), req).await {
                Ok(reply) => reply,
                Err(error) => {
                    // No answer is better than a wrong one: the orchestrator sees the reset.
                    warn!(%error, "cache purge failed");
                    let _ = send.reset(PURGE_FAILED);
                    return;
                }
            };
            match write_msg(&mut send, &reply).await {
                Ok(()) => {
                    let _ = send.finish();
                }
                Err(error) => ended(&mut send, &mut recv, None, &StreamError::Write(error)),
            }
            return;
        }
        Err(error) => return ended(&mut send, &mut recv, None, &error),
    };
    let workload = req.workload.clone();
    match serve_logs(&supervisor, req, &mut send, &mut recv).await {
        Ok(served) => debug!(%workload, ?served, "logs stream done"),
        Err(error) => ended(&mut send, &mut recv, Some(workload.as_str()), &error),
    }
}

/// Logs why a stream ended early and, if the orchestrator broke the protocol, resets it.
fn ended(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    workload: Option<&str>,
    error: &StreamError,
) {
    if error.is_peer_fault() {
        warn!(workload, %error, "refused a stream from the orchestrator");
        let _ = send.reset(REFUSED);
        let _ = recv.stop(REFUSED);
    } else {
        debug!(workload, %error, "stream from the orchestrator ended early");
    }
}

async fn read_header(recv: &mut quinn::RecvStream) -> Result<OrchStreamOpen, StreamError> {
    match tokio::time::timeout(OPEN_TIMEOUT, read_frame(recv)).await {
        Err(_) => Err(StreamError::Timeout),
        Ok(Ok(Some(body))) => Ok(decode(&body)?),
        Ok(Ok(None)) => Err(DecodeError::Malformed("the stream ended before its header").into()),
        Ok(Err(ReadError::Decode(e))) => Err(e.into()),
        Ok(Err(ReadError::Stream(e))) => Err(StreamError::Read(e.to_string())),
    }
}

async fn serve_logs(
    supervisor: &Supervisor,
    req: LogsRequest,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<Served, StreamError> {
    let tail_lines = usize::try_from(req.tail_lines).unwrap_or(usize::MAX);
    // The tail and the feed come from one snapshot, so no line falls between them and none
    // is sent twice.
    let Some((tail, mut feed)) = supervisor.log_tail_and_follow(req.workload.as_str(), tail_lines)
    else {
        write_msg(send, &LogsReply::NotFound).await?;
        let _ = send.finish();
        return Ok(Served::NotFound);
    };
    write_msg(send, &LogsReply::Streaming).await?;
    write_lines(send, tail).await?;
    if !req.follow {
        let _ = send.finish();
        return Ok(Served::Tail);
    }

    // Resolves when the orchestrator stops reading, even while no line is printed.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut peer_open = true;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = &mut stopped => return Ok(Served::ReaderGone),
            read = recv.read_chunk(1, true), if peer_open => match read {
                // The orchestrator finished its side after the header, as it should.
                Ok(None) => peer_open = false,
                Ok(Some(_)) => return Err(DecodeError::Malformed("bytes after the header").into()),
                Err(quinn::ReadError::Reset(_)) => return Ok(Served::ReaderGone),
                Err(e) => return Err(StreamError::Read(e.to_string())),
            },
            line = feed.recv() => match line {
                Ok(line) => batch.push(line),
                Err(RecvError::Lagged(n)) => batch.push(skipped(n)),
                Err(RecvError::Closed) => {
                    let _ = send.finish();
                    return Ok(Served::WorkloadRemoved);
                }
            },
        }
        // Whatever else is already waiting goes out in the same frames.
        while !batch.is_empty() && batch.len() < FOLLOW_BATCH_LINES {
            match feed.try_recv() {
                Ok(line) => batch.push(line),
                Err(TryRecvError::Lagged(n)) => batch.push(skipped(n)),
                // Empty, or closed: the next `recv` says which.
                Err(_) => break,
            }
        }
        write_lines(send, batch).await?;
    }
}

/// Sends `lines` as as many `LogLines` frames as they need.
async fn write_lines(send: &mut quinn::SendStream, lines: Vec<String>) -> Result<(), WriteError> {
    for frame in LogLines::pack(lines) {
        write_msg(send, &frame).await?;
    }
    Ok(())
}

/// Stands in for lines a slow follower missed, so a gap is never silent.
fn skipped(n: u64) -> String {
    format!("[{n} lines skipped: the log reader fell behind]")
}
