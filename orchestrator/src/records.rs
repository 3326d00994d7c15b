//! The JSON records the image and model stores keep beside the artifacts: read whole, and
//! written so that a crash leaves the old record or the new one, never half of one.

use std::io;
use std::path::Path;

use serde::Serialize;

/// The record at `path`, or `None` if there is none; a record that does not parse is
/// `InvalidData` naming the file.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> io::Result<Option<T>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as `dir/name`: a temporary file, fsync, rename, directory fsync.
pub(crate) async fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let dir = dir.to_owned();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!(".{name}.{:016x}", fastrand::u64(..)));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(&name))?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(io::Error::other)?
}

/// Every record in `dir` named `<64 hex>.json` (a digest's record; other files, such as
/// temporary ones, are not records), in no particular order; none if `dir` is not there.
pub(crate) async fn list_json<T: serde::de::DeserializeOwned>(dir: &Path) -> io::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let is_record = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(edge_proto::digest::from_hex)
            .is_some();
        if is_record && let Some(record) = read_json(&entry.path()).await? {
            out.push(record);
        }
    }
    Ok(out)
}
