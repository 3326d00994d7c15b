//! Image archives imported: good images of one and several platforms, and every way an
//! archive can lie about its blobs refused with the blob named and staging left empty.

mod common;

use common::{Archive, Blob, LayerTar, PlatformImage, gzip, index_json, listing, manifest_blob};
use edge_oci::archive::{self, ImportError, Imported, Limits};
use edge_oci::image::{Index, media_type};
use edge_oci::layer::LayerError;
use edge_oci::{Compression, Digest};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;

fn import(archive: &[u8], staging: &Path) -> Result<Imported, ImportError> {
    archive::import(archive, staging, &Limits::default())
}

fn base_layer() -> Vec<u8> {
    LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/hello", 0o755, b"hello")
        .symlink("bin/sh", "/bin/busybox")
        .finish()
}

fn app_layer(text: &[u8]) -> Vec<u8> {
    LayerTar::new().file("etc/motd", 0o644, text).finish()
}

fn arm64() -> PlatformImage {
    PlatformImage::new(
        "arm64",
        Some("v8"),
        vec![base_layer(), app_layer(b"hello world!")],
    )
}

fn staged(staging: &Path) -> BTreeSet<String> {
    listing(staging)
}

#[test]
fn imports_a_single_platform_image() {
    let staging = tempfile::tempdir().expect("staging dir");
    let image = arm64();
    let stray = Blob::new("application/octet-stream", b"nobody references me".to_vec());
    // As Docker 25 writes it: the OCI layout plus its legacy manifest.json and repositories.
    let mut entry = image.manifest.descriptor();
    entry["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    let tar = Archive::oci(&index_json(vec![entry]))
        .file("manifest.json", b"[]")
        .file("repositories", b"{}")
        .blobs(image.blobs())
        .blob(&stray)
        .tar();

    let imported = import(&tar, staging.path()).expect("a good image imports");

    assert_eq!(imported.digest, image.manifest.digest);
    assert_eq!(imported.media_type, media_type::OCI_MANIFEST);
    let [platform] = imported.platforms.as_slice() else {
        panic!("one platform, got {:?}", imported.platforms);
    };
    assert_eq!(platform.arch, "aarch64");
    assert_eq!(platform.config_digest, image.config.digest);
    assert_eq!(
        platform.config.config.cmd,
        Some(vec!["/bin/hello".to_owned()])
    );
    let layers: Vec<_> = platform
        .layers
        .iter()
        .map(|l| {
            (
                l.digest,
                l.diff_id,
                l.compression,
                l.unpacked_bytes,
                l.has_setuid,
            )
        })
        .collect();
    assert_eq!(
        layers,
        [
            (
                image.layers[0].digest,
                Digest::of(&image.tars[0]),
                Compression::Gzip,
                5,
                false
            ),
            (
                image.layers[1].digest,
                Digest::of(&image.tars[1]),
                Compression::Gzip,
                12,
                false
            ),
        ]
    );
    assert_eq!(
        staged(staging.path()),
        image.hexes(),
        "the stray blob is gone"
    );
    let kept: BTreeSet<_> = imported.blobs.iter().map(|b| b.digest.hex()).collect();
    assert_eq!(kept, image.hexes());
    for blob in &imported.blobs {
        let size = std::fs::metadata(&blob.path).expect("a kept blob").len();
        assert_eq!(size, blob.size);
    }
}

#[test]
fn imports_a_multi_arch_index() {
    let staging = tempfile::tempdir().expect("staging dir");
    let amd64 = PlatformImage::new("amd64", None, vec![base_layer()]);
    let arm64 = arm64();
    let armv7 = PlatformImage::new("arm", Some("v7"), vec![base_layer(), app_layer(b"v7")]);
    // buildx adds attestation manifests for `unknown/unknown`; docker save may leave their
    // blobs out. No node runs them, so they are neither required nor kept.
    let attestation = Blob::json(media_type::OCI_MANIFEST, &json!({"schemaVersion": 2}));
    let index = Blob::json(
        media_type::OCI_INDEX,
        &index_json(vec![
            amd64.manifest.descriptor_for("amd64", None),
            arm64.manifest.descriptor_for("arm64", Some("v8")),
            armv7.manifest.descriptor_for("arm", Some("v7")),
            attestation.descriptor_for("unknown", Some("unknown")),
        ]),
    );
    let tar = Archive::oci(&index_json(vec![index.descriptor()]))
        .blob(&index)
        .blobs(amd64.blobs())
        .blobs(arm64.blobs())
        .blobs(armv7.blobs())
        .tar();

    let imported = import(&tar, staging.path()).expect("a multi-arch image imports");

    assert_eq!(imported.digest, index.digest);
    let arches: Vec<_> = imported.platforms.iter().map(|p| p.arch).collect();
    assert_eq!(arches, ["x86_64", "aarch64", "arm"]);
    let mut expected: BTreeSet<String> = [index.digest.hex()].into();
    for image in [&amd64, &arm64, &armv7] {
        expected.extend(image.hexes());
    }
    assert_eq!(
        staged(staging.path()),
        expected,
        "a shared layer is staged once"
    );
}

#[test]
fn an_index_json_listing_manifests_directly_gets_a_synthesised_index() {
    let amd64 = PlatformImage::new("amd64", None, vec![base_layer()]);
    let arm64 = arm64();
    let tar = Archive::oci(&index_json(vec![
        amd64.manifest.descriptor_for("amd64", None),
        arm64.manifest.descriptor_for("arm64", None),
    ]))
    .blobs(amd64.blobs())
    .blobs(arm64.blobs())
    .tar();

    let staging = tempfile::tempdir().expect("staging dir");
    let imported = import(&tar, staging.path()).expect("imports");

    assert_eq!(imported.media_type, media_type::OCI_INDEX);
    let bytes =
        std::fs::read(staging.path().join(imported.digest.hex())).expect("the index is staged");
    assert_eq!(Digest::of(&bytes), imported.digest);
    let index: Index = serde_json::from_slice(&bytes).expect("an OCI index");
    let listed: Vec<_> = index.manifests.iter().map(|d| d.digest).collect();
    assert_eq!(listed, [amd64.manifest.digest, arm64.manifest.digest]);

    let again = tempfile::tempdir().expect("staging dir");
    let reimported = import(&tar, again.path()).expect("imports again");
    assert_eq!(
        reimported.digest, imported.digest,
        "the same archive gets the same digest"
    );
}

/// Imports `tar`, expects a refusal, and checks staging was left empty.
fn refused(tar: &[u8], limits: &Limits) -> ImportError {
    let staging = tempfile::tempdir().expect("staging dir");
    let error = archive::import(tar, staging.path(), limits).expect_err("refused");
    assert!(
        staged(staging.path()).is_empty(),
        "staging left with {:?} after {error}",
        staged(staging.path())
    );
    error
}

#[test]
fn refuses_a_blob_that_does_not_hash_to_its_name() {
    let image = arm64();
    let name = format!("blobs/sha256/{}", image.layers[1].digest.hex());
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blob(&image.manifest)
        .blob(&image.config)
        .blob(&image.layers[0])
        .file(&name, b"not the layer")
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::BlobDigestMismatch { entry, actual } if *entry == name && *actual == Digest::of(b"not the layer")),
        "{error}"
    );
}

