//! `/v1/images` over real HTTP on 127.0.0.1:0 with a real image store on disk, images built
//! in the test (real tars, gzipped layers, an OCI layout), the deploy path that reads them,
//! and the real `edgectl image` commands.

mod common;

use common::Api;
use edge_oci::build::{Archive, Blob, EntryType, LayerTar, PlatformImage, index_json};
use orchestrator::api;
use orchestrator::artifacts::ArtifactStore;
use orchestrator::auth::Role;
use orchestrator_core::store::MemStore;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

struct Server {
    api: Api,
    data: tempfile::TempDir,
    operator: String,
    viewer: String,
    agent: ureq::Agent,
}

fn start() -> Server {
    let data = tempfile::tempdir().expect("tmp");
    let artifacts = Arc::new(ArtifactStore::open(data.path()).expect("artifact store"));
    let api = Api::start(Arc::new(MemStore::default()), Some(artifacts), api::LIMITS);
    Server {
        operator: api.token("ci", Role::Operator),
        viewer: api.token("dash", Role::Viewer),
        agent: common::agent(),
        api,
        data,
    }
}

impl Server {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api.base()))
            .header("content-type", content_type);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let mut response = self
            .agent
            .run(request.body(body).expect("request"))
            .expect("the server answers");
        let text = response.body_mut().read_to_string().expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (response.status().as_u16(), json)
    }

    fn push(&self, archive: Vec<u8>) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/images",
            Some(&self.operator),
            "application/x-tar",
            archive,
        )
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call(
            "GET",
            path,
            Some(&self.viewer),
            "application/json",
            Vec::new(),
        )
    }

    /// Every name in the artifact store's directory: blobs, and staging left behind.
    fn stored(&self) -> BTreeSet<String> {
        listing(&self.data.path().join("artifacts/sha256"))
    }
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("a directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// A base layer of 64 KiB of varied bytes, shared by the images below.
fn base_layer() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let busy: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
    LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/base", 0o755, &busy)
        .symlink("bin/sh", "/bin/base")
        .finish()
}

fn app_layer(text: &str) -> Vec<u8> {
    LayerTar::new()
        .dir("app/", 0o755)
        .file("app/hello", 0o755, text.as_bytes())
        .finish()
}

/// An index of an amd64 and an arm64 platform, each the base layer and an app layer.
fn multi_arch(text: &str) -> (Vec<u8>, Vec<PlatformImage>) {
    let platforms = vec![
        PlatformImage::new("amd64", None, vec![base_layer(), app_layer(text)]),
        PlatformImage::new("arm64", Some("v8"), vec![base_layer(), app_layer(text)]),
    ];
    let index = Blob::json(
        edge_oci::image::media_type::OCI_INDEX,
        &index_json(vec![
            platforms[0].manifest.descriptor_for("amd64", None),
            platforms[1].manifest.descriptor_for("arm64", Some("v8")),
        ]),
    );
    let mut archive = Archive::oci(&index_json(vec![index.descriptor()])).blob(&index);
    for p in &platforms {
        archive = archive.blobs(p.blobs());
    }
    (archive.tar(), platforms)
}

#[test]
fn a_pushed_image_is_checked_stored_once_and_shown_by_platform() {
    let s = start();
    let (archive, platforms) = multi_arch("hello");
    let (status, pushed) = s.push(archive.clone());
    assert_eq!(status, 201, "{pushed}");
    let digest = pushed["digest"].as_str().expect("a digest").to_owned();
    assert!(digest.starts_with("sha256:"), "{pushed}");
    let arches: Vec<&str> = pushed["platforms"]
        .as_array()
        .expect("platforms")
        .iter()
        .map(|p| p["arch"].as_str().expect("arch"))
        .collect();
    assert_eq!(arches, ["x86_64", "aarch64"]);
    assert_eq!(pushed["platforms"][1]["platform"], "linux/arm64/v8");
    assert_eq!(
        pushed["platforms"][0]["manifest"],
        platforms[0].manifest.digest.to_string()
    );
    assert_eq!(
        pushed["platforms"][0]["layers"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(pushed["platforms"][0]["unpacked_bytes"], 64 * 1024 + 5);
    // The index, two manifests, two configs and the layers: the base and app layers are
    // the same bytes for both platforms, so stored once each.
    assert_eq!(pushed["blobs_new"], 7, "{pushed}");
    assert_eq!(pushed["blobs_shared"], 0);
    let blobs = s.stored();
    assert_eq!(blobs.len(), 7, "{blobs:?}");
    for p in &platforms {
        assert!(
            p.hexes().is_subset(&blobs),
            "every blob of every platform is stored"
        );
    }

    // The same again: nothing new.
    let (status, again) = s.push(archive);
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["blobs_new"], &again["blobs_shared"]),
        (&json!(0), &json!(7))
    );

    // Another image on the same base: only what differs is new, the base is counted shared.
    let (other, _) = multi_arch("hello, again");
    let (status, third) = s.push(other);
    assert_eq!(status, 201, "{third}");
    let base_bytes = platforms[0].layers[0].bytes.len() as u64;
    assert_eq!(third["blobs_shared"], 1, "{third}");
    assert_eq!(third["bytes_shared"], base_bytes);
    assert_eq!(
        third["blobs_new"], 6,
        "a new index, manifests, configs and app layer"
    );

    let (status, list) = s.get("/v1/images");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let (status, one) = s.get(&format!("/v1/images/{digest}"));
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["digest"], digest);
    assert_eq!(s.get("/v1/images/latest").0, 400);
    assert_eq!(
        s.get(&format!("/v1/images/sha256:{}", "0".repeat(64))).0,
        404
    );
}

