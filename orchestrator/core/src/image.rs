//! What the image store knows of a container image, in the terms the scheduler and the
//! assignment need: which architectures it has, and for each the manifest a node fetches
//! and the bytes it costs.
//!
//! The shell's image store fills these in when an image is pushed (every blob checked,
//! every layer scanned); this module never reads an image and never trusts a node's word
//! about one.

use serde::{Deserialize, Serialize};

use crate::workload::{Arch, ArtifactDigest, WorkloadSpec};
use edge_proto::{Seq, text};

/// What the stores know of a deployment's artifact: its size, and for an image the
/// platforms it has. A plain `u64` converts into the facts of an executable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFacts {
    /// Bytes of the executable, or of the image's index.
    pub size: u64,
    /// For `driver = "oci"`: the image's platforms.
    pub image: Option<ImageFacts>,
}

impl ArtifactFacts {
    /// `spec` placed only where its image has a platform (unchanged for an executable).
    pub fn constrain(&self, spec: WorkloadSpec) -> WorkloadSpec {
        match &self.image {
            Some(image) => spec.with_image_arch(image.arch()),
            None => spec,
        }
    }
}

impl From<u64> for ArtifactFacts {
    fn from(size: u64) -> Self {
        Self { size, image: None }
    }
}

/// A container image's platforms, one per architecture, as stored with a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    pub platforms: Vec<PlatformFacts>,
}

/// One platform of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformFacts {
    pub arch: Arch,
    /// The platform's manifest: the node fetches it by this digest.
    pub manifest: ArtifactDigest,
    pub manifest_size: u64,
    /// The config and the compressed layers.
    pub download_bytes: u64,
    /// The layers unpacked.
    pub unpacked_bytes: u64,
}

impl ImageFacts {
    /// The architectures the image runs on.
    pub fn arch(&self) -> Vec<Arch> {
        self.platforms.iter().map(|p| p.arch).collect()
    }

    /// The image as an assignment of `spec` carries it; `None` with more platforms than the
    /// wire holds (the image store refuses those at push).
    pub fn to_wire(&self, spec: &crate::workload::WorkloadSpec) -> Option<edge_proto::Image> {
        let platforms = self
            .platforms
            .iter()
            .map(|p| edge_proto::ImagePlatform {
                arch: text(p.arch.as_str()),
                manifest: *p.manifest.as_bytes(),
                manifest_size: p.manifest_size,
                download_bytes: p.download_bytes,
                unpacked_bytes: p.unpacked_bytes,
            })
            .collect();
        Some(edge_proto::Image {
            platforms: Seq::new(platforms)?,
            allow_setuid: spec.allow_setuid(),
            read_only_root: spec.read_only_root(),
        })
    }
}
