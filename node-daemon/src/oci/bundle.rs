//! From an admitted container assignment to a bundle the OCI runtime runs.
//!
//! The image's platform manifest, its config and the layers the layer cache lacks are fetched
//! as blobs (through a [`BlobSource`]: the artifact cache, resuming and verifying as for any
//! artifact), each layer is unpacked into the layer cache, and the instance's root filesystem
//! is assembled from them under `DATA_DIR/oci/rootfs/NAME.GENERATION`. Beside it,
//! `DATA_DIR/oci/bundles/NAME.GENERATION/config.json` is what `node_core::oci` makes of the
//! image's config and the workload's spec. The supervisor then runs
//! `RUNTIME --root DATA_DIR/oci/state run --bundle B NAME` in the foreground: the runtime is
//! the supervised process, and the container its child in a control group below the
//! instance's.
//!
//! A layer the cache holds is never fetched again: two images on one base send that base
//! once. Everything the image says is checked again here (the node trusts no orchestrator's
//! word about an image): a manifest or config that is not what it claims, or a layer that is
//! hostile, is refused with its reason before anything runs, and nothing of it is kept.
//!
//! Root filesystems are hard links to the layer cache's files, never written in place (a
//! write would reach every container on those layers). A container writes to a layer of
//! its own: an overlay whose upper directory is in its bundle ([`super::root`]), or, on a
//! kernel that refuses the overlay, a root of copied files. A spec that asks for a read-only
//! root gets the links alone, mounted read-only, with a tmpfs on `/tmp`. A bundle lives as
//! long as a workload's spec names it; [`Containers::discard_orphans`] deletes the others,
//! and [`Containers::collect_layers`] the layers no remaining bundle uses.

use super::layers::{LayerCache, UnpackError};
use super::root;
use super::runtime::{self, Runtime};
use crate::artifacts::FetchError;
use crate::private_fs;
use crate::supervisor::spec::{Container, HealthCheck, Overlay, WorkloadSpec};
use edge_oci::image::{Compression, ImageConfig, Manifest, ManifestKind, is_image_config};
use edge_oci::{Digest, Files, LayerLimits, arch_name};
use node_core::oci::{
    Arch, ContainerSettings, ImageDefaults, RuntimeFeatures, resolve_user, runtime_config,
};
use std::collections::HashSet;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

/// The largest manifest or image config accepted: real ones are a few KiB.
pub const MAX_JSON_BLOB: u64 = 4 << 20;
/// The most of `/etc/passwd` or `/etc/group` read from an image.
const MAX_ACCOUNTS_FILE: u64 = 1 << 20;
/// The file in a bundle that lists the layers its root is made of, one `diff_id` per line.
const LAYERS_FILE: &str = "layers";
/// The file in a bundle that names the image's manifest and config blobs, kept in the
/// artifact cache while the bundle is there: a new version of the workload on the same
/// image then needs nothing from the orchestrator.
const BLOBS_FILE: &str = "blobs";
/// The directories of a bundle that hold its container's writable layer: what it wrote,
/// the overlay's scratch space, and where the merged root is mounted.
const UPPER_DIR: &str = "upper";
const WORK_DIR: &str = "work";
const MERGED_DIR: &str = "root";

/// Where a container's blobs come from.
pub trait BlobSource {
    /// The verified blob `digest` of `size` bytes, on the node's disk.
    fn blob(
        &self,
        digest: [u8; 32],
        size: u64,
    ) -> impl Future<Output = Result<PathBuf, FetchError>> + Send;
}

/// Why a container could not be made ready to run.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A blob could not be fetched: its error says whether to try again.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The image is not something this node runs: malformed, hostile, or not for this
    /// platform. Not worth retrying with the same image.
    #[error("image refused: {0}")]
    Refused(String),
    /// This node's disk failed, or the runtime could not be asked. Retried on restart.
    #[error("preparing the container: {0}")]
    Local(String),
}

