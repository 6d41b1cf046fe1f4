//! Committing an upper directory: the upper of a layerfs or kernel overlayfs mount becomes one
//! packed layer that, stacked on the base layers it was mounted over, reproduces the merged view
//! exactly.
//!
//! Three passes, all in sorted (deterministic) order, so that committing the same upper twice
//! gives the same layer, byte for byte:
//!
//! 1. **Plan**: walk the upper (directory fds, `O_NOFOLLOW`, see [`crate::upper`])
//!    and decide what each entry becomes. Whiteouts stay whiteouts (when the base has something
//!    to hide), opaque directories stay opaque. A *renamed* merged directory (a redirect) cannot
//!    be expressed by the layer format, so it becomes an opaque directory holding its full merged
//!    content: the base's merged directory at the redirect path, with the upper's own changes on
//!    top (the whole subtree is *materialised*). A metadata-only copy takes its metadata from the
//!    upper and its data from the lower file (by the `*.layerfs.origin` xattr, else the redirect or
//!    the same path): an external object is referenced by digest, inline data is copied; the
//!    sparse upper file is never read.
//! 2. **Hard links**: names sharing an upper inode form one group. A copied-up member of a lower
//!    hard-link group (layerfs links every alias to its copy: `WORK/index`) and a lower file copied
//!    whole into the layer by a redirect take their *other* lower names along, found by one pass
//!    over that layer's directory table, so that the new image keeps them linked; their parent
//!    directories are added with the merged metadata.
//! 3. **Write**: one [`LayerBuilder`] pass. Upper data streams through the builder (and the store's
//!    object sink: contents the store has already are not stored again), holes skipped with
//!    `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Memory: the plan holds one small record per entry of the upper (plus materialised entries).
//! Metadata recorded: mode, owner, nanosecond mtime, every user-visible xattr (`security.*`, ACLs,
//! `user.*`, `trusted.*` except overlay's and layerfs' own). atime and ctime are not recorded:
//! reading a file changes its atime, and a layer must not depend on being read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use format_spec::{Kind, LayerBuilder, Meta, Summary, Timestamp, WriterOptions};
use indicatif::ProgressBar;

use crate::MappedLayer;
use crate::error::{CommitError, UpperError};
use crate::export::{file_reader, meta_of};
use crate::image::{Image, ImageRef};
use crate::merged::{MergedDir, MergedEntry, MergedView, Source, names_of_inodes};
use crate::store::{Digest32, Store, digest_string, sha256_file};
use crate::upper::{self, MAX_DEPTH, UpperEntry, UpperKind, display, join};

/// Options of a commit.
#[derive(Clone, Copy, Debug)]
pub struct CommitOptions {
    /// With a store: regular files of at least this many bytes become shared objects.
    pub external_min: u64,
    /// Write a self-contained layer: all data inline, nothing written to the store (files of the
    /// base that the layer must carry are copied out of their objects).
    pub self_contained: bool,
    /// Flush the layer (and, for an image, the store) to disk before publishing.
    pub sync: bool,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions { external_min: 4096, self_contained: false, sync: true }
    }
}

/// What a commit did.
#[derive(Clone, Debug, Default)]
pub struct CommitReport {
    /// The writer's summary (size, inodes, objects).
    pub summary: Summary,
    /// Entries read from the upper.
    pub upper_entries: u64,
    /// Whiteouts read from the upper (some hide nothing and are dropped).
    pub whiteouts: u64,
    /// Opaque directories written.
    pub opaque_dirs: u64,
    /// Renamed directories (redirects) materialised.
    pub redirects: u64,
    /// Entries copied from the base into materialised directories.
    pub materialised: u64,
    /// Metadata-only copies (data taken from the base).
    pub metacopies: u64,
    /// Lower names carried along to keep hard-link groups linked.
    pub carried_links: u64,
    /// Bytes of file data read from the upper.
    pub upper_bytes: u64,
    /// Bytes of file data taken from the base (materialised or metadata-only files).
    pub base_bytes: u64,
    /// Things worth knowing that did not stop the commit.
    pub warnings: Vec<String>,
}

/// Where a regular file's data comes from.
#[derive(Clone, Copy, Debug)]
enum Data {
    /// The upper file with this identity, at the planned path.
    Upper { id: (u64, u64), size: u64, sparse: bool },
    /// A base layer's file (the upper's size wins for a metadata-only copy).
    Base { src: Source, size: u64 },
}

