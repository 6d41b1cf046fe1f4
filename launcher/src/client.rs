//! The commands: `run`, `attach`, `wait`, `stop`, `kill`, `rm`, `ps`, `inspect`, `logs`. Each returns the
//! process exit code; the binary only parses arguments and prints errors.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::capabilities;
use crate::config::{self, CgroupMode, ContainerConfig, Limits, LogConfig, NetMode};
use crate::error::{Error, Result};
use crate::idmap::UserNs;
use crate::logs::{self, Line, ReadOptions, Stream};
use crate::monitor;
use crate::mounts::UserMount;
use crate::network;
use crate::proto::{self, Frame};
use crate::rootfs::{self, ImageConfig, RootFsSpec};
use crate::state::{self, State, Status, Store};
use crate::sys;
use crate::terminal::{self, RawGuard};

/// `run` options, as parsed by the binary.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub remove: bool,
    pub name: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<String>,
    pub pids_limit: Option<i64>,
    pub net: Option<String>,
    /// `--subnet` for `--net bridge` (`None`: `LAUNCHER_SUBNET` or the default).
    pub subnet: Option<String>,
    pub read_only: bool,
    pub init: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `--rootfs DIR`: run on a directory; without it the first of `args` is an image.
    pub rootfs: Option<PathBuf>,
    /// `--entrypoint` (`""` clears the image's).
    pub entrypoint: Option<String>,
    /// The image store (`--store`, `LAYERFS_ROOT`; `None`: layertool's default).
    pub store: Option<PathBuf>,
    pub log_max_size: Option<String>,
    pub log_max_files: Option<u32>,
    /// `-v HOST:CTR[:ro|rw]`.
    pub volumes: Vec<String>,
    /// `--tmpfs CTR[:OPTS]`.
    pub tmpfs: Vec<String>,
    /// `--detach-keys` (off unless given).
    pub detach_keys: Option<String>,
    /// `--cgroups auto|enabled|disabled` (`None`: auto).
    pub cgroups: Option<String>,
    /// layerfs mount options for an image root (`--storage-opt`).
    pub storage_opt: Vec<String>,
    /// `IMAGE [CMD...]`, or with `--rootfs` just `[CMD...]`.
    pub args: Vec<String>,
}

