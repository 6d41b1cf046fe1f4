//! The changes an upper directory makes to the image it is mounted over, as `docker diff` lists
//! them: `A path` (added), `C path` (changed), `D path` (deleted).
//!
//! Only the upper directory is walked; the base is consulted by lookups of the names the upper
//! holds (binary searches in the packed layers), so the time depends on the size of the change,
//! not of the image. Base directories are listed only where the upper replaces one (an opaque
//! or renamed directory) and inside a renamed directory.
//!
//! Semantics: the merged view before (the base) against the merged view after (the upper over the
//! base), at every path the upper touches. Output order is that of a sorted depth-first walk
//! (`docker diff`'s order: a directory, then its entries).
//! - An upper entry that did not exist before is `A`; one that replaces an entry is `C` (even when
//!   its content ended up equal, as in docker); a metadata-only copy (chmod, chown, xattrs,
//!   utimes) is `C`.
//! - A whiteout of an existing entry is `D` (a deleted directory is listed alone, its content
//!   implied). A whiteout of nothing is not listed.
//! - A directory merged with the one below is listed only if its own metadata changed (mode,
//!   owner, mtime, xattrs) or, as `C`, as the parent of an `A` or `D` (docker's rule: the parent of
//!   an added or deleted entry is changed; the root is never listed).
//! - An opaque directory that replaced a directory is `C`, its new entries `A` (`C` where the old
//!   directory had the name), and the old entries it no longer has `D` (docker on overlay2 prints
//!   `D dir` and then the new entries instead; we list what a reader of the tree sees).
//! - A renamed merged directory (redirect) is `A` at its new name with every entry under it (its
//!   content is new at that path), and `D` at its old name (from the whiteout there): what docker
//!   lists for `mv` on overlay2 without redirects (a copy and a delete).
//! - Hard links: a copied-up member of a lower hard-link group changes every name of the group
//!   (they are one inode): the group's other names are `C` too. Finding them costs one pass over
//!   that layer's directory table, only when the upper holds such a copy.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use format_spec::Kind;

use crate::MappedLayer;
use crate::commit::resolve_redirect;
use crate::error::UpperError;
use crate::merged::{MergedDir, MergedEntry, MergedView, Source, names_of_inodes};
use crate::upper::{self, MAX_DEPTH, UpperEntry, UpperKind, display, join};

/// The kind of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// `A`: the path is new.
    Added,
    /// `C`: the path existed and changed (content, metadata, type, or a directory's entries).
    Changed,
    /// `D`: the path is gone.
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One change: its kind and its absolute path (`/etc/passwd`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The path, starting with `/`.
    pub path: Vec<u8>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), String::from_utf8_lossy(&self.path))
    }
}

/// A directory's base content, its base path, and whether it replaced what was there.
type DirContent = (Option<MergedDir>, Option<Vec<u8>>, bool);

struct Differ<'a> {
    view: Option<MergedView<'a>>,
    nbase: usize,
    /// Keyed by path components: the map's order is the sorted depth-first order.
    changes: BTreeMap<Vec<Vec<u8>>, ChangeKind>,
    /// Paths whose base content is hidden below them (opaque or renamed directories, whiteouts,
    /// non-directories of the upper).
    shadow: HashSet<Vec<u8>>,
    /// Paths the upper holds.
    touched: HashSet<Vec<u8>>,
    /// Lower hard-linked files with a copy in the upper.
    linked: BTreeSet<Source>,
}

fn key(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&c| c == b'/').filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect()
}

impl<'a> Differ<'a> {
    fn record(&mut self, path: &[u8], kind: ChangeKind) {
        self.changes.entry(key(path)).or_insert(kind);
    }

    fn lookup(&self, dir: &Option<MergedDir>, name: &[u8]) -> Result<Option<MergedEntry>, UpperError> {
        match (&self.view, dir) {
            (Some(v), Some(d)) => Ok(v.lookup_in(d, name)?),
            _ => Ok(None),
        }
    }

    fn list(&self, dir: &Option<MergedDir>) -> Result<Vec<MergedEntry>, UpperError> {
        match (&self.view, dir) {
            (Some(v), Some(d)) => Ok(v.read_dir(d)?),
            _ => Ok(Vec::new()),
        }
    }