/// What the container of an assignment needs besides its image.
#[derive(Debug, Clone)]
pub struct Request {
    /// The spec as for an executable: name, version, args, resources, health, routes. The
    /// container's spec is made from it.
    pub base: WorkloadSpec,
    /// Its generation: a new one gets a bundle of its own, so the old one's keeps running
    /// until it is replaced.
    pub generation: u64,
    /// The workload's own environment.
    pub env: Vec<(String, String)>,
    /// What the node adds (`EDGE_*`).
    pub node_env: Vec<(String, String)>,
    /// The platform's manifest and its size.
    pub manifest: [u8; 32],
    pub manifest_size: u64,
    /// The spec allows setuid and setgid files in the image.
    pub allow_setuid: bool,
    /// The spec asks for a read-only root: no writable layer, a tmpfs on `/tmp`.
    pub read_only_root: bool,
    /// The container's control group, as the runtime names it (`cgroupsPath`).
    pub cgroups_path: String,
}

/// The node's containers: its runtime, layer cache, bundles and the runtime's state.
#[derive(Debug, Clone)]
pub struct Containers {
    runtime: Option<Runtime>,
    names: Vec<String>,
    layers: LayerCache,
    bundles: PathBuf,
    state: PathBuf,
    /// Where the overlay is tried out.
    probe: PathBuf,
    /// What the runtime says it supports, asked once: it cannot change while the node runs.
    features: Arc<tokio::sync::OnceCell<RuntimeFeatures>>,
    /// Whether writable layers are overlays (else copies), found out once.
    overlay: Arc<tokio::sync::OnceCell<bool>>,
}

impl Containers {
    /// Opens (creating, 0700) the layer cache, `DATA_DIR/oci/bundles` and
    /// `DATA_DIR/oci/state`. `runtimes`: best first, as found; the first runs containers.
    pub fn open(data_dir: &Path, runtimes: Vec<Runtime>) -> io::Result<Self> {
        let layers = LayerCache::open(data_dir)?;
        let oci = data_dir.join("oci");
        let me = Self {
            names: runtimes.iter().map(|r| r.name.clone()).collect(),
            runtime: runtimes.into_iter().next(),
            layers,
            bundles: oci.join("bundles"),
            state: oci.join("state"),
            probe: oci.join("overlay-probe"),
            features: Arc::default(),
            overlay: Arc::default(),
        };
        for dir in [&me.bundles, &me.state] {
            private_fs::own_dir(dir)?;
        }
        Ok(me)
    }

    /// Makes every writable root a copy of the image's files, as on a kernel that refuses
    /// the overlay.
    pub fn without_overlay(self) -> Self {
        Self {
            overlay: Arc::new(tokio::sync::OnceCell::new_with(Some(false))),
            ..self
        }
    }

    /// Whether writable layers are overlays here; tried the first time it is asked.
    async fn overlay_works(&self) -> bool {
        *self
            .overlay
            .get_or_init(|| async {
                let dir = self.probe.clone();
                let tried = tokio::task::spawn_blocking(move || root::overlay_works(&dir)).await;
                match tried {
                    Ok(Ok(())) => true,
                    Ok(Err(error)) => {
                        warn!(%error, "overlayfs refused: each container writes to a copy of its image");
                        false
                    }
                    Err(error) => {
                        warn!(%error, "overlayfs not tried: each container writes to a copy of its image");
                        false
                    }
                }
            })
            .await
    }