/// Validates the options into a container configuration (nothing is created yet).
pub fn build_config(o: &RunOptions) -> Result<ContainerConfig> {
    let id = state::new_id();
    let name = match &o.name {
        Some(n) => {
            state::validate_name(n)?;
            n.clone()
        }
        None => state::random_name(&id),
    };
    let rootless = !nix::unistd::geteuid().is_root();
    let (rootfs, image, cmd_args) = match &o.rootfs {
        Some(dir) => {
            let path =
                std::path::absolute(dir).map_err(|e| Error::Rootfs { path: dir.clone(), reason: e.to_string() })?;
            if !o.storage_opt.is_empty() {
                return Err(Error::InvalidArgument(
                    "--storage-opt applies to the layerfs mount of an image, not to --rootfs".into(),
                ));
            }
            let rootfs = RootFsSpec::Dir { path };
            rootfs.validate()?;
            (rootfs, ImageConfig::default(), o.args.as_slice())
        }
        None => {
            let Some((name, rest)) = o.args.split_first() else {
                return Err(Error::InvalidArgument(
                    "\"launcher run\" requires at least 1 argument: IMAGE [COMMAND] [ARG...] (or --rootfs DIR)".into(),
                ));
            };
            let store = o.store.clone().unwrap_or_else(tools::store::Store::default_root);
            let (mut rootfs, image) = rootfs::resolve_image(&store, name)?;
            rootfs.set_mount_options(&o.storage_opt)?;
            if rootless {
                rootless_fuse_check()?;
            }
            (rootfs, image, rest)
        }
    };
    let hostname = o.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(Error::InvalidArgument(format!("invalid hostname {hostname:?}")));
    }
    // available_parallelism reads cgroup files and mountinfo: only when needed.
    let ncpu = || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let limits = Limits {
        memory: o.memory.as_deref().map(config::parse_memory).transpose()?,
        cpu_quota: o.cpus.as_deref().map(|c| config::parse_cpus(c, ncpu())).transpose()?,
        pids: match o.pids_limit {
            None => None,
            Some(n) if n <= 0 => None,
            Some(n) => Some(n as u64),
        },
    };
    let cgroups: CgroupMode = o.cgroups.as_deref().unwrap_or("auto").parse()?;
    if cgroups == CgroupMode::Disabled && limits.any() {
        return Err(Error::InvalidArgument("resource limits need a cgroup (--cgroups=disabled)".into()));
    }
    let net: NetMode = o.net.as_deref().unwrap_or("none").parse()?;
    let bridge = match net {
        NetMode::Bridge if rootless => {
            return Err(Error::InvalidArgument(
                "--net bridge needs root (rootless containers can use --net none or host)".into(),
            ));
        }
        NetMode::Bridge => {
            Some(network::BridgeConfig::new(o.subnet.as_deref(), std::env::var("LAUNCHER_BRIDGE").ok())?)
        }
        _ => None,
    };
    let args = if o.rootfs.is_some() && o.entrypoint.is_none() && cmd_args.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        config::command(o.entrypoint.as_deref(), &image.entrypoint, &image.cmd, cmd_args)?
    };
    let env = config::build_env(&hostname, o.tty, &image.env, &o.env, |k| std::env::var(k).ok())?;
    let cwd = match (&o.workdir, image.working_dir.as_str()) {
        (Some(w), _) => w.clone(),
        (None, "") => "/".into(),
        // docker resolves a relative image WorkingDir against /.
        (None, w) if !w.starts_with('/') => format!("/{w}"),
        (None, w) => w.to_string(),
    };
    let user = o.user.clone().or_else(|| Some(image.user.clone()).filter(|u| !u.is_empty()));
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )));
    }
    let here = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let mut mounts = Vec::new();
    for v in &o.volumes {
        mounts.push(UserMount::parse_volume(v, &here).map_err(Error::InvalidArgument)?);
    }
    for t in &o.tmpfs {
        mounts.push(UserMount::parse_tmpfs(t).map_err(Error::InvalidArgument)?);
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|p| p.destination() == m.destination()) {
            return Err(Error::InvalidArgument(format!("duplicate mount point: {}", m.destination().display())));
        }
    }
    let log = LogConfig {
        max_size: o.log_max_size.as_deref().map(config::parse_size).transpose()?,
        max_files: o.log_max_files.unwrap_or(1),
    };
    Ok(ContainerConfig {
        id,
        name,
        rootfs,
        args,
        env,
        cwd,
        user,
        hostname,
        tty: o.tty,
        interactive: o.interactive,
        detach: o.detach,
        remove: o.remove,
        net,
        bridge,
        read_only: o.read_only,
        init: o.init,
        caps: capabilities::resolve(&o.cap_add, &o.cap_drop)?,
        limits,
        cgroups,
        log,
        // Without a terminal to copy, a pty gets the classic 24x80 rather than 0x0.
        winsize: o.tty.then(|| terminal::size().unwrap_or(sys::WinSize { rows: 24, cols: 80 })),
        rootless,
        userns: rootless.then(|| {
            let (ns, why) = UserNs::detect();
            if let Some(why) = why {
                eprintln!("launcher: warning: {why}: single-id user namespace (only root in the container, as you)");
            }
            ns
        }),
        mounts,
    })
}

/// Rootless image containers mount layerfs in their user namespace: the caller must be able to open
/// `/dev/fuse` (udev makes it 0666; a root-only node refuses even a FUSE mount in a user namespace).
fn rootless_fuse_check() -> Result<()> {
    use nix::unistd::AccessFlags;
    match nix::unistd::access("/dev/fuse", AccessFlags::R_OK | AccessFlags::W_OK) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Layerfs {
            step: "rootless mount",
            reason: format!(
                "/dev/fuse is not readable and writable by uid {} ({e}): images need it when not root \
                 (udev's default mode is 0666); --rootfs DIR runs without it",
                nix::unistd::getuid()
            ),
        }),
    }
}

