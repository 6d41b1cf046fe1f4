//! Command lines and mount options.
//!
//! Two forms, one [`MountConfig`]:
//! - `layerfs mount [--upper DIR --work DIR] [-o OPTS] [-f] [-d] LAYER... MOUNTPOINT`: layers
//!   topmost first, the order of overlay's `lowerdir=`.
//! - fuse-overlayfs compatible: `layerfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W [SOURCE]
//!   MOUNTPOINT` (leftmost lowerdir = top; repeated `-o` merged; `\:` escapes a colon; unknown
//!   options are warned about and ignored; the mount flags mount(8) adds are accepted).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::SetupError;

/// A lower layer named on the command line, opened by [`crate::mount::open_layers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// A plain directory (either whiteout convention).
    Dir(PathBuf),
    /// A packed layer file (`.lpk`).
    Packed(PathBuf),
    /// An image from the store (`NAME[:TAG]`): all its layers, topmost first.
    Image(String),
}

impl LayerSpec {
    /// What a command-line layer argument names: an existing directory or file, else an image
    /// name if it parses as one (else a directory, which then fails to open with ENOENT).
    pub fn classify(arg: &str) -> LayerSpec {
        let path = PathBuf::from(arg);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => LayerSpec::Dir(path),
            Ok(_) => LayerSpec::Packed(path),
            Err(_) if !arg.starts_with(['/', '.']) && crate::store::ImageRef::parse(arg).is_ok() => {
                LayerSpec::Image(arg.to_string())
            }
            Err(_) => LayerSpec::Dir(path),
        }
    }
}

/// Kernel mount flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// `ro`
    pub ro: bool,
    /// `dev` (device nodes usable; default for a container root)
    pub dev: bool,
    /// `suid`
    pub suid: bool,
    /// `exec`
    pub exec: bool,
    /// `noatime`
    pub noatime: bool,
}

impl Default for Flags {
    fn default() -> Self {
        Flags { ro: false, dev: true, suid: true, exec: true, noatime: true }
    }
}

/// Everything a mount needs.
#[derive(Clone, Debug, PartialEq)]
pub struct MountConfig {
    /// Lower layers, topmost first.
    pub lowers: Vec<LayerSpec>,
    /// Upper directory (none: read-only).
    pub upper: Option<PathBuf>,
    /// Work directory (same filesystem as the upper).
    pub work: Option<PathBuf>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// The "device" shown in /proc/mounts.
    pub source: String,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Debug logging (implies foreground).
    pub debug: bool,
    /// Entry/attribute TTL.
    pub timeout: Duration,
    /// Try FUSE passthrough.
    pub passthrough: bool,
    /// Worker threads.
    pub threads: usize,
    /// Kernel flags.
    pub flags: Flags,
    /// Log file (daemon mode).
    pub log: Option<PathBuf>,
    /// `volatile` / `fsync=0`: fsync is a no-op (containers-storage's volatile mode).
    pub volatile: bool,
    /// `cache_inline=1`: the kernel caches inline data of packed layers per mount (default:
    /// direct I/O from the layer's mapping, shared by every mount).
    pub cache_inline: bool,
    /// `cache_dirs=0|1`: the kernel caches directory listings per mount.
    pub cache_dirs: bool,
    /// `uidmapping=`/`gidmapping=`: stored ids shown shifted (see [`crate::idmap`]).
    pub idmaps: crate::idmap::IdMaps,
    /// Options that were ignored (reported as warnings).
    pub ignored: Vec<String>,
    /// The objects directory of packed layers with external data (default: the store's, found
    /// beside the layer file).
    pub objects: Option<PathBuf>,
    /// The store that image names refer to (default: [`crate::store::default_root`]).
    pub store: Option<PathBuf>,
    /// `ready_fd=N`: an inherited descriptor (a pipe) that gets `ready\n` and is closed once
    /// the mount is live, for a parent that keeps the daemon in the foreground (`-f`) as its
    /// child; a parent reading EOF without it knows the mount failed.
    pub ready_fd: Option<i32>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            lowers: Vec::new(),
            upper: None,
            work: None,
            mountpoint: PathBuf::new(),
            source: "layerfs".into(),
            foreground: false,
            debug: false,
            timeout: Duration::from_secs(86400),
            passthrough: std::env::var_os("LAYERFS_NO_PASSTHROUGH").is_none(),
            threads: crate::sys::usable_cpus().clamp(2, 8),
            flags: Flags::default(),
            log: std::env::var_os("LAYERFS_LOG").map(PathBuf::from),
            volatile: false,
            cache_inline: false,
            cache_dirs: true,
            idmaps: crate::idmap::IdMaps::default(),
            ignored: Vec::new(),
            objects: None,
            store: None,
            ready_fd: None,
        }
    }
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Mount.
    Mount(Box<MountConfig>),
    /// Unmount a mountpoint.
    Umount(PathBuf),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Usage text.
