//! From an image's blobs to a container bundle (`oci::bundle`): what a good image becomes
//! (the runtime's command line, `config.json`, the image's files with a writable layer of
//! the instance's own, as an overlay or a copy, or read-only when the spec asks), and each
//! hostile or broken image refused with its reason before anything runs, leaving no bundle,
//! root or layer behind. The blobs come from a directory standing in for the orchestrator;
//! the runtime is a script that answers `features`: nothing runs here. The overlay is the
//! kernel's: these tests run as root, as the node does.

use edge_oci::build::{Blob, EntryType, LayerTar, PlatformImage, manifest_blob};
use edge_oci::image::media_type;
use node_daemon::artifacts::FetchError;
use node_daemon::oci::bundle::{BlobSource, Containers, PrepareError, Request};
use node_daemon::oci::root;
use node_daemon::oci::runtime::Runtime;
use node_daemon::supervisor::{HealthCheck, HealthProbe, WorkloadSpec};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Blobs by digest, as files: what the artifact cache would hand over once verified.
struct Blobs {
    files: HashMap<[u8; 32], PathBuf>,
}

impl Blobs {
    fn of(dir: &Path, image: &PlatformImage) -> Self {
        let mut files = HashMap::new();
        for blob in image.blobs() {
            let path = dir.join(blob.digest.hex());
            std::fs::write(&path, &blob.bytes).expect("write a blob");
            files.insert(blob.digest.0, path);
        }
        Self { files }
    }
}

impl BlobSource for Blobs {
    async fn blob(&self, digest: [u8; 32], size: u64) -> Result<PathBuf, FetchError> {
        let path = self.files.get(&digest).ok_or(FetchError::NotFound)?;
        let actual = std::fs::metadata(path).expect("the blob").len();
        if actual != size {
            return Err(FetchError::SizeMismatch {
                expected: size,
                actual,
            });
        }
        Ok(path.clone())
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        _ => "amd64",
    }
}

