//! Where a container's root filesystem comes from: a plain directory ([`RootFsSpec::Dir`], `--rootfs DIR`) or
//! a layerfs mount of an image from the store ([`RootFsSpec::Layerfs`], `run IMAGE`).
//!
//! ## The layerfs daemon
//!
//! The monitor forks the daemon as a child of its own ([`Daemon::spawn`]) that runs the layerfs library
//! (`layerfs::mount::mount_and_serve`, what `layerfs mount -f` runs, with no exec: no program to load and link
//! on the start path; the monitor is single-threaded when it forks, the child starts fuser's threads; its `comm`
//! is `layerfs`): packed layers of the image (topmost first), `upper/` and `work/` in the container's state
//! directory, `objects=` the store's objects, mounted on `merged/` in a **mount namespace of the daemon's own** (made `rslave`, so nothing propagates back
//! to the host). The container's init joins that namespace and unshares a copy of it before it builds its root
//! (`setns` + `unshare(CLONE_NEWNS)`), so the container sees the mount while no other mount namespace on the
//! host ever does. Consequences:
//!
//! - The daemon runs outside the container's pid namespace and cgroup (a child of the monitor, in the
//!   monitor's cgroup): stopping, killing or OOM-killing the container never kills its filesystem.
//! - No mount can leak: the daemon's namespace dies with the daemon, the container's copy with the container.
//!   At the end the monitor sends SIGTERM (layerfs detaches its mount; the kernel flushes and releases the
//!   superblock once the container's copy is gone too) and waits for the daemon to exit (SIGKILL after a grace
//!   period); with `--rm` it cleans up meanwhile and waits last, before it reports the exit. If the monitor
//!   dies, `PR_SET_PDEATHSIG` sends the daemon that SIGTERM.
//! - The daemon says when the mount is live on an inherited pipe (`ready_fd=`); an EOF without it is a failed
//!   mount, whose reason is in `layerfs.log` in the state directory.
//! - Rootless: the daemon first joins the container's user namespace (created by the container's clone, mapped
//!   by the monitor) and unshares its mount namespace inside it: a FUSE mount in a user namespace (Linux 4.18+).
//!   This needs `/dev/fuse` readable and writable by the caller (udev's default mode 0666).
//!
//! `upper/` and `work/` stay after the container ends (for `commit`/`diff`) until `rm`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::{self, CloneResult};

/// How to obtain the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFsSpec {
    /// A directory used as it is (`--rootfs DIR`).
    Dir { path: PathBuf },
    /// A layerfs mount of read-only lower layers with upper and work directories in the container's state
    /// directory.
    Layerfs(LayerfsSpec),
}

/// A layerfs root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerfsSpec {
    /// Lower layers, topmost first (`.lpk` files or directories).
    pub lowerdirs: Vec<PathBuf>,
    /// The objects directory of the packed layers (`objects=`).
    #[serde(default)]
    pub objects: Option<PathBuf>,
    /// The image the layers come from.
    #[serde(default)]
    pub image: Option<ImageInfo>,
    /// Extra layerfs mount options (`--storage-opt`), each `KEY=VALUE` of [`MOUNT_OPTIONS`].
    #[serde(default)]
    pub options: Vec<String>,
}

/// The layerfs options `--storage-opt` may set (the others are the launcher's to choose).
pub const MOUNT_OPTIONS: &[&str] = &["cache_dirs", "cache_inline", "passthrough", "timeout", "threads"];

/// The image a container runs, as recorded in its `state.json` (what `commit` and `diff` start from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// `NAME:TAG`.
    pub name: String,
    /// `sha256:HEX` image id.
    pub id: String,
    /// The store it was found in.
    pub store: PathBuf,
    /// Packed layers, `sha256:HEX`, lowest first (the manifest's order).
    pub layers: Vec<String>,
    /// The OCI diff_ids, lowest first, when known.
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// The image's configuration (the starting point of `commit`, even after the image is untagged).
    #[serde(default)]
    pub config: Option<Box<ImageConfig>>,
}