pub const USAGE: &str = "\
usage: layerfs mount [--upper DIR --work DIR] [-o OPTS] [-f] [-d] LAYER... MOUNTPOINT
       layerfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] [SOURCE] MOUNTPOINT
       layerfs umount MOUNTPOINT
LAYERs are listed topmost first (like lowerdir=). Without an upper directory the mount is
read-only. Options: timeout=SECS, passthrough=0|1, cache_inline=0|1, cache_dirs=0|1, threads=N, log=FILE, ready_fd=N, ro, nodev,
nosuid, noexec, atime, uidmapping=STORED:SHOWN:LEN[:...], gidmapping=...; fuse-overlayfs options are accepted (unknown ones are ignored with a warning).
Environment: LAYERFS_NO_PASSTHROUGH, LAYERFS_LOG=FILE.";

fn bad(option: &str, reason: &str) -> SetupError {
    SetupError::BadOption { option: option.into(), reason: reason.into() }
}

/// Splits `a,b="c,d",e` at commas outside double quotes.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits a `lowerdir=` value at `:`, honouring `\:` (and `\\`) escapes. Empty entries
/// (overlay's `::` data-only separator) are skipped.
pub fn split_lowerdir(s: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

fn parse_bool(opt: &str, v: &str) -> Result<bool, SetupError> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(opt, "expected 0 or 1")),
    }
}

/// Applies one `-o` option.
pub fn apply_option(cfg: &mut MountConfig, opt: &str) -> Result<(), SetupError> {
    let (key, val) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    match (key, val) {
        ("lowerdir", Some(v)) => {
            cfg.lowers = split_lowerdir(v).into_iter().map(|p| LayerSpec::classify(&p.to_string_lossy())).collect()
        }
        ("objects", Some(v)) => cfg.objects = Some(v.into()),
        ("store", Some(v)) => cfg.store = Some(v.into()),
        ("ready_fd", Some(v)) => cfg.ready_fd = Some(v.parse().map_err(|_| bad(opt, "expected a descriptor number"))?),
        ("upperdir", Some(v)) => cfg.upper = Some(v.into()),
        ("workdir", Some(v)) => cfg.work = Some(v.into()),
        ("timeout", Some(v)) => {
            let secs: f64 = v.parse().map_err(|_| bad(opt, "expected seconds"))?;
            cfg.timeout = Duration::from_secs_f64(secs.clamp(0.0, 1e9));
        }
        ("passthrough", Some(v)) => cfg.passthrough = parse_bool(opt, v)?,
        ("threads", Some(v)) | ("max_threads", Some(v)) => {
            cfg.threads = v.parse::<usize>().map_err(|_| bad(opt, "expected a number"))?.clamp(1, 64)
        }
        ("threaded", Some(v)) => {
            if !parse_bool(opt, v)? {
                cfg.threads = 1
            }
        }
        ("log", Some(v)) => cfg.log = Some(v.into()),
        ("volatile", None) => cfg.volatile = true,
        ("cache_inline", Some(v)) => cfg.cache_inline = parse_bool(opt, v)?,
        ("cache_dirs", Some(v)) => cfg.cache_dirs = parse_bool(opt, v)?,
        ("uidmapping", Some(v)) => cfg.idmaps.uid = crate::idmap::IdMap::parse(opt, v)?,
        ("gidmapping", Some(v)) => cfg.idmaps.gid = crate::idmap::IdMap::parse(opt, v)?,
        ("fsync" | "sync", Some(v)) => cfg.volatile = !parse_bool(opt, v)?,
        ("fsname", Some(v)) => cfg.source = v.into(),
        ("debug", None) => cfg.debug = true,
        ("ro", None) => cfg.flags.ro = true,
        ("rw", None) => cfg.flags.ro = false,
        ("dev", None) => cfg.flags.dev = true,
        ("nodev", None) => cfg.flags.dev = false,
        ("suid", None) => cfg.flags.suid = true,
        ("nosuid", None) => cfg.flags.suid = false,
        ("exec", None) => cfg.flags.exec = true,
        ("noexec", None) => cfg.flags.exec = false,
        ("noatime", None) => cfg.flags.noatime = true,
        ("atime" | "relatime" | "strictatime", None) => cfg.flags.noatime = false,
        // Accepted and meaningless here (always on, or mount(8)/fuse-overlayfs knobs).
        (
            "default_permissions"
            | "allow_other"
            | "allow_root"
            | "async"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nodiratime"
            | "diratime"
            | "kernel_cache"
            | "splice_read"
            | "splice_write"
            | "splice_move"
            | "static_nlink"
            | "noacl"
            | "userxattr",
            None,
        ) => {}
        (
            "context" | "fscontext" | "defcontext" | "rootcontext" | "subtype" | "max_write" | "fast_ino"
            | "fast_ino_check" | "writeback" | "xino" | "redirect_dir" | "index" | "metacopy" | "noxattrs" | "plugins"
            | "ino32_t",
            Some(_),
        ) => {}
        _ => cfg.ignored.push(opt.to_string()),
    }
    Ok(())
}

