//! The node's outbox on disk: what `node_core::outbox::Outbox` decides, kept across a crash
//! or a power cut.
//!
//! `DATA_DIR/outbox/log` is an append-only log of entries: a record added, records gone
//! (acknowledged or shed), and the outbox's counters and gaps. Each entry is framed as a
//! 4-byte little-endian length, the first 4 bytes of the SHA-256 of its body, and the body
//! (postcard). Writes go to the file as they happen; [`OutboxStore::commit`] makes them
//! durable with one `fdatasync`, so a caller batches what it adds and commits once.
//!
//! Opening replays the log. A crash can leave a torn last entry (a length past the end, a
//! checksum that does not match): replay stops there, the file is cut back to the last
//! whole entry, and [`Recovery`] says how many bytes went. Everything before it was
//! committed or was never promised. When the log holds much more than the live records
//! (after many acknowledgements), it is rewritten to a new file, synced and renamed over
//! the old one, and the directory synced.
//!
//! The directory is 0700 and the file 0600: records may carry what operators did.
//!
//! **Invariant.** This crate decides nothing: what to keep, shed or send is
//! `node_core::outbox`'s. What it stores, replayed, gives back the same outbox.

use node_core::outbox::{Class, Gap, Outbox, PushError, Record, Shed};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const LOG: &str = "log";
const LOG_TMP: &str = "log.tmp";
/// Length and checksum before each entry's body.
const FRAME_HEAD: usize = 8;
/// The largest entry body: a record's body and key are bounded by the budget, and no
/// budget is near this. A larger length is damage, never an allocation.
const MAX_ENTRY_BYTES: u32 = 16 << 20;
/// The log is rewritten once it is this many times the live records' size (and over
/// [`COMPACT_FLOOR`]).
const COMPACT_RATIO: u64 = 4;
const COMPACT_FLOOR: u64 = 256 * 1024;

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Push(#[from] PushError),
}

/// What opening found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed into the outbox.
    pub records: usize,
    /// Bytes cut from the end of the log: a torn or damaged tail.
    pub torn_bytes: u64,
}

/// One entry of the log.
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Put {
        seq: u64,
        class: u8,
        key: String,
        at_ms: u64,
        body: Vec<u8>,
    },
    Gone {
        seqs: Vec<u64>,
    },
    Meta {
        next_seq: u64,
        shed: [u64; 3],
        gaps: Vec<[u64; 5]>,
    },
    /// The numbering has been placed after what the orchestrator holds of this node (see
    /// [`OutboxStore::is_fresh`]).
    Anchored,
}

fn class_byte(class: Class) -> u8 {
    match class {
        Class::Event => 0,
        Class::Status => 1,
        Class::Metric => 2,
    }
}

fn class_of(byte: u8) -> Option<Class> {
    match byte {
        0 => Some(Class::Event),
        1 => Some(Class::Status),
        2 => Some(Class::Metric),
        _ => None,
    }
}

/// The outbox's log, open for appending.
#[derive(Debug)]
pub struct OutboxStore {
    dir: PathBuf,
    file: File,
    /// Bytes in the log.
    len: u64,
    /// The log says its numbering was placed after what the orchestrator holds.
    anchored: bool,
}