/// The directories of a layerfs root: the container's own in its state directory, and two shared by all the
/// containers of a state root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerfsDirs {
    /// The writable layer (kernel overlayfs format): kept until `rm`.
    pub upper: PathBuf,
    /// layerfs's work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// The daemon's standard error.
    pub log: PathBuf,
    /// docker's "init layer", shared and never written: a directory lower on top of the image's layers holding
    /// the mount points the launcher needs (`/proc`, `/sys`, `/dev`, `/etc/{hostname,hosts,resolv.conf}`), so
    /// that making them never writes into the upper (which then holds only what the container changed).
    #[serde(default)]
    pub init: PathBuf,
    /// The mount point. Every daemon mounts on this one shared directory, each in its own mount namespace (on
    /// the host it stays an empty directory).
    pub merged: PathBuf,
}

impl LayerfsDirs {
    /// The directories of the container with state directory `dir` in state root `root`.
    pub fn new(root: &Path, dir: &Path) -> LayerfsDirs {
        LayerfsDirs {
            upper: dir.join("upper"),
            work: dir.join("work"),
            log: dir.join("layerfs.log"),
            init: root.join("init-layer"),
            merged: root.join("mnt"),
        }
    }
}

/// The mount points of the init layer: directories, then empty files.
const INIT_DIRS: &[&str] = &["proc", "sys", "dev", "etc"];
const INIT_FILES: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf"];

impl LayerfsDirs {
    /// Creates the upper and work directories, and the shared ones when missing (the init layer is built aside
    /// and renamed into place: it is complete whenever it exists).
    pub fn create(&self) -> Result<()> {
        let fail = |p: &Path, e: std::io::Error| Error::Layerfs {
            step: "create the upper, work, init and mount directories",
            reason: format!("{}: {e}", p.display()),
        };
        for d in [&self.upper, &self.work] {
            std::fs::create_dir(d).map_err(|e| fail(d, e))?;
        }
        match std::fs::create_dir(&self.merged) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(fail(&self.merged, e)),
            _ => {}
        }
        if self.init.is_dir() {
            return Ok(());
        }
        let tmp = self.init.with_file_name(format!(".init-layer.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for d in INIT_DIRS {
            let p = tmp.join(d);
            std::fs::create_dir_all(&p).map_err(|e| fail(&p, e))?;
        }
        for f in INIT_FILES {
            let p = tmp.join(f);
            std::fs::write(&p, b"").map_err(|e| fail(&p, e))?;
        }
        match std::fs::rename(&tmp, &self.init) {
            Ok(()) => Ok(()),
            // Another start won the race: use its layer (identical).
            Err(_) if self.init.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(fail(&self.init, e)),
        }
    }
}

/// A root filesystem ready to be pivoted into; [`PreparedRoot::release`] undoes what was done.
#[derive(Debug)]
pub struct PreparedRoot {
    /// The directory the container's init bind-mounts and pivots into (for layerfs: in the daemon's mount
    /// namespace, which the init joins first).
    pub path: PathBuf,
    /// The layerfs daemon serving it.
    pub daemon: Option<Daemon>,
    /// The layerfs directories.
    dirs: Option<LayerfsDirs>,
}

