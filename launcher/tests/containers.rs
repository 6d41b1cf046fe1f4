//! Real containers, run as root (CI is root): isolation checked from inside, lifecycle, exit codes, logs,
//! attach, limits, `--init`, the pty, and rootless through an unprivileged user.

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::*;

/// Key facts printed from inside a container, one `key=value` per line.
const PROBE: &str = r#"
echo pid=$$
echo hostname=$(hostname)
echo etc_hostname=$(cat /etc/hostname)
echo cwd=$(pwd)
grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs)' /proc/self/status | tr -d '\t' | sed 's/:/=/'
echo uid_map=$(cat /proc/self/uid_map | tr -s ' ')
echo nprocs=$(ls /proc | grep -c '^[0-9]')
echo netdevs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ,)
echo lo_flags=$(cat /sys/class/net/lo/flags)
echo masked_files=$(for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do [ -e $f ] && wc -c < $f; done | sort -u | tr '\n' ,)
echo acpi=$(ls /proc/acpi 2>/dev/null | wc -l)
echo sysfirmware=$(ls /sys/firmware | wc -l)
echo write_proc_sys=$(echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo ok || echo refused)
echo write_sys=$(touch /sys/x 2>/dev/null && echo ok || echo refused)
echo devs=$(ls /dev | tr '\n' ,)
echo devfd=$(readlink /dev/fd)
echo ptmx=$(readlink /dev/ptmx)
echo null_type=$(stat -c %F%t:%T /dev/null)
echo envkeys=$(env | cut -d= -f1 | sort | tr '\n' ,)
echo foo=$FOO
echo hosts_has_name=$(grep -c "$(hostname)" /etc/hosts)
"#;

fn kv(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in probe output:\n{out}"))
        .to_string()
}

fn mount_line<'a>(mounts: &'a str, target: &str) -> &'a str {
    mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(target))
        .unwrap_or_else(|| panic!("no mount on {target} in:\n{mounts}"))
}

#[test]
fn isolation_from_inside() {
    let env = Env::new();
    let out = env.run(
        &["--rm", "--hostname", "box1", "-e", "FOO=bar", "-w", "/tmp/work", "--name", "iso"],
        &["sh", "-c", PROBE],
    );
    let out = ok(&out);
    assert_eq!(kv(&out, "pid"), "1");
    assert_eq!(kv(&out, "hostname"), "box1");
    assert_eq!(kv(&out, "etc_hostname"), "box1");
    assert_eq!(kv(&out, "cwd"), "/tmp/work", "missing -w directory is created");
    // podman's 11 default capabilities, nothing inheritable or ambient, no_new_privs.
    assert_eq!(kv(&out, "CapEff"), "00000000800405fb");
    assert_eq!(kv(&out, "CapPrm"), "00000000800405fb");
    assert_eq!(kv(&out, "CapBnd"), "00000000800405fb");
    assert_eq!(kv(&out, "CapInh"), "0000000000000000");
    assert_eq!(kv(&out, "CapAmb"), "0000000000000000");
    assert_eq!(kv(&out, "NoNewPrivs"), "1");
    assert_eq!(kv(&out, "uid_map"), " 0 0 4294967295");
    // Own pid namespace: sh and the few commands of the probe only.
    assert!(kv(&out, "nprocs").parse::<u32>().unwrap() < 10, "{out}");
    // Own network namespace with only the loopback, up (IFF_UP|IFF_LOOPBACK|IFF_RUNNING...).
    assert_eq!(kv(&out, "netdevs"), "lo,");
    let flags = u32::from_str_radix(kv(&out, "lo_flags").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");
    // Masked and read-only paths.
    assert_eq!(kv(&out, "masked_files"), "0,", "masked files read empty");
    assert_eq!(kv(&out, "acpi"), "0");
    assert_eq!(kv(&out, "sysfirmware"), "0");
    assert_eq!(kv(&out, "write_proc_sys"), "refused");
    assert_eq!(kv(&out, "write_sys"), "refused");
    // /dev.
    let devs = kv(&out, "devs");
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout", "stderr", "pts", "ptmx", "shm",
        "mqueue",
    ] {
        assert!(devs.split(',').any(|x| x == d), "/dev/{d} missing: {devs}");
    }
    assert_eq!(kv(&out, "devfd"), "/proc/self/fd");
    assert_eq!(kv(&out, "ptmx"), "pts/ptmx");
    assert_eq!(kv(&out, "null_type"), "character special file1:3");
    // Clean environment: nothing of the caller's leaks in.
    assert_eq!(kv(&out, "envkeys"), "FOO,HOME,HOSTNAME,PATH,PWD,SHLVL,");
    assert_eq!(kv(&out, "foo"), "bar");
    assert_eq!(kv(&out, "hosts_has_name"), "1");
}

