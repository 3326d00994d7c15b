//! Layers scanned and unpacked: what a good layer becomes on disk, and every hostile entry
//! refused by both scan and unpack with nothing written outside the destination.

mod common;

use common::{LayerTar, gzip, listing, running_as_root};
use edge_oci::layer::{self, LayerError, LayerLimits, UnpackOptions};
use edge_oci::{Compression, Digest};
use flate2::write::GzEncoder;
use std::cell::Cell;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::rc::Rc;
use tar::EntryType;

fn unpack_into(
    dir: &Path,
    tar: &[u8],
    options: &UnpackOptions,
) -> Result<layer::LayerSummary, LayerError> {
    layer::unpack(
        &gzip(tar)[..],
        Compression::Gzip,
        &dir.join("layer"),
        options,
    )
}

#[test]
fn unpacks_a_layer_as_its_entries_say() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let tar = LayerTar::new()
        .dir("./", 0o755)
        .dir("./bin/", 0o755)
        .file("./bin/busybox", 0o755, b"#!busybox")
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/ls", "bin/busybox")
        .file_owned("etc/conf", 0o640, 1234, 5678, b"key=value\n")
        .file("etc/.wh.old", 0o644, b"")
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .dir("ro/", 0o555)
        .file("ro/inside", 0o444, b"read only")
        .finish();
    let dest = scratch.path().join("layer");

    let summary =
        unpack_into(scratch.path(), &tar, &UnpackOptions::default()).expect("a good layer unpacks");

    assert_eq!(summary.diff_id, Digest::of(&tar));
    assert_eq!(summary.unpacked_bytes, 9 + 10 + 9);
    assert_eq!(summary.entries, 10);
    assert!(!summary.has_setuid);
    assert_eq!(listing(scratch.path()), ["layer".to_owned()].into());

    let busybox = fs::symlink_metadata(dest.join("bin/busybox")).expect("busybox");
    assert_eq!(
        fs::read(dest.join("bin/busybox")).expect("read busybox"),
        b"#!busybox"
    );
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(dest.join("bin/sh")).expect("sh is a link"),
        Path::new("/bin/busybox"),
        "absolute symlinks are kept as they are, never resolved"
    );
    assert_eq!(
        fs::symlink_metadata(dest.join("bin/ls")).expect("ls").ino(),
        busybox.ino()
    );
    for marker in ["etc/.wh.old", "var/cache/.wh..wh..opq"] {
        let meta = fs::symlink_metadata(dest.join(marker)).expect("markers are kept");
        assert!(meta.is_file() && meta.len() == 0, "{marker}");
    }
    let ro = fs::symlink_metadata(dest.join("ro")).expect("ro");
    assert_eq!(
        ro.mode() & 0o7777,
        0o555,
        "a read-only directory still got its children"
    );
    assert_eq!(
        fs::read(dest.join("ro/inside")).expect("read ro/inside"),
        b"read only"
    );
    let conf = fs::symlink_metadata(dest.join("etc/conf")).expect("conf");
    if running_as_root(scratch.path()) {
        assert_eq!((conf.uid(), conf.gid()), (1234, 5678));
    } else {
        assert_ne!(conf.uid(), 1234, "only root gives files the layer's owners");
    }

    let scanned = layer::scan(&gzip(&tar)[..], Compression::Gzip, &LayerLimits::default())
        .expect("a good layer scans");
    assert_eq!(scanned, summary, "scan and unpack see the same layer");
}

#[test]
fn a_later_entry_replaces_a_symlink_without_writing_through_it() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let outside = tempfile::tempdir().expect("outside dir");
    fs::write(outside.path().join("target"), b"host file").expect("host file");
    let target = outside.path().join("target");
    let tar = LayerTar::new()
        .symlink("x", target.to_str().expect("utf-8 temp path"))
        .file("x", 0o644, b"layer data")
        .symlink("d", outside.path().to_str().expect("utf-8 temp path"))
        .dir("d/", 0o755)
        .file("d/file", 0o644, b"in the layer")
        .finish();

    unpack_into(scratch.path(), &tar, &UnpackOptions::default()).expect("replacing is allowed");

    let dest = scratch.path().join("layer");
    assert_eq!(
        fs::read(dest.join("x")).expect("x is a file now"),
        b"layer data"
    );
    assert!(fs::symlink_metadata(dest.join("d")).expect("d").is_dir());
    assert_eq!(fs::read(&target).expect("host file"), b"host file");
    assert_eq!(listing(outside.path()), ["target".to_owned()].into());
}

