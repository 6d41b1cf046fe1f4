//! The fuser adapter: each `Filesystem` method calls one [`Union`] method and replies; errnos
//! are mapped in the `reply_err!` macro only. It also owns the kernel-facing policy: TTLs, page-cache
//! flags, readdirplus, and FUSE passthrough (one backing id per inode, shared by its opens).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation as FGen, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::core::{Attr, BackingKey, BackingSource, Ctx, Opened, SetAttr, Union};
use crate::error::Errno;
use crate::idmap::IdMaps;
use crate::ino::{Fh, Generation, Ino};
use crate::inode::lock;
use crate::lower::{FileKind, LowerIno, Timespec};
use crate::sys::SetTime;

/// Kernel-facing settings.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Entry and attribute TTL (everything changes through us, so it can be long).
    pub ttl: Duration,
    /// Try FUSE passthrough.
    pub passthrough: bool,
    /// Largest write request.
    pub max_write: u32,
    /// fsync does nothing (`volatile`).
    pub volatile: bool,
    /// Let the kernel cache inline lower data per mount (`cache_inline=1`); by default it is
    /// read with direct I/O from the layer's mapping, whose pages every mount shares.
    pub cache_inline: bool,
    /// Let the kernel cache directory listings per mount (`cache_dirs`).
    pub cache_dirs: bool,
    /// Stored ids shown shifted (`uidmapping`/`gidmapping`).
    pub idmaps: IdMaps,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            ttl: Duration::from_secs(86400),
            passthrough: true,
            max_write: 1 << 20,
            volatile: false,
            cache_inline: false,
            cache_dirs: true,
            idmaps: IdMaps::default(),
        }
    }
}

#[derive(Default)]
struct IoState {
    cached: u32,
    passthrough: u32,
    backing: Option<(BackingKey, Arc<BackingId>)>,
}

#[derive(Clone, Copy)]
enum IoMode {
    Cached,
    Direct,
    Passthrough,
}

/// Every file open says `FOPEN_NOFLUSH`: a `close` costs no FLUSH round trip. Nothing needs
/// it: writes are synchronous (passthrough, or written through by the kernel without a
/// writeback cache), dirty pages of shared mappings are written back when the mapping goes
/// away, and locks are the kernel's own (no `FUSE_POSIX_LOCKS`).
const NOFLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// Backing ids of closed lower files kept registered (each pins an open file in the kernel).
const LOWER_BACKING_IDS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(2048).unwrap();

/// A kernel inode: node id and generation.
type InodeKey = (Ino, Generation);

/// The FUSE filesystem.
pub struct LayerFs {
    core: Arc<Union>,
    opts: FsOptions,
    passthrough: AtomicBool,
    /// The kernel skips OPENDIR/RELEASEDIR once opendir says ENOSYS.
    no_opendir: AtomicBool,
    io: Mutex<HashMap<InodeKey, IoState>>,
    /// Backing ids of lower files, kept after their last close (leaf lock, taken under `io`).
    lower_ids: Mutex<lru::LruCache<(usize, LowerIno), Arc<BackingId>>>,
    fh_io: Mutex<HashMap<u64, (InodeKey, IoMode)>>,
}

impl std::fmt::Debug for LayerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFs").field("core", &self.core).finish()
    }
}

fn e(err: Errno) -> FErrno {
    FErrno::from_i32(err.code())
}

/// The one place an errno becomes a reply.
macro_rules! reply_err {
    ($reply:expr, $r:expr, $ok:expr) => {
        match $r {
            Ok(v) => $ok(v),
            Err(err) => $reply.error(e(err)),
        }
    };
}

fn to_time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new((-t.sec) as u64, 0) + Duration::new(0, t.nsec)
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn fattr(a: &Attr, maps: &IdMaps) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: to_time(a.atime),
        mtime: to_time(a.mtime),
        ctime: to_time(a.ctime),
        crtime: to_time(a.mtime),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: maps.uid.shown(a.uid),
        gid: maps.gid.shown(a.gid),
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn settime(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                SetTime::At { sec, nsec }
            }
        },
    })
}

fn ctx(req: &Request, maps: &IdMaps) -> Ctx {
    Ctx { uid: maps.uid.stored(req.uid()), gid: maps.gid.stored(req.gid()), pid: req.pid() }
}

