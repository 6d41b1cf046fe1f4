//! `--net bridge`: a host bridge (created on first use), one veth pair per container, an address per
//! container from a private subnet, all over rtnetlink ([`crate::netlink`]).
//!
//! Addresses are leased in `<state root>/network/leases.json`, read and rewritten under an exclusive `flock` of
//! `<state root>/network/lock` (the same lock serializes the bridge's creation). A lease records the monitor's
//! pid and start time: a lease whose monitor is gone (crashed, killed) is reclaimed, and its host veth deleted,
//! by the next allocation or by `rm`. The host end is always deleted explicitly: the kernel tears a dead
//! network namespace down asynchronously, and its veth with it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netlink::Rtnl;
use crate::state::process_start_time;

/// The bridge's name unless `LAUNCHER_BRIDGE` says otherwise.
pub const DEFAULT_BRIDGE: &str = "lfs0";
/// The subnet unless `--subnet` / `LAUNCHER_SUBNET` says otherwise (podman uses 10.88/16, docker 172.17/16).
pub const DEFAULT_SUBNET: &str = "10.209.0.0/16";
/// The container's end of the veth pair.
pub const CONTAINER_IF: &str = "eth0";

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Subnet> {
        let bad = |why: &str| Error::InvalidArgument(format!("invalid subnet {s:?}: {why}"));
        let (a, p) = s.split_once('/').ok_or_else(|| bad("expected A.B.C.D/N"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet { network: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// The bridge's address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Container addresses: every host but the gateway (network and broadcast excluded).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let n = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (n + 2..n + size - 1).map(Ipv4Addr::from)
    }
}

/// What `--net bridge` asks for (in the container's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeConfig {
    pub bridge: String,
    pub subnet: Subnet,
}

impl BridgeConfig {
    /// From `--subnet` (or `LAUNCHER_SUBNET`) and `LAUNCHER_BRIDGE`.
    pub fn new(subnet: Option<&str>, bridge: Option<String>) -> Result<BridgeConfig> {
        let bridge = bridge.filter(|b| !b.is_empty()).unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if bridge.len() >= libc::IFNAMSIZ || bridge.contains(['/', ' ', ':']) {
            return Err(Error::InvalidArgument(format!("invalid bridge name {bridge:?}")));
        }
        Ok(BridgeConfig { bridge, subnet: subnet.unwrap_or(DEFAULT_SUBNET).parse()? })
    }
}

/// A container's place on the bridge (in its state, shown by `inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub bridge: String,
    /// The host end of the veth pair.
    pub host_if: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// The host end's name for container `id`: unique per container (15 bytes at most).
pub fn host_if_name(id: &str) -> String {
    format!("lfs{}", &id[..12.min(id.len())])
}

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    id: String,
    address: Ipv4Addr,
    host_if: String,
    monitor_pid: i32,
    monitor_start: u64,
}

impl Lease {
    fn alive(&self) -> bool {
        process_start_time(self.monitor_pid) == Some(self.monitor_start)
    }
}

fn net_err(step: String, e: Errno) -> Error {
    Error::Network { step, errno: e.into() }
}

/// The lease file, locked for as long as this lives.
struct Leases {
    _lock: Flock<std::fs::File>,
    path: PathBuf,
    leases: Vec<Lease>,
}

impl Leases {
    fn lock(root: &Path) -> Result<Leases> {
        let dir = root.join("network");
        std::fs::create_dir_all(&dir).map_err(|e| Error::StateDir { path: dir.clone(), source: e })?;
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| Error::StateDir { path: dir.join("lock"), source: e })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| net_err("lock the address leases".into(), e))?;
        let path = dir.join("leases.json");
        let leases = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::BadState { id: path.display().to_string(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::StateDir { path, source: e }),
        };
        Ok(Leases { _lock: lock, path, leases })
    }

    fn save(&self) -> Result<()> {
        let data = serde_json::to_vec_pretty(&self.leases).expect("leases serialize");
        crate::state::write_atomic(&self.path, &data)
            .map_err(|e| Error::StateDir { path: self.path.clone(), source: e })
    }

    /// Drops the leases whose monitor is gone, deleting their host veths; returns how many.
    fn reclaim(&mut self, nl: &mut Rtnl) -> usize {
        let before = self.leases.len();
        self.leases.retain(|l| {
            if l.alive() {
                return true;
            }
            let _ = nl.delete_link(&l.host_if);
            false
        });
        before - self.leases.len()
    }
}

/// Leases an address for container `id` (monitor `monitor_pid`) and makes sure the bridge exists, is up and
/// holds the gateway address. Stale leases are reclaimed first.
pub fn allocate(root: &Path, id: &str, cfg: &BridgeConfig, monitor_pid: i32) -> Result<Attachment> {
    let mut nl = Rtnl::open().map_err(|e| net_err("open rtnetlink".into(), e))?;
    let mut leases = Leases::lock(root)?;
    leases.reclaim(&mut nl);
    let subnet = cfg.subnet;
    let address = subnet
        .hosts()
        .find(|a| !leases.leases.iter().any(|l| l.address == *a))
        .ok_or_else(|| net_err(format!("allocate an address in {subnet}"), Errno::ENOSPC))?;
    ensure_bridge(&mut nl, cfg)?;
    let host_if = host_if_name(id);
    leases.leases.push(Lease {
        id: id.into(),
        address,
        host_if: host_if.clone(),
        monitor_pid,
        monitor_start: process_start_time(monitor_pid).unwrap_or(0),
    });
    leases.save()?;
    Ok(Attachment { bridge: cfg.bridge.clone(), host_if, address, prefix: subnet.prefix, gateway: subnet.gateway() })
}

