//! The OCI image format as JSON: descriptors, indexes, manifests and image configs, with the
//! Docker v2 media types that `docker save` and older registries still write.
//!
//! These are wire types (a compatibility contract with every image tool), kept apart from the
//! fleet's own types; [`arch_name`] is the one bridge, mapping an OCI platform to the
//! architecture names nodes report. This module only parses and classifies: it must never
//! read a blob or trust a size or digest it is handed (the archive module checks those).

use crate::digest::Digest;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Media types this crate recognises.
pub mod media_type {
    /// OCI image index (a list of per-platform manifests).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, an uncompressed tar.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, a gzip-compressed tar.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, a zstd-compressed tar (recognised only to be refused by name).
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Deprecated OCI "non-distributable" layer, uncompressed.
    pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// Deprecated OCI "non-distributable" layer, gzip-compressed.
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// Docker manifest list (the Docker name for an index).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker layer, a gzip-compressed tar.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker layer, an uncompressed tar (written by some tools for docker-archive).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// A reference to a blob: what it is, its address and its exact size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the blob is (an index, a manifest, a config, a layer).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The blob's sha256.
    pub digest: Digest,
    /// The blob's length in bytes; a blob of any other length is refused.
    pub size: u64,
    /// The platform a manifest is for, when an index lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form metadata (tag names, reference types).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The OS and CPU an image manifest is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture in Go's spelling (`amd64`, `arm64`, `arm`, `riscv64`).
    pub architecture: String,
    /// Operating system in Go's spelling (`linux`).
    pub os: String,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features (Windows images).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v7` for 32-bit ARM, `v8` for arm64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            crate::shown(&self.os),
            crate::shown(&self.architecture)
        )?;
        if let Some(variant) = &self.variant {
            write!(f, "/{}", crate::shown(variant))?;
        }
        Ok(())
    }
}

/// The fleet's name for the architecture of `platform`, or `None` when no node of the fleet
/// can run it.
///
/// Our 32-bit ARM nodes all report `arm` and run ARMv6 and ARMv7 binaries (an ARMv6 binary
/// also runs on ARMv7); older variants and every non-Linux OS are not runnable.
pub fn arch_name(platform: &Platform) -> Option<&'static str> {
    if platform.os != "linux" {
        return None;
    }
    match (platform.architecture.as_str(), platform.variant.as_deref()) {
        ("amd64", _) => Some("x86_64"),
        ("arm64", _) => Some("aarch64"),
        ("arm", None | Some("v7" | "v6")) => Some("arm"),
        ("riscv64", _) => Some("riscv64"),
        _ => None,
    }
}

/// An image index (or Docker manifest list): one image for several platforms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The index's own media type; optional in the spec.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes) it lists.
    pub manifests: Vec<Descriptor>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest: one platform's config and layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's own media type; optional in the OCI spec, present in Docker's.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image config: the platform, how to run the image, and the digests of its unpacked
/// layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture (Go's spelling).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (Go's spelling).
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How to run the image; absent or `null` means all defaults.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: ExecConfig,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// The platform the config says it is for.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            os_version: None,
            os_features: Vec::new(),
            variant: self.variant.clone(),
        }
    }
}

/// The execution parameters of an image config (`config` in the JSON). Docker writes
/// `null` for empty lists and maps; those read as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `NAME=value` pairs.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    /// The executable and its first arguments; `None` differs from an empty list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or the command when there is no entrypoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The signal that asks the process to stop (`SIGTERM` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Ports the image documents as served (`8080/tcp`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, PortOptions>,
    /// Free-form labels.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// The value of an `ExposedPorts` entry: always `{}` in the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOptions {}

/// The `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The sha256 of each layer's uncompressed tar, lowest first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// What a manifest-like blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An OCI index or a Docker manifest list.
    Index,
    /// An OCI or Docker v2 image manifest.
    Manifest,
}

impl ManifestKind {
    /// Classifies a descriptor's media type; `None` for anything that is neither.
    pub fn of(media_type: &str) -> Option<Self> {
        match media_type {
            media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => Some(Self::Index),
            media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Some(Self::Manifest),
            _ => None,
        }
    }
}

/// Whether `media_type` is an image config this crate reads.
pub fn is_image_config(media_type: &str) -> bool {
    matches!(
        media_type,
        media_type::OCI_CONFIG | media_type::DOCKER_CONFIG
    )
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// An uncompressed tar.
    Plain,
    /// A gzip-compressed tar (possibly several gzip members back to back).
    Gzip,
}

/// A layer media type this crate cannot unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported layer media type {media_type:?}")]
pub struct UnsupportedLayerType {
    /// The media type, truncated.
    pub media_type: String,
}

impl Compression {
    /// The compression of a layer of `media_type`. zstd is refused: nodes carry no zstd
    /// decoder, and an image that needs one should be re-pushed with gzip layers.
    pub fn from_media_type(media_type: &str) -> Result<Self, UnsupportedLayerType> {
        match media_type {
            media_type::OCI_LAYER
            | media_type::OCI_LAYER_NONDISTRIBUTABLE
            | media_type::DOCKER_LAYER => Ok(Self::Plain),
            media_type::OCI_LAYER_GZIP
            | media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP
            | media_type::DOCKER_LAYER_GZIP => Ok(Self::Gzip),
            other => Err(UnsupportedLayerType {
                media_type: crate::shown(other),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            architecture: architecture.into(),
            os: os.into(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn maps_oci_platforms_to_fleet_arch_names() {
        let cases = [
            (platform("linux", "amd64", None), Some("x86_64")),
            (platform("linux", "arm64", Some("v8")), Some("aarch64")),
            (platform("linux", "arm", Some("v7")), Some("arm")),
            (platform("linux", "arm", Some("v6")), Some("arm")),
            (platform("linux", "arm", None), Some("arm")),
            (platform("linux", "arm", Some("v5")), None),
            (platform("linux", "riscv64", None), Some("riscv64")),
            (platform("linux", "386", None), None),
            (platform("windows", "amd64", None), None),
            (platform("unknown", "unknown", None), None),
        ];
        for (platform, expected) in cases {
            assert_eq!(arch_name(&platform), expected, "{platform}");
        }
    }

    #[test]
    fn layer_media_types_say_their_compression() {
        assert_eq!(
            Compression::from_media_type(media_type::DOCKER_LAYER_GZIP),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(media_type::OCI_LAYER),
            Ok(Compression::Plain)
        );
        let zstd =
            Compression::from_media_type(media_type::OCI_LAYER_ZSTD).expect_err("zstd is refused");
        assert_eq!(
            zstd.to_string(),
            "unsupported layer media type \"application/vnd.oci.image.layer.v1.tar+zstd\""
        );
    }

    #[test]
    fn reads_a_docker_config_with_nulls() {
        let config: ImageConfig = serde_json::from_str(
            r#"{"architecture":"arm","os":"linux","variant":"v7",
                "config":{"Env":null,"Cmd":["/bin/sh"],"Labels":null,
                          "ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/app"},
                "rootfs":{"type":"layers","diff_ids":[
                  "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
                "history":[{"created_by":"x"}]}"#,
        )
        .expect("a docker config parses");
        assert_eq!(arch_name(&config.platform()), Some("arm"));
        assert!(config.config.env.is_empty());
        assert_eq!(
            config.config.cmd.as_deref(),
            Some(&["/bin/sh".to_owned()][..])
        );
        assert!(config.config.exposed_ports.contains_key("8080/tcp"));
        assert_eq!(config.rootfs.diff_ids, vec![Digest::of(b"")]);
    }
}