/// A hard-link group: names that must share one inode in the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Group {
    Upper((u64, u64)),
    Base(Source),
}

#[derive(Debug)]
enum What {
    Dir { opaque: bool },
    Whiteout,
    File { group: Group, data: Data, from_upper: bool },
    Symlink(Vec<u8>),
    Special(Kind, (u32, u32)),
}

#[derive(Debug)]
struct Planned {
    path: Vec<u8>,
    meta: Meta,
    what: What,
}

/// The context of a directory being planned.
#[derive(Clone, Debug)]
struct Ctx {
    /// The base's merged directory this directory's content merges with (none: opaque or new).
    content: Option<MergedDir>,
    /// Its path in the base (for relative redirects).
    content_path: Option<Vec<u8>>,
    /// Inside a materialised (renamed) directory: every entry of `content` is written too.
    materialise: bool,
}

fn meta_of_stat(e: &UpperEntry) -> Meta {
    Meta {
        mode: e.st.st_mode & 0o7777,
        uid: e.st.st_uid,
        gid: e.st.st_gid,
        mtime: Timestamp { sec: e.st.st_mtime, nsec: e.st.st_mtime_nsec.clamp(0, 999_999_999) as u32 },
        atime: None,
        ctime: None,
        xattrs: e.xattrs.clone(),
    }
}

/// Resolves a redirect (absolute, or relative to the parent's base path) to a path of the base
/// and its merged entry. `.` and `..` components are dropped, as layerfs does.
pub(crate) fn resolve_redirect(
    view: &MergedView<'_>,
    parent_content_path: Option<&[u8]>,
    value: &[u8],
) -> Result<Option<(Vec<u8>, MergedEntry)>, UpperError> {
    let full = match value.strip_prefix(b"/") {
        Some(abs) => abs.to_vec(),
        None => match parent_content_path {
            Some(p) => join(p, value),
            None => return Ok(None),
        },
    };
    let comps: Vec<&[u8]> = full.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b"." && *c != b"..").collect();
    let path = comps.join(&b'/');
    Ok(view.lookup(&path)?.map(|e| (path, e)))
}

/// Pass 1 and 2: what the layer will hold.
struct Planner<'a> {
    view: Option<MergedView<'a>>,
    nbase: usize,
    plan: Vec<Planned>,
    report: CommitReport,
    /// Upper inode -> the base hard-linked file it is a copy of.
    upper_origin: BTreeMap<(u64, u64), Source>,
}