/// `run`: starts a container; in the foreground, relays its streams and returns its exit code.
pub fn run(store_root: &Path, o: &RunOptions) -> Result<i32> {
    let store = Store::open(store_root)?;
    let cfg = build_config(o)?;
    let detach = detach_matcher(o.detach_keys.as_deref())?;
    // Block the forwarded signals before anything is forked: a ^C between fork and the relay loop must not
    // kill the CLI and leave the terminal raw. The monitor inherits the mask.
    let mut mask = monitor::forwarded_signals();
    mask.add(Signal::SIGWINCH);
    mask.add(Signal::SIGCHLD);
    let old = sys::block_signals(&mask).map_err(|e| Error::sys("block signals", e))?;
    let res = run_blocked(&store, cfg, o, detach);
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None);
    res
}

fn detach_matcher(keys: Option<&str>) -> Result<Option<terminal::DetachMatcher>> {
    keys.map(|k| terminal::parse_detach_keys(k).map(terminal::DetachMatcher::new).map_err(Error::InvalidArgument))
        .transpose()
}

/// How a relay ended.
enum Relayed {
    /// The container exited with this code.
    Exit(i32),
    /// The caller typed the detach keys: the container goes on.
    Detached,
}

impl Relayed {
    /// The CLI's exit code: the container's, or 0 after detaching.
    fn code(self) -> i32 {
        match self {
            Relayed::Exit(c) => c,
            Relayed::Detached => 0,
        }
    }
}

fn run_blocked(
    store: &Store,
    cfg: ContainerConfig,
    o: &RunOptions,
    detach: Option<terminal::DetachMatcher>,
) -> Result<i32> {
    let id = cfg.id.clone();
    let sock = monitor::spawn(store, cfg)?;
    match proto::recv_frame(sock.as_fd())? {
        Some(Frame::Started { .. }) => {}
        Some(Frame::Failed { message, code }) => {
            return Err(Error::StartFailed { message, code });
        }
        _ => return Err(Error::MonitorLost(id)),
    }
    if o.detach {
        println!("{id}");
        return Ok(0);
    }
    relay(sock, o.tty, o.interactive, &store.dir(&id), false, detach).map(Relayed::code)
}