#[test]
fn mounts_seen_from_inside() {
    let env = Env::new();
    let out = ok(&env.run(&["--rm", "--read-only"], &["cat", "/proc/self/mounts"]));
    let ro = |l: &str| l.split(' ').nth(3).unwrap().split(',').any(|o| o == "ro");
    assert!(ro(mount_line(&out, "/")), "--read-only root");
    let proc = mount_line(&out, "/proc");
    assert!(proc.starts_with("proc ") && proc.contains("nosuid") && proc.contains("noexec"));
    assert!(mount_line(&out, "/dev").starts_with("tmpfs "));
    let pts = mount_line(&out, "/dev/pts");
    assert!(pts.starts_with("devpts ") && pts.contains("ptmxmode=666"), "{pts}");
    assert!(mount_line(&out, "/dev/shm").contains(" tmpfs "));
    assert!(mount_line(&out, "/dev/mqueue").starts_with("mqueue "));
    let sys = mount_line(&out, "/sys");
    assert!(sys.starts_with("sysfs ") && ro(sys), "{sys}");
    for p in ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"] {
        if out.lines().any(|l| l.split(' ').nth(1) == Some(p)) {
            assert!(ro(mount_line(&out, p)), "{p} read-only");
        }
    }
    assert!(mount_line(&out, "/proc/keys").starts_with("tmpfs "), "/proc/keys masked by /dev/null");
    for f in ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"] {
        mount_line(&out, f);
    }
    // The host's mounts are not visible (old root detached).
    assert!(!out.lines().any(|l| l.contains(env.state.to_str().unwrap()) && l.split(' ').nth(1) != Some("/")));
    // --read-only: writes to the root fail, /dev/shm stays writable.
    let w = env.run(
        &["--rm", "--read-only"],
        &["sh", "-c", "touch /x 2>/dev/null && echo root-writable; touch /dev/shm/x && echo shm-ok"],
    );
    assert_eq!(ok(&w).trim(), "shm-ok");
}

