//! Mounting: open the layers, build the union, mount with fuser, serve until unmounted.
//!
//! The mount is live when [`mount`] returns (fuser has mounted and answered the kernel's
//! INIT), so a caller that daemonises afterwards reports success only for a live mount, which
//! is the contract of a podman `mount_program`. [`serve`] returns when the filesystem is
//! unmounted (by anyone: `umount`, `fusermount3 -u`, a lazy detach) or on SIGTERM/SIGINT/SIGHUP,
//! which unmount it (lazily, so a busy mount does not keep the daemon alive).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::core::Union;
use crate::dir_lower::DirLower;
use crate::error::SetupError;
use crate::fuse::{FsOptions, LayerFs};
use crate::lower::Lower;
use crate::options::{LayerSpec, MountConfig};
use crate::packed::PackedLower;
use crate::sys;
use crate::upper::Upper;

/// Opens the configured layers, topmost first: directories, packed layer files, and image
/// names (expanded into their packed layers from the store).
pub fn open_layers(cfg: &MountConfig) -> Result<Vec<Arc<dyn Lower>>, SetupError> {
    open_layers_leased(cfg, &mut crate::lease::Leases::default())
}

/// [`open_layers`], noting every packed layer in `leases`.
pub fn open_layers_leased(
    cfg: &MountConfig,
    leases: &mut crate::lease::Leases,
) -> Result<Vec<Arc<dyn Lower>>, SetupError> {
    let mut out: Vec<Arc<dyn Lower>> = Vec::new();
    for spec in &cfg.lowers {
        match spec {
            LayerSpec::Dir(p) => out.push(Arc::new(DirLower::open(p)?)),
            LayerSpec::Packed(p) => {
                out.push(Arc::new(PackedLower::open(p, cfg.objects.as_deref())?));
                leases.note(p);
            }
            LayerSpec::Image(name) => {
                let root = cfg.store.clone().unwrap_or_else(crate::store::default_root);
                let layers = crate::store::image_layers(&root, name).map_err(|e| SetupError::Open {
                    what: "image",
                    path: name.into(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
                })?;
                let objects = cfg.objects.clone().unwrap_or_else(|| crate::store::objects_dir(&root));
                for l in layers {
                    out.push(Arc::new(PackedLower::open(&l, Some(&objects))?));
                    leases.note(&l);
                }
            }
        }
    }
    Ok(out)
}

/// Opens the layers and the upper directory (no tree walk: cost independent of their size).
pub fn build_union(cfg: &MountConfig) -> Result<Union, SetupError> {
    build_union_leased(cfg, &mut crate::lease::Leases::default())
}

/// [`build_union`], noting the packed layers in `leases`.
pub fn build_union_leased(cfg: &MountConfig, leases: &mut crate::lease::Leases) -> Result<Union, SetupError> {
    let layers = open_layers_leased(cfg, leases)?;
    let upper = match (&cfg.upper, &cfg.work) {
        (Some(u), Some(w)) if !cfg.flags.ro => Some(Upper::open(u, w)?),
        _ => None,
    };
    Union::new(layers, upper)
}

/// A mounted, not yet served filesystem.
pub struct Mounted {
    session: fuser::Session<LayerFs>,
    union: Arc<Union>,
    mountpoint: std::path::PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mounted({})", self.mountpoint.display())
    }
}

/// Mounts `union` at the configured mountpoint; returns once the mount is live.
pub fn mount(cfg: &MountConfig, union: Union) -> std::io::Result<Mounted> {
    use fuser::MountOption as M;
    let union = Arc::new(union);
    let fs = LayerFs::new(
        union.clone(),
        FsOptions {
            ttl: cfg.timeout,
            passthrough: cfg.passthrough,
            volatile: cfg.volatile,
            cache_inline: cfg.cache_inline,
            cache_dirs: cfg.cache_dirs,
            idmaps: cfg.idmaps.clone(),
            ..FsOptions::default()
        },
    );
    let mut opts = vec![M::FSName(cfg.source.clone()), M::Subtype("layerfs".into()), M::DefaultPermissions];
    let f = &cfg.flags;
    opts.push(if f.ro { M::RO } else { M::RW });
    opts.push(if f.dev { M::Dev } else { M::NoDev });
    opts.push(if f.suid { M::Suid } else { M::NoSuid });
    opts.push(if f.exec { M::Exec } else { M::NoExec });
    opts.push(if f.noatime { M::NoAtime } else { M::Atime });
    let mut config = fuser::Config::default();
    config.mount_options = opts;
    config.acl = if sys::geteuid() == 0 { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, &cfg.mountpoint, &config)?;
    Ok(Mounted { session, union, mountpoint: cfg.mountpoint.clone() })
}