impl<'a> Planner<'a> {
    fn view(&self, path: &[u8], what: &'static str) -> Result<&MergedView<'a>, UpperError> {
        self.view.as_ref().ok_or_else(|| UpperError::NeedsBase { path: display(path), what })
    }

    fn push(&mut self, path: Vec<u8>, meta: Meta, what: What) {
        self.plan.push(Planned { path, meta, what });
    }

    /// Whether a whiteout of `name` in a directory of context `ctx` hides anything.
    fn hides_something(&self, ctx: &Ctx, name: &[u8]) -> Result<bool, UpperError> {
        match (&self.view, &ctx.content) {
            // No base given: keep every whiteout.
            (None, _) => Ok(true),
            (Some(_), None) => Ok(false),
            (Some(v), Some(c)) => Ok(v.lookup_in(c, name)?.is_some()),
        }
    }

    fn walk(&mut self, fd: &OwnedFd, path: &[u8], ctx: &Ctx, depth: usize) -> Result<(), CommitError> {
        if depth > MAX_DEPTH {
            return Err(UpperError::TooDeep(display(path)).into());
        }
        let entries = upper::read_dir(fd.as_fd(), path)?;
        let lower = match (&ctx.content, ctx.materialise) {
            (Some(c), true) => self.view(path, "a renamed directory")?.read_dir(c).map_err(UpperError::from)?,
            _ => Vec::new(),
        };
        // Sorted merge of the upper's entries and (materialising) the base's.
        let (mut i, mut j) = (0, 0);
        while i < entries.len() || j < lower.len() {
            let take_upper = match (entries.get(i), lower.get(j)) {
                (Some(u), Some(l)) => {
                    if u.name == l.name {
                        j += 1; // the upper entry hides the base's
                    }
                    u.name <= l.name
                }
                (Some(_), None) => true,
                _ => false,
            };
            if take_upper {
                self.upper_entry(fd.as_fd(), path, &entries[i], ctx, depth)?;
                i += 1;
            } else {
                let l = lower[j].clone();
                let p = join(path, &l.name);
                self.base_entry(&l, p, depth + 1)?;
                j += 1;
            }
        }
        Ok(())
    }

    fn upper_entry(
        &mut self,
        fd: BorrowedFd<'_>,
        parent: &[u8],
        e: &UpperEntry,
        ctx: &Ctx,
        depth: usize,
    ) -> Result<(), CommitError> {
        let p = join(parent, &e.name);
        self.report.upper_entries += 1;
        match &e.kind {
            UpperKind::Whiteout => {
                self.report.whiteouts += 1;
                // Inside a materialised directory nothing below shows through: no whiteout.
                if !ctx.materialise && self.hides_something(ctx, &e.name)? {
                    self.push(p, Meta::default(), What::Whiteout);
                }
            }
            UpperKind::Dir { opaque, redirect } => {
                let child = upper::open_dir(fd, &e.name, &p)?;
                let opaque = *opaque || upper::has_opaque_marker(child.as_fd());
                let (cctx, flag) = if opaque {
                    (Ctx { content: None, content_path: None, materialise: ctx.materialise }, !ctx.materialise)
                } else if let Some(r) = redirect {
                    self.report.redirects += 1;
                    let view = self.view(&p, "a renamed directory (redirect)")?;
                    match resolve_redirect(view, ctx.content_path.as_deref(), r)? {
                        Some((rp, MergedEntry { dir: Some(d), .. })) => {
                            (Ctx { content: Some(d), content_path: Some(rp), materialise: true }, !ctx.materialise)
                        }
                        _ => {
                            self.report.warnings.push(format!(
                                "{}: redirect {:?} names no directory of the base: committed as an opaque directory",
                                display(&p),
                                String::from_utf8_lossy(r)
                            ));
                            (Ctx { content: None, content_path: None, materialise: ctx.materialise }, !ctx.materialise)
                        }
                    }
                } else {
                    let lower = match (&self.view, &ctx.content) {
                        (Some(v), Some(c)) => v.lookup_in(c, &e.name).map_err(UpperError::from)?.and_then(|l| l.dir),
                        _ => None,
                    };
                    let cp = match (&lower, &ctx.content_path) {
                        (Some(_), Some(cp)) => Some(join(cp, &e.name)),
                        _ => None,
                    };
                    (Ctx { content: lower, content_path: cp, materialise: ctx.materialise }, false)
                };
                if flag {
                    self.report.opaque_dirs += 1;
                }
                self.push(p.clone(), meta_of_stat(e), What::Dir { opaque: flag });
                self.walk(&child, &p, &cctx, depth + 1)?;
            }
            UpperKind::File { metacopy, redirect } => {
                let size = e.st.st_size as u64;
                let data = if *metacopy {
                    self.report.metacopies += 1;
                    Data::Base { src: self.metacopy_source(e, redirect.as_deref(), ctx, &p)?, size }
                } else {
                    Data::Upper { id: e.id(), size, sparse: e.maybe_sparse() }
                };
                if let (Some(view), Some((l, ino))) = (&self.view, e.origin)
                    && (l as usize) < self.nbase
                {
                    let src = Source { layer: self.nbase - 1 - l as usize, ino };
                    if let Ok(inode) = view.inode(src)
                        && inode.kind() == Kind::File
                        && inode.nlink > 1
                    {
                        self.upper_origin.entry(e.id()).or_insert(src);
                    }
                }
                self.push(p, meta_of_stat(e), What::File { group: Group::Upper(e.id()), data, from_upper: true });
            }
            UpperKind::Symlink => {
                let target = upper::read_link(fd, &e.name, &p)?;
                self.push(p, meta_of_stat(e), What::Symlink(target));
            }
            UpperKind::Special(k) => {
                self.push(p, meta_of_stat(e), What::Special(*k, upper::rdev(&e.st)));
            }
        }
        Ok(())
    }

    /// The base file holding the data of a metadata-only copy: by origin, else by the file's
    /// redirect, else at the same name in the parent's base directory.
    fn metacopy_source(
        &self,
        e: &UpperEntry,
        redirect: Option<&[u8]>,
        ctx: &Ctx,
        path: &[u8],
    ) -> Result<Source, UpperError> {
        let view = self.view(path, "a metadata-only copy")?;
        let is_file = |s: Source| view.inode(s).map(|i| i.kind() == Kind::File);
        if let Some((l, ino)) = e.origin
            && (l as usize) < self.nbase
        {
            let src = Source { layer: self.nbase - 1 - l as usize, ino };
            if is_file(src).unwrap_or(false) {
                return Ok(src);
            }
        }
        let found = match redirect {
            Some(r) => resolve_redirect(view, ctx.content_path.as_deref(), r)?.map(|(_, e)| e),
            None => match &ctx.content {
                Some(c) => view.lookup_in(c, &e.name)?,
                None => None,
            },
        };
        match found {
            Some(f) if f.kind == Kind::File => Ok(f.source),
            _ => Err(UpperError::MetacopyWithoutData(display(path))),
        }
    }

    /// An entry of the base written into a materialised directory (with its subtree).
    fn base_entry(&mut self, e: &MergedEntry, path: Vec<u8>, depth: usize) -> Result<(), CommitError> {
        if depth > MAX_DEPTH {
            return Err(UpperError::TooDeep(display(&path)).into());
        }
        self.report.materialised += 1;
        let view = self.view(&path, "a renamed directory")?;
        let layer = view.layers()[e.source.layer];
        let inode = view.inode(e.source).map_err(UpperError::from)?;
        let meta = meta_of(layer, &inode)?;
        match e.kind {
            Kind::Dir => {
                let children = match &e.dir {
                    Some(d) => view.read_dir(d).map_err(UpperError::from)?,
                    None => Vec::new(),
                };
                self.push(path.clone(), meta, What::Dir { opaque: false });
                for c in children {
                    let p = join(&path, &c.name);
                    self.base_entry(&c, p, depth + 1)?;
                }
            }
            Kind::File => {
                let what = What::File {
                    group: Group::Base(e.source),
                    data: Data::Base { src: e.source, size: inode.size },
                    from_upper: false,
                };
                self.push(path, meta, what);
            }
            Kind::Symlink => {
                let target = layer.readlink(&inode).map_err(UpperError::from)?.to_vec();
                self.push(path, meta, What::Symlink(target));
            }
            k @ (Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket) => {
                self.push(path, meta, What::Special(k, inode.rdev().unwrap_or((0, 0))));
            }
            Kind::Whiteout => {}
        }
        Ok(())
    }

    /// Pass 2: joins copies to the base hard-link groups they belong to, and carries the groups'
    /// other visible lower names into the layer.
    fn link_groups(&mut self) -> Result<(), CommitError> {
        let Some(view) = &self.view else { return Ok(()) };
        let mut origin_group: BTreeMap<Source, Group> = BTreeMap::new();
        for (id, src) in &self.upper_origin {
            origin_group.entry(*src).or_insert(Group::Upper(*id));
        }
        // Base files (materialised) whose copy is in the upper: one group with it.
        let mut group_of: BTreeMap<Source, Group> = origin_group.clone();
        for p in &mut self.plan {
            if let What::File { group, .. } = &mut p.what
                && let Group::Base(src) = *group
            {
                match origin_group.get(&src) {
                    Some(g) => *group = *g,
                    None => {
                        if view.inode(src).map_err(UpperError::from)?.nlink > 1 {
                            group_of.entry(src).or_insert(Group::Base(src));
                        }
                    }
                }
            }
        }
        if group_of.is_empty() {
            return Ok(());
        }
        // What the layer holds so far: path -> (directory, opaque).
        let mut out: HashMap<Vec<u8>, (bool, bool)> = HashMap::with_capacity(self.plan.len());
        for p in &self.plan {
            let info = match p.what {
                What::Dir { opaque } => (true, opaque),
                _ => (false, false),
            };
            out.insert(p.path.clone(), info);
        }
        let mut by_layer: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
        for src in group_of.keys() {
            by_layer.entry(src.layer).or_default().insert(src.ino);
        }
        let mut carried = Vec::new();
        for (layer, inos) in by_layer {
            let names = names_of_inodes(view.layers()[layer], &inos).map_err(UpperError::from)?;
            for (ino, paths) in names {
                let src = Source { layer, ino };
                let group = group_of[&src];
                for path in paths {
                    if out.contains_key(&path) || shadowed(&out, &path) {
                        continue;
                    }
                    // Still this file in the base's merged view (not hidden by a higher layer)?
                    if view.lookup(&path).map_err(UpperError::from)?.is_none_or(|e| e.source != src) {
                        continue;
                    }
                    // Parent directories the layer lacks: with their merged metadata.
                    let mut end = 0;
                    while let Some(pos) = path[end..].iter().position(|&c| c == b'/') {
                        let dir = path[..end + pos].to_vec();
                        end += pos + 1;
                        if out.contains_key(&dir) {
                            continue;
                        }
                        let d = view.lookup(&dir).map_err(UpperError::from)?;
                        let d = d.ok_or_else(|| UpperError::Changed(display(&dir)))?;
                        let meta =
                            meta_of(view.layers()[d.source.layer], &view.inode(d.source).map_err(UpperError::from)?)?;
                        carried.push(Planned { path: dir.clone(), meta, what: What::Dir { opaque: false } });
                        out.insert(dir, (true, false));
                    }
                    let size = view.inode(src).map_err(UpperError::from)?.size;
                    out.insert(path.clone(), (false, false));
                    carried.push(Planned {
                        path,
                        meta: Meta::default(),
                        what: What::File { group, data: Data::Base { src, size }, from_upper: false },
                    });
                    self.report.carried_links += 1;
                }
            }
        }
        self.plan.extend(carried);
        Ok(())
    }
}

/// True when an ancestor of `path` in the layer hides the base there (opaque, or not a
/// directory).
fn shadowed(out: &HashMap<Vec<u8>, (bool, bool)>, path: &[u8]) -> bool {
    if out.get(&b""[..]).is_some_and(|&(_, opaque)| opaque) {
        return true;
    }
    let mut end = 0;
    while let Some(pos) = path[end..].iter().position(|&c| c == b'/') {
        if let Some(&(dir, opaque)) = out.get(&path[..end + pos])
            && (!dir || opaque)
        {
            return true;
        }
        end += pos + 1;
    }
    false
}

/// Open upper directories along the current path (the plan visits them in order).
struct DirCache {
    root: OwnedFd,
    stack: Vec<(Vec<u8>, OwnedFd)>,
}

impl DirCache {
    fn dir(&mut self, parent: &[u8]) -> Result<BorrowedFd<'_>, UpperError> {
        let comps: Vec<&[u8]> = if parent.is_empty() { Vec::new() } else { parent.split(|&c| c == b'/').collect() };
        let mut k = 0;
        while k < self.stack.len() && k < comps.len() && self.stack[k].0 == comps[k] {
            k += 1;
        }
        self.stack.truncate(k);
        for (i, c) in comps.iter().enumerate().skip(k) {
            let here = comps[..=i].join(&b'/');
            let fd = {
                let at = self.stack.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
                upper::open_dir(at, c, &here)?
            };
            self.stack.push((c.to_vec(), fd));
        }
        Ok(self.stack.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

/// Counts bytes read through it.
struct Counting<'a, R> {
    inner: R,
    count: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.count)(n as u64);
        Ok(n)
    }
}