/// Relays the caller's terminal or streams to the monitor until the container exits.
fn relay(
    sock: OwnedFd,
    tty: bool,
    interactive: bool,
    dir: &Path,
    send_size: bool,
    mut detach: Option<terminal::DetachMatcher>,
) -> Result<Relayed> {
    let mut mask = monitor::forwarded_signals();
    mask.add(Signal::SIGWINCH);
    sys::block_signals(&mask).map_err(|e| Error::sys("block signals", e))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("signalfd", e))?;
    sys::ignore_sigpipe();
    let _raw = if tty && interactive && terminal::stdin_is_tty() { RawGuard::stdin() } else { None };
    if tty
        && (send_size || _raw.is_some())
        && let Some(ws) = terminal::size()
    {
        let _ = proto::send_frame(sock.as_fd(), &Frame::Resize(ws));
    }
    let stdin = std::io::stdin();
    let mut stdin_open = interactive;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut buf = vec![0u8; proto::CHUNK];
    let mut fb = vec![0u8; proto::MAX_FRAME];
    loop {
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (sock_ready, sig_ready, stdin_ready) = (ready(0), ready(1), ready(2));
        drop(fds);
        if sig_ready {
            while let Ok(Some(si)) = sfd.read_signal() {
                let sig = si.ssi_signo as i32;
                if sig == libc::SIGWINCH {
                    if let Some(ws) = terminal::size() {
                        let _ = proto::send_frame(sock.as_fd(), &Frame::Resize(ws));
                    }
                } else {
                    let _ = proto::send_frame(sock.as_fd(), &Frame::Kill(sig));
                }
            }
        }
        if stdin_ready {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let _ = proto::send_frame(sock.as_fd(), &Frame::StdinEof);
                }
                Ok(n) => {
                    let mut data = buf[..n].to_vec();
                    let mut detached = false;
                    if let Some(m) = detach.as_mut() {
                        let mut pass = Vec::with_capacity(n);
                        detached = m.feed(&buf[..n], &mut pass);
                        data = pass;
                    }
                    if !data.is_empty() && proto::send_frame(sock.as_fd(), &Frame::Stdin(data)).is_err() {
                        stdin_open = false;
                    }
                    if detached {
                        return Ok(Relayed::Detached);
                    }
                }
            }
        }
        if sock_ready {
            let (n, _) = match proto::recv(sock.as_fd(), &mut fb) {
                Ok(r) => r,
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
                Err(_) => (0, Vec::new()),
            };
            if n == 0 {
                return exit_code_after_eof(dir).map(Relayed::Exit);
            }
            match Frame::decode(&fb[..n])? {
                Frame::Stdout(d) => {
                    let _ = out.write_all(&d).and_then(|()| out.flush());
                }
                Frame::Stderr(d) => {
                    let _ = err.write_all(&d).and_then(|()| err.flush());
                }
                Frame::Exit(info) => return Ok(Relayed::Exit(info.code)),
                _ => {}
            }
        }
    }
}

fn exit_code_after_eof(dir: &Path) -> Result<i32> {
    std::fs::read_to_string(dir.join(monitor::EXIT_FILE)).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
        Error::MonitorLost(dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    })
}

/// Resolves a reference and loads the state.
fn load(store: &Store, reference: &str) -> Result<State> {
    let id = store.resolve(reference)?;
    store.load(&id)
}

/// Whether the container is running (its monitor is alive and recorded it running).
fn running(st: &State) -> bool {
    st.effective_status() == Status::Running
}

/// `attach [--detach-keys KEYS]`.
pub fn attach(store_root: &Path, reference: &str, detach_keys: Option<&str>) -> Result<i32> {
    let store = Store::open(store_root)?;
    let detach = detach_matcher(detach_keys)?;
    let st = load(&store, reference)?;
    if !running(&st) {
        return Err(Error::InvalidArgument("You cannot attach to a stopped container, start it first".into()));
    }
    let dir = store.dir(&st.id);
    let sock = monitor::connect(&dir).map_err(|e| Error::io("connect to the monitor", e))?;
    proto::send_frame(sock.as_fd(), &Frame::Attach).map_err(|e| Error::sys("attach", e))?;
    relay(sock, st.config.tty, st.config.interactive, &dir, true, detach).map(Relayed::code)
}

