//! A layer blob turned into its tar stream, metered: decompressed, hashed (the diff_id), and
//! stopped the moment it passes its limits.
//!
//! The limits are enforced on the bytes coming out of the decoder, before the tar reader
//! sees them, and each read asks the decoder for no more than the budget left: a
//! decompression bomb costs at most the budget, never what it would expand to.

use super::LayerLimits;
use super::gzip::MultiGzip;
use crate::digest::{Digest, HashingReader};
use crate::image::Compression;
use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

/// Which limit the stream passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// More decompressed bytes than `max_unpacked_bytes`.
    Bytes { limit: u64 },
    /// Past the floor, more than `max_ratio` decompressed bytes per compressed byte.
    Ratio { limit: u64 },
}

/// Counts the compressed bytes the decoder has pulled.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

enum Decoder<R: Read> {
    Plain(R),
    // Multi-member: gzip allows members back to back, and tools that compress in parallel
    // (pigz, pgzip in containerd) write them; Go's reader, which registries and Docker use,
    // reads them all.
    Gzip(MultiGzip<BufReader<Counted<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
        }
    }
}

/// The metered, hashed tar stream of one layer.
pub struct Meter<R: Read> {
    inner: HashingReader<Decoder<R>>,
    /// Compressed bytes read so far; `None` for an uncompressed layer.
    compressed: Option<Rc<Cell<u64>>>,
    max_bytes: u64,
    max_ratio: u64,
    ratio_floor_bytes: u64,
    overrun: Option<Overrun>,
}

impl<R: Read> Meter<R> {
    pub fn new(reader: R, compression: Compression, limits: &LayerLimits) -> Self {
        let (decoder, compressed) = match compression {
            Compression::Plain => (Decoder::Plain(reader), None),
            Compression::Gzip => {
                let count = Rc::new(Cell::new(0));
                let counted = Counted {
                    inner: reader,
                    count: Rc::clone(&count),
                };
                (
                    Decoder::Gzip(MultiGzip::new(BufReader::new(counted))),
                    Some(count),
                )
            }
        };
        Self {
            inner: HashingReader::new(decoder),
            compressed,
            max_bytes: limits.max_unpacked_bytes,
            max_ratio: limits.max_ratio,
            ratio_floor_bytes: limits.ratio_floor_bytes,
            overrun: None,
        }
    }

    /// The limit passed, if any. Once set, every later read fails.
    pub fn overrun(&self) -> Option<Overrun> {
        self.overrun
    }

    /// The diff_id, the tar stream's length, and the compressed bytes read.
    pub fn finish(self) -> (Digest, u64, u64) {
        let compressed = self.compressed.as_ref().map(|c| c.get());
        let (diff_id, bytes, _) = self.inner.finish();
        (diff_id, bytes, compressed.unwrap_or(bytes))
    }

    fn refuse(&mut self, overrun: Overrun) -> io::Error {
        self.overrun = Some(overrun);
        io::Error::other("layer stream past its limit")
    }
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(overrun) = self.overrun {
            return Err(self.refuse(overrun));
        }
        // One byte past the budget is enough to know it was passed.
        let budget = self
            .max_bytes
            .saturating_sub(self.inner.byte_count())
            .saturating_add(1);
        let want = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let total = self.inner.byte_count();
        if total > self.max_bytes {
            return Err(self.refuse(Overrun::Bytes {
                limit: self.max_bytes,
            }));
        }
        if let Some(compressed) = &self.compressed {
            // Below the floor a small, very compressible layer (a config directory of
            // zeros) is fine; past it the ratio must hold at every read.
            let ceiling = u128::from(compressed.get()) * u128::from(self.max_ratio);
            if total > self.ratio_floor_bytes && u128::from(total) > ceiling {
                return Err(self.refuse(Overrun::Ratio {
                    limit: self.max_ratio,
                }));
            }
        }
        Ok(n)
    }
}
