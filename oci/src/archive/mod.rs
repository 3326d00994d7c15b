//! Image archives as operators push them: an OCI image layout in a tar (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`), as written by `docker save` (Docker 25 and later),
//! `podman save --format oci-archive` and `skopeo copy ... oci-archive:`; also the legacy
//! `docker save` layout (`manifest.json` and `<id>/layer.tar`), and either one gzipped.
//!
//! [`import`] reads the archive once, as a stream. Every regular file goes to the staging
//! directory while it is hashed, under the hex of its sha256; a `blobs/sha256/<hex>` entry
//! whose content hashes to anything else is refused. Then it walks `index.json` down to
//! each runnable platform's config and layers, checking that every referenced blob is
//! present with its descriptor's exact size, that every JSON blob parses as its media type,
//! and that every layer is a tar that passes [`crate::layer::scan`] and hashes to its
//! `diff_id`. What nothing references is removed from staging; on any error everything
//! staged is removed.
//!
//! Entries of the archive: directories, PAX global headers and `repositories` are ignored;
//! `oci-layout`, `index.json` and `manifest.json` are read into memory (bounded); every
//! other regular file is staged (the legacy layout names its files freely), and symlinks
//! and hard links outside `blobs/` are remembered as aliases for the legacy layout and never
//! created. Anything else is refused: an absolute or `..` path, a link under `blobs/`, a
//! device or any other type.
//!
//! This module must never hold a blob in memory (only JSON documents under
//! [`Limits::max_json_bytes`]), and never keep a blob whose digest it did not compute.

mod legacy;
mod staging;

use crate::digest::Digest;
use crate::entries;
use crate::image::{
    self, Compression, Descriptor, ImageConfig, Index, Manifest, ManifestKind, Platform,
    UnsupportedLayerType, arch_name, media_type,
};
use crate::layer::{self, LayerError, LayerLimits, LayerSummary};
use crate::path;
use crate::{shown, shown_bytes};
use flate2::read::MultiGzDecoder;
use serde::de::DeserializeOwned;
use staging::{StageError, Staging};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use tar::EntryType;

/// Bounds on what one archive may make the importer do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON document read into memory: `index.json`, `manifest.json`, an index,
    /// a manifest or a config.
    pub max_json_bytes: u64,
    /// Regular files staged from the archive (blobs, and the legacy layout's files).
    pub max_blobs: u64,
    /// Entries in the archive, every header counted.
    pub max_archive_entries: u64,
    /// Bytes staged in all: the image's compressed size on disk.
    pub max_staged_bytes: u64,
    /// Layers of one manifest.
    pub max_layers: usize,
    /// Indexes and manifests walked.
    pub max_manifests: usize,
    /// Decompressed bytes of one platform's layers together (tar streams, so the files
    /// never exceed it).
    pub max_image_unpacked_bytes: u64,
    /// Entries of one layer.
    pub max_layer_entries: u64,
    /// Decompressed bytes per compressed byte of a layer, past `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Decompressed bytes of a layer below which the ratio is not checked.
    pub ratio_floor_bytes: u64,
}

impl Default for Limits {
    /// 4 MiB of JSON, 4,096 files, 16,384 entries and 16 GiB staged, 128 layers,
    /// 64 manifests, 8 GiB unpacked per platform, the layer defaults of
    /// [`LayerLimits::default`] for entries and ratio.
    fn default() -> Self {
        let layer = LayerLimits::default();
        Self {
            max_json_bytes: 4 << 20,
            max_blobs: 4096,
            max_archive_entries: 16_384,
            max_staged_bytes: 16 << 30,
            max_layers: 128,
            max_manifests: 64,
            max_image_unpacked_bytes: 8 << 30,
            max_layer_entries: layer.max_entries,
            max_ratio: layer.max_ratio,
            ratio_floor_bytes: layer.ratio_floor_bytes,
        }
    }
}