impl LayerFs {
    /// Wraps a union.
    pub fn new(core: Arc<Union>, opts: FsOptions) -> LayerFs {
        LayerFs {
            core,
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            opts,
            io: Mutex::new(HashMap::new()),
            lower_ids: Mutex::new(lru::LruCache::new(LOWER_BACKING_IDS)),
            fh_io: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, reply: ReplyEntry, a: &Attr) {
        reply.entry(&self.opts.ttl, &fattr(a, &self.opts.idmaps), FGen(a.generation.0));
    }

    /// Picks the I/O mode of a new open and, for passthrough, the shared backing id. The
    /// kernel refuses mixing cached and passthrough opens of one inode, and two different
    /// backing files (after a copy-up): those opens fall back to direct I/O.
    ///
    /// Backing ids of lower files stay registered after their last close (bounded LRU): the
    /// file cannot change, and the next open of it (a program started again) then needs no
    /// open of the file and no ioctl. `open_backing` opens the file and registers it: its
    /// outer error fails the open (the file is missing), its inner one means the kernel
    /// refuses passthrough (then the daemon serves the data from now on).
    fn open_mode(
        &self,
        key: (Ino, Generation),
        opened: &Opened,
        open_backing: &dyn Fn(Fh) -> Result<io::Result<BackingId>, Errno>,
    ) -> Result<(IoMode, Option<Arc<BackingId>>), Errno> {
        if (opened.inline && !self.opts.cache_inline) || opened.setid {
            return Ok((IoMode::Direct, None));
        }
        let mut io = lock(&self.io);
        let st = io.entry(key).or_default();
        if let Some(bkey) = opened.backing.filter(|_| self.passthrough.load(Ordering::Relaxed) && st.cached == 0) {
            match &st.backing {
                Some((k, id)) if *k == bkey => {
                    st.passthrough += 1;
                    return Ok((IoMode::Passthrough, Some(id.clone())));
                }
                Some(_) => return Ok((IoMode::Direct, None)),
                None => {
                    let lower = match bkey.source {
                        BackingSource::Lower { layer, ino } => Some((layer, ino)),
                        BackingSource::Upper => None,
                    };
                    let cached = lower.and_then(|l| lock(&self.lower_ids).get(&l).cloned());
                    let id = match cached {
                        Some(id) => Ok(id),
                        None => open_backing(opened.fh)?.map(Arc::new),
                    };
                    match id {
                        Ok(id) => {
                            if let Some(l) = lower {
                                lock(&self.lower_ids).put(l, id.clone());
                            }
                            st.backing = Some((bkey, id.clone()));
                            st.passthrough += 1;
                            return Ok((IoMode::Passthrough, Some(id)));
                        }
                        Err(err) => {
                            tracing::warn!(%err, "FUSE passthrough unavailable: serving reads and writes from the daemon");
                            self.passthrough.store(false, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if st.passthrough > 0 {
            return Ok((IoMode::Direct, None));
        }
        st.cached += 1;
        Ok((IoMode::Cached, None))
    }

    /// Registers the data file of open file `fh` as a backing file.
    fn register(
        &self,
        fh: Fh,
        open: impl FnOnce(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> Result<io::Result<BackingId>, Errno> {
        self.core.with_backing_fd(fh, open)
    }

    /// [`Self::open_mode`] for a new open file, recorded for its release; on error the handle
    /// is released.
    fn start_io(
        &self,
        key: (Ino, Generation),
        opened: &Opened,
        open_backing: &dyn Fn(Fh) -> Result<io::Result<BackingId>, Errno>,
    ) -> Result<(IoMode, Option<Arc<BackingId>>), Errno> {
        match self.open_mode(key, opened, open_backing) {
            Ok(m) => {
                lock(&self.fh_io).insert(opened.fh.0, (key, m.0));
                Ok(m)
            }
            Err(err) => {
                self.core.release(opened.fh);
                Err(err)
            }
        }
    }

    fn open_reply(&self, inode_key: (Ino, Generation), opened: Opened, reply: ReplyOpen) {
        let ob = |fh: Fh| self.register(fh, |fd| reply.open_backing(fd));
        let (mode, id) = match self.start_io(inode_key, &opened, &ob) {
            Ok(m) => m,
            Err(err) => return reply.error(e(err)),
        };
        let fh = FileHandle(opened.fh.0);
        match (mode, id) {
            (IoMode::Passthrough, Some(id)) => reply.opened_passthrough(fh, NOFLUSH, &id),
            (IoMode::Direct, _) => reply.opened(fh, NOFLUSH | FopenFlags::FOPEN_DIRECT_IO),
            _ => reply.opened(fh, if opened.keep_cache { NOFLUSH | FopenFlags::FOPEN_KEEP_CACHE } else { NOFLUSH }),
        }
    }

    fn release_io(&self, fh: u64) {
        let Some((key, mode)) = lock(&self.fh_io).remove(&fh) else {
            return;
        };
        let mut io = lock(&self.io);
        if let Some(st) = io.get_mut(&key) {
            match mode {
                IoMode::Cached => st.cached = st.cached.saturating_sub(1),
                IoMode::Passthrough => {
                    st.passthrough = st.passthrough.saturating_sub(1);
                    if st.passthrough == 0 {
                        // Closes an upper backing id with the last open (lower ones stay in
                        // `lower_ids` until evicted).
                        st.backing = None;
                    }
                }
                IoMode::Direct => {}
            }
            if st.cached == 0 && st.passthrough == 0 {
                io.remove(&key);
            }
        }
    }

    fn inode_key(&self, ino: INodeNo) -> (Ino, Generation) {
        let gen_ = self.core.table().generation(Ino(ino.0));
        (Ino(ino.0), gen_)
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            // We clear set-id bits on writes and truncations ourselves (see `write`,
            // `setattr`, `Opened::setid`): the kernel then stops asking for
            // `security.capability` before every write(2), which took a round trip even on
            // passthrough files.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let _ = config.add_capabilities(want & config.capabilities());
        if self.opts.cache_dirs && config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT) {
            self.no_opendir.store(true, Ordering::Relaxed);
        }
        let _ = config.set_max_write(self.opts.max_write);
        let _ = config.set_max_readahead(1 << 20);
        if self.opts.passthrough {
            if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
                tracing::warn!("FUSE passthrough unavailable (kernel): serving reads from the daemon");
            } else if crate::sys::geteuid() != 0 {
                tracing::warn!("FUSE passthrough unavailable (needs CAP_SYS_ADMIN): serving reads from the daemon");
            } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok()
            {
                self.passthrough.store(true, Ordering::Relaxed);
                tracing::info!("FUSE passthrough: enabled");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(Ino(parent.0), name.as_bytes()) {
            Ok(a) => self.entry(reply, &a),
            Err(Errno::ENOENT) => {
                // Negative entry, cached as long as positive ones: creations go through us.
                let mut a = fattr(
                    &Attr {
                        ino: Ino(0),
                        generation: Generation(0),
                        kind: FileKind::Regular,
                        perm: 0,
                        nlink: 0,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        blocks: 0,
                        rdev: 0,
                        atime: Timespec::default(),
                        mtime: Timespec::default(),
                        ctime: Timespec::default(),
                    },
                    &IdMaps::default(),
                );
                a.ino = INodeNo(0);
                reply.entry(&self.opts.ttl, &a, FGen(0));
            }
            Err(err) => reply.error(e(err)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(Ino(ino.0), nlookup);
    }

    // batch_forget: fuser's default calls `forget` for each node (its `ForgetOne` type is
    // private in 0.18).

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_err!(reply, self.core.getattr(Ino(ino.0), fh.map(|f| Fh(f.0))), |a: Attr| reply
            .attr(&self.opts.ttl, &fattr(&a, &self.opts.idmaps)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let maps = &self.opts.idmaps;
        let (uid, gid) = (uid.map(|u| maps.uid.stored(u)), gid.map(|g| maps.gid.stored(g)));
        // With FUSE_HANDLE_KILLPRIV_V2 a truncation must clear set-id bits unless the caller
        // has CAP_FSETID; fuser does not pass the kernel's FATTR_KILL_SUIDGID, so a caller
        // other than root stands for "without CAP_FSETID".
        let kill_setid = size.is_some() && req.uid() != 0;
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: settime(atime),
            mtime: settime(mtime),
            fh: fh.map(|f| Fh(f.0)),
            kill_setid,
        };
        reply_err!(reply, self.core.setattr(Ino(ino.0), &s), |a: Attr| reply
            .attr(&self.opts.ttl, &fattr(&a, &self.opts.idmaps)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply_err!(reply, self.core.readlink(Ino(ino.0)), |d: Vec<u8>| reply.data(&d));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.core.mknod(&ctx(req, &self.opts.idmaps), Ino(parent.0), name.as_bytes(), mode, u64::from(rdev));
        reply_err!(reply, r, |a: Attr| self.entry(reply, &a));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let r = self.core.mkdir(&ctx(req, &self.opts.idmaps), Ino(parent.0), name.as_bytes(), mode);
        reply_err!(reply, r, |a: Attr| self.entry(reply, &a));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_err!(reply, self.core.remove(Ino(parent.0), name.as_bytes(), false), |()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_err!(reply, self.core.remove(Ino(parent.0), name.as_bytes(), true), |()| reply.ok());
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = self.core.symlink(
            &ctx(req, &self.opts.idmaps),
            Ino(parent.0),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        reply_err!(reply, r, |a: Attr| self.entry(reply, &a));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.core.rename(Ino(parent.0), name.as_bytes(), Ino(newparent.0), newname.as_bytes(), flags.bits());
        reply_err!(reply, r, |()| reply.ok());
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.core.link(Ino(ino.0), Ino(newparent.0), newname.as_bytes());
        reply_err!(reply, r, |a: Attr| self.entry(reply, &a));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open(Ino(ino.0), flags.0) {
            Ok(o) => self.open_reply(self.inode_key(ino), o, reply),
            Err(err) => reply.error(e(err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply_err!(reply, self.core.read(Fh(fh.0), offset, size), |d: Vec<u8>| { reply.data(&d) });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        reply_err!(reply, self.core.write(Fh(fh.0), offset, data, kill), |n| reply.written(n));
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Not sent for our opens (FOPEN_NOFLUSH); kept for kernels that ignore the flag.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_io(fh.0);
        self.core.release(Fh(fh.0));
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        if self.opts.volatile {
            return reply.ok();
        }
        reply_err!(reply, self.core.fsync(Fh(fh.0), datasync), |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir.load(Ordering::Relaxed) {
            // The kernel takes ENOSYS as "no OPENDIR/RELEASEDIR from now on" and caches every
            // directory's listing (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR) until it changes: all
            // changes go through us, and the kernel drops its cache on each one.
            return reply.error(FErrno::ENOSYS);
        }
        match self.core.opendir(Ino(ino.0)) {
            Ok(_) if !self.opts.cache_dirs => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(lower_only) => {
                let flags = if lower_only {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::FOPEN_CACHE_DIR
                };
                reply.opened(FileHandle(0), flags)
            }
            Err(err) => reply.error(e(err)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let page = match self.core.readdir(Ino(ino.0), offset) {
            Ok(v) => v,
            Err(err) => return reply.error(e(err)),
        };
        for (i, ent) in page.entries.iter().enumerate().skip(page.start) {
            if reply.add(INodeNo(ent.ino.0), page.offset(i), file_type(ent.kind), OsStr::from_bytes(&ent.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let page = match self.core.readdir(Ino(ino.0), offset) {
            Ok(v) => v,
            Err(err) => return reply.error(e(err)),
        };
        for (i, ent) in page.entries.iter().enumerate().skip(page.start) {
            let dots = ent.name == b"." || ent.name == b"..";
            let attr = if dots { self.core.getattr(ent.ino, None) } else { self.core.lookup(Ino(ino.0), &ent.name) };
            let Ok(a) = attr else { continue };
            let full = reply.add(
                INodeNo(a.ino.0),
                page.offset(i),
                OsStr::from_bytes(&ent.name),
                &self.opts.ttl,
                &fattr(&a, &self.opts.idmaps),
                FGen(a.generation.0),
            );
            if full {
                if !dots {
                    self.core.forget(a.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply_err!(reply, self.core.statfs(), |s: crate::core::Statfs| reply
            .statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mut value = value.to_vec();
        self.opts.idmaps.map_xattr(name.as_bytes(), &mut value, false);
        reply_err!(reply, self.core.setxattr(Ino(ino.0), name.as_bytes(), &value, flags), |()| reply.ok());
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.core.getxattr(Ino(ino.0), name.as_bytes()).map(|mut v| {
            self.opts.idmaps.map_xattr(name.as_bytes(), &mut v, true);
            v
        });
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(FErrno::ERANGE),
            Err(err) => reply.error(e(err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(Ino(ino.0)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(FErrno::ERANGE),
            Err(err) => reply.error(e(err)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_err!(reply, self.core.removexattr(Ino(ino.0), name.as_bytes()), |()| reply.ok());
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks; only reached without it.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.core.create(&ctx(req, &self.opts.idmaps), Ino(parent.0), name.as_bytes(), mode, flags) {
            Ok((a, opened)) => {
                let key = (a.ino, a.generation);
                let ob = |fh: Fh| self.register(fh, |fd| reply.open_backing(fd));
                let (mode, id) = match self.start_io(key, &opened, &ob) {
                    Ok(m) => m,
                    Err(err) => return reply.error(e(err)),
                };
                let fh = FileHandle(opened.fh.0);
                let fa = fattr(&a, &self.opts.idmaps);
                let g = FGen(a.generation.0);
                match (mode, id) {
                    (IoMode::Passthrough, Some(id)) => {
                        reply.created_passthrough(&self.opts.ttl, &fa, g, fh, NOFLUSH, &id)
                    }
                    (IoMode::Direct, _) => {
                        reply.created(&self.opts.ttl, &fa, g, fh, NOFLUSH | FopenFlags::FOPEN_DIRECT_IO)
                    }
                    _ => reply.created(&self.opts.ttl, &fa, g, fh, NOFLUSH),
                }
            }
            Err(err) => reply.error(e(err)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_err!(reply, self.core.fallocate(Fh(fh.0), offset, length, mode), |()| reply.ok());
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        reply_err!(reply, self.core.lseek(Fh(fh.0), offset, whence), |o| reply.offset(o));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply_err!(reply, self.core.copy_file_range(Fh(fh_in.0), offset_in, Fh(fh_out.0), offset_out, len), |n| reply
            .written(n));
    }
}
