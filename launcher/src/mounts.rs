//! The container's mount sequence, written against the [`Syscalls`] seam so that the exact sequence is
//! unit-tested without root.
//!
//! Order (runc's): make `/` rslave, bind the rootfs onto itself, mount /proc, /dev (+ nodes, links, pts,
//! shm, mqueue), /sys (+ cgroup), bind /etc/{hostname,hosts,resolv.conf}; `pivot_root(".", ".")` and detach
//! the old root; then mask and write-protect the OCI default paths and, with `--read-only`, remount `/`.
//! Mount targets inside the rootfs are resolved with symlinks scoped to the rootfs ([`resolve_in_root`]), so
//! a hostile image cannot redirect a mount onto a host path.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::error::SetupError;
use crate::sys::{FileKind, Syscalls};

/// OCI default masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// OCI default read-only paths.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The device nodes of /dev: name, major, minor.
pub const DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Symlinks in /dev: link name, target.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// A cgroup hierarchy to mount under /sys/fs/cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMount {
    /// Directory name under /sys/fs/cgroup (empty: /sys/fs/cgroup itself, for a pure v2 host).
    pub dir: String,
    /// `cgroup` or `cgroup2`.
    pub fstype: String,
    /// Mount data (`memory`, `cpu,cpuacct`, `none,name=systemd`; empty for cgroup2).
    pub options: String,
}

/// How /dev nodes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevMode {
    /// `mknod` (needs CAP_MKNOD in the initial user namespace).
    Mknod,
    /// Bind-mount the host's nodes (rootless).
    Bind,
}

/// Everything the mount sequence needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// The root filesystem, as seen before pivot_root.
    pub rootfs: PathBuf,
    pub dev_mode: DevMode,
    /// Pass `gid=5` to devpts (only when gid 5 exists, i.e. not in a single-id user namespace).
    pub devpts_gid: bool,
    /// Mount a new sysfs (own network namespace or real root); otherwise bind the host's /sys read-only.
    pub new_sysfs: bool,
    pub cgroups: Vec<CgroupMount>,
    /// Files bound over `/etc/<name>`: (name, source on the host).
    pub etc_files: Vec<(String, PathBuf)>,
    pub read_only: bool,
    /// `-v` and `--tmpfs`, mounted last (parents before children), so they win over the defaults.
    #[serde(default)]
    pub user_mounts: Vec<UserMount>,
}

/// A mount asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UserMount {
    /// `-v HOST:CTR[:ro|rw]`: a recursive bind of a host path; `read_only` is recursive too.
    Bind { source: PathBuf, destination: PathBuf, read_only: bool },
    /// `--tmpfs CTR[:OPTS]`: mount flags words (`ro`, `noexec`...) and tmpfs data (`size=`, `mode=`...).
    Tmpfs { destination: PathBuf, options: Vec<String> },
}

impl UserMount {
    /// The absolute path inside the container.
    pub fn destination(&self) -> &Path {
        match self {
            UserMount::Bind { destination, .. } | UserMount::Tmpfs { destination, .. } => destination,
        }
    }

    /// Parses `-v HOST:CTR[:ro|rw]`. HOST must exist (absolute, or relative to the current directory when it
    /// starts with `.`); named volumes are not supported.
    pub fn parse_volume(spec: &str, cwd: &Path) -> Result<UserMount, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(format!("invalid volume specification {spec:?}: expected HOST:CTR[:ro|rw]")),
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(format!("invalid volume specification {spec:?}: invalid mode {m:?} (use ro or rw)")),
        };
        if host.is_empty() || !(host.starts_with('/') || host.starts_with('.')) {
            return Err(format!(
                "invalid volume specification {spec:?}: named volumes are not supported, HOST must be a path"
            ));
        }
        // `components()` drops `.` components: `./x` becomes `CWD/x`.
        let source: PathBuf = cwd.join(host).components().collect();
        if let Err(e) = std::fs::metadata(&source) {
            return Err(format!(
                "invalid volume specification {spec:?}: bind source path does not exist: {}: {e}",
                source.display()
            ));
        }
        Ok(UserMount::Bind { source, destination: destination(spec, ctr)?, read_only })
    }

    /// Parses `--tmpfs CTR[:OPTS]` (docker's syntax: `/run:rw,size=64m,mode=1777`).
    pub fn parse_tmpfs(spec: &str) -> Result<UserMount, String> {
        let (ctr, opts) = spec.split_once(':').unwrap_or((spec, ""));
        let options: Vec<String> = opts.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect();
        tmpfs_options(&options).map_err(|o| format!("invalid --tmpfs {spec:?}: unknown option {o:?}"))?;
        Ok(UserMount::Tmpfs { destination: destination(spec, ctr)?, options })
    }
}

