//! Gzip members (RFC 1952), back to back, as one stream: the framing read here, the
//! deflate data inflated by `flate2`'s raw decoder.
//!
//! Not `flate2`'s own gzip reader, because of what it links: a CRC-32 per member. A layer's
//! tar stream is hashed whole (its `diff_id`, sha256) and refused on any difference, which
//! a CRC cannot add to; each member's length (`ISIZE`) is still checked. Header fields are
//! bounded: a name or comment longer than [`MAX_TEXT`] is refused rather than read forever.

use flate2::bufread::DeflateDecoder;
use std::io::{self, BufRead, Read};

/// The longest file name or comment a member header may carry.
pub const MAX_TEXT: usize = 64 * 1024;

const MAGIC: [u8; 2] = [0x1f, 0x8b];
const DEFLATE: u8 = 8;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

enum State<R> {
    /// Between members: a header next, or the end.
    Header(R),
    /// Inflating a member; `out` bytes so far.
    Body {
        inflate: DeflateDecoder<R>,
        out: u64,
    },
    /// Transient, while moving the reader between states; left only on a panic.
    Moving,
}

/// The decompressed bytes of every member of a gzip stream.
pub struct MultiGzip<R> {
    state: State<R>,
    /// A member has been read whole: an empty stream is not gzip.
    any: bool,
}

impl<R: BufRead> MultiGzip<R> {
    pub fn new(reader: R) -> Self {
        Self {
            state: State::Header(reader),
            any: false,
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {why}"))
}

/// Reads a header's fields after its magic and skips them; the reader is left at the
/// member's deflate data.
fn skip_header<R: BufRead>(r: &mut R) -> io::Result<()> {
    let mut fixed = [0u8; 8];
    read_all(r, &mut fixed)?;
    let (method, flags) = (fixed[0], fixed[1]);
    if method != DEFLATE {
        return Err(invalid("compression method is not deflate"));
    }
    if flags & RESERVED != 0 {
        return Err(invalid("reserved header flags set"));
    }
    if flags & FEXTRA != 0 {
        let mut len = [0u8; 2];
        read_all(r, &mut len)?;
        let len = u64::from(u16::from_le_bytes(len));
        let skipped = io::copy(&mut r.by_ref().take(len), &mut io::sink())?;
        if skipped != len {
            return Err(truncated());
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            skip_text(r)?;
        }
    }
    if flags & FHCRC != 0 {
        read_all(r, &mut [0u8; 2])?;
    }
    Ok(())
}

/// Skips a zero-terminated field of at most [`MAX_TEXT`] bytes.
fn skip_text<R: BufRead>(r: &mut R) -> io::Result<()> {
    let mut seen = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(truncated());
        }
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            r.consume(end + 1);
            return Ok(());
        }
        seen += buf.len();
        let n = buf.len();
        r.consume(n);
        if seen > MAX_TEXT {
            return Err(invalid("a header name or comment is too long"));
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "gzip: truncated")
}

fn read_all<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated()
        } else {
            e
        }
    })
}

impl<R: BufRead> Read for MultiGzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, State::Moving) {
                State::Header(mut r) => {
                    let start = r.fill_buf()?;
                    if start.is_empty() {
                        self.state = State::Header(r);
                        return if self.any { Ok(0) } else { Err(truncated()) };
                    }
                    let mut magic = [0u8; 2];
                    read_all(&mut r, &mut magic)?;
                    if magic != MAGIC {
                        return Err(invalid("not a gzip member"));
                    }
                    skip_header(&mut r)?;
                    self.state = State::Body {
                        inflate: DeflateDecoder::new(r),
                        out: 0,
                    };
                }
                State::Body { mut inflate, out } => {
                    let n = inflate.read(buf)?;
                    if n > 0 {
                        self.state = State::Body {
                            inflate,
                            out: out + n as u64,
                        };
                        return Ok(n);
                    }
                    // The member's deflate data ended: its trailer, CRC-32 then ISIZE.
                    let mut r = inflate.into_inner();
                    let mut trailer = [0u8; 8];
                    read_all(&mut r, &mut trailer)?;
                    let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
                    // ISIZE is the length modulo 2^32: the cast keeps exactly those bits.
                    if size != out as u32 {
                        return Err(invalid("a member's length is not what its trailer says"));
                    }
                    self.any = true;
                    self.state = State::Header(r);
                }
                State::Moving => return Err(invalid("reader used after a panic")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("in memory");
        e.finish().expect("in memory")
    }

    fn inflate(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        MultiGzip::new(io::BufReader::with_capacity(7, bytes)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_back_to_back_read_as_one_stream() {
        let mut two = gz(b"hello, ");
        two.extend(gz(b"world"));
        assert_eq!(inflate(&two).expect("reads"), b"hello, world");
        assert_eq!(inflate(&gz(b"")).expect("an empty member"), b"");
    }

    #[test]
    fn optional_header_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("made here")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(b"payload").expect("in memory");
        let bytes = e.finish().expect("in memory");
        assert_eq!(inflate(&bytes).expect("reads"), b"payload");
    }

    #[test]
    fn malformed_streams_are_refused() {
        let good = gz(b"some data to compress");
        let kind = |bytes: &[u8]| inflate(bytes).expect_err("refused").kind();
        assert_eq!(kind(b""), io::ErrorKind::UnexpectedEof, "empty");
        assert_eq!(kind(&good[..good.len() - 3]), io::ErrorKind::UnexpectedEof);
        assert_eq!(kind(&good[..5]), io::ErrorKind::UnexpectedEof);
        let mut magic = good.clone();
        magic[0] = 0;
        assert_eq!(kind(&magic), io::ErrorKind::InvalidData);
        let mut method = good.clone();
        method[2] = 7;
        assert_eq!(kind(&method), io::ErrorKind::InvalidData);
        let mut reserved = good.clone();
        reserved[3] |= 0x80;
        assert_eq!(kind(&reserved), io::ErrorKind::InvalidData);
        let mut size = good.clone();
        let at = size.len() - 4;
        size[at] ^= 1;
        assert_eq!(kind(&size), io::ErrorKind::InvalidData, "ISIZE");
        let mut garbage = good.clone();
        garbage.extend_from_slice(b"trailing");
        assert_eq!(kind(&garbage), io::ErrorKind::InvalidData);
        // A name that never ends is refused after MAX_TEXT bytes, not read to the end.
        let mut endless = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 255];
        endless.extend(std::iter::repeat_n(b'a', MAX_TEXT + 100));
        assert_eq!(kind(&endless), io::ErrorKind::InvalidData);
        let mut extra = vec![0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, 0, 255, 0xff, 0xff];
        extra.extend_from_slice(&[0; 10]);
        assert_eq!(kind(&extra), io::ErrorKind::UnexpectedEof);
    }
}
