//! The per-container monitor (conmon's job): a process forked from the CLI (no exec) that starts the
//! container and stays its parent. It owns the pty master or the pipes, writes the log, serves the attach
//! socket, waits on the container through a pidfd, records the exit (exit file + `state.json`), and cleans
//! up the cgroup and the root filesystem. It runs in its own session, so a detached container survives the
//! CLI and the CLI's terminal.
//!
//! Process rules: the monitor is single-threaded; every signal it cares about is blocked before the clone
//! (a fast child's SIGCHLD cannot be lost: we wait on the pidfd anyway); it never runs code that a
//! multi-threaded fork would make unsafe.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};

use crate::cgroups::{Cgroup, Layout};
use crate::config::{CgroupMode, ContainerConfig, NetMode};
use crate::error::CgroupError;
use crate::error::{Error, Result};
use crate::idmap::UserNs;
use crate::init::{self, Stdio};
use crate::logs::{LOG_FILE, LogWriter, Stream};
use crate::mounts::{DevMode, MountPlan};
use crate::network::{self, Attachment};
use crate::proto::{self, ChildMsg, ExitInfo, Frame};
use crate::rootfs::{LayerfsDirs, PreparedRoot};
use crate::state::{LayerfsState, State, Status, Store, now_rfc3339, process_start_time};
use crate::sys::{self, CloneResult};
use crate::user;

/// Name of the attach socket in the state directory.
pub const ATTACH_SOCKET: &str = "attach";
/// Name of the exit file (decimal exit code) in the state directory.
pub const EXIT_FILE: &str = "exit";

/// Signals the CLI forwards to the container (all but SIGCHLD, SIGWINCH, the synchronous faults and the
/// ones that cannot be caught). Blocked in the CLI before the monitor is forked, and so in the monitor.
pub fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal::*;
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [
        SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU,
        SIGURG, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGIO, SIGPWR,
    ] {
        set.add(s);
    }
    set
}

/// Creates the container's state directory and forks its monitor. Returns the CLI's end of a socket
/// connected to the monitor: the first frame is `Started` or `Failed`, then (unless the CLI goes away)
/// the container's output and finally `Exit`.
pub fn spawn(store: &Store, cfg: ContainerConfig) -> Result<OwnedFd> {
    sys::ensure_single_threaded().map_err(|e| Error::sys("fork the monitor", e))?;
    let dir = store.create(&cfg.id, &cfg.name)?;
    let mut state = State::new(cfg.clone());
    if cfg.rootfs.layerfs().is_some() {
        state.layerfs = Some(LayerfsState {
            dirs: LayerfsDirs::new(&store.root, &dir),
            daemon_pid: None,
            daemon_start: None,
            daemon_end: None,
        });
    }
    store.save(&state)?;
    let (cli, mon) = proto::socketpair().map_err(|e| Error::sys("socketpair", e))?;
    match sys::fork().map_err(|e| Error::sys("fork the monitor", e))? {
        nix::unistd::ForkResult::Child => {
            drop(cli);
            let code = monitor_main(store, state, &dir, mon);
            sys::exit_now(code)
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(mon);
            Ok(cli)
        }
    }
}