#[test]
fn refuses_a_manifest_naming_a_missing_blob() {
    let image = arm64();
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blob(&image.manifest)
        .blob(&image.config)
        .blob(&image.layers[0])
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::MissingBlob { digest, .. } if *digest == image.layers[1].digest),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&image.layers[1].digest.to_string())
    );
}

#[test]
fn refuses_a_descriptor_of_the_wrong_size() {
    let image = arm64();
    let mut layers: Vec<_> = image.layers.iter().map(Blob::descriptor).collect();
    let real = image.layers[0].bytes.len() as u64;
    layers[0]["size"] = json!(real + 1);
    let manifest = manifest_blob(&image.config, layers);
    let tar = Archive::oci(&index_json(vec![manifest.descriptor()]))
        .blob(&manifest)
        .blob(&image.config)
        .blobs(&image.layers)
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::SizeMismatch { digest, expected, actual }
            if *digest == image.layers[0].digest && *expected == real + 1 && *actual == real),
        "{error}"
    );
}

#[test]
fn refuses_a_layer_whose_content_differs_from_its_diff_id() {
    let tars = vec![base_layer()];
    let layers = vec![Blob::new(media_type::OCI_LAYER_GZIP, gzip(&tars[0]))];
    let wrong = Digest::of(b"another layer");
    let image =
        PlatformImage::assemble("amd64", None, tars.clone(), layers, vec![wrong.to_string()]);
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::DiffIdMismatch { layer, expected, actual }
            if *layer == image.layers[0].digest && *expected == wrong && *actual == Digest::of(&tars[0])),
        "{error}"
    );
}

