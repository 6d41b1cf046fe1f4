//! cgroups on v1, v2 and hybrid hosts, resolved per controller.
//!
//! The layout comes from `/proc/self/mountinfo` (where each hierarchy is mounted, with which controllers)
//! and `/proc/self/cgroup` (the launcher's own cgroup in each hierarchy). A container's cgroup is a child of
//! the launcher's own cgroup in every hierarchy that holds memory, cpu or pids, so it works where the
//! launcher already sits in a limited cgroup, and it is removed after the container ended. All paths derive
//! from the mount points, so the file writes are unit-tested against a fake tree in a temp directory.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::config::Limits;
use crate::error::CgroupError;
use crate::mounts::CgroupMount;

/// The controllers the launcher manages.
pub const MANAGED: &[&str] = &["memory", "cpu", "pids"];

/// cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Mount point (e.g. `/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Controllers: v1 from the mount options, v2 from `cgroup.controllers` of the launcher's cgroup.
    pub controllers: Vec<String>,
    /// v1 named hierarchy (`name=systemd`).
    pub name: Option<String>,
    /// The launcher's own cgroup directory in this hierarchy.
    pub own: PathBuf,
}

/// All hierarchies of the host, as seen by this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Reads the layout of this process.
    pub fn detect() -> Result<Layout, CgroupError> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| CgroupError::Read { path: p.into(), source: e });
        Ok(Layout::parse(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).ok()
        }))
    }

    /// Builds the layout from the texts of `mountinfo` and `/proc/self/cgroup`; `v2_controllers` reads
    /// `cgroup.controllers` of a v2 directory.
    pub fn parse(mountinfo: &str, self_cgroup: &str, v2_controllers: impl Fn(&Path) -> Option<String>) -> Layout {
        // hierarchy controllers (or "" for v2) -> own path
        let mut own: Vec<(Vec<String>, String)> = Vec::new();
        for line in self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let list = if ctrls.is_empty() { Vec::new() } else { ctrls.split(',').map(str::to_string).collect() };
            own.push((list, path.to_string()));
        }
        let mut hierarchies = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 5 || r.len() < 3 {
                continue;
            }
            let (mount_root, mount_point, fstype, opts) = (l[3], unescape(l[4]), r[0], r[2]);
            let (version, controllers, name) = match fstype {
                "cgroup" => {
                    let mut ctrls = Vec::new();
                    let mut name = None;
                    for o in opts.split(',') {
                        if let Some(n) = o.strip_prefix("name=") {
                            name = Some(n.to_string());
                        } else if !matches!(o, "rw" | "ro" | "relatime" | "noexec" | "nosuid" | "nodev")
                            && !o.contains('=')
                            && o != "xattr"
                            && o != "noprefix"
                            && o != "clone_children"
                        {
                            ctrls.push(o.to_string());
                        }
                    }
                    (Version::V1, ctrls, name)
                }
                "cgroup2" => (Version::V2, Vec::new(), None),
                _ => continue,
            };
            // The launcher's path in this hierarchy.
            let key: Vec<String> = match (&name, version) {
                (Some(n), _) => vec![format!("name={n}")],
                (None, Version::V2) => Vec::new(),
                (None, Version::V1) => controllers.clone(),
            };
            let Some((_, path)) = own.iter().find(|(c, _)| {
                let mut a = c.clone();
                let mut b = key.clone();
                a.sort();
                b.sort();
                a == b
            }) else {
                continue;
            };
            let rel = if mount_root == "/" { path.as_str() } else { path.strip_prefix(mount_root).unwrap_or(path) };
            let own_dir = PathBuf::from(&mount_point).join(rel.trim_start_matches('/'));
            let controllers = match version {
                Version::V1 => controllers,
                Version::V2 => v2_controllers(&own_dir)
                    .map(|s| s.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default(),
            };
            hierarchies.push(Hierarchy { version, mount: mount_point.into(), controllers, name, own: own_dir });
        }
        Layout { hierarchies }
    }

    /// The hierarchy that holds `controller`: a v1 hierarchy wins, else v2 if it offers the controller.
    pub fn hierarchy_of(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == controller))
            .or_else(|| {
                self.hierarchies
                    .iter()
                    .find(|h| h.version == Version::V2 && h.controllers.iter().any(|c| c == controller))
            })
    }

    /// Whether this is a pure v2 host (no v1 controller hierarchies).
    pub fn is_pure_v2(&self) -> bool {
        !self.hierarchies.iter().any(|h| h.version == Version::V1 && !h.controllers.is_empty())
            && self.hierarchies.iter().any(|h| h.version == Version::V2)
    }

    /// The cgroup mounts a container gets under /sys/fs/cgroup (its cgroup namespace makes them show its
    /// own cgroup as the root).
    pub fn container_mounts(&self) -> Vec<CgroupMount> {
        let mut out = Vec::new();
        for h in &self.hierarchies {
            let dir = if self.is_pure_v2() {
                String::new()
            } else {
                h.mount.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            };
            if out.iter().any(|m: &CgroupMount| m.dir == dir) {
                continue;
            }
            let (fstype, options) = match h.version {
                Version::V2 => ("cgroup2", String::new()),
                Version::V1 => {
                    let mut o = h.controllers.join(",");
                    if let Some(n) = &h.name {
                        o = if o.is_empty() { format!("none,name={n}") } else { format!("{o},name={n}") };
                    }
                    ("cgroup", o)
                }
            };
            out.push(CgroupMount { dir, fstype: fstype.into(), options });
        }
        out
    }
}

