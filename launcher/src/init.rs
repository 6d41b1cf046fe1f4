//! The container side: what the cloned process does inside its new namespaces before it becomes the
//! container's command (or, with `--init`, its PID 1 reaper).
//!
//! It runs in a child cloned from the single-threaded monitor, so running Rust code here is safe. Every
//! failure is sent to the monitor as a [`SetupError`] naming the step; a successful `execve` closes the
//! close-on-exec socket, which the monitor reads as "started".

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::capabilities;
use crate::config::{ContainerConfig, env_get};
use crate::error::SetupError;
use crate::mounts::{self, MountPlan};
use crate::network::{self, Attachment};
use crate::proto::{self, ChildMsg};
use crate::sys::{self, LinuxSys};
use crate::user;

/// The container's standard streams.
pub enum Stdio {
    /// Pipes: the container's ends, and the monitor's ends (closed right away in the child).
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd, monitor_ends: Vec<OwnedFd> },
    /// A pty made inside the container, its master sent to the monitor.
    Tty,
}

/// Everything the container side needs.
pub struct Child<'a> {
    pub cfg: &'a ContainerConfig,
    pub plan: MountPlan,
    /// The container's end of the handshake socket.
    pub sock: OwnedFd,
    pub stdio: Stdio,
    pub new_netns: bool,
    /// Create that network namespace here (`unshare`) rather than at the clone: its creation (~0.5 ms) then
    /// overlaps with the monitor's work instead of delaying the monitor's clone (not with `--net bridge`, whose
    /// veth the monitor moves into the namespace right after the clone).
    pub unshare_net: bool,
    /// `--net bridge`: configure `eth0` (the monitor created it before releasing us).
    pub network: Option<&'a Attachment>,
    pub cgroupns: bool,
}

/// Runs the container side; never returns.
pub fn run(child: Child<'_>) -> ! {
    let err = match setup_and_exec(&child) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = proto::send_child(child.sock.as_fd(), &ChildMsg::Failed(err.clone()), &[]);
    sys::exit_now(err.exit_code())
}

enum Never {}

