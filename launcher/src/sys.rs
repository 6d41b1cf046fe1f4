//! The only module with `unsafe`: thin wrappers over syscalls that neither std nor nix wraps safely, and
//! the [`Syscalls`] seam between the mount logic and the kernel (with a recording fake for unit tests).
//!
//! Every `unsafe` block carries a `// SAFETY:` comment. Wrappers return `nix::Result` so errno stays intact.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// Result of [`clone3`]: which side of the clone we are on.
pub enum CloneResult {
    /// In the new process.
    Child,
    /// In the caller: the child's pid (as seen from here) and a pidfd for it.
    Parent { pid: i32, pidfd: OwnedFd },
}

/// `struct clone_args` of `clone3(2)` (third version, 88 bytes: up to `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (libc's constant is an overflowing `c_int`).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Size of the first version of `struct clone_args` (no `set_tid`, no `cgroup`), for kernels before 5.7.
const CLONE_ARGS_SIZE_VER0: usize = 64;

/// Number of threads of this process (from `/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// Fails with `EDEADLK` when this process has more than one thread: forking then and running Rust code in the
/// child could deadlock on a lock (malloc, stdio) held by a thread that does not exist in the child.
pub fn ensure_single_threaded() -> nix::Result<()> {
    if thread_count() > 1 {
        return Err(Errno::EDEADLK);
    }
    Ok(())
}

/// `clone3(CLONE_PIDFD | flags)` like `fork`, the child continuing on a copy of the caller's stack. With
/// `cgroup` (a directory of a cgroup v2 hierarchy), `CLONE_INTO_CGROUP`: the child starts in that cgroup, with
/// no migration afterwards (a migration takes the cgroup threadgroup lock for writing: an RCU grace period).
///
/// Fails with `EDEADLK` when the process has more than one thread (see [`ensure_single_threaded`]).
pub fn clone3(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> nix::Result<CloneResult> {
    ensure_single_threaded()?;
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    let mut size = CLONE_ARGS_SIZE_VER0;
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
        size = std::mem::size_of::<CloneArgs>();
    }
    // SAFETY: the process is single-threaded (checked above), so the child starts with a consistent copy of
    // the whole address space, like after fork(2); no stack is given, so the child runs on its copy of the
    // caller's stack. `args` outlives the call and `size` never exceeds its size; `cgroup` is a descriptor the
    // caller keeps open for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(CloneResult::Child),
        pid => Ok(CloneResult::Parent {
            pid: pid as i32,
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned file descriptor in `pidfd`.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// `fork(2)`, refused (`EDEADLK`) in a multi-threaded process.
pub fn fork() -> nix::Result<nix::unistd::ForkResult> {
    ensure_single_threaded()?;
    // SAFETY: the process is single-threaded (checked above), so no lock can be held by a thread that would
    // be missing in the child.
    unsafe { nix::unistd::fork() }
}

/// Takes ownership of a descriptor the kernel just installed for us (`recvmsg` with `SCM_RIGHTS`, `accept4`).
///
/// Only for descriptors fresh from the kernel that nothing else owns (crate-internal for that reason).
pub(crate) fn adopt_received_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: by contract the descriptor was just installed by the kernel for this call site and has no
    // other owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// `_exit(2)`: leaves at once, without running atexit handlers or destructors (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns; skipping destructors is the point.
    unsafe { libc::_exit(code) }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: on success pidfd_open returns a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> nix::Result<()> {
    // SAFETY: plain syscall; a null siginfo is allowed and means "as kill(2)".
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    Errno::result(ret).map(drop)
}

/// Marks every descriptor from `first` on close-on-exec (`close_range(2)` with `CLOSE_RANGE_CLOEXEC`).
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: plain syscall with integer arguments; it only sets flags on descriptors.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    Errno::result(ret).map(drop)
}

/// Closes every descriptor from `first` on, except those in `keep`.
pub fn close_all_from(first: RawFd, keep: &[RawFd]) {
    let mut fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => return,
    };
    fds.retain(|fd| *fd >= first && !keep.contains(fd));
    for fd in fds {
        // SAFETY: closing a descriptor number does not touch memory; descriptors owned by live Rust objects
        // are in `keep` by contract of the caller (the read_dir descriptor is already closed and harmless).
        unsafe { libc::close(fd) };
    }
}

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// `TIOCGWINSZ`.
pub fn get_winsize(fd: BorrowedFd<'_>) -> nix::Result<WinSize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` to the pointer, which points to a live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    Errno::result(ret)?;
    Ok(WinSize { rows: ws.ws_row, cols: ws.ws_col })
}

/// `TIOCSWINSZ`.
pub fn set_winsize(fd: BorrowedFd<'_>, size: WinSize) -> nix::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to a live local.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    Errno::result(ret).map(drop)
}

/// `TIOCSCTTY`: make the terminal the controlling terminal of this (session leader) process.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(ret).map(drop)
}