#[test]
fn a_directory_replaced_by_a_file_takes_its_children_along() {
    let tar = LayerTar::new()
        .file("a/f", 0o644, b"1")
        .file("a", 0o644, b"2")
        .hardlink("h", "a/f")
        .finish();
    let refused = layer::scan(&tar[..], Compression::Plain, &LayerLimits::default())
        .expect_err("a/f went with a");
    assert!(
        matches!(refused, LayerError::HardLink { ref entry, .. } if entry == "h"),
        "{refused}"
    );
}

/// A hostile layer, and how it must be refused.
struct Hostile {
    name: &'static str,
    tar: Vec<u8>,
    limits: LayerLimits,
    refused: fn(&LayerError) -> bool,
}

fn hostile_layers(outside: &Path) -> Vec<Hostile> {
    let outside = outside
        .to_str()
        .expect("utf-8 temp path")
        .as_bytes()
        .to_vec();
    let outside_file = [&outside[..], b"/file"].concat();
    let long_path = format!("{}f", format!("{}/", "d".repeat(200)).repeat(21));
    let case = |name, tar, refused| Hostile {
        name,
        tar,
        limits: LayerLimits::default(),
        refused,
    };
    let regular = EntryType::Regular;
    vec![
        case(
            "parent directory",
            LayerTar::new()
                .raw(b"../evil", regular, b"", 0o644, b"x")
                .finish(),
            |e| matches!(e, LayerError::ParentDirectory { entry } if entry == "../evil"),
        ),
        case(
            "parent directory deeper down",
            LayerTar::new()
                .raw(b"a/../../evil", regular, b"", 0o644, b"x")
                .finish(),
            |e| matches!(e, LayerError::ParentDirectory { .. }),
        ),
        case(
            "absolute path",
            LayerTar::new()
                .raw(&outside_file, regular, b"", 0o644, b"x")
                .finish(),
            |e| matches!(e, LayerError::AbsolutePath { .. }),
        ),
        case(
            "relative symlink climbing out",
            LayerTar::new()
                .raw(
                    b"a/link",
                    EntryType::Symlink,
                    b"../../etc/shadow",
                    0o777,
                    b"",
                )
                .finish(),
            |e| matches!(e, LayerError::SymlinkEscapes { entry, target } if entry == "a/link" && target == "../../etc/shadow"),
        ),
        case(
            "write through an absolute symlink",
            LayerTar::new()
                .raw(b"etc", EntryType::Symlink, &outside, 0o777, b"")
                .raw(b"etc/passwd", regular, b"", 0o644, b"root::0:0")
                .finish(),
            |e| matches!(e, LayerError::ThroughSymlink { entry, link } if entry == "etc/passwd" && link == "etc"),
        ),
        case(
            "write through a symlink to a directory of the layer",
            LayerTar::new()
                .dir("real/", 0o755)
                .symlink("alias", "real")
                .file("alias/file", 0o644, b"x")
                .finish(),
            |e| matches!(e, LayerError::ThroughSymlink { .. }),
        ),
        case(
            "hard link climbing out",
            LayerTar::new()
                .raw(b"h", EntryType::Link, b"../outside/file", 0o644, b"")
                .finish(),
            |e| matches!(e, LayerError::HardLink { entry, .. } if entry == "h"),
        ),
        case(
            "hard link to an absolute path",
            LayerTar::new()
                .raw(b"h", EntryType::Link, &outside_file, 0o644, b"")
                .finish(),
            |e| matches!(e, LayerError::HardLink { .. }),
        ),
        case(
            "hard link to a file not yet written",
            LayerTar::new()
                .hardlink("h", "later")
                .file("later", 0o644, b"x")
                .finish(),
            |e| matches!(e, LayerError::HardLink { .. }),
        ),
        case(
            "hard link to a symlink",
            LayerTar::new()
                .raw(b"s", EntryType::Symlink, &outside_file, 0o777, b"")
                .hardlink("h", "s")
                .finish(),
            |e| matches!(e, LayerError::HardLink { .. }),
        ),
        case(
            "hard link through a symlink",
            LayerTar::new()
                .raw(b"d", EntryType::Symlink, &outside, 0o777, b"")
                .hardlink("h", "d/file")
                .finish(),
            |e| matches!(e, LayerError::HardLink { .. }),
        ),
        case(
            "character device",
            LayerTar::new()
                .raw(b"dev/mem", EntryType::Char, b"", 0o600, b"")
                .finish(),
            |e| matches!(e, LayerError::Device { entry } if entry == "dev/mem"),
        ),
        case(
            "block device",
            LayerTar::new()
                .raw(b"dev/sda", EntryType::Block, b"", 0o600, b"")
                .finish(),
            |e| matches!(e, LayerError::Device { .. }),
        ),
        case(
            "fifo",
            LayerTar::new()
                .raw(b"run/pipe", EntryType::Fifo, b"", 0o600, b"")
                .finish(),
            |e| matches!(e, LayerError::Fifo { .. }),
        ),
        case(
            "setuid file",
            LayerTar::new().file("bin/su", 0o4755, b"su").finish(),
            |e| matches!(e, LayerError::Setuid { entry, mode } if entry == "bin/su" && *mode == 0o4755),
        ),
        case(
            "setgid file",
            LayerTar::new().file("bin/wall", 0o2755, b"wall").finish(),
            |e| matches!(e, LayerError::Setuid { .. }),
        ),
        case(
            "unknown entry type",
            LayerTar::new()
                .raw(b"thing", EntryType::new(b'Z'), b"", 0o644, b"")
                .finish(),
            |e| matches!(e, LayerError::UnsupportedEntryType { kind: b'Z', .. }),
        ),
        case(
            "path over 4096 bytes",
            LayerTar::new().file(&long_path, 0o644, b"x").finish(),
            |e| matches!(e, LayerError::PathTooLong { entry } if entry.ends_with("...")),
        ),
        case(
            "file replacing the root",
            LayerTar::new().raw(b".", regular, b"", 0o644, b"").finish(),
            |e| matches!(e, LayerError::ReplacesRoot { .. }),
        ),
        case(
            "whiteout hiding the parent",
            LayerTar::new().file("a/.wh..", 0o644, b"").finish(),
            |e| matches!(e, LayerError::BadWhiteout { .. }),
        ),
        Hostile {
            name: "too many entries",
            tar: LayerTar::new()
                .file("a", 0o644, b"")
                .file("b", 0o644, b"")
                .file("c", 0o644, b"")
                .finish(),
            limits: LayerLimits {
                max_entries: 2,
                ..LayerLimits::default()
            },
            refused: |e| matches!(e, LayerError::TooManyEntries { entry, limit: 2 } if entry == "c"),
        },
        Hostile {
            name: "paths too long together",
            tar: LayerTar::new()
                .file(
                    &format!("{}/{}", "a".repeat(200), "b".repeat(200)),
                    0o644,
                    b"",
                )
                .finish(),
            limits: LayerLimits {
                max_entries: 1,
                ..LayerLimits::default()
            },
            refused: |e| matches!(e, LayerError::PathsTooLong { limit: 256, .. }),
        },
        Hostile {
            name: "too many bytes",
            tar: LayerTar::new()
                .file("big", 0o644, &[7u8; 64 * 1024])
                .finish(),
            limits: LayerLimits {
                max_unpacked_bytes: 16 * 1024,
                ..LayerLimits::default()
            },
            refused: |e| matches!(e, LayerError::TooLarge { limit: 16384 }),
        },
    ]
}