#[test]
fn user_caps_and_options() {
    let env = Env::new();
    let out = ok(&env
        .run(&["--rm", "-u", "user"], &["sh", "-c", "id; grep -E '^Cap(Eff|Bnd)' /proc/self/status; echo home=$HOME"]));
    assert!(
        out.contains("uid=1000(user) gid=1000(user) groups=50(staff)")
            || out.contains("uid=1000(user) gid=1000(user) groups=1000(user),50(staff)"),
        "{out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "non-root users get no effective capabilities: {out}");
    assert!(out.contains("CapBnd:\t00000000800405fb"));
    assert!(out.contains("home=/home/user"));
    let out = ok(&env.run(&["--rm", "-u", "1234:99"], &["id"]));
    assert_eq!(out.trim(), "uid=1234 gid=99");
    // cap-add / cap-drop: NET_ADMIN is bit 12, CHOWN bit 0.
    let out =
        ok(&env
            .run(&["--rm", "--cap-add", "NET_ADMIN", "--cap-drop", "chown"], &["grep", "CapEff", "/proc/self/status"]));
    assert_eq!(out.trim(), "CapEff:\t00000000800415fa");
    let out = ok(&env.run(&["--rm", "--cap-drop", "ALL"], &["grep", "CapEff", "/proc/self/status"]));
    assert_eq!(out.trim(), "CapEff:\t0000000000000000");
    // --net host shares the host's interfaces.
    let host_devs = std::fs::read_to_string("/proc/net/dev").unwrap().lines().count();
    let out = ok(&env.run(&["--rm", "--net", "host"], &["cat", "/proc/net/dev"]));
    assert_eq!(out.lines().count(), host_devs);
}

#[test]
fn exit_codes() {
    let env = Env::new();
    assert_eq!(code(&env.run(&["--rm"], &["true"])), 0);
    assert_eq!(code(&env.run(&["--rm"], &["sh", "-c", "exit 3"])), 3);
    let o = env.run(&["--rm"], &["nosuchcommand"]);
    assert_eq!(code(&o), 127);
    assert!(stderr(&o).contains("exec: \"nosuchcommand\": executable file not found in $PATH"), "{}", stderr(&o));
    let o = env.run(&["--rm"], &["/no/such/file"]);
    assert_eq!(code(&o), 127);
    let o = env.run(&["--rm"], &["/etc"]);
    assert_eq!(code(&o), 126, "a directory is not executable: {}", stderr(&o));
    let o = env.run(&["--rm"], &["/etc/passwd"]);
    assert_eq!(code(&o), 126);
    // Launcher errors: 125.
    let o = env.launcher(&["run", "--bogus-flag", "--rootfs", "/", "true"]);
    assert_eq!(code(&o), 125);
    let o = env.launcher(&["run", "--rootfs", "/no/such/dir", "true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("/no/such/dir"));
    let o = env.run(&["--rm", "-m", "1k"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("Minimum memory limit"), "{}", stderr(&o));
    let o = env.run(&["--rm", "-u", "nobody"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("unable to find user nobody"), "{}", stderr(&o));
    let o = env.run(&["--rm", "--net", "bridge0"], &["true"]);
    assert_eq!(code(&o), 125);
    // Killed by a signal: 128 + signal.
    let id = env.detach(&[], &["sleep", "1000"]);
    ok(&env.launcher(&["kill", &id]));
    assert_eq!(ok(&env.launcher(&["wait", &id])).trim(), "137");
    // Failed starts leave nothing running and --rm leaves no state.
    let left = ok(&env.launcher(&["ps", "-q"]));
    assert!(left.trim().is_empty(), "{left}");
    let names: Vec<_> = std::fs::read_dir(env.state.join("containers")).unwrap().collect();
    assert_eq!(names.len(), 1, "only the killed, not removed container is left");
}

#[test]
fn streams_and_logs() {
    let env = Env::new();
    // Foreground: stdout and stderr stay apart; stdin is piped with -i and EOF reaches the container.
    let o = env.run(&["--name", "s1"], &["sh", "-c", "echo out; echo err >&2; printf partial"]);
    assert_eq!(stdout(&o), "out\npartial");
    assert_eq!(stderr(&o), "err\n");
    let mut c = env.cmd(&["run", "--rm", "-i", "--rootfs", env.rootfs.to_str().unwrap(), "sh", "-c", "cat; echo done"]);
    c.stdin(std::process::Stdio::piped());
    let o = output_with_input(c, b"line one\nline two\n");
    assert_eq!(ok(&o), "line one\nline two\ndone\n");
    // Without -i, stdin is /dev/null.
    assert_eq!(ok(&env.run(&["--rm"], &["cat"])), "");
    // -t without a caller terminal: a pty of 24x80 (not 0x0), output with the pty's CRLF.
    assert_eq!(ok(&env.run(&["--rm", "-t"], &["sh", "-c", "stty size; tty"])), "24 80\r\n/dev/pts/0\r\n");

    // logs: both streams, partial lines joined, k8s-file format on disk.
    let logs = env.launcher(&["logs", "s1"]);
    assert_eq!(stdout(&logs), "out\npartial");
    assert_eq!(stderr(&logs), "err\n");
    let id = env.inspect("s1")["id"].as_str().unwrap().to_string();
    let raw = std::fs::read_to_string(env.state.join("containers").join(&id).join("ctr.log")).unwrap();
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 3, "{raw}");
    for l in &lines {
        let f: Vec<&str> = l.splitn(4, ' ').collect();
        assert!(humantime::parse_rfc3339(f[0]).is_ok(), "timestamp {l}");
        assert!(f[1] == "stdout" || f[1] == "stderr");
        assert!(f[2] == "F" || f[2] == "P");
    }
    assert!(raw.contains(" stdout P partial\n"));
    assert!(raw.contains(" stderr F err\n"));
    let tail = env.launcher(&["logs", "--tail", "1", "s1"]);
    assert_eq!(stdout(&tail) + &stderr(&tail), "partial");
    let since = env.launcher(&["logs", "--since", "2999-01-01T00:00:00Z", "s1"]);
    assert_eq!(stdout(&since), "");

    // logs -f follows a running container and drains to the end after it exits.
    let id = env.detach(
        &["--name", "f1"],
        &[
            "sh",
            "-c",
            "echo first; read x < /dev/stdin; i=0; while [ $i -lt 200 ]; do echo n$i; i=$((i+1)); done; echo last",
        ],
    );
    let _ = id;
    let follow = env.launcher(&["logs", "-f", "f1"]);
    let text = ok(&follow);
    assert!(text.starts_with("first\nn0\n"), "{text}");
    assert!(text.ends_with("n199\nlast\n"), "{text}");
    assert_eq!(text.lines().count(), 202);

    // Rotation by rename: many lines with a small limit keep at most max-files rotated files.
    let out = env.run(
        &["--name", "rot", "--log-max-size", "2k", "--log-max-files", "2"],
        &["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done"],
    );
    ok(&out);
    let id = env.inspect("rot")["id"].as_str().unwrap().to_string();
    let dir = env.state.join("containers").join(&id);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("ctr.log"))
        .collect();
    files.sort();
    assert_eq!(files, ["ctr.log", "ctr.log.1", "ctr.log.2"]);
    for f in &files {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() <= 2048);
    }
    let logs = ok(&env.launcher(&["logs", "rot"]));
    assert!(logs.ends_with("line-498\nline-499\n"));
    assert!(!logs.contains("line-0\n"), "the oldest lines are rotated away");
}

#[test]
fn lifecycle() {
    let env = Env::new();
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.2; done";
    let id = env.detach(&["--name", "web", "--cgroups", "enabled"], &["sh", "-c", script]);
    // Detached: the CLI is gone, the container runs.
    let ps = ok(&env.launcher(&["ps"]));
    assert!(ps.contains(&id[..12]) && ps.contains("web") && ps.contains("Up"), "{ps}");
    let st = env.inspect("web");
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    env.wait_for("the container to print ready", || stdout(&env.launcher(&["logs", "web"])).contains("ready"));
    // The name is taken.
    let o = env.run(&["-d", "--name", "web"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("is already in use"), "{}", stderr(&o));
    // rm refuses a running container.
    let o = env.launcher(&["rm", "web"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("container is running"));
    // stop: SIGTERM reaches the trap.
    assert_eq!(ok(&env.launcher(&["stop", "-t", "30", "web"])).trim(), "web");
    assert_eq!(ok(&env.launcher(&["wait", "web"])).trim(), "7");
    assert!(ok(&env.launcher(&["logs", "web"])).contains("got-term"));
    let st = env.inspect(&id[..10]);
    assert_eq!(st["status"], "exited");
    assert_eq!(st["exit_code"], 7);
    assert_eq!(st["oom_killed"], false);
    // The cgroups are gone once it exited.
    assert!(!st["cgroup"]["dirs"].as_array().unwrap().is_empty(), "--cgroups=enabled made one");
    for d in st["cgroup"]["dirs"].as_array().unwrap() {
        let p = d[1].as_str().unwrap();
        assert!(!std::path::Path::new(p).exists(), "cgroup {p} left behind");
    }
    assert!(ok(&env.launcher(&["ps"])).lines().count() == 1);
    assert!(ok(&env.launcher(&["ps", "-a"])).contains("Exited (7)"));
    ok(&env.launcher(&["rm", "web"]));
    assert!(!ok(&env.launcher(&["ps", "-a"])).contains("web"));
    assert_eq!(code(&env.launcher(&["inspect", "web"])), 1);
    // The name is free again; PID 1 without a TERM handler ignores SIGTERM: stop escalates to SIGKILL.
    env.detach(&["--name", "web"], &["sleep", "1000"]);
    ok(&env.launcher(&["stop", "-t", "1", "web"]));
    assert_eq!(ok(&env.launcher(&["wait", "web"])).trim(), "137");
    // kill -s delivers the given signal; rm -f kills and removes.
    let id = env.detach(&[], &["sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.2; done"]);
    env.wait_for("the trap to be set", || {
        let st = env.inspect(&id);
        st["status"] == "running"
    });
    // The trap is set once the shell runs its loop: retry the signal until it lands.
    env.wait_for("USR1 to end the container", || {
        let _ = env.launcher(&["kill", "-s", "USR1", &id]);
        std::thread::sleep(Duration::from_millis(100));
        env.inspect(&id)["status"] == "exited"
    });
    assert_eq!(ok(&env.launcher(&["wait", &id])).trim(), "42");
    let id = env.detach(&[], &["sleep", "1000"]);
    ok(&env.launcher(&["rm", "-f", &id]));
    assert_eq!(code(&env.launcher(&["inspect", &id])), 1);
    // A foreground --rm has removed everything when it returns: the name is free at once.
    ok(&env.run(&["--rm", "--name", "again"], &["true"]));
    ok(&env.run(&["--rm", "--name", "again"], &["true"]));
    let o = env.run(&["--rm", "--name", "again", "-u", "nobody"], &["true"]);
    assert_eq!(code(&o), 125);
    ok(&env.run(&["--rm", "--name", "again"], &["true"]));
    // --rm removes the state of a detached container when it ends.
    let id = env.detach(&["--rm"], &["true"]);
    env.wait_for("the --rm container to disappear", || !env.state.join("containers").join(&id).exists());
}

#[test]
fn foreground_forwards_signals() {
    let env = Env::new();
    let mut c =
        env.cmd(&["run", "--rm", "--init", "--name", "fg", "--rootfs", env.rootfs.to_str().unwrap(), "sleep", "1000"]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    env.wait_for("the container to run", || {
        let out = env.launcher(&["inspect", "fg"]);
        code(&out) == 0 && stdout(&out).contains("\"running\"")
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = rx.recv_timeout(TIMEOUT).expect("run exits after SIGTERM").unwrap();
    assert_eq!(out.status.code(), Some(143), "SIGTERM forwarded: {}", stderr(&out));
}

#[test]
fn init_reaps_and_forwards() {
    let env = Env::new();
    // PID 1 is the built-in init; an orphan's zombie gets reaped.
    let out = ok(&env.run(&["--rm", "--init"], &["sh", "-c", "(sleep 0.1 &); sleep 1; ps -o pid,stat,args"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].trim_start().starts_with("1 ") && lines[1].contains("launcher"), "{out}");
    assert!(
        !out.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z'))),
        "zombie left: {out}"
    );
    // SIGTERM reaches the command through the init (a bare sleep as PID 1 would ignore it).
    env.detach(&["--init", "--name", "i1"], &["sleep", "1000"]);
    ok(&env.launcher(&["stop", "-t", "60", "i1"]));
    assert_eq!(ok(&env.launcher(&["wait", "i1"])).trim(), "143");
    // Exit codes pass through.
    assert_eq!(code(&env.run(&["--rm", "--init"], &["sh", "-c", "exit 9"])), 9);
    assert_eq!(code(&env.run(&["--rm", "--init"], &["nosuch"])), 127);
}

#[test]
fn attach_relays_streams() {
    let env = Env::new();
    let id = env.detach(
        &["-i", "--name", "a1"],
        &["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done; echo bye"],
    );
    let mut c = env.cmd(&["attach", "a1"]);
    c.stdin(std::process::Stdio::piped());
    let out = output_with_input(c, b"one\ntwo\n");
    // attach's stdin EOF closes the container's stdin, so the loop ends and attach returns its status.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "got:one\ngot:two\nbye\n");
    assert_eq!(stderr(&out), "err:one\nerr:two\n");
    assert_eq!(ok(&env.launcher(&["wait", &id])).trim(), "0");
    let o = env.launcher(&["attach", "a1"]);
    assert_eq!(code(&o), 1, "cannot attach to a stopped container");
}

fn cgroup_file(v1: &str, v2: &str) -> String {
    format!("if [ -f /sys/fs/cgroup/{v2} ]; then cat /sys/fs/cgroup/{v2}; else cat /sys/fs/cgroup/{v1}; fi")
}

#[test]
fn cgroup_limits() {
    let env = Env::new();
    let script = [
        cgroup_file("memory/memory.limit_in_bytes", "memory.max"),
        cgroup_file("cpu/cpu.cfs_quota_us", "cpu.max"),
        cgroup_file("pids/pids.max", "pids.max"),
    ]
    .join("; ");
    let out = ok(&env.run(&["--rm", "-m", "32m", "--cpus", "0.5", "--pids-limit", "50"], &["sh", "-c", &script]));
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "33554432");
    assert!(l[1] == "50000" || l[1] == "50000 100000", "{out}");
    assert_eq!(l[2], "50");
    // The container's cgroup namespace shows its own cgroup as the root.
    let out = ok(&env.run(&["--rm", "-m", "32m"], &["cat", "/proc/self/cgroup"]));
    assert!(out.lines().all(|l| l.ends_with(":/")), "{out}");
    // A v2 hierarchy (this hybrid host's unified one) gets a directory too, entered at clone time
    // (CLONE_INTO_CGROUP): the container's init is in it from its first instruction.
    let layout = launcher::cgroups::Layout::detect().unwrap();
    assert!(
        layout.hierarchies.iter().any(|h| h.version == launcher::cgroups::Version::V2),
        "this test needs a cgroup v2 hierarchy (pure v2 or hybrid)"
    );
    env.detach(&["--name", "v2", "--cgroups", "enabled"], &["sleep", "1000"]);
    let st = env.inspect("v2");
    let dirs = st["cgroup"]["dirs"].as_array().unwrap().clone();
    let v2 = dirs.iter().find(|d| d[0] == true).unwrap_or_else(|| panic!("no v2 dir: {st}"));
    let v2 = std::path::PathBuf::from(v2[1].as_str().unwrap());
    let pid = st["pid"].as_i64().unwrap();
    let procs = std::fs::read_to_string(v2.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string(), "the init is in its v2 cgroup");
    ok(&env.launcher(&["rm", "-f", "v2"]));
    for d in &dirs {
        assert!(!std::path::Path::new(d[1].as_str().unwrap()).exists(), "{d} removed");
    }
    // Without a limit there is no cgroup with controllers (--cgroups=auto), and inspect says so; only a
    // controller-less v2 directory, entered at clone time, so that `commit` can freeze the container.
    env.detach(&["--name", "nocg"], &["sleep", "1000"]);
    let st = env.inspect("nocg");
    let dirs = st["cgroup"]["dirs"].as_array().unwrap().clone();
    assert!(dirs.len() == 1 && dirs[0][0] == true, "{st}");
    assert!(st["cgroup"]["skipped"].as_str().unwrap().contains("no resource limit"), "{st}");
    let pid = st["pid"].as_i64().unwrap();
    let procs =
        std::fs::read_to_string(std::path::Path::new(dirs[0][1].as_str().unwrap()).join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());
    ok(&env.launcher(&["rm", "-f", "nocg"]));
    assert!(!std::path::Path::new(dirs[0][1].as_str().unwrap()).exists(), "removed");
    // --cgroups=disabled: none at all.
    env.detach(&["--name", "nocg2", "--cgroups", "disabled"], &["sleep", "1000"]);
    assert!(env.inspect("nocg2")["cgroup"]["dirs"].as_array().unwrap().is_empty());
    ok(&env.launcher(&["rm", "-f", "nocg2"]));
    let o = env.run(&["--rm", "--cgroups", "disabled", "-m", "32m"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("resource limits need a cgroup"), "{}", stderr(&o));
    assert_eq!(code(&env.run(&["--rm", "--cgroups", "sometimes"], &["true"])), 125);
}

#[test]
fn oom_kill_is_reported() {
    let env = Env::new();
    // A memory hog: the shell keeps growing a string.
    let hog = "x=a; while true; do x=$x$x$x$x; done";
    let out = env.run(&["--name", "hog", "-m", "16m"], &["sh", "-c", hog]);
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    let st = env.inspect("hog");
    assert_eq!(st["oom_killed"], true);
    assert_eq!(st["exit_code"], 137);
    assert_eq!(ok(&env.launcher(&["wait", "hog"])).trim(), "137");
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let env = Env::new();
    // The shell forks until the kernel refuses (busybox sh then gives up with status 2).
    let script = "while true; do sleep 100 & echo started; done";
    let out = env.run(&["--rm", "--pids-limit", "20"], &["sh", "-c", script]);
    let started = stdout(&out).lines().filter(|l| *l == "started").count();
    assert!(started > 0 && started < 20, "at most 19 children beside the shell, got {started}");
    assert!(stderr(&out).contains("can't fork"), "{}", stderr(&out));
    assert_eq!(code(&out), 2);
}

/// Drives `run -it` through a pty the test owns: prompt, size, resize, ^C, exit code, terminal restored.
#[test]
fn tty_interactive() {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    use std::io::Write;
    let env = Env::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    launcher::sys::set_winsize(pty.slave.as_fd(), launcher::sys::WinSize { rows: 30, cols: 100 }).unwrap();
    let before = tcgetattr(pty.slave.as_fd()).unwrap();
    // setsid -c: a new session with the pty as controlling terminal, like a terminal emulator.
    let mut c = std::process::Command::new("setsid");
    c.arg("-c")
        .arg(env!("CARGO_BIN_EXE_launcher"))
        .args(["run", "-it", "--rm", "--rootfs", env.rootfs.to_str().unwrap(), "sh"])
        .env("LAUNCHER_ROOT", &env.state)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    let mut child = c.spawn().expect("setsid (util-linux) runs the launcher");
    let slave = pty.slave;
    let mut master = std::fs::File::from(pty.master);
    let buf = read_in_background(&master);
    let expect = |what: &str| {
        wait_for(&format!("{what:?} on the terminal"), &mut || buf.lock().unwrap().contains(what));
    };
    expect("# ");
    master.write_all(b"stty size; tty\r").unwrap();
    expect("30 100");
    expect("/dev/pts/0");
    // Resize: the kernel sends SIGWINCH to the launcher (foreground on this pty), which resizes the
    // container's pty.
    launcher::sys::set_winsize(master.as_fd(), launcher::sys::WinSize { rows: 50, cols: 132 }).unwrap();
    wait_for("the resize to reach the container", &mut || {
        master.write_all(b"stty size\r").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        buf.lock().unwrap().contains("50 132")
    });
    // ^C interrupts the foreground command in the container, not the launcher.
    master.write_all(b"sleep 1000\r").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"\x03").unwrap();
    master.write_all(b"echo after-$((20+22))\r").unwrap();
    expect("after-42");
    master.write_all(b"exit 5\r").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx.recv_timeout(TIMEOUT).expect("launcher exits").unwrap();
    assert_eq!(status.code(), Some(5));
    // The caller's terminal is back in its original mode.
    let after = tcgetattr(slave.as_fd()).unwrap();
    assert!(after.local_flags.contains(LocalFlags::ECHO | LocalFlags::ICANON));
    assert_eq!(after.local_flags, before.local_flags);
}

/// Rootless: the launcher runs as an unprivileged user (nobody, through setpriv), with a user namespace
/// mapping that user to root.
#[test]
fn rootless_as_nobody() {
    let env = Env::new();
    let base = env.tmp.path();
    let run_dir = base.join("xdg");
    std::fs::create_dir(&run_dir).unwrap();
    for p in [base.to_path_buf(), run_dir.clone()] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    // The rootfs belongs to the user.
    let status = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&env.rootfs).status().unwrap();
    assert!(status.success());
    let as_nobody = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_launcher"))
            .args(args)
            .env_remove("LAUNCHER_ROOT")
            .env("XDG_RUNTIME_DIR", &run_dir)
            .stdin(std::process::Stdio::null());
        output(c)
    };
    let r = env.rootfs.to_str().unwrap();
    let out = as_nobody(&[
        "run",
        "--rm",
        "--rootfs",
        r,
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map | tr -s ' '; hostname; echo $$; touch /tmp/f && echo writable; grep CapEff /proc/self/status; cat /proc/self/mounts | cut -d' ' -f2 | tr '\n' ,",
    ]);
    let text = ok(&out);
    // nobody has no subordinate ids: the single-id map, said so.
    assert!(stderr(&out).contains("single-id user namespace"), "{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {text}");
    assert_eq!(lines[1], " 0 65534 1");
    assert_eq!(lines[3], "1");
    assert_eq!(lines[4], "writable");
    assert_eq!(lines[5], "CapEff:\t00000000800405fb");
    for m in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts"] {
        assert!(lines[6].split(',').any(|x| x == m), "{m} mounted rootless: {}", lines[6]);
    }
    // State under $XDG_RUNTIME_DIR/layerfs; detached works; stop/wait/rm work.
    let out = as_nobody(&["run", "-d", "--name", "rl", "--rootfs", r, "sleep", "1000"]);
    ok(&out);
    assert!(run_dir.join("layerfs/names/rl").symlink_metadata().is_ok());
    ok(&as_nobody(&["stop", "-t", "1", "rl"]));
    assert_eq!(ok(&as_nobody(&["wait", "rl"])).trim(), "137");
    ok(&as_nobody(&["rm", "rl"]));
    // Limits on cgroup v1 cannot be honoured rootless: refused loudly, never ignored.
    let layout = launcher::cgroups::Layout::detect().unwrap();
    if !layout.is_pure_v2() {
        let out = as_nobody(&["run", "--rm", "-m", "64m", "--rootfs", r, "true"]);
        assert_eq!(code(&out), 125);
        assert!(stderr(&out).contains("need root on cgroup v1"), "{}", stderr(&out));
    }
}
