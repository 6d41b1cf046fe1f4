//! What a container is made of: the validated configuration built from the command line, stored in
//! `state.json` and read by the monitor and the container init.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rootfs::RootFsSpec;
use crate::sys::WinSize;

/// The default `PATH` inside containers (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Own network namespace with only the loopback interface, up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Own network namespace with `eth0`, one end of a veth pair whose other end is on a host bridge.
    Bridge,
}

impl NetMode {
    /// Whether the container gets its own network namespace.
    pub fn own_netns(self) -> bool {
        self != NetMode::Host
    }
}

impl std::str::FromStr for NetMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(NetMode::None),
            "host" => Ok(NetMode::Host),
            "bridge" => Ok(NetMode::Bridge),
            other => Err(Error::InvalidArgument(format!(
                "network mode {other:?} is not supported (use none, host or bridge)"
            ))),
        }
    }
}

/// Whether the container gets a cgroup of its own (podman's `--cgroups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Only when a resource limit is asked for: moving a process into a cgroup v1 costs an RCU grace period
    /// (~10 ms here), most of a container's start. Without one the container stays in the launcher's cgroup.
    #[default]
    Auto,
    /// Always.
    Enabled,
    /// Never (limits are refused).
    Disabled,
}

impl CgroupMode {
    /// Whether to create the cgroup for these limits.
    pub fn wanted(self, limits: &Limits) -> bool {
        match self {
            CgroupMode::Auto => limits.any(),
            CgroupMode::Enabled => true,
            CgroupMode::Disabled => false,
        }
    }
}

impl std::str::FromStr for CgroupMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(CgroupMode::Auto),
            "enabled" => Ok(CgroupMode::Enabled),
            "disabled" => Ok(CgroupMode::Disabled),
            other => {
                Err(Error::InvalidArgument(format!("invalid --cgroups {other:?} (use auto, enabled or disabled)")))
            }
        }
    }
}

/// cgroup limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU quota in microseconds per 100 ms period.
    pub cpu_quota: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<u64>,
}

impl Limits {
    /// The CFS period used for `--cpus`.
    pub const CPU_PERIOD: u64 = 100_000;

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpu_quota.is_some() || self.pids.is_some()
    }
}

/// Log options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogConfig {
    /// Rotate when the log file would grow past this many bytes (`None`: never).
    pub max_size: Option<u64>,
    /// Number of rotated files kept besides the live one.
    pub max_files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { max_size: None, max_files: 1 }
    }
}

/// Everything the monitor and the container init need to start a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    pub rootfs: RootFsSpec,
    /// Command and arguments.
    pub args: Vec<String>,
    /// Environment, `K=V` (HOME is added by the init when missing, from the user's passwd entry).
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// `-u` as given (`uid[:gid]` or `name[:group]`), `None` for root.
    pub user: Option<String>,
    pub hostname: String,
    pub tty: bool,
    pub interactive: bool,
    pub detach: bool,
    pub remove: bool,
    pub net: NetMode,
    /// The bridge and subnet for [`NetMode::Bridge`].
    #[serde(default)]
    pub bridge: Option<crate::network::BridgeConfig>,
    pub read_only: bool,
    pub init: bool,
    /// Final capability names (`CAP_...`).
    pub caps: Vec<String>,
    pub limits: Limits,
    /// `--cgroups`.
    #[serde(default)]
    pub cgroups: CgroupMode,
    pub log: LogConfig,
    /// Initial terminal size for `-t`.
    pub winsize: Option<WinSize>,
    /// Run in a user namespace mapping the caller's uid and gid to root.
    pub rootless: bool,
    /// The rootless user namespace's id maps.
    #[serde(default)]
    pub userns: Option<crate::idmap::UserNs>,
    /// `-v` and `--tmpfs`.
    #[serde(default)]
    pub mounts: Vec<crate::mounts::UserMount>,
}

/// Parses a docker size: `512`, `100k`, `64m`, `1g`, `1.5g` (binary units, optional trailing `b`).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidArgument(format!("invalid size: {s:?}"));
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    if !(f.is_finite() && f >= 0.0) {
        return Err(bad());
    }
    Ok((f * mult as f64) as u64)
}

/// Parses `--memory`: docker's minimum is 6 MiB.
pub fn parse_memory(s: &str) -> Result<u64> {
    let n = parse_size(s)?;
    if n < 6 << 20 {
        return Err(Error::InvalidArgument("Minimum memory limit allowed is 6MB".into()));
    }
    Ok(n)
}