impl OutboxStore {
    /// Opens (or creates) `data_dir/outbox/`, replays it into an outbox of `budget` bytes,
    /// and cuts a torn tail. The outbox sheds what no longer fits a smaller budget; that is
    /// written back at once.
    pub fn open(data_dir: &Path, budget: u64) -> Result<(Self, Outbox, Recovery), StoreError> {
        let dir = data_dir.join("outbox");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(&dir, e))?;
        let path = dir.join(LOG);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error(&path, e))?;
        let (replayed, whole) = replay(&bytes);
        let torn_bytes = (bytes.len() - whole) as u64;
        if torn_bytes > 0 {
            file.set_len(whole as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error(&path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| io_error(&path, e))?;
        let records = replayed.records.len();
        let (outbox, removed) = Outbox::restore(
            budget,
            replayed.records.into_values(),
            replayed.gaps,
            replayed.shed,
            replayed.next_seq,
        );
        let mut store = Self {
            dir,
            file,
            len: whole as u64,
            anchored: replayed.anchored,
        };
        if !removed.is_empty() {
            store.write(&Entry::Gone { seqs: removed })?;
            store.write_meta(&outbox)?;
            store.commit()?;
        }
        Ok((
            store,
            outbox,
            Recovery {
                records,
                torn_bytes,
            },
        ))
    }

    /// Adds a record to `outbox` and writes it (and what it shed) to the log; durable at the
    /// next [`commit`](Self::commit). Returns its sequence number.
    pub fn push(
        &mut self,
        outbox: &mut Outbox,
        class: Class,
        key: &str,
        at_ms: u64,
        body: Vec<u8>,
    ) -> Result<u64, StoreError> {
        let shed_before = outbox.shed();
        let pushed = outbox.push(class, key, at_ms, body)?;
        if !pushed.removed.is_empty() {
            self.write(&Entry::Gone {
                seqs: pushed.removed,
            })?;
        }
        if let Some(record) = outbox.get(pushed.seq) {
            self.write(&put(record))?;
        }
        if outbox.shed() != shed_before {
            self.write_meta(outbox)?;
        }
        Ok(pushed.seq)
    }

    /// The orchestrator stored these records: they leave `outbox` and the log (durable at
    /// the next [`commit`](Self::commit)).
    pub fn ack(
        &mut self,
        outbox: &mut Outbox,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<(), StoreError> {
        let gone = outbox.ack(seqs);
        if !gone.is_empty() {
            self.write(&Entry::Gone { seqs: gone })?;
        }
        Ok(())
    }

    /// Whether this outbox numbers from scratch: its log was made anew (a first start, or
    /// the old one was lost) and the orchestrator has not yet said what it holds of this
    /// node. Its low numbers may be ones the orchestrator already holds from before.
    pub fn is_fresh(&self) -> bool {
        !self.anchored
    }

    /// The orchestrator holds this node's sequence numbers up to `through` (`None`: none):
    /// moves what `outbox` holds above it where they could meet (see
    /// `Outbox::number_after`), and from then on the outbox is no longer fresh. Durable
    /// when it returns. Returns whether anything moved.
    pub fn number_after(
        &mut self,
        outbox: &mut Outbox,
        through: Option<u64>,
    ) -> Result<bool, StoreError> {
        let fresh = !self.anchored;
        let moved = through.is_some_and(|t| outbox.number_after(t, fresh));
        self.anchored = true;
        if moved {
            self.compact(outbox)?;
        } else if fresh {
            self.write(&Entry::Anchored)?;
            self.commit()?;
        }
        Ok(moved)
    }

    /// The orchestrator stored the gaps up to `last`.
    pub fn ack_gaps(&mut self, outbox: &mut Outbox, last: u64) -> Result<(), StoreError> {
        let before = outbox.gaps().len();
        outbox.ack_gaps(last);
        if outbox.gaps().len() != before {
            self.write_meta(outbox)?;
        }
        Ok(())
    }

    /// Makes what was written durable: one `fdatasync`. Then rewrites the log if it has
    /// grown well past what `outbox` holds.
    pub fn commit_and_compact(&mut self, outbox: &Outbox) -> Result<(), StoreError> {
        self.commit()?;
        self.compact_if_due(outbox)
    }

    /// Rewrites the log if it has grown well past what `outbox` holds; the rewrite is
    /// synced, whatever came before it in the log too.
    pub fn compact_if_due(&mut self, outbox: &Outbox) -> Result<(), StoreError> {
        if self.len > COMPACT_FLOOR.max(outbox.used().saturating_mul(COMPACT_RATIO)) {
            self.compact(outbox)?;
        }
        Ok(())
    }

    /// Makes what was written durable: one `fdatasync`.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join(LOG);
        self.file.sync_data().map_err(|e| io_error(&path, e))
    }

    /// Bytes in the log.
    pub fn log_bytes(&self) -> u64 {
        self.len
    }

    /// Writes the live records and the counters to a new log, syncs it, renames it over
    /// the old one and syncs the directory.
    fn compact(&mut self, outbox: &Outbox) -> Result<(), StoreError> {
        let tmp = self.dir.join(LOG_TMP);
        let path = self.dir.join(LOG);
        let mut out = Vec::new();
        frame(&meta(outbox), &mut out);
        if self.anchored {
            frame(&Entry::Anchored, &mut out);
        }
        for record in outbox.records() {
            frame(&put(record), &mut out);
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        file.write_all(&out)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&self.dir, e))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        self.len = out.len() as u64;
        Ok(())
    }

    fn write_meta(&mut self, outbox: &Outbox) -> Result<(), StoreError> {
        self.write(&meta(outbox))
    }

    fn write(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let mut out = Vec::new();
        frame(entry, &mut out);
        let path = self.dir.join(LOG);
        self.file.write_all(&out).map_err(|e| io_error(&path, e))?;
        self.len += out.len() as u64;
        Ok(())
    }
}