    /// Whether an upper directory's own metadata differs from the base directory's.
    fn upper_dir_changed(&self, e: &UpperEntry, before: &MergedEntry) -> Result<bool, UpperError> {
        let view = self.view.as_ref().expect("a base entry implies a base");
        let layer = view.layers()[before.source.layer];
        let inode = view.inode(before.source)?;
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> =
            layer.xattrs(&inode)?.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        Ok(e.st.st_mode & 0o7777 != inode.mode & 0o7777
            || e.st.st_uid != inode.uid
            || e.st.st_gid != inode.gid
            || e.st.st_mtime != inode.mtime.sec
            || e.st.st_mtime_nsec as u32 != inode.mtime.nsec
            || e.xattrs != xattrs)
    }

    /// Whether two base directories' own metadata differ.
    fn base_dir_changed(&self, a: Source, b: Source) -> Result<bool, UpperError> {
        let view = self.view.as_ref().expect("base entries imply a base");
        let (ia, ib) = (view.inode(a)?, view.inode(b)?);
        let xa = view.layers()[a.layer].xattrs(&ia)?;
        let xb = view.layers()[b.layer].xattrs(&ib)?;
        Ok(ia.mode != ib.mode || ia.uid != ib.uid || ia.gid != ib.gid || ia.mtime != ib.mtime || xa != xb)
    }

    fn note_origin(&mut self, e: &UpperEntry) {
        if let (Some(view), Some((l, ino)), UpperKind::File { .. }) = (&self.view, e.origin, &e.kind)
            && (l as usize) < self.nbase
        {
            let src = Source { layer: self.nbase - 1 - l as usize, ino };
            if view.inode(src).is_ok_and(|i| i.kind() == Kind::File && i.nlink > 1) {
                self.linked.insert(src);
            }
        }
    }

    /// What an upper directory's content merges with: `(content, content path, replaced)`, where
    /// `replaced` says the after-view is not the before-view's directory with changes on top.
    fn dir_content(
        &self,
        e: &UpperEntry,
        opaque: bool,
        redirect: Option<&[u8]>,
        content_path: Option<&[u8]>,
        before: &Option<MergedEntry>,
        parent_content: &Option<MergedDir>,
    ) -> Result<DirContent, UpperError> {
        let before_dir = before.as_ref().and_then(|b| b.dir.clone());
        if opaque {
            return Ok((None, None, true));
        }
        if let Some(r) = redirect {
            let target = match &self.view {
                Some(v) => resolve_redirect(v, content_path, r)?,
                None => None,
            };
            return Ok(match target {
                Some((rp, MergedEntry { dir: Some(d), .. })) => {
                    let same = before_dir.as_ref() == Some(&d);
                    (Some(d), Some(rp), !same)
                }
                _ => (None, None, true),
            });
        }
        let content = self.lookup(parent_content, &e.name)?.and_then(|l| l.dir);
        let cp = match (&content, content_path) {
            (Some(_), Some(cp)) => Some(join(cp, &e.name)),
            _ => None,
        };
        let same = content == before_dir;
        Ok((content, cp, !same))
    }

    /// An upper directory whose after-view is the before-view's directory plus the upper's
    /// entries (`dir` merges with `before`, the same base directory).
    fn walk_merged(
        &mut self,
        fd: &OwnedFd,
        path: &[u8],
        before: &Option<MergedDir>,
        before_path: Option<&[u8]>,
        depth: usize,
    ) -> Result<(), UpperError> {
        if depth > MAX_DEPTH {
            return Err(UpperError::TooDeep(display(path)));
        }
        for e in upper::read_dir(fd.as_fd(), path)? {
            let p = join(path, &e.name);
            let before_e = self.lookup(before, &e.name)?;
            self.upper_entry(fd.as_fd(), &p, &e, before_e, before, before_path, depth)?;
        }
        Ok(())
    }

