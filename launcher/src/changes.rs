//! Change management: `diff`, `commit`, `export` and `cp` of a container.
//!
//! A container on an image keeps what it changed in its upper directory (`upper/` in its state directory, the
//! kernel overlayfs format) until `rm`; its image is recorded in `state.json` (`config.rootfs.layerfs.image`:
//! the store, the layers, the configuration). `diff`, `commit` and `export` read that upper against the image's
//! packed layers with the `tools` library (the upper is walked, the image only looked up, so their time follows
//! the size of the change, not of the image):
//!
//! - `diff`: [`tools::diff::diff_upper`], docker's `A`/`C`/`D` lines.
//! - `commit`: [`tools::commit::commit_image`], the upper as one new packed layer on the image's layers, the
//!   image's configuration with `--change`s. A running container is frozen first (`--pause`, the default: its
//!   cgroup's `cgroup.freeze`, or the v1 freezer) and thawed on every way out (the usual terminating signals are
//!   blocked meanwhile, so that a Ctrl-C arrives after the thaw).
//! - `export`: the upper committed into a self-contained temporary layer (in the store's `tmp/`, nothing
//!   published), then [`tools::export::export_merged`] over it and the image's layers: the tar holds exactly
//!   what `commit` would make, redirects, metadata-only copies and hard links included.
//!
//! A running container's filesystem is synced first (`syncfs` on its root, through `/proc/PID/root`): layerfs
//! may hold written data in the kernel's page cache that its upper has not got yet.
//!
//! `cp` works through the container's root filesystem, not its upper: a running container's root is opened as
//! `/proc/PID/root` of its init (so its volumes are seen too, as with docker); a stopped container on an image is
//! mounted for the copy by a layerfs daemon of its own (in a mount namespace of its own, like a run's), under a
//! lock on the container's directory; a stopped `--rootfs` container's root is its directory. Every container
//! path is resolved with `openat2(RESOLVE_IN_ROOT)` on a descriptor of that root (a symlink in the container
//! cannot lead out of it), and everything below is reached one name at a time with `O_NOFOLLOW`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::error::{Error, Result};
use crate::rootfs::{Daemon, ImageInfo, LayerfsDirs};
use crate::state::{State, Status, Store};

/// How long `commit --pause` waits for the kernel to freeze the container.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// `commit`'s options.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Dockerfile instructions applied to the configuration (`-c/--change`).
    pub changes: Vec<String>,
    /// The commit message (`-m`).
    pub message: Option<String>,
    /// Freeze a running container while its upper is read.
    pub pause: bool,
}

fn load(store: &Store, reference: &str) -> Result<State> {
    let id = store.resolve(reference)?;
    store.load(&id)
}

fn running(st: &State) -> bool {
    st.effective_status() == Status::Running
}

/// A container on an image: its image and upper.
struct Target {
    st: State,
    image: ImageInfo,
    upper: PathBuf,
}

fn target(store: &Store, reference: &str, what: &'static str) -> Result<Target> {
    let st = load(store, reference)?;
    let Some(image) = st.config.rootfs.image().cloned() else {
        return Err(Error::NoImage { container: reference.into(), what });
    };
    let upper = match &st.layerfs {
        Some(l) => l.dirs.upper.clone(),
        None => store.dir(&st.id).join("upper"),
    };
    if !upper.is_dir() {
        return Err(Error::Changes {
            what,
            reason: format!("container {reference} has no upper directory ({}): it never started", upper.display()),
        });
    }
    Ok(Target { st, image, upper })
}

fn tools_err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |e| Error::Changes { what, reason: e.to_string() }
}

/// The container's image as a store image: the recorded layers and configuration (the configuration is read
/// from the store for containers recorded before it was kept in the state).
fn base_image(info: &ImageInfo, store: &tools::store::Store, what: &'static str) -> Result<tools::image::Image> {
    let config = match &info.config {
        Some(c) => (**c).clone(),
        None => store.image(&info.id).map(|i| i.config).map_err(|e| tools_err(what)(&e))?,
    };
    Ok(tools::image::Image {
        name: info.name.clone(),
        layers: info.layers.clone(),
        diff_ids: info.diff_ids.clone(),
        config,
        ..Default::default()
    })
}