#[test]
fn hostile_layers_are_refused_by_scan_and_unpack_alike() {
    let outside = tempfile::tempdir().expect("outside dir");
    for hostile in hostile_layers(outside.path()) {
        let scanned = layer::scan(&hostile.tar[..], Compression::Plain, &hostile.limits)
            .expect_err(hostile.name);
        assert!(
            (hostile.refused)(&scanned),
            "{}: scan said {scanned}",
            hostile.name
        );

        let scratch = tempfile::tempdir().expect("scratch dir");
        let options = UnpackOptions {
            limits: hostile.limits.clone(),
            expected_diff_id: None,
        };
        let unpacked = layer::unpack(
            &hostile.tar[..],
            Compression::Plain,
            &scratch.path().join("layer"),
            &options,
        )
        .expect_err(hostile.name);
        assert!(
            (hostile.refused)(&unpacked),
            "{}: unpack said {unpacked}",
            hostile.name
        );
        assert!(
            listing(scratch.path()).is_empty(),
            "{}: neither the layer nor its partial directory is left behind",
            hostile.name
        );
        assert!(
            listing(outside.path()).is_empty(),
            "{}: wrote outside",
            hostile.name
        );
    }
}

#[test]
fn setuid_files_are_unpacked_when_allowed() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let tar = LayerTar::new().file("bin/su", 0o4755, b"su").finish();
    let options = UnpackOptions {
        limits: LayerLimits {
            allow_setuid: true,
            ..LayerLimits::default()
        },
        expected_diff_id: Some(Digest::of(&tar)),
    };
    let summary = unpack_into(scratch.path(), &tar, &options).expect("setuid allowed");
    assert!(summary.has_setuid);
    let su = fs::metadata(scratch.path().join("layer/bin/su")).expect("su");
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_not_kept() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let tar = LayerTar::new().file("a", 0o644, b"a").finish();
    let options = UnpackOptions {
        expected_diff_id: Some(Digest::of(b"something else")),
        ..UnpackOptions::default()
    };
    let refused = unpack_into(scratch.path(), &tar, &options).expect_err("wrong diff_id");
    assert!(
        matches!(refused, LayerError::DiffIdMismatch { actual, .. } if actual == Digest::of(&tar))
    );
    assert!(listing(scratch.path()).is_empty());
}

