//! fuse-overlayfs' dynamic id mapping (`-o uidmapping=…,gidmapping=…`): the ids stored in the
//! layers and the upper directory are shown to the kernel shifted, so that one storage serves
//! containers of different user namespaces without chowning files.
//!
//! A mapping is a list of ranges `STORED:SHOWN:LEN`, written like a `uid_map` on one line
//! (`0:1000:1:1:100000:65536`). A stored id inside a range is shown as `SHOWN + (id - STORED)`;
//! ids the kernel sends (callers of requests, `chown`) go back the other way. An id outside
//! every range becomes the overflow id (65534), as in fuse-overlayfs. The user and group ids
//! inside POSIX ACL attributes are mapped the same way (fuse-overlayfs leaves them as stored).

use crate::error::SetupError;

/// The id an unmapped id becomes (the kernel's default `overflowuid`/`overflowgid`).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    stored: u32,
    shown: u32,
    len: u32,
}

/// One id mapping (users or groups); empty = identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<Range>,
}

fn overlaps(a: u32, b: u32, len_a: u32, len_b: u32) -> bool {
    u64::from(a) < u64::from(b) + u64::from(len_b) && u64::from(b) < u64::from(a) + u64::from(len_a)
}

impl IdMap {
    /// Parses `STORED:SHOWN:LEN[:STORED:SHOWN:LEN...]` (`opt` names the option in errors).
    pub fn parse(opt: &str, v: &str) -> Result<IdMap, SetupError> {
        let bad = |why: &str| SetupError::BadOption {
            option: opt.into(),
            reason: format!("{why} (expected STORED:SHOWN:LEN[:STORED:SHOWN:LEN...])"),
        };
        let nums = v
            .split(':')
            .map(|n| n.trim().parse::<u32>().map_err(|_| bad(&format!("'{n}' is not an id"))))
            .collect::<Result<Vec<u32>, _>>()?;
        if nums.is_empty() || !nums.len().is_multiple_of(3) {
            return Err(bad("the numbers do not come in threes"));
        }
        let mut ranges: Vec<Range> = Vec::new();
        for t in nums.chunks(3) {
            let r = Range { stored: t[0], shown: t[1], len: t[2] };
            if r.len == 0 {
                return Err(bad("a range of length 0"));
            }
            if u64::from(r.stored.max(r.shown)) + u64::from(r.len) > 1 << 32 {
                return Err(bad("a range goes past the largest id"));
            }
            if ranges
                .iter()
                .any(|o| overlaps(o.stored, r.stored, o.len, r.len) || overlaps(o.shown, r.shown, o.len, r.len))
            {
                return Err(bad("two ranges overlap"));
            }
            ranges.push(r);
        }
        Ok(IdMap { ranges })
    }

    /// No mapping: ids go through unchanged.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The id the kernel sees for a stored id.
    pub fn shown(&self, id: u32) -> u32 {
        self.map(id, |r| (r.stored, r.shown))
    }

    /// The id to store for an id the kernel sent.
    pub fn stored(&self, id: u32) -> u32 {
        self.map(id, |r| (r.shown, r.stored))
    }

    fn map(&self, id: u32, ends: impl Fn(&Range) -> (u32, u32)) -> u32 {
        if self.is_identity() {
            return id;
        }
        self.ranges
            .iter()
            .find_map(|r| {
                let (from, to) = ends(r);
                (id >= from && id - from < r.len).then(|| to + (id - from))
            })
            .unwrap_or(OVERFLOW_ID)
    }
}

/// The user and group mappings of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// Users.
    pub uid: IdMap,
    /// Groups.
    pub gid: IdMap,
}

const ACL_XATTRS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

impl IdMaps {
    /// Both mappings are the identity.
    pub fn is_identity(&self) -> bool {
        self.uid.is_identity() && self.gid.is_identity()
    }

    /// An extended attribute's value as the kernel must see it (`to_kernel`) or as it is
    /// stored: the ids of named users and groups in a POSIX ACL are mapped, other attributes
    /// and malformed ACLs pass unchanged (the kernel validates ACLs it is sent).
    pub fn map_xattr(&self, name: &[u8], value: &mut [u8], to_kernel: bool) {
        if self.is_identity() || !ACL_XATTRS.contains(&name) || value.len() < 4 || !(value.len() - 4).is_multiple_of(8)
        {
            return;
        }
        for e in value[4..].chunks_exact_mut(8) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let map = match tag {
                ACL_USER => &self.uid,
                ACL_GROUP => &self.gid,
                _ => continue,
            };
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let id = if to_kernel { map.shown(id) } else { map.stored(id) };
            e[4..8].copy_from_slice(&id.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_like_fuse_overlayfs() {
        let m = IdMap::parse("uidmapping", "0:1000:1:1:100000:65536").unwrap();
        assert_eq!((m.shown(0), m.shown(1), m.shown(65536), m.shown(65537)), (1000, 100000, 165535, OVERFLOW_ID));
        assert_eq!((m.stored(1000), m.stored(100000), m.stored(165535), m.stored(0)), (0, 1, 65536, OVERFLOW_ID));
        assert!(IdMap::default().is_identity());
        assert_eq!(IdMap::default().shown(7), 7);
        assert_eq!(IdMap::parse("u", "0:1000:1:1:2000:10").unwrap().shown(5), 2004);
        for bad in ["", "0:1", "0:1:0", "a:1:1", "0:10:5:3:20:1", "0:10:5:20:12:1", "4294967295:0:2"] {
            assert!(IdMap::parse("uidmapping", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn acl_ids_are_mapped() {
        let maps =
            IdMaps { uid: IdMap::parse("u", "0:1000:10").unwrap(), gid: IdMap::parse("g", "0:2000:10").unwrap() };
        // version 2; USER_OBJ rw; USER 3 r; GROUP 4 r; MASK r; OTHER none
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 6u16, u32::MAX), (2, 4, 3), (8, 4, 4), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
        {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let orig = acl.clone();
        maps.map_xattr(b"system.posix_acl_access", &mut acl, true);
        assert_eq!(u32::from_le_bytes(acl[4 + 8 + 4..4 + 16].try_into().unwrap()), 1003);
        assert_eq!(u32::from_le_bytes(acl[4 + 16 + 4..4 + 24].try_into().unwrap()), 2004);
        assert_eq!(acl[4..8], orig[4..8]);
        assert_eq!(acl[4 + 24..], orig[4 + 24..]);
        maps.map_xattr(b"system.posix_acl_access", &mut acl, false);
        assert_eq!(acl, orig);
        let mut other = orig.clone();
        maps.map_xattr(b"user.x", &mut other, true);
        assert_eq!(other, orig);
    }
}