fn open_store(info: &ImageInfo, what: &'static str) -> Result<tools::store::Store> {
    tools::store::Store::open_existing(&info.store).map_err(|e| tools_err(what)(&e))
}

/// `syncfs` on a running container's root filesystem: what layerfs holds in the page cache reaches the upper.
fn sync_root(st: &State) -> Result<()> {
    let Some(pid) = st.pid else { return Ok(()) };
    let root = match File::open(format!("/proc/{pid}/root")) {
        Ok(f) => f,
        // It exited meanwhile: its daemon flushed everything when it stopped.
        Err(_) if !running(st) => return Ok(()),
        Err(e) => return Err(Error::io("open the container's root to sync it", e)),
    };
    nix::unistd::syncfs(root.as_fd()).map_err(|e| Error::sys("syncfs the container's root", e))
}

/// `diff CONTAINER`: the container's changes to its image, as `A`/`C`/`D` lines.
pub fn diff(state_root: &Path, reference: &str) -> Result<i32> {
    let store = Store::open(state_root)?;
    let t = target(&store, reference, "diff")?;
    if running(&t.st) {
        sync_root(&t.st)?;
    }
    let tstore = open_store(&t.image, "diff")?;
    let image = base_image(&t.image, &tstore, "diff")?;
    let layers = tools::open_image_layers(&tstore, &image).map_err(|e| tools_err("diff")(&e))?;
    let top: Vec<&tools::MappedLayer> = layers.iter().rev().collect();
    let changes = tools::diff::diff_upper(&t.upper, &top).map_err(|e| tools_err("diff")(&e))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    for c in &changes {
        writeln!(out, "{c}").map_err(|e| Error::io("write to stdout", e))?;
    }
    out.flush().map_err(|e| Error::io("write to stdout", e))?;
    Ok(0)
}

/// Blocks the terminating signals while a container is frozen (restored on drop: a pending one is delivered
/// then, after the thaw).
struct SignalsHeld(nix::sys::signal::SigSet);

impl SignalsHeld {
    fn hold() -> SignalsHeld {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGPIPE] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
        SignalsHeld(old)
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// A frozen container, thawed on drop (declared after [`SignalsHeld`] so that it is dropped first).
struct Frozen<'a> {
    cgroup: &'a crate::cgroups::Cgroup,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.cgroup.thaw() {
            eprintln!("launcher: thaw the container: {e}");
        }
    }
}

