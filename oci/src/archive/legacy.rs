//! The legacy `docker save` layout (before Docker 25, and `podman save` in docker-archive
//! format): no `index.json`, a `manifest.json` listing `Config` and `Layers` by their paths
//! in the archive, and layers as plain tars named `<id>/layer.tar` (sometimes a symlink to
//! an identical layer elsewhere in the archive).
//!
//! It turns the first image of `manifest.json` into an OCI manifest, staged like any blob,
//! whose digest becomes the image's. It must never read a file the archive did not stage:
//! paths resolve only through the archive's own names, never the filesystem.

use super::{Contents, ImportError, parse_json, put_json};
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest, media_type};
use crate::path;
use crate::shown;
use std::collections::BTreeMap;
use std::io::Read;

/// Symlink hops followed when resolving a path of `manifest.json`.
const MAX_ALIAS_HOPS: usize = 8;

#[derive(Debug, serde::Deserialize)]
struct LegacyImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Stages an OCI manifest for the first image of `manifest.json`; returns its descriptor.
pub(super) fn synthesise(
    manifest_json: &[u8],
    contents: &Contents,
    store: &mut super::Staging,
) -> Result<Descriptor, ImportError> {
    let images: Vec<LegacyImage> = parse_json(manifest_json, "manifest.json")?;
    let image = images.first().ok_or(ImportError::EmptyLegacyManifest)?;
    let config = file(contents, store, &image.config)?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let (digest, size) = file(contents, store, layer)?;
        // Docker writes plain tars here; other writers of this layout may gzip them, and
        // the first two bytes tell which.
        let mut magic = [0u8; 2];
        let gzipped = store
            .open(&digest)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == [0x1f, 0x8b];
        layers.push(descriptor(
            if gzipped {
                media_type::OCI_LAYER_GZIP
            } else {
                media_type::OCI_LAYER
            },
            digest,
            size,
        ));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_owned()),
        config: descriptor(media_type::OCI_CONFIG, config.0, config.1),
        layers,
        annotations: BTreeMap::new(),
    };
    put_json(&manifest, media_type::OCI_MANIFEST, store)
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// The staged file a `manifest.json` path names, through the archive's links.
fn file(
    contents: &Contents,
    store: &super::Staging,
    name: &str,
) -> Result<(Digest, u64), ImportError> {
    let missing = || ImportError::MissingFile { path: shown(name) };
    let mut path = path::clean(name.as_bytes()).map_err(|_| missing())?.bytes;
    for _ in 0..=MAX_ALIAS_HOPS {
        if let Some(digest) = contents.files.get(&path) {
            let size = store.size(digest).ok_or_else(missing)?;
            return Ok((*digest, size));
        }
        path = contents.aliases.get(&path).ok_or_else(missing)?.clone();
    }
    Err(missing())
}
