//! Typed errors of the tools library.

use std::path::PathBuf;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No store at that root.
    #[error("no layer store at {0} (import an image first)")]
    NoStore(PathBuf),
    /// No image of that name.
    #[error("no such image: {0}")]
    NoSuchImage(String),
    /// An invalid image name (or another layout error).
    #[error(transparent)]
    Name(#[from] layerfs::store::StoreError),
    /// A malformed digest string.
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    /// A manifest that is not valid JSON of the expected shape.
    #[error("{0}: invalid JSON: {1}")]
    Json(String, String),
    /// A layer that cannot be opened.
    #[error("layer {0}: {1}")]
    Layer(String, #[source] crate::LayerOpenError),
    /// A layer whose bytes are bad.
    #[error("layer {0}: {1}")]
    Format(String, #[source] format_spec::FormatError),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

/// Errors of converting and importing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The tar stream is corrupt or truncated.
    #[error("bad tar archive after {entries} entries{}: {source}", .last.as_ref().map(|p| format!(" (last: {p})")).unwrap_or_default())]
    Tar {
        /// Entries read successfully.
        entries: u64,
        /// The last good entry's path.
        last: Option<String>,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An entry the importer refuses (hostile or impossible).
    #[error("entry {path:?}: {reason}")]
    BadEntry {
        /// The entry's path as the archive gives it.
        path: String,
        /// Why.
        reason: String,
    },
    /// The source is not an image or tarball this tool knows.
    #[error("{0}")]
    BadSource(String),
    /// Writing the layer failed.
    #[error(transparent)]
    Write(#[from] format_spec::WriteError),
    /// A store error.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImportError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImportError::Io { context: context.into(), source }
    }
}

/// Errors of reading an upper directory (commit, diff).
#[derive(Debug, thiserror::Error)]
pub enum UpperError {
    /// An I/O error, with what was being read.
    #[error("{context}: {source}")]
    Io {
        /// What was being read (an upper path such as `/etc/passwd`).
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An entry changed type or vanished while it was read (a running container): pause it.
    #[error("{0}: changed while it was being read (pause the container and retry)")]
    Changed(String),
    /// Directories nested deeper than [`crate::upper::MAX_DEPTH`].
    #[error("{0}: directories nested more than {max} deep", max = crate::upper::MAX_DEPTH)]
    TooDeep(String),
    /// A marker that needs the base image to be understood, and no base was given.
    #[error("{path}: {what} needs the base image (--base)")]
    NeedsBase {
        /// The upper path.
        path: String,
        /// The marker (redirect, metadata-only copy).
        what: &'static str,
    },
    /// A metadata-only copy whose data is in no base layer.
    #[error("{0}: metadata-only copy, and no base layer has its data (wrong --base?)")]
    MetacopyWithoutData(String),
    /// A base layer whose bytes are bad.
    #[error("base layer: {0}")]
    Format(#[from] format_spec::FormatError),
}

/// Errors of committing an upper directory.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading the upper or the base failed.
    #[error(transparent)]
    Upper(#[from] UpperError),
    /// Writing the layer failed.
    #[error(transparent)]
    Write(#[from] format_spec::WriteError),
    /// A store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad `--change`.
    #[error(transparent)]
    Config(#[from] crate::image::ConfigError),
    /// Reading a base layer's data failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// An I/O error on the output, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl CommitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CommitError::Io { context: context.into(), source }
    }
}