    /// One upper entry at `p`; `before_e` is what the base had there; `content`/`content_path`
    /// the base directory the parent's content merges with (for redirects and plain dirs).
    #[allow(clippy::too_many_arguments)]
    fn upper_entry(
        &mut self,
        fd: BorrowedFd<'_>,
        p: &[u8],
        e: &UpperEntry,
        before_e: Option<MergedEntry>,
        content: &Option<MergedDir>,
        content_path: Option<&[u8]>,
        depth: usize,
    ) -> Result<(), UpperError> {
        self.touched.insert(p.to_vec());
        match &e.kind {
            UpperKind::Whiteout => {
                self.shadow.insert(p.to_vec());
                if before_e.is_some() {
                    self.record(p, ChangeKind::Deleted);
                }
            }
            UpperKind::Dir { opaque, redirect } => {
                let child = upper::open_dir(fd, &e.name, p)?;
                let opaque = *opaque || upper::has_opaque_marker(child.as_fd());
                let (cdir, cpath, replaced) =
                    self.dir_content(e, opaque, redirect.as_deref(), content_path, &before_e, content)?;
                let before_dir = before_e.as_ref().and_then(|b| b.dir.clone());
                let kind = match &before_e {
                    None => Some(ChangeKind::Added),
                    Some(b) if b.dir.is_none() || opaque || redirect.is_some() => Some(ChangeKind::Changed),
                    Some(b) => self.upper_dir_changed(e, b)?.then_some(ChangeKind::Changed),
                };
                if let Some(k) = kind {
                    self.record(p, k);
                }
                if opaque || redirect.is_some() || before_e.as_ref().is_some_and(|b| b.dir.is_none()) {
                    self.shadow.insert(p.to_vec());
                }
                if replaced {
                    self.walk_replaced(Some(&child), p, &cdir, cpath.as_deref(), &before_dir, depth + 1)?;
                } else {
                    self.walk_merged(&child, p, &before_dir, cpath.as_deref(), depth + 1)?;
                }
            }
            _ => {
                self.shadow.insert(p.to_vec());
                self.note_origin(e);
                self.record(p, if before_e.is_some() { ChangeKind::Changed } else { ChangeKind::Added });
            }
        }
        Ok(())
    }

    /// A directory whose after-view is the upper's entries over `content` (a base directory other
    /// than the one that was at this path before, or none), compared with `before` entry by
    /// entry: what is new is listed, and so is what is gone.
    fn walk_replaced(
        &mut self,
        fd: Option<&OwnedFd>,
        path: &[u8],
        content: &Option<MergedDir>,
        content_path: Option<&[u8]>,
        before: &Option<MergedDir>,
        depth: usize,
    ) -> Result<(), UpperError> {
        if depth > MAX_DEPTH {
            return Err(UpperError::TooDeep(display(path)));
        }
        let uppers = match fd {
            Some(fd) => upper::read_dir(fd.as_fd(), path)?,
            None => Vec::new(),
        };
        let lowers = self.list(content)?;
        let mut after: HashSet<Vec<u8>> = HashSet::new();
        let (mut i, mut j) = (0, 0);
        while i < uppers.len() || j < lowers.len() {
            let take_upper = match (uppers.get(i), lowers.get(j)) {
                (Some(u), Some(l)) => {
                    if u.name == l.name {
                        j += 1;
                    }
                    u.name <= l.name
                }
                (Some(_), None) => true,
                _ => false,
            };
            if take_upper {
                let e = &uppers[i];
                i += 1;
                let p = join(path, &e.name);
                if e.kind != UpperKind::Whiteout {
                    after.insert(e.name.clone());
                } else {
                    self.touched.insert(p);
                    continue; // hides the content's entry; the before-side pass lists a deletion
                }
                let before_e = self.lookup(before, &e.name)?;
                let fd = fd.expect("upper entries come from an upper directory");
                self.upper_entry(fd.as_fd(), &p, e, before_e, content, content_path, depth)?;
            } else {
                let l = lowers[j].clone();
                j += 1;
                after.insert(l.name.clone());
                let p = join(path, &l.name);
                let before_e = self.lookup(before, &l.name)?;
                self.base_entry(&p, &l, before_e, content_path, depth)?;
            }
        }
        for b in self.list(before)? {
            if !after.contains(&b.name) {
                self.record(&join(path, &b.name), ChangeKind::Deleted);
            }
        }
        Ok(())
    }