/// Decodes the octal escapes of mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container's cgroup: one directory per hierarchy used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct Cgroup {
    /// (version is v2, directory)
    pub dirs: Vec<(bool, PathBuf)>,
    /// Why there is no cgroup (shown by `inspect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// No limit on a host without a cgroup v2 hierarchy: the v1 `freezer` directory that `commit --pause` moves
    /// the container into when it pauses it ([`Cgroup::enter_freezer`]). Nothing joins it at start: the first
    /// v1 migration of a process waits for an RCU grace period (9-15 ms here). Removed with the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freezer_on_demand: Option<PathBuf>,
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(|e| CgroupError::Write { path, value: value.into(), source: e })
}

impl Cgroup {
    /// Creates the container's cgroup `name` under the launcher's own cgroups and applies `limits`.
    ///
    /// Rootless on v1 the kernel does not let us create cgroups: refused when limits are asked for (never
    /// silently ignored), skipped otherwise.
    pub fn create(layout: &Layout, name: &str, limits: &Limits, rootless: bool) -> Result<Cgroup, CgroupError> {
        let wanted = |c: &str| match c {
            "memory" => limits.memory.is_some(),
            "cpu" => limits.cpu_quota.is_some(),
            "pids" => limits.pids.is_some(),
            _ => false,
        };
        // Every controller with a limit must exist somewhere.
        for c in MANAGED {
            if wanted(c) && layout.hierarchy_of(c).is_none() {
                return Err(CgroupError::NoController {
                    controller: c.to_string(),
                    path: layout.hierarchies.first().map(|h| h.own.clone()).unwrap_or_default(),
                });
            }
        }
        let mut cg = Cgroup::default();
        let res = cg.create_inner(layout, name, limits, rootless, &wanted);
        if let Err(e) = res {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_inner(
        &mut self,
        layout: &Layout,
        name: &str,
        limits: &Limits,
        rootless: bool,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<(), CgroupError> {
        // Group the managed controllers by the hierarchy that holds them.
        let mut used: Vec<(&Hierarchy, Vec<&str>)> = Vec::new();
        for c in MANAGED {
            if let Some(h) = layout.hierarchy_of(c) {
                match used.iter_mut().find(|(u, _)| std::ptr::eq(*u, h)) {
                    Some((_, cs)) => cs.push(c),
                    None => used.push((h, vec![c])),
                }
            }
        }
        if rootless && used.iter().any(|(h, _)| h.version == Version::V1) {
            let limited: Vec<&str> = MANAGED.iter().copied().filter(|c| wanted(c)).collect();
            if !limited.is_empty() {
                return Err(CgroupError::RootlessV1(limited.join(", ")));
            }
            return Ok(());
        }
        for (h, controllers) in used {
            let dir = h.own.join(name);
            let v2 = h.version == Version::V2;
            if v2 {
                let enable: Vec<&str> = controllers.iter().copied().filter(|c| wanted(c)).collect();
                enable_v2(&h.own, &enable)?;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if rootless && e.kind() == ErrorKind::PermissionDenied && !limits.any() => {
                    continue;
                }
                Err(e) => {
                    return Err(CgroupError::Create { path: dir, source: e });
                }
            }
            self.dirs.push((v2, dir.clone()));
            for c in controllers {
                apply(&dir, v2, c, limits)?;
            }
        }
        // No v2 hierarchy at all (a pure v1 host): a v1 freezer directory, so that the container can be paused
        // (`commit --pause`); joined like the other v1 directories.
        if !rootless
            && !layout.hierarchies.iter().any(|h| h.version == Version::V2)
            && let Some(h) = layout
                .hierarchies
                .iter()
                .find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == "freezer"))
        {
            let dir = h.own.join(name);
            if std::fs::create_dir(&dir).is_ok() {
                self.dirs.push((false, dir));
            }
        }
        // Hybrid host: a v2 hierarchy beside the v1 controllers gets a (controller-less) directory too, like
        // runc does, so the container has its own v2 cgroup; it costs nothing: the container is cloned into it.
        // Optional: a hierarchy that refuses it (read-only, not delegated) is left alone.
        if !rootless
            && let Some(h) = layout.hierarchies.iter().find(|h| h.version == Version::V2)
            && !self.dirs.iter().any(|(v2, _)| *v2)
        {
            let dir = h.own.join(name);
            if std::fs::create_dir(&dir).is_ok() {
                self.dirs.push((true, dir));
            }
        }
        Ok(())
    }

    /// No cgroup of its own: the container stays in the launcher's, for the reason given.
    pub fn none(reason: &str) -> Cgroup {
        Cgroup { dirs: Vec::new(), skipped: Some(reason.into()), freezer_on_demand: None }
    }

    /// No limit asked for: a controller-less v2 directory only, when a v2 hierarchy takes one (root only),
    /// so that the container can be frozen (`cgroup.freeze`, for `commit --pause`). The container is cloned
    /// straight into it (`CLONE_INTO_CGROUP`): no migration, so this costs a `mkdir` and an `rmdir`. Without a
    /// v2 hierarchy (or rootless) there is no cgroup of its own at all, for `reason`; as root on a host with a
    /// v1 `freezer` hierarchy, the directory `commit --pause` would move the container into is noted
    /// ([`Cgroup::freezer_on_demand`]).
    pub fn freezable(layout: &Layout, name: &str, rootless: bool, reason: &str) -> Cgroup {
        let mut cg = Cgroup::none(reason);
        if rootless {
            return cg;
        }
        if let Some(h) = layout.hierarchies.iter().find(|h| h.version == Version::V2) {
            let dir = h.own.join(name);
            if std::fs::create_dir(&dir).is_ok() {
                cg.dirs.push((true, dir));
                cg.skipped = Some(format!("{reason}; a controller-less v2 cgroup only, to pause it"));
            }
        } else if let Some(h) =
            layout.hierarchies.iter().find(|h| h.version == Version::V1 && h.controllers.iter().any(|c| c == "freezer"))
        {
            cg.freezer_on_demand = Some(h.own.join(name));
            cg.skipped = Some(format!("{reason}; moved into a v1 freezer cgroup when `commit` pauses it"));
        }
        cg
    }

    /// For [`Cgroup::freezer_on_demand`]: creates that directory (once) and moves every process of the container
    /// (whose init is `init`: the members of its pid namespace and the init's descendants) into it, pass after
    /// pass until one finds them all inside (a process forked meanwhile starts in its parent's cgroup, so it is
    /// either moved with its parent or seen by the next pass), at most `timeout`. Then the directory is one of
    /// [`Cgroup::dirs`]: [`Cgroup::freeze`] freezes it. Nothing to do for a container that has its cgroups.
    pub fn enter_freezer(&mut self, init: i32, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let Some(dir) = self.freezer_on_demand.clone() else { return Ok(()) };
        if self.dirs.iter().any(|(_, d)| *d == dir) {
            return Ok(());
        }
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(CgroupError::Create { path: dir, source: e }),
            _ => {}
        }
        let procs = dir.join("cgroup.procs");
        let end = std::time::Instant::now() + timeout;
        loop {
            let inside = std::fs::read_to_string(&procs)
                .map_err(|e| CgroupError::Read { path: procs.clone(), source: e })?
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<std::collections::HashSet<i32>>();
            let outside: Vec<i32> = container_processes(init).into_iter().filter(|p| !inside.contains(p)).collect();
            if outside.is_empty() {
                break;
            }
            if std::time::Instant::now() >= end {
                return Err(CgroupError::Freeze { path: procs, value: format!("{outside:?} moved in") });
            }
            for pid in outside {
                match std::fs::write(&procs, pid.to_string()) {
                    // Gone meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(CgroupError::Write { path: procs, value: pid.to_string(), source: e }),
                    Ok(()) => {}
                }
            }
        }
        self.dirs.push((false, dir));
        Ok(())
    }

