//! Reading a workload's log from the node that runs it, over that node's QUIC connection.
//!
//! [`open_logs`] opens a stream on the node's connection, sends an
//! `OrchStreamOpen::Logs` header and finishes its side; the node answers with a `LogsReply`,
//! then `LogLines` frames: the last lines it kept, then (when following) each line as it is
//! printed. The node finishes the stream after the tail, or when a followed workload is
//! removed. Dropping the [`LogStream`] stops the stream, which ends the node's forwarding.
//!
//! This module only reads: it never changes anything on the node, never holds more than one
//! frame of lines, and never closes the node's connection, whatever the node sends on the
//! stream; a bad answer fails that stream alone.

use edge_proto::quic::{ReadError, WriteError, read_frame, write_msg};
use edge_proto::{DecodeError, LogLines, LogsReply, LogsRequest, OrchStreamOpen, decode};
use std::time::Duration;

/// How long opening a stream and the node's first answer may take together. Opening waits
/// while the node already serves as many streams as it allows; a node that does not serve
/// logs never answers.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The code a dropped [`LogStream`] stops the node's side with: the reader is done, no error.
const READER_DONE: quinn::VarInt = quinn::VarInt::from_u32(0);

/// Why a workload's log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The node runs no workload by that name. Not retryable until the workload is assigned
    /// there.
    #[error("the node runs no such workload")]
    NotFound,
    /// No stream could be opened: the node's connection is closed or closing. Retryable once
    /// the node reconnects.
    #[error("opening a stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The request could not be sent: the stream or the connection failed. Retryable.
    #[error("sending the request: {0}")]
    Send(#[from] WriteError),
    /// The stream broke while reading: the node reset it (it refuses what it was asked) or the
    /// connection was lost. Retryable if the connection was.
    #[error("reading the stream: {0}")]
    Stream(quinn::ReadExactError),
    /// The node's answer is not a valid logs reply or frame of lines. The node's bug; the
    /// stream is abandoned, the connection stays.
    #[error("malformed answer from the node: {0}")]
    Malformed(DecodeError),
    /// The stream did not open, or the node did not answer, within [`OPEN_TIMEOUT`].
    /// Retryable; a node that predates logs streams always times out.
    #[error("no answer from the node within {}s", OPEN_TIMEOUT.as_secs())]
    Timeout,
}

impl LogsError {
    /// Whether asking again, unchanged, can succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::NotFound | Self::Malformed(_))
    }
}

impl From<ReadError> for LogsError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Decode(e) => Self::Malformed(e),
            ReadError::Stream(e) => Self::Stream(e),
        }
    }
}

/// Asks the node on `conn` for a workload's log. Returns once the node has said it streams
/// it; the lines come from [`LogStream::next`].
pub async fn open_logs(conn: &quinn::Connection, req: LogsRequest) -> Result<LogStream, LogsError> {
    tokio::time::timeout(OPEN_TIMEOUT, open(conn, req))
        .await
        .map_err(|_| LogsError::Timeout)?
}

async fn open(conn: &quinn::Connection, req: LogsRequest) -> Result<LogStream, LogsError> {
    let (mut send, recv) = conn.open_bi().await?;
    write_msg(&mut send, &OrchStreamOpen::Logs(req)).await?;
    // Nothing more to say: the node reads no further.
    let _ = send.finish();
    let mut stream = LogStream { recv };
    let reply = match read_frame(&mut stream.recv).await? {
        Some(body) => decode::<LogsReply>(&body).map_err(LogsError::Malformed)?,
        None => {
            return Err(LogsError::Malformed(DecodeError::Malformed(
                "the stream ended before the reply",
            )));
        }
    };
    match reply {
        LogsReply::Streaming => Ok(stream),
        LogsReply::NotFound => Err(LogsError::NotFound),
    }
}

/// A workload's log as the node sends it. Dropping it stops the stream, and with it the
/// node's forwarding.
#[derive(Debug)]
pub struct LogStream {
    recv: quinn::RecvStream,
}

impl LogStream {
    /// The next lines, oldest first; `None` once the node has sent everything (the tail
    /// without follow, or a followed workload was removed). Waits as long as the workload
    /// prints nothing: bound it with a timeout if that matters to the caller, and drop the
    /// stream when it fires. Not cancel-safe: a call dropped while a frame is half read loses
    /// it, and the stream is out of step from then on.
    pub async fn next(&mut self) -> Result<Option<Vec<String>>, LogsError> {
        let lines = match read_frame(&mut self.recv).await {
            Ok(None) => return Ok(None),
            Ok(Some(body)) => decode::<LogLines>(&body),
            Err(ReadError::Decode(e)) => Err(e),
            Err(ReadError::Stream(e)) => return Err(LogsError::Stream(e)),
        }
        .map_err(|e| {
            // Nothing after a bad frame can be trusted to line up: abandon the stream.
            let _ = self.recv.stop(READER_DONE);
            LogsError::Malformed(e)
        })?;
        Ok(Some(
            lines
                .lines
                .into_vec()
                .into_iter()
                .map(|l| l.into_string())
                .collect(),
        ))
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        // Already finished or stopped is fine: either way the node sends nothing more.
        let _ = self.recv.stop(READER_DONE);
    }
}