impl RootFsSpec {
    /// Checks the spec early (in the CLI) so that errors come before anything is created.
    pub fn validate(&self) -> Result<()> {
        match self {
            RootFsSpec::Dir { path } => {
                let md =
                    std::fs::metadata(path).map_err(|e| Error::Rootfs { path: path.clone(), reason: e.to_string() })?;
                if !md.is_dir() {
                    return Err(Error::Rootfs { path: path.clone(), reason: "not a directory".into() });
                }
                if !path.is_absolute() {
                    return Err(Error::Rootfs { path: path.clone(), reason: "must be absolute".into() });
                }
                Ok(())
            }
            RootFsSpec::Layerfs(l) if l.lowerdirs.is_empty() => {
                Err(Error::Rootfs { path: PathBuf::new(), reason: "layerfs needs at least one lower layer".into() })
            }
            RootFsSpec::Layerfs(l) => {
                for p in l.lowerdirs.iter().chain(&l.objects) {
                    if !p.is_absolute() {
                        return Err(Error::Rootfs { path: p.clone(), reason: "must be absolute".into() });
                    }
                }
                if let Some(o) = &l.objects
                    && o.to_string_lossy().contains([',', '"'])
                {
                    return Err(Error::Rootfs {
                        path: o.clone(),
                        reason: "a comma or a quote in the objects path cannot be passed to layerfs".into(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Sets the extra layerfs mount options of an image root (checked: known keys, values layerfs accepts).
    pub fn set_mount_options(&mut self, opts: &[String]) -> Result<()> {
        let RootFsSpec::Layerfs(l) = self else {
            if opts.is_empty() {
                return Ok(());
            }
            return Err(Error::InvalidArgument("--storage-opt needs an image root".into()));
        };
        let mut probe = layerfs::options::MountConfig::default();
        for o in opts {
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
            if !MOUNT_OPTIONS.contains(&key) {
                return Err(Error::InvalidArgument(format!(
                    "--storage-opt {o}: unknown option (known: {})",
                    MOUNT_OPTIONS.join(", ")
                )));
            }
            if !o.contains('=') || o.contains(',') {
                return Err(Error::InvalidArgument(format!("--storage-opt {o}: expected KEY=VALUE")));
            }
            layerfs::options::apply_option(&mut probe, o)
                .map_err(|e| Error::InvalidArgument(format!("--storage-opt {o}: {e}")))?;
        }
        l.options = opts.to_vec();
        Ok(())
    }

    /// The layerfs spec, if this root is one.
    pub fn layerfs(&self) -> Option<&LayerfsSpec> {
        match self {
            RootFsSpec::Layerfs(l) => Some(l),
            RootFsSpec::Dir { .. } => None,
        }
    }

    /// The image, if this root is one.
    pub fn image(&self) -> Option<&ImageInfo> {
        self.layerfs().and_then(|l| l.image.as_ref())
    }

    /// What `ps` shows: the image name, or the directory.
    pub fn describe(&self) -> String {
        match self {
            RootFsSpec::Dir { path } => path.display().to_string(),
            RootFsSpec::Layerfs(l) => match &l.image {
                Some(i) => i.name.clone(),
                None => "layerfs".into(),
            },
        }
    }

    /// Makes what can be made before the container is cloned: the directories and, as root, the layerfs daemon
    /// (rootless, the daemon needs the container's user namespace: [`PreparedRoot::start_daemon`] after the clone).
    pub fn prepare(&self, dirs: &LayerfsDirs, rootless: bool) -> Result<PreparedRoot> {
        match self {
            RootFsSpec::Dir { path } => Ok(PreparedRoot { path: path.clone(), daemon: None, dirs: None }),
            RootFsSpec::Layerfs(spec) => {
                dirs.create()?;
                let daemon = if rootless { None } else { Some(Daemon::spawn(spec, dirs, None)?) };
                Ok(PreparedRoot { path: dirs.merged.clone(), daemon, dirs: Some(dirs.clone()) })
            }
        }
    }
}

impl PreparedRoot {
    /// Rootless: starts the daemon inside the user namespace of process `userns_of` (the container's init,
    /// whose id maps are written).
    pub fn start_daemon(&mut self, spec: &RootFsSpec, userns_of: BorrowedFd<'_>) -> Result<()> {
        if let (RootFsSpec::Layerfs(l), None, Some(dirs)) = (spec, &self.daemon, &self.dirs) {
            self.daemon = Some(Daemon::spawn(l, dirs, Some(userns_of))?);
        }
        Ok(())
    }

    /// Asks the layerfs daemon, if any, to stop (see [`Daemon::request_stop`]) without waiting.
    pub fn request_stop(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.request_stop();
        }
    }

    /// Stops the layerfs daemon, if any (see [`Daemon::stop`]); returns how it ended.
    pub fn release(self) -> Option<DaemonEnd> {
        self.daemon.map(Daemon::stop)
    }
}

/// The parts of an image's configuration a container starts from.
pub use tools::image::ImageConfig;

/// Resolves image `name` (`NAME[:TAG]` or an id prefix) in the store at `store_root`: the layerfs root (layers
/// topmost first, the store's objects) and the image's configuration.
pub fn resolve_image(store_root: &Path, name: &str) -> Result<(RootFsSpec, ImageConfig)> {
    use tools::StoreError;
    let shown = tools::image::ImageRef::parse(name).map(|r| r.to_string()).unwrap_or_else(|_| name.to_string());
    let missing = || Error::NoSuchImage { name: shown.clone(), store: store_root.to_path_buf() };
    let store = tools::store::Store::open_existing(store_root).map_err(|_| missing())?;
    let img = store.image(name).map_err(|e| match e {
        StoreError::NoSuchImage(_) => missing(),
        e => Error::Image { name: shown.clone(), reason: e.to_string() },
    })?;
    let mut lowerdirs = Vec::with_capacity(img.layers.len());
    for l in img.layers.iter().rev() {
        let d = tools::store::parse_digest(l)
            .ok_or_else(|| Error::Image { name: img.name.clone(), reason: format!("invalid layer digest {l:?}") })?;
        let p = store.layer_path(&d);
        if !p.is_file() {
            return Err(Error::Image {
                name: img.name.clone(),
                reason: format!("layer {l} is missing from the store ({}); run layertool verify", p.display()),
            });
        }
        lowerdirs.push(p);
    }
    if lowerdirs.is_empty() {
        return Err(Error::Image { name: img.name.clone(), reason: "the image has no layers".into() });
    }
    let root = std::path::absolute(store_root).unwrap_or_else(|_| store_root.to_path_buf());
    let info = ImageInfo {
        name: img.name.clone(),
        id: img.id(),
        store: root,
        layers: img.layers.clone(),
        diff_ids: img.diff_ids.clone(),
        config: Some(Box::new(img.config.clone())),
    };
    let objects = std::path::absolute(store.objects_dir()).ok();
    let spec = RootFsSpec::Layerfs(LayerfsSpec {
        lowerdirs: lowerdirs.into_iter().map(|p| std::path::absolute(&p).unwrap_or(p)).collect(),
        objects,
        image: Some(info),
        options: Vec::new(),
    });
    spec.validate()?;
    Ok((spec, img.config))
}

/// How long a daemon may take to mount.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a layerfs daemon ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonEnd {
    /// It was still serving when the container's end asked it to stop (it did not die under the container).
    pub alive_at_stop: bool,
    /// `exited 0`, `killed by SIGKILL`...
    pub status: String,
}

/// A running layerfs daemon, child of this process.
#[derive(Debug)]
pub struct Daemon {
    pub pid: i32,
    pidfd: OwnedFd,
    /// The read end of the readiness pipe, until the daemon said ready.
    ready: Option<OwnedFd>,
    log: PathBuf,
    /// Where this daemon's part of the log starts.
    log_start: u64,
    /// Set once reaped.
    status: Option<String>,
    /// Set once asked to stop: whether it was still running then.
    alive_at_stop: Option<bool>,
}

fn describe(ws: WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(_, c) => format!("exited {c}"),
        WaitStatus::Signaled(_, s, _) => format!("killed by {s}"),
        other => format!("{other:?}"),
    }
}

/// The command line `layerfs mount -f` would get for this daemon (native form; the layers need no escaping as
/// arguments): parsed into its configuration by [`mount_config`].
fn daemon_args(spec: &LayerfsSpec, dirs: &LayerfsDirs) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "layerfs".into(),
        "mount".into(),
        "-f".into(),
        "--upper".into(),
        dirs.upper.clone().into(),
        "--work".into(),
        dirs.work.clone().into(),
    ];
    if let Some(o) = &spec.objects {
        a.push("-o".into());
        a.push(format!("objects={}", o.display()).into());
    }
    for o in &spec.options {
        a.push("-o".into());
        a.push(o.into());
    }
    a.push(dirs.init.clone().into());
    a.extend(spec.lowerdirs.iter().map(|l| l.clone().into_os_string()));
    a.push(dirs.merged.clone().into());
    a
}

impl Daemon {
    /// Starts the daemon (the layerfs library in a forked child of this single-threaded process) in a new mount
    /// namespace (inside the user namespace of `userns_of`, when given); returns at once (see
    /// [`Daemon::wait_ready`]).
    pub fn spawn(spec: &LayerfsSpec, dirs: &LayerfsDirs, userns_of: Option<BorrowedFd<'_>>) -> Result<Daemon> {
        let fail = |step: &'static str, e: Errno| Error::Layerfs { step, reason: e.desc().into() };
        let cfg = mount_config(spec, dirs)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&dirs.log)
            .map_err(|e| Error::Layerfs { step: "open its log", reason: format!("{}: {e}", dirs.log.display()) })?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let null = std::fs::File::options()
            .read(true)
            .open("/dev/null")
            .map_err(|e| fail("open /dev/null", sys::io_errno(e)))?;
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail("create the ready pipe", e))?;
        let parent = std::process::id() as i32;
        match sys::clone3(0, None).map_err(|e| fail("fork the daemon", e))? {
            CloneResult::Child => {
                drop(ready_r);
                let code = match daemon_child(userns_of, &log, &null, parent, &ready_w) {
                    Err((step, errno)) => {
                        use std::io::Write;
                        let _ = writeln!(std::io::stderr(), "launcher: start layerfs: {step}: {errno}");
                        125
                    }
                    Ok(()) => {
                        layerfs::mount::init_logging(false);
                        match layerfs::mount::mount_and_serve(&cfg, Some(ready_w), || Ok(())) {
                            Ok(()) => 0,
                            Err(e) => {
                                use std::io::Write;
                                let _ = writeln!(std::io::stderr(), "layerfs: {e:#}");
                                1
                            }
                        }
                    }
                };
                sys::exit_now(code)
            }
            CloneResult::Parent { pid, pidfd } => {
                drop(ready_w);
                Ok(Daemon {
                    pid,
                    pidfd,
                    ready: Some(ready_r),
                    log: dirs.log.clone(),
                    log_start,
                    status: None,
                    alive_at_stop: None,
                })
            }
        }
    }