#[test]
fn refuses_zstd_layers() {
    let tars = vec![base_layer()];
    let layers = vec![Blob::new(
        media_type::OCI_LAYER_ZSTD,
        b"(zstd bytes)".to_vec(),
    )];
    let diff_ids = vec![Digest::of(&tars[0]).to_string()];
    let image = PlatformImage::assemble("amd64", None, tars, layers, diff_ids);
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(error, ImportError::LayerMediaType { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("unsupported layer media type"),
        "{error}"
    );
}

#[test]
fn refuses_json_over_the_limit() {
    let image = arm64();
    let index = index_json(vec![image.manifest.descriptor()]);
    let tar = Archive::oci(&index).blobs(image.blobs()).tar();
    let limits = Limits {
        max_json_bytes: 64,
        ..Limits::default()
    };
    let error = refused(&tar, &limits);
    assert!(
        matches!(&error, ImportError::JsonTooLarge { what, limit: 64 } if what == "index.json"),
        "{error}"
    );

    // A manifest blob over the limit is refused naming the blob.
    let index_bytes = serde_json::to_vec(&index).expect("json").len() as u64;
    assert!(image.manifest.bytes.len() as u64 > index_bytes);
    let limits = Limits {
        max_json_bytes: index_bytes,
        ..Limits::default()
    };
    let error = refused(&tar, &limits);
    assert!(
        matches!(&error, ImportError::JsonTooLarge { what, .. } if *what == image.manifest.digest.to_string()),
        "{error}"
    );
}

#[test]
fn refuses_two_manifests_for_one_architecture() {
    let first = PlatformImage::new("arm", Some("v7"), vec![base_layer()]);
    let second = PlatformImage::new("arm", Some("v6"), vec![app_layer(b"v6")]);
    let tar = Archive::oci(&index_json(vec![
        first.manifest.descriptor_for("arm", Some("v7")),
        second.manifest.descriptor_for("arm", Some("v6")),
    ]))
    .blobs(first.blobs())
    .blobs(second.blobs())
    .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(error, ImportError::AmbiguousPlatform { arch: "arm", first: f, second: s }
            if f == first.manifest.digest && s == second.manifest.digest),
        "{error}"
    );
}

#[test]
fn refuses_an_image_no_node_can_run() {
    let image = PlatformImage::new("s390x", None, vec![base_layer()]);
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::NoRunnablePlatform { found } if found == &["linux/s390x".to_owned()]),
        "{error}"
    );
}

#[test]
fn refuses_a_hostile_layer_naming_the_layer_and_the_entry() {
    let tars = vec![
        LayerTar::new()
            .raw(
                b"../../etc/cron.d/x",
                tar::EntryType::Regular,
                b"",
                0o644,
                b"x",
            )
            .finish(),
    ];
    let image = PlatformImage::new("amd64", None, tars);
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let error = refused(&tar, &Limits::default());
    assert!(
        matches!(&error, ImportError::Layer { layer, source: LayerError::ParentDirectory { entry } }
            if *layer == image.layers[0].digest && entry == "../../etc/cron.d/x"),
        "{error}"
    );
}

#[test]
fn reports_setuid_files_for_the_orchestrator_to_judge() {
    let image = PlatformImage::new(
        "amd64",
        None,
        vec![LayerTar::new().file("bin/su", 0o4755, b"su").finish()],
    );
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let staging = tempfile::tempdir().expect("staging dir");
    let imported = import(&tar, staging.path()).expect("imports");
    assert!(imported.platforms[0].layers[0].has_setuid);
}