/// An imported image: its digest, what it runs on, and the blobs staged for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The image's digest: the single entry of `index.json`, or the index (or, for the
    /// legacy layout, the manifest) synthesised for it. Its blob is among `blobs`.
    pub digest: Digest,
    /// The media type of the blob named by `digest` (an index or a manifest).
    pub media_type: String,
    /// The platforms the fleet can run, in the order the image lists them.
    pub platforms: Vec<ImagePlatform>,
    /// Every blob kept in staging, by digest.
    pub blobs: Vec<StagedBlob>,
}

/// One runnable platform of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlatform {
    /// The fleet's architecture name (see [`arch_name`]).
    pub arch: &'static str,
    /// The OCI platform as the index or the config states it.
    pub platform: Platform,
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The parsed config.
    pub config: ImageConfig,
    /// The layers, lowest first.
    pub layers: Vec<ImportedLayer>,
}

/// A checked layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedLayer {
    /// The blob's digest (of the compressed bytes).
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// The digest of the decompressed tar, equal to the config's `diff_id`.
    pub diff_id: Digest,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Sum of the regular files' sizes.
    pub unpacked_bytes: u64,
    /// Length of the decompressed tar.
    pub tar_bytes: u64,
    /// Entries of the tar.
    pub entries: u64,
    /// Whether any file is setuid or setgid.
    pub has_setuid: bool,
}

/// A blob kept in staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBlob {
    pub digest: Digest,
    pub size: u64,
    /// `staging/<hex>`.
    pub path: PathBuf,
}