    /// Waits until the mount is live. On failure the daemon is reaped and its log is in the error.
    pub fn wait_ready(&mut self) -> Result<()> {
        let Some(r) = self.ready.take() else { return Ok(()) };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 16];
        let n = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)) {
                Ok(0) => {
                    let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
                    self.reap();
                    return Err(Error::Layerfs {
                        step: "mount",
                        reason: format!("not ready after {}s; killed. {}", READY_TIMEOUT.as_secs(), self.log_tail()),
                    });
                }
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Layerfs { step: "wait for the mount", reason: e.desc().into() }),
            }
            match nix::unistd::read(&r, &mut buf) {
                Err(Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if n > 0 {
            return Ok(());
        }
        // EOF: the daemon failed before its mount was live, and is exiting.
        self.wait_exit(Duration::from_secs(5));
        Err(Error::Layerfs {
            step: "mount",
            reason: format!("{} ({})", self.log_tail(), self.status.as_deref().unwrap_or("?")),
        })
    }

    /// The daemon's mount namespace (for the container's init to join).
    pub fn mount_ns(&self) -> Result<OwnedFd> {
        std::fs::File::open(format!("/proc/{}/ns/mnt", self.pid))
            .map(OwnedFd::from)
            .map_err(|e| Error::Layerfs { step: "open its mount namespace", reason: e.to_string() })
    }

    /// A descriptor that polls readable when the daemon exits.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Reaps the daemon if it exited; returns its status then.
    pub fn reap(&mut self) -> Option<&str> {
        if self.status.is_none() {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
            match nix::sys::wait::waitid(Id::PIDFd(self.pidfd.as_fd()), flags) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(ws) => self.status = Some(describe(ws)),
                Err(e) => self.status = Some(format!("wait failed: {e}")),
            }
        }
        self.status.as_deref()
    }

    /// Waits up to `limit` for the daemon to exit, then kills it; reaps it.
    fn wait_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.reap().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
                if let Ok(ws) = nix::sys::wait::waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED) {
                    self.status = Some(describe(ws));
                }
                return;
            }
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX));
        }
    }

    /// The last lines this daemon wrote to its log, for errors.
    fn log_tail(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.seek(std::io::SeekFrom::Start(self.log_start));
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() { format!("see {}", self.log.display()) } else { tail.join(" / ") }
    }

    /// Sends SIGTERM (layerfs detaches its mount; the kernel flushes and releases the filesystem once the
    /// container's copy of it is gone too, then the daemon exits) unless it already ended; returns at once (the
    /// caller does other work meanwhile, then [`Daemon::stop`]).
    pub fn request_stop(&mut self) {
        if self.alive_at_stop.is_none() {
            let alive = self.reap().is_none();
            self.alive_at_stop = Some(alive);
            if alive {
                let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGTERM);
            }
        }
    }

    /// [`Daemon::request_stop`] if not done yet, waits [`STOP_GRACE`] for the daemon to exit, then SIGKILL;
    /// reaps it.
    pub fn stop(mut self) -> DaemonEnd {
        self.request_stop();
        if self.status.is_none() {
            self.wait_exit(STOP_GRACE);
        }
        DaemonEnd {
            alive_at_stop: self.alive_at_stop.unwrap_or(false),
            status: self.status.clone().unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// The daemon's process after the clone, before it runs the layerfs library: its standard streams, its mount
/// namespace, its parent death signal, no descriptor of the monitor's but `ready`, default signals. On failure,
/// the step and the errno.
fn daemon_child(
    userns_of: Option<BorrowedFd<'_>>,
    log: &std::fs::File,
    null: &std::fs::File,
    parent: i32,
    ready: &OwnedFd,
) -> std::result::Result<(), (&'static str, Errno)> {
    use nix::mount::MsFlags;
    use std::os::fd::AsRawFd;
    // Its standard streams first, so that the failures below are logged.
    nix::unistd::dup2_stdin(null)
        .and_then(|()| nix::unistd::dup2_stdout(log))
        .and_then(|()| nix::unistd::dup2_stderr(log))
        .map_err(|e| ("redirect its output", e))?;
    // What `ps` and `/proc/PID/comm` show (its command line stays the launcher's).
    let _ = nix::sys::prctl::set_name(c"layerfs");
    if let Some(fd) = userns_of {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER).map_err(|e| ("join the container's user namespace", e))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| ("unshare its mount namespace", e))?;
    // Not the caller's working directory: that would keep its filesystem busy for the container's lifetime.
    nix::unistd::chdir("/").map_err(|e| ("chdir /", e))?;
    // Nothing mounted here may propagate back to the host.
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| ("make / rslave", e))?;
    // The monitor's death (even SIGKILL) unmounts and ends the daemon.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| ("set the parent death signal", e))?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(("the monitor died", Errno::ESRCH));
    }
    // None of the monitor's descriptors (the CLI's socket, the container's pipes) may stay open in the daemon.
    sys::close_all_from(3, &[ready.as_raw_fd()]);
    sys::reset_signals();
    // As in the `layerfs` program (Rust's runtime ignores it there): a write to a closed pipe is an error, not death.
    sys::ignore_sigpipe();
    Ok(())
}