    /// The names of the runtimes found, best first: what admission checks.
    pub fn runtime_names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// Whether the layer cache holds the layer `diff_id`.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layers.layer(diff_id).is_some()
    }

    /// Makes the bundle for `request` and returns the spec that runs it.
    pub async fn prepare(
        &self,
        source: &impl BlobSource,
        request: Request,
    ) -> Result<WorkloadSpec, PrepareError> {
        let Some(runtime) = self.runtime.clone() else {
            return Err(PrepareError::Refused(
                "no container runtime on this node".into(),
            ));
        };
        let arch_here = std::env::consts::ARCH;
        let arch = Arch::from_target(arch_here)
            .ok_or_else(|| PrepareError::Refused(format!("no containers on {arch_here}")))?;
        let name = request.base.name.clone();

        let path = source.blob(request.manifest, request.manifest_size).await?;
        let manifest: Manifest = read_json(&path, request.manifest_size, "manifest")?;
        check_manifest(&manifest)?;
        let path = source
            .blob(manifest.config.digest.0, manifest.config.size)
            .await?;
        let config: ImageConfig = read_json(&path, manifest.config.size, "config")?;
        let diff_ids = check_config(&manifest, &config, arch_here)?;
        self.unpack_missing(source, &name, &manifest, &diff_ids, request.allow_setuid)
            .await?;

        let key = format!("{name}.{}", request.generation);
        let bundle = self.bundles.join(&key);
        let overlay = (!request.read_only_root && self.overlay_works().await).then(|| Overlay {
            upper: bundle.join(UPPER_DIR),
            work: bundle.join(WORK_DIR),
            merged: bundle.join(MERGED_DIR),
        });
        // Links are never written; a writable root without an overlay is a copy.
        let files = if request.read_only_root || overlay.is_some() {
            Files::Linked
        } else {
            Files::Copied
        };
        let (cache, layers, instance) = (self.layers.clone(), diff_ids.clone(), key.clone());
        let rootfs = tokio::task::spawn_blocking(move || cache.assemble(&instance, &layers, files))
            .await
            .map_err(|e| PrepareError::Local(e.to_string()))?
            .map_err(|e| PrepareError::Refused(format!("assembling the root: {e}")))?;

        let written = self
            .write_bundle(
                runtime,
                arch,
                request,
                (&config, manifest.config.digest),
                (&rootfs, overlay),
                &bundle,
                &diff_ids,
            )
            .await;
        if written.is_err() {
            let (rootfs, bundle) = (rootfs.clone(), bundle.clone());
            let _ = tokio::task::spawn_blocking(move || remove_files(&rootfs, &bundle)).await;
        }
        written
    }

    /// Writes `config.json` for the container of `request` on `rootfs` and returns the spec
    /// that runs it.
    #[allow(clippy::too_many_arguments)]
    async fn write_bundle(
        &self,
        runtime: Runtime,
        arch: Arch,
        request: Request,
        (config, config_digest): (&ImageConfig, Digest),
        (rootfs, overlay): (&Path, Option<Overlay>),
        bundle: &Path,
        diff_ids: &[Digest],
    ) -> Result<WorkloadSpec, PrepareError> {
        let name = request.base.name.clone();
        let exec = &config.config;
        let image = ImageDefaults {
            entrypoint: exec.entrypoint.clone().unwrap_or_default(),
            cmd: exec.cmd.clone().unwrap_or_default(),
            env: exec.env.clone(),
            working_dir: exec.working_dir.clone().filter(|d| !d.is_empty()),
            user: exec.user.clone().filter(|u| !u.is_empty()),
            stop_signal: exec.stop_signal.clone(),
        };
        let stop_signal = image
            .stop_signal_number()
            .map_err(|e| PrepareError::Refused(e.to_string()))?;
        let user = resolve_user(
            image.user.as_deref(),
            &read_account_file(rootfs, "passwd"),
            &read_account_file(rootfs, "group"),
        )
        .map_err(|e| PrepareError::Refused(format!("image User: {e}")))?;
        let base = &request.base;
        let settings = ContainerSettings {
            args: (!base.args.is_empty()).then(|| base.args.clone()),
            env: request.env.clone(),
            node_env: request.node_env.clone(),
            working_dir: base
                .working_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
            memory_bytes: base.resources.memory_bytes,
            cpu_millis: base.resources.cpu_millis,
            readonly_root: request.read_only_root,
            nofile_hard: nofile_hard(),
            resolv_conf: host_file("/etc/resolv.conf"),
            hosts_file: host_file("/etc/hosts"),
            seccomp: self
                .features
                .get_or_init(|| runtime.features())
                .await
                .seccomp_for(arch),
            ..ContainerSettings::new(hostname(&name), request.cgroups_path.clone(), arch)
        };
        let mut config = runtime_config(&image, &settings, &user)
            .map_err(|e| PrepareError::Refused(format!("{}: {e}", e.field())))?;
        let root = overlay.as_ref().map_or(rootfs, |o| o.merged.as_path());
        config.root.path = root.to_string_lossy().into_owned();
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| PrepareError::Local(format!("writing config.json: {e}")))?;
        let listed: String = diff_ids.iter().map(|d| format!("{}\n", d.hex())).collect();
        let blobs = format!(
            "{}\n{}\n",
            Digest(request.manifest).hex(),
            config_digest.hex()
        );
        let (to_write, lower, layer) = (bundle.to_owned(), rootfs.to_owned(), overlay.clone());
        let write = move || -> io::Result<()> {
            private_fs::own_dir(&to_write)?;
            private_fs::write_atomic(&to_write.join("config.json"), &json)?;
            private_fs::write_atomic(&to_write.join(BLOBS_FILE), blobs.as_bytes())?;
            private_fs::write_atomic(&to_write.join(LAYERS_FILE), listed.as_bytes())?;
            // Mounted now, so that a kernel that takes the probe but not this layer is
            // found out before anything runs.
            if let Some(o) = &layer {
                root::create(&lower, o)?;
                root::mount(&lower, o)?;
            }
            Ok(())
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| PrepareError::Local(e.to_string()))?
            .map_err(|e| PrepareError::Local(format!("{}: {e}", bundle.display())))?;

        let container = Container {
            state_dir: self.state.clone(),
            id: name.clone(),
            bundle: bundle.to_owned(),
            rootfs: rootfs.to_owned(),
            stop_signal,
            overlay,
        };
        let mut spec = request.base;
        spec.command = runtime.path.clone();
        spec.args = run_args(&container);
        // The container's environment is in its config; the runtime needs none, and the
        // node's own variables stay for the probes (the address to probe).
        spec.env = request.node_env.into_iter().collect();
        spec.working_dir = None;
        if let Some(h) = spec.health.as_mut()
            && let HealthCheck::Exec { command, args } = &mut h.check
        {
            // A probe command runs in the container, as `docker exec` would.
            let mut inside = exec_args(&container);
            inside.push(command.to_string_lossy().into_owned());
            inside.append(args);
            *command = runtime.path.clone();
            *args = inside;
        }
        spec.container = Some(container);
        Ok(spec)
    }

    /// Fetches and unpacks each layer the cache lacks.
    async fn unpack_missing(
        &self,
        source: &impl BlobSource,
        name: &str,
        manifest: &Manifest,
        diff_ids: &[Digest],
        allow_setuid: bool,
    ) -> Result<(), PrepareError> {
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if self.has_layer(diff_id) {
                continue;
            }
            let compression = Compression::from_media_type(&layer.media_type)
                .map_err(|e| PrepareError::Refused(e.to_string()))?;
            let blob = source.blob(layer.digest.0, layer.size).await?;
            let limits = LayerLimits {
                allow_setuid,
                ..LayerLimits::default()
            };
            let (cache, diff_id) = (self.layers.clone(), *diff_id);
            let unpacked = tokio::task::spawn_blocking(move || {
                cache.unpack(&blob, compression, diff_id, limits)
            })
            .await
            .map_err(|e| PrepareError::Local(e.to_string()))?;
            match unpacked {
                Ok(_) => info!(workload = %name, layer = %diff_id, "layer unpacked"),
                Err(UnpackError::Blob { path, source }) => {
                    return Err(PrepareError::Local(format!(
                        "reading {}: {source}",
                        path.display()
                    )));
                }
                Err(UnpackError::Layer(e)) => {
                    return Err(PrepareError::Refused(format!(
                        "layer {}: {e}",
                        layer.digest
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deletes from the runtime's state every container no workload in `keep` runs: what a
    /// daemon killed before it could clean up left there.
    pub async fn reap(&self, keep: &HashSet<String>) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        // The runtime keeps a directory per container: none, nothing to ask it about (and
        // a node that never ran a container never runs its runtime at start).
        let held = std::fs::read_dir(&self.state).is_ok_and(|mut d| d.next().is_some());
        if !held {
            return;
        }
        for id in runtime::list(&runtime.path, &self.state).await {
            if keep.contains(&id) {
                continue;
            }
            match runtime::delete(&runtime.path, &self.state, &id).await {
                Ok(()) => info!(container = %id, "deleted a container no workload runs"),
                Err(error) => warn!(container = %id, %error, "cannot delete a leftover container"),
            }
        }
    }

    /// Deletes every bundle not in `keep` and every root filesystem without a bundle: what
    /// a daemon stopped between replacing a container and deleting the old one's files
    /// left. Only while no container but those in `keep` may run (the daemon's start).
    /// Blocking: call it from `spawn_blocking`.
    pub fn discard_orphans(&self, keep: &HashSet<PathBuf>) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.bundles)? {
            let bundle = entry?.path();
            if !keep.contains(&bundle) {
                info!(bundle = %bundle.display(), "deleting a bundle no workload runs");
                root::unmount(&bundle.join(MERGED_DIR))?;
                std::fs::remove_dir_all(&bundle)?;
            }
        }
        for entry in std::fs::read_dir(self.layers.rootfs_dir())? {
            let entry = entry?;
            if !self.bundles.join(entry.file_name()).is_dir() {
                self.layers
                    .remove_rootfs(&entry.file_name().to_string_lossy())?;
            }
        }
        Ok(())
    }

    /// The manifest and config blobs of every bundle: the artifact cache keeps them.
    pub fn kept_blobs(&self) -> Vec<[u8; 32]> {
        let Ok(entries) = std::fs::read_dir(&self.bundles) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join(BLOBS_FILE)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(Digest::from_hex)
                    .map(|d| d.0)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Deletes every unpacked layer that no bundle's root is made of. Not while a container
    /// is being prepared: its layers are in no bundle yet. Blocking.
    pub fn collect_layers(&self) -> io::Result<usize> {
        let mut layers = HashSet::new();
        for entry in std::fs::read_dir(&self.bundles)? {
            let listed =
                std::fs::read_to_string(entry?.path().join(LAYERS_FILE)).unwrap_or_default();
            layers.extend(listed.lines().filter_map(Digest::from_hex));
        }
        Ok(self.layers.gc(&layers)?.layers)
    }
}

/// Deletes `c`'s bundle, writable layer and root filesystem: it has stopped and nothing
/// will run it again. Blocking: the root holds a link per file of the image.
pub fn discard(c: &Container) {
    remove_files(&c.rootfs, &c.bundle);
}

/// Unmounts the bundle's writable layer and deletes the bundle and the root below it; none
/// of it while the layer stays mounted (a delete would walk the merged tree).
fn remove_files(rootfs: &Path, bundle: &Path) {
    let merged = bundle.join(MERGED_DIR);
    if let Err(error) = root::unmount(&merged) {
        warn!(dir = %merged.display(), %error, "cannot unmount a container's writable layer");
        return;
    }
    for dir in [rootfs, bundle] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => warn!(dir = %dir.display(), %error, "cannot delete a container's files"),
        }
    }
}

/// The runtime's arguments that run `c` in the foreground.
fn run_args(c: &Container) -> Vec<String> {
    vec![
        "--root".into(),
        c.state_dir.to_string_lossy().into_owned(),
        "run".into(),
        // The container's group outlives it until the supervisor has read its OOM kills
        // (cgroup v1 counts them only there) and deletes the container.
        "--keep".into(),
        "--bundle".into(),
        c.bundle.to_string_lossy().into_owned(),
        c.id.clone(),
    ]
}

/// The runtime's arguments that run a command in `c`, before the command.
fn exec_args(c: &Container) -> Vec<String> {
    vec![
        "--root".into(),
        c.state_dir.to_string_lossy().into_owned(),
        "exec".into(),
        c.id.clone(),
    ]
}

/// A workload name as a hostname: dots and underscores are fine; anything longer than a
/// hostname may be is cut.
fn hostname(name: &str) -> String {
    name.chars().take(63).collect()
}

/// `path` if the host has it, for a read-only bind into the container.
fn host_file(path: &str) -> Option<String> {
    Path::new(path).is_file().then(|| path.to_owned())
}

/// The daemon's own hard limit on open files, at most the default a container gets: the
/// runtime cannot give more than the daemon has without `CAP_SYS_RESOURCE`.
fn nofile_hard() -> u64 {
    let own = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            let hard = line.split_whitespace().nth(4)?;
            match hard {
                "unlimited" => Some(u64::MAX),
                n => n.parse().ok(),
            }
        })
        .unwrap_or(node_core::oci::NOFILE_SOFT);
    own.clamp(1, node_core::oci::DEFAULT_NOFILE_HARD)
}

