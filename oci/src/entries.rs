//! Tar entries as archives mean them: each header with its GNU long name, GNU long link or
//! PAX record applied, every extension read under a small bound.
//!
//! The `tar` crate can apply these extensions itself, but it reads each one whole into
//! memory, however large the header says it is: a layer of a few MiB could ask a node for
//! gigabytes. So entries are read raw and the extensions applied here, each refused past
//! [`MAX_EXTENSION_BYTES`]. An entry named twice (a GNU long name and a PAX path), a PAX
//! size that contradicts the header (the framing other tools would use), and GNU sparse
//! files are refused too: each is a way for two tar readers to see two different archives.
//! This module must never buffer more than one bounded extension, and never guess.

use std::io::{self, Read};
use tar::{EntryType, Header, PaxExtensions};

/// Largest extension header read: far above a 4096-byte path plus the usual PAX records
/// (times, owners, a few extended attributes).
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// One logical entry: its header and what extensions said about it.
#[derive(Debug)]
pub struct Logical {
    /// A copy: the entry's data reader borrows the original.
    pub header: Header,
    pub kind: EntryType,
    /// The entry's name, from a PAX `path`, a GNU long name, or the header.
    pub path: Vec<u8>,
    /// The link target, from a PAX `linkpath`, a GNU long link, or the header.
    pub link: Option<Vec<u8>>,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Owner and time from a PAX record, which take precedence over the header's.
    pub pax_uid: Option<u64>,
    pub pax_gid: Option<u64>,
    pub pax_mtime: Option<u64>,
}

/// Why the stream could not be read as entries.
#[derive(Debug)]
pub enum Failure<E> {
    /// The tar stream itself: unreadable, or an extension refused (as `InvalidData`).
    Tar(io::Error),
    /// What the visitor returned.
    Visit(E),
}

/// Extensions seen, waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads `reader` as a tar stream up to its end-of-archive marker, calling `visit` with
/// every logical entry and a reader of its data (what `visit` leaves unread is skipped).
pub fn read<R: Read, E>(
    reader: R,
    mut visit: impl FnMut(&Logical, &mut dyn Read) -> Result<(), E>,
) -> Result<(), Failure<E>> {
    let mut archive = tar::Archive::new(reader);
    let mut pending = Pending::default();
    for entry in archive.entries().map_err(Failure::Tar)?.raw(true) {
        let mut entry = entry.map_err(Failure::Tar)?;
        let kind = entry.header().entry_type();
        let slot = match kind {
            EntryType::GNULongName => Some(&mut pending.long_name),
            EntryType::GNULongLink => Some(&mut pending.long_link),
            EntryType::XHeader => Some(&mut pending.pax),
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return Err(Failure::Tar(invalid(format!(
                    "two {kind:?} headers for one entry"
                ))));
            }
            *slot = Some(read_extension(&mut entry, kind).map_err(Failure::Tar)?);
            continue;
        }
        if kind == EntryType::XGlobalHeader {
            // Archive-wide defaults (usually a comment or a commit id); nothing this
            // crate reads comes from them. Read only to bound it.
            read_extension(&mut entry, kind).map_err(Failure::Tar)?;
            continue;
        }
        if kind == EntryType::GNUSparse {
            // Its extended sparse headers change the framing; refuse before reading on.
            return Err(Failure::Tar(invalid(
                "GNU sparse files are not supported".into(),
            )));
        }
        let extensions = std::mem::take(&mut pending);
        let logical =
            apply(entry.header().clone(), kind, entry.size(), extensions).map_err(Failure::Tar)?;
        visit(&logical, &mut entry).map_err(Failure::Visit)?;
    }
    if !pending.is_empty() {
        return Err(Failure::Tar(invalid(
            "extension header with no entry after it".into(),
        )));
    }
    Ok(())
}

fn read_extension(entry: &mut dyn Read, kind: EntryType) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    entry.take(MAX_EXTENSION_BYTES + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_EXTENSION_BYTES {
        return Err(invalid(format!(
            "{kind:?} header over {MAX_EXTENSION_BYTES} bytes"
        )));
    }
    Ok(data)
}

fn apply(header: Header, kind: EntryType, size: u64, extensions: Pending) -> io::Result<Logical> {
    let mut logical = Logical {
        header,
        kind,
        path: without_trailing_nuls(extensions.long_name),
        link: extensions.long_link.map(|l| without_trailing_nuls(Some(l))),
        size,
        pax_uid: None,
        pax_gid: None,
        pax_mtime: None,
    };
    let had_long_name = !logical.path.is_empty();
    let had_long_link = logical.link.is_some();
    if let Some(pax) = &extensions.pax {
        for record in PaxExtensions::new(pax) {
            let record = record?;
            let value = record.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| invalid("PAX record is not a number".into()))
            };
            match record.key_bytes() {
                b"path" if had_long_name => {
                    return Err(invalid(
                        "entry named by both a GNU long name and PAX".into(),
                    ));
                }
                b"linkpath" if had_long_link => {
                    return Err(invalid("link named by both a GNU long link and PAX".into()));
                }
                b"path" => logical.path = value.to_vec(),
                b"linkpath" => logical.link = Some(value.to_vec()),
                b"size" if number()? != size => {
                    return Err(invalid("PAX size contradicts the header's".into()));
                }
                b"uid" => logical.pax_uid = Some(number()?),
                b"gid" => logical.pax_gid = Some(number()?),
                b"mtime" => {
                    // Seconds, possibly with a fraction; a time before 1970 reads as 1970.
                    let whole = value.split(|&b| b == b'.').next().unwrap_or_default();
                    logical.pax_mtime = std::str::from_utf8(whole)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .map(|v| u64::try_from(v).unwrap_or(0));
                }
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(invalid("GNU sparse files are not supported".into()));
                }
                _ => {}
            }
        }
    }
    if logical.path.is_empty() {
        logical.path = logical.header.path_bytes().into_owned();
    }
    if logical.link.is_none() {
        logical.link = logical.header.link_name_bytes().map(|l| l.into_owned());
    }
    Ok(logical)
}

/// GNU long names end in a NUL that is not part of the name.
fn without_trailing_nuls(bytes: Option<Vec<u8>>) -> Vec<u8> {
    let mut bytes = bytes.unwrap_or_default();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}