    /// Whether the container can be frozen: a v2 directory (`cgroup.freeze`) or a v1 `freezer` one, or one to
    /// enter first ([`Cgroup::enter_freezer`]).
    pub fn can_freeze(&self) -> bool {
        self.freezer_on_demand.is_some()
            || self
                .dirs
                .iter()
                .any(|(v2, d)| if *v2 { d.join("cgroup.freeze").exists() } else { d.join("freezer.state").exists() })
    }

    /// Freezes every process of the container (v2 `cgroup.freeze`, else the v1 freezer) and waits until the
    /// kernel says they are frozen (at most `timeout`). `Ok(false)`: no cgroup can freeze it.
    pub fn freeze(&self, timeout: std::time::Duration) -> Result<bool, CgroupError> {
        self.set_frozen(true, timeout)
    }

    /// Thaws what [`Cgroup::freeze`] froze.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false, std::time::Duration::from_secs(10)).map(|_| ())
    }

    fn set_frozen(&self, frozen: bool, timeout: std::time::Duration) -> Result<bool, CgroupError> {
        let v2 = self.dirs.iter().find(|(v2, d)| *v2 && d.join("cgroup.freeze").exists());
        let v1 = self.dirs.iter().find(|(v2, d)| !*v2 && d.join("freezer.state").exists());
        let (file, value, done): (PathBuf, &str, Box<dyn Fn() -> bool + '_>) = match (v2, v1) {
            (Some((_, d)), _) => (
                d.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                Box::new(move || {
                    std::fs::read_to_string(d.join("cgroup.events"))
                        .is_ok_and(|s| s.lines().any(|l| l == if frozen { "frozen 1" } else { "frozen 0" }))
                }),
            ),
            (None, Some((_, d))) => {
                let want = if frozen { "FROZEN" } else { "THAWED" };
                (
                    d.join("freezer.state"),
                    want,
                    Box::new(move || std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() == want)),
                )
            }
            (None, None) => return Ok(false),
        };
        write(file.clone(), value)?;
        let end = std::time::Instant::now() + timeout;
        while !done() {
            if std::time::Instant::now() >= end {
                if frozen {
                    let _ = self.thaw();
                }
                return Err(CgroupError::Freeze { path: file, value: value.into() });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(true)
    }

    /// The v2 directory, if any: the container can be cloned straight into it ([`crate::sys::clone3`]).
    pub fn v2_dir(&self) -> Option<&Path> {
        self.dirs.iter().find(|(v2, _)| *v2).map(|(_, d)| d.as_path())
    }

    /// Moves `pid` into the cgroup, except into `already` (the v2 directory it was cloned into).
    pub fn join(&self, pid: i32, already: Option<&Path>) -> Result<(), CgroupError> {
        for (_, d) in &self.dirs {
            if Some(d.as_path()) != already {
                write(d.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        for (v2, d) in &self.dirs {
            let file = if *v2 { d.join("memory.events") } else { d.join("memory.oom_control") };
            if let Ok(s) = std::fs::read_to_string(file)
                && s.lines().any(|l| {
                    l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0)
                })
            {
                return true;
            }
        }
        false
    }

    /// Removes the directories (retrying while the kernel still tears the last tasks down: after 50 µs, doubling
    /// up to 10 ms, for 2 s at most).
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        let on_demand = self.freezer_on_demand.iter().filter(|f| !self.dirs.iter().any(|(_, d)| d == *f));
        for d in self.dirs.iter().map(|(_, d)| d).chain(on_demand) {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut pause = std::time::Duration::from_micros(50);
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < end => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        first_err.get_or_insert(CgroupError::Remove { path: d.clone(), source: e });
                        break;
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The processes of the container whose init is `init`, as seen from here: the members of its pid namespace
/// (those that joined it with `setns` too) and the init's descendants (those of nested pid namespaces too).
fn container_processes(init: i32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let ns_of = |pid: i32| std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| (m.dev(), m.ino()));
    let Some(ns) = ns_of(init) else { return Vec::new() };
    let mut all: Vec<(i32, i32)> = Vec::new();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid ...`: comm may hold anything, so parse after its last ')'.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()) else {
            continue;
        };
        all.push((pid, ppid));
        if pid == init || ns_of(pid) == Some(ns) {
            out.push(pid);
        }
    }
    // Descendants of the init, breadth first.
    let mut i = 0;
    let mut tree = vec![init];
    while i < tree.len() {
        let parent = tree[i];
        for (pid, ppid) in &all {
            if *ppid == parent && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    for p in tree {
        if !out.contains(&p) && all.iter().any(|(pid, _)| *pid == p) {
            out.push(p);
        }
    }
    out
}

/// Enables `controllers` for the children of `parent` (v2 `cgroup.subtree_control`).
fn enable_v2(parent: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let path = parent.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<String> =
        controllers.iter().filter(|c| !current.split_whitespace().any(|x| x == **c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing.join(" ");
    std::fs::write(&path, &value).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::NotDelegated { controllers: value.clone(), path: parent.to_path_buf() }
        } else {
            CgroupError::Write { path: path.clone(), value: value.clone(), source: e }
        }
    })
}

/// Writes the limit of `controller` into `dir`.
fn apply(dir: &Path, v2: bool, controller: &str, limits: &Limits) -> Result<(), CgroupError> {
    match (controller, v2) {
        ("memory", false) => {
            if let Some(m) = limits.memory {
                write(dir.join("memory.limit_in_bytes"), &m.to_string())?;
                // docker's default: as much swap as memory.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir.join("memory.memsw.limit_in_bytes"), &(m.saturating_mul(2)).to_string())?;
                }
            }
        }
        ("memory", true) => {
            if let Some(m) = limits.memory {
                write(dir.join("memory.max"), &m.to_string())?;
                if dir.join("memory.swap.max").exists() {
                    write(dir.join("memory.swap.max"), &m.to_string())?;
                }
            }
        }
        ("cpu", false) => {
            if let Some(q) = limits.cpu_quota {
                write(dir.join("cpu.cfs_period_us"), &Limits::CPU_PERIOD.to_string())?;
                write(dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
        }
        ("cpu", true) => {
            if let Some(q) = limits.cpu_quota {
                write(dir.join("cpu.max"), &format!("{q} {}", Limits::CPU_PERIOD))?;
            }
        }
        ("pids", _) => {
            if let Some(p) = limits.pids {
                write(dir.join("pids.max"), &p.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 30 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/a\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_layout() {
        let l = Layout::parse(HYBRID_MOUNTINFO, HYBRID_SELF, |_| Some("hugetlb".into()));
        assert_eq!(l.hierarchies.len(), 5);
        let mem = l.hierarchy_of("memory").unwrap();
        assert_eq!(mem.version, Version::V1);
        assert_eq!(mem.own, Path::new("/sys/fs/cgroup/memory/jobs/a"));
        assert_eq!(l.hierarchy_of("pids").unwrap().own, Path::new("/sys/fs/cgroup/pids"));
        assert!(l.hierarchy_of("hugetlb").unwrap().version == Version::V2);
        assert!(!l.is_pure_v2());
        let m = l.container_mounts();
        assert_eq!(m.len(), 5);
        assert!(m.contains(&CgroupMount {
            dir: "systemd".into(),
            fstype: "cgroup".into(),
            options: "none,name=systemd".into()
        }));
        assert!(m.contains(&CgroupMount { dir: "unified".into(), fstype: "cgroup2".into(), options: String::new() }));
    }

    fn fake_v2(root: &Path) -> Layout {
        let own = root.join("user.slice/me");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), "cpu\n").unwrap();
        let mountinfo = format!("40 1 0:30 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        Layout::parse(&mountinfo, "0::/user.slice/me\n", |p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())
    }

    #[test]
    fn v2_writes_limits_into_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let l = fake_v2(tmp.path());
        assert!(l.is_pure_v2());
        assert_eq!(
            l.container_mounts(),
            vec![CgroupMount { dir: String::new(), fstype: "cgroup2".into(), options: String::new() }]
        );
        let limits = Limits { memory: Some(64 << 20), cpu_quota: Some(50_000), pids: Some(20) };
        let cg = Cgroup::create(&l, "launcher-x", &limits, false).unwrap();
        let own = tmp.path().join("user.slice/me");
        let dir = own.join("launcher-x");
        assert_eq!(cg.dirs, vec![(true, dir.clone())]);
        // cpu was already enabled: only the missing controllers are added.
        assert_eq!(std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(), "+memory +pids");
        assert_eq!(std::fs::read_to_string(dir.join("memory.max")).unwrap(), "67108864");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "20");
        cg.join(1234, None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "1234");
        assert!(!cg.oom_killed());
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(cg.oom_killed());
    }

    #[test]
    fn v2_without_limits_enables_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = fake_v2(tmp.path());
        let cg = Cgroup::create(&l, "c", &Limits::default(), false).unwrap();
        assert_eq!(cg.dirs.len(), 1);
        assert_eq!(std::fs::read_to_string(tmp.path().join("user.slice/me/cgroup.subtree_control")).unwrap(), "cpu\n");
    }

    #[test]
    fn v2_missing_controller_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("x");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), "cpu\n").unwrap();
        let l =
            Layout::parse(&format!("1 1 0:1 / {} rw - cgroup2 cgroup2 rw\n", tmp.path().display()), "0::/x\n", |p| {
                std::fs::read_to_string(p.join("cgroup.controllers")).ok()
            });
        let err = Cgroup::create(&l, "c", &Limits { pids: Some(5), ..Default::default() }, false).unwrap_err();
        assert!(matches!(err, CgroupError::NoController { ref controller, .. } if controller == "pids"), "{err}");
    }

    #[test]
    fn v1_writes_limits_per_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let mut mi = String::new();
        for (i, c) in ["cpu", "memory", "pids"].iter().enumerate() {
            std::fs::create_dir_all(r.join(c).join("jobs")).unwrap();
            mi += &format!("{i} 1 0:{i} / {}/{c} rw - cgroup cgroup rw,{c}\n", r.display());
        }
        let l = Layout::parse(&mi, "3:cpu:/jobs\n2:memory:/jobs\n1:pids:/jobs\n", |_| None);
        let limits = Limits { memory: Some(8 << 20), cpu_quota: Some(150_000), pids: Some(7) };
        let cg = Cgroup::create(&l, "c1", &limits, false).unwrap();
        assert_eq!(cg.dirs.len(), 3);
        assert_eq!(std::fs::read_to_string(r.join("memory/jobs/c1/memory.limit_in_bytes")).unwrap(), "8388608");
        assert_eq!(std::fs::read_to_string(r.join("cpu/jobs/c1/cpu.cfs_quota_us")).unwrap(), "150000");
        assert_eq!(std::fs::read_to_string(r.join("cpu/jobs/c1/cpu.cfs_period_us")).unwrap(), "100000");
        assert_eq!(std::fs::read_to_string(r.join("pids/jobs/c1/pids.max")).unwrap(), "7");
        std::fs::write(r.join("memory/jobs/c1/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
            .unwrap();
        assert!(cg.oom_killed());
        // Rootless on v1: limits are refused loudly, no limits means no cgroup.
        let err = Cgroup::create(&l, "c2", &limits, true).unwrap_err();
        assert!(matches!(err, CgroupError::RootlessV1(_)));
        assert_eq!(Cgroup::create(&l, "c3", &Limits::default(), true).unwrap().dirs.len(), 0);
    }

    #[test]
    fn hybrid_gets_a_v2_directory_to_clone_into() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        std::fs::create_dir_all(r.join("memory/jobs")).unwrap();
        std::fs::create_dir_all(r.join("unified")).unwrap();
        let mi = format!(
            "1 1 0:1 / {0}/memory rw - cgroup cgroup rw,memory\n2 1 0:2 / {0}/unified rw - cgroup2 cgroup2 rw\n",
            r.display()
        );
        let l = Layout::parse(&mi, "2:memory:/jobs\n0::/\n", |_| Some("hugetlb".into()));
        let cg = Cgroup::create(&l, "c", &Limits { memory: Some(8 << 20), ..Default::default() }, false).unwrap();
        assert_eq!(cg.dirs, vec![(false, r.join("memory/jobs/c")), (true, r.join("unified/c"))]);
        assert_eq!(cg.v2_dir(), Some(r.join("unified/c").as_path()));
        // Cloned into the v2 directory: only the v1 one is joined by a write.
        std::fs::write(r.join("unified/c/cgroup.procs"), "").unwrap();
        cg.join(42, cg.v2_dir()).unwrap();
        assert_eq!(std::fs::read_to_string(r.join("memory/jobs/c/cgroup.procs")).unwrap(), "42");
        assert_eq!(std::fs::read_to_string(r.join("unified/c/cgroup.procs")).unwrap(), "");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn freezer_files() {
        let tmp = tempfile::tempdir().unwrap();
        let t = std::time::Duration::from_secs(1);
        // v1: freezer.state reads back what was written (on a real tree, once the tasks are frozen).
        let v1 = tmp.path().join("freezer/launcher-x");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("freezer.state"), "THAWED\n").unwrap();
        let cg = Cgroup { dirs: vec![(false, tmp.path().join("memory-x")), (false, v1.clone())], ..Default::default() };
        assert!(cg.can_freeze());
        assert!(cg.freeze(t).unwrap());
        assert_eq!(std::fs::read_to_string(v1.join("freezer.state")).unwrap(), "FROZEN");
        cg.thaw().unwrap();
        assert_eq!(std::fs::read_to_string(v1.join("freezer.state")).unwrap(), "THAWED");
        // v2 wins: cgroup.freeze, then cgroup.events says when it is done.
        let v2 = tmp.path().join("unified/launcher-x");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(v2.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        let cg = Cgroup { dirs: vec![(false, v1.clone()), (true, v2.clone())], ..Default::default() };
        assert!(cg.freeze(t).unwrap());
        assert_eq!(std::fs::read_to_string(v2.join("cgroup.freeze")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(v1.join("freezer.state")).unwrap(), "THAWED", "v1 left alone");
        // The kernel never says frozen: an error, and thawed again.
        std::fs::write(v2.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(matches!(cg.freeze(std::time::Duration::from_millis(50)), Err(CgroupError::Freeze { .. })));
        assert_eq!(std::fs::read_to_string(v2.join("cgroup.freeze")).unwrap(), "0");
        // No freezer: nothing to do.
        let none = Cgroup::none("x");
        assert!(!none.can_freeze());
        assert!(!none.freeze(t).unwrap());
    }
}
