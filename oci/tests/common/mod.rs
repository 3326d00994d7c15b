//! What the tests share: the crate's own builders, and a look at directories.
#![allow(dead_code)]

pub use edge_oci::build::*;
use std::collections::BTreeSet;
use std::path::Path;

/// File names in a directory, sorted.
pub fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list a test directory")
        .map(|e| {
            e.expect("read a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Whether this process runs as root (then unpacking keeps the layer's owners).
pub fn running_as_root(scratch: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = scratch.join(".owner-probe");
    std::fs::create_dir(&probe).expect("create a probe directory");
    let root = std::fs::metadata(&probe).expect("stat the probe").uid() == 0;
    std::fs::remove_dir(&probe).expect("remove the probe");
    root
}