fn setup_and_exec(child: &Child<'_>) -> Result<Never, SetupError> {
    let cfg = child.cfg;
    // A container whose monitor died during setup has nobody to report to.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let null = || std::fs::File::open("/dev/null").map(OwnedFd::from);
    if let Stdio::Pipes { stdin, stdout, stderr, .. } = &child.stdio {
        let stdin_fd = match stdin {
            Some(fd) => fd.try_clone().map_err(|e| SetupError::Stdio(e.into()))?,
            None => null().map_err(|e| SetupError::Stdio(e.into()))?,
        };
        nix::unistd::dup2_stdin(&stdin_fd).map_err(|e| SetupError::Stdio(e.into()))?;
        nix::unistd::dup2_stdout(stdout).map_err(|e| SetupError::Stdio(e.into()))?;
        nix::unistd::dup2_stderr(stderr).map_err(|e| SetupError::Stdio(e.into()))?;
    }
    // The monitor's ends of the pipes (and everything else inherited) must not stay open in here: a
    // copy of the stdin write end would keep the command from ever seeing EOF.
    let keep = [child.sock.as_raw_fd()];
    sys::close_all_from(3, &keep);
    if child.unshare_net {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| SetupError::UnshareNet(e.into()))?;
    }

    // As root, the mounts overlap with the monitor moving us into our cgroup (a cgroup v1 migration waits
    // for an RCU grace period: milliseconds). Rootless, the id maps must be written before we can create
    // anything, so wait first.
    //
    // A layerfs root is mounted by a daemon in a mount namespace of its own: GO carries that namespace once the
    // mount is live; we join it and unshare a copy (so the mount is ours, and nothing we mount goes back).
    let mut k = LinuxSys;
    let layerfs = cfg.rootfs.layerfs().is_some();
    let early_go = cfg.rootless || layerfs;
    if early_go {
        let fds = wait_go(child)?;
        if layerfs {
            let ns = fds.first().ok_or(SetupError::JoinRootfs(Errno::EBADF.into()))?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNS).map_err(|e| SetupError::JoinRootfs(e.into()))?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| SetupError::UnshareMount(e.into()))?;
        }
    }
    mounts::prepare_root(&mut k, &child.plan)?;
    mounts::pivot(&mut k, &child.plan)?;
    mounts::finish_root(&mut k, &child.plan)?;
    if !early_go {
        wait_go(child)?;
    }
    if child.cgroupns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| SetupError::UnshareCgroup(e.into()))?;
    }
    mounts::mount_cgroups(&mut k, &child.plan, Path::new("/sys/fs/cgroup"))?;
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| SetupError::Hostname(e.into()))?;
    if child.new_netns {
        sys::interface_up("lo").map_err(|e| SetupError::Loopback(e.into()))?;
    }
    if let Some(att) = child.network {
        network::configure_container(att).map_err(|(step, e)| SetupError::Network { step, errno: e.into() })?;
    }
    if let Stdio::Tty = child.stdio {
        setup_tty(child)?;
    } else {
        nix::unistd::setsid().map_err(|e| SetupError::Setsid(e.into()))?;
    }

    let resolved = if layerfs { wait_user(child)? } else { None };
    let user = match resolved {
        Some(u) => u,
        None => {
            let passwd = user::read_db(Path::new("/etc/passwd"));
            let group = user::read_db(Path::new("/etc/group"));
            user::resolve(cfg.user.as_deref(), &passwd, &group)?
        }
    };
    let mut env = cfg.env.clone();
    if env_get(&env, "HOME").is_none() {
        env.push(format!("HOME={}", user.home));
    }
    let cwd = Path::new(&cfg.cwd);
    if let Err(e) = nix::unistd::chdir(cwd) {
        // docker creates a missing working directory.
        if e != Errno::ENOENT || std::fs::create_dir_all(cwd).is_err() {
            return Err(SetupError::Workdir { path: cwd.into(), errno: e.into() });
        }
        nix::unistd::chdir(cwd).map_err(|e| SetupError::Workdir { path: cwd.into(), errno: e.into() })?;
    }
    let argv0 = cfg.args.first().cloned().unwrap_or_default();
    let path = lookup(&argv0, env_get(&env, "PATH").unwrap_or(""))?;

    capabilities::limit_bounding(&cfg.caps)?;
    // setgroups is denied in a single-id user namespace (no other group exists there anyway).
    if !cfg.rootless || cfg.userns.as_ref().is_some_and(|ns| ns.is_full()) {
        let groups: Vec<nix::unistd::Gid> = user.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| SetupError::Setgroups(e.into()))?;
    }
    nix::unistd::setresgid(user.gid.into(), user.gid.into(), user.gid.into())
        .map_err(|e| SetupError::Setgid(e.into()))?;
    nix::unistd::setresuid(user.uid.into(), user.uid.into(), user.uid.into())
        .map_err(|e| SetupError::Setuid(e.into()))?;
    capabilities::apply(&cfg.caps, user.uid)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| SetupError::NoNewPrivs(e.into()))?;

    let cpath = sys::cpath(&path).map_err(|_| not_found(&argv0, "invalid path"))?;
    let argv: Vec<CString> = cfg
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| not_found(a, "argument contains a NUL byte")))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().filter_map(|e| CString::new(e.as_bytes()).ok()).collect();

    if cfg.init {
        return reaper(child, &cpath, &argv, &envp);
    }
    sys::reset_signals();
    let _ = sys::cloexec_from(3);
    let errno = sys::execve(&cpath, &argv, &envp);
    Err(exec_error(&argv0, errno))
}

/// Waits until the monitor placed us in the cgroup (and mapped our ids, and the root filesystem is mounted);
/// returns the descriptors GO carried (the layerfs daemon's mount namespace).
fn wait_go(child: &Child<'_>) -> Result<Vec<OwnedFd>, SetupError> {
    let mut b = [0u8; 1];
    match proto::recv(child.sock.as_fd(), &mut b) {
        Ok((1, fds)) if b[0] == proto::GO => Ok(fds),
        Ok(_) => sys::exit_now(125),
        Err(e) => Err(SetupError::Sync(e.into())),
    }
}

/// On a layerfs root: the user the monitor resolved from the image, if it could (see `user::read_image_dbs`).
fn wait_user(child: &Child<'_>) -> Result<Option<user::User>, SetupError> {
    let mut b = vec![0u8; 1 + proto::MAX_USER_MSG];
    match proto::recv(child.sock.as_fd(), &mut b) {
        Ok((n, _)) if n >= 1 && b[0] == proto::USER => Ok(serde_json::from_slice(&b[1..n]).ok()),
        Ok(_) => sys::exit_now(125),
        Err(e) => Err(SetupError::Sync(e.into())),
    }
}

fn not_found(cmd: &str, reason: &str) -> SetupError {
    SetupError::NotFound { cmd: cmd.into(), reason: reason.into() }
}

fn exec_error(cmd: &str, errno: Errno) -> SetupError {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => not_found(cmd, "no such file or directory"),
        e => SetupError::NotExecutable { cmd: cmd.into(), errno: e.into() },
    }
}