/// Why an archive was refused. Names from the archive (`entry`, `what`) are truncated.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The archive is not a readable tar (or gzipped tar): truncated, corrupt, or reading
    /// the upload failed.
    #[error("archive is not a readable tar: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    /// The staging directory holds files already; the importer removes what it does not
    /// keep and must not touch anything else.
    #[error("staging directory {} is not empty", dir.display())]
    StagingNotEmpty { dir: PathBuf },
    /// Writing to (or reading back from) the staging directory failed.
    #[error("staging {}: {source}", path.display())]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// More entries than `max_archive_entries`.
    #[error("archive has more than {limit} entries (at {entry:?})")]
    TooManyEntries { entry: String, limit: u64 },
    /// More files than `max_blobs`.
    #[error("archive has more than {limit} files (at {entry:?})")]
    TooManyBlobs { entry: String, limit: u64 },
    /// More bytes than `max_staged_bytes`.
    #[error("archive holds more than {limit} bytes of blobs (at {entry:?})")]
    TooLarge { entry: String, limit: u64 },
    /// An entry's path (or a link's target) is absolute, climbs with `..`, holds a NUL or
    /// is too long.
    #[error("archive entry {entry:?} has an unsafe path")]
    UnsafePath { entry: String },
    /// An entry that has no place in an image archive: a device, FIFO, unknown type, a
    /// link under `blobs/`, or a directory with content.
    #[error("archive entry {entry:?} of type {:?} is not allowed", char::from(*kind))]
    UnexpectedEntry { entry: String, kind: u8 },
    /// Under `blobs/`, a name other than `sha256/<64 lowercase hex>`.
    #[error("archive entry {entry:?} is not a sha256 blob name")]
    BadBlobName { entry: String },
    /// A blob whose content does not hash to its name.
    #[error("blob {entry:?} does not match its digest (content is {actual})")]
    BlobDigestMismatch { entry: String, actual: Digest },
    /// `index.json`, `oci-layout` or `manifest.json` appears twice: tools disagree on
    /// which copy wins, so neither is trusted.
    #[error("archive has {entry:?} twice")]
    DuplicateEntry { entry: String },
    /// A JSON document larger than `max_json_bytes`.
    #[error("{what} is larger than {limit} bytes")]
    JsonTooLarge { what: String, limit: u64 },
    /// A JSON document that does not parse as what it should be.
    #[error("{what} is not valid: {source}")]
    BadJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Neither `index.json` nor a legacy `manifest.json`.
    #[error("archive has no index.json (nor a docker manifest.json): not an image archive")]
    MissingIndex,
    /// `index.json` without `oci-layout`.
    #[error("archive has index.json but no oci-layout")]
    MissingLayout,
    /// `oci-layout` names a version other than 1.0.0.
    #[error("unsupported OCI layout version {version:?}")]
    UnsupportedLayout { version: String },
    /// `index.json` lists no manifest.
    #[error("index.json lists no manifest")]
    EmptyIndex,
    /// The legacy `manifest.json` lists no image.
    #[error("manifest.json lists no image")]
    EmptyLegacyManifest,
    /// The legacy `manifest.json` names a file the archive does not have.
    #[error("manifest.json names {path:?}, which is not in the archive")]
    MissingFile { path: String },
    /// A descriptor of a media type this crate does not read where an index, manifest or
    /// config is expected.
    #[error("{digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    /// A blob's own `mediaType` contradicts its descriptor's.
    #[error("{digest} says it is {blob:?} but is referenced as {descriptor:?}")]
    MediaTypeMismatch {
        digest: Digest,
        descriptor: String,
        blob: String,
    },
    /// An index or manifest whose `schemaVersion` is not 2.
    #[error("{digest} has schemaVersion {version}, expected 2")]
    SchemaVersion { digest: Digest, version: u32 },
    /// A referenced blob is not in the archive.
    #[error("blob {digest} ({media_type}) is referenced but not in the archive")]
    MissingBlob { digest: Digest, media_type: String },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// Indexes nested deeper than two.
    #[error("index {digest} is nested too deep")]
    TooDeep { digest: Digest },
    /// More indexes and manifests than `max_manifests`.
    #[error("image has more than {limit} manifests")]
    TooManyManifests { limit: usize },
    /// A manifest with more layers than `max_layers`.
    #[error("manifest {manifest} has {count} layers, more than {limit}")]
    TooManyLayers {
        manifest: Digest,
        count: usize,
        limit: usize,
    },
    /// A config whose `rootfs.diff_ids` does not list one digest per layer.
    #[error("manifest {manifest} has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch {
        manifest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    /// A layer of a media type this crate cannot unpack (zstd, foreign layers).
    #[error("layer {layer}: {source}")]
    LayerMediaType {
        layer: Digest,
        #[source]
        source: UnsupportedLayerType,
    },
    /// A layer whose decompressed tar does not hash to the config's `diff_id`.
    #[error("layer {layer} unpacks to {actual}, its config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    /// A layer refused by the layer checker (hostile, malformed or over a limit).
    #[error("layer {layer}: {source}")]
    Layer {
        layer: Digest,
        #[source]
        source: LayerError,
    },
    /// One platform's layers unpack to more than `max_image_unpacked_bytes`.
    #[error("the {arch} image unpacks to more than {limit} bytes")]
    ImageTooLarge { arch: &'static str, limit: u64 },
    /// An index says a manifest is for one platform and its config says another.
    #[error("manifest {manifest} is listed for {index} but its config says {config}")]
    PlatformMismatch {
        manifest: Digest,
        index: String,
        config: String,
    },
    /// Two manifests for the same fleet architecture: which one a node runs would be a
    /// guess.
    #[error("manifests {first} and {second} are both for {arch}")]
    AmbiguousPlatform {
        arch: &'static str,
        first: Digest,
        second: Digest,
    },
    /// No manifest is for a platform the fleet runs.
    #[error("no platform the fleet runs (found: {})", if found.is_empty() { "none".to_owned() } else { found.join(", ") })]
    NoRunnablePlatform { found: Vec<String> },
}

/// At most this many platform names are quoted in [`ImportError::NoRunnablePlatform`].
const MAX_PLATFORMS_SHOWN: usize = 16;
/// Index blobs below `index.json`: an index of indexes is allowed, one more level is not.
const MAX_INDEX_NESTING: usize = 2;
/// The only layout version there is.
const LAYOUT_VERSION: &str = "1.0.0";

