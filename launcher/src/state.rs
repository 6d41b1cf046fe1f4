//! Container state on disk: `<root>/containers/<id>/` holds `state.json` (written atomically by rename),
//! the log, the attach socket, the exit file and the files bound over /etc; `<root>/names/<name>` is a
//! symlink to the id, created with `symlink(2)` so that two containers cannot claim one name.
//!
//! The root is `/run/layerfs` for root, `$XDG_RUNTIME_DIR/layerfs` otherwise (`/tmp/layerfs-<uid>` when that
//! is unset).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::config::ContainerConfig;
use crate::error::{Error, Result};
use crate::rootfs::{DaemonEnd, LayerfsDirs};

/// Lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub name: String,
    pub status: Status,
    /// RFC 3339 timestamps.
    pub created: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The container init's pid on the host.
    pub pid: Option<i32>,
    /// The monitor's pid and start time (clock ticks since boot), for a pidfd-free liveness check.
    pub monitor_pid: Option<i32>,
    pub monitor_start: Option<u64>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    /// Why the container failed to start.
    pub error: Option<String>,
    pub cgroup: Cgroup,
    /// The bridge attachment (`--net bridge`).
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// A layerfs root: its directories (the upper is kept until `rm`) and its daemon.
    #[serde(default)]
    pub layerfs: Option<LayerfsState>,
    pub config: ContainerConfig,
}

/// The runtime side of a layerfs root (the image and its layers are in `config.rootfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerfsState {
    #[serde(flatten)]
    pub dirs: LayerfsDirs,
    /// The daemon's pid and start time (clock ticks since boot), while it may run.
    pub daemon_pid: Option<i32>,
    pub daemon_start: Option<u64>,
    /// How the daemon ended.
    #[serde(default)]
    pub daemon_end: Option<DaemonEnd>,
}

impl LayerfsState {
    /// Whether the daemon recorded here still runs.
    pub fn daemon_alive(&self) -> bool {
        match (self.daemon_pid, self.daemon_start) {
            (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }
}

impl State {
    /// A new state for `config`.
    pub fn new(config: ContainerConfig) -> State {
        State {
            id: config.id.clone(),
            name: config.name.clone(),
            status: Status::Created,
            created: now_rfc3339(),
            started_at: None,
            finished_at: None,
            pid: None,
            monitor_pid: None,
            monitor_start: None,
            exit_code: None,
            oom_killed: false,
            error: None,
            cgroup: Cgroup::default(),
            network: None,
            layerfs: None,
            config,
        }
    }

    /// Whether the monitor recorded here still runs.
    pub fn monitor_alive(&self) -> bool {
        match (self.monitor_pid, self.monitor_start) {
            (Some(pid), Some(start)) => process_start_time(pid) == Some(start),
            _ => false,
        }
    }

    /// The status, corrected when the monitor died without recording the exit (crash, reboot).
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Running | Status::Created if !self.monitor_alive() => Status::Exited,
            s => s,
        }
    }
}

/// What is left of a `--rm` container for a while after its removal ([`TOMBSTONE_TTL`]), so that a `wait` that
/// comes late still gets the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: String,
    pub name: String,
    pub exit_code: i32,
    pub oom_killed: bool,
}

/// How long tombstones are kept.
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The current time as RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// Start time of a live process in clock ticks since boot (field 22 of `/proc/PID/stat`); `None` when there is
/// no such process or it is dead (a zombie waiting for its parent counts as dead).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The state root for this user.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/layerfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("layerfs"),
        _ => PathBuf::from(format!("/tmp/layerfs-{}", nix::unistd::geteuid())),
    }
}

/// A new random 64-hex-digit id.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A docker-like random name (`adjective_name`).
pub fn random_name(id: &str) -> String {
    const ADJ: [&str; 16] = [
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud",
        "quirky", "sharp", "tender", "vivid",
    ];
    const NAMES: [&str; 16] = [
        "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace", "meitner", "noether", "pascal",
        "ritchie", "shannon", "thompson", "turing", "wozniak",
    ];
    let b = u8::from_str_radix(&id[..2], 16).unwrap_or(0);
    let c = u8::from_str_radix(&id[2..4], 16).unwrap_or(0);
    format!("{}_{}", ADJ[(b % 16) as usize], NAMES[(c % 16) as usize])
}

/// Checks a user-given name (docker's rule).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

/// Writes `data` to `path` atomically (temporary file in the same directory, fsync-free rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
    }
    std::fs::rename(&tmp, path)
}