fn base() -> Vec<u8> {
    LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/serve", 0o755, b"#!/bin/sh\nexec sleep 600\n")
        .dir("etc/", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/:/bin/sh\nwww:x:1000:1000::/www:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\nwww:x:1000:\n")
        .finish()
}

fn image(layers: Vec<Vec<u8>>) -> PlatformImage {
    PlatformImage::with_config(
        arch(),
        None,
        layers,
        json!({"Entrypoint": ["/bin/serve"], "Env": ["PATH=/bin"], "User": "www",
               "StopSignal": "SIGQUIT"}),
    )
}

struct Node {
    data: tempfile::TempDir,
    blobs: tempfile::TempDir,
    containers: Containers,
    runtime: PathBuf,
}

impl Node {
    fn new() -> Self {
        let data = tempfile::tempdir().expect("tmp");
        let blobs = tempfile::tempdir().expect("tmp");
        let runtime = blobs.path().join("runc");
        std::fs::write(
            &runtime,
            "#!/bin/sh\n[ \"$1\" = features ] && echo '{\"linux\": {\"seccomp\": {\"enabled\": true}}}'\n",
        )
        .expect("write the runtime");
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let containers = Containers::open(
            data.path(),
            vec![Runtime {
                name: "runc".into(),
                path: runtime.clone(),
            }],
        )
        .expect("opens");
        Self {
            data,
            blobs,
            containers,
            runtime,
        }
    }

    fn request(&self, image: &PlatformImage, allow_setuid: bool) -> Request {
        let mut base = WorkloadSpec::new("web", "1", "/");
        base.health = Some(HealthProbe::new(HealthCheck::Exec {
            command: "/bin/serve".into(),
            args: vec!["--check".into()],
        }));
        Request {
            base,
            generation: 7,
            env: vec![("GREETING".into(), "hi".into())],
            node_env: vec![("EDGE_NODE_NAME".into(), "n1".into())],
            manifest: image.manifest.digest.0,
            manifest_size: image.manifest.bytes.len() as u64,
            allow_setuid,
            read_only_root: false,
            cgroups_path: "/edge-node-n1/web/container".into(),
        }
    }

    async fn prepare(&self, image: &PlatformImage) -> Result<WorkloadSpec, PrepareError> {
        let blobs = Blobs::of(self.blobs.path(), image);
        self.containers
            .prepare(&blobs, self.request(image, false))
            .await
    }

    /// Where the layer cache unpacked `image`'s only layer.
    fn layer_dir(&self, image: &PlatformImage) -> PathBuf {
        let diff_id = edge_oci::Digest::of(&image.tars[0]);
        self.data.path().join("oci/layers").join(diff_id.hex())
    }

    fn count(&self, dir: &str) -> usize {
        std::fs::read_dir(self.data.path().join("oci").join(dir)).map_or(0, |d| d.count())
    }

    /// Refused, naming `reason`, with nothing kept of the image.
    async fn refuses(&self, image: &PlatformImage, reason: &str) {
        match self.prepare(image).await {
            Err(PrepareError::Refused(why)) => assert!(why.contains(reason), "{why}"),
            other => panic!("expected a refusal naming {reason:?}, got {other:?}"),
        }
        // What the node does after a refusal: the layers of the image go with the next
        // collection (none of them is in a bundle).
        self.containers.collect_layers().expect("collects");
        for dir in ["bundles", "rootfs", "layers"] {
            assert_eq!(self.count(dir), 0, "nothing left in oci/{dir}");
        }
    }
}

impl Drop for Node {
    /// A failed test leaves no overlay mounted under a deleted directory.
    fn drop(&mut self) {
        let bundles = self.data.path().join("oci/bundles");
        for entry in std::fs::read_dir(bundles).into_iter().flatten().flatten() {
            let _ = root::unmount(&entry.path().join("root"));
        }
    }
}

#[tokio::test]
async fn a_good_image_becomes_a_bundle_the_runtime_runs() {
    let node = Node::new();
    let image = image(vec![base()]);
    let spec = node.prepare(&image).await.expect("prepared");
    assert_eq!(spec.command, node.runtime);
    let c = spec.container.clone().expect("a container");
    assert_eq!(c.id, "web");
    assert_eq!(c.stop_signal, 3, "the image's SIGQUIT");
    let data = node.data.path().join("oci");
    assert_eq!(c.bundle, data.join("bundles/web.7"));
    assert_eq!(c.rootfs, data.join("rootfs/web.7"));
    let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
    let state = data.join("state");
    let bundle = c.bundle.to_str().expect("utf-8");
    assert_eq!(
        args,
        [
            "--root",
            state.to_str().expect("utf-8"),
            "run",
            "--keep",
            "--bundle",
            bundle,
            "web"
        ]
    );
    // The probe runs inside the container.
    let Some(HealthCheck::Exec { command, args }) = spec.health.clone().map(|h| h.check) else {
        panic!("an exec probe");
    };
    assert_eq!(command, node.runtime);
    assert_eq!(args[2..], ["exec", "web", "/bin/serve", "--check"]);
    assert_eq!(spec.validate(), Ok(()));

    let config: Value =
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).expect("config.json"))
            .expect("JSON");
    let overlay = c.overlay.clone().expect("a writable layer");
    assert_eq!(
        config["root"]["path"],
        overlay.merged.to_str().expect("utf-8")
    );
    assert_eq!(config["root"]["readonly"], false);
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(config["process"]["args"], json!(["/bin/serve"]));
    assert_eq!(config["process"]["noNewPrivileges"], true);
    let env = config["process"]["env"].to_string();
    assert!(
        env.contains("GREETING=hi") && env.contains("EDGE_NODE_NAME=n1"),
        "{env}"
    );
    assert_eq!(
        config["linux"]["cgroupsPath"],
        "/edge-node-n1/web/container"
    );
    assert!(
        config["linux"]["seccomp"].is_object(),
        "the runtime has seccomp"
    );
    assert!(c.rootfs.join("bin/serve").is_file());
    // The artifact cache keeps the image's manifest and config while the bundle is there.
    let kept = node.containers.kept_blobs();
    assert!(
        kept.contains(&image.manifest.digest.0) && kept.contains(&image.config.digest.0),
        "{kept:?}"
    );
    for dir in [&c.bundle, &data.join("layers")] {
        let mode = std::fs::metadata(dir).expect("there").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }

    // Prepared again for a new generation: the layers are not fetched again.
    let blobs = Blobs {
        files: Blobs::of(node.blobs.path(), &image)
            .files
            .into_iter()
            .filter(|(d, _)| *d != image.layers[0].digest.0)
            .collect(),
    };
    let mut again = node.request(&image, false);
    again.generation = 8;
    let spec = node
        .containers
        .prepare(&blobs, again)
        .await
        .expect("prepared from the layer cache");
    let c8 = spec.container.expect("a container");
    node_daemon::oci::bundle::discard(&c);
    assert!(!c.bundle.exists() && !c.rootfs.exists());
    assert!(
        c8.rootfs.join("bin/serve").is_file(),
        "the other root stays"
    );
    assert_eq!(node.containers.collect_layers().expect("collects"), 0);
    node_daemon::oci::bundle::discard(&c8);
    assert_eq!(node.containers.collect_layers().expect("collects"), 1);
}