#[test]
fn a_hostile_or_broken_image_is_refused_by_name_and_leaves_nothing() {
    let s = start();
    let escaping = LayerTar::new()
        .raw(
            b"../../etc/cron.d/x",
            EntryType::Regular,
            b"",
            0o644,
            b"* * * * * root sh",
        )
        .finish();
    let hostile = PlatformImage::new("amd64", None, vec![escaping]).archive();
    let (status, body) = s.push(hostile);
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains("../../etc/cron.d/x"), "{message}");
    assert!(s.stored().is_empty(), "nothing kept: {:?}", s.stored());

    // A manifest naming a layer the archive lacks.
    let image = PlatformImage::new("amd64", None, vec![app_layer("x")]);
    let missing = Archive::oci(&index_json(vec![image.manifest.descriptor()]))
        .blob(&image.manifest)
        .blob(&image.config)
        .tar();
    let (status, body) = s.push(missing);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&image.layers[0].digest.to_string())),
        "{body}"
    );
    // An image only for a platform no node runs.
    let (status, body) = s.push(PlatformImage::new("s390x", None, vec![app_layer("x")]).archive());
    assert_eq!(status, 400, "{body}");
    // Not a tar at all.
    let (status, _) = s.push(b"GIF89a not an image".to_vec());
    assert_eq!(status, 400);
    assert!(s.stored().is_empty(), "nothing kept: {:?}", s.stored());

    // Who and what may push.
    let good = || PlatformImage::new("amd64", None, vec![app_layer("x")]).archive();
    let (status, _) = s.call("POST", "/v1/images", None, "application/x-tar", good());
    assert_eq!(status, 401);
    let (status, _) = s.call(
        "POST",
        "/v1/images",
        Some(&s.viewer),
        "application/x-tar",
        good(),
    );
    assert_eq!(status, 403);
    let (status, _) = s.call(
        "POST",
        "/v1/images",
        Some(&s.operator),
        "application/json",
        good(),
    );
    assert_eq!(status, 415);
    assert!(s.stored().is_empty());
}

#[test]
fn a_container_deploys_only_with_a_pushed_image() {
    let s = start();
    let (archive, _) = multi_arch("hello");
    let (status, pushed) = s.push(archive);
    assert_eq!(status, 201, "{pushed}");
    let spec = |image: &str| {
        serde_json::to_vec(&json!({
            "name": "boxed", "version": "1", "driver": "oci", "image": image,
            "resources": {"cpu_millis": 100, "memory_bytes": 16 << 20}
        }))
        .expect("json")
    };
    let (status, body) = s.call(
        "POST",
        "/v1/workloads",
        Some(&s.operator),
        "application/json",
        spec(&format!("sha256:{}", "1".repeat(64))),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("edgectl image push")),
        "{body}"
    );
    let digest = pushed["digest"].as_str().expect("digest");
    let (status, body) = s.call(
        "POST",
        "/v1/workloads",
        Some(&s.operator),
        "application/json",
        spec(digest),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spec"]["driver"], "oci");
    assert_eq!(body["spec"]["image"], digest);
    assert_eq!(body["spec"]["artifact"], Value::Null);
}

#[test]
fn an_image_with_setuid_files_runs_only_where_the_spec_allows_them() {
    let s = start();
    let layer = LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/su", 0o4755, b"#!/bin/sh\n")
        .finish();
    let (status, pushed) = s.push(PlatformImage::new("amd64", None, vec![layer]).archive());
    assert_eq!(status, 201, "{pushed}");
    assert_eq!(pushed["platforms"][0]["has_setuid"], true);
    let digest = pushed["digest"].as_str().expect("digest");
    let spec = |allow: bool| {
        serde_json::to_vec(&json!({
            "name": "su", "version": "1", "driver": "oci", "image": digest,
            "allow_setuid": allow,
            "resources": {"cpu_millis": 100, "memory_bytes": 16 << 20}
        }))
        .expect("json")
    };
    let deploy = |allow| {
        s.call(
            "POST",
            "/v1/workloads",
            Some(&s.operator),
            "application/json",
            spec(allow),
        )
    };
    let (status, body) = deploy(false);
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.contains("linux/amd64") && message.contains("allow_setuid = true"),
        "{message}"
    );
    let (status, body) = deploy(true);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spec"]["allow_setuid"], true);
}

#[test]
fn edgectl_pushes_an_archive_and_lists_images() {
    let s = start();
    let dir = tempfile::tempdir().expect("tmp");
    let (archive, _) = multi_arch("hello");
    let file = dir.path().join("image.tar");
    std::fs::write(&file, archive).expect("write the archive");
    let edgectl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .env_remove("EDGE_API")
            .env_remove("EDGE_TOKEN")
            .args(["--api", &s.api.base(), "--token", &s.operator])
            .args(args)
            .output()
            .expect("run edgectl")
    };
    let out = edgectl(&["image", "push", file.to_str().expect("utf-8"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let digest = pushed["digest"].as_str().expect("digest");
    let out = edgectl(&["image", "push", file.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(digest) && text.contains("driver = \"oci\""),
        "{text}"
    );
    assert!(
        text.contains("x86_64 (linux/amd64), aarch64 (linux/arm64/v8)"),
        "{text}"
    );
    let out = edgectl(&["image", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(digest) && text.contains("aarch64"), "{text}");

    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"not a tar").expect("write");
    let out = edgectl(&["image", "push", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("image:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