#[test]
fn an_existing_destination_is_never_overwritten() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    fs::create_dir(scratch.path().join("layer")).expect("an existing layer");
    let tar = LayerTar::new().file("a", 0o644, b"a").finish();
    let refused = unpack_into(scratch.path(), &tar, &UnpackOptions::default()).expect_err("exists");
    assert!(matches!(refused, LayerError::DestinationExists { .. }));
    assert!(listing(&scratch.path().join("layer")).is_empty());
}

#[test]
fn pax_records_name_and_own_entries() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([
            ("path", &b"pax/named"[..]),
            ("uid", b"4000000"),
            ("mtime", b"1700000000.25"),
        ])
        .expect("pax records");
    let mut header = tar::Header::new_ustar();
    header.set_path("short").expect("a short name");
    header.set_size(3);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    builder.append(&header, &b"pax"[..]).expect("the entry");
    let tar = builder.into_inner().expect("finish");

    unpack_into(scratch.path(), &tar, &UnpackOptions::default()).expect("unpacks");

    let named = scratch.path().join("layer/pax/named");
    assert_eq!(fs::read(&named).expect("the PAX path wins"), b"pax");
    let meta = fs::metadata(&named).expect("stat");
    assert_eq!(meta.mtime(), 1_700_000_000);
    if running_as_root(scratch.path()) {
        assert_eq!(meta.uid(), 4_000_000);
    }
}

#[test]
fn oversized_or_contradictory_extension_headers_are_refused() {
    // A GNU long name of 1 MiB: the tar crate would read it whole into memory.
    let huge_name = LayerTar::new()
        .raw(
            b"././@LongLink",
            EntryType::GNULongName,
            b"",
            0o644,
            &vec![b'a'; 1 << 20],
        )
        .file("x", 0o644, b"x")
        .finish();
    // A PAX size that differs from the header's: tools would frame the stream differently.
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("size", &b"1"[..])])
        .expect("pax size");
    let contradicting = LayerTar::new().file("x", 0o644, b"xx").finish();
    builder.get_mut().extend_from_slice(&contradicting);
    let contradicting = builder.into_inner().expect("finish");
    // Two names for one entry.
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("path", &b"one"[..])])
        .expect("pax path");
    let both = LayerTar::new()
        .raw(
            b"././@LongLink",
            EntryType::GNULongName,
            b"",
            0o644,
            b"two\0",
        )
        .file("x", 0o644, b"x")
        .finish();
    builder.get_mut().extend_from_slice(&both);
    let both = builder.into_inner().expect("finish");

    for (name, tar) in [
        ("huge name", huge_name),
        ("size", contradicting),
        ("two names", both),
    ] {
        let refused =
            layer::scan(&tar[..], Compression::Plain, &LayerLimits::default()).expect_err(name);
        assert!(
            matches!(&refused, LayerError::Read { source } if source.kind() == io::ErrorKind::InvalidData),
            "{name}: {refused}"
        );
        let scratch = tempfile::tempdir().expect("scratch dir");
        unpack_into(scratch.path(), &tar, &UnpackOptions::default()).expect_err(name);
        assert!(listing(scratch.path()).is_empty(), "{name}");
    }
}

#[test]
fn a_layer_cut_inside_a_file_is_refused_not_shortened() {
    let tar = LayerTar::new().file("a", 0o644, &[1u8; 4096]).finish();
    let cut = &tar[..512 + 1000];
    let refused = layer::scan(cut, Compression::Plain, &LayerLimits::default()).expect_err("cut");
    assert!(matches!(refused, LayerError::Read { .. }), "{refused}");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let refused = layer::unpack(
        cut,
        Compression::Plain,
        &scratch.path().join("layer"),
        &UnpackOptions::default(),
    )
    .expect_err("cut");
    assert!(matches!(refused, LayerError::Read { .. }), "{refused}");
    assert!(listing(scratch.path()).is_empty());
}

