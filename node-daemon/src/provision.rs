//! First-boot provisioning: the join file an operator writes onto a flashed card's boot
//! partition (see [`JoinFile`] for its format).
//!
//! The boot partition is FAT: anyone holding the card can read it, and it has no permissions.
//! The join token is a secret, so the node moves the file out: it copies it whole into
//! `data_dir/join.toml` (mode 0600, synced to disk) and only then deletes the original. A crash
//! between the two leaves both, and the next start moves the same file again. Later starts read
//! the copy, so the node keeps its name, orchestrator, location and labels.
//!
//! A file that fails validation stays where it is (the operator fixes it in place), and the
//! error names the file and the field. This module reads and writes only join files.

use crate::config::{ConfigError, JoinFile, MAX_JOIN_FILE_BYTES, read_bounded};
use crate::private_fs;
use std::fs;
use std::path::{Path, PathBuf};

/// The copy of the join file in the data dir.
pub const STORED_NAME: &str = "join.toml";

/// Why a join file could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The file is there but wrong: the operator has to fix it.
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: ConfigError },
    /// The file could not be read, copied or removed. Retried on the next poll.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where join files are looked for, and where the node keeps its copy.
#[derive(Debug, Clone)]
pub struct Provisioner {
    boot_paths: Vec<PathBuf>,
    data_dir: PathBuf,
}

