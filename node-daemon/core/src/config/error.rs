//! Why a config or join file was refused.

use edge_proto::field::{FieldError, FieldPath};
use std::path::PathBuf;

/// Why the config could not be loaded. Nothing here is worth retrying unchanged: the operator
/// has to fix the file (or its permissions).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read, or is not UTF-8. Only the daemon, which reads
    /// files, makes this one.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit for its kind; refused before parsing.
    #[error("config is larger than {max_bytes} bytes; is this the right file?")]
    TooLarge { max_bytes: usize },
    /// The file is not UTF-8 text (a join file saved as UTF-16 by an editor, or a binary file).
    #[error("not UTF-8 text: {0}")]
    NotText(&'static str),
    /// The file is not valid TOML, or a field is missing, unknown or of the wrong type.
    /// The message carries the line and column.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value outside what the node accepts. The error names the field by its
    /// TOML path, e.g. `location.lat` or `labels."bad key"`.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// A [`ConfigError::Invalid`] for the field at `path`.
pub(crate) fn invalid(path: impl Into<FieldPath>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(FieldError::new(path, message))
}