/// Parses `--cpus` into a CFS quota (microseconds per [`Limits::CPU_PERIOD`]); `ncpu` bounds it.
pub fn parse_cpus(s: &str, ncpu: usize) -> Result<u64> {
    let f: f64 = s.trim().parse().map_err(|_| Error::InvalidArgument(format!("invalid argument {s:?} for --cpus")))?;
    if !(0.01..=ncpu as f64).contains(&f) {
        return Err(Error::InvalidArgument(format!(
            "range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )));
    }
    Ok((f * Limits::CPU_PERIOD as f64).round() as u64)
}

/// Builds the container environment like docker: `PATH` (unless the image sets it), `HOSTNAME`, `TERM` (with a
/// tty), then the image's `Env`, then each `-e` (`K=V`, or `K` alone to copy the caller's value; unset
/// variables are dropped like docker does). A later value of a key replaces the earlier one in place.
pub fn build_env(
    hostname: &str,
    tty: bool,
    image_env: &[String],
    extra: &[String],
    caller: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let mut env: Vec<String> = vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}")];
    if tty {
        env.push("TERM=xterm".into());
    }
    fn set(env: &mut Vec<String>, k: &str, v: &str) {
        match env.iter_mut().find(|x| x.split_once('=').map(|(a, _)| a) == Some(k)) {
            Some(slot) => *slot = format!("{k}={v}"),
            None => env.push(format!("{k}={v}")),
        }
    }
    for e in image_env {
        // An image entry without `=` is meaningless; skip it rather than refuse the image.
        if let Some((k, v)) = e.split_once('=')
            && !k.is_empty()
        {
            set(&mut env, k, v);
        }
    }
    for e in extra {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match caller(e) {
                Some(v) => (e.clone(), v),
                None => continue,
            },
        };
        if k.is_empty() {
            return Err(Error::InvalidArgument(format!("invalid environment variable: {e}")));
        }
        set(&mut env, &k, &v);
    }
    Ok(env)
}

/// The command of a container, docker's rules: the entrypoint (`--entrypoint` replaces the image's, `""`
/// clears it, and then the image's `Cmd` is dropped too) followed by the command line's arguments, or else the
/// image's `Cmd`.
pub fn command(
    entrypoint_flag: Option<&str>,
    image_entrypoint: &[String],
    image_cmd: &[String],
    args: &[String],
) -> Result<Vec<String>> {
    let (entrypoint, default_cmd): (Vec<String>, &[String]) = match entrypoint_flag {
        Some("") => (Vec::new(), &[]),
        Some(e) => (vec![e.to_string()], &[]),
        None => (image_entrypoint.to_vec(), image_cmd),
    };
    let cmd = if args.is_empty() { default_cmd.to_vec() } else { args.to_vec() };
    let all: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if all.is_empty() {
        return Err(Error::InvalidArgument("No command specified".into()));
    }
    Ok(all)
}

/// Looks a variable up in a `K=V` list.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_memory("1m").is_err());
        assert_eq!(parse_memory("6m").unwrap(), 6 << 20);
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5", 2).unwrap(), 50_000);
        assert_eq!(parse_cpus("2", 2).unwrap(), 200_000);
        assert!(parse_cpus("3", 2).is_err());
        assert!(parse_cpus("0.001", 2).is_err());
        assert!(parse_cpus("abc", 2).is_err());
    }

    #[test]
    fn environment() {
        let env = build_env("h", true, &[], &["A=1".into(), "PATH=/x".into(), "B".into(), "C".into()], |k| {
            (k == "B").then(|| "from-caller".to_string())
        })
        .unwrap();
        assert_eq!(env, ["PATH=/x", "HOSTNAME=h", "TERM=xterm", "A=1", "B=from-caller"]);
        assert_eq!(env_get(&env, "PATH"), Some("/x"));
        assert_eq!(env_get(&env, "PAT"), None);
        assert!(build_env("h", false, &[], &["=x".into()], |_| None).is_err());
        // The image's environment comes before -e, after the defaults.
        let image = ["PATH=/img/bin".to_string(), "LANG=C.UTF-8".into(), "junk".into(), "A=image".into()];
        let env = build_env("h", false, &image, &["A=flag".into()], |_| None).unwrap();
        assert_eq!(env, ["PATH=/img/bin", "HOSTNAME=h", "LANG=C.UTF-8", "A=flag"]);
    }

    #[test]
    fn commands_follow_docker() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ep = s(&["/entry", "-x"]);
        let cmd = s(&["default"]);
        assert_eq!(command(None, &ep, &cmd, &[]).unwrap(), s(&["/entry", "-x", "default"]));
        assert_eq!(command(None, &ep, &cmd, &s(&["a", "b"])).unwrap(), s(&["/entry", "-x", "a", "b"]));
        assert_eq!(command(None, &[], &cmd, &[]).unwrap(), s(&["default"]));
        assert_eq!(command(Some("/bin/echo"), &ep, &cmd, &[]).unwrap(), s(&["/bin/echo"]));
        assert_eq!(command(Some("/bin/echo"), &ep, &cmd, &s(&["hi"])).unwrap(), s(&["/bin/echo", "hi"]));
        assert_eq!(command(Some(""), &ep, &cmd, &s(&["ls"])).unwrap(), s(&["ls"]));
        assert!(command(Some(""), &ep, &cmd, &[]).is_err());
        assert!(command(None, &[], &[], &[]).is_err());
    }
}
