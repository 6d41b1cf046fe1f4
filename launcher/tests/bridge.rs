//! `--net bridge` on real containers. Everything runs in a network namespace the test creates (a sleeping
//! `unshare -n` process), so the bridge, the veths and every address stay inside it.

mod common;

use std::process::{Child, Command, Output, Stdio};

use common::*;

/// A private network namespace held by a sleeping process.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["-n", "--", "sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) creates a network namespace");
        let ns = Netns { holder };
        let me = std::fs::read_link("/proc/self/ns/net").unwrap();
        wait_for("the namespace holder to unshare", &mut || {
            std::fs::read_link(format!("/proc/{}/ns/net", ns.holder.id())).is_ok_and(|n| n != me)
        });
        ns
    }

    /// `PROG ARGS` inside the namespace.
    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.holder.id().to_string()).args(["-n", "--", prog]).args(args).stdin(Stdio::null());
        c
    }

    /// `launcher ARGS` inside the namespace, with the environment's state root.
    fn launcher(&self, env: &Env, args: &[&str]) -> Output {
        let mut c = self.cmd(env!("CARGO_BIN_EXE_launcher"), args);
        c.env("LAUNCHER_ROOT", &env.state).env_remove("LAUNCHER_SUBNET").env_remove("LAUNCHER_BRIDGE");
        output(c)
    }

    /// `launcher run --rootfs R OPTS CMD` inside the namespace.
    fn run(&self, env: &Env, opts: &[&str], cmd: &[&str]) -> Output {
        let r = env.rootfs.to_str().unwrap();
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--rootfs", r]);
        args.extend_from_slice(cmd);
        self.launcher(env, &args)
    }

    /// Names of the network interfaces in the namespace.
    fn links(&self) -> Vec<String> {
        let out = ok(&output(self.cmd("cat", &["/proc/net/dev"])));
        out.lines().skip(2).filter_map(|l| Some(l.split(':').next()?.trim().to_string())).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn address(env: &Env, ns: &Netns, r: &str) -> String {
    let out = ok(&ns.launcher(env, &["inspect", r]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["network"]["address"].as_str().unwrap_or_else(|| panic!("no address for {r}: {out}")).to_string()
}

fn veths(ns: &Netns) -> Vec<String> {
    // Host ends are `lfs` + 12 hex digits of the container id.
    let host_end =
        |l: &str| l.len() == 15 && l.strip_prefix("lfs").is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    ns.links().into_iter().filter(|l| host_end(l)).collect()
}

#[test]
fn bridged_containers_reach_each_other_and_the_host() {
    let ns = Netns::new();
    let env = Env::new();
    let shared = env.tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let vol = format!("{}:/shared", shared.display());
    // NET_RAW: busybox ping needs a raw socket (podman's default set leaves it out).
    let net = ["--net", "bridge", "--cap-add", "NET_RAW", "-v", vol.as_str()];
    // a waits for b's address, pings it, and reports.
    let mut opts = net.to_vec();
    opts.extend(["-d", "--name", "a"]);
    ok(&ns.run(
        &env,
        &opts,
        &[
            "sh",
            "-c",
            "until [ -s /shared/b-ip ]; do sleep 0.05; done; ping -c1 -W10 $(cat /shared/b-ip) >/shared/a-ping 2>&1; \
             echo $? >/shared/a-rc.tmp; mv /shared/a-rc.tmp /shared/a-rc; exec sleep 1000",
        ],
    ));
    let a = address(&env, &ns, "a");
    // The host reaches a.
    let ping = output(ns.cmd(busybox().to_str().unwrap(), &["ping", "-c1", "-W10", &a]));
    assert_eq!(code(&ping), 0, "host pings {a}: {}{}", stdout(&ping), stderr(&ping));
    // b publishes its address, pings a, waits for a's result.
    let mut opts = net.to_vec();
    opts.extend(["--rm", "--name", "b", "--hostname", "bee"]);
    let script = format!(
        "hostname -i >/shared/b-ip.tmp; mv /shared/b-ip.tmp /shared/b-ip; ping -c1 -W10 {a} >/dev/null && echo b-reached-a; \
         until [ -f /shared/a-rc ]; do sleep 0.05; done; echo a-rc=$(cat /shared/a-rc); \
         ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f2,4; ip route | grep default; grep bee /etc/hosts"
    );
    let out = ok(&ns.run(&env, &opts, &["sh", "-c", &script]));
    let b = std::fs::read_to_string(shared.join("b-ip")).unwrap().trim().to_string();
    assert!(out.contains("b-reached-a"), "{out}");
    assert!(
        out.contains("a-rc=0"),
        "a pings b ({b}): {out}\n{}",
        std::fs::read_to_string(shared.join("a-ping")).unwrap()
    );
    assert!(out.contains(&format!("eth0 {b}/16")), "{out}");
    assert!(out.contains("default via 10.209.0.1 dev eth0"), "{out}");
    assert!(out.contains(&format!("{b}\tbee")), "/etc/hosts names the container's address: {out}");
    assert_ne!(a, b);
    assert!(a.starts_with("10.209.") && b.starts_with("10.209."), "{a} {b}");
    // b is gone (--rm): its veth too. Stopping a removes the last one.
    assert_eq!(veths(&ns).len(), 1, "{:?}", ns.links());
    ok(&ns.launcher(&env, &["stop", "-t", "1", "a"]));
    assert!(veths(&ns).is_empty(), "host veths deleted on exit: {:?}", ns.links());
    assert!(ns.links().contains(&"lfs0".to_string()), "the bridge stays");
    let leases = std::fs::read_to_string(env.state.join("network/leases.json")).unwrap();
    assert_eq!(leases.trim(), "[]", "addresses released");
    ok(&ns.launcher(&env, &["rm", "a"]));
}

#[test]
fn crashed_monitor_is_cleaned_up_by_the_next_run() {
    let ns = Netns::new();
    let env = Env::new();
    ok(&ns.run(&env, &["-d", "--net", "bridge", "--name", "c"], &["sleep", "1000"]));
    let first = address(&env, &ns, "c");
    let st: serde_json::Value = serde_json::from_str(&ok(&ns.launcher(&env, &["inspect", "c"]))).unwrap();
    let host_if = st[0]["network"]["host_if"].as_str().unwrap().to_string();
    assert!(ns.links().contains(&host_if));
    // The monitor dies without cleaning up (its container goes with it: parent-death signal).
    let monitor = st[0]["monitor_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), nix::sys::signal::Signal::SIGKILL).unwrap();
    env.wait_for("the monitor to die", || !std::path::Path::new(&format!("/proc/{monitor}")).exists());
    // The next bridged run reclaims the stale lease (same first address) and deletes the stale veth.
    let out = ok(&ns.run(&env, &["--rm", "--net", "bridge"], &["hostname", "-i"]));
    assert_eq!(out.trim(), first, "the stale lease was reclaimed");
    assert!(!ns.links().contains(&host_if), "stale host veth deleted: {:?}", ns.links());
    assert!(veths(&ns).is_empty(), "{:?}", ns.links());
    ok(&ns.launcher(&env, &["rm", "c"]));
}

#[test]
fn subnet_and_bridge_are_configurable() {
    let ns = Netns::new();
    let env = Env::new();
    let out = ok(&ns.run(&env, &["--rm", "--net", "bridge", "--subnet", "10.210.5.0/24"], &["ip", "-4", "-o", "addr"]));
    assert!(out.contains("eth0") && out.contains("10.210.5.2/24"), "{out}");
    let mut c = ns.cmd(
        env!("CARGO_BIN_EXE_launcher"),
        &["run", "--rm", "--net", "bridge", "--rootfs", env.rootfs.to_str().unwrap(), "ip", "route"],
    );
    c.env("LAUNCHER_ROOT", &env.state).env("LAUNCHER_SUBNET", "10.211.0.0/24").env("LAUNCHER_BRIDGE", "lfstest1");
    let out = ok(&output(c));
    assert!(out.contains("default via 10.211.0.1"), "{out}");
    assert!(ns.links().contains(&"lfstest1".to_string()));
    let o = ns.run(&env, &["--rm", "--net", "bridge", "--subnet", "10.0.0.0/31"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("invalid subnet"), "{}", stderr(&o));
    let o = ns.run(&env, &["--rm", "--net", "wormhole"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(veths(&ns).is_empty(), "{:?}", ns.links());
}