/// Brings a network interface up with `SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket.
pub fn interface_up(name: &str) -> nix::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(Errno::EINVAL);
    }
    // SAFETY: plain syscall; the result is checked and wrapped into an OwnedFd right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let sock = Errno::result(sock)?;
    // SAFETY: `sock` is a new descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags into the live `ifreq`.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq) };
    Errno::result(ret)?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and the flags from the live `ifreq`.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req as *const libc::ifreq) };
    Errno::result(ret).map(drop)
}

/// Blocks `set` in this thread (the whole process: it is single-threaded) and returns the previous mask.
pub fn block_signals(set: &nix::sys::signal::SigSet) -> nix::Result<nix::sys::signal::SigSet> {
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(set), Some(&mut old))?;
    Ok(old)
}

/// Resets every catchable signal to its default disposition and unblocks all signals: the state a new
/// program should start with (inherited `SIG_IGN` would otherwise survive exec).
pub fn reset_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL never runs a Rust handler, so no handler-safety rules apply.
        let _ = unsafe { nix::sys::signal::sigaction(sig, &dfl) };
    }
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Ignores `SIGPIPE` (writes to closed pipes then fail with `EPIPE` instead of killing us).
pub fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal};
    // SAFETY: SIG_IGN runs no handler code.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Flags of the mount that holds `path`, as `MS_*` flags suitable for a bind remount (`statvfs`).
pub fn mount_flags_of(path: &Path) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path)?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Ok(out)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY` (not in libc yet).
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `mount_setattr(path, AT_RECURSIVE, MOUNT_ATTR_RDONLY)`: the mount at `path` and every mount below it become
/// read-only in one step (Linux 5.12+), unlike a `MS_REMOUNT|MS_BIND|MS_RDONLY` that only changes the top one.
pub fn mount_setattr_rdonly_recursive(path: &Path) -> nix::Result<()> {
    let c = cpath(path)?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: `c` is a NUL-terminated path and `attr` a live `struct mount_attr` whose exact size is passed;
    // the kernel only reads both.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CString, argv: &[CString], envp: &[CString]) -> Errno {
    match nix::unistd::execve(path, argv, envp) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Converts a path to a C string (paths with NUL bytes cannot name files: `EINVAL`).
pub fn cpath(p: &Path) -> nix::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// What a path is, for the mount logic (from `lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    Other,
}

/// The syscalls the mount sequence uses. [`LinuxSys`] is the kernel; [`RecordingSys`] records the calls
/// for unit tests and answers file lookups from a table.
pub trait Syscalls {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    fn mkdir_all(&mut self, path: &Path, mode: u32) -> nix::Result<()>;
    /// Creates an empty regular file if nothing exists at `path`.
    fn touch(&mut self, path: &Path) -> nix::Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()>;
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()>;
    /// `lstat` reduced to a kind; `None` when nothing is there.
    fn kind(&mut self, path: &Path) -> Option<FileKind>;
    /// `stat` (symlinks followed) reduced to a kind; `None` when nothing is there.
    fn kind_follow(&mut self, path: &Path) -> Option<FileKind>;
    /// `readlink`.
    fn readlink(&mut self, path: &Path) -> nix::Result<PathBuf>;
    /// Makes the mount at `path` and every mount below it read-only (see [`mount_setattr_rdonly_recursive`]).
    fn make_readonly_recursive(&mut self, path: &Path) -> nix::Result<()>;
    /// Flags of the mount holding `path` (see [`mount_flags_of`]).
    fn mount_flags(&mut self, path: &Path) -> nix::Result<MsFlags>;
}

/// The real kernel.
pub struct LinuxSys;

impl Syscalls for LinuxSys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(src, target, fstype, flags, data)
    }
    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }
    fn mkdir_all(&mut self, path: &Path, mode: u32) -> nix::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(io_errno)
    }
    fn touch(&mut self, path: &Path) -> nix::Result<()> {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_errno(e)),
        }
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()> {
        use nix::sys::stat::{Mode, SFlag};
        nix::sys::stat::mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )?;
        // mknod honours the umask: set the mode exactly.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
    fn kind(&mut self, path: &Path) -> Option<FileKind> {
        let md = std::fs::symlink_metadata(path).ok()?;
        let ft = md.file_type();
        Some(if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        })
    }
    fn kind_follow(&mut self, path: &Path) -> Option<FileKind> {
        let ft = std::fs::metadata(path).ok()?.file_type();
        Some(if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        })
    }
    fn readlink(&mut self, path: &Path) -> nix::Result<PathBuf> {
        std::fs::read_link(path).map_err(io_errno)
    }
    fn make_readonly_recursive(&mut self, path: &Path) -> nix::Result<()> {
        mount_setattr_rdonly_recursive(path)
    }
    fn mount_flags(&mut self, path: &Path) -> nix::Result<MsFlags> {
        mount_flags_of(path)
    }
}