fn meta(outbox: &Outbox) -> Entry {
    let shed = outbox.shed();
    Entry::Meta {
        next_seq: outbox.next_seq(),
        shed: [
            shed.metrics_downsampled,
            shed.status_coalesced,
            shed.events_dropped,
        ],
        gaps: outbox
            .gaps()
            .iter()
            .map(|g| [g.first, g.last, g.count, g.first_at_ms, g.last_at_ms])
            .collect(),
    }
}

fn put(record: &Record) -> Entry {
    Entry::Put {
        seq: record.seq,
        class: class_byte(record.class),
        key: record.key.clone(),
        at_ms: record.at_ms,
        body: record.body.clone(),
    }
}

/// Appends `entry`, framed, to `out`.
fn frame(entry: &Entry, out: &mut Vec<u8>) {
    // Invariant: encoding into a Vec cannot fail for these types.
    let body = postcard::to_allocvec(entry).expect("an entry encodes");
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&check(&body));
    out.extend_from_slice(&body);
}

fn check(body: &[u8]) -> [u8; 4] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; 4];
    out.copy_from_slice(&digest.as_ref()[..4]);
    out
}

/// What a replay rebuilt.
#[derive(Debug, Default)]
struct Replayed {
    records: std::collections::BTreeMap<u64, Record>,
    gaps: Vec<Gap>,
    shed: Shed,
    next_seq: u64,
    anchored: bool,
}

/// Replays the whole entries of `bytes`; returns what they hold and where the last whole
/// entry ends.
fn replay(bytes: &[u8]) -> (Replayed, usize) {
    let mut replayed = Replayed {
        next_seq: 1,
        ..Replayed::default()
    };
    let mut at = 0;
    while let Some(entry) = entry_at(bytes, at) {
        let (entry, next) = entry;
        match entry {
            Entry::Put {
                seq,
                class,
                key,
                at_ms,
                body,
            } => {
                let Some(class) = class_of(class) else {
                    break;
                };
                replayed.next_seq = replayed.next_seq.max(seq.saturating_add(1));
                replayed.records.insert(
                    seq,
                    Record {
                        seq,
                        class,
                        key,
                        at_ms,
                        body,
                    },
                );
            }
            Entry::Gone { seqs } => {
                for seq in seqs {
                    replayed.records.remove(&seq);
                }
            }
            Entry::Anchored => replayed.anchored = true,
            Entry::Meta {
                next_seq,
                shed,
                gaps,
            } => {
                replayed.next_seq = replayed.next_seq.max(next_seq);
                replayed.shed = Shed {
                    metrics_downsampled: shed[0],
                    status_coalesced: shed[1],
                    events_dropped: shed[2],
                };
                replayed.gaps = gaps
                    .into_iter()
                    .map(|[first, last, count, first_at_ms, last_at_ms]| Gap {
                        first,
                        last,
                        count,
                        first_at_ms,
                        last_at_ms,
                    })
                    .collect();
            }
        }
        at = next;
    }
    (replayed, at)
}

/// The whole entry at `at`, and where the next one starts; `None` at the end or at a torn
/// or damaged entry.
fn entry_at(bytes: &[u8], at: usize) -> Option<(Entry, usize)> {
    let head = bytes.get(at..at.checked_add(FRAME_HEAD)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?);
    if len > MAX_ENTRY_BYTES {
        return None;
    }
    let start = at + FRAME_HEAD;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let body = bytes.get(start..end)?;
    if check(body) != head[4..8] {
        return None;
    }
    let entry = postcard::from_bytes(body).ok()?;
    Some((entry, end))
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}