fn destination(spec: &str, ctr: &str) -> Result<PathBuf, String> {
    let p = Path::new(ctr);
    if !p.is_absolute() {
        return Err(format!("invalid mount {spec:?}: the container path {ctr:?} must be absolute"));
    }
    if components(p).is_empty() {
        return Err(format!("invalid mount {spec:?}: the container path can't be '/'"));
    }
    Ok(p.to_path_buf())
}

/// Mount flags and data of `--tmpfs` options (docker's defaults: nosuid, nodev, noexec); `Err(option)` for an
/// unknown option.
pub fn tmpfs_options(options: &[String]) -> Result<(MsFlags, String), String> {
    let mut flags = NOSUID_NODEV_NOEXEC;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "rw" => flags.remove(MsFlags::MS_RDONLY),
            "ro" => flags.insert(MsFlags::MS_RDONLY),
            "exec" => flags.remove(MsFlags::MS_NOEXEC),
            "noexec" => flags.insert(MsFlags::MS_NOEXEC),
            "suid" => flags.remove(MsFlags::MS_NOSUID),
            "nosuid" => flags.insert(MsFlags::MS_NOSUID),
            "dev" => flags.remove(MsFlags::MS_NODEV),
            "nodev" => flags.insert(MsFlags::MS_NODEV),
            o if ["size=", "mode=", "uid=", "gid=", "nr_inodes=", "nr_blocks="].iter().any(|p| o.starts_with(p)) => {
                data.push(o.to_string())
            }
            o => return Err(o.to_string()),
        }
    }
    Ok((flags, data.join(",")))
}

/// Resolves `path` inside `root` the way the container will see it: symlinks are followed with `root` as
/// `/`, and `..` never climbs above `root` (securejoin's semantics). Missing components are kept as they are.
pub fn resolve_in_root(sys: &mut dyn Syscalls, root: &Path, path: &Path) -> Result<PathBuf, Errno> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(&resolved).join(&c);
        if sys.kind(&candidate) == Some(FileKind::Symlink) {
            links += 1;
            if links > 40 {
                return Err(Errno::ELOOP);
            }
            let target = sys.readlink(&candidate)?;
            if target.is_absolute() {
                resolved.clear();
            }
            for (i, t) in components(&target).into_iter().enumerate() {
                pending.insert(i, t);
            }
        } else {
            resolved.push(c);
        }
    }
    Ok(root.join(resolved))
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Resolves and creates a directory mount point inside the rootfs.
fn dir_target(sys: &mut dyn Syscalls, root: &Path, rel: &str) -> Result<PathBuf, SetupError> {
    let t = resolve_in_root(sys, root, Path::new(rel))
        .map_err(|e| SetupError::Resolve { path: rel.into(), errno: e.into() })?;
    if sys.kind(&t) != Some(FileKind::Dir) {
        sys.mkdir_all(&t, 0o755).map_err(|e| SetupError::MountPoint { path: t.clone(), errno: e.into() })?;
    }
    Ok(t)
}