/// `commit [-c CHANGE]... [-m MSG] [--pause=BOOL] CONTAINER NAME[:TAG]`: prints the new image's id.
pub fn commit(state_root: &Path, reference: &str, name: &str, o: &CommitOptions) -> Result<i32> {
    let store = Store::open(state_root)?;
    let t = target(&store, reference, "commit")?;
    tools::image::ImageRef::parse(name)
        .map_err(|e| Error::InvalidArgument(format!("invalid reference format {name:?}: {e}")))?;
    let tstore = open_store(&t.image, "commit")?;
    let image = base_image(&t.image, &tstore, "commit")?;
    let live = running(&t.st);
    let _signals = (live && o.pause).then(SignalsHeld::hold);
    let mut cgroup = t.st.cgroup.clone();
    let _frozen = if live && o.pause {
        if !cgroup.can_freeze() {
            return Err(Error::CannotPause(reference.into()));
        }
        // A pure v1 host without limits: into the freezer cgroup first (see `Cgroup::enter_freezer`).
        if let Some(pid) = t.st.pid
            && let Err(e) = cgroup.enter_freezer(pid, FREEZE_TIMEOUT)
        {
            if !running(&store.load(&t.st.id)?) {
                // It exited meanwhile: nothing to pause.
            } else if matches!(e, crate::error::CgroupError::Create { .. }) {
                return Err(Error::CannotPause(reference.into()));
            } else {
                return Err(e.into());
            }
        }
        match cgroup.freeze(FREEZE_TIMEOUT) {
            Ok(true) => Some(Frozen { cgroup: &cgroup }),
            // Its cgroup is gone: the container exited meanwhile.
            Ok(false) => None,
            Err(_) if !running(&store.load(&t.st.id)?) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    if live {
        sync_root(&t.st)?;
    }
    let req =
        tools::commit::ImageCommit { base: Some(&image), name, changes: &o.changes, message: o.message.as_deref() };
    let report = tools::commit::commit_image(
        &tstore,
        &t.upper,
        &req,
        &tools::commit::CommitOptions::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .map_err(|e| tools_err("commit")(&e))?;
    drop(_frozen);
    drop(_signals);
    for w in &report.commit.warnings {
        eprintln!("launcher: commit: {w}");
    }
    println!("{}", report.image.id());
    Ok(0)
}

/// Removes a file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `export CONTAINER [-o FILE]`: the container's merged root filesystem (image layers and upper) as a tar.
pub fn export(state_root: &Path, reference: &str, output: Option<&Path>) -> Result<i32> {
    let store = Store::open(state_root)?;
    let t = target(&store, reference, "export")?;
    if running(&t.st) {
        sync_root(&t.st)?;
    }
    let tstore = open_store(&t.image, "export")?;
    let image = base_image(&t.image, &tstore, "export")?;
    let _lock = tstore.lock_shared().map_err(|e| tools_err("export")(&e))?;
    let layers = tools::open_image_layers(&tstore, &image).map_err(|e| tools_err("export")(&e))?;
    let top: Vec<&tools::MappedLayer> = layers.iter().rev().collect();
    let (file, tmp) = tstore.temp_file(".export-").map_err(|e| tools_err("export")(&e))?;
    let _tmp = TempFile(tmp.clone());
    let opts = tools::commit::CommitOptions { self_contained: true, sync: false, ..Default::default() };
    tools::commit::commit_upper(&t.upper, &top, Some(&tstore), file, &opts, &indicatif::ProgressBar::hidden())
        .map_err(|e| tools_err("export")(&e))?;
    let changes = tools::open_layer(&tmp).map_err(|e| tools_err("export")(&e))?;
    let mut all = vec![&changes];
    all.extend(top);
    let write = |out: &mut dyn Write| -> Result<()> {
        let (mut w, stats) =
            tools::export::export_merged(&all, Some(&tstore), io::BufWriter::with_capacity(1 << 20, out))
                .map_err(|e| tools_err("export")(&e))?;
        w.flush().map_err(|e| Error::io("write the tar", e))?;
        for s in stats.skipped {
            eprintln!("launcher: export: {s}: a socket, not in the tar");
        }
        Ok(())
    };
    match output.filter(|p| *p != Path::new("-")) {
        None => write(&mut io::stdout().lock()),
        Some(p) => {
            let mut f = File::create(p)
                .map_err(|e| Error::Changes { what: "export", reason: format!("{}: {e}", p.display()) })?;
            write(&mut f).inspect_err(|_| {
                let _ = std::fs::remove_file(p);
            })
        }
    }
    .map(|()| 0)
}

// ---------------------------------------------------------------------------------------------------------------
// cp

/// One side of a copy: a container path or a host path (`-`: a tar stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpArg {
    /// `CONTAINER:PATH`.
    Container { container: String, path: String },
    /// A host path.
    Host(PathBuf),
    /// `-`: standard input or output, as a tar stream.
    Stream,
}

impl CpArg {
    /// docker's rule: `NAME:PATH` is in a container unless the part before the first `:` holds a `/` (write
    /// `./a:b` for a host file named `a:b`); `-` is a stream.
    pub fn parse(s: &str) -> CpArg {
        if s == "-" {
            return CpArg::Stream;
        }
        match s.split_once(':') {
            Some((c, p)) if !c.is_empty() && !c.contains('/') && !s.starts_with('.') => {
                CpArg::Container { container: c.into(), path: p.into() }
            }
            _ => CpArg::Host(s.into()),
        }
    }
}

/// A container's root filesystem opened for a copy; a temporary daemon is stopped on drop.
struct CtrRoot {
    fd: Option<OwnedFd>,
    daemon: Option<Daemon>,
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl CtrRoot {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("open until dropped").as_fd()
    }
}

impl Drop for CtrRoot {
    fn drop(&mut self) {
        // The descriptor keeps the mount busy: closed first (the daemon's stop waits for the release).
        self.fd.take();
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }
}

fn open_root(store: &Store, reference: &str) -> Result<CtrRoot> {
    let st = load(store, reference)?;
    let open_dir = |p: &Path| {
        nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| Error::Changes { what: "cp", reason: format!("open {}: {e}", p.display()) })
    };
    if running(&st)
        && let Some(pid) = st.pid
        && let Ok(fd) = open_dir(Path::new(&format!("/proc/{pid}/root")))
        && running(&store.load(&st.id)?)
    {
        return Ok(CtrRoot { fd: Some(fd), daemon: None, _lock: None });
    }
    match &st.config.rootfs {
        crate::rootfs::RootFsSpec::Dir { path } => Ok(CtrRoot { fd: Some(open_dir(path)?), daemon: None, _lock: None }),
        crate::rootfs::RootFsSpec::Layerfs(spec) => {
            // A stopped container: mount it for the copy, once at a time.
            let dir = store.dir(&st.id);
            let lock = File::create(dir.join("mount.lock")).map_err(|e| Error::io("create the mount lock", e))?;
            let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| Error::sys("lock the container's upper", e))?;
            let st = store.load(&st.id)?;
            if running(&st) {
                return Err(Error::Changes {
                    what: "cp",
                    reason: format!("container {reference} started meanwhile: retry"),
                });
            }
            let dirs = match &st.layerfs {
                Some(l) => l.dirs.clone(),
                None => LayerfsDirs::new(&store.root, &dir),
            };
            let mut daemon = Daemon::spawn(spec, &dirs, None)?;
            daemon.wait_ready()?;
            let fd = open_dir(Path::new(&format!("/proc/{}/root{}", daemon.pid, dirs.merged.display())));
            match fd {
                Ok(fd) => Ok(CtrRoot { fd: Some(fd), daemon: Some(daemon), _lock: Some(lock) }),
                Err(e) => {
                    daemon.stop();
                    Err(e)
                }
            }
        }
    }
}

