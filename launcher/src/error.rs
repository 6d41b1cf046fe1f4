//! Typed errors. [`SetupError`] has one variant per step of the container's setup (it crosses the
//! socket from the container init to the monitor, so it is serializable); [`Error`] is everything else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An errno that serializes as its number and displays as `EPERM: Operation not permitted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.0))
    }
}

/// A step of the container setup that failed, inside the new namespaces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SetupError {
    #[error("wait for the monitor: {0}")]
    Sync(Errno),
    #[error("unshare cgroup namespace: {0}")]
    UnshareCgroup(Errno),
    #[error("unshare network namespace: {0}")]
    UnshareNet(Errno),
    #[error("join the layerfs mount namespace: {0}")]
    JoinRootfs(Errno),
    #[error("unshare the mount namespace: {0}")]
    UnshareMount(Errno),
    #[error("make / rslave: {0}")]
    RootPropagation(Errno),
    #[error("bind rootfs {path}: {errno}")]
    BindRootfs { path: PathBuf, errno: Errno },
    #[error("resolve {path} in the rootfs: {errno}")]
    Resolve { path: PathBuf, errno: Errno },
    #[error("create mount point {path}: {errno}")]
    MountPoint { path: PathBuf, errno: Errno },
    #[error("mount /proc: {0}")]
    MountProc(Errno),
    #[error("mount /dev: {0}")]
    MountDev(Errno),
    #[error("create device {path}: {errno}")]
    Device { path: PathBuf, errno: Errno },
    #[error("create symlink {path}: {errno}")]
    DevSymlink { path: PathBuf, errno: Errno },
    #[error("mount /dev/pts: {0}")]
    MountDevpts(Errno),
    #[error("mount /dev/shm: {0}")]
    MountShm(Errno),
    #[error("mount /dev/mqueue: {0}")]
    MountMqueue(Errno),
    #[error("mount /sys: {0}")]
    MountSys(Errno),
    #[error("mount cgroup {path}: {errno}")]
    MountCgroup { path: PathBuf, errno: Errno },
    #[error("bind {path}: {errno}")]
    BindFile { path: PathBuf, errno: Errno },
    #[error("bind volume {path}: {errno}")]
    Volume { path: PathBuf, errno: Errno },
    #[error("make volume {path} read-only (recursively): {errno}")]
    VolumeReadOnly { path: PathBuf, errno: Errno },
    #[error("mount tmpfs {path}: {errno}")]
    Tmpfs { path: PathBuf, errno: Errno },
    #[error("pivot_root: {0}")]
    PivotRoot(Errno),
    #[error("detach old root: {0}")]
    DetachOldRoot(Errno),
    #[error("mask {path}: {errno}")]
    MaskPath { path: PathBuf, errno: Errno },
    #[error("make {path} read-only: {errno}")]
    ReadonlyPath { path: PathBuf, errno: Errno },
    #[error("remount / read-only: {0}")]
    ReadonlyRoot(Errno),
    #[error("network: {step}: {errno}")]
    Network { step: String, errno: Errno },
    #[error("sethostname: {0}")]
    Hostname(Errno),
    #[error("bring loopback up: {0}")]
    Loopback(Errno),
    #[error("open pty: {0}")]
    OpenPty(Errno),
    #[error("send pty to the monitor: {0}")]
    SendPty(Errno),
    #[error("setsid: {0}")]
    Setsid(Errno),
    #[error("set controlling terminal: {0}")]
    ControllingTty(Errno),
    #[error("set up stdio: {0}")]
    Stdio(Errno),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("chdir to cwd ({path}) set in config: {errno}")]
    Workdir { path: PathBuf, errno: Errno },
    #[error("setgroups: {0}")]
    Setgroups(Errno),
    #[error("setgid: {0}")]
    Setgid(Errno),
    #[error("setuid: {0}")]
    Setuid(Errno),
    #[error("set capabilities: {0}")]
    Capabilities(String),
    #[error("set no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error("fork the command under --init: {0}")]
    InitFork(Errno),
    /// The command does not exist in the container (exit code 127).
    #[error("exec: \"{cmd}\": {reason}")]
    NotFound { cmd: String, reason: String },
    /// The command exists but cannot be executed (exit code 126).
    #[error("exec: \"{cmd}\": {errno}")]
    NotExecutable { cmd: String, errno: Errno },
}

impl SetupError {
    /// docker's exit code for this failure: 127 command not found, 126 not executable, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SetupError::NotFound { .. } => 127,
            SetupError::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("create cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("controller {controller} is not available (cgroup {path})")]
    NoController { controller: String, path: PathBuf },
    #[error(
        "cgroup v2: cannot enable {controllers} in {path}: the launcher's cgroup has processes of its own \
         (no internal processes rule); run it in a delegated cgroup without other processes"
    )]
    NotDelegated { controllers: String, path: PathBuf },
    #[error("resource limits need root on cgroup v1 (rootless on v1 cannot set {0})")]
    RootlessV1(String),
    #[error("remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("{path}: the kernel did not report {value:?} in time")]
    Freeze { path: PathBuf, value: String },
}

/// Errors of the launcher outside the container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("read state of container {id}: {reason}")]
    BadState { id: String, reason: String },
    #[error(
        "Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or \
         rename) that container to be able to reuse that name."
    )]
    NameInUse { name: String, id: String },
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("multiple containers found with provided prefix: {0}")]
    Ambiguous(String),
    #[error(
        "cannot remove container \"{0}\": container is running: stop the container before removing or force remove"
    )]
    RemoveRunning(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("rootfs {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
    #[error(
        "Unable to find image '{name}' locally (store {}): import it with `layertool import SOURCE --tag {name}`",
        store.display()
    )]
    NoSuchImage { name: String, store: PathBuf },
    #[error("image {name}: {reason}")]
    Image { name: String, reason: String },
    #[error("layerfs: {step}: {reason}")]
    Layerfs { step: &'static str, reason: String },
    #[error("cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("network: {step}: {errno}")]
    Network { step: String, errno: Errno },
    #[error("write user namespace id maps with {helper}: {reason}")]
    IdMap { helper: PathBuf, reason: String },
    #[error("{step}: {errno}")]
    Sys { step: &'static str, errno: Errno },
    #[error("{step}: {source}")]
    Io { step: &'static str, source: std::io::Error },
    #[error("the monitor of container {0} exited without reporting")]
    MonitorLost(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("container {container} runs on a directory (--rootfs), not an image: there is no image to {what} against")]
    NoImage { container: String, what: &'static str },
    #[error("{what}: {reason}")]
    Changes { what: &'static str, reason: String },
    #[error(
        "cannot pause container {0}: it has no freezer cgroup (--cgroups=disabled, rootless, or no cgroup v2 and no v1 \
         freezer); commit with --pause=false for a snapshot of the live filesystem"
    )]
    CannotPause(String),
    /// The monitor reported that the container could not start, with docker's exit code.
    #[error("{message}")]
    StartFailed { message: String, code: i32 },
}

impl Error {
    /// Exit code for the `run` command: the setup error's, or 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Setup(e) => e.exit_code(),
            Error::StartFailed { code, .. } => *code,
            _ => 125,
        }
    }

    /// Shorthand for a failed syscall in step `step`.
    pub fn sys(step: &'static str, e: nix::errno::Errno) -> Self {
        Error::Sys { step, errno: e.into() }
    }

    /// Shorthand for a failed I/O operation in step `step`.
    pub fn io(step: &'static str, e: std::io::Error) -> Self {
        Error::Io { step, source: e }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