/// The state root.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    /// Opens (creating) the state root; a relative root is made absolute (the monitor and the layerfs daemon
    /// must not depend on the caller's working directory).
    pub fn open(root: &Path) -> Result<Store> {
        let root = std::path::absolute(root).map_err(|e| Error::StateDir { path: root.to_path_buf(), source: e })?;
        for d in [root.clone(), root.join("containers"), root.join("names")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::StateDir { path: d.clone(), source: e })?;
        }
        Ok(Store { root })
    }

    /// A container's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Creates the directory of a new container and claims its name.
    pub fn create(&self, id: &str, name: &str) -> Result<PathBuf> {
        let link = self.root.join("names").join(name);
        if let Err(e) = std::os::unix::fs::symlink(id, &link) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                let owner = std::fs::read_link(&link).map(|p| p.display().to_string()).unwrap_or_default();
                // A name left by a container whose directory is gone is free again.
                if !owner.is_empty() && !self.dir(&owner).exists() {
                    let _ = std::fs::remove_file(&link);
                    return self.create(id, name);
                }
                return Err(Error::NameInUse { name: name.into(), id: owner });
            }
            return Err(Error::StateDir { path: link, source: e });
        }
        let dir = self.dir(id);
        std::fs::create_dir(&dir).map_err(|e| Error::StateDir { path: dir.clone(), source: e })?;
        Ok(dir)
    }

    /// Saves a state atomically.
    pub fn save(&self, st: &State) -> Result<()> {
        let path = self.dir(&st.id).join("state.json");
        let data = serde_json::to_vec_pretty(st).expect("state serializes");
        write_atomic(&path, &data).map_err(|e| Error::StateDir { path, source: e })
    }

    /// Loads a container's state.
    pub fn load(&self, id: &str) -> Result<State> {
        let path = self.dir(id).join("state.json");
        let data = std::fs::read(&path).map_err(|e| Error::BadState { id: id.into(), reason: e.to_string() })?;
        serde_json::from_slice(&data).map_err(|e| Error::BadState { id: id.into(), reason: e.to_string() })
    }

    /// Ids of all containers.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("containers"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_string())).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Resolves a full id, a name, or a unique id prefix.
    pub fn resolve(&self, reference: &str) -> Result<String> {
        if reference.is_empty() {
            return Err(Error::NoSuchContainer(reference.into()));
        }
        if reference.len() == 64 && self.dir(reference).is_dir() {
            return Ok(reference.into());
        }
        if let Ok(target) = std::fs::read_link(self.root.join("names").join(reference)) {
            let id = target.display().to_string();
            if self.dir(&id).is_dir() {
                return Ok(id);
            }
        }
        let matches: Vec<String> = self.ids().into_iter().filter(|i| i.starts_with(reference)).collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(Error::NoSuchContainer(reference.into())),
            _ => Err(Error::Ambiguous(reference.into())),
        }
    }

    /// The exit code written by the monitor, if the container exited.
    pub fn exit_code(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir(id).join("exit")).ok()?.trim().parse().ok()
    }

    fn tombstones(&self) -> PathBuf {
        self.root.join("exited")
    }

    /// Leaves a tombstone for a container about to be removed, and drops the tombstones older than
    /// [`TOMBSTONE_TTL`].
    pub fn bury(&self, st: &State) -> Result<()> {
        let dir = self.tombstones();
        std::fs::create_dir_all(&dir).map_err(|e| Error::StateDir { path: dir.clone(), source: e })?;
        // Prune at most once a minute (a marker's mtime says when): this runs before `run --rm` returns.
        let marker = dir.join(".pruned");
        let now = std::time::SystemTime::now();
        let due = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .map_or(true, |t| now.duration_since(t).unwrap_or_default() > std::time::Duration::from_secs(60));
        if due && std::fs::write(&marker, b"").is_ok() {
            self.prune_trash(now);
        }
        if due && let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > TOMBSTONE_TTL);
                if old && e.file_name() != ".pruned" {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let t = Tombstone {
            id: st.id.clone(),
            name: st.name.clone(),
            exit_code: st.exit_code.unwrap_or(-1),
            oom_killed: st.oom_killed,
        };
        let path = dir.join(&st.id);
        write_atomic(&path, &serde_json::to_vec(&t).expect("tombstone serializes"))
            .map_err(|e| Error::StateDir { path, source: e })
    }

    /// The tombstone of a removed container: by full id, name or unique id prefix.
    pub fn tombstone(&self, reference: &str) -> Option<Tombstone> {
        if reference.is_empty() {
            return None;
        }
        let all: Vec<Tombstone> = std::fs::read_dir(self.tombstones())
            .ok()?
            .flatten()
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        let mut found: Vec<&Tombstone> = all.iter().filter(|t| t.id == reference).collect();
        if found.is_empty() {
            found = all.iter().filter(|t| t.name == reference).collect();
        }
        if found.is_empty() {
            found = all.iter().filter(|t| t.id.starts_with(reference)).collect();
        }
        match found.as_slice() {
            [t] => Some((*t).clone()),
            _ => None,
        }
    }

    /// Moves a container's directory out of the way, into `trash/`, and frees its name: for every command the
    /// container is gone at once; [`Store::delete`] deletes the files afterwards (a `run --rm` reports the exit
    /// in between). Returns where the directory went (`None`: it was gone already).
    pub fn retire(&self, id: &str, name: &str) -> Result<Option<PathBuf>> {
        let link = self.root.join("names").join(name);
        let trash = self.root.join("trash");
        std::fs::create_dir_all(&trash).map_err(|e| Error::StateDir { path: trash.clone(), source: e })?;
        let to = trash.join(id);
        let res = match std::fs::rename(self.dir(id), &to) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::StateDir { path: self.dir(id), source: e }),
        };
        if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(id)) {
            let _ = std::fs::remove_file(&link);
        }
        res
    }

    /// Deletes a retired container directory (see [`Store::remove_as`] for `userns`).
    pub fn delete(&self, dir: &Path, userns: Option<&crate::idmap::UserNs>) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && userns.is_some_and(|ns| ns.is_full()) => {
                userns.expect("checked").remove_tree(dir)
            }
            Err(e) => Err(Error::StateDir { path: dir.to_path_buf(), source: e }),
        }
    }

    /// Deletes what is left in `trash/` for longer than a minute (its deleter died).
    fn prune_trash(&self, now: std::time::SystemTime) {
        let Ok(entries) = std::fs::read_dir(self.root.join("trash")) else { return };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > std::time::Duration::from_secs(60));
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes a container's directory and frees its name.
    pub fn remove(&self, id: &str, name: &str) -> Result<()> {
        self.remove_as(id, name, None)
    }

    /// Removes a container's directory and frees its name; rootless with subordinate ids (`userns`), what the
    /// caller may not delete (files the container made as its other users, in its upper) is deleted from inside
    /// a user namespace with the container's maps.
    pub fn remove_as(&self, id: &str, name: &str, userns: Option<&crate::idmap::UserNs>) -> Result<()> {
        let link = self.root.join("names").join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(id)) {
            let _ = std::fs::remove_file(&link);
        }
        self.delete(&self.dir(id), userns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let a = new_id();
        let last = if a.ends_with('0') { '1' } else { '0' };
        let b = format!("{}{last}", &a[..63]);
        assert_eq!(a.len(), 64);
        s.create(&a, "web").unwrap();
        assert!(matches!(s.create(&b, "web"), Err(Error::NameInUse { id, .. }) if id == a));
        s.create(&b, "db").unwrap();
        assert_eq!(s.resolve("web").unwrap(), a);
        assert_eq!(s.resolve(&b).unwrap(), b);
        assert!(matches!(s.resolve(&a[..10]), Err(Error::Ambiguous(_))));
        assert!(matches!(s.resolve("nope"), Err(Error::NoSuchContainer(_))));
        s.remove(&a, "web").unwrap();
        assert!(s.resolve("web").is_err());
        // The name is free again.
        s.create(&a, "web").unwrap();
        // A tombstone outlives the removal.
        let mut st = State::new(
            crate::client::build_config(&crate::client::RunOptions { rootfs: Some("/".into()), ..Default::default() })
                .unwrap(),
        );
        st.exit_code = Some(7);
        s.bury(&st).unwrap();
        assert_eq!(s.tombstone(&st.id).unwrap().exit_code, 7);
        assert_eq!(s.tombstone(&st.name).unwrap().exit_code, 7);
        assert_eq!(s.tombstone(&st.id[..12]).unwrap().id, st.id);
        assert!(s.tombstone("nope").is_none());
        assert!(validate_name("ok_name-1.2").is_ok());
        assert!(validate_name("-bad").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(random_name(&a).contains('_'));
    }

    #[test]
    fn liveness() {
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        assert!(start > 0);
        assert_eq!(process_start_time(i32::MAX), None);
    }
}