/// Sets up logging to standard error (`LAYERFS_LOG_LEVEL`, else `info`, or `debug` with `debug`).
pub fn init_logging(debug: bool) {
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false);
    // An `EnvFilter` costs a few hundred microseconds to build (on a container's start path): only when asked for.
    match std::env::var("LAYERFS_LOG_LEVEL") {
        Ok(directives) => fmt.with_env_filter(tracing_subscriber::EnvFilter::new(directives)).init(),
        Err(_) => fmt.with_max_level(if debug { tracing::Level::DEBUG } else { tracing::Level::INFO }).init(),
    }
}

/// A whole foreground daemon after its arguments are parsed: takes the store locks, opens the layers and the
/// upper, mounts, writes `ready\n` to `ready` (and closes it) once the mount is live, calls `after_ready` (the
/// `layerfs` program daemonises there), publishes the store leases and serves until unmounted or signalled (see
/// [`serve`]). For a caller that runs the daemon as a forked child of its own instead of executing `layerfs`
/// (the launcher): call it in a single-threaded process, with logging set up ([`init_logging`]).
pub fn mount_and_serve(
    cfg: &MountConfig,
    ready: Option<std::os::fd::OwnedFd>,
    after_ready: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    for o in &cfg.ignored {
        tracing::warn!("unknown argument ignored: {o}");
    }
    if let Err(e) = std::fs::File::open(&cfg.mountpoint)
        && matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
    {
        anyhow::bail!(
            "{} is a FUSE mount whose daemon died; run `layerfs umount {}` first",
            cfg.mountpoint.display(),
            cfg.mountpoint.display()
        );
    }
    sys::raise_nofile_limit();
    sys::fix_mmap_threshold();
    // The kernel applies the caller's umask; ours must not apply a second one.
    sys::umask(0);
    // Garbage collection of the store waits while we open its layers; our lease keeps them
    // (and their objects) alive for as long as we run.
    let mut leases = crate::lease::Leases::lock(cfg).context("locking the store")?;
    let union = build_union_leased(cfg, &mut leases)?;
    let mounted = mount(cfg, union).with_context(|| format!("mounting {}", cfg.mountpoint.display()))?;
    if let Some(fd) = ready {
        std::fs::File::from(fd).write_all(b"ready\n").context("writing to ready_fd")?;
    }
    after_ready()?;
    leases.publish().context("writing the store lease")?;
    serve(mounted).context("serving")?;
    Ok(())
}

/// Serves requests until the filesystem is unmounted; SIGTERM, SIGINT and SIGHUP unmount it.
/// Must be called before any other thread exists that should receive those signals.
pub fn serve(m: Mounted) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    let mp = m.mountpoint.clone();
    let union = m.union.clone();
    std::thread::Builder::new().name("layerfs-signals".into()).spawn(move || {
        // Read-ahead of the layers' metadata here rather than before the mount: it is
        // proportional to the image, and the mount must not be.
        union.prefetch();
        drop(union);
        if let Ok(sig) = set.wait() {
            tracing::info!(?sig, mountpoint = %mp.display(), "unmounting");
            if let Err(e) = umount(&mp, true) {
                tracing::warn!(%e, "unmount failed");
            }
        }
    })?;
    m.session.run()
}

/// Unmounts a layerfs mountpoint (`lazy`: detach even when busy). Falls back to
/// `fusermount3 -u` when not privileged.
pub fn umount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let c =
        CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    match sys::umount2(&c, flags) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg(if lazy { "-uz" } else { "-u" })
                .arg(mountpoint)
                .status()?;
            if st.success() { Ok(()) } else { Err(e) }
        }
        Err(e) => Err(e),
    }
}
