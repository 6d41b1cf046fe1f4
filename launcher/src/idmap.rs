//! Rootless user namespaces: the caller becomes root in the container and, when `/etc/subuid` and
//! `/etc/subgid` give it ranges and the setuid helpers `newuidmap`/`newgidmap` are installed, the ranges
//! become uids and gids 1.. in the container (podman's layout). Otherwise a single-id map, with a warning that
//! says why.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of `uid_map` / `gid_map`: `size` ids from `container` inside are `host` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// The user namespace of a rootless container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    /// The maps go through `newuidmap`/`newgidmap` (at these paths); `None`: the single-id map, written directly.
    pub helpers: Option<(PathBuf, PathBuf)>,
}

impl UserNs {
    /// The single-id map: the caller is root inside, nothing else is mapped.
    pub fn single(uid: u32, gid: u32) -> UserNs {
        UserNs {
            uid_map: vec![IdRange { container: 0, host: uid, size: 1 }],
            gid_map: vec![IdRange { container: 0, host: gid, size: 1 }],
            helpers: None,
        }
    }

    /// Whether `gid` exists in the container.
    pub fn maps_gid(&self, gid: u32) -> bool {
        self.gid_map.iter().any(|r| gid >= r.container && gid - r.container < r.size)
    }

    /// Whether more than the caller's own ids are mapped (then `setgroups` is allowed in the container).
    pub fn is_full(&self) -> bool {
        self.helpers.is_some()
    }

    /// Plans the namespace for the caller: `Ok(ns, None)` with ranges, `Ok(single, Some(why))` without.
    pub fn plan(
        uid: u32,
        gid: u32,
        user: &str,
        subuid: &str,
        subgid: &str,
        helpers: Option<(PathBuf, PathBuf)>,
    ) -> (UserNs, Option<String>) {
        let single = UserNs::single(uid, gid);
        let Some(helpers) = helpers else {
            return (single, Some("newuidmap/newgidmap not found (package uidmap)".into()));
        };
        let us = ranges(subuid, user, uid);
        let gs = ranges(subgid, user, uid);
        if us.is_empty() || gs.is_empty() {
            let file = if us.is_empty() { "/etc/subuid" } else { "/etc/subgid" };
            return (single, Some(format!("no range for user {user} in {file}")));
        }
        let build = |own: u32, subs: &[(u32, u32)]| {
            let mut map = vec![IdRange { container: 0, host: own, size: 1 }];
            let mut next = 1u32;
            for &(start, count) in subs {
                map.push(IdRange { container: next, host: start, size: count });
                next = next.saturating_add(count);
            }
            map
        };
        (UserNs { uid_map: build(uid, &us), gid_map: build(gid, &gs), helpers: Some(helpers) }, None)
    }

    /// Plans the namespace of the calling user from `/etc/subuid`, `/etc/subgid` and the helpers on `PATH`.
    pub fn detect() -> (UserNs, Option<String>) {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        let name = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string());
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let helpers = find_helper("newuidmap").zip(find_helper("newgidmap"));
        UserNs::plan(uid.as_raw(), gid.as_raw(), &name, &read("/etc/subuid"), &read("/etc/subgid"), helpers)
    }

    /// Writes the maps of process `pid` (its user namespace is new and still unmapped).
    pub fn write(&self, pid: i32) -> Result<()> {
        match &self.helpers {
            None => {
                let w = |file: &str, v: String| {
                    std::fs::write(format!("/proc/{pid}/{file}"), v)
                        .map_err(|e| Error::io("write user namespace id maps", e))
                };
                w("setgroups", "deny".into())?;
                w("uid_map", line(&self.uid_map))?;
                w("gid_map", line(&self.gid_map))?;
                Ok(())
            }
            Some((newuidmap, newgidmap)) => {
                run_helper(newuidmap, pid, &self.uid_map)?;
                run_helper(newgidmap, pid, &self.gid_map)
            }
        }
    }
}