/// Commits upper directory `upper` over `base` (the layers it was mounted over, topmost first;
/// empty for a bare upper) as one packed layer written to `out` (an empty file). With a `store`
/// (and not `opts.self_contained`), files of at least `opts.external_min` bytes become store
/// objects, and base files the layer must carry are referenced by digest instead of copied.
/// `pb` counts the bytes of file data written.
pub fn commit_upper(
    upper: &Path,
    base: &[&MappedLayer],
    store: Option<&Store>,
    out: File,
    opts: &CommitOptions,
    pb: &ProgressBar,
) -> Result<CommitReport, CommitError> {
    let root = upper::open_root(upper)?;
    let view = (!base.is_empty()).then(|| MergedView::new(base.to_vec()));
    let mut planner = Planner {
        view,
        nbase: base.len(),
        plan: Vec::new(),
        report: CommitReport::default(),
        upper_origin: BTreeMap::new(),
    };

    // Pass 1: the plan.
    let root_entry = upper::root_entry(root.as_fd())?;
    let root_opaque = matches!(root_entry.kind, UpperKind::Dir { opaque: true, .. });
    let content = match (&planner.view, root_opaque) {
        (Some(v), false) => Some(v.root().map_err(UpperError::from)?),
        _ => None,
    };
    if root_opaque {
        planner.report.opaque_dirs += 1;
    }
    planner.push(Vec::new(), meta_of_stat(&root_entry), What::Dir { opaque: root_opaque });
    let ctx = Ctx { content, content_path: Some(Vec::new()), materialise: false };
    planner.walk(&root, b"", &ctx, 0)?;
    // Pass 2: hard-link groups.
    planner.link_groups()?;

    // Pass 3: write.
    let Planner { view, plan, mut report, .. } = planner;
    let mut reps: HashMap<Group, usize> = HashMap::new();
    for (i, p) in plan.iter().enumerate() {
        if let What::File { group, from_upper, .. } = p.what {
            let e = reps.entry(group).or_insert(i);
            if from_upper && !matches!(plan[*e].what, What::File { from_upper: true, .. }) {
                *e = i;
            }
        }
    }
    let total: u64 = reps
        .values()
        .map(|&i| match plan[i].what {
            What::File { data: Data::Upper { size, .. } | Data::Base { size, .. }, .. } => size,
            _ => 0,
        })
        .sum();
    pb.set_length(total);
    let self_contained = opts.self_contained || store.is_none();
    let mut sink = store.map(Store::object_sink);
    let mut b = match &mut sink {
        Some(s) if !self_contained => {
            LayerBuilder::with_objects(out, WriterOptions { external_min: opts.external_min }, s)
        }
        _ => LayerBuilder::new(out),
    };
    let mut dirs = DirCache { root, stack: Vec::new() };
    let mut emitted: HashMap<Group, usize> = HashMap::new();
    let count = |n: u64| pb.inc(n);
    for (i, p) in plan.iter().enumerate() {
        match &p.what {
            What::Dir { opaque } => {
                b.dir(&p.path, p.meta.clone())?;
                if *opaque {
                    b.opaque(&p.path)?;
                }
            }
            What::Whiteout => b.whiteout(&p.path)?,
            What::Symlink(t) => b.symlink(&p.path, p.meta.clone(), t)?,
            What::Special(k, rdev) => b.special(&p.path, p.meta.clone(), *k, *rdev)?,
            What::File { group, .. } => {
                if let Some(&first) = emitted.get(group) {
                    b.hardlink(&p.path, &plan[first].path)?;
                    continue;
                }
                emitted.insert(*group, i);
                let rep = &plan[reps[group]];
                let What::File { data, .. } = rep.what else { unreachable!("a group's representative is a file") };
                match data {
                    Data::Upper { id, size, sparse } => {
                        let (dir, name) = split_last(&rep.path);
                        let dfd = dirs.dir(dir)?;
                        let f = upper::open_file(dfd, name, id, &rep.path)?;
                        let mut r = upper::SparseReader::new(f, size, sparse, &count);
                        b.file(&p.path, rep.meta.clone(), size, &mut r)?;
                        report.upper_bytes += size;
                    }
                    Data::Base { src, size } => {
                        let view = view.as_ref().expect("base data only with a base");
                        let layer = view.layers()[src.layer];
                        let inode = view.inode(src).map_err(UpperError::from)?;
                        let digest = layer.digest(&inode).map_err(UpperError::from)?;
                        report.base_bytes += size;
                        match digest {
                            Some(d) if inode.is_external() && inode.size == size && !self_contained => {
                                b.external_file(&p.path, rep.meta.clone(), size, d, inode.allocated_bytes())?;
                                pb.inc(size);
                            }
                            _ => {
                                let have = inode.size.min(size);
                                let r = file_reader(layer, &inode, store)?
                                    .take(have)
                                    .chain(io::repeat(0).take(size - have));
                                let mut r = Counting { inner: r, count: &count };
                                b.file(&p.path, rep.meta.clone(), size, &mut r)?;
                            }
                        }
                    }
                }
            }
        }
    }
    report.summary = b.finish(None)?;
    Ok(report)
}

