//! Runs processes in containers: namespaces, cgroups, a pty or pipes, logs, and a per-container monitor.
//!
//! Module map:
//! - [`client`]: the commands (`run`, `ps`, `stop`, `kill`, `wait`, `logs`, `attach`, `rm`, `inspect`).
//! - [`changes`]: `diff`, `commit`, `export` and `cp` (a container's changes, through the `tools` library).
//! - [`monitor`]: the per-container monitor process (conmon's job): starts the container, relays and logs
//!   its streams, serves the attach socket, records the exit, cleans up.
//! - [`init`]: the container side after clone: mounts, hostname, loopback, pty, user, capabilities, exec,
//!   and the `--init` reaper.
//! - [`mounts`]: the mount sequence over the [`sys::Syscalls`] seam (unit-tested with a recording fake).
//! - [`idmap`]: rootless user namespaces (subordinate ids through newuidmap/newgidmap, or a single id).
//! - [`cgroups`]: v1, v2 and hybrid cgroups; [`capabilities`], [`user`]: credentials.
//! - [`network`]: `--net bridge` (bridge, veth, address leases) over [`netlink`] (rtnetlink requests).
//! - [`rootfs`]: where the root filesystem comes from: a directory, or an image of the store mounted by a layerfs
//!   daemon in a mount namespace of its own.
//! - [`state`], [`logs`], [`proto`], [`terminal`], [`config`], [`error`].
//! - [`sys`]: the only module with `unsafe`.

pub mod capabilities;
pub mod cgroups;
pub mod changes;
pub mod client;
pub mod config;
pub mod error;
pub mod idmap;
pub mod init;
pub mod logs;
pub mod monitor;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod proto;
pub mod rootfs;
pub mod state;
pub mod sys;
pub mod terminal;
pub mod user;

pub use error::{Error, Result};