/// Resolves and creates a file mount point inside the rootfs.
fn file_target(sys: &mut dyn Syscalls, root: &Path, rel: &str) -> Result<PathBuf, SetupError> {
    let t = resolve_in_root(sys, root, Path::new(rel))
        .map_err(|e| SetupError::Resolve { path: rel.into(), errno: e.into() })?;
    if sys.kind(&t).is_none() {
        if let Some(parent) = t.parent()
            && sys.kind(parent) != Some(FileKind::Dir)
        {
            sys.mkdir_all(parent, 0o755)
                .map_err(|e| SetupError::MountPoint { path: parent.to_path_buf(), errno: e.into() })?;
        }
        sys.touch(&t).map_err(|e| SetupError::MountPoint { path: t.clone(), errno: e.into() })?;
    }
    Ok(t)
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// Everything before `pivot_root`: runs in the container's new mount namespace.
pub fn prepare_root(sys: &mut dyn Syscalls, plan: &MountPlan) -> Result<(), SetupError> {
    let root = plan.rootfs.as_path();
    sys.mount(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_SLAVE, None)
        .map_err(|e| SetupError::RootPropagation(e.into()))?;
    sys.mount(Some(root), root, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .map_err(|e| SetupError::BindRootfs { path: root.to_path_buf(), errno: e.into() })?;

    let proc = dir_target(sys, root, "proc")?;
    sys.mount(Some(Path::new("proc")), &proc, Some("proc"), NOSUID_NODEV_NOEXEC, None)
        .map_err(|e| SetupError::MountProc(e.into()))?;

    mount_dev(sys, plan)?;

    let sysdir = dir_target(sys, root, "sys")?;
    let ro = MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
    if plan.new_sysfs {
        sys.mount(Some(Path::new("sysfs")), &sysdir, Some("sysfs"), ro, None)
            .map_err(|e| SetupError::MountSys(e.into()))?;
    } else {
        bind_readonly(sys, Path::new("/sys"), &sysdir).map_err(|e| SetupError::MountSys(e.into()))?;
    }

    for (name, src) in &plan.etc_files {
        let target = file_target(sys, root, &format!("etc/{name}"))?;
        sys.mount(Some(src), &target, None, MsFlags::MS_BIND, None)
            .map_err(|e| SetupError::BindFile { path: target.clone(), errno: e.into() })?;
    }
    mount_user(sys, plan)
}

/// `-v` and `--tmpfs`, parents before children. Each target is resolved inside the root (a symlink in the
/// image cannot send a mount to the host) and created when missing: a directory, or an empty file for a
/// file source.
fn mount_user(sys: &mut dyn Syscalls, plan: &MountPlan) -> Result<(), SetupError> {
    let root = plan.rootfs.as_path();
    let mut order: Vec<&UserMount> = plan.user_mounts.iter().collect();
    order.sort_by_key(|m| components(m.destination()).len());
    for m in order {
        let dest = m.destination();
        let rel = dest.to_string_lossy();
        let rel = rel.trim_start_matches('/');
        match m {
            UserMount::Bind { source, read_only, .. } => {
                let fail = |e: Errno| SetupError::Volume { path: dest.to_path_buf(), errno: e.into() };
                let target = match sys.kind_follow(source) {
                    Some(FileKind::Dir) => dir_target(sys, root, rel)?,
                    Some(_) => file_target(sys, root, rel)?,
                    None => return Err(fail(Errno::ENOENT)),
                };
                sys.mount(Some(source), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).map_err(fail)?;
                if *read_only {
                    sys.make_readonly_recursive(&target)
                        .map_err(|e| SetupError::VolumeReadOnly { path: dest.to_path_buf(), errno: e.into() })?;
                }
            }
            UserMount::Tmpfs { options, .. } => {
                let (flags, data) = tmpfs_options(options)
                    .map_err(|_| SetupError::Tmpfs { path: dest.to_path_buf(), errno: Errno::EINVAL.into() })?;
                let target = dir_target(sys, root, rel)?;
                let data = (!data.is_empty()).then_some(data.as_str());
                sys.mount(Some(Path::new("tmpfs")), &target, Some("tmpfs"), flags, data)
                    .map_err(|e| SetupError::Tmpfs { path: dest.to_path_buf(), errno: e.into() })?;
            }
        }
    }
    Ok(())
}

/// Mounts the cgroup hierarchies at `cg` (`/sys/fs/cgroup`, after pivot_root): a read-only tmpfs with one
/// read-only mount per hierarchy, or the v2 hierarchy itself on a pure v2 host. Runs after the container
/// joined its cgroup and unshared its cgroup namespace, so each hierarchy shows the container's cgroup as
/// its root.
pub fn mount_cgroups(sys: &mut dyn Syscalls, plan: &MountPlan, cg: &Path) -> Result<(), SetupError> {
    if plan.cgroups.is_empty() {
        return Ok(());
    }
    let ro = MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC;
    let fail = |e: Errno| SetupError::MountCgroup { path: cg.to_path_buf(), errno: e.into() };
    let v2_only = plan.cgroups.len() == 1 && plan.cgroups[0].dir.is_empty();
    if !v2_only {
        sys.mount(Some(Path::new("tmpfs")), cg, Some("tmpfs"), NOSUID_NODEV_NOEXEC, Some("mode=755")).map_err(fail)?;
    }
    for m in &plan.cgroups {
        let target = if m.dir.is_empty() { cg.to_path_buf() } else { cg.join(&m.dir) };
        let fail = |e: Errno| SetupError::MountCgroup { path: target.clone(), errno: e.into() };
        if !m.dir.is_empty() {
            sys.mkdir_all(&target, 0o755).map_err(fail)?;
        }
        let data = (!m.options.is_empty()).then_some(m.options.as_str());
        sys.mount(Some(Path::new("cgroup")), &target, Some(&m.fstype), ro, data).map_err(fail)?;
    }
    if !v2_only {
        sys.mount(None, cg, None, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC, Some("mode=755"))
            .map_err(fail)?;
    }
    Ok(())
}

fn mount_dev(sys: &mut dyn Syscalls, plan: &MountPlan) -> Result<(), SetupError> {
    let dev = dir_target(sys, &plan.rootfs, "dev")?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| SetupError::MountDev(e.into()))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        let res = match plan.dev_mode {
            DevMode::Mknod => sys.mknod_char(&path, 0o666, *major, *minor),
            DevMode::Bind => sys
                .touch(&path)
                .and_then(|()| sys.mount(Some(&Path::new("/dev").join(name)), &path, None, MsFlags::MS_BIND, None)),
        };
        res.map_err(|e| SetupError::Device { path: path.clone(), errno: e.into() })?;
    }
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        sys.symlink(Path::new(target), &path)
            .map_err(|e| SetupError::DevSymlink { path: path.clone(), errno: e.into() })?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755).map_err(|e| SetupError::MountDevpts(e.into()))?;
    let data = if plan.devpts_gid {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=0620"
    };
    sys.mount(Some(Path::new("devpts")), &pts, Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some(data))
        .map_err(|e| SetupError::MountDevpts(e.into()))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm, 0o1777).map_err(|e| SetupError::MountShm(e.into()))?;
    sys.mount(Some(Path::new("shm")), &shm, Some("tmpfs"), NOSUID_NODEV_NOEXEC, Some("mode=1777,size=65536k"))
        .map_err(|e| SetupError::MountShm(e.into()))?;
    let mq = dev.join("mqueue");
    sys.mkdir_all(&mq, 0o755).map_err(|e| SetupError::MountMqueue(e.into()))?;
    sys.mount(Some(Path::new("mqueue")), &mq, Some("mqueue"), NOSUID_NODEV_NOEXEC, None)
        .map_err(|e| SetupError::MountMqueue(e.into()))?;
    Ok(())
}