/// Imports an image archive streamed from `reader` into `staging`, an empty directory for
/// this import alone. On success `staging` holds exactly [`Imported::blobs`]; on error it
/// is left empty.
pub fn import(reader: impl Read, staging: &Path, limits: &Limits) -> Result<Imported, ImportError> {
    let staging_error = |source| ImportError::Staging {
        path: staging.to_owned(),
        source,
    };
    if fs::read_dir(staging)
        .map_err(staging_error)?
        .next()
        .is_some()
    {
        return Err(ImportError::StagingNotEmpty {
            dir: staging.to_owned(),
        });
    }
    let mut store = Staging::new(staging);
    let contents = read_archive(reader, &mut store, limits)?;

    let (root, roots) = match (&contents.index_json, &contents.docker_manifest) {
        (Some(index_json), _) => {
            check_layout(contents.oci_layout.as_deref())?;
            let index: Index = parse_json(index_json, "index.json")?;
            let root = match index.manifests.as_slice() {
                [] => return Err(ImportError::EmptyIndex),
                [only] => only.clone(),
                several => synthesise_index(several, &mut store)?,
            };
            (root, index.manifests)
        }
        (None, Some(manifest_json)) => {
            let root = legacy::synthesise(manifest_json, &contents, &mut store)?;
            (root.clone(), vec![root])
        }
        (None, None) => return Err(ImportError::MissingIndex),
    };

    let mut walk = Walk::new(&store, limits);
    walk.keep.insert(root.digest);
    for descriptor in &roots {
        walk.descriptor(descriptor, 0)?;
    }
    if walk.platforms.is_empty() {
        let mut seen = BTreeSet::new();
        let mut found = walk.found;
        found.retain(|platform| seen.insert(platform.clone()));
        found.truncate(MAX_PLATFORMS_SHOWN);
        return Err(ImportError::NoRunnablePlatform { found });
    }
    let Walk {
        platforms, keep, ..
    } = walk;
    let blobs = keep
        .iter()
        .map(|digest| {
            Ok(StagedBlob {
                digest: *digest,
                size: store.size(digest).ok_or_else(|| missing(digest, "blob"))?,
                path: store.path(digest),
            })
        })
        .collect::<Result<Vec<_>, ImportError>>()?;
    store.commit(&keep).map_err(stage_error)?;
    Ok(Imported {
        digest: root.digest,
        media_type: root.media_type,
        platforms,
        blobs,
    })
}

/// What the archive stream held besides its staged blobs.
#[derive(Debug, Default)]
struct Contents {
    index_json: Option<Vec<u8>>,
    oci_layout: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    /// Every staged file by its clean path in the archive (the legacy layout names files).
    files: HashMap<Vec<u8>, Digest>,
    /// Symlinks and hard links outside `blobs/`: clean path to the clean path they name.
    aliases: HashMap<Vec<u8>, Vec<u8>>,
}