fn monitor_main(store: &Store, mut state: State, dir: &Path, birth: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    sys::close_all_from(3, &[birth.as_raw_fd()]);
    sys::ignore_sigpipe();
    let mut block = forwarded_signals();
    block.add(nix::sys::signal::Signal::SIGCHLD);
    let _ = sys::block_signals(&block);
    // As root the layerfs daemon starts first thing: it mounts while we record our pid and clone the container
    // (rootless it needs the container's user namespace: started after the clone).
    let root = state.config.rootfs.prepare(&LayerfsDirs::new(&store.root, dir), state.config.rootless);

    let me = std::process::id() as i32;
    state.monitor_pid = Some(me);
    state.monitor_start = process_start_time(me);
    let _ = store.save(&state);

    let started = match root.and_then(|root| start(store, &state.config, dir, root)) {
        Ok(s) => s,
        Err(e) => {
            let code = e.exit_code();
            state.status = Status::Exited;
            state.error = Some(e.to_string());
            state.exit_code = Some(code);
            state.finished_at = Some(now_rfc3339());
            let _ = std::fs::write(dir.join(EXIT_FILE), code.to_string());
            let _ = store.save(&state);
            if state.config.remove {
                let _ = store.bury(&state);
                let _ = store.remove_as(&state.id, &state.name, state.config.userns.as_ref());
            }
            // Report last: when the CLI returns, nothing of the container is left to race with.
            let _ = proto::send_frame(birth.as_fd(), &Frame::Failed { message: e.to_string(), code });
            return code;
        }
    };
    state.status = Status::Running;
    state.pid = Some(started.pid);
    if let (Some(l), Some(d)) = (state.layerfs.as_mut(), started.root.as_ref().and_then(|r| r.daemon.as_ref())) {
        l.daemon_pid = Some(d.pid);
        l.daemon_start = process_start_time(d.pid);
    }
    state.started_at = Some(now_rfc3339());
    state.cgroup = started.cgroup.clone();
    state.network = started.network.clone();
    // Listen before anyone learns that the container runs: `stop` right after `run -d` must find the socket.
    let listener = socket_path(dir, ATTACH_SOCKET).and_then(|(_keep, p)| UnixSeqpacket::bind(&p)).ok();
    let _ = store.save(&state);
    let _ = proto::send_frame(birth.as_fd(), &Frame::Started { pid: started.pid });

    let mut clients = vec![Client::new(birth, true)];
    let mut started = started;
    let stdin = started.stdin.take();
    let outputs = std::mem::take(&mut started.outputs);
    let (info, daemon_died) = serve(&state.config, dir, &started, listener, stdin, outputs, &mut clients);
    // The container is gone (its pid namespace with it): stop the filesystem before anyone hears of the exit,
    // so that a `wait` or `run --rm` that returns finds no mount and no daemon left. The daemon unmounts and
    // exits while we clean up; a container that stays records how it ended (so it is waited for first), with
    // `--rm` that record is thrown away: the wait comes last, just before the exit is reported.
    let mut root = started.root.take();
    if let Some(r) = root.as_mut() {
        r.request_stop();
    }
    let mut stop_daemon = |state: &mut State| {
        if let Some(end) = root.take().and_then(PreparedRoot::release)
            && let Some(l) = state.layerfs.as_mut()
        {
            l.daemon_end = Some(end);
        }
    };
    if !state.config.remove {
        stop_daemon(&mut state);
    }
    if let Some(status) = daemon_died {
        state.error = Some(format!(
            "the layerfs daemon serving the root filesystem ended while the container ran ({status}); the container \
             was killed"
        ));
    }

    // The cgroup and the address go before the exit is recorded: a `stop` or `wait` that returns finds them
    // released.
    let _ = started.cgroup.remove();
    if let Some(att) = &started.network {
        let _ = network::release(&store.root, &state.id, att);
    }
    state.status = Status::Exited;
    state.exit_code = Some(info.code);
    state.oom_killed = info.oom_killed;
    state.finished_at = Some(now_rfc3339());
    let _ = std::fs::write(dir.join(EXIT_FILE), info.code.to_string());
    let _ = store.save(&state);
    let _ = std::fs::remove_file(dir.join(ATTACH_SOCKET));
    // `--rm`: the directory goes to the trash at once (the container and its name are gone for everyone);
    // its files (the upper among them) are deleted after the exit is reported.
    let mut trash = None;
    if state.config.remove {
        // The tombstone first: a `wait` that finds no container finds it.
        let _ = store.bury(&state);
        trash = store.retire(&state.id, &state.name).ok().flatten();
    }
    stop_daemon(&mut state);
    // Report the exit after the cleanup: `run --rm NAME` followed by `run --name NAME`, or `wait` followed
    // by `rm`, must not race with the monitor.
    let exit = Frame::Exit(info).encode();
    for c in &mut clients {
        c.queue(exit.clone());
        c.flush_blocking(Duration::from_secs(2));
    }
    drop(clients);
    if let Some(t) = trash {
        let _ = store.delete(&t, state.config.userns.as_ref());
    }
    0
}

