//! The disk store's files: one file per stored response, named by its [`VariantId`] in hex,
//! in a directory of the cache's own (0700; files 0600, set explicitly so the umask never
//! matters).
//!
//! A file is `MAGIC`, the length of the metadata (u32, little endian), the metadata (JSON:
//! key, variant, policy, head, body length), the body, and the SHA-256 of all that. Files
//! are written under a temporary name and renamed into place, so a reader sees a whole file
//! or none. They are not synced: after a power cut a torn file fails its checksum and is
//! dropped like any corrupt one, which for a cache only costs a miss.
//!
//! **Never**: serve from a file that fails a check (its magic, its lengths, its name against
//! its key and variant, its checksum), follow a link, or remove anything but plain files and
//! links directly in the directory.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use node_core::proxy::cache::{CacheKey, StaleRules};
use ring::digest;
use serde::{Deserialize, Serialize};

use super::entry::{Entry, VariantId, hex, variant_id};

/// The directory's mode.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Every file's mode.
pub(crate) const FILE_MODE: u32 = 0o600;

const MAGIC: &[u8; 8] = b"edgeC\0\0\x01";
const HEADER_LEN: usize = MAGIC.len() + 4;
const DIGEST_LEN: usize = 32;
/// The largest metadata section read: far above any real head, far below harm.
const MAX_META_LEN: usize = 1 << 20;
const TEMP_PREFIX: &str = ".tmp-";

/// Why a file is not a stored response of this cache. For the log only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Corrupt {
    #[error("not a cache file (name or magic)")]
    Foreign,
    #[error("its lengths do not add up (truncated?)")]
    Length,
    #[error("its metadata does not parse: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("its name does not match its key and variant")]
    Name,
    #[error("a stored header is not valid")]
    Header,
    #[error("its checksum does not match")]
    Checksum,
    #[error("it could not be read: {0}")]
    Io(#[from] io::Error),
}

#[derive(Serialize, Deserialize)]
struct Meta {
    key: CacheKey,
    variant: String,
    vary: String,
    policy: CachePolicy,
    lifetime: Duration,
    rules: StaleRules,
    status: u16,
    headers: Vec<(String, Value)>,
    body_len: u64,
}

/// A header value: text when it is, bytes otherwise.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Bytes(Vec<u8>),
}

