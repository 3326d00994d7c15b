//! Root filesystems assembled from unpacked layers: whiteouts, opaque directories, shared
//! layers by hard link, and entries of one type replacing another, never through a link.

mod common;

use common::{LayerTar, listing};
use edge_oci::Compression;
use edge_oci::layer::{self, UnpackOptions};
use edge_oci::rootfs::{self, RootfsError};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Unpacks `tar` as the layer `name` of `cache`.
fn layer(cache: &Path, name: &str, tar: LayerTar) -> PathBuf {
    let dest = cache.join(name);
    layer::unpack(
        &tar.finish()[..],
        Compression::Plain,
        &dest,
        &UnpackOptions::default(),
    )
    .expect("a test layer unpacks");
    dest
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for name in listing(&root.join(&dir)) {
            let path = dir.join(&name);
            let meta = fs::symlink_metadata(root.join(&path)).expect("stat an entry");
            let shown = path.to_string_lossy().into_owned();
            if meta.is_dir() {
                out.push(format!("{shown}/"));
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(root.join(&path)).expect("read a link");
                out.push(format!("{shown} -> {}", target.display()));
            } else {
                out.push(shown);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers() {
    let cache = tempfile::tempdir().expect("cache dir");
    let lower = layer(
        cache.path(),
        "lower",
        LayerTar::new()
            .file("a/keep", 0o644, b"keep")
            .file("a/gone", 0o644, b"gone")
            .file("b/x", 0o644, b"x")
            .file("c/old", 0o644, b"old")
            .dir("c/sub/", 0o755),
    );
    let upper = layer(
        cache.path(),
        "upper",
        LayerTar::new()
            .file("a/.wh.gone", 0o644, b"")
            .file(".wh.b", 0o644, b"")
            .file("c/.wh..wh..opq", 0o644, b"")
            .file("c/new", 0o644, b"new")
            .file(".wh.never-existed", 0o644, b""),
    );
    let out = cache.path().join("rootfs");

    let summary = rootfs::assemble(&[&lower, &upper], &out).expect("assembles");

    assert_eq!(tree(&out), ["a/", "a/keep", "c/", "c/new"]);
    assert_eq!(fs::read(out.join("c/new")).expect("c/new"), b"new");
    assert_eq!(summary.whited_out, 4, "a/gone, b, c/old and c/sub");
    assert_eq!(
        listing(cache.path()),
        ["lower", "rootfs", "upper"].map(str::to_owned).into()
    );
}

#[test]
fn a_shared_lower_layer_is_hard_linked_into_every_rootfs() {
    let cache = tempfile::tempdir().expect("cache dir");
    let base = layer(
        cache.path(),
        "base",
        LayerTar::new().file("lib/libc.so", 0o755, b"libc"),
    );
    let app1 = layer(
        cache.path(),
        "app1",
        LayerTar::new().file("app", 0o755, b"one"),
    );
    let app2 = layer(
        cache.path(),
        "app2",
        LayerTar::new().file("app", 0o755, b"two"),
    );

    let first = rootfs::assemble(&[&base, &app1], &cache.path().join("rootfs1")).expect("rootfs1");
    rootfs::assemble(&[&base, &app2], &cache.path().join("rootfs2")).expect("rootfs2");

    let inode = |p: &Path| fs::symlink_metadata(p).expect("stat").ino();
    let shared = inode(&base.join("lib/libc.so"));
    assert_eq!(inode(&cache.path().join("rootfs1/lib/libc.so")), shared);
    assert_eq!(inode(&cache.path().join("rootfs2/lib/libc.so")), shared);
    assert_eq!(
        fs::read(cache.path().join("rootfs2/app")).expect("app"),
        b"two"
    );
    assert_eq!((first.files, first.copied), (2, 0));
}

#[test]
fn a_copied_rootfs_is_its_own_and_writing_it_changes_no_layer() {
    let cache = tempfile::tempdir().expect("cache dir");
    let base = layer(
        cache.path(),
        "base",
        LayerTar::new()
            .file("etc/app.conf", 0o640, b"port=80")
            .symlink("bin/sh", "/bin/busybox"),
    );
    let out = cache.path().join("rootfs");

    let summary = rootfs::assemble_with(&[&base], &out, rootfs::Files::Copied).expect("assembles");

    let meta = |p: &Path| fs::symlink_metadata(p).expect("stat");
    let (copy, original) = (
        meta(&out.join("etc/app.conf")),
        meta(&base.join("etc/app.conf")),
    );
    assert_ne!(copy.ino(), original.ino(), "a file of its own");
    assert_eq!(copy.nlink(), 1);
    assert_eq!(copy.mode() & 0o7777, 0o640, "the layer's mode");
    assert_eq!((copy.uid(), copy.gid()), (original.uid(), original.gid()));
    assert_eq!((summary.files, summary.copied), (1, 1));
    assert!(meta(&out.join("bin/sh")).file_type().is_symlink());

    fs::write(out.join("etc/app.conf"), b"port=8080").expect("the copy is writable");
    assert_eq!(
        fs::read(base.join("etc/app.conf")).expect("layer file"),
        b"port=80",
        "the layer is untouched"
    );
}

#[test]
fn a_directory_replaces_a_symlink_and_a_symlink_replaces_a_directory() {
    let cache = tempfile::tempdir().expect("cache dir");
    let outside = tempfile::tempdir().expect("outside dir");
    let outside_path = outside.path().to_str().expect("utf-8 temp path");
    let lower = layer(
        cache.path(),
        "lower",
        LayerTar::new()
            .symlink("data", outside_path)
            .file("www/index.html", 0o644, b"<html>")
            .symlink("bin/sh", "/bin/busybox"),
    );
    let upper = layer(
        cache.path(),
        "upper",
        LayerTar::new()
            .file("data/file", 0o644, b"in the image")
            .symlink("www", outside_path),
    );
    let out = cache.path().join("rootfs");

    rootfs::assemble(&[&lower, &upper], &out).expect("assembles");

    assert_eq!(
        tree(&out),
        [
            "bin/".to_owned(),
            "bin/sh -> /bin/busybox".to_owned(),
            "data/".to_owned(),
            "data/file".to_owned(),
            format!("www -> {outside_path}"),
        ]
    );
    assert!(
        listing(outside.path()).is_empty(),
        "nothing went through a link"
    );
}

#[test]
fn directories_take_the_top_most_layers_mode() {
    let cache = tempfile::tempdir().expect("cache dir");
    let lower = layer(
        cache.path(),
        "lower",
        LayerTar::new()
            .dir("srv/", 0o755)
            .file("srv/a", 0o644, b"a"),
    );
    let upper = layer(
        cache.path(),
        "upper",
        LayerTar::new()
            .dir("srv/", 0o555)
            .file("srv/b", 0o644, b"b"),
    );
    let out = cache.path().join("rootfs");

    rootfs::assemble(&[&lower, &upper], &out).expect("assembles");

    let srv = fs::symlink_metadata(out.join("srv")).expect("srv");
    assert_eq!(srv.mode() & 0o7777, 0o555);
    assert_eq!(
        listing(&out.join("srv")),
        ["a", "b"].map(str::to_owned).into()
    );
}

#[test]
fn an_existing_rootfs_or_a_missing_layer_is_refused() {
    let cache = tempfile::tempdir().expect("cache dir");
    let base = layer(cache.path(), "base", LayerTar::new().file("a", 0o644, b"a"));
    fs::create_dir(cache.path().join("rootfs")).expect("an existing rootfs");
    let exists = rootfs::assemble(&[&base], &cache.path().join("rootfs")).expect_err("exists");
    assert!(matches!(exists, RootfsError::DestinationExists { .. }));

    let missing = cache.path().join("missing");
    let refused = rootfs::assemble(&[&base, &missing], &cache.path().join("rootfs2"))
        .expect_err("missing layer");
    assert!(matches!(refused, RootfsError::NotALayer { .. }));
    assert_eq!(
        listing(cache.path()),
        ["base", "rootfs"].map(str::to_owned).into(),
        "no partial root filesystem is left behind"
    );
}
