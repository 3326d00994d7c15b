//! Length-prefixed frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard. A length above
//! [`MAX_FRAME_LEN`] is rejected before any byte of the body is buffered.

use alloc::vec::Vec;
use serde::{Serialize, de::DeserializeOwned};

/// The largest frame body either side accepts, in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Why bytes from a peer could not be turned into a message. Every variant is the peer's fault:
/// the connection that carried them is closed with this as the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The body is not a valid message: a bad tag, a field over its bound, invalid UTF-8.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The body held a whole message followed by bytes that belong to none.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `msg` as one frame: length prefix and body. For messages whose bounds keep them
/// within a frame; anything sized by operator input goes through [`try_encode`].
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Invariant: the caller sends a message whose field bounds keep it under the limit.
    try_encode(msg).expect("a bounded message fits one frame")
}

/// Encodes `msg` as one frame, or says how large it would have been if over the limit. For
/// messages whose size depends on what an operator wrote (an assignment's arguments).
pub fn try_encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, DecodeError> {
    let prefix = alloc::vec![0u8; PREFIX_LEN];
    // Invariant: as in `encode`.
    let mut out = postcard::to_extend(msg, prefix).expect("wire types always serialize");
    let body_len = out.len() - PREFIX_LEN;
    if body_len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: body_len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..PREFIX_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes one frame body (without its prefix). The whole body must be one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, rest) = postcard::take_from_bytes(body).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Reads a length prefix; `Err` if it announces more than the limit.
pub fn body_len(prefix: [u8; PREFIX_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

fn malformed(e: postcard::Error) -> DecodeError {
    use postcard::Error as E;
    DecodeError::Malformed(match e {
        E::DeserializeUnexpectedEnd => "message ends early",
        E::DeserializeBadVarint => "bad varint",
        E::DeserializeBadBool => "bad bool",
        E::DeserializeBadChar => "bad char",
        E::DeserializeBadUtf8 => "invalid utf-8",
        E::DeserializeBadOption => "bad option tag",
        E::DeserializeBadEnum => "bad enum tag",
        E::DeserializeBadEncoding => "bad encoding",
        E::DeserializeBadCrc => "bad crc",
        E::SerdeDeCustom => "unknown variant or field over its bound",
        _ => "undecodable",
    })
}

/// Splits a byte stream into frames without doing any I/O: push what arrived, pull frames out.
///
/// It never buffers more than one prefix plus [`MAX_FRAME_LEN`] bytes: an oversized prefix is an
/// error as soon as its four bytes are in. Consumed bytes are skipped by an offset and dropped
/// in bulk, so a frame is not copied on its way out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the unconsumed bytes start.
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The span of the next complete frame body, `Ok(None)` if more bytes are needed.
    fn next_span(&mut self) -> Result<Option<(usize, usize)>, DecodeError> {
        let pending = &self.buf[self.start..];
        let Some(prefix) = pending.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = body_len(*prefix)?;
        if pending.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + PREFIX_LEN;
        self.start = body_start + len;
        Ok(Some((body_start, self.start)))
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        Ok(self.next_span()?.map(|(a, b)| self.buf[a..b].to_vec()))
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        match self.next_span()? {
            Some((a, b)) => decode(&self.buf[a..b]).map(Some),
            None => Ok(None),
        }
    }

    /// Call when the stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.start == self.buf.len() {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }
}
