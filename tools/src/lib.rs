//! layertool's library: importing images into packed layers, the local store, inspection.
//!
//! - [`convert`]: one layer tarball into one packed layer (streaming, tar + OCI semantics).
//! - [`import`]: images (root filesystem tarballs, OCI layouts, `docker save` archives) into
//!   the [`store`].
//! - [`merged`]: the read-only merged view of an image's layers.
//! - [`export`]: root filesystem tars, OCI archives and flattened layers out of the store.
//! - [`commit`]: an overlay upper directory (layerfs or kernel overlayfs) as a new layer/image.
//! - [`diff`]: the changes an upper directory makes, as `docker diff` lists them.
//! - [`upper`]: reading an upper directory safely (directory fds, never following symlinks).
//! - [`show`]: the listings `layertool ls`/`inspect` print.

#![forbid(unsafe_code)]

pub mod commit;
pub mod convert;
pub mod diff;
pub mod error;
pub mod export;
pub mod image;
pub mod import;
pub mod merged;
pub mod show;
pub mod store;
pub mod upper;

use std::path::Path;

use format_spec::{FormatError, Layer};
use layerfs::mapping::Mapping;

pub use error::{CommitError, ImportError, StoreError, UpperError};

/// A packed layer mapped from a file.
pub type MappedLayer = Layer<Mapping>;

/// Why a layer file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LayerOpenError {
    /// The file could not be mapped.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid layer.
    #[error("{0}")]
    Format(#[from] FormatError),
}

/// Maps and opens the packed layer at `path` (O(1) checks; see [`Layer::open`]).
pub fn open_layer(path: &Path) -> Result<MappedLayer, LayerOpenError> {
    let map = Mapping::open(path)?;
    Ok(Layer::open(map)?)
}

/// Opens every layer of `image` from `store`, lowest first (as the manifest lists them).
pub fn open_image_layers(store: &store::Store, image: &image::Image) -> Result<Vec<MappedLayer>, StoreError> {
    image
        .layers
        .iter()
        .map(|l| {
            let d = store::parse_digest(l).ok_or_else(|| StoreError::BadDigest(l.clone()))?;
            open_layer(&store.layer_path(&d)).map_err(|e| StoreError::Layer(l.clone(), e))
        })
        .collect()
}