fn ensure_bridge(nl: &mut Rtnl, cfg: &BridgeConfig) -> Result<()> {
    let name = &cfg.bridge;
    let index = match nl.link_index(name).map_err(|e| net_err(format!("look up bridge {name}"), e))? {
        Some(i) => i,
        None => {
            match nl.create_bridge(name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(net_err(format!("create bridge {name}"), e)),
            }
            nl.link_index(name)
                .map_err(|e| net_err(format!("look up bridge {name}"), e))?
                .ok_or_else(|| net_err(format!("look up bridge {name}"), Errno::ENODEV))?
        }
    };
    let gw = cfg.subnet.gateway();
    match nl.add_address(index, gw, cfg.subnet.prefix) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(net_err(format!("add {gw}/{} to bridge {name}", cfg.subnet.prefix), e)),
    }
    nl.set_up(index).map_err(|e| net_err(format!("bring bridge {name} up"), e))
}

/// Creates the container's veth pair: the host end on the bridge, `eth0` in the network namespace of `pid`.
pub fn attach(att: &Attachment, pid: i32) -> Result<()> {
    let mut nl = Rtnl::open().map_err(|e| net_err("open rtnetlink".into(), e))?;
    let bridge = nl
        .link_index(&att.bridge)
        .map_err(|e| net_err(format!("look up bridge {}", att.bridge), e))?
        .ok_or_else(|| net_err(format!("look up bridge {}", att.bridge), Errno::ENODEV))?;
    nl.create_veth(&att.host_if, bridge, CONTAINER_IF, pid)
        .map_err(|e| net_err(format!("create veth {} (peer {CONTAINER_IF} in the container)", att.host_if), e))
}

/// Deletes the host end of the container's veth pair (the peer goes with it) and returns the address.
pub fn release(root: &Path, id: &str, att: &Attachment) -> Result<()> {
    let mut nl = Rtnl::open().map_err(|e| net_err("open rtnetlink".into(), e))?;
    let deleted = nl.delete_link(&att.host_if).map_err(|e| net_err(format!("delete veth {}", att.host_if), e));
    let mut leases = Leases::lock(root)?;
    leases.leases.retain(|l| l.id != id);
    leases.save()?;
    deleted.map(drop)
}

/// Releases whatever container `id` still holds (its monitor died without cleaning up).
pub fn release_stale(root: &Path, id: &str) -> Result<()> {
    if !root.join("network/leases.json").exists() {
        return Ok(());
    }
    let mut nl = Rtnl::open().map_err(|e| net_err("open rtnetlink".into(), e))?;
    let mut leases = Leases::lock(root)?;
    let before = leases.leases.len();
    leases.leases.retain(|l| {
        if l.id != id || l.alive() {
            return true;
        }
        let _ = nl.delete_link(&l.host_if);
        false
    });
    if leases.leases.len() != before {
        leases.save()?;
    }
    Ok(())
}

/// Inside the container (its own network namespace, after the monitor created the veth): address `eth0`,
/// bring it up, route through the bridge.
pub fn configure_container(att: &Attachment) -> std::result::Result<(), (String, Errno)> {
    let mut nl = Rtnl::open().map_err(|e| ("open rtnetlink".to_string(), e))?;
    let index = nl
        .link_index(CONTAINER_IF)
        .and_then(|i| i.ok_or(Errno::ENODEV))
        .map_err(|e| (format!("find {CONTAINER_IF}"), e))?;
    nl.add_address(index, att.address, att.prefix)
        .map_err(|e| (format!("add {}/{} to {CONTAINER_IF}", att.address, att.prefix), e))?;
    nl.set_up(index).map_err(|e| (format!("bring {CONTAINER_IF} up"), e))?;
    nl.add_default_route(att.gateway).map_err(|e| (format!("add the default route via {}", att.gateway), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.209.3.7/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.209.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 209, 0, 1));
        let h: Vec<Ipv4Addr> = "192.168.5.0/30".parse::<Subnet>().unwrap().hosts().collect();
        assert_eq!(h, vec![Ipv4Addr::new(192, 168, 5, 2)]);
        assert_eq!("10.0.0.0/24".parse::<Subnet>().unwrap().hosts().count(), 253);
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("x/16".parse::<Subnet>().is_err());
        assert_eq!(host_if_name(&"ab".repeat(32)).len(), 15);
        assert!(BridgeConfig::new(None, Some("a-very-long-bridge-name".into())).is_err());
        assert_eq!(BridgeConfig::new(None, None).unwrap().bridge, "lfs0");
    }
}
