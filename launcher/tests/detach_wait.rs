//! `--detach-keys` for `attach` and `run -it`, and `wait` on a detached `--rm` container that is already gone.

mod common;

use common::*;
use std::io::Write;

#[test]
fn attach_detach_keys() {
    let env = Env::new();
    env.detach(&["-i", "--name", "d1"], &["sh", "-c", "while read l; do echo got:$l; done; echo bye"]);
    // The sequence ends the attach; what follows it in the input is not sent.
    let mut c = env.cmd(&["attach", "--detach-keys", "ctrl-p,ctrl-q", "d1"]);
    c.stdin(std::process::Stdio::piped());
    let out = output_with_input(c, b"one\n\x10\x11two\n");
    assert_eq!(code(&out), 0, "detached: {}", stderr(&out));
    env.wait_for("one to reach the container", || stdout(&env.launcher(&["logs", "d1"])).contains("got:one"));
    assert_eq!(env.inspect("d1")["status"], "running", "the container goes on after the detach");
    // Without --detach-keys the same bytes are plain input (docker's keys are off unless given).
    let mut c = env.cmd(&["attach", "d1"]);
    c.stdin(std::process::Stdio::piped());
    let out = output_with_input(c, b"a\x10\x11b\nthree\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "got:a\x10\x11b\ngot:three\nbye\n");
    assert_eq!(stdout(&env.launcher(&["logs", "d1"])), "got:one\ngot:a\x10\x11b\ngot:three\nbye\n", "two never sent");
    // A bad sequence is refused before anything starts.
    let o = env.run(&["--rm", "--detach-keys", "ctrl-1"], &["true"]);
    assert_eq!(code(&o), 125);
    assert!(stderr(&o).contains("invalid detach keys"), "{}", stderr(&o));
    assert_eq!(code(&env.launcher(&["attach", "--detach-keys", "x,ctrl-", "d1"])), 1);
}

/// `run -it --detach-keys`: the launcher leaves, the container keeps its shell; a later attach ends it.
#[test]
fn run_it_detach_keys() {
    let env = Env::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut c = std::process::Command::new("setsid");
    c.arg("-c")
        .arg(env!("CARGO_BIN_EXE_launcher"))
        .args(["run", "-it", "--name", "t1", "--detach-keys", "ctrl-p,ctrl-q", "--rootfs"])
        .arg(&env.rootfs)
        .arg("sh")
        .env("LAUNCHER_ROOT", &env.state)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    let mut child = c.spawn().expect("setsid (util-linux) runs the launcher");
    let mut master = std::fs::File::from(pty.master);
    let buf = read_in_background(&master);
    wait_for("the prompt", &mut || buf.lock().unwrap().contains("# "));
    master.write_all(b"echo $((6*7))\r").unwrap();
    wait_for("the answer", &mut || buf.lock().unwrap().contains("42"));
    master.write_all(b"\x10\x11").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx.recv_timeout(TIMEOUT).expect("the launcher leaves on the detach keys").unwrap();
    assert_eq!(status.code(), Some(0));
    drop(pty.slave);
    assert_eq!(env.inspect("t1")["status"], "running");
    let mut c = env.cmd(&["attach", "t1"]);
    c.stdin(std::process::Stdio::piped());
    let out = output_with_input(c, b"exit 3\n");
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn wait_after_rm_removed_the_container() {
    let env = Env::new();
    let id = env.detach(&["--rm", "--name", "gone"], &["sh", "-c", "exit 7"]);
    env.wait_for("the --rm container to disappear", || !env.state.join("containers").join(&id).exists());
    assert_eq!(ok(&env.launcher(&["wait", "gone"])).trim(), "7");
    assert_eq!(ok(&env.launcher(&["wait", &id])).trim(), "7");
    assert_eq!(ok(&env.launcher(&["wait", &id[..12]])).trim(), "7");
    assert_eq!(code(&env.launcher(&["inspect", "gone"])), 1, "removed all the same");
    // A wait that starts while the container runs gets the code too (through the monitor, or the tombstone).
    let id = env.detach(&["--rm"], &["sh", "-c", "sleep 0.2; exit 5"]);
    assert_eq!(ok(&env.launcher(&["wait", &id])).trim(), "5");
    assert_eq!(code(&env.launcher(&["wait", "never-existed"])), 1);
}