/// A running container, as the monitor holds it.
struct Started {
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Cgroup,
    root: Option<PreparedRoot>,
    /// Where to write the container's stdin (pipe or pty master).
    stdin: Option<OwnedFd>,
    /// Output sources: (fd, stream).
    outputs: Vec<(OwnedFd, Stream)>,
    /// The pty master, for resizes.
    pty: Option<OwnedFd>,
    /// `--net bridge`: the veth and address to release.
    network: Option<Attachment>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

/// Writes /etc/hostname, /etc/hosts and /etc/resolv.conf for the container into its state directory.
fn write_etc_files(cfg: &ContainerConfig, dir: &Path, att: Option<&Attachment>) -> Result<Vec<(String, PathBuf)>> {
    let local = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
    let hosts = match (cfg.net, att) {
        (NetMode::Host, _) => std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        (_, Some(a)) => format!("{local}{}\t{}\n", a.address, cfg.hostname),
        _ => format!("{local}127.0.1.1\t{}\n", cfg.hostname),
    };
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = Vec::new();
    for (name, content) in [("hostname", format!("{}\n", cfg.hostname)), ("hosts", hosts), ("resolv.conf", resolv)] {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|e| Error::io("write /etc files", e))?;
        out.push((name.to_string(), p));
    }
    Ok(out)
}

fn start(store: &Store, cfg: &ContainerConfig, dir: &Path, mut root: PreparedRoot) -> Result<Started> {
    let layout = match Layout::detect() {
        Ok(l) => l,
        Err(e) => {
            root.release();
            return Err(e.into());
        }
    };
    let name = format!("launcher-{}", cfg.id);
    let cgroup = if cfg.cgroups == CgroupMode::Disabled {
        Ok(Cgroup::none("--cgroups=disabled: the container stays in the launcher's cgroup"))
    } else if !cfg.cgroups.wanted(&cfg.limits) {
        Ok(Cgroup::freezable(
            &layout,
            &name,
            cfg.rootless,
            "no resource limit asked for: no controller (--cgroups=enabled for one)",
        ))
    } else {
        Cgroup::create(&layout, &name, &cfg.limits, cfg.rootless)
    };
    let cgroup = match cgroup {
        Ok(c) => c,
        Err(e) => {
            root.release();
            return Err(e.into());
        }
    };
    let net = match &cfg.bridge {
        Some(b) => network::allocate(&store.root, &cfg.id, b, std::process::id() as i32).map(Some),
        None => Ok(None),
    };
    let res = net.and_then(|net| {
        start_in(cfg, dir, &layout, &mut root, &cgroup, net.as_ref())
            .inspect_err(|_| {
                if let Some(att) = &net {
                    let _ = network::release(&store.root, &cfg.id, att);
                }
            })
            .map(|l| (l, net))
    });
    match res {
        Ok(((pid, pidfd, stdin, outputs, pty), network)) => {
            Ok(Started { pid, pidfd, cgroup, root: Some(root), stdin, outputs, pty, network })
        }
        Err(e) => {
            let _ = cgroup.remove();
            root.release();
            Err(e)
        }
    }
}

type Launched = (i32, OwnedFd, Option<OwnedFd>, Vec<(OwnedFd, Stream)>, Option<OwnedFd>);