/// The errno of an `io::Error` (`EIO` when it has none).
pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// One recorded call of [`RecordingSys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount { src: Option<PathBuf>, target: PathBuf, fstype: Option<String>, flags: MsFlags, data: Option<String> },
    Umount { target: PathBuf, flags: MntFlags },
    PivotRoot { new_root: PathBuf, put_old: PathBuf },
    Chdir(PathBuf),
    MkdirAll(PathBuf),
    Touch(PathBuf),
    Symlink { target: PathBuf, link: PathBuf },
    Mknod { path: PathBuf, major: u64, minor: u64 },
    ReadonlyRecursive(PathBuf),
}

/// A fake kernel for unit tests: records every call, answers lookups from `files`, and fails the calls
/// whose target is listed in `fail`.
pub struct RecordingSys {
    pub calls: Vec<Call>,
    /// Known paths and their kinds (anything else does not exist).
    pub files: std::collections::HashMap<PathBuf, FileKind>,
    /// Symlink targets for paths of kind `Symlink`.
    pub links: std::collections::HashMap<PathBuf, PathBuf>,
    /// Mount targets whose mount fails, with the errno to fail with.
    pub fail: std::collections::HashMap<PathBuf, Errno>,
    /// Flags reported by `mount_flags`.
    pub flags: MsFlags,
}

impl Default for RecordingSys {
    fn default() -> Self {
        RecordingSys {
            calls: Vec::new(),
            files: Default::default(),
            links: Default::default(),
            fail: Default::default(),
            flags: MsFlags::empty(),
        }
    }
}

impl RecordingSys {
    /// The calls that are mounts, as `(target, fstype)` pairs, for compact assertions.
    pub fn mounts(&self) -> Vec<(String, String)> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, fstype, src, .. } => Some((
                    target.display().to_string(),
                    fstype
                        .clone()
                        .unwrap_or_else(|| src.as_ref().map(|s| format!("bind:{}", s.display())).unwrap_or_default()),
                )),
                _ => None,
            })
            .collect()
    }
}

impl Syscalls for RecordingSys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.calls.push(Call::Mount {
            src: src.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        match self.fail.get(target) {
            Some(e) => Err(*e),
            None => Ok(()),
        }
    }
    fn umount2(&mut self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.calls.push(Call::Umount { target: target.to_path_buf(), flags });
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.calls.push(Call::PivotRoot { new_root: new_root.to_path_buf(), put_old: put_old.to_path_buf() });
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        self.calls.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mkdir_all(&mut self, path: &Path, _mode: u32) -> nix::Result<()> {
        self.calls.push(Call::MkdirAll(path.to_path_buf()));
        self.files.insert(path.to_path_buf(), FileKind::Dir);
        Ok(())
    }
    fn touch(&mut self, path: &Path) -> nix::Result<()> {
        self.calls.push(Call::Touch(path.to_path_buf()));
        self.files.entry(path.to_path_buf()).or_insert(FileKind::File);
        Ok(())
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
        self.calls.push(Call::Symlink { target: target.to_path_buf(), link: link.to_path_buf() });
        Ok(())
    }
    fn mknod_char(&mut self, path: &Path, _mode: u32, major: u64, minor: u64) -> nix::Result<()> {
        self.calls.push(Call::Mknod { path: path.to_path_buf(), major, minor });
        Ok(())
    }
    fn kind(&mut self, path: &Path) -> Option<FileKind> {
        self.files.get(path).copied()
    }
    fn kind_follow(&mut self, path: &Path) -> Option<FileKind> {
        self.files.get(path).copied()
    }
    fn readlink(&mut self, path: &Path) -> nix::Result<PathBuf> {
        self.links.get(path).cloned().ok_or(Errno::EINVAL)
    }
    fn make_readonly_recursive(&mut self, path: &Path) -> nix::Result<()> {
        self.calls.push(Call::ReadonlyRecursive(path.to_path_buf()));
        Ok(())
    }
    fn mount_flags(&mut self, _path: &Path) -> nix::Result<MsFlags> {
        Ok(self.flags)
    }
}