fn take_value(args: &[String], i: &mut usize, what: &str) -> Result<String, SetupError> {
    *i += 1;
    args.get(*i).cloned().ok_or_else(|| SetupError::Usage(format!("{what} needs a value")))
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, SetupError> {
    match args.first().map(String::as_str) {
        None => return Err(SetupError::Usage(USAGE.into())),
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some("-V" | "--version") => return Ok(Command::Version),
        Some("umount" | "unmount") => {
            return match args.get(1) {
                Some(m) if args.len() == 2 => Ok(Command::Umount(m.into())),
                _ => Err(SetupError::Usage("usage: layerfs umount MOUNTPOINT".into())),
            };
        }
        _ => {}
    }
    let native = args[0] == "mount";
    let rest = if native { &args[1..] } else { args };
    let mut cfg = MountConfig::default();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].as_str();
        match a {
            "-f" | "--foreground" => cfg.foreground = true,
            "-d" | "--debug" => {
                cfg.debug = true;
                cfg.foreground = true;
            }
            "-o" => {
                let v = take_value(rest, &mut i, "-o")?;
                for o in split_options(&v) {
                    apply_option(&mut cfg, &o)?;
                }
            }
            "--upper" if native => cfg.upper = Some(take_value(rest, &mut i, "--upper")?.into()),
            "--work" if native => cfg.work = Some(take_value(rest, &mut i, "--work")?.into()),
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ if a.starts_with("-o") && a.len() > 2 => {
                for o in split_options(&a[2..]) {
                    apply_option(&mut cfg, &o)?;
                }
            }
            _ if a.starts_with('-') && a.len() > 1 => cfg.ignored.push(a.to_string()),
            _ => positional.push(a.to_string()),
        }
        i += 1;
    }
    if cfg.debug {
        cfg.foreground = true;
    }
    let mountpoint = positional.pop().ok_or_else(|| SetupError::Usage("missing MOUNTPOINT".into()))?;
    cfg.mountpoint = mountpoint.into();
    if native {
        for p in positional {
            cfg.lowers.push(LayerSpec::classify(&p));
        }
    } else {
        if positional.len() > 1 {
            return Err(SetupError::Usage(format!("unexpected arguments: {positional:?}\n{USAGE}")));
        }
        if let Some(src) = positional.pop() {
            cfg.source = src;
        }
    }
    if cfg.lowers.is_empty() && cfg.upper.is_none() {
        return Err(SetupError::Usage(format!("no layers given\n{USAGE}")));
    }
    if cfg.upper.is_some() != cfg.work.is_some() {
        return Err(SetupError::Usage("upper and work directories go together".into()));
    }
    if cfg.upper.is_none() {
        cfg.flags.ro = true;
    }
    Ok(Command::Mount(Box::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fuse_overlayfs_form() {
        let c = parse_args(&args(&[
            "-o",
            "lowerdir=/l/a\\:b:/l/c,upperdir=/u",
            "-o",
            "workdir=/w,context=\"system_u:object_r:x:s0:c1,c2\",rw,dev,suid,bogus",
            "overlay",
            "/mnt",
        ]))
        .unwrap();
        let Command::Mount(c) = c else { panic!() };
        assert_eq!(c.lowers, vec![LayerSpec::Dir("/l/a:b".into()), LayerSpec::Dir("/l/c".into())]);
        assert_eq!(c.upper, Some("/u".into()));
        assert_eq!(c.work, Some("/w".into()));
        assert_eq!(c.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(c.source, "overlay");
        assert_eq!(c.ignored, vec!["bogus".to_string()]);
        assert!(!c.flags.ro && c.flags.dev && c.flags.suid);
    }

    #[test]
    fn native_form_and_errors() {
        let Command::Mount(c) =
            parse_args(&args(&["mount", "--upper", "/u", "--work", "/w", "-f", "/top", "/bottom", "/mnt"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.lowers.len(), 2);
        assert!(c.foreground);
        let Command::Mount(ro) = parse_args(&args(&["mount", "/l", "/mnt"])).unwrap() else { panic!() };
        assert!(ro.flags.ro);
        assert!(parse_args(&args(&["mount", "--upper", "/u", "/l", "/mnt"])).is_err());
        assert!(parse_args(&args(&["-o", "rw", "/mnt"])).is_err());
        assert_eq!(parse_args(&args(&["umount", "/mnt"])).unwrap(), Command::Umount("/mnt".into()));
        let Command::Mount(r) = parse_args(&args(&["-f", "-o", "lowerdir=/l,ready_fd=7", "/mnt"])).unwrap() else {
            panic!()
        };
        assert_eq!(r.ready_fd, Some(7));
        assert!(parse_args(&args(&["-o", "lowerdir=/l,ready_fd=x", "/mnt"])).is_err());
    }
}