#[test]
fn refuses_archive_entries_outside_the_layout() {
    let image = arm64();
    let base = Archive::oci(&index_json(vec![image.manifest.descriptor()])).blobs(image.blobs());

    let climbing = LayerTar::new()
        .raw(
            b"../../etc/passwd",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"x",
        )
        .finish();
    let error = refused(&climbing, &Limits::default());
    assert!(
        matches!(&error, ImportError::UnsafePath { entry } if entry == "../../etc/passwd"),
        "{error}"
    );

    let linked_blob = [
        base.tar()
            .strip_suffix(&[0u8; 1024][..])
            .expect("a finished tar")
            .to_vec(),
        LayerTar::new()
            .symlink("blobs/sha256/abc", "/etc/passwd")
            .finish(),
    ]
    .concat();
    let error = refused(&linked_blob, &Limits::default());
    assert!(
        matches!(&error, ImportError::UnexpectedEntry { kind: b'2', .. }),
        "{error}"
    );

    let bad_name = base.clone().file("blobs/sha512/abcd", b"x").tar();
    let error = refused(&bad_name, &Limits::default());
    assert!(
        matches!(&error, ImportError::BadBlobName { entry } if entry == "blobs/sha512/abcd"),
        "{error}"
    );

    let twice = base.file("index.json", b"{}").tar();
    let error = refused(&twice, &Limits::default());
    assert!(
        matches!(&error, ImportError::DuplicateEntry { entry } if entry == "index.json"),
        "{error}"
    );
}

#[test]
fn an_upload_cut_short_is_a_read_error_not_a_lying_blob() {
    let image = arm64();
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    // Cut ten bytes before the end of the last blob's data (then padding and the two
    // end-of-archive blocks).
    let last = image.layers[1].bytes.len();
    let padding = (512 - last % 512) % 512;
    let cut = &tar[..tar.len() - 1024 - padding - 10];
    let error = refused(cut, &Limits::default());
    assert!(matches!(error, ImportError::Read { .. }), "{error}");
}

#[test]
fn imports_a_gzipped_archive() {
    let image = arm64();
    let tar = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blobs(image.blobs())
        .tar();
    let staging = tempfile::tempdir().expect("staging dir");
    let imported = import(&gzip(&tar), staging.path()).expect("a gzipped archive imports");
    assert_eq!(imported.digest, image.manifest.digest);
}

#[test]
fn imports_a_legacy_docker_save_archive() {
    let tars = [base_layer(), app_layer(b"legacy")];
    let config = Blob::json(
        media_type::DOCKER_CONFIG,
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [
                Digest::of(&tars[0]).to_string(),
                Digest::of(&tars[1]).to_string(),
                Digest::of(&tars[0]).to_string(),
            ]},
        }),
    );
    let config_name = format!("{}.json", config.digest.hex());
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["hello:latest"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
    }]);
    // Docker writes a layer that repeats an earlier one as a symlink to it.
    let tar = LayerTar::new()
        .file("aaa/layer.tar", 0o644, &tars[0])
        .file("aaa/json", 0o644, b"{}")
        .file("aaa/VERSION", 0o644, b"1.0")
        .file("bbb/layer.tar", 0o644, &tars[1])
        .symlink("ccc/layer.tar", "../aaa/layer.tar")
        .file(&config_name, 0o644, &config.bytes)
        .file(
            "manifest.json",
            0o644,
            &serde_json::to_vec(&manifest).expect("json"),
        )
        .file("repositories", 0o644, br#"{"hello":{"latest":"x"}}"#)
        .finish();
    let staging = tempfile::tempdir().expect("staging dir");

    let imported = import(&tar, staging.path()).expect("a legacy archive imports");

    assert_eq!(imported.media_type, media_type::OCI_MANIFEST);
    let [platform] = imported.platforms.as_slice() else {
        panic!("one platform");
    };
    assert_eq!(platform.arch, "x86_64");
    assert_eq!(platform.manifest.digest, imported.digest);
    let layers: Vec<_> = platform
        .layers
        .iter()
        .map(|l| (l.digest, l.compression))
        .collect();
    assert_eq!(
        layers,
        [
            (Digest::of(&tars[0]), Compression::Plain),
            (Digest::of(&tars[1]), Compression::Plain),
            (Digest::of(&tars[0]), Compression::Plain),
        ]
    );
    let expected: BTreeSet<String> = [
        imported.digest.hex(),
        config.digest.hex(),
        Digest::of(&tars[0]).hex(),
        Digest::of(&tars[1]).hex(),
    ]
    .into();
    assert_eq!(
        staged(staging.path()),
        expected,
        "json and VERSION files are not kept"
    );
}