/// Reads the archive stream once, staging every regular file.
fn read_archive(
    reader: impl Read,
    store: &mut Staging,
    limits: &Limits,
) -> Result<Contents, ImportError> {
    let read = |source| ImportError::Read { source };
    let mut contents = Contents::default();
    let (mut entries, mut files, mut staged_bytes) = (0u64, 0u64, 0u64);
    let outcome = entries::read(ungzip(reader).map_err(read)?, |entry, data| {
        let name = || shown_bytes(&entry.path);
        entries += 1;
        if entries > limits.max_archive_entries {
            return Err(ImportError::TooManyEntries {
                entry: name(),
                limit: limits.max_archive_entries,
            });
        }
        let kind = entry.kind;
        let clean =
            path::clean(&entry.path).map_err(|_| ImportError::UnsafePath { entry: name() })?;
        let under_blobs = clean.bytes.starts_with(b"blobs/") || clean.bytes == b"blobs";
        match kind {
            EntryType::Directory if entry.size == 0 => {}
            EntryType::Regular | EntryType::Continuous => {
                let json_slot = match clean.bytes.as_slice() {
                    b"index.json" => Some(&mut contents.index_json),
                    b"oci-layout" => Some(&mut contents.oci_layout),
                    b"manifest.json" => Some(&mut contents.docker_manifest),
                    _ => None,
                };
                if let Some(slot) = json_slot {
                    if slot.is_some() {
                        return Err(ImportError::DuplicateEntry { entry: name() });
                    }
                    *slot = Some(read_json_entry(data, entry.size, &name(), limits)?);
                    return Ok(());
                }
                if clean.bytes == b"repositories" {
                    // Docker's tag list; the orchestrator names images itself. Read (and
                    // bounded) like any JSON so that it cannot be a bomb either.
                    read_json_entry(data, entry.size, &name(), limits)?;
                    return Ok(());
                }
                let expected = if under_blobs {
                    let hex = clean.bytes.strip_prefix(b"blobs/sha256/");
                    let digest = hex
                        .and_then(|hex| std::str::from_utf8(hex).ok())
                        .and_then(Digest::from_hex);
                    Some(digest.ok_or_else(|| ImportError::BadBlobName { entry: name() })?)
                } else {
                    None
                };
                files += 1;
                if files > limits.max_blobs {
                    return Err(ImportError::TooManyBlobs {
                        entry: name(),
                        limit: limits.max_blobs,
                    });
                }
                staged_bytes = staged_bytes.saturating_add(entry.size);
                if staged_bytes > limits.max_staged_bytes {
                    return Err(ImportError::TooLarge {
                        entry: name(),
                        limit: limits.max_staged_bytes,
                    });
                }
                let digest = store
                    .stage(data, entry.size, expected)
                    .map_err(|e| match e {
                        StageError::Mismatch { actual } => ImportError::BlobDigestMismatch {
                            entry: name(),
                            actual,
                        },
                        other => stage_error(other),
                    })?;
                contents.files.insert(clean.bytes, digest);
            }
            EntryType::Symlink | EntryType::Link if !under_blobs && entry.size == 0 => {
                let target = entry.link.as_deref().unwrap_or_default();
                let resolved = if kind == EntryType::Symlink {
                    if target.first() == Some(&b'/') {
                        None
                    } else {
                        path::resolve_relative(clean.parent(), target)
                    }
                } else {
                    path::clean(target).ok().map(|t| t.bytes)
                };
                let resolved = resolved.ok_or_else(|| ImportError::UnsafePath { entry: name() })?;
                contents.aliases.insert(clean.bytes, resolved);
            }
            _ => {
                return Err(ImportError::UnexpectedEntry {
                    entry: name(),
                    kind: kind.as_byte(),
                });
            }
        }
        Ok(())
    });
    outcome.map_err(|failure| match failure {
        entries::Failure::Tar(source) => read(source),
        entries::Failure::Visit(error) => error,
    })?;
    Ok(contents)
}

/// The archive, gunzipped if it starts with gzip's magic (`docker save | gzip`).
fn ungzip<R: Read>(mut reader: R) -> io::Result<Outer<R>> {
    let mut magic = Vec::with_capacity(2);
    (&mut reader).take(2).read_to_end(&mut magic)?;
    let stream = io::Cursor::new(magic).chain(reader);
    Ok(if stream.get_ref().0.get_ref().as_slice() == [0x1f, 0x8b] {
        Outer::Gzip(Box::new(MultiGzDecoder::new(stream)))
    } else {
        Outer::Plain(BufReader::with_capacity(64 * 1024, stream))
    })
}

enum Outer<R: Read> {
    Plain(BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>),
    Gzip(Box<MultiGzDecoder<io::Chain<io::Cursor<Vec<u8>>, R>>>),
}

impl<R: Read> Read for Outer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
        }
    }
}