impl Provisioner {
    pub fn new(boot_paths: &[PathBuf], data_dir: &Path) -> Self {
        Self {
            boot_paths: boot_paths.to_vec(),
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn stored_path(&self) -> PathBuf {
        self.data_dir.join(STORED_NAME)
    }

    /// Takes the first join file found on the boot partition: validates it, moves it into the
    /// data dir and returns where it was and what it says. `Ok(None)` if there is none.
    pub fn take(&self) -> Result<Option<(PathBuf, JoinFile)>, ProvisionError> {
        for path in &self.boot_paths {
            let bytes = match read_bounded(path, MAX_JOIN_FILE_BYTES) {
                Ok(bytes) => bytes,
                Err(ConfigError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(ConfigError::Io { source, .. }) => {
                    return Err(ProvisionError::Io {
                        action: "read",
                        path: path.clone(),
                        source,
                    });
                }
                Err(error) => {
                    return Err(ProvisionError::Invalid {
                        path: path.clone(),
                        error,
                    });
                }
            };
            let join = JoinFile::from_bytes(&bytes).map_err(|error| ProvisionError::Invalid {
                path: path.clone(),
                error,
            })?;
            self.store(&bytes)?;
            if let Err(source) = fs::remove_file(path) {
                // The copy is safe; the original will be taken (again) on the next start.
                return Err(ProvisionError::Io {
                    action: "remove the join file (its token stays readable there)",
                    path: path.clone(),
                    source,
                });
            }
            if let Some(dir) = path.parent() {
                private_fs::sync_dir(dir);
            }
            return Ok(Some((path.clone(), join)));
        }
        Ok(None)
    }

    /// The copy taken at an earlier start, if any.
    pub fn stored(&self) -> Result<Option<JoinFile>, ProvisionError> {
        let path = self.stored_path();
        let invalid = |error| ProvisionError::Invalid {
            path: path.clone(),
            error,
        };
        match read_bounded(&path, MAX_JOIN_FILE_BYTES) {
            Ok(bytes) => JoinFile::from_bytes(&bytes).map(Some).map_err(invalid),
            Err(ConfigError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(error) => Err(invalid(error)),
        }
    }

    /// Writes `bytes` to `data_dir/join.toml` atomically, readable by the daemon's user only.
    fn store(&self, bytes: &[u8]) -> Result<(), ProvisionError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| ProvisionError::Io {
                action,
                path,
                source,
            }
        };
        let path = self.stored_path();
        private_fs::write_atomic(&path, bytes).map_err(io("write", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CA: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn valid() -> String {
        format!(
            "orchestrator = \"10.0.0.1:7443\"\ntoken = \"abcdef.0123456789abcdef0123456789abcdef\"\nca_hash = \"{CA}\"\nname = \"pi-1\"\nlabels = {{ site = \"farm\" }}\n"
        )
    }

    struct Card {
        _dir: tempfile::TempDir,
        boot: PathBuf,
        data: PathBuf,
        p: Provisioner,
    }

    fn card() -> Card {
        let dir = tempfile::tempdir().expect("temp dir");
        let boot = dir.path().join("boot");
        let data = dir.path().join("data");
        fs::create_dir_all(&boot).expect("mkdir");
        let p = Provisioner::new(
            &[
                boot.join("firmware/edge-join.toml"),
                boot.join("edge-join.toml"),
            ],
            &data,
        );
        Card {
            _dir: dir,
            boot,
            data,
            p,
        }
    }

    #[test]
    fn a_valid_file_moves_into_the_data_dir() {
        let c = card();
        assert!(c.p.take().expect("nothing to take").is_none());
        assert!(c.p.stored().expect("no copy").is_none());

        let original = c.boot.join("edge-join.toml");
        fs::write(&original, valid()).expect("write");
        let (from, join) = c.p.take().expect("valid").expect("found");
        assert_eq!(from, original, "the second path, the first is absent");
        assert_eq!(join.name.as_deref(), Some("pi-1"));
        assert!(!original.exists(), "the secret left the boot partition");

        let stored = c.data.join(STORED_NAME);
        assert_eq!(fs::read_to_string(&stored).expect("copy"), valid());
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&stored), 0o600);
        assert_eq!(mode(&c.data), 0o700);
        assert_eq!(c.p.stored().expect("valid copy"), Some(join));
        assert!(c.p.take().expect("nothing left").is_none());
    }

    #[test]
    fn a_windows_saved_file_is_accepted() {
        let c = card();
        let crlf = format!("\u{feff}{}", valid().replace('\n', "\r\n"));
        fs::write(c.boot.join("edge-join.toml"), crlf).expect("write");
        let (_, join) = c.p.take().expect("BOM and CRLF are fine").expect("found");
        assert_eq!(join.labels.expect("labels")["site"], "farm");
    }

    #[test]
    fn a_bad_file_stays_and_says_which_field() {
        let c = card();
        let original = c.boot.join("edge-join.toml");
        for (text, field) in [
            (valid().replace("abcdef.", "ABCDEF."), "token"),
            (
                valid().replace("10.0.0.1:7443", "https://x"),
                "orchestrator",
            ),
            (valid().replace("sha256:00", "md5:00"), "ca_hash"),
            (valid().replace("pi-1", "Pi 1"), "name"),
            (valid().replace("name =", "nmae ="), "unknown field"),
            (
                valid() + "location = { lat = 91.0, lon = 0.0 }\n",
                "location.lat",
            ),
            ("orchestrator = ".to_string(), "TOML"),
        ] {
            fs::write(&original, &text).expect("write");
            let err = c.p.take().expect_err("invalid").to_string();
            assert!(
                err.starts_with(original.to_str().expect("utf-8")),
                "names the file: {err}"
            );
            assert!(
                err.contains(field) || (field == "TOML" && err.contains("invalid config")),
                "names {field}: {err}"
            );
            assert!(
                !err.contains("0123456789abcdef0123"),
                "never shows the secret: {err}"
            );
            assert!(original.exists(), "a bad file is left to be fixed");
        }
        assert!(!c.data.join(STORED_NAME).exists(), "nothing was stored");
    }

    #[test]
    fn hostile_files_are_refused_without_reading_them_whole() {
        let c = card();
        let original = c.boot.join("edge-join.toml");
        let huge = "#".repeat(MAX_JOIN_FILE_BYTES + 1);
        fs::write(&original, huge).expect("write");
        assert!(
            c.p.take()
                .expect_err("too large")
                .to_string()
                .contains("larger than")
        );

        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(valid().encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        fs::write(&original, utf16).expect("write");
        assert!(
            c.p.take()
                .expect_err("utf-16")
                .to_string()
                .contains("UTF-16")
        );

        fs::write(&original, [0x80, 0x81, 0xfe, 0x00]).expect("write");
        assert!(
            c.p.take()
                .expect_err("binary")
                .to_string()
                .contains("UTF-8")
        );

        fs::remove_file(&original).expect("rm");
        fs::create_dir_all(&original).expect("a directory where the file should be");
        assert!(matches!(
            c.p.take(),
            Err(ProvisionError::Io { .. } | ProvisionError::Invalid { .. })
        ));
    }
}