/// A mounted container root's files as the container sees them.
fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn each_instance_writes_to_an_overlay_of_its_own_and_the_image_stays_as_it_was() {
    let node = Node::new();
    let image = image(vec![base()]);
    let c7 = node.prepare(&image).await.expect("prepared");
    let c7 = c7.container.expect("a container");
    let overlay = c7.overlay.clone().expect("an overlay on this kernel");
    assert!(
        root::is_mounted(&overlay.merged).expect("stat"),
        "mounted at prepare"
    );
    let merged = &overlay.merged;
    let meta = |p: &Path| std::fs::metadata(p).expect("stat");
    assert_eq!(
        meta(merged).mode() & 0o7777,
        0o755,
        "the merged root has the image's mode, not the bundle's 0700"
    );

    // What an nginx or a database does at start: write beside its binaries, change a file
    // of the image, delete another.
    std::fs::create_dir_all(merged.join("var/cache/app")).expect("a new directory");
    std::fs::write(merged.join("var/cache/app/state"), "warm").expect("a new file");
    std::fs::write(merged.join("etc/passwd"), "changed\n").expect("an image file changed");
    std::fs::remove_file(merged.join("etc/group")).expect("an image file deleted");
    assert_eq!(
        read(&overlay.upper, "var/cache/app/state"),
        "warm",
        "in the upper layer"
    );
    let layer = node.layer_dir(&image);
    for untouched in [&c7.rootfs, &layer] {
        assert!(
            read(untouched, "etc/passwd").starts_with("root:"),
            "{}",
            untouched.display()
        );
        assert!(untouched.join("etc/group").is_file());
        assert!(!untouched.join("var").exists());
    }

    // The next generation starts from the image, not from what this one wrote.
    let mut again = node.request(&image, false);
    again.generation = 8;
    let blobs = Blobs::of(node.blobs.path(), &image);
    let c8 = node
        .containers
        .prepare(&blobs, again)
        .await
        .expect("prepared");
    let c8 = c8.container.expect("a container");
    let merged8 = c8.overlay.clone().expect("an overlay").merged;
    assert!(read(&merged8, "etc/passwd").starts_with("root:"));
    assert!(!merged8.join("var/cache/app/state").exists());

    // Mounted again where it is gone (a reboot): the writes are still there.
    root::unmount(merged).expect("unmounts");
    assert!(!merged.join("var").exists());
    root::mount(&c7.rootfs, &overlay).expect("mounts again");
    root::mount(&c7.rootfs, &overlay).expect("twice is once");
    assert_eq!(read(merged, "var/cache/app/state"), "warm");
    assert!(!merged.join("etc/group").exists(), "the deletion too");

    node_daemon::oci::bundle::discard(&c7);
    assert!(
        !c7.bundle.exists() && !c7.rootfs.exists(),
        "unmounted, then deleted"
    );
    assert!(
        read(&merged8, "etc/group").starts_with("root:"),
        "the other stays"
    );
    // A daemon stopped with a layer mounted: its next start deletes the orphan bundle.
    node.containers
        .discard_orphans(&Default::default())
        .expect("discards");
    assert!(!c8.bundle.exists() && !c8.rootfs.exists());
    assert_eq!(node.containers.collect_layers().expect("collects"), 1);
}