fn read_json_entry(
    data: &mut dyn Read,
    size: u64,
    name: &str,
    limits: &Limits,
) -> Result<Vec<u8>, ImportError> {
    if size > limits.max_json_bytes {
        return Err(ImportError::JsonTooLarge {
            what: name.to_owned(),
            limit: limits.max_json_bytes,
        });
    }
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes)
        .map_err(|source| ImportError::Read { source })?;
    if bytes.len() as u64 != size {
        return Err(truncated(name));
    }
    Ok(bytes)
}

/// The archive ended inside an entry's data.
fn truncated(name: &str) -> ImportError {
    ImportError::Read {
        source: io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("archive ends inside {name:?}"),
        ),
    }
}

fn check_layout(layout: Option<&[u8]>) -> Result<(), ImportError> {
    #[derive(serde::Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let layout: Layout = parse_json(layout.ok_or(ImportError::MissingLayout)?, "oci-layout")?;
    if layout.version != LAYOUT_VERSION {
        return Err(ImportError::UnsupportedLayout {
            version: shown(&layout.version),
        });
    }
    Ok(())
}

/// `index.json` lists several manifests directly (one per platform, as `podman` and
/// `skopeo` write a multi-arch image): the image is the index of exactly those
/// descriptors, serialised by this crate, so the same archive always gets the same digest.
fn synthesise_index(
    manifests: &[Descriptor],
    store: &mut Staging,
) -> Result<Descriptor, ImportError> {
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_owned()),
        manifests: manifests.to_vec(),
        annotations: BTreeMap::new(),
    };
    put_json(&index, media_type::OCI_INDEX, store)
}

/// Stages a document this crate made and returns its descriptor.
fn put_json(
    document: &impl serde::Serialize,
    media_type: &str,
    store: &mut Staging,
) -> Result<Descriptor, ImportError> {
    // Serialising our own plain structs (strings, numbers, maps with string keys) cannot
    // fail.
    let bytes = serde_json::to_vec(document).map_err(|source| ImportError::BadJson {
        what: "synthesised document".to_owned(),
        source,
    })?;
    let digest = store.put(&bytes).map_err(stage_error)?;
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    })
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImportError> {
    serde_json::from_slice(bytes).map_err(|source| ImportError::BadJson {
        what: what.to_owned(),
        source,
    })
}

fn stage_error(error: StageError) -> ImportError {
    match error {
        StageError::Read(source) => ImportError::Read { source },
        StageError::Truncated => ImportError::Read {
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a blob"),
        },
        StageError::Write(path, source) => ImportError::Staging { path, source },
        StageError::Mismatch { actual } => ImportError::BlobDigestMismatch {
            entry: "synthesised document".to_owned(),
            actual,
        },
    }
}

fn missing(digest: &Digest, media_type: &str) -> ImportError {
    ImportError::MissingBlob {
        digest: *digest,
        media_type: shown(media_type),
    }
}

/// The walk from the roots down to configs and layers.
struct Walk<'a> {
    store: &'a Staging,
    limits: &'a Limits,
    /// Indexes and manifests walked, so a manifest listed twice (two tags of one image)
    /// counts once.
    visited: BTreeSet<Digest>,
    /// Blobs the image keeps.
    keep: BTreeSet<Digest>,
    platforms: Vec<ImagePlatform>,
    /// Every platform seen, runnable or not, for the error when none is.
    found: Vec<String>,
    /// Layers already scanned, shared between platforms.
    scanned: HashMap<Digest, LayerSummary>,
}

impl<'a> Walk<'a> {
    fn new(store: &'a Staging, limits: &'a Limits) -> Self {
        Self {
            store,
            limits,
            visited: BTreeSet::new(),
            keep: BTreeSet::new(),
            platforms: Vec::new(),
            found: Vec::new(),
            scanned: HashMap::new(),
        }
    }

