//! Thin, safe wrappers over the system calls layerfs needs and `nix` does not cover the way we
//! need them. This is the only module (besides `mapping.rs`) with `unsafe`.
//!
//! Every function takes a directory fd plus one path *component* (never a path built from
//! several components), and never follows a symlink in that component: the upper directory is
//! controlled by the container, so a symlink planted there must never lead the daemon outside it.
//! Extended attributes of an object are reached through `/proc/self/fd/<dirfd>/<name>` with the
//! `l*xattr` calls: the magic link resolves to exactly the directory we hold open, and only the
//! final component is looked up, without following it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A `struct stat`, as the kernel fills it.
pub type Stat = libc::stat;

/// A time to set on a file: seconds and nanoseconds since the epoch, or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// An explicit time.
    At { sec: i64, nsec: u32 },
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_l(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_s(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
}

/// Turns a name component into a C string; a name with a NUL byte is EINVAL.
pub fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: the magic link to an fd we hold.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `/proc/self/fd/DIRFD/NAME`: an object by directory fd and one component.
pub fn proc_child_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    v.extend_from_slice(name.to_bytes());
    CString::new(v).unwrap_or_default()
}

/// Serves allocations of 4 MiB and more with their own mappings, always. glibc's default moves
/// that threshold up to the size of the largest mapped block freed: fuser frees the 16 MiB
/// request buffer of its handshake, after which each worker thread's 16 MiB buffer comes from
/// that thread's malloc arena, which then keeps about 140 KB per thread resident for nothing
/// (0.27 MB of a daemon's 0.55 MB before its first request). Below 4 MiB (read replies of up
/// to 1 MiB among them) freed blocks stay for reuse. Call before starting threads.
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// `openat(dir, name, flags | O_CLOEXEC | O_NOFOLLOW, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string and `dir` a live fd for the duration of the
    // call; on success the kernel returns a new fd that nobody else owns.
    unsafe {
        let fd = cvt(libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Opens the object an fd refers to anew (through `/proc/self/fd/N`), e.g. to get a writable
/// fd from an `O_PATH` one.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_fd_path(fd);
    // SAFETY: `path` is NUL-terminated; the returned fd is new and owned by nobody else.
    unsafe {
        let fd = cvt(libc::open(path.as_ptr(), flags | libc::O_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Opens a relative path strictly beneath `dir`: no `..` escape, no symlinks, no magic links
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`).
pub fn openat_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let mut how: libc::open_how =
        // SAFETY: open_how is a plain C struct for which all-zero is the documented initial value.
        unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `how` is a valid open_how of the size we pass, `path` is NUL-terminated, and the
    // returned fd is new and owned by nobody else.
    unsafe {
        let fd = cvt_l(libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &mut how as *mut libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        ))?;
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty `name` stats `dir` itself.
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut st = std::mem::MaybeUninit::<Stat>::uninit();
    // SAFETY: `st` is valid writable memory of the right size; `name` is NUL-terminated.
    unsafe {
        cvt(libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags))?;
        Ok(st.assume_init())
    }
}

/// `fstat` of any fd, `O_PATH` ones included.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    fstatat(fd, c"")
}

/// `mkdirat`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd and a NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat` (regular files, devices, fifos, sockets, whiteouts).
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd and a NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd and NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat(odir, oname, ndir, nname, 0)`: never follows a symlink at `oname`.
pub fn linkat(odir: BorrowedFd<'_>, oname: &CStr, ndir: BorrowedFd<'_>, nname: &CStr) -> io::Result<()> {
    let flags = if oname.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: plain syscall on live fds and NUL-terminated names.
    cvt(unsafe { libc::linkat(odir.as_raw_fd(), oname.as_ptr(), ndir.as_raw_fd(), nname.as_ptr(), flags) }).map(drop)
}

/// `unlinkat`; `dir_flag` removes a directory.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, dir_flag: bool) -> io::Result<()> {
    let flags = if dir_flag { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on a live fd and a NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2` with `RENAME_*` flags.
pub fn renameat2(odir: BorrowedFd<'_>, oname: &CStr, ndir: BorrowedFd<'_>, nname: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: plain syscall on live fds and NUL-terminated names.
    cvt(unsafe { libc::renameat2(odir.as_raw_fd(), oname.as_ptr(), ndir.as_raw_fd(), nname.as_ptr(), flags) }).map(drop)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` keeps an id. An empty
/// `name` changes `dir` itself (any fd, `O_PATH` included).
pub fn fchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: plain syscall on a live fd and a NUL-terminated name.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// Changes the mode of the object `fd` refers to (any fd, `O_PATH` included, never a symlink:
/// callers check the type first, as the kernel has no chmod for symlinks).
pub fn fchmod_any(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: `path` is a NUL-terminated magic link to an fd we hold.
    cvt(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

fn to_timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(SetTime::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(SetTime::At { sec, nsec }) => libc::timespec { tv_sec: sec, tv_nsec: nsec as i64 },
    }
}

/// `utimensat(dir, name, [atime, mtime], AT_SYMLINK_NOFOLLOW)`; `None` leaves a time alone.
pub fn utimensat(dir: BorrowedFd<'_>, name: &CStr, atime: Option<SetTime>, mtime: Option<SetTime>) -> io::Result<()> {
    let ts = [to_timespec(atime), to_timespec(mtime)];
    if name.is_empty() {
        // `utimensat(fd, NULL)` refuses O_PATH fds: go through the magic link (never a
        // symlink here: callers pass directories and files).
        let path = proc_fd_path(dir);
        // SAFETY: `ts` is a valid two-element array and `path` is NUL-terminated.
        return cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), ts.as_ptr(), 0) }).map(drop);
    }
    // SAFETY: `ts` is a valid two-element array and `name` is NUL-terminated.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// `readlinkat(dir, name)`; an empty name reads an `O_PATH` fd to the symlink itself.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is valid writable memory of `buf.len()` bytes.
        let n = cvt_s(unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() > 1 << 20 {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// Where an extended attribute operation applies.
#[derive(Debug, Clone)]
pub struct XattrPath {
    path: CString,
    follow: bool,
}

impl XattrPath {
    /// The object named `name` in `dir`, not following a symlink there.
    pub fn child(dir: BorrowedFd<'_>, name: &CStr) -> XattrPath {
        if name.is_empty() {
            return XattrPath::fd(dir);
        }
        XattrPath { path: proc_child_path(dir, name), follow: false }
    }

    /// The object an fd refers to (through its magic link).
    pub fn fd(fd: BorrowedFd<'_>) -> XattrPath {
        XattrPath { path: proc_fd_path(fd), follow: true }
    }

    /// A plain path (tests and tools only: the daemon never uses this for the upper).
    pub fn path(path: &std::path::Path) -> XattrPath {
        use std::os::unix::ffi::OsStrExt;
        XattrPath { path: CString::new(path.as_os_str().as_bytes()).unwrap_or_default(), follow: false }
    }
}

/// Reads an extended attribute.
pub fn getxattr(at: &XattrPath, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is valid writable memory of `buf.len()` bytes; strings are NUL-terminated.
        let r = unsafe {
            if at.follow {
                libc::getxattr(at.path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::lgetxattr(at.path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        };
        match cvt_s(r) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 17 => {
                buf.resize(buf.len() * 8, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets an extended attribute (`flags`: `XATTR_CREATE` / `XATTR_REPLACE`).
pub fn setxattr(at: &XattrPath, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `value` is valid for `value.len()` bytes; strings are NUL-terminated.
    cvt(unsafe {
        if at.follow {
            libc::setxattr(at.path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
        } else {
            libc::lsetxattr(at.path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
        }
    })
    .map(drop)
}

/// Lists extended attribute names (NUL-separated, as the kernel returns them).
pub fn listxattr(at: &XattrPath) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `buf` is valid writable memory of `buf.len()` bytes; the path is NUL-terminated.
        let r = unsafe {
            if at.follow {
                libc::listxattr(at.path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::llistxattr(at.path.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        };
        match cvt_s(r) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 1 << 20 => {
                buf.resize(buf.len() * 8, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes an extended attribute.
pub fn removexattr(at: &XattrPath, name: &CStr) -> io::Result<()> {
    // SAFETY: strings are NUL-terminated.
    cvt(unsafe {
        if at.follow {
            libc::removexattr(at.path.as_ptr(), name.as_ptr())
        } else {
            libc::lremovexattr(at.path.as_ptr(), name.as_ptr())
        }
    })
    .map(drop)
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain syscall on a live fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `copy_file_range` with explicit offsets; returns the number of bytes copied.
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> io::Result<usize> {
    let mut oi = off_in as i64;
    let mut oo = off_out as i64;
    // SAFETY: the offsets point to live locals; the fds are live for the call.
    cvt_s(unsafe { libc::copy_file_range(fd_in.as_raw_fd(), &mut oi, fd_out.as_raw_fd(), &mut oo, len, 0) })
}

/// `ioctl(dst, FICLONE, src)`: a reflink of the whole file.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are live.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) }).map(drop)
}

/// `fstatvfs`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is valid writable memory of the right size.
    unsafe {
        cvt(libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()))?;
        Ok(st.assume_init())
    }
}

/// `umount2(path, flags)`.
pub fn umount2(path: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall with a NUL-terminated path.
    cvt(unsafe { libc::umount2(path.as_ptr(), flags) }).map(drop)
}

/// Sets the process umask; returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// The effective uid.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The id of the mount `fd` is on (`mnt_id` of `/proc/self/fdinfo/FD`): two directories on one
/// filesystem but under different mounts (bind mounts) still cannot rename into each other.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
}

fn thread_count() -> io::Result<usize> {
    // The task directory, not /proc/self/status: that one costs more to render.
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// CPUs this process may run on (its affinity mask; `available_parallelism` also reads the
/// cgroup's CPU quota files, which costs more than the answer is worth on a mount's path).
pub fn usable_cpus() -> usize {
    use nix::sched::CpuSet;
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| (0..CpuSet::count()).filter(|&i| set.is_set(i).unwrap_or(false)).count())
        .unwrap_or(2)
}

/// `fork()`, refused (EBUSY) unless the process has exactly one thread: the child then runs
/// Rust code safely. Returns the child's pid in the parent and 0 in the child.
pub fn fork_single_threaded() -> io::Result<libc::pid_t> {
    if thread_count()? != 1 {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: checked just above that the process is single-threaded, so no lock can be held
    // by a thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(pid) }
}

/// Points stdin at /dev/null and stdout/stderr at `log` (or /dev/null).
pub fn redirect_stdio(log: Option<&std::path::Path>) -> io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new().create(true).append(true).open(p)?,
        None => null.try_clone()?,
    };
    // SAFETY: dup2 onto the standard fds with fds we own; the originals stay valid.
    unsafe {
        cvt(libc::dup2(null.as_raw_fd(), 0))?;
        cvt(libc::dup2(out.as_raw_fd(), 1))?;
        cvt(libc::dup2(out.as_raw_fd(), 2))?;
    }
    Ok(())
}

/// `setsid()`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for two fds; on success both are new and owned by us.
    unsafe {
        cvt(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Takes ownership of descriptor `fd`, inherited from the parent for a readiness notice
/// (`ready_fd=`): checks that it is open and marks it close-on-exec, so that nothing the
/// daemon spawns inherits it. Call before opening anything else, so that the number cannot
/// name one of our own descriptors.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags (EBADF when it is not open).
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: F_SETFD only sets the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the descriptor is open (checked above), was inherited across exec for this
    // purpose, and nothing else in this process refers to it: we own it from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (best effort).
pub fn raise_nofile_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid rlimit struct for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Whether `path` is a mount point of a FUSE filesystem (`statfs` magic).
pub fn is_fuse_mount(path: &CStr) -> io::Result<bool> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is valid writable memory of the right size; the path is NUL-terminated.
    unsafe {
        cvt(libc::statfs(path.as_ptr(), st.as_mut_ptr()))?;
        Ok(st.assume_init().f_type == FUSE_SUPER_MAGIC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn stat_and_xattr_through_dirfd() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        mknodat(d.as_fd(), c"f", libc::S_IFREG | 0o600, 0).unwrap();
        let st = fstatat(d.as_fd(), c"f").unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        let at = XattrPath::child(d.as_fd(), c"f");
        setxattr(&at, c"user.k", b"v", 0).unwrap();
        assert_eq!(getxattr(&at, c"user.k").unwrap(), b"v");
        assert!(listxattr(&at).unwrap().starts_with(b"user.k\0"));
        symlinkat(c"/etc/passwd", d.as_fd(), c"l").unwrap();
        assert_eq!(readlinkat(d.as_fd(), c"l").unwrap(), b"/etc/passwd");
        // O_NOFOLLOW: opening a symlink fails instead of following it.
        assert!(openat(d.as_fd(), c"l", libc::O_RDONLY, 0).is_err());
        assert!(openat_beneath(d.as_fd(), c"../x", libc::O_RDONLY).is_err());
    }
}