#[tokio::test]
async fn without_an_overlay_the_writable_root_is_a_copy_and_read_only_is_the_links_alone() {
    let node = Node::new();
    let image = image(vec![base()]);
    let copying = node.containers.clone().without_overlay();
    let blobs = Blobs::of(node.blobs.path(), &image);
    let spec = copying
        .prepare(&blobs, node.request(&image, false))
        .await
        .expect("prepared");
    let c = spec.container.expect("a container");
    assert_eq!(c.overlay, None);
    let config = |c: &node_daemon::supervisor::spec::Container| -> Value {
        serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).expect("read"))
            .expect("JSON")
    };
    let written = config(&c);
    assert_eq!(written["root"]["path"], c.rootfs.to_str().expect("utf-8"));
    assert_eq!(written["root"]["readonly"], false);
    let layer_file = node.layer_dir(&image).join("etc/passwd");
    let (copy, original) = (
        std::fs::metadata(c.rootfs.join("etc/passwd")).expect("stat"),
        std::fs::metadata(&layer_file).expect("stat"),
    );
    assert_ne!(copy.ino(), original.ino(), "a file of its own");
    std::fs::write(c.rootfs.join("etc/passwd"), "changed\n").expect("writable");
    assert!(read(layer_file.parent().expect("etc"), "passwd").starts_with("root:"));
    node_daemon::oci::bundle::discard(&c);

    let mut asked = node.request(&image, false);
    asked.read_only_root = true;
    asked.generation = 9;
    let spec = node
        .containers
        .prepare(&blobs, asked)
        .await
        .expect("prepared");
    let c = spec.container.expect("a container");
    assert_eq!(c.overlay, None, "nothing to write to");
    let written = config(&c);
    assert_eq!(written["root"]["path"], c.rootfs.to_str().expect("utf-8"));
    assert_eq!(written["root"]["readonly"], true);
    assert!(
        written["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs"),
        "a tmpfs on /tmp"
    );
    assert_eq!(
        std::fs::metadata(c.rootfs.join("etc/passwd"))
            .expect("stat")
            .ino(),
        original.ino(),
        "links to the layer"
    );
    node_daemon::oci::bundle::discard(&c);
}

