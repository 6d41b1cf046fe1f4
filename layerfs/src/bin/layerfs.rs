//! `layerfs`: mount a union of read-only layers under a writable upper directory.
//! Thin glue: parse arguments, set up logging, call the library, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context;
use layerfs::options::{Command, MountConfig, USAGE, parse_args};
use layerfs::sys;

fn run_mount(cfg: MountConfig) -> anyhow::Result<()> {
    layerfs::mount::init_logging(cfg.debug);
    // Claimed before anything is opened, so that the number cannot name one of our descriptors.
    let ready = cfg.ready_fd.map(sys::take_inherited_fd).transpose().context("ready_fd")?;
    layerfs::mount::mount_and_serve(&cfg, ready, || {
        if !cfg.foreground {
            let pid = sys::fork_single_threaded().context("daemonising")?;
            if pid > 0 {
                // Parent: report success without running destructors (they would unmount).
                std::process::exit(0);
            }
            sys::setsid().context("setsid")?;
            sys::redirect_stdio(cfg.log.as_deref()).context("redirecting output")?;
        }
        Ok(())
    })
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