/// Finds the command like `execvp` does (in the container: we are after pivot_root), with docker's errors.
pub fn lookup(cmd: &str, path_var: &str) -> Result<PathBuf, SetupError> {
    if cmd.is_empty() {
        return Err(not_found(cmd, "no command specified"));
    }
    let check = |p: &Path| -> Result<(), Errno> {
        let md = std::fs::metadata(p).map_err(sys::io_errno)?;
        if md.is_dir() || md.permissions().mode() & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        Ok(())
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match check(&p) {
            Ok(()) => Ok(p),
            Err(e) => Err(exec_error(cmd, e)),
        };
    }
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(cmd);
        match check(&p) {
            Ok(()) => return Ok(p),
            Err(Errno::EACCES) if p.exists() => {
                denied.get_or_insert(p);
            }
            Err(_) => {}
        }
    }
    match denied {
        Some(_) => Err(SetupError::NotExecutable { cmd: cmd.into(), errno: Errno::EACCES.into() }),
        None => Err(not_found(cmd, "executable file not found in $PATH")),
    }
}

/// Opens a pty from the container's own devpts, sends the master to the monitor, and makes the slave
/// the standard streams (and, without `--init`, the controlling terminal of a new session).
fn setup_tty(child: &Child<'_>) -> Result<(), SetupError> {
    let err = |e: Errno| SetupError::OpenPty(e.into());
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(err)?;
    nix::pty::grantpt(&master).map_err(err)?;
    nix::pty::unlockpt(&master).map_err(err)?;
    let name = nix::pty::ptsname_r(&master).map_err(err)?;
    let slave: OwnedFd = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(|e| SetupError::OpenPty(e.into()))?
        .into();
    if let Some(ws) = child.cfg.winsize {
        sys::set_winsize(slave.as_fd(), ws).map_err(err)?;
    }
    proto::send_child(child.sock.as_fd(), &ChildMsg::PtyMaster, &[master.as_raw_fd()])
        .map_err(|e| SetupError::SendPty(e.into()))?;
    drop(master);
    nix::unistd::setsid().map_err(|e| SetupError::Setsid(e.into()))?;
    if !child.cfg.init {
        sys::set_controlling_tty(slave.as_fd()).map_err(|e| SetupError::ControllingTty(e.into()))?;
    }
    nix::unistd::dup2_stdin(&slave).map_err(|e| SetupError::Stdio(e.into()))?;
    nix::unistd::dup2_stdout(&slave).map_err(|e| SetupError::Stdio(e.into()))?;
    nix::unistd::dup2_stderr(&slave).map_err(|e| SetupError::Stdio(e.into()))?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

/// `--init`: fork the command, then stay PID 1: reap every zombie, forward every signal to the command,
/// and exit with the command's status (128+signal when it was killed).
fn reaper(child: &Child<'_>, path: &CString, argv: &[CString], envp: &[CString]) -> Result<Never, SetupError> {
    let all = SigSet::all();
    let _ = sys::block_signals(&all);
    match sys::fork().map_err(|e| SetupError::InitFork(e.into()))? {
        nix::unistd::ForkResult::Child => {
            if child.cfg.tty {
                // Our own session with the pty as controlling terminal, so job control and ^C work.
                let _ = nix::unistd::setsid();
                let _ = sys::set_controlling_tty(std::io::stdin().as_fd());
            }
            sys::reset_signals();
            let _ = sys::cloexec_from(3);
            let errno = sys::execve(path, argv, envp);
            let code = exec_error(&child.cfg.args[0], errno).exit_code();
            sys::exit_now(code)
        }
        nix::unistd::ForkResult::Parent { child: pid } => {
            // Started: close the handshake socket so that the monitor sees EOF.
            sys::close_all_from(3, &[]);
            sys::exit_now(reap_until(pid, &all))
        }
    }
}

fn reap_until(main: Pid, set: &SigSet) -> i32 {
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(main, sig);
            continue;
        }
        loop {
            match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == main => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_errors_are_dockers() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = tmp.path().join("data");
        std::fs::write(&plain, "x").unwrap();
        let path = format!("/nonexistent:{}", tmp.path().display());
        assert_eq!(lookup("tool", &path).unwrap(), exe);
        let e = lookup("nope", &path).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        assert_eq!(e.to_string(), "exec: \"nope\": executable file not found in $PATH");
        assert_eq!(lookup("data", &path).unwrap_err().exit_code(), 126);
        assert_eq!(lookup(plain.to_str().unwrap(), "").unwrap_err().exit_code(), 126);
        assert_eq!(lookup(tmp.path().to_str().unwrap(), "").unwrap_err().exit_code(), 126);
        assert_eq!(lookup("/no/such", "").unwrap_err().exit_code(), 127);
    }
}