impl UserNs {
    /// Removes the tree at `path` from inside a new user namespace with these maps (rootless `rm`): files the
    /// container created as its other users belong to subordinate ids on the host, which the caller cannot
    /// delete, but its root in a namespace mapping them can.
    pub fn remove_tree(&self, path: &Path) -> Result<()> {
        use crate::sys::{self, CloneResult};
        use std::os::fd::AsFd;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
        match sys::clone3(libc::CLONE_NEWUSER as u64, None).map_err(|e| Error::sys("clone a user namespace", e))? {
            CloneResult::Child => {
                drop(w);
                // Wait for the maps (EOF: the parent gave up).
                let mut b = [0u8; 1];
                let mapped = matches!(nix::unistd::read(&r, &mut b), Ok(1));
                let ok = mapped && std::fs::remove_dir_all(path).is_ok();
                sys::exit_now(if ok { 0 } else { 1 })
            }
            CloneResult::Parent { pid, pidfd } => {
                drop(r);
                let mapped = self.write(pid);
                if mapped.is_ok() {
                    let _ = nix::unistd::write(&w, b"m");
                }
                drop(w);
                let status = nix::sys::wait::waitid(
                    nix::sys::wait::Id::PIDFd(pidfd.as_fd()),
                    nix::sys::wait::WaitPidFlag::WEXITED,
                );
                mapped?;
                match status {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                    other => Err(Error::StateDir {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(format!(
                            "removal inside the container's user namespace failed ({other:?})"
                        )),
                    }),
                }
            }
        }
    }
}

fn line(map: &[IdRange]) -> String {
    map.iter().map(|r| format!("{} {} {}\n", r.container, r.host, r.size)).collect()
}

fn run_helper(helper: &Path, pid: i32, map: &[IdRange]) -> Result<()> {
    let mut c = Command::new(helper);
    c.arg(pid.to_string());
    for r in map {
        c.args([r.container.to_string(), r.host.to_string(), r.size.to_string()]);
    }
    let out = c
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::IdMap { helper: helper.to_path_buf(), reason: e.to_string() })?;
    if !out.status.success() {
        return Err(Error::IdMap {
            helper: helper.to_path_buf(),
            reason: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

/// `start:count` ranges of `user` (by name or uid) in a subuid/subgid file.
pub fn ranges(text: &str, user: &str, uid: u32) -> Vec<(u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            (who == user || who.parse::<u32>().ok() == Some(uid)).then_some((start, count))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// Looks a program up in `PATH` (and the usual directories when `PATH` lacks them).
fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let helpers = Some(("/usr/bin/newuidmap".into(), "/usr/bin/newgidmap".into()));
        let subuid = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\n";
        let (ns, warn) = UserNs::plan(1001, 1001, "alice", subuid, "alice:100000:65536\n", helpers.clone());
        assert_eq!(warn, None);
        assert_eq!(
            ns.uid_map,
            vec![
                IdRange { container: 0, host: 1001, size: 1 },
                IdRange { container: 1, host: 100000, size: 65536 },
                IdRange { container: 65537, host: 300000, size: 10 },
            ]
        );
        assert_eq!(line(&ns.gid_map), "0 1001 1\n1 100000 65536\n");
        assert!(ns.is_full() && ns.maps_gid(5) && !ns.maps_gid(65537));
        let (ns, warn) = UserNs::plan(1002, 1002, "carol", subuid, subuid, helpers);
        assert_eq!(ns, UserNs::single(1002, 1002));
        assert_eq!(warn.unwrap(), "no range for user carol in /etc/subuid");
        assert!(!ns.maps_gid(5) && ns.maps_gid(0));
        let (ns, warn) = UserNs::plan(1001, 1001, "alice", subuid, subuid, None);
        assert!(!ns.is_full());
        assert!(warn.unwrap().contains("newuidmap"));
    }
}
