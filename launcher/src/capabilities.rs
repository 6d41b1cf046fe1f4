//! Capabilities: podman's default set, `--cap-add`/`--cap-drop`, and applying the result in the container.

use std::collections::BTreeSet;

use caps::{CapSet, Capability, CapsHashSet};

use crate::error::{Error, Result, SetupError};

/// podman's default capabilities.
pub const DEFAULT_CAPS: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

fn parse(name: &str) -> Result<Capability> {
    let canon = caps::to_canonical(name);
    canon.parse().map_err(|_| Error::InvalidArgument(format!("unknown capability: {name:?}")))
}

/// The final capability set: the defaults, minus `drop` (`ALL` drops everything), plus `add` (`ALL` adds
/// every capability the kernel knows). Names are case-insensitive, with or without `CAP_`.
pub fn resolve(add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let all = || caps::runtime::thread_all_supported().into_iter().map(|c| c.to_string());
    let mut set: BTreeSet<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    for d in drop {
        if d.eq_ignore_ascii_case("all") {
            set.clear();
        } else {
            set.remove(&parse(d)?.to_string());
        }
    }
    for a in add {
        if a.eq_ignore_ascii_case("all") {
            set.extend(all());
        } else {
            set.insert(parse(a)?.to_string());
        }
    }
    Ok(set.into_iter().collect())
}

/// Drops every capability not in `names` from the bounding set (call before changing uid).
pub fn limit_bounding(names: &[String]) -> std::result::Result<(), SetupError> {
    let keep = to_set(names)?;
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| SetupError::Capabilities(e.to_string()))?;
        }
    }
    Ok(())
}

/// Sets the final sets after the uid change: root gets `names` effective and permitted, other users get
/// none (the kernel cleared them at setuid); inheritable and ambient are always empty.
pub fn apply(names: &[String], uid: u32) -> std::result::Result<(), SetupError> {
    let keep = to_set(names)?;
    let err = |e: caps::errors::CapsError| SetupError::Capabilities(e.to_string());
    if uid == 0 {
        caps::set(None, CapSet::Effective, &keep).map_err(err)?;
        caps::set(None, CapSet::Permitted, &keep).map_err(err)?;
    }
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    Ok(())
}

fn to_set(names: &[String]) -> std::result::Result<CapsHashSet, SetupError> {
    names
        .iter()
        .map(|n| n.parse::<Capability>().map_err(|_| SetupError::Capabilities(format!("unknown capability {n}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_add_drop() {
        assert_eq!(resolve(&[], &[]).unwrap().len(), 11);
        let s = resolve(&["net_admin".into(), "CAP_SYS_PTRACE".into()], &["chown".into(), "CAP_KILL".into()]).unwrap();
        assert!(s.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(s.contains(&"CAP_SYS_PTRACE".to_string()));
        assert!(!s.contains(&"CAP_CHOWN".to_string()));
        assert!(!s.contains(&"CAP_KILL".to_string()));
        assert_eq!(s.len(), 11);
        assert_eq!(resolve(&["kill".into()], &["all".into()]).unwrap(), vec!["CAP_KILL".to_string()]);
        assert!(resolve(&["ALL".into()], &[]).unwrap().len() > 30);
        assert!(resolve(&["CAP_NOPE".into()], &[]).is_err());
    }
}