#[tokio::test]
async fn hostile_and_broken_images_are_refused_before_anything_runs() {
    let node = Node::new();
    let escaping = LayerTar::new()
        .raw(b"../escaped", EntryType::Regular, b"", 0o644, b"x")
        .finish();
    node.refuses(&image(vec![escaping]), "layer").await;
    assert!(!node.data.path().join("oci/escaped").exists());

    let absolute_link = LayerTar::new()
        .symlink("etc", "/etc")
        .raw(b"etc/cron.d/evil", EntryType::Regular, b"", 0o644, b"x")
        .finish();
    node.refuses(&image(vec![absolute_link]), "layer").await;

    let hard_link_out = LayerTar::new()
        .raw(b"shadow", EntryType::Link, b"/etc/shadow", 0o644, b"")
        .finish();
    node.refuses(&image(vec![hard_link_out]), "layer").await;

    let device = LayerTar::new()
        .raw(b"dev/sda", EntryType::Block, b"", 0o600, b"")
        .finish();
    node.refuses(&image(vec![device]), "layer").await;

    let setuid = LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/su", 0o4755, b"\x7fELF")
        .finish();
    node.refuses(&image(vec![setuid.clone()]), "setuid").await;
    // The same image where the spec allows it.
    let allowed = image(vec![base(), setuid]);
    let blobs = Blobs::of(node.blobs.path(), &allowed);
    let spec = node
        .containers
        .prepare(&blobs, node.request(&allowed, true))
        .await
        .expect("allowed by the spec");
    node_daemon::oci::bundle::discard(&spec.container.expect("a container"));
    node.containers.collect_layers().expect("collects");

    // A decompression bomb: 64 MiB of zeros gzip to a few KiB.
    let bomb = LayerTar::new()
        .file("zeros", 0o644, &vec![0u8; 64 << 20])
        .finish();
    node.refuses(&image(vec![bomb]), "layer").await;

    // The image's /etc/passwd is a link to the host's: never followed, so its user is
    // unknown.
    let linked_accounts = LayerTar::new()
        .dir("etc/", 0o755)
        .symlink("etc/passwd", "/etc/passwd")
        .finish();
    node.refuses(&image(vec![linked_accounts]), "image User")
        .await;

    // Another platform's config.
    let foreign = PlatformImage::with_config(
        if arch() == "s390x" { "amd64" } else { "s390x" },
        None,
        vec![base()],
        json!({"Cmd": ["/bin/serve"]}),
    );
    node.refuses(&foreign, "not this node's").await;

    // A manifest whose layers and diff_ids disagree.
    let mut short = image(vec![base()]);
    let mut config: Value = serde_json::from_slice(&short.config.bytes).expect("JSON");
    config["rootfs"]["diff_ids"] = json!([]);
    short.config = Blob::json(media_type::OCI_CONFIG, &config);
    short.manifest = manifest_blob(
        &short.config,
        short.layers.iter().map(Blob::descriptor).collect(),
    );
    node.refuses(&short, "diff_ids").await;

    // A manifest that is not one.
    let mut odd = image(vec![base()]);
    odd.manifest = Blob::json(
        media_type::OCI_MANIFEST,
        &json!({"schemaVersion": 1, "config": odd.config.descriptor(), "layers": []}),
    );
    node.refuses(&odd, "schemaVersion").await;

    // A config that asks for more than a config may weigh.
    let mut heavy = image(vec![base()]);
    let mut descriptor = heavy.config.descriptor();
    descriptor["size"] = json!(64u64 << 20);
    heavy.manifest = Blob::json(
        media_type::OCI_MANIFEST,
        &json!({"schemaVersion": 2, "config": descriptor, "layers": []}),
    );
    node.refuses(&heavy, "bytes").await;

    // A manifest naming a blob the orchestrator does not have, or of another size: the
    // fetch says so, and nothing is kept.
    let good = image(vec![base()]);
    let mut without_layer = Blobs::of(node.blobs.path(), &good);
    without_layer.files.remove(&good.layers[0].digest.0);
    let missing = node
        .containers
        .prepare(&without_layer, node.request(&good, false))
        .await;
    assert!(
        matches!(missing, Err(PrepareError::Fetch(FetchError::NotFound))),
        "{missing:?}"
    );
    let mut lying = good.clone();
    let mut layers: Vec<Value> = good.layers.iter().map(Blob::descriptor).collect();
    layers[0]["size"] = json!(1);
    lying.manifest = manifest_blob(&lying.config, layers);
    let wrong_size = node.prepare(&lying).await;
    assert!(
        matches!(
            wrong_size,
            Err(PrepareError::Fetch(FetchError::SizeMismatch { .. }))
        ),
        "{wrong_size:?}"
    );
    for dir in ["bundles", "rootfs", "layers"] {
        assert_eq!(node.count(dir), 0, "nothing left in oci/{dir}");
    }
}