/// Waits for the container's exit up to `timeout`; `Ok(None)` on timeout.
pub fn wait_exit(store: &Store, id: &str, timeout: Option<Duration>) -> Result<Option<i32>> {
    let dir = store.dir(id);
    let deadline = timeout.map(|t| Instant::now() + t);
    if let Ok(sock) = monitor::connect(&dir) {
        let mut fb = vec![0u8; proto::MAX_FRAME];
        loop {
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    PollTimeout::try_from(d - now).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, left) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("poll", e)),
            }
            match proto::recv(sock.as_fd(), &mut fb) {
                Ok((0, _)) | Err(_) => break,
                Ok((n, _)) => {
                    if let Ok(Frame::Exit(info)) = Frame::decode(&fb[..n]) {
                        return Ok(Some(info.code));
                    }
                }
            }
        }
    }
    // No monitor to talk to: it is gone, or going. Poll its exit file and state (or, for `--rm`, its
    // tombstone) for a while.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(code) = store.exit_code(id) {
            return Ok(Some(code));
        }
        let st = match store.load(id) {
            Ok(st) => st,
            Err(e) => {
                return match store.tombstone(id) {
                    Some(t) => Ok(Some(t.exit_code)),
                    None => Err(e),
                };
            }
        };
        if st.effective_status() == Status::Exited && !st.monitor_alive() {
            return Ok(Some(st.exit_code.unwrap_or(-1)));
        }
        if Instant::now() > end || deadline.is_some_and(|d| Instant::now() > d) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wait`: prints each container's exit code.
pub fn wait(store_root: &Path, refs: &[String]) -> Result<i32> {
    let store = Store::open(store_root)?;
    for r in refs {
        let id = match store.resolve(r) {
            Ok(id) => id,
            // A `--rm` container removed a moment ago.
            Err(e @ Error::NoSuchContainer(_)) => match store.tombstone(r) {
                Some(t) => {
                    println!("{}", t.exit_code);
                    continue;
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        match wait_exit(&store, &id, None)? {
            Some(code) => println!("{code}"),
            None => return Err(Error::MonitorLost(id)),
        }
    }
    Ok(0)
}

/// Sends a signal through the monitor (which holds a pidfd: no pid reuse race).
fn signal(store: &Store, st: &State, sig: i32) -> Result<()> {
    let sock = monitor::connect(&store.dir(&st.id)).map_err(|_| Error::NotRunning(st.id.clone()))?;
    proto::send_frame(sock.as_fd(), &Frame::Kill(sig)).map_err(|_| Error::NotRunning(st.id.clone()))
}

/// Parses a signal: `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal: {s}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    name.parse::<Signal>().map(|s| s as i32).map_err(|_| Error::InvalidArgument(format!("invalid signal: {s}")))
}

/// `kill [-s SIG]`.
pub fn kill(store_root: &Path, refs: &[String], sig: &str) -> Result<i32> {
    let store = Store::open(store_root)?;
    let sig = parse_signal(sig)?;
    for r in refs {
        let st = load(&store, r)?;
        if !running(&st) {
            return Err(Error::NotRunning(r.clone()));
        }
        signal(&store, &st, sig)?;
        println!("{r}");
    }
    Ok(0)
}

/// `stop [-t SECS]`: SIGTERM, wait, SIGKILL.
pub fn stop(store_root: &Path, refs: &[String], timeout: u64) -> Result<i32> {
    let store = Store::open(store_root)?;
    for r in refs {
        let st = load(&store, r)?;
        stop_one(&store, &st, timeout)?;
        println!("{r}");
    }
    Ok(0)
}

fn stop_one(store: &Store, st: &State, timeout: u64) -> Result<()> {
    if !running(st) {
        return Ok(());
    }
    if signal(store, st, libc::SIGTERM).is_err() {
        return Ok(());
    }
    if wait_exit(store, &st.id, Some(Duration::from_secs(timeout)))?.is_some() {
        return Ok(());
    }
    let _ = signal(store, st, libc::SIGKILL);
    wait_exit(store, &st.id, None)?;
    Ok(())
}

/// `rm [-f]`.
pub fn rm(store_root: &Path, refs: &[String], force: bool) -> Result<i32> {
    let store = Store::open(store_root)?;
    for r in refs {
        let st = load(&store, r)?;
        if running(&st) {
            if !force {
                return Err(Error::RemoveRunning(r.clone()));
            }
            let _ = signal(&store, &st, libc::SIGKILL);
            wait_exit(&store, &st.id, Some(Duration::from_secs(30)))?;
        }
        // A monitor that died uncleanly leaves its cgroup and its veth behind (its layerfs daemon got a parent
        // death signal; one that is somehow still there is killed before its upper is removed).
        if !st.monitor_alive() {
            if let Some(l) = st.layerfs.as_ref().filter(|l| l.daemon_alive())
                && let Some(pid) = l.daemon_pid
                && let Ok(fd) = sys::pidfd_open(pid)
                && l.daemon_alive()
            {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut p, PollTimeout::from(5000u16));
            }
            let _ = st.cgroup.remove();
            if st.config.net == NetMode::Bridge {
                let _ = network::release_stale(&store.root, &st.id);
            }
        }
        store.remove_as(&st.id, &st.name, st.config.userns.as_ref())?;
        println!("{r}");
    }
    Ok(0)
}

