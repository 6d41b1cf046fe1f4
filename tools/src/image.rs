//! Image manifests in the store: ordered layers plus the runtime configuration.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

pub use layerfs::store::ImageRef;