/// A commit into the store as a new image.
#[derive(Clone, Debug)]
pub struct ImageCommit<'a> {
    /// The image the upper was mounted over: its layers and configuration are the new image's
    /// starting point. `None` for a bare upper (the image gets the one new layer).
    pub base: Option<&'a Image>,
    /// The new image's name, `NAME[:TAG]`.
    pub name: &'a str,
    /// Dockerfile-style configuration changes (see [`crate::image::ImageConfig::apply_changes`]).
    pub changes: &'a [String],
    /// A commit message.
    pub message: Option<&'a str>,
}

/// What [`commit_image`] did.
#[derive(Clone, Debug)]
pub struct ImageCommitReport {
    /// The image written.
    pub image: Image,
    /// The new layer's digest.
    pub layer: Digest32,
    /// False when the store held that layer already (committing twice with no change).
    pub new_layer: bool,
    /// The commit's details.
    pub commit: CommitReport,
}

/// Removes a temporary file unless disarmed.
struct TempGuard(Option<std::path::PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Commits `upper` as a new layer on top of `req.base`'s layers and writes the new image.
///
/// Crash safety (the store's order of publication): objects are linked into `objects/` complete,
/// the layer is written to `tmp/` and renamed to `layers/<sha256>.lpk` once complete and synced,
/// and the manifest is written (temp file + rename) after a `syncfs`. A commit killed at any point
/// leaves no half layer and no image: only a file in `tmp/` and maybe unreferenced objects, which
/// the next `gc` removes. The store's shared lock keeps `gc` out meanwhile; a commit that fails
/// (a full disk) collects what it published (see [`Store::write_or_collect`]).
pub fn commit_image(
    store: &Store,
    upper: &Path,
    req: &ImageCommit<'_>,
    opts: &CommitOptions,
    pb: &ProgressBar,
) -> Result<ImageCommitReport, CommitError> {
    let image_ref = ImageRef::parse(req.name).map_err(crate::StoreError::from)?;
    let mut config = req.base.map(|b| b.config.clone()).unwrap_or_else(crate::image::ImageConfig::rootfs_default);
    config.apply_changes(req.changes)?;
    store.write_or_collect(|| commit_locked(store, upper, req, config, image_ref, opts, pb))
}

fn commit_locked(
    store: &Store,
    upper: &Path,
    req: &ImageCommit<'_>,
    config: crate::image::ImageConfig,
    image_ref: ImageRef,
    opts: &CommitOptions,
    pb: &ProgressBar,
) -> Result<ImageCommitReport, CommitError> {
    let layers = match req.base {
        Some(img) => crate::open_image_layers(store, img)?,
        None => Vec::new(),
    };
    let top_first: Vec<&MappedLayer> = layers.iter().rev().collect();
    let (file, tmp) = store.temp_file(".layer-")?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let out = file.try_clone().map_err(|e| CommitError::io("duplicating a file handle", e))?;
    let opts = CommitOptions { self_contained: false, ..*opts };
    let report = commit_upper(upper, &top_first, Some(store), out, &opts, pb)?;
    if opts.sync {
        file.sync_all().map_err(|e| CommitError::io("syncing the layer", e))?;
    }
    let digest = sha256_file(&tmp).map_err(|e| CommitError::io("hashing the layer", e))?;
    let new_layer = store.publish_layer(&tmp, &digest)?;
    guard.0 = None;
    let (mut layer_list, mut diff_ids) = match req.base {
        Some(b) => (b.layers.clone(), b.diff_ids.clone()),
        None => (Vec::new(), Vec::new()),
    };
    diff_ids.resize(layer_list.len(), String::new());
    layer_list.push(digest_string(&digest));
    // A committed layer has no source tar: its diff_id is computed when it is exported.
    diff_ids.push(String::new());
    let image = Image {
        name: image_ref.to_string(),
        layers: layer_list,
        diff_ids,
        config,
        created: Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
        source: match req.base {
            Some(b) => format!("commit on {}", b.name),
            None => "commit".into(),
        },
        comment: req.message.map(String::from),
    };
    if opts.sync {
        store.sync()?;
    }
    store.save_image(&image)?;
    Ok(ImageCommitReport { image, layer: digest, new_layer, commit: report })
}