fn ago(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return String::new();
    };
    let s = SystemTime::now().duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..=1 => "Less than a second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

fn status_text(st: &State) -> String {
    match st.effective_status() {
        Status::Created => "Created".into(),
        Status::Running => format!("Up {}", ago(st.started_at.as_deref())),
        Status::Exited => match st.exit_code {
            Some(c) => format!("Exited ({c}) {} ago", ago(st.finished_at.as_deref())),
            None => "Exited (unknown)".into(),
        },
    }
}

/// `ps [-a]`.
pub fn ps(store_root: &Path, all: bool, quiet: bool) -> Result<i32> {
    let store = Store::open(store_root)?;
    let mut rows = Vec::new();
    for id in store.ids() {
        let Ok(st) = store.load(&id) else { continue };
        if !all && !running(&st) {
            continue;
        }
        rows.push(st);
    }
    rows.sort_by(|a, b| b.created.cmp(&a.created));
    let mut out = std::io::stdout();
    if quiet {
        for st in rows {
            let _ = writeln!(out, "{}", &st.id[..12]);
        }
        return Ok(0);
    }
    let mut table = vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"].map(String::from)];
    for st in rows {
        let mut cmd = format!("\"{}\"", st.config.args.join(" "));
        if cmd.chars().count() > 22 {
            cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
        }
        let rootfs = st.config.rootfs.describe();
        table.push([
            st.id[..12].to_string(),
            rootfs,
            cmd,
            format!("{} ago", ago(Some(&st.created))),
            status_text(&st),
            st.name.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 5 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        let _ = writeln!(out, "{line}");
    }
    Ok(0)
}

/// `inspect`: the states as a JSON array (status corrected for dead monitors).
pub fn inspect(store_root: &Path, refs: &[String]) -> Result<i32> {
    let store = Store::open(store_root)?;
    let mut out = Vec::new();
    for r in refs {
        let mut st = load(&store, r)?;
        st.status = st.effective_status();
        out.push(serde_json::to_value(&st).map_err(|e| Error::Protocol(e.to_string()))?);
    }
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Protocol(e.to_string()))?);
    Ok(0)
}

/// `logs` options.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<String>,
}

fn print_lines(lines: &[Line]) {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for l in lines {
        let _ = match l.stream {
            Stream::Stdout => out.write_all(&l.data),
            Stream::Stderr => err.write_all(&l.data),
        };
    }
    let _ = out.flush();
    let _ = err.flush();
}

/// `logs [-f] [--tail N] [--since T]`. Following ends when the container has exited and the log is
/// drained to its end.
pub fn logs(store_root: &Path, reference: &str, o: &LogsOptions) -> Result<i32> {
    let store = Store::open(store_root)?;
    let st = load(&store, reference)?;
    let dir = store.dir(&st.id);
    let since = match &o.since {
        Some(s) => Some(logs::parse_since(s).ok_or_else(|| Error::InvalidArgument(format!("invalid --since: {s}")))?),
        None => None,
    };
    sys::ignore_sigpipe();
    let (lines, mut cursor) =
        logs::read_lines(&dir, &ReadOptions { tail: o.tail, since }).map_err(|e| Error::io("read the log", e))?;
    print_lines(&lines);
    if o.follow {
        loop {
            // Read the exit marker first: everything logged before it is in the file by then.
            let exited = dir.join(monitor::EXIT_FILE).exists()
                || !st.monitor_alive() && !store.load(&st.id).is_ok_and(|s| s.monitor_alive());
            let new = cursor.poll(&dir).map_err(|e| Error::io("follow the log", e))?;
            print_lines(&new);
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(0)
}