#[test]
fn a_truncated_layer_is_unreadable() {
    let tar = LayerTar::new().file("a", 0o644, &[1u8; 4096]).finish();
    let refused = layer::scan(
        &gzip(&tar)[..100],
        Compression::Gzip,
        &LayerLimits::default(),
    )
    .expect_err("truncated");
    assert!(matches!(refused, LayerError::Read { .. }), "{refused}");
}

/// A gzip stream of one tar entry holding `members` times 4 MiB of zeros, produced as it is
/// read (never held whole), counting the compressed bytes handed out.
struct Bomb {
    parts: Vec<Vec<u8>>,
    /// Index into `parts` for each piece of the stream: head, zeros.., tail.
    order: Vec<usize>,
    piece: usize,
    offset: usize,
    served: Rc<Cell<u64>>,
}

const BOMB_MEMBER_BYTES: u64 = 4 << 20;

impl Bomb {
    fn new(members: usize) -> (Self, Rc<Cell<u64>>, u64) {
        let mut header = tar::Header::new_gnu();
        header.set_path("zeros").expect("a plain name");
        header.set_size(BOMB_MEMBER_BYTES * members as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(EntryType::Regular);
        header.set_cksum();
        let member = |bytes: &[u8]| {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(bytes).expect("compress in memory");
            encoder.finish().expect("finish a member")
        };
        let parts = vec![
            member(header.as_bytes()),
            member(&vec![0u8; BOMB_MEMBER_BYTES as usize]),
            member(&[0u8; 1024]),
        ];
        let mut order = vec![0];
        order.extend(std::iter::repeat_n(1, members));
        order.push(2);
        let total = order.iter().map(|&i| parts[i].len() as u64).sum();
        let served = Rc::new(Cell::new(0));
        let bomb = Self {
            parts,
            order,
            piece: 0,
            offset: 0,
            served: Rc::clone(&served),
        };
        (bomb, served, total)
    }
}

impl Read for Bomb {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(&part) = self.order.get(self.piece) else {
            return Ok(0);
        };
        let bytes = &self.parts[part][self.offset..];
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.offset += n;
        if self.offset == self.parts[part].len() {
            self.piece += 1;
            self.offset = 0;
        }
        self.served.set(self.served.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn a_gzip_bomb_is_stopped_by_its_ratio_while_reading() {
    // 256 members of 4 MiB: a 1 GiB file of zeros in about 1 MiB.
    let (bomb, served, total) = Bomb::new(256);
    let refused =
        layer::scan(bomb, Compression::Gzip, &LayerLimits::default()).expect_err("a bomb");
    assert!(
        matches!(refused, LayerError::RatioExceeded { limit: 100 }),
        "{refused}"
    );
    assert!(
        served.get() < total / 8,
        "stopped after {} of {total} compressed bytes",
        served.get()
    );

    let scratch = tempfile::tempdir().expect("scratch dir");
    let (bomb, _, _) = Bomb::new(256);
    let refused = layer::unpack(
        bomb,
        Compression::Gzip,
        &scratch.path().join("layer"),
        &UnpackOptions::default(),
    )
    .expect_err("a bomb");
    assert!(
        matches!(refused, LayerError::RatioExceeded { .. }),
        "{refused}"
    );
    assert!(listing(scratch.path()).is_empty());
}

#[test]
fn decompression_never_goes_past_the_byte_limit() {
    let (bomb, served, total) = Bomb::new(256);
    let limits = LayerLimits {
        max_unpacked_bytes: 8 << 20,
        max_ratio: 1_000_000,
        ..LayerLimits::default()
    };
    let refused = layer::scan(bomb, Compression::Gzip, &limits).expect_err("over the limit");
    assert!(
        matches!(refused, LayerError::TooLarge { limit } if limit == 8 << 20),
        "{refused}"
    );
    assert!(
        served.get() < total / 8,
        "stopped after {} of {total}",
        served.get()
    );
}

#[test]
fn a_small_very_compressible_layer_is_fine() {
    // 8 MiB of zeros compresses ~1000 times, but sits under the 16 MiB floor.
    let (bomb, _, _) = Bomb::new(2);
    let summary =
        layer::scan(bomb, Compression::Gzip, &LayerLimits::default()).expect("under the floor");
    assert_eq!(summary.unpacked_bytes, 2 * BOMB_MEMBER_BYTES);
}