/// The daemon's configuration: what `layerfs mount -f` would parse from [`daemon_args`].
fn mount_config(spec: &LayerfsSpec, dirs: &LayerfsDirs) -> Result<Box<layerfs::options::MountConfig>> {
    let args: Vec<String> = daemon_args(spec, dirs).iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match layerfs::options::parse_args(&args) {
        Ok(layerfs::options::Command::Mount(cfg)) => Ok(cfg),
        Ok(_) => Err(Error::Layerfs { step: "build its configuration", reason: "not a mount".into() }),
        Err(e) => Err(Error::Layerfs { step: "build its configuration", reason: e.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_command_line() {
        let spec = LayerfsSpec {
            lowerdirs: vec!["/s/layers/b.lpk".into(), "/s/layers/a.lpk".into()],
            objects: Some("/s/objects".into()),
            image: None,
            options: vec!["cache_dirs=0".into()],
        };
        let dirs = LayerfsDirs::new(Path::new("/run/c"), Path::new("/run/c/1"));
        let a: Vec<String> = daemon_args(&spec, &dirs).iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "layerfs",
                "mount",
                "-f",
                "--upper",
                "/run/c/1/upper",
                "--work",
                "/run/c/1/work",
                "-o",
                "objects=/s/objects",
                "-o",
                "cache_dirs=0",
                "/run/c/init-layer",
                "/s/layers/b.lpk",
                "/s/layers/a.lpk",
                "/run/c/mnt"
            ]
        );
        assert!(RootFsSpec::Layerfs(spec.clone()).validate().is_ok());
        let bad = LayerfsSpec { objects: Some("/a,b".into()), ..spec.clone() };
        assert!(RootFsSpec::Layerfs(bad).validate().is_err());
        let empty = LayerfsSpec { lowerdirs: vec![], ..spec };
        assert!(RootFsSpec::Layerfs(empty).validate().is_err());
    }
}