    fn descriptor(&mut self, descriptor: &Descriptor, nesting: usize) -> Result<(), ImportError> {
        let kind = ManifestKind::of(&descriptor.media_type).ok_or_else(|| {
            ImportError::UnsupportedMediaType {
                digest: descriptor.digest,
                media_type: shown(&descriptor.media_type),
            }
        })?;
        if !self.visited.insert(descriptor.digest) {
            return Ok(());
        }
        if self.visited.len() > self.limits.max_manifests {
            return Err(ImportError::TooManyManifests {
                limit: self.limits.max_manifests,
            });
        }
        match kind {
            ManifestKind::Index => {
                if nesting >= MAX_INDEX_NESTING {
                    return Err(ImportError::TooDeep {
                        digest: descriptor.digest,
                    });
                }
                let index: Index = self.json(descriptor)?;
                check_header(
                    descriptor,
                    index.schema_version,
                    index.media_type.as_deref(),
                    kind,
                )?;
                self.keep.insert(descriptor.digest);
                for child in &index.manifests {
                    self.descriptor(child, nesting + 1)?;
                }
                Ok(())
            }
            ManifestKind::Manifest => self.manifest(descriptor),
        }
    }

    fn manifest(&mut self, descriptor: &Descriptor) -> Result<(), ImportError> {
        let digest = descriptor.digest;
        // An index entry for a platform no node runs (another CPU, an attestation's
        // `unknown/unknown`) is neither read nor kept: no node will ever fetch it.
        if let Some(listed) = &descriptor.platform
            && arch_name(listed).is_none()
        {
            self.found.push(shown(&listed.to_string()));
            return Ok(());
        }
        let manifest: Manifest = self.json(descriptor)?;
        check_header(
            descriptor,
            manifest.schema_version,
            manifest.media_type.as_deref(),
            ManifestKind::Manifest,
        )?;
        if !image::is_image_config(&manifest.config.media_type) {
            return Err(ImportError::UnsupportedMediaType {
                digest: manifest.config.digest,
                media_type: shown(&manifest.config.media_type),
            });
        }
        let config: ImageConfig = self.json(&manifest.config)?;
        let platform = descriptor
            .platform
            .clone()
            .unwrap_or_else(|| config.platform());
        self.found.push(shown(&platform.to_string()));
        let Some(arch) = arch_name(&platform) else {
            return Ok(());
        };
        // The index's word is what the scheduler uses; the config's is what the binaries
        // are. When both are stated they must agree (an OS the config leaves out is taken
        // from the index).
        let mut stated = config.platform();
        if stated.os.is_empty() {
            stated.os.clone_from(&platform.os);
        }
        if descriptor.platform.is_some()
            && !config.architecture.is_empty()
            && arch_name(&stated) != Some(arch)
        {
            return Err(ImportError::PlatformMismatch {
                manifest: digest,
                index: shown(&platform.to_string()),
                config: shown(&stated.to_string()),
            });
        }
        if let Some(first) = self.platforms.iter().find(|p| p.arch == arch) {
            return Err(ImportError::AmbiguousPlatform {
                arch,
                first: first.manifest.digest,
                second: digest,
            });
        }
        if manifest.layers.len() > self.limits.max_layers {
            return Err(ImportError::TooManyLayers {
                manifest: digest,
                count: manifest.layers.len(),
                limit: self.limits.max_layers,
            });
        }
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImportError::LayerCountMismatch {
                manifest: digest,
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let mut layers = Vec::with_capacity(manifest.layers.len());
        let mut unpacked = 0u64;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let checked = self.layer(layer, *diff_id, arch, unpacked)?;
            unpacked = unpacked.saturating_add(checked.tar_bytes);
            layers.push(checked);
        }
        self.keep.insert(digest);
        self.keep.insert(manifest.config.digest);
        self.keep.extend(layers.iter().map(|l| l.digest));
        self.platforms.push(ImagePlatform {
            arch,
            platform,
            manifest: descriptor.clone(),
            config_digest: manifest.config.digest,
            config,
            layers,
        });
        Ok(())
    }

