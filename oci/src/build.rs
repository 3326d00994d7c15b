//! Builders of real layers and image archives, for tests and benchmarks (here, in the
//! orchestrator's and in the end-to-end ones): tars made with the `tar` crate, hostile
//! entries written into raw headers where the builder would refuse, gzipped layers, configs,
//! manifests, indexes and the OCI layout around them.
//!
//! Nothing here is used by the node or the orchestrator at run time; it panics on a failed
//! write into memory, which only a bug makes happen.

use crate::Digest;
use crate::image::media_type;
use flate2::Compression as Level;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
pub use tar::EntryType;
use tar::Header;

/// A layer tar under construction.
#[allow(missing_debug_implementations)] // tar's builder has no Debug
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        header
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut header = Self::header(EntryType::Directory, mode);
        self.builder
            .append_data(&mut header, path, &[][..])
            .expect("append a directory");
        self
    }

    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Self {
        let mut header = Self::header(EntryType::Regular, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .expect("append a file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Symlink, 0o777);
        self.builder
            .append_link(&mut header, path, target)
            .expect("append a symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Link, 0o644);
        self.builder
            .append_link(&mut header, path, target)
            .expect("append a hard link");
        self
    }

    /// An entry written byte for byte into an old-style header: the way to make names the
    /// builder refuses (`..`, absolute paths) and types it has no helper for.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: EntryType,
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> Self {
        let mut header = Self::header(kind, mode);
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        self.builder
            .append(&header, data)
            .expect("append a raw entry");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish the tar")
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Level::fast());
    encoder.write_all(bytes).expect("compress into memory");
    encoder.finish().expect("finish gzip")
}

/// A blob of an image: its bytes and descriptor.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: Digest::of(&bytes),
            bytes,
        }
    }

    pub fn json(media_type: &str, value: &Value) -> Self {
        Self::new(
            media_type,
            serde_json::to_vec(value).expect("serialise json"),
        )
    }

    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.bytes.len(),
        })
    }

    pub fn descriptor_for(&self, architecture: &str, variant: Option<&str>) -> Value {
        let mut descriptor = self.descriptor();
        let mut platform = json!({"architecture": architecture, "os": "linux"});
        if let Some(variant) = variant {
            platform["variant"] = json!(variant);
        }
        descriptor["platform"] = platform;
        descriptor
    }
}

/// One platform's manifest, config and gzipped layers.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// The plain tars, for their diff_ids.
    pub tars: Vec<Vec<u8>>,
}

impl PlatformImage {
    /// `tars` gzipped as its layers, with a config that runs `/bin/hello`.
    pub fn new(architecture: &str, variant: Option<&str>, tars: Vec<Vec<u8>>) -> Self {
        Self::with_config(
            architecture,
            variant,
            tars,
            json!({"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "Labels": null}),
        )
    }

    /// `tars` gzipped as its layers, with `exec` as the config's `config` (Entrypoint,
    /// Cmd, Env, User, WorkingDir, ...).
    pub fn with_config(
        architecture: &str,
        variant: Option<&str>,
        tars: Vec<Vec<u8>>,
        exec: Value,
    ) -> Self {
        let layers: Vec<Blob> = tars
            .iter()
            .map(|tar| Blob::new(media_type::OCI_LAYER_GZIP, gzip(tar)))
            .collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| Digest::of(t).to_string()).collect();
        let mut image = Self::assemble(architecture, variant, tars, layers, diff_ids);
        let mut config: Value =
            serde_json::from_slice(&image.config.bytes).expect("the config just written");
        config["config"] = exec;
        image.config = Blob::json(media_type::OCI_CONFIG, &config);
        image.manifest = manifest_blob(
            &image.config,
            image.layers.iter().map(Blob::descriptor).collect(),
        );
        image
    }

    /// This platform alone as an archive: an `index.json` naming its manifest.
    pub fn archive(&self) -> Vec<u8> {
        Archive::oci(&index_json(vec![self.manifest.descriptor()]))
            .blobs(self.blobs())
            .tar()
    }

    /// With the layer descriptors, config and manifest built from explicit parts.
    pub fn assemble(
        architecture: &str,
        variant: Option<&str>,
        tars: Vec<Vec<u8>>,
        layers: Vec<Blob>,
        diff_ids: Vec<String>,
    ) -> Self {
        let mut config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/bin/hello"], "Env": ["PATH=/bin"], "Labels": null},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(variant) = variant {
            config["variant"] = json!(variant);
        }
        let config = Blob::json(media_type::OCI_CONFIG, &config);
        let manifest = manifest_blob(&config, layers.iter().map(Blob::descriptor).collect());
        Self {
            manifest,
            config,
            layers,
            tars,
        }
    }

    pub fn blobs(&self) -> Vec<&Blob> {
        let mut blobs = vec![&self.manifest, &self.config];
        blobs.extend(&self.layers);
        blobs
    }

    pub fn hexes(&self) -> BTreeSet<String> {
        self.blobs().iter().map(|b| b.digest.hex()).collect()
    }
}

pub fn manifest_blob(config: &Blob, layers: Vec<Value>) -> Blob {
    Blob::json(
        media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers,
        }),
    )
}

pub fn index_json(manifests: Vec<Value>) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    })
}

/// An image archive under construction: file names and contents, in order.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    files: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Archive {
    /// An OCI layout with `index`.
    pub fn oci(index: &Value) -> Self {
        Self::default()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file(
                "index.json",
                &serde_json::to_vec(index).expect("serialise index"),
            )
    }

    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        self.files.push((name.as_bytes().to_vec(), data.to_vec()));
        self
    }

    pub fn blob(self, blob: &Blob) -> Self {
        let name = format!("blobs/sha256/{}", blob.digest.hex());
        self.file(&name, &blob.bytes)
    }

    pub fn blobs<'a>(self, blobs: impl IntoIterator<Item = &'a Blob>) -> Self {
        blobs.into_iter().fold(self, Archive::blob)
    }

    pub fn tar(&self) -> Vec<u8> {
        let mut layer = LayerTar::new()
            .dir("blobs/", 0o755)
            .dir("blobs/sha256/", 0o755);
        for (name, data) in &self.files {
            let name = String::from_utf8_lossy(name);
            layer = layer.file(&name, 0o644, data);
        }
        layer.finish()
    }
}
