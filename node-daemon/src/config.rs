//! The node's config and join files, read from disk. What they mean and every check of their
//! content is [`node_core::config`]'s, re-exported here; this module only reads the bytes,
//! bounded, and hands them over.
//!
//! It reads the one file it is given and writes nothing.

use std::io::Read;
use std::path::Path;

pub use node_core::config::*;

/// Reading a config from a file: the daemon's half of [`Config`] and [`ConfigFile`].
pub trait FromFile: Sized {
    /// Reads and validates the file at `path`. Refuses files over [`MAX_CONFIG_BYTES`]
    /// without reading them whole.
    fn load(path: &Path) -> Result<Self, ConfigError>;
}

impl FromFile for ConfigFile {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let contents = read_bounded(path, MAX_CONFIG_BYTES)?;
        let contents = String::from_utf8(contents).map_err(|_| ConfigError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?;
        Self::from_toml(&contents)
    }
}

impl FromFile for Config {
    /// Reads and validates a complete config file: one that names the node and the
    /// orchestrator itself.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        ConfigFile::load(path)?.complete(None)
    }
}

/// Reads at most `max` bytes of `path`, refusing a larger file; from its metadata when
/// possible, so a wrong path (a log, a disk image) is never read whole.
pub(crate) fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > max as u64 {
        return Err(ConfigError::TooLarge { max_bytes: max });
    }
    // The size from metadata can be wrong (a pipe, a file under /proc, a file still being
    // written), so the read itself is bounded too: one byte over the limit is enough to know.
    let mut contents = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut contents)
        .map_err(io_err)?;
    if contents.len() > max {
        return Err(ConfigError::TooLarge { max_bytes: max });
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    const EXAMPLE: &str = r#"
version = 1
name = "shop-berlin-1"
data_dir = "/var/lib/edge-node"
labels = { site = "berlin" }
location = { lat = 52.52, lon = 13.405 }
[orchestrator]
address = "orchestrator.example.net:7443"
[join]
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("edge-node-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_from_file() {
        let dir = Scratch::new("load");
        let path = dir.0.join("node.toml");
        std::fs::write(&path, EXAMPLE).expect("write config");
        let c = Config::load(&path).expect("the example loads");
        assert_eq!(c, Config::from_toml(EXAMPLE).expect("valid"));
    }

    #[test]
    fn load_refuses_oversized_file() {
        let dir = Scratch::new("large");
        let path = dir.0.join("node.toml");
        std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES + 1]).expect("write config");
        let err = Config::load(&path).expect_err("too large");
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("65536"), "{err}");
    }

    #[test]
    fn load_missing_or_binary_file_is_io_error_with_path() {
        let dir = Scratch::new("missing");
        let path = dir.0.join("absent.toml");
        let err = Config::load(&path).expect_err("missing file");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.toml"), "{err}");

        let path = dir.0.join("binary.toml");
        std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).expect("write config");
        let err = Config::load(&path).expect_err("not UTF-8");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");

        let err = Config::load(&dir.0).expect_err("a directory");
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    }

    #[test]
    fn fixtures_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let good = Config::load(&dir.join("node-pi.toml")).expect("fixture is valid");
        assert_eq!(good.name(), "farm-pi-07");
        assert_eq!(good.status_interval(), Duration::from_secs(30));
        assert!(good.join().is_none(), "an enrolled node needs no [join]");
        let err = Config::load(&dir.join("node-bad-location.toml")).expect_err("invalid");
        assert_eq!(err.to_string(), "location.lat: 91 is out of range -90..=90");
    }
}
