//! What the supervisor keeps on disk, under `DATA_DIR/workloads/NAME/`:
//! - `spec.json`: the spec the node was asked to run, so a restarted daemon runs it again;
//! - `instance.json`: the pid and start time of the running instance, so a restarted daemon
//!   can find (and end) it even without cgroups;
//! - `logs/`: see `logs`.
//!
//! Directories are 0700 and files 0600 (see [`crate::private_fs`]): a spec's `env` is where a
//! workload's secrets end up.
//!
//! Files are written to a temporary name, fsynced and renamed, and the directory fsynced: a
//! crash or a full disk leaves the old file or the new one, never half of one. Files are
//! read with a size bound. This module never starts or signals a process.

use super::spec::{WorkloadSpec, validate_name};
use crate::private_fs;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const SPEC: &str = "spec.json";
const INSTANCE: &str = "instance.json";
/// No file here is legitimately larger; anything bigger is damage.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a stored file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused: permissions, a full disk, a missing mount.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file exists but does not hold what it should (damaged, edited by hand, or the
    /// directory name and the spec's name disagree). It is left in place for a person.
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Where a running instance's process is, to find it after a daemon crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Also the process group id: every instance leads its own group.
    pub pid: i32,
    /// From `/proc/PID/stat`: tells our process from a later one that reused the pid.
    pub start_ticks: u64,
}

/// The `workloads/` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("workloads");
        private_fs::own_dir(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn workload_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn logs_dir(&self, name: &str) -> PathBuf {
        self.workload_dir(name).join("logs")
    }

    /// Names of the stored workloads (directories with a valid name), sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let entries = fs::read_dir(&self.root).map_err(|source| StoreError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn save_spec(&self, spec: &WorkloadSpec) -> Result<(), StoreError> {
        self.write_json(&spec.name, SPEC, spec)
    }

    /// The stored spec of `name`, `None` if there is none.
    pub fn load_spec(&self, name: &str) -> Result<Option<WorkloadSpec>, StoreError> {
        let path = self.workload_dir(name).join(SPEC);
        let Some(spec) = read_json::<WorkloadSpec>(&path)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        if spec.name != name {
            return Err(corrupt(format!("holds the spec of {:?}", spec.name)));
        }
        spec.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(spec))
    }

    pub fn save_record(&self, name: &str, record: &InstanceRecord) -> Result<(), StoreError> {
        self.write_json(name, INSTANCE, record)
    }

    pub fn load_record(&self, name: &str) -> Result<Option<InstanceRecord>, StoreError> {
        read_json(&self.workload_dir(name).join(INSTANCE))
    }

    pub fn clear_record(&self, name: &str) -> Result<(), StoreError> {
        let path = self.workload_dir(name).join(INSTANCE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Forgets `name`: its spec, record and logs.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.workload_dir(name);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn write_json<T: Serialize>(
        &self,
        name: &str,
        file: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let dir = self.workload_dir(name);
        let path = dir.join(file);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| io(io::Error::other(e)))?;
        private_fs::write_atomic(&path, &bytes).map_err(io)
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let spec = WorkloadSpec::new("web", "2", "/bin/true");
        store.save_spec(&spec).expect("save");
        assert_eq!(store.load_spec("web").expect("load"), Some(spec));
        assert_eq!(store.load_spec("other").expect("load"), None);
        assert_eq!(store.names().expect("names"), ["web"]);
        let files: Vec<_> = fs::read_dir(store.workload_dir("web"))
            .expect("read")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(files, ["spec.json"]);
    }

    #[test]
    fn damaged_specs_are_reported_not_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        fs::create_dir_all(store.workload_dir("a")).expect("mkdir");
        fs::write(store.workload_dir("a").join(SPEC), b"{\"name\":").expect("write");
        assert!(matches!(
            store.load_spec("a"),
            Err(StoreError::Corrupt { .. })
        ));

        store
            .save_spec(&WorkloadSpec::new("b", "1", "/bin/true"))
            .expect("save");
        fs::create_dir_all(store.workload_dir("c")).expect("mkdir");
        fs::copy(
            store.workload_dir("b").join(SPEC),
            store.workload_dir("c").join(SPEC),
        )
        .expect("copy");
        assert!(matches!(
            store.load_spec("c"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn records_come_and_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let r = InstanceRecord {
            pid: 42,
            start_ticks: 7,
        };
        store.save_record("w", &r).expect("save");
        assert_eq!(store.load_record("w").expect("load"), Some(r));
        store.clear_record("w").expect("clear");
        store.clear_record("w").expect("clear twice");
        assert_eq!(store.load_record("w").expect("load"), None);
    }
}
