//! layerfs: a copy-on-write union filesystem (FUSE) over packed layers.
//!
//! See `ARCHITECTURE.md` at the top of the repository for the map.

pub mod mapping;