    /// A base entry shown at `p` in a replaced directory, against what was at `p` before.
    fn base_entry(
        &mut self,
        p: &[u8],
        l: &MergedEntry,
        before_e: Option<MergedEntry>,
        content_path: Option<&[u8]>,
        depth: usize,
    ) -> Result<(), UpperError> {
        if let Some(b) = &before_e
            && b.source == l.source
            && b.dir == l.dir
        {
            return Ok(()); // the very same entry: nothing changed below either
        }
        match &l.dir {
            None => self.record(p, if before_e.is_some() { ChangeKind::Changed } else { ChangeKind::Added }),
            Some(d) => {
                let kind = match &before_e {
                    None => Some(ChangeKind::Added),
                    Some(MergedEntry { dir: None, .. }) => Some(ChangeKind::Changed),
                    Some(b) => self.base_dir_changed(l.source, b.source)?.then_some(ChangeKind::Changed),
                };
                if let Some(k) = kind {
                    self.record(p, k);
                }
                let before_dir = before_e.and_then(|b| b.dir);
                let cp = content_path.map(|cp| join(cp, &l.name));
                self.walk_replaced(None, p, &Some(d.clone()), cp.as_deref(), &before_dir, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The other names of copied-up lower hard links: changed with their copy.
    fn linked_names(&mut self) -> Result<(), UpperError> {
        let Some(view) = &self.view else { return Ok(()) };
        if self.linked.is_empty() {
            return Ok(());
        }
        let mut by_layer: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
        for s in &self.linked {
            by_layer.entry(s.layer).or_default().insert(s.ino);
        }
        let mut found = Vec::new();
        for (layer, inos) in by_layer {
            for (ino, paths) in names_of_inodes(view.layers()[layer], &inos)? {
                for path in paths {
                    if self.touched.contains(&path) || self.is_shadowed(&path) {
                        continue;
                    }
                    if view.lookup(&path)?.is_some_and(|e| e.source == Source { layer, ino }) {
                        found.push(path);
                    }
                }
            }
        }
        for p in found {
            self.record(&p, ChangeKind::Changed);
        }
        Ok(())
    }

    fn is_shadowed(&self, path: &[u8]) -> bool {
        if self.shadow.contains(&b""[..]) {
            return true;
        }
        let mut end = 0;
        while let Some(pos) = path[end..].iter().position(|&c| c == b'/') {
            if self.shadow.contains(&path[..end + pos]) {
                return true;
            }
            end += pos + 1;
        }
        false
    }
}

/// The changes upper directory `upper` makes to `base` (the layers it is mounted over, topmost
/// first; empty: everything is added), in `docker diff`'s order and semantics (module docs).
pub fn diff_upper(upper: &Path, base: &[&MappedLayer]) -> Result<Vec<Change>, UpperError> {
    let root = upper::open_root(upper)?;
    let view = (!base.is_empty()).then(|| MergedView::new(base.to_vec()));
    let mut d = Differ {
        view,
        nbase: base.len(),
        changes: BTreeMap::new(),
        shadow: HashSet::new(),
        touched: HashSet::new(),
        linked: BTreeSet::new(),
    };
    let root_entry = upper::root_entry(root.as_fd())?;
    let before_root = match &d.view {
        Some(v) => Some(v.root()?),
        None => None,
    };
    if matches!(root_entry.kind, UpperKind::Dir { opaque: true, .. }) {
        d.shadow.insert(Vec::new());
        d.walk_replaced(Some(&root), b"", &None, None, &before_root, 0)?;
    } else {
        d.walk_merged(&root, b"", &before_root, Some(b""), 0)?;
    }
    d.linked_names()?;
    // Docker's rule: the parent of an added or deleted entry is changed (the root excepted).
    let parents: Vec<Vec<Vec<u8>>> = d
        .changes
        .iter()
        .filter(|(k, kind)| k.len() > 1 && **kind != ChangeKind::Changed)
        .map(|(k, _)| k[..k.len() - 1].to_vec())
        .collect();
    for p in parents {
        d.changes.entry(p).or_insert(ChangeKind::Changed);
    }
    Ok(d.changes
        .into_iter()
        .map(|(k, kind)| {
            let mut path = Vec::new();
            for c in k {
                path.push(b'/');
                path.extend_from_slice(&c);
            }
            Change { kind, path }
        })
        .collect())
}