fn cp_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Changes { what: "cp", reason: format!("{}: {e}", path.display()) }
}

/// Opens `path` (host: as the caller sees it; container: inside `root`, never out of it).
fn open_at(root: Option<BorrowedFd<'_>>, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    match root {
        None => nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty()),
        Some(r) => {
            let rel = path.strip_prefix("/").unwrap_or(path);
            let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
            let how = OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            // EAGAIN: a rename or mount anywhere raced with a `..` (the kernel cannot vouch for the walk): retry.
            let mut tries = 0;
            loop {
                match nix::fcntl::openat2(r, rel, how) {
                    Err(Errno::EAGAIN) if tries < 1000 => tries += 1,
                    other => return other,
                }
            }
        }
    }
}

/// Splits a path into its parent and last name (`None` for `/`, `.`, or a trailing `/.`).
fn split(path: &Path) -> (PathBuf, Option<OsString>) {
    let s = path.as_os_str().as_bytes();
    if s.ends_with(b"/.") || s == b"." || s.iter().all(|&c| c == b'/') {
        return (path.to_path_buf(), None);
    }
    let trimmed = Path::new(OsStr::from_bytes(s.strip_suffix(b"/").unwrap_or(s)));
    match (trimmed.parent(), trimmed.file_name()) {
        (Some(p), Some(n)) => {
            (if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() }, Some(n.to_os_string()))
        }
        _ => (path.to_path_buf(), None),
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

const DIR_R: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Copies entry `name` of directory `src` to entry `dname` of directory `dst` (recursively, not following any
/// symlink: every name is one component under a directory descriptor). Mode and times are kept, ownership is the
/// caller's (docker's rule).
fn copy_entry(
    src: BorrowedFd<'_>,
    name: &OsStr,
    dst: BorrowedFd<'_>,
    dname: &OsStr,
    shown: &Path,
    to_host: bool,
    depth: u32,
) -> Result<()> {
    if depth > 4096 {
        return Err(cp_err(shown, "directories nested too deep"));
    }
    let st = nix::sys::stat::fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| cp_err(shown, e))?;
    // To the host: no set-id bits (the files become the caller's) and no device nodes.
    let perm = Mode::from_bits_truncate(st.st_mode & if to_host { 0o1777 } else { 0o7777 });
    let times = |fd: BorrowedFd<'_>| {
        let a = nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec);
        let m = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        let _ = nix::sys::stat::futimens(fd, &a, &m);
    };
    let existing = nix::sys::stat::fstatat(dst, dname, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
    let k = kind(&st);
    if to_host && matches!(k, SFlag::S_IFCHR | SFlag::S_IFBLK) {
        eprintln!("launcher: cp: {}: a device node, not copied to the host", shown.display());
        return Ok(());
    }
    // A non-directory in the way of anything, or anything in the way of a non-directory, is replaced (docker
    // refuses only a directory over a file, checked before).
    if let Some(e) = &existing
        && (kind(e) != SFlag::S_IFDIR || k != SFlag::S_IFDIR)
    {
        if kind(e) == SFlag::S_IFDIR {
            return Err(cp_err(shown, "cannot overwrite a directory with a non-directory"));
        }
        if k != SFlag::S_IFREG || kind(e) != SFlag::S_IFREG {
            nix::unistd::unlinkat(dst, dname, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(|e| cp_err(shown, e))?;
        }
    }
    match k {
        SFlag::S_IFDIR => {
            if existing.is_none() {
                nix::sys::stat::mkdirat(dst, dname, Mode::from_bits_truncate(0o700)).map_err(|e| cp_err(shown, e))?;
            }
            let s = nix::fcntl::openat(src, name, DIR_R, Mode::empty()).map_err(|e| cp_err(shown, e))?;
            let d = nix::fcntl::openat(dst, dname, DIR_R, Mode::empty()).map_err(|e| cp_err(shown, e))?;
            copy_children(s.as_fd(), d.as_fd(), shown, to_host, depth)?;
            nix::sys::stat::fchmod(d.as_fd(), perm).map_err(|e| cp_err(shown, e))?;
            times(d.as_fd());
        }
        SFlag::S_IFREG => {
            let s =
                nix::fcntl::openat(src, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| cp_err(shown, e))?;
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let d =
                nix::fcntl::openat(dst, dname, flags, Mode::from_bits_truncate(0o600)).map_err(|e| cp_err(shown, e))?;
            let (mut s, mut d) = (File::from(s), File::from(d));
            io::copy(&mut s, &mut d).map_err(|e| cp_err(shown, e))?;
            nix::sys::stat::fchmod(d.as_fd(), perm).map_err(|e| cp_err(shown, e))?;
            times(d.as_fd());
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(src, name).map_err(|e| cp_err(shown, e))?;
            nix::unistd::symlinkat(target.as_os_str(), dst, dname).map_err(|e| cp_err(shown, e))?;
        }
        SFlag::S_IFSOCK => eprintln!("launcher: cp: {}: a socket, skipped", shown.display()),
        k => {
            nix::sys::stat::mknodat(dst, dname, k, perm, st.st_rdev).map_err(|e| cp_err(shown, e))?;
        }
    }
    Ok(())
}

/// Copies every entry of directory `src` into directory `dst`.
fn copy_children(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, shown: &Path, to_host: bool, depth: u32) -> Result<()> {
    let dup = nix::unistd::dup(src).map_err(|e| cp_err(shown, e))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| cp_err(shown, e))?;
    let mut names: Vec<OsString> = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(|e| cp_err(shown, e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    names.sort();
    for n in names {
        copy_entry(src, &n, dst, &n, &shown.join(&n), to_host, depth + 1)?;
    }
    Ok(())
}

/// `cp SRC DST`: `CONTAINER:PATH HOSTPATH` or `HOSTPATH CONTAINER:PATH`, docker's rules: a file to an existing
/// directory goes into it, a file elsewhere is written at that name (its parent must exist); a directory to an
/// existing directory goes into it (its content only when the source ends with `/.`), elsewhere it is created
/// with the source's content; `-` as the destination writes a tar of the source to standard output.
pub fn cp(state_root: &Path, src: &str, dst: &str) -> Result<i32> {
    let store = Store::open(state_root)?;
    let (src, dst) = (CpArg::parse(src), CpArg::parse(dst));
    let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
    let (src_root, src_path, dst_root, dst_path) = match (&src, &dst) {
        (CpArg::Container { container, path }, CpArg::Host(h)) => {
            (Some(open_root(&store, container)?), PathBuf::from(path), None, h.clone())
        }
        (CpArg::Host(h), CpArg::Container { container, path }) => {
            (None, h.clone(), Some(open_root(&store, container)?), PathBuf::from(path))
        }
        (CpArg::Container { container, path }, CpArg::Stream) => {
            let root = open_root(&store, container)?;
            return tar_out(root.fd(), Path::new(path)).map(|()| 0);
        }
        (CpArg::Container { .. }, CpArg::Container { .. }) => {
            return bad("copying between containers is not supported");
        }
        _ => return bad("must specify at least one container source"),
    };
    let (sr, dr) = (src_root.as_ref().map(CtrRoot::fd), dst_root.as_ref().map(CtrRoot::fd));
    let to_host = dr.is_none();
    if src_path.as_os_str().is_empty() || dst_path.as_os_str().is_empty() {
        return bad("empty path");
    }
    // The source: its parent directory (resolved, inside the container) and its name, not followed.
    let (sparent, sname) = split(&src_path);
    let sdir = open_at(sr, &sparent, DIR_R.difference(OFlag::O_NOFOLLOW)).map_err(|e| cp_err(&src_path, e))?;
    let sname_or_dot = sname.clone().unwrap_or_else(|| ".".into());
    let sst = nix::sys::stat::fstatat(sdir.as_fd(), sname_or_dot.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| cp_err(&src_path, e))?;
    let src_is_dir = kind(&sst) == SFlag::S_IFDIR;
    // The destination: an existing directory (followed, inside the container) takes the source in it.
    let dst_dir = open_at(dr, &dst_path, DIR_R.difference(OFlag::O_NOFOLLOW));
    match dst_dir {
        Ok(d) => match &sname {
            Some(n) => copy_entry(sdir.as_fd(), n, d.as_fd(), n, &src_path, to_host, 0)?,
            None => {
                let s =
                    nix::fcntl::openat(sdir.as_fd(), ".", DIR_R, Mode::empty()).map_err(|e| cp_err(&src_path, e))?;
                copy_children(s.as_fd(), d.as_fd(), &src_path, to_host, 0)?
            }
        },
        Err(Errno::ENOTDIR) if src_is_dir => {
            return Err(cp_err(&dst_path, "cannot copy a directory to a file"));
        }
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            if dst_path.as_os_str().as_bytes().ends_with(b"/") && !src_is_dir {
                return Err(cp_err(&dst_path, "no such directory"));
            }
            let (dparent, dname) = split(&dst_path);
            let Some(dname) = dname else { return Err(cp_err(&dst_path, "no such directory")) };
            let d = open_at(dr, &dparent, DIR_R.difference(OFlag::O_NOFOLLOW)).map_err(|e| cp_err(&dparent, e))?;
            copy_entry(sdir.as_fd(), &sname_or_dot, d.as_fd(), &dname, &src_path, to_host, 0)?;
        }
        Err(e) => return Err(cp_err(&dst_path, e)),
    }
    Ok(0)
}

/// Writes a tar of container path `path` (under its own name, not followed) to standard output.
fn tar_out(root: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let (parent, name) = split(path);
    let pdir = open_at(Some(root), &parent, DIR_R.difference(OFlag::O_NOFOLLOW)).map_err(|e| cp_err(path, e))?;
    let name = name.unwrap_or_else(|| ".".into());
    let mut b = tar::Builder::new(io::BufWriter::new(io::stdout().lock()));
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    tar_entry(&mut b, pdir.as_fd(), &name, Path::new(&name), 0)?;
    let mut w = b.into_inner().map_err(|e| cp_err(path, e))?;
    w.flush().map_err(|e| Error::io("write to stdout", e))
}

fn tar_entry<W: Write>(
    b: &mut tar::Builder<W>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    at: &Path,
    depth: u32,
) -> Result<()> {
    if depth > 4096 {
        return Err(cp_err(at, "directories nested too deep"));
    }
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| cp_err(at, e))?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    let err = |e: io::Error| cp_err(at, e);
    match kind(&st) {
        SFlag::S_IFDIR => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, at, io::empty()).map_err(err)?;
            let d = nix::fcntl::openat(dir, name, DIR_R, Mode::empty()).map_err(|e| cp_err(at, e))?;
            let mut listing =
                nix::dir::Dir::from_fd(nix::unistd::dup(&d).map_err(|e| cp_err(at, e))?).map_err(|e| cp_err(at, e))?;
            let mut names: Vec<OsString> = listing
                .iter()
                .filter_map(|e| e.ok().map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string()))
                .filter(|n| n != "." && n != "..")
                .collect();
            names.sort();
            for n in names {
                tar_entry(b, d.as_fd(), &n, &at.join(&n), depth + 1)?;
            }
        }
        SFlag::S_IFREG => {
            let f =
                nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| cp_err(at, e))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(st.st_size as u64);
            b.append_data(&mut h, at, io::Read::take(File::from(f), st.st_size as u64)).map_err(err)?;
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(dir, name).map_err(|e| cp_err(at, e))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, at, &target).map_err(err)?;
        }
        SFlag::S_IFSOCK => {}
        k => {
            h.set_entry_type(match k {
                SFlag::S_IFCHR => tar::EntryType::Char,
                SFlag::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            });
            h.set_size(0);
            let dev = st.st_rdev;
            let _ = h.set_device_major(libc::major(dev));
            let _ = h.set_device_minor(libc::minor(dev));
            b.append_data(&mut h, at, io::empty()).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_arguments() {
        let c = |c: &str, p: &str| CpArg::Container { container: c.into(), path: p.into() };
        assert_eq!(CpArg::parse("web:/etc/passwd"), c("web", "/etc/passwd"));
        assert_eq!(CpArg::parse("web:etc"), c("web", "etc"));
        assert_eq!(CpArg::parse("/tmp/a:b"), CpArg::Host("/tmp/a:b".into()));
        assert_eq!(CpArg::parse("./a:b"), CpArg::Host("./a:b".into()));
        assert_eq!(CpArg::parse("file"), CpArg::Host("file".into()));
        assert_eq!(CpArg::parse("-"), CpArg::Stream);
    }

    #[test]
    fn path_split() {
        assert_eq!(split(Path::new("/etc/passwd")), (PathBuf::from("/etc"), Some("passwd".into())));
        assert_eq!(split(Path::new("/etc/")), (PathBuf::from("/"), Some("etc".into())));
        assert_eq!(split(Path::new("/etc/.")), (PathBuf::from("/etc/."), None));
        assert_eq!(split(Path::new("/")), (PathBuf::from("/"), None));
        assert_eq!(split(Path::new("a")), (PathBuf::from("."), Some("a".into())));
    }
}