/// `entry` as a file's contents.
pub(crate) fn encode(entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    let meta = Meta {
        key: entry.key.clone(),
        variant: hex(&entry.id()),
        vary: entry.vary.clone(),
        policy: entry.policy.clone(),
        lifetime: entry.lifetime,
        rules: entry.rules,
        status: entry.status.as_u16(),
        headers: entry
            .headers
            .iter()
            .map(|(name, value)| {
                let value = match value.to_str() {
                    Ok(text) => Value::Text(text.to_owned()),
                    Err(_) => Value::Bytes(value.as_bytes().to_vec()),
                };
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body_len: entry.body.len() as u64,
    };
    let meta = serde_json::to_vec(&meta)?;
    let meta_len = u32::try_from(meta.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_META_LEN)
        .ok_or_else(|| serde::ser::Error::custom("metadata too large"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + entry.body.len() + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&entry.body);
    let sum = digest::digest(&digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    Ok(out)
}

/// The length of the metadata a file's first bytes announce, checked against `file_len`
/// for room for the rest.
fn meta_len(head: &[u8], file_len: u64) -> Result<usize, Corrupt> {
    let (Some(magic), Some(len)) = (head.get(..MAGIC.len()), head.get(MAGIC.len()..HEADER_LEN))
    else {
        return Err(Corrupt::Length);
    };
    if magic != MAGIC {
        return Err(Corrupt::Foreign);
    }
    let mut le = [0u8; 4];
    le.copy_from_slice(len);
    let len = u32::from_le_bytes(le) as usize;
    if len > MAX_META_LEN || (HEADER_LEN + len + DIGEST_LEN) as u64 > file_len {
        return Err(Corrupt::Length);
    }
    Ok(len)
}

/// Parses and checks the metadata of the file named `id`, `file_len` bytes long.
fn parse_meta(id: &VariantId, meta: &[u8], file_len: u64) -> Result<Meta, Corrupt> {
    let meta: Meta = serde_json::from_slice(meta)?;
    if meta.variant != hex(id) || variant_id(&meta.key, &meta.vary) != *id {
        return Err(Corrupt::Name);
    }
    // The callers check the whole length; this refuses a body length no file could hold.
    if meta.body_len > file_len {
        return Err(Corrupt::Length);
    }
    Ok(meta)
}

/// The stored response in the file named `id` whose contents are `bytes`.
pub(crate) fn decode(id: &VariantId, bytes: Vec<u8>) -> Result<Entry, Corrupt> {
    let file_len = bytes.len() as u64;
    let meta_len = meta_len(&bytes, file_len)?;
    let body_start = HEADER_LEN + meta_len;
    let meta = parse_meta(id, &bytes[HEADER_LEN..body_start], file_len)?;
    let body_len = usize::try_from(meta.body_len).map_err(|_| Corrupt::Length)?;
    if body_start
        .checked_add(body_len)
        .and_then(|n| n.checked_add(DIGEST_LEN))
        != Some(bytes.len())
    {
        return Err(Corrupt::Length);
    }
    let digest_start = body_start + body_len;
    let sum = digest::digest(&digest::SHA256, &bytes[..digest_start]);
    if sum.as_ref() != &bytes[digest_start..] {
        return Err(Corrupt::Checksum);
    }
    let status = StatusCode::from_u16(meta.status).map_err(|_| Corrupt::Header)?;
    let mut headers = HeaderMap::with_capacity(meta.headers.len());
    for (name, value) in meta.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Corrupt::Header)?;
        let value = match value {
            Value::Text(text) => HeaderValue::from_bytes(text.as_bytes()),
            Value::Bytes(bytes) => HeaderValue::from_bytes(&bytes),
        }
        .map_err(|_| Corrupt::Header)?;
        headers.append(name, value);
    }
    let mut bytes = Bytes::from(bytes);
    let body = bytes.split_off(body_start).split_to(body_len);
    Ok(Entry {
        key: meta.key,
        vary: meta.vary,
        policy: meta.policy,
        lifetime: meta.lifetime,
        rules: meta.rules,
        status,
        headers,
        body,
        memo: Default::default(),
    })
}

/// A file found by [`Dir::scan`] that looks whole: its key and length. Its checksum is
/// checked when it is read.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub(crate) id: VariantId,
    pub(crate) key: CacheKey,
    pub(crate) len: u64,
    pub(crate) modified: SystemTime,
}

/// The disk store's directory.
#[derive(Debug)]
pub(crate) struct Dir {
    path: PathBuf,
}

impl Dir {
    /// Creates `path` (and missing parents) 0700, or makes it 0700 if it exists: it is the
    /// cache's own.
    pub(crate) fn prepare(path: &Path) -> io::Result<Self> {
        let missing: Vec<&Path> = path
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.is_dir())
            .collect();
        for dir in missing.into_iter().rev() {
            match DirBuilder::new().mode(DIR_MODE).create(dir) {
                Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(e),
            }
        }
        let meta = fs::symlink_metadata(path)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the cache directory is not a directory",
            ));
        }
        if meta.permissions().mode() & 0o7777 != DIR_MODE {
            fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    fn file(&self, id: &VariantId) -> PathBuf {
        self.path.join(hex(id))
    }

    /// Writes `bytes` as the file of `id`, under a temporary name first; returns the
    /// temporary path for [`commit`](Self::commit).
    pub(crate) fn write_temp(&self, id: &VariantId, bytes: &[u8]) -> io::Result<PathBuf> {
        let temp = self.path.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            hex(id),
            fastrand::u64(..)
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&temp)?;
            file.set_permissions(Permissions::from_mode(FILE_MODE))?;
            file.write_all(bytes)
        })();
        match result {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Renames a temporary file into place as the file of `id`.
    pub(crate) fn commit(&self, temp: &Path, id: &VariantId) -> io::Result<()> {
        fs::rename(temp, self.file(id)).inspect_err(|_| {
            let _ = fs::remove_file(temp);
        })
    }

    /// Removes the file of `id`, if it is there.
    pub(crate) fn remove(&self, id: &VariantId) {
        let _ = fs::remove_file(self.file(id));
    }

    /// Reads the file of `id` if it is a plain file of at most `max_len` bytes.
    pub(crate) fn read(&self, id: &VariantId, max_len: u64) -> Result<Vec<u8>, Corrupt> {
        let path = self.file(id);
        plain_file(&path)?;
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(Corrupt::Foreign);
        }
        if meta.len() > max_len {
            return Err(Corrupt::Length);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(max_len.saturating_add(1))
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Every file in the directory that looks like a whole stored response of at most
    /// `max_len` bytes. Anything else that is not a directory is removed: temporary files a
    /// crash left, truncated or foreign files, links.
    pub(crate) fn scan(&self, max_len: u64) -> io::Result<Vec<Scanned>> {
        let mut found = Vec::new();
        for item in fs::read_dir(&self.path)? {
            let Ok(item) = item else { continue };
            let Ok(kind) = item.file_type() else { continue };
            if kind.is_dir() {
                continue;
            }
            let path = item.path();
            match self.check(&path, max_len) {
                Ok(scanned) => found.push(scanned),
                Err(error) => {
                    tracing::info!(file = %path.display(), %error, "cache file removed");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(found)
    }

    fn check(&self, path: &Path, max_len: u64) -> Result<Scanned, Corrupt> {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_hex)
            .ok_or(Corrupt::Foreign)?;
        plain_file(path)?;
        let mut file = File::open(path)?;
        let stat = file.metadata()?;
        if !stat.is_file() {
            return Err(Corrupt::Foreign);
        }
        if stat.len() > max_len {
            return Err(Corrupt::Length);
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact(&mut head).map_err(|_| Corrupt::Length)?;
        let len = meta_len(&head, stat.len())?;
        let mut meta = vec![0u8; len];
        file.read_exact(&mut meta).map_err(|_| Corrupt::Length)?;
        let meta = parse_meta(&id, &meta, stat.len())?;
        let whole = (HEADER_LEN + len + DIGEST_LEN) as u64 + meta.body_len;
        if whole != stat.len() {
            return Err(Corrupt::Length);
        }
        Ok(Scanned {
            id,
            key: meta.key,
            len: stat.len(),
            modified: stat.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }
}

fn parse_hex(name: &str) -> Option<VariantId> {
    if name.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // Upper-case hex is another spelling of the same name: not one this cache writes.
    (hex(&id) == name).then_some(id)
}

/// Refuses a link: it is not followed to a file elsewhere. (The directory is the cache's
/// own and 0700, so nobody else can swap a link in between this check and the open.)
fn plain_file(path: &Path) -> Result<(), Corrupt> {
    if fs::symlink_metadata(path)?.file_type().is_file() {
        Ok(())
    } else {
        Err(Corrupt::Foreign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use node_core::proxy::cache::admit;

    fn entry(path: &str, body: &'static [u8]) -> Entry {
        let key = CacheKey::new("example.com", path).expect("key");
        let mut response = HeaderMap::new();
        response.insert("cache-control", HeaderValue::from_static("max-age=60"));
        response.insert(
            "x-odd",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let admitted = admit(
            &key,
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &response,
            now,
        )
        .expect("storable");
        Entry {
            key,
            vary: admitted.vary,
            policy: admitted.policy,
            lifetime: admitted.lifetime,
            rules: admitted.rules,
            status: StatusCode::OK,
            headers: admitted.headers,
            body: Bytes::from_static(body),
            memo: Default::default(),
        }
    }

    #[test]
    fn a_stored_response_reads_back_as_written() {
        let original = entry("/a", b"body bytes");
        let bytes = encode(&original).expect("encode");
        let read = decode(&original.id(), bytes).expect("decode");
        assert_eq!(read.key, original.key);
        assert_eq!(read.body, original.body);
        assert_eq!(read.headers, original.headers);
        assert_eq!(read.lifetime, original.lifetime);
        assert_eq!(read.rules, original.rules);
    }

    #[test]
    fn every_damaged_or_foreign_content_is_refused() {
        let original = entry("/a", b"body bytes");
        let id = original.id();
        let good = encode(&original).expect("encode");

        let mut flipped = good.clone();
        let at = flipped.len() - DIGEST_LEN - 1;
        flipped[at] ^= 1;
        assert!(matches!(decode(&id, flipped), Err(Corrupt::Checksum)));

        for cut in [0, 3, HEADER_LEN, good.len() / 2, good.len() - 1] {
            assert!(decode(&id, good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&id, longer).is_err());

        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(decode(&id, magic), Err(Corrupt::Foreign)));

        let mut huge_meta = good.clone();
        huge_meta[MAGIC.len()..HEADER_LEN].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&id, huge_meta), Err(Corrupt::Length)));

        // A whole, valid file under another response's name.
        let other = entry("/b", b"other").id();
        assert!(matches!(decode(&other, good.clone()), Err(Corrupt::Name)));

        let mut junk_meta = MAGIC.to_vec();
        junk_meta.extend_from_slice(&4u32.to_le_bytes());
        junk_meta.extend_from_slice(b"{{{{");
        junk_meta.extend_from_slice(&[0; DIGEST_LEN]);
        assert!(matches!(decode(&id, junk_meta), Err(Corrupt::Meta(_))));
    }

    #[test]
    fn names_are_lower_case_hex_of_the_right_length_only() {
        let id = entry("/a", b"").id();
        assert_eq!(parse_hex(&hex(&id)), Some(id));
        assert_eq!(parse_hex(&hex(&id).to_uppercase()), None);
        assert_eq!(parse_hex(&hex(&id)[1..]), None);
        assert_eq!(parse_hex(&format!("{}zz", &hex(&id)[2..])), None);
        assert_eq!(parse_hex("é".repeat(32).as_str()), None);
    }

    #[test]
    fn a_link_in_the_directory_is_removed_and_its_target_left_alone() {
        let root = tempfile::tempdir().expect("temp dir");
        let target = root.path().join("elsewhere");
        std::fs::write(&target, "keep me").expect("write");
        let dir = Dir::prepare(&root.path().join("cache")).expect("prepare");
        let original = entry("/a", b"x");
        let link = root.path().join("cache").join(hex(&original.id()));
        std::os::unix::fs::symlink(&target, &link).expect("link");
        assert!(dir.read(&original.id(), 1 << 20).is_err());
        assert!(dir.scan(1 << 20).expect("scan").is_empty());
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is gone"
        );
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
    }

    #[test]
    fn a_file_over_the_size_bound_is_not_read() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = Dir::prepare(root.path()).expect("prepare");
        let original = entry("/a", b"0123456789");
        let bytes = encode(&original).expect("encode");
        let temp = dir.write_temp(&original.id(), &bytes).expect("write");
        dir.commit(&temp, &original.id()).expect("commit");
        let len = bytes.len() as u64;
        assert!(dir.read(&original.id(), len).is_ok());
        assert!(matches!(
            dir.read(&original.id(), len - 1),
            Err(Corrupt::Length)
        ));
        assert_eq!(dir.scan(len).expect("scan").len(), 1);
        assert!(dir.scan(len - 1).expect("scan").is_empty());
    }
}
