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

/// A `--change` that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("--change {change:?}: {reason}")]
pub struct ConfigError {
    /// The change as given.
    pub change: String,
    /// Why it is refused.
    pub reason: String,
}

impl ImageConfig {
    /// Applies Dockerfile-style changes, in order, as `docker commit --change` does: `CMD`,
    /// `ENTRYPOINT` (JSON exec form `["a","b"]`, or shell form run by `/bin/sh -c`), `ENV K=V ...`
    /// (or `ENV K V`), `WORKDIR` (relative to the previous one), `USER`, `LABEL K=V ...`.
    /// Setting `ENTRYPOINT` clears a `CMD` inherited from the base (as in a Dockerfile), not one
    /// set by an earlier change.
    pub fn apply_changes(&mut self, changes: &[String]) -> Result<(), ConfigError> {
        let mut cmd_set = false;
        for change in changes {
            let err = |reason: &str| ConfigError { change: change.clone(), reason: reason.to_string() };
            let line = change.trim();
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word.to_ascii_uppercase().as_str() {
                "CMD" => {
                    self.cmd = command_form(rest).map_err(|r| err(&r))?;
                    cmd_set = true;
                }
                "ENTRYPOINT" => {
                    self.entrypoint = command_form(rest).map_err(|r| err(&r))?;
                    if !cmd_set {
                        self.cmd.clear();
                    }
                }
                "ENV" => {
                    for (k, v) in pairs(rest, true).map_err(|r| err(&r))? {
                        let entry = format!("{k}={v}");
                        match self.env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |x| x.0) == k) {
                            Some(e) => *e = entry,
                            None => self.env.push(entry),
                        }
                    }
                }
                "LABEL" => {
                    for (k, v) in pairs(rest, false).map_err(|r| err(&r))? {
                        self.labels.insert(k, v);
                    }
                }
                "WORKDIR" => {
                    let w = words(rest).map_err(|r| err(&r))?;
                    let [dir] = w.as_slice() else { return Err(err("WORKDIR takes one path")) };
                    let joined = if dir.starts_with('/') {
                        dir.clone()
                    } else {
                        format!("{}/{dir}", if self.working_dir.is_empty() { "" } else { &self.working_dir })
                    };
                    self.working_dir = normalize_dir(&joined);
                }
                "USER" => {
                    let w = words(rest).map_err(|r| err(&r))?;
                    let [user] = w.as_slice() else { return Err(err("USER takes one USER[:GROUP]")) };
                    self.user = user.clone();
                }
                "" => return Err(err("empty change")),
                other => {
                    return Err(err(&format!(
                        "unsupported instruction {other} (CMD, ENTRYPOINT, ENV, LABEL, USER, WORKDIR)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `["a", "b"]` (exec form) or a shell command line (`/bin/sh -c LINE`).
fn command_form(rest: &str) -> Result<Vec<String>, String> {
    if rest.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(rest)
    {
        return Ok(v);
    }
    if rest.is_empty() {
        return Err("needs a command".into());
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

/// Shell-like words: whitespace-separated, with "double quotes" (where `\` escapes `"`, `\`,
/// `$` and a newline), 'single quotes' (literal) and `\` escapes outside quotes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("trailing backslash".into()),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '\n')) => cur.push(n),
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="v 2" ...`; with `legacy`, also `K the rest of the line` (Docker's old ENV form).
fn pairs(rest: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or_default();
    if legacy && !first.is_empty() && !first.contains('=') {
        let value = rest[first.len()..].trim();
        if value.is_empty() {
            return Err(format!("{first} has no value"));
        }
        return Ok(vec![(first.to_string(), value.to_string())]);
    }
    let ws = words(rest)?;
    if ws.is_empty() {
        return Err("needs KEY=VALUE".into());
    }
    ws.into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{w:?} is not KEY=VALUE")),
        })
        .collect()
}

/// A directory path with `.`, `..` and repeated slashes resolved (never above `/`).
fn normalize_dir(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(base: ImageConfig, changes: &[&str]) -> Result<ImageConfig, ConfigError> {
        let mut c = base;
        c.apply_changes(&changes.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        Ok(c)
    }

    #[test]
    fn docker_style_changes() {
        let base = ImageConfig::rootfs_default();
        let c = apply(
            base.clone(),
            &[
                r#"CMD ["python3", "-m", "http.server"]"#,
                "ENV A=1 B=\"two words\" PATH=/opt/bin:/usr/bin",
                "env LEGACY some value here",
                "WORKDIR /srv",
                "WORKDIR app/../web",
                "USER www-data:www-data",
                r#"LABEL org.example.v=1.0 "with space"='x y'"#,
            ],
        )
        .unwrap();
        assert_eq!(c.cmd, ["python3", "-m", "http.server"]);
        assert!(c.env.contains(&"A=1".to_string()));
        assert!(c.env.contains(&"B=two words".to_string()));
        assert!(c.env.contains(&"LEGACY=some value here".to_string()));
        assert_eq!(c.env.iter().filter(|e| e.starts_with("PATH=")).count(), 1, "ENV replaces");
        assert!(c.env.contains(&"PATH=/opt/bin:/usr/bin".to_string()));
        assert_eq!(c.working_dir, "/srv/web");
        assert_eq!(c.user, "www-data:www-data");
        assert_eq!(c.labels["org.example.v"], "1.0");
        assert_eq!(c.labels["with space"], "x y");

        // Shell form, and ENTRYPOINT clearing an inherited CMD but not one set just before.
        let c = apply(base.clone(), &["ENTRYPOINT nginx -g 'daemon off;'"]).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh", "-c", "nginx -g 'daemon off;'"]);
        assert!(c.cmd.is_empty());
        let c = apply(base.clone(), &["CMD [\"-v\"]", "ENTRYPOINT [\"ls\"]"]).unwrap();
        assert_eq!((c.entrypoint, c.cmd), (vec!["ls".to_string()], vec!["-v".to_string()]));

        for bad in ["EXPOSE 80", "ENV", "LABEL novalue", "USER a b", "CMD", "ENV A=\"open"] {
            assert!(apply(base.clone(), &[bad]).is_err(), "{bad} accepted");
        }
    }
}
