//! Reading the local store's layout (written by `layertool`): where images, layers and objects
//! are, and image names. layerfs mounts images by name; `tools` writes the store with these same
//! rules.
//!
//! ```text
//! ROOT/images/<NAME:TAG, '%'->%25, '/'->%2F>.json   {"layers": ["sha256:HEX", ...] lowest first, ...}
//! ROOT/layers/<HEX>.lpk
//! ROOT/objects/<HEX[..2]>/<HEX[2..]>
//! ```

use std::path::{Path, PathBuf};

/// Why an image could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An invalid image name.
    #[error("invalid image name {0:?}: {1}")]
    BadName(String, &'static str),
    /// No manifest for that name.
    #[error("no such image: {0} (in {1})")]
    NoSuchImage(String, PathBuf),
    /// A manifest that cannot be read or parsed.
    #[error("image manifest {0}: {1}")]
    BadManifest(PathBuf, String),
}

/// The default store root: `$LAYERFS_ROOT`, else `/var/lib/layerfs` for root, else
/// `$XDG_DATA_HOME/layerfs` (or `~/.local/share/layerfs`).
pub fn default_root() -> PathBuf {
    if let Some(r) = std::env::var_os("LAYERFS_ROOT").filter(|r| !r.is_empty()) {
        return r.into();
    }
    if crate::sys::geteuid() == 0 {
        return "/var/lib/layerfs".into();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Path::new(&x).join("layerfs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    Path::new(&home).join(".local/share/layerfs")
}

/// `NAME[:TAG]`, with the tag defaulting to `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository name (may contain `/` and a `host:port/` prefix).
    pub name: String,
    /// Tag.
    pub tag: String,
}

impl ImageRef {
    /// Parses `NAME[:TAG]` (a `:` before the last `/` belongs to a registry host).
    pub fn parse(s: &str) -> Result<ImageRef, StoreError> {
        let bad = |why: &'static str| StoreError::BadName(s.to_string(), why);
        if s.is_empty() {
            return Err(bad("empty name"));
        }
        let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() || tag.is_empty() {
            return Err(bad("empty name or tag"));
        }
        if tag.len() > 128 || !tag.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c)) {
            return Err(bad("a tag is up to 128 of [A-Za-z0-9_.-]"));
        }
        if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/:".contains(&c))
            || name.starts_with(['/', '.', '-'])
            || name.contains("//")
            || name.contains("..")
        {
            return Err(bad("a name is lowercase [a-z0-9._-] components separated by /"));
        }
        Ok(ImageRef { name: name.to_string(), tag: tag.to_string() })
    }

    /// The manifest file's stem: `NAME:TAG` with `%` and `/` escaped.
    pub fn file_stem(&self) -> String {
        format!("{}:{}", self.name, self.tag).replace('%', "%25").replace('/', "%2F")
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// Path of the manifest of image `r` in the store at `root`.
pub fn image_path(root: &Path, r: &ImageRef) -> PathBuf {
    root.join("images").join(format!("{}.json", r.file_stem()))
}

/// Path of layer `hex` (the SHA-256 of the file, lowercase hex).
pub fn layer_path(root: &Path, hex: &str) -> PathBuf {
    root.join("layers").join(format!("{hex}.lpk"))
}

/// The store's objects directory.
pub fn objects_dir(root: &Path) -> PathBuf {
    root.join("objects")
}

/// The layer files of image `name`, topmost first (the order of `lowerdir=`).
pub fn image_layers(root: &Path, name: &str) -> Result<Vec<PathBuf>, StoreError> {
    let r = ImageRef::parse(name)?;
    let p = image_path(root, &r);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NoSuchImage(r.to_string(), root.to_path_buf()));
        }
        Err(e) => return Err(StoreError::BadManifest(p, e.to_string())),
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadManifest(p.clone(), e.to_string()))?;
    let layers = v["layers"].as_array().ok_or_else(|| StoreError::BadManifest(p.clone(), "no layers".into()))?;
    let mut out = Vec::with_capacity(layers.len());
    for l in layers.iter().rev() {
        let hex = l
            .as_str()
            .and_then(|s| s.strip_prefix("sha256:"))
            .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| StoreError::BadManifest(p.clone(), format!("bad layer digest {l}")))?;
        out.push(layer_path(root, hex));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let r = ImageRef::parse("debian").unwrap();
        assert_eq!((r.name.as_str(), r.tag.as_str()), ("debian", "latest"));
        let r = ImageRef::parse("localhost:5000/lib/deb:12.1").unwrap();
        assert_eq!((r.name.as_str(), r.tag.as_str()), ("localhost:5000/lib/deb", "12.1"));
        assert_eq!(r.file_stem(), "localhost:5000%2Flib%2Fdeb:12.1");
        for bad in ["", "Debian", "a:", ":t", "../x", "a//b", "/abs", "a:b c"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
