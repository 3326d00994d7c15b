//! Lines off a socket, bounded: a line longer than the bound is thrown away through its `\n`
//! (and said so), never held, and the stream goes on with the next line.
//!
//! [`LineReader::next_line`] is cancel-safe: its one await is a plain `read` into a buffer the
//! reader owns (which reads nothing when dropped), and everything read stays in the reader.
//! A `select!` that drops it for another branch loses no byte; the next call goes on where
//! it was.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much one read takes.
const CHUNK_BYTES: usize = 4096;

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its `\n`.
    Text(Vec<u8>),
    /// A line longer than the bound, thrown away through its `\n`: how long it was.
    TooLong(usize),
}

/// Reads lines of at most `max_bytes` (without the `\n`). Holds at most `max_bytes` plus one
/// read's worth, whatever the peer sends.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max_bytes: usize,
    /// Read and not yet returned. Invariant: `buf[..scanned]` holds no `\n`.
    buf: Vec<u8>,
    scanned: usize,
    /// Set while throwing an over-long line away: its bytes so far.
    discarding: Option<usize>,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_bytes: usize) -> Self {
        Self {
            inner,
            max_bytes,
            buf: Vec::new(),
            scanned: 0,
            discarding: None,
            chunk: vec![0; CHUNK_BYTES].into_boxed_slice(),
        }
    }

    /// The next line; `None` at the end of the stream (a last line without its `\n` is
    /// dropped: gpsd ends every line). Cancel-safe; see the module docs.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            // The one await. Cancel-safe: `read` reads nothing if dropped before it is ready.
            let n = self.inner.read(&mut self.chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// A line, if the buffer holds a whole one; else drops what an over-long line has.
    fn take_line(&mut self) -> Option<Line> {
        let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        if let Some(at) = found {
            let end = self.scanned + at;
            let line = match self.discarding.take() {
                Some(dropped) => Line::TooLong(dropped + end),
                None if end > self.max_bytes => Line::TooLong(end),
                None => Line::Text(self.buf[..end].to_vec()),
            };
            self.buf.drain(..=end);
            self.scanned = 0;
            return Some(line);
        }
        if self.discarding.is_some() || self.buf.len() > self.max_bytes {
            *self.discarding.get_or_insert(0) += self.buf.len();
            self.buf.clear();
        }
        self.scanned = self.buf.len();
        None
    }

    /// The stream, for writing to it.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn text(s: &str) -> Option<Line> {
        Some(Line::Text(s.as_bytes().to_vec()))
    }

    #[tokio::test]
    async fn lines_split_anywhere_come_out_whole() {
        let (mut tx, rx) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            tx.write_all(b"one\r\ntwo\n\nthree\nfour")
                .await
                .expect("write");
        });
        let mut lines = LineReader::new(rx, 100);
        assert_eq!(lines.next_line().await.expect("read"), text("one\r"));
        assert_eq!(lines.next_line().await.expect("read"), text("two"));
        assert_eq!(lines.next_line().await.expect("read"), text(""));
        assert_eq!(lines.next_line().await.expect("read"), text("three"));
        writer.await.expect("writer");
        // The unfinished last line is not a line.
        assert_eq!(lines.next_line().await.expect("read"), None);
    }

    #[tokio::test]
    async fn an_over_long_line_is_dropped_through_its_newline_and_held_to_the_bound() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut lines = LineReader::new(rx, 10);
        let writer = tokio::spawn(async move {
            tx.write_all(b"0123456789\n").await.expect("write");
            tx.write_all(&[b'x'; 1 << 20]).await.expect("write");
            tx.write_all(b"\n01234567890\nafter\n")
                .await
                .expect("write");
        });
        assert_eq!(lines.next_line().await.expect("read"), text("0123456789"));
        assert_eq!(
            lines.next_line().await.expect("read"),
            Some(Line::TooLong(1 << 20))
        );
        assert!(
            lines.buf.capacity() <= 10 + 2 * CHUNK_BYTES,
            "{}",
            lines.buf.capacity()
        );
        assert_eq!(
            lines.next_line().await.expect("read"),
            Some(Line::TooLong(11))
        );
        assert_eq!(lines.next_line().await.expect("read"), text("after"));
        writer.await.expect("writer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_given_up_in_a_select_loses_nothing() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut lines = LineReader::new(rx, 100);
        tx.write_all(b"half a ").await.expect("write");
        // The timer wins while the line is incomplete, twice.
        for _ in 0..2 {
            tokio::select! {
                line = lines.next_line() => panic!("no whole line yet: {line:?}"),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tx.write_all(b"line\nnext\n").await.expect("write");
        assert_eq!(lines.next_line().await.expect("read"), text("half a line"));
        assert_eq!(lines.next_line().await.expect("read"), text("next"));
    }
}
