//! Image manifests in the store: ordered layers plus the runtime configuration.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// An image: its layers (lowest first) and its configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `NAME:TAG`.
    pub name: String,
    /// Packed layers, `sha256:HEX` of each `.lpk` file, lowest first.
    pub layers: Vec<String>,
    /// The OCI diff_ids (SHA-256 of each uncompressed layer tar), lowest first, when known.
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// Runtime configuration.
    #[serde(default)]
    pub config: ImageConfig,
    /// Creation time from the source (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Where it came from (a path), or what made it (`commit`).
    #[serde(default)]
    pub source: String,
    /// Commit message or comment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The parts of an OCI image config a container runtime uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: String,
    /// `USER[:GROUP]`.
    #[serde(default)]
    pub user: String,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// Reads the `config` object of an OCI/Docker image config JSON.
    pub fn from_oci(v: &serde_json::Value) -> ImageConfig {
        let c = &v["config"];
        let strings = |k: &str| -> Vec<String> {
            c[k].as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
        };
        let labels = c["Labels"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
            .unwrap_or_default();
        ImageConfig {
            env: strings("Env"),
            cmd: strings("Cmd"),
            entrypoint: strings("Entrypoint"),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
            labels,
            stop_signal: c["StopSignal"].as_str().map(String::from),
        }
    }

    /// The configuration of an image imported from a bare root filesystem tarball.
    pub fn rootfs_default() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            ..ImageConfig::default()
        }
    }
}

impl Image {
    /// The image id: SHA-256 over its layers and configuration (not its name).
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for l in &self.layers {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.update(serde_json::to_vec(&self.config).unwrap_or_default());
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// The id's hex digits.
    pub fn id_hex(&self) -> String {
        self.id().trim_start_matches("sha256:").to_string()
    }
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

    /// The manifest file's stem: `NAME:TAG` with `/` and `%` escaped.
    pub fn file_stem(&self) -> String {
        format!("{}:{}", self.name, self.tag).replace('%', "%25").replace('/', "%2F")
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
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