    /// Checks one layer of a platform whose earlier layers unpack to `unpacked` bytes.
    fn layer(
        &mut self,
        layer: &Descriptor,
        diff_id: Digest,
        arch: &'static str,
        unpacked: u64,
    ) -> Result<ImportedLayer, ImportError> {
        let digest = layer.digest;
        let compression = Compression::from_media_type(&layer.media_type).map_err(|source| {
            ImportError::LayerMediaType {
                layer: digest,
                source,
            }
        })?;
        self.size(layer)?;
        let budget = self
            .limits
            .max_image_unpacked_bytes
            .saturating_sub(unpacked);
        let summary = match self.scanned.get(&digest) {
            Some(summary) => summary.clone(),
            None => {
                let blob = self
                    .store
                    .open(&digest)
                    .map_err(|source| ImportError::Staging {
                        path: self.store.path(&digest),
                        source,
                    })?;
                let limits = LayerLimits {
                    max_unpacked_bytes: budget,
                    max_entries: self.limits.max_layer_entries,
                    max_ratio: self.limits.max_ratio,
                    ratio_floor_bytes: self.limits.ratio_floor_bytes,
                    // Admitted here and reported: whether a node may run it is the
                    // orchestrator's policy, not the archive's.
                    allow_setuid: true,
                };
                let reader = BufReader::with_capacity(64 * 1024, blob);
                let summary = layer::scan(reader, compression, &limits).map_err(|e| match e {
                    LayerError::TooLarge { .. } => ImportError::ImageTooLarge {
                        arch,
                        limit: self.limits.max_image_unpacked_bytes,
                    },
                    source => ImportError::Layer {
                        layer: digest,
                        source,
                    },
                })?;
                self.scanned.insert(digest, summary.clone());
                summary
            }
        };
        if summary.tar_bytes > budget {
            return Err(ImportError::ImageTooLarge {
                arch,
                limit: self.limits.max_image_unpacked_bytes,
            });
        }
        if summary.diff_id != diff_id {
            return Err(ImportError::DiffIdMismatch {
                layer: digest,
                expected: diff_id,
                actual: summary.diff_id,
            });
        }
        Ok(ImportedLayer {
            digest,
            size: layer.size,
            diff_id,
            compression,
            unpacked_bytes: summary.unpacked_bytes,
            tar_bytes: summary.tar_bytes,
            entries: summary.entries,
            has_setuid: summary.has_setuid,
        })
    }

    /// The blob must be staged with exactly the descriptor's size.
    fn size(&self, descriptor: &Descriptor) -> Result<u64, ImportError> {
        let actual = self
            .store
            .size(&descriptor.digest)
            .ok_or_else(|| missing(&descriptor.digest, &descriptor.media_type))?;
        if actual != descriptor.size {
            return Err(ImportError::SizeMismatch {
                digest: descriptor.digest,
                expected: descriptor.size,
                actual,
            });
        }
        Ok(actual)
    }

    fn json<T: DeserializeOwned>(&self, descriptor: &Descriptor) -> Result<T, ImportError> {
        let size = self.size(descriptor)?;
        let what = descriptor.digest.to_string();
        if size > self.limits.max_json_bytes {
            return Err(ImportError::JsonTooLarge {
                what,
                limit: self.limits.max_json_bytes,
            });
        }
        let path = self.store.path(&descriptor.digest);
        let bytes = fs::read(&path).map_err(|source| ImportError::Staging { path, source })?;
        parse_json(&bytes, &what)
    }
}

/// An index or manifest must be schema 2 and, when it names its media type, agree with
/// the descriptor that led to it.
fn check_header(
    descriptor: &Descriptor,
    schema_version: u32,
    media_type: Option<&str>,
    kind: ManifestKind,
) -> Result<(), ImportError> {
    if schema_version != 2 {
        return Err(ImportError::SchemaVersion {
            digest: descriptor.digest,
            version: schema_version,
        });
    }
    if let Some(own) = media_type
        && ManifestKind::of(own) != Some(kind)
    {
        return Err(ImportError::MediaTypeMismatch {
            digest: descriptor.digest,
            descriptor: shown(&descriptor.media_type),
            blob: shown(own),
        });
    }
    Ok(())
}
