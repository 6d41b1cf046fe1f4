//! layerfs.
