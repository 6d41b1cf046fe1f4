//! The root filesystem seam: a layerfs-style mount program is run in the state directory before the
//! container starts and unmounted after. A stand-in program (bind-mounts the topmost lower directory)
//! plays layerfs until the real one lands.

mod common;

use common::*;
use launcher::rootfs::RootFsSpec;

fn mounted(path: &std::path::Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    mi.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

#[test]
fn layerfs_program_is_run_and_unmounted() {
    let env = Env::new();
    let prog = env.tmp.path().join("fake-layerfs");
    std::fs::write(
        &prog,
        "#!/bin/sh\n\
         # usage: fake-layerfs -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT\n\
         [ \"$1\" = -o ] || exit 2\n\
         lower=${2#lowerdir=}; lower=${lower%%,*}; lower=${lower%%:*}\n\
         case \"$2\" in *upperdir=*workdir=*) ;; *) exit 3 ;; esac\n\
         exec mount --bind \"$lower\" \"$3\"\n",
    )
    .unwrap();
    let mut perm = std::fs::metadata(&prog).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&prog, perm).unwrap();

    let state = env.tmp.path().join("ctr");
    std::fs::create_dir(&state).unwrap();
    let spec =
        RootFsSpec::Layerfs { program: prog.clone(), lowerdirs: vec![env.rootfs.clone(), "/nonexistent".into()] };
    spec.validate().unwrap();
    let root = spec.prepare(&state).unwrap();
    assert_eq!(root.path, state.join("merged"));
    assert!(mounted(&root.path), "the program's mount is live when prepare returns");
    assert!(root.path.join("bin/busybox").exists());
    assert!(state.join("upper").is_dir() && state.join("work").is_dir());
    let merged = root.path.clone();
    root.release().unwrap();
    assert!(!mounted(&merged), "released: unmounted");

    // A failing program is a rootfs error carrying its stderr.
    let bad = RootFsSpec::Layerfs { program: "/bin/false".into(), lowerdirs: vec![env.rootfs.clone()] };
    let err = bad.prepare(&state).unwrap_err();
    assert!(err.to_string().contains("/bin/false failed"), "{err}");
    // An empty lower list is refused early.
    assert!(RootFsSpec::Layerfs { program: prog, lowerdirs: vec![] }.validate().is_err());
    // A plain directory needs no mount.
    let dir = RootFsSpec::Dir { path: env.rootfs.clone() };
    let r = dir.prepare(&state).unwrap();
    assert_eq!(r.path, env.rootfs);
    r.release().unwrap();
}
