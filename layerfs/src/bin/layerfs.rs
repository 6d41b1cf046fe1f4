//! `layerfs`: mount a union of read-only layers under a writable upper directory.
//! Thin glue: parse arguments, set up logging, call the library, map errors to exit codes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use layerfs::options::{Command, MountConfig, USAGE, parse_args};
use layerfs::sys;

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAYERFS_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

fn run_mount(cfg: MountConfig) -> anyhow::Result<()> {
    init_logging(cfg.debug);
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
    // Claimed before anything is opened, so that the number cannot name one of our descriptors.
    let ready = cfg.ready_fd.map(sys::take_inherited_fd).transpose().context("ready_fd")?;
    sys::raise_nofile_limit();
    // The kernel applies the caller's umask; ours must not apply a second one.
    sys::umask(0);
    // Garbage collection of the store waits while we open its layers; our lease keeps them
    // (and their objects) alive for as long as we run.
    let mut leases = layerfs::lease::Leases::lock(&cfg).context("locking the store")?;
    let union = layerfs::mount::build_union_leased(&cfg, &mut leases)?;
    let mounted =
        layerfs::mount::mount(&cfg, union).with_context(|| format!("mounting {}", cfg.mountpoint.display()))?;
    // The mount is live here.
    if let Some(fd) = ready {
        std::fs::File::from(fd).write_all(b"ready\n").context("writing to ready_fd")?;
    }
    if !cfg.foreground {
        let pid = sys::fork_single_threaded().context("daemonising")?;
        if pid > 0 {
            // Parent: report success without running destructors (they would unmount).
            std::process::exit(0);
        }
        sys::setsid().context("setsid")?;
        sys::redirect_stdio(cfg.log.as_deref()).context("redirecting output")?;
    }
    leases.publish().context("writing the store lease")?;
    layerfs::mount::serve(mounted).context("serving")?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("layerfs {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Umount(mp) => {
            layerfs::mount::umount(&mp, false).with_context(|| format!("unmounting {}", mp.display()))
        }
        Command::Mount(cfg) => run_mount(*cfg),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