/// Reads `size` bytes of JSON at `path` as a `T`.
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    size: u64,
    what: &str,
) -> Result<T, PrepareError> {
    if size > MAX_JSON_BLOB {
        return Err(PrepareError::Refused(format!(
            "the {what} is {size} bytes; at most {MAX_JSON_BLOB} are read"
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| PrepareError::Local(format!("reading the {what}: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PrepareError::Refused(format!("the {what} is not valid: {e}")))
}

fn check_manifest(manifest: &Manifest) -> Result<(), PrepareError> {
    let refuse = |why: String| Err(PrepareError::Refused(why));
    if manifest.schema_version != 2 {
        return refuse(format!(
            "manifest schemaVersion {} (only 2 exists)",
            manifest.schema_version
        ));
    }
    if let Some(kind) = &manifest.media_type
        && ManifestKind::of(kind) != Some(ManifestKind::Manifest)
    {
        return refuse(format!("the manifest's mediaType is {kind:.64}"));
    }
    if !is_image_config(&manifest.config.media_type) {
        return refuse(format!(
            "the config's mediaType is {:.64}",
            manifest.config.media_type
        ));
    }
    if manifest.config.size > MAX_JSON_BLOB {
        return refuse(format!(
            "the config is {} bytes; at most {MAX_JSON_BLOB} are read",
            manifest.config.size
        ));
    }
    Ok(())
}

/// The layers' `diff_id`s, once the config is for this node and names one per layer.
fn check_config(
    manifest: &Manifest,
    config: &ImageConfig,
    arch_here: &str,
) -> Result<Vec<Digest>, PrepareError> {
    let refuse = |why: String| Err(PrepareError::Refused(why));
    match arch_name(&config.platform()) {
        Some(arch) if arch == arch_here => {}
        _ => {
            return refuse(format!(
                "the config is for {:.16}/{:.16}, not this node's {arch_here}",
                config.os, config.architecture
            ));
        }
    }
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return refuse(format!(
            "the manifest has {} layers and the config {} diff_ids",
            manifest.layers.len(),
            diff_ids.len()
        ));
    }
    Ok(diff_ids.clone())
}

/// `rootfs/etc/NAME`, when it is a regular file and no link leads to it (an image's
/// `/etc/passwd` that links to the host's must not be followed); empty otherwise.
fn read_account_file(rootfs: &Path, name: &str) -> String {
    let etc = rootfs.join("etc");
    let plain = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            let t = m.file_type();
            !t.is_symlink() && if dir { t.is_dir() } else { t.is_file() }
        })
    };
    let file = etc.join(name);
    if !plain(&etc, true) || !plain(&file, false) {
        return String::new();
    }
    let mut text = String::new();
    match std::fs::File::open(&file) {
        Ok(f) => {
            if let Err(error) = f.take(MAX_ACCOUNTS_FILE).read_to_string(&mut text) {
                warn!(file = %file.display(), %error, "cannot read the image's accounts");
                text.clear();
            }
        }
        Err(error) => warn!(file = %file.display(), %error, "cannot open the image's accounts"),
    }
    text
}