/// Bind `src` onto `target` and make the bind read-only, keeping the flags the kernel locks (nosuid, nodev,
/// noexec...) so the remount is allowed in a user namespace.
fn bind_readonly(sys: &mut dyn Syscalls, src: &Path, target: &Path) -> nix::Result<()> {
    sys.mount(Some(src), target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    let flags = sys.mount_flags(target)?;
    sys.mount(None, target, None, flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)
}

/// `pivot_root` into the rootfs and detach the old root.
pub fn pivot(sys: &mut dyn Syscalls, plan: &MountPlan) -> Result<(), SetupError> {
    sys.chdir(&plan.rootfs).map_err(|e| SetupError::PivotRoot(e.into()))?;
    sys.pivot_root(Path::new("."), Path::new(".")).map_err(|e| SetupError::PivotRoot(e.into()))?;
    // The old root is now stacked on top of the new one at ".": make sure its unmount cannot propagate,
    // then detach it.
    sys.mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(|e| SetupError::DetachOldRoot(e.into()))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH).map_err(|e| SetupError::DetachOldRoot(e.into()))?;
    sys.chdir(Path::new("/")).map_err(|e| SetupError::DetachOldRoot(e.into()))?;
    Ok(())
}

/// After `pivot_root`: masked and read-only paths, read-only root.
pub fn finish_root(sys: &mut dyn Syscalls, plan: &MountPlan) -> Result<(), SetupError> {
    for p in MASKED_PATHS {
        let path = Path::new(p);
        let res = match sys.kind(path) {
            None => continue,
            Some(FileKind::Dir) => {
                sys.mount(Some(Path::new("tmpfs")), path, Some("tmpfs"), MsFlags::MS_RDONLY | NOSUID_NODEV_NOEXEC, None)
            }
            Some(_) => sys.mount(Some(Path::new("/dev/null")), path, None, MsFlags::MS_BIND, None),
        };
        res.map_err(|e| SetupError::MaskPath { path: path.into(), errno: e.into() })?;
    }
    for p in READONLY_PATHS {
        let path = Path::new(p);
        if sys.kind(path).is_none() {
            continue;
        }
        bind_readonly(sys, path, path).map_err(|e| SetupError::ReadonlyPath { path: path.into(), errno: e.into() })?;
    }
    if plan.read_only {
        let root = Path::new("/");
        let flags = sys.mount_flags(root).map_err(|e| SetupError::ReadonlyRoot(e.into()))?;
        sys.mount(None, root, None, flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)
            .map_err(|e| SetupError::ReadonlyRoot(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSys};

    fn plan() -> MountPlan {
        MountPlan {
            rootfs: "/r".into(),
            dev_mode: DevMode::Mknod,
            devpts_gid: true,
            new_sysfs: true,
            cgroups: vec![
                CgroupMount { dir: "memory".into(), fstype: "cgroup".into(), options: "memory".into() },
                CgroupMount { dir: "unified".into(), fstype: "cgroup2".into(), options: String::new() },
            ],
            etc_files: vec![("hostname".into(), "/state/hostname".into())],
            read_only: false,
            user_mounts: Vec::new(),
        }
    }

    fn fake() -> RecordingSys {
        let mut sys = RecordingSys::default();
        for d in ["/r", "/r/proc", "/r/sys", "/r/etc", "/proc/sys", "/proc/acpi"] {
            sys.files.insert(d.into(), FileKind::Dir);
        }
        sys.files.insert("/proc/kcore".into(), FileKind::File);
        sys.flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        sys
    }

    #[test]
    fn sequence_before_pivot() {
        let mut sys = fake();
        prepare_root(&mut sys, &plan()).unwrap();
        let m = sys.mounts();
        let expect: Vec<(&str, &str)> = vec![
            ("/", ""),
            ("/r", "bind:/r"),
            ("/r/proc", "proc"),
            ("/r/dev", "tmpfs"),
            ("/r/dev/pts", "devpts"),
            ("/r/dev/shm", "tmpfs"),
            ("/r/dev/mqueue", "mqueue"),
            ("/r/sys", "sysfs"),
            ("/r/etc/hostname", "bind:/state/hostname"),
        ];
        let got: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, expect);
        // The first mount makes the whole tree rslave.
        assert!(matches!(&sys.calls[0], Call::Mount { flags, .. } if *flags == MsFlags::MS_REC | MsFlags::MS_SLAVE));
        // The six device nodes and the links exist; /etc/hostname was created before the bind.
        let nodes = sys.calls.iter().filter(|c| matches!(c, Call::Mknod { .. })).count();
        assert_eq!(nodes, 6);
        assert!(sys.calls.contains(&Call::Symlink { target: "pts/ptmx".into(), link: "/r/dev/ptmx".into() }));
        assert!(sys.calls.contains(&Call::Touch("/r/etc/hostname".into())));
        assert!(sys.calls.contains(&Call::MkdirAll("/r/dev".into())));
        // devpts is a new instance with gid 5.
        assert!(sys.calls.iter().any(|c| matches!(c, Call::Mount { fstype: Some(t), data: Some(d), .. }
            if t == "devpts" && d.contains("newinstance") && d.contains("gid=5"))));
    }

    #[test]
    fn rootless_binds_devices_and_sys() {
        let mut sys = fake();
        let mut p = plan();
        p.dev_mode = DevMode::Bind;
        p.devpts_gid = false;
        p.new_sysfs = false;
        p.cgroups.clear();
        prepare_root(&mut sys, &p).unwrap();
        let m = sys.mounts();
        assert!(m.contains(&("/r/dev/null".into(), "bind:/dev/null".into())));
        assert!(m.contains(&("/r/sys".into(), "bind:/sys".into())));
        assert!(!sys.calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
        // The read-only remount of /sys keeps the locked flags.
        assert!(sys.calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/r/sys") && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID))));
        assert!(!sys.calls.iter().any(|c| matches!(c, Call::Mount { data: Some(d), .. } if d.contains("gid=5"))));
    }

    #[test]
    fn failure_names_the_step() {
        let mut sys = fake();
        sys.fail.insert("/r/proc".into(), Errno::EPERM);
        let err = prepare_root(&mut sys, &plan()).unwrap_err();
        assert_eq!(err, SetupError::MountProc(Errno::EPERM.into()));
        assert_eq!(err.to_string(), "mount /proc: EPERM: Operation not permitted");
    }

    #[test]
    fn cgroup_hierarchies() {
        let mut sys = fake();
        let cg = Path::new("/sys/fs/cgroup");
        mount_cgroups(&mut sys, &plan(), cg).unwrap();
        let got = sys.mounts();
        let got: Vec<(&str, &str)> = got.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            got,
            [
                ("/sys/fs/cgroup", "tmpfs"),
                ("/sys/fs/cgroup/memory", "cgroup"),
                ("/sys/fs/cgroup/unified", "cgroup2"),
                ("/sys/fs/cgroup", ""),
            ]
        );
        // Every hierarchy is read-only; v1 gets its controllers as mount data.
        assert!(sys.calls.iter().all(|c| !matches!(c, Call::Mount { fstype: Some(t), flags, .. }
            if t.starts_with("cgroup") && !flags.contains(MsFlags::MS_RDONLY))));
        assert!(matches!(sys.calls.last(), Some(Call::Mount { flags, .. })
            if flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY)));
        assert!(sys.calls.iter().any(|c| matches!(c, Call::Mount { data: Some(d), .. } if d == "memory")));
        // A pure v2 host: the hierarchy itself, no tmpfs.
        let mut sys = fake();
        let mut p = plan();
        p.cgroups = vec![CgroupMount { dir: String::new(), fstype: "cgroup2".into(), options: String::new() }];
        mount_cgroups(&mut sys, &p, cg).unwrap();
        assert_eq!(sys.mounts(), vec![("/sys/fs/cgroup".to_string(), "cgroup2".to_string())]);
    }

    #[test]
    fn pivot_then_detach() {
        let mut sys = fake();
        pivot(&mut sys, &plan()).unwrap();
        assert_eq!(
            sys.calls,
            vec![
                Call::Chdir("/r".into()),
                Call::PivotRoot { new_root: ".".into(), put_old: ".".into() },
                Call::Mount {
                    src: None,
                    target: ".".into(),
                    fstype: None,
                    flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    data: None
                },
                Call::Umount { target: ".".into(), flags: MntFlags::MNT_DETACH },
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn masked_and_readonly_paths() {
        let mut sys = fake();
        let mut p = plan();
        p.read_only = true;
        finish_root(&mut sys, &p).unwrap();
        let m = sys.mounts();
        // Only existing paths: /proc/acpi (dir: tmpfs), /proc/kcore (file: /dev/null), /proc/sys (ro bind).
        assert_eq!(
            m,
            vec![
                ("/proc/acpi".to_string(), "tmpfs".to_string()),
                ("/proc/kcore".into(), "bind:/dev/null".into()),
                ("/proc/sys".into(), "bind:/proc/sys".into()),
                ("/proc/sys".into(), "".into()),
                ("/".into(), "".into()),
            ]
        );
        assert!(matches!(sys.calls.last(), Some(Call::Mount { flags, .. })
            if flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID)));
    }

    #[test]
    fn volume_and_tmpfs_parsing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let v = |s: &str| UserMount::parse_volume(s, d);
        let host = d.display().to_string();
        assert_eq!(
            v(&format!("{host}:/data")).unwrap(),
            UserMount::Bind { source: d.into(), destination: "/data".into(), read_only: false }
        );
        assert_eq!(
            v(&format!("{host}:/data:ro")).unwrap(),
            UserMount::Bind { source: d.into(), destination: "/data".into(), read_only: true }
        );
        assert_eq!(
            v(".:/src:rw").unwrap(),
            UserMount::Bind { source: d.into(), destination: "/src".into(), read_only: false }
        );
        assert!(v(&format!("{host}/missing:/data")).unwrap_err().contains("bind source path does not exist"));
        assert!(v("named:/data").unwrap_err().contains("named volumes"));
        assert!(v(&format!("{host}:data")).unwrap_err().contains("must be absolute"));
        assert!(v(&format!("{host}:/")).unwrap_err().contains("can't be '/'"));
        assert!(v(&format!("{host}:/d:rx")).unwrap_err().contains("invalid mode"));
        assert!(v("/a").is_err());
        let t = UserMount::parse_tmpfs("/run:size=64m,mode=1777,exec").unwrap();
        assert_eq!(t.destination(), Path::new("/run"));
        let UserMount::Tmpfs { options, .. } = &t else { panic!() };
        let (flags, data) = tmpfs_options(options).unwrap();
        assert_eq!(data, "size=64m,mode=1777");
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert!(UserMount::parse_tmpfs("/run:bogus").is_err());
        assert!(UserMount::parse_tmpfs("run").is_err());
    }

    #[test]
    fn user_mounts_come_last_parents_first() {
        let mut sys = fake();
        sys.files.insert("/host/dir".into(), FileKind::Dir);
        sys.files.insert("/host/file".into(), FileKind::File);
        let mut p = plan();
        p.user_mounts = vec![
            UserMount::Bind { source: "/host/file".into(), destination: "/data/sub/f".into(), read_only: true },
            UserMount::Bind { source: "/host/dir".into(), destination: "/data".into(), read_only: false },
            UserMount::Tmpfs { destination: "/scratch".into(), options: vec!["size=1m".into()] },
        ];
        prepare_root(&mut sys, &p).unwrap();
        let m = sys.mounts();
        let n = m.len();
        assert_eq!(
            m[n - 3..],
            [
                ("/r/data".to_string(), "bind:/host/dir".to_string()),
                ("/r/scratch".into(), "tmpfs".into()),
                ("/r/data/sub/f".into(), "bind:/host/file".into()),
            ]
        );
        // A file source gets a file mount point; the read-only one is made read-only recursively.
        assert!(sys.calls.contains(&Call::Touch("/r/data/sub/f".into())));
        assert_eq!(sys.calls.last(), Some(&Call::ReadonlyRecursive("/r/data/sub/f".into())));
        assert!(!sys.calls.contains(&Call::ReadonlyRecursive("/r/data".into())));
        // Binds are recursive.
        assert!(sys.calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/r/data") && flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC))));
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let mut sys = fake();
        sys.files.insert("/r/etc".into(), FileKind::Symlink);
        sys.links.insert("/r/etc".into(), "/../../host/etc".into());
        sys.files.insert("/r/host".into(), FileKind::Symlink);
        sys.links.insert("/r/host".into(), "../x".into());
        let p = resolve_in_root(&mut sys, Path::new("/r"), Path::new("etc/hosts")).unwrap();
        assert_eq!(p, Path::new("/r/x/etc/hosts"));
        sys.files.insert("/r/loop".into(), FileKind::Symlink);
        sys.links.insert("/r/loop".into(), "loop".into());
        assert_eq!(resolve_in_root(&mut sys, Path::new("/r"), Path::new("loop/a")), Err(Errno::ELOOP));
    }
}