fn start_in(
    cfg: &ContainerConfig,
    dir: &Path,
    layout: &Layout,
    root: &mut PreparedRoot,
    cgroup: &Cgroup,
    net: Option<&Attachment>,
) -> Result<Launched> {
    let etc_files = write_etc_files(cfg, dir, net)?;
    let plan = MountPlan {
        rootfs: root.path.clone(),
        dev_mode: if cfg.rootless { DevMode::Bind } else { DevMode::Mknod },
        devpts_gid: !cfg.rootless || cfg.userns.as_ref().is_some_and(|ns| ns.maps_gid(5)),
        new_sysfs: !cfg.rootless || cfg.net.own_netns(),
        cgroups: if cfg.rootless { Vec::new() } else { layout.container_mounts() },
        etc_files,
        read_only: cfg.read_only,
        user_mounts: cfg.mounts.clone(),
    };
    // Pipes: (container end, monitor end).
    let (stdio, mut stdin_w, mut outputs) = if cfg.tty {
        (Stdio::Tty, None, Vec::new())
    } else {
        let stdin = if cfg.interactive { Some(pipe()?) } else { None };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdin_w = stdin.as_ref().map(|(_, w)| w.try_clone()).transpose().map_err(|e| Error::io("dup", e))?;
        let out_rc = out_r.try_clone().map_err(|e| Error::io("dup", e))?;
        let err_rc = err_r.try_clone().map_err(|e| Error::io("dup", e))?;
        let mut monitor_ends = vec![out_r, err_r];
        let stdin_r = match stdin {
            Some((r, w)) => {
                monitor_ends.push(w);
                Some(r)
            }
            None => None,
        };
        (
            Stdio::Pipes { stdin: stdin_r, stdout: out_w, stderr: err_w, monitor_ends },
            stdin_w,
            vec![(out_rc, Stream::Stdout), (err_rc, Stream::Stderr)],
        )
    };
    let (parent_sock, child_sock) = proto::socketpair().map_err(|e| Error::sys("socketpair", e))?;

    // On a layerfs root the init joins the daemon's mount namespace and unshares a copy of it itself.
    let layerfs = cfg.rootfs.layerfs().is_some();
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if !layerfs {
        flags |= CloneFlags::CLONE_NEWNS;
    }
    // A network namespace without a veth is made by the init itself (see `init::Child::unshare_net`).
    let unshare_net = cfg.net.own_netns() && net.is_none();
    if cfg.net.own_netns() && !unshare_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if cfg.rootless {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // Straight into the v2 cgroup when there is one (no migration later); kernels before 5.7 or a refused
    // target fall back to a migration by `join`.
    let cgroup_dir = match cgroup.v2_dir() {
        Some(d) => Some(
            std::fs::File::open(d)
                .map(OwnedFd::from)
                .map_err(|e| Error::Cgroup(CgroupError::Read { path: d.into(), source: e }))?,
        ),
        None => None,
    };
    let mut cloned = sys::clone3(flags.bits() as u64, cgroup_dir.as_ref().map(|f| f.as_fd()));
    let mut joined_v2 = cgroup.v2_dir();
    if cgroup_dir.is_some() && matches!(cloned, Err(Errno::EINVAL | Errno::E2BIG | Errno::EOPNOTSUPP)) {
        cloned = sys::clone3(flags.bits() as u64, None);
        joined_v2 = None;
    }
    let (pid, pidfd) = match cloned.map_err(|e| Error::sys("clone", e))? {
        CloneResult::Child => {
            drop(parent_sock);
            init::run(init::Child {
                cfg,
                plan,
                sock: child_sock,
                stdio,
                new_netns: cfg.net.own_netns(),
                unshare_net,
                network: net,
                cgroupns: true,
            })
        }
        CloneResult::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(child_sock);
    drop(stdio);
    // As root the child mounts before it waits for GO, so it may have failed (and reported why) while we
    // joined the cgroup or created the veth: then GO meets a closed socket. Its report wins over ours.
    let fail = |e: Error| {
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        let _ = nix::sys::wait::waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
        match proto::pending_failure(parent_sock.as_fd()) {
            Some(se) => Error::Setup(se),
            None => e,
        }
    };
    if cfg.rootless {
        let single;
        let ns = match &cfg.userns {
            Some(ns) => ns,
            None => {
                single = UserNs::single(nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
                &single
            }
        };
        ns.write(pid).map_err(fail)?;
        root.start_daemon(&cfg.rootfs, pidfd.as_fd()).map_err(fail)?;
    }
    cgroup.join(pid, joined_v2).map_err(|e| fail(e.into()))?;
    if let Some(att) = net {
        network::attach(att, pid).map_err(fail)?;
    }
    // GO carries the daemon's mount namespace once its mount is live.
    let mnt_ns = match root.daemon.as_mut() {
        Some(d) => {
            d.wait_ready().map_err(fail)?;
            Some(d.mount_ns().map_err(fail)?)
        }
        None => None,
    };
    let go_fds: Vec<i32> = mnt_ns.iter().map(|f| f.as_raw_fd()).collect();
    proto::send(parent_sock.as_fd(), &[proto::GO], &go_fds)
        .map_err(|e| fail(Error::sys("release the container", e)))?;
    drop(mnt_ns);
    // On a layerfs root USER follows: the container's user, resolved from its image while the init builds its
    // root (see `user::read_image_dbs`), or nothing (the init then reads its /etc/passwd and /etc/group itself).
    if let Some(spec) = cfg.rootfs.layerfs() {
        let mut msg = vec![proto::USER];
        if let Some((passwd, group)) =
            user::read_image_dbs(&spec.lowerdirs, spec.image.as_ref().map(|i| i.store.as_path()), &cfg.mounts)
            && let Ok(u) = user::resolve(cfg.user.as_deref(), &passwd, &group)
            && let Ok(json) = serde_json::to_vec(&u)
            && json.len() <= proto::MAX_USER_MSG
        {
            msg.extend(json);
        }
        proto::send(parent_sock.as_fd(), &msg, &[]).map_err(|e| fail(Error::sys("send the container its user", e)))?;
    }
    let mut pty = None;
    loop {
        match proto::recv_child(parent_sock.as_fd()).map_err(fail)? {
            None => break,
            Some((ChildMsg::PtyMaster, mut fds)) if !fds.is_empty() => pty = Some(fds.remove(0)),
            Some((ChildMsg::PtyMaster, _)) => {
                return Err(fail(Error::Protocol("pty master missing".into())));
            }
            Some((ChildMsg::Failed(e), _)) => {
                let _ = nix::sys::wait::waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
                return Err(Error::Setup(e));
            }
        }
    }
    if let Some(m) = &pty {
        stdin_w = Some(m.try_clone().map_err(|e| fail(Error::io("dup", e)))?);
        outputs.push((m.try_clone().map_err(|e| fail(Error::io("dup", e)))?, Stream::Stdout));
    }
    Ok((pid, pidfd, stdin_w, outputs, pty))
}

/// An attach client.
struct Client {
    fd: OwnedFd,
    /// Wants the container's output.
    attached: bool,
    out: VecDeque<Vec<u8>>,
    dead: bool,
}

/// A client whose queue grows past this many frames is too slow and gets disconnected.
const MAX_QUEUED: usize = 4096;

impl Client {
    fn new(fd: OwnedFd, attached: bool) -> Client {
        let _ = set_nonblocking(fd.as_fd());
        Client { fd, attached, out: VecDeque::new(), dead: false }
    }

    fn queue(&mut self, frame: Vec<u8>) {
        if self.dead {
            return;
        }
        self.out.push_back(frame);
        if self.out.len() > MAX_QUEUED {
            self.dead = true;
            return;
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(f) = self.out.front() {
            match proto::send(self.fd.as_fd(), f, &[]) {
                Ok(()) => {
                    self.out.pop_front();
                }
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    fn flush_blocking(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.out.is_empty() && !self.dead && Instant::now() < deadline {
            self.flush();
            if !self.out.is_empty() {
                let mut p = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, PollTimeout::from(100u16));
            }
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let fl = OFlag::from_bits_truncate(nix::fcntl::fcntl(fd, FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map(drop)
}

/// A path to `dir/name` short enough for `sockaddr_un`, through `/proc/self/fd` (state directories under
/// `$XDG_RUNTIME_DIR` can exceed its 108 bytes). The returned descriptor must stay open while it is used.
pub fn socket_path(dir: &Path, name: &str) -> std::io::Result<(Option<OwnedFd>, PathBuf)> {
    let full = dir.join(name);
    if full.as_os_str().len() < 100 {
        return Ok((None, full));
    }
    let d: OwnedFd = std::fs::File::open(dir)?.into();
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((Some(d), p))
}

/// Serves until the container exited and its output is drained; returns how it ended, and the layerfs daemon's
/// status if it ended first (then the container, whose root is gone, was killed).
fn serve(
    cfg: &ContainerConfig,
    dir: &Path,
    s: &Started,
    listener: Option<UnixSeqpacket>,
    mut stdin: Option<OwnedFd>,
    owned_outputs: Vec<(OwnedFd, Stream)>,
    clients: &mut Vec<Client>,
) -> (ExitInfo, Option<String>) {
    let daemon = s.root.as_ref().and_then(|r| r.daemon.as_ref());
    let mut daemon_died: Option<String> = None;
    let mut log = LogWriter::open(&dir.join(LOG_FILE), cfg.log.clone()).ok();
    let mut outputs: Vec<Option<(BorrowedFd<'_>, Stream)>> =
        owned_outputs.iter().map(|(fd, st)| Some((fd.as_fd(), *st))).collect();
    if let Some(f) = &stdin {
        let _ = set_nonblocking(f.as_fd());
    }
    for (fd, _) in &owned_outputs {
        let _ = set_nonblocking(fd.as_fd());
    }
    let mut stdin_buf: Vec<u8> = Vec::new();
    let mut stdin_eof = false;
    let mut exit: Option<i32> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut buf = vec![0u8; proto::CHUNK];
    loop {
        if exit.is_some() && outputs.iter().all(Option::is_none) {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        clients.retain(|c| !c.dead);
        // Build the poll set: [pidfd, listener, stdin, outputs..., clients...]
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let pidfd_idx = exit.is_none().then(|| {
            fds.push(PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let daemon_idx = match daemon {
            Some(d) if exit.is_none() && daemon_died.is_none() => {
                fds.push(PollFd::new(d.pidfd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let listen_idx = match (&listener, exit) {
            (Some(l), None) => {
                fds.push(PollFd::new(l.fd.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let stdin_idx = match &stdin {
            Some(f) if !stdin_buf.is_empty() => {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let out_base = fds.len();
        let mut out_map = Vec::new();
        for (i, o) in outputs.iter().enumerate() {
            if let Some((fd, _)) = o {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
                out_map.push(i);
            }
        }
        let client_base = fds.len();
        for c in clients.iter() {
            let mut ev = PollFlags::POLLIN;
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.fd.as_fd(), ev));
        }
        let timeout = if drain_deadline.is_some() { PollTimeout::from(100u16) } else { PollTimeout::NONE };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        let ready = |fds: &[PollFd<'_>], i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let exited_now = pidfd_idx.is_some_and(|i| ready(&fds, i));
        let daemon_gone = daemon_idx.is_some_and(|i| ready(&fds, i));
        let accept = listen_idx.is_some_and(|i| ready(&fds, i));
        let stdin_ready = stdin_idx.is_some_and(|i| ready(&fds, i));
        let out_ready: Vec<usize> =
            out_map.iter().enumerate().filter(|(k, _)| ready(&fds, out_base + k)).map(|(_, i)| *i).collect();
        let client_ready: Vec<usize> = (0..clients.len()).filter(|k| ready(&fds, client_base + k)).collect();
        drop(fds);

        for i in out_ready {
            let Some((fd, stream)) = outputs[i] else {
                continue;
            };
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) | Err(Errno::EIO) => outputs[i] = None,
                Ok(n) => {
                    if let Some(l) = log.as_mut() {
                        let _ = l.write(stream, &buf[..n]);
                    }
                    let frame = match stream {
                        Stream::Stdout => Frame::Stdout(buf[..n].to_vec()),
                        Stream::Stderr => Frame::Stderr(buf[..n].to_vec()),
                    }
                    .encode();
                    for c in clients.iter_mut().filter(|c| c.attached) {
                        c.queue(frame.clone());
                    }
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                Err(_) => outputs[i] = None,
            }
        }
        for k in client_ready {
            let c = &mut clients[k];
            c.flush();
            let mut fb = vec![0u8; proto::MAX_FRAME];
            loop {
                match proto::recv(c.fd.as_fd(), &mut fb) {
                    Ok((0, _)) => {
                        c.dead = true;
                        break;
                    }
                    Ok((n, _)) => match Frame::decode(&fb[..n]) {
                        Ok(Frame::Stdin(d)) if !stdin_eof => stdin_buf.extend_from_slice(&d),
                        Ok(Frame::StdinEof) => stdin_eof = true,
                        Ok(Frame::Attach) => c.attached = true,
                        Ok(Frame::Resize(ws)) => {
                            if let Some(p) = &s.pty {
                                let _ = sys::set_winsize(p.as_fd(), ws);
                            }
                        }
                        Ok(Frame::Kill(sig)) => {
                            let _ = sys::pidfd_send_signal(s.pidfd.as_fd(), sig);
                        }
                        _ => {}
                    },
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => continue,
                    Err(_) => {
                        c.dead = true;
                        break;
                    }
                }
            }
        }
        if stdin_ready || !stdin_buf.is_empty() {
            if let Some(f) = &stdin {
                match nix::unistd::write(f, &stdin_buf) {
                    Ok(n) => {
                        stdin_buf.drain(..n);
                    }
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(_) => {
                        stdin_buf.clear();
                        stdin = None;
                    }
                }
            } else {
                stdin_buf.clear();
            }
        }
        if stdin_eof && stdin_buf.is_empty() && !cfg.tty {
            stdin = None;
        }
        if accept && let Some(l) = &listener {
            while let Ok(fd) = l.accept() {
                clients.push(Client::new(fd, false));
            }
        }
        if daemon_gone && !exited_now {
            // The root filesystem is gone: nothing in the container can work any more.
            daemon_died = Some(
                match nix::sys::wait::waitid(
                    Id::PIDFd(daemon.map(|d| d.pidfd()).expect("polled daemon")),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
                ) {
                    Ok(WaitStatus::Exited(_, c)) => format!("exited {c}"),
                    Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
                    other => format!("{other:?}"),
                },
            );
            let _ = sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL);
        }
        if exited_now {
            let status = nix::sys::wait::waitid(Id::PIDFd(s.pidfd.as_fd()), WaitPidFlag::WEXITED);
            exit = Some(match status {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                _ => 255,
            });
            // Everything in the pid namespace is gone with its init: the pipes close at once. A pty can
            // linger (a process outside holding the slave is impossible, but be safe).
            drain_deadline = Some(Instant::now() + Duration::from_secs(5));
            stdin = None;
        }
    }
    let _ = listener;
    let code = exit.unwrap_or(255);
    let oom_killed = s.cgroup.oom_killed() && code == 128 + libc::SIGKILL;
    (ExitInfo { code, oom_killed }, daemon_died)
}

/// A listening `SOCK_SEQPACKET` Unix socket (std only has stream and datagram listeners).
pub struct UnixSeqpacket {
    pub fd: OwnedFd,
}

impl UnixSeqpacket {
    /// Binds and listens at `path` (non-blocking, close-on-exec).
    pub fn bind(path: &Path) -> std::io::Result<UnixSeqpacket> {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
        let fd =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        let addr = UnixAddr::new(path)?;
        bind(fd.as_raw_fd(), &addr)?;
        listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
        Ok(UnixSeqpacket { fd })
    }

    /// Accepts one connection (close-on-exec).
    pub fn accept(&self) -> nix::Result<OwnedFd> {
        let raw = nix::sys::socket::accept4(self.fd.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)?;
        Ok(crate::sys::adopt_received_fd(raw))
    }
}

/// Connects to a container's attach socket.
pub fn connect(dir: &Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let (_keep, path) = socket_path(dir, ATTACH_SOCKET)?;
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    let addr = UnixAddr::new(&path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}
