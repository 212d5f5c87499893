//! The FUSE adapter: decodes each kernel request, runs the filesystem core's answer on
//! the FUSE thread until it first waits and on the tokio runtime from there, and replies
//! from that task, so a slow S3 call never holds up other requests and an answer from
//! memory never waits for a runtime thread. No filesystem logic lives here.

use crate::fs::{Attr, Caller, Errno as CoreErrno, Fs, Kind, OpenMode, SetAttr};
use crate::fuse_passthrough::{OpenAs, Passthrough};
use crate::metrics::{FuseOp, Metrics};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Handle;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
    metrics: Arc<Metrics>,
    passthrough: Arc<Passthrough>,
}

tokio::task_local! {
    /// The errno a request was answered with (0: success), set by [`errno`].
    static ANSWERED: std::cell::Cell<i32>;
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: Handle, metrics: Arc<Metrics>) -> FuseAdapter {
        FuseAdapter {
            fs,
            rt,
            metrics,
            passthrough: Arc::default(),
        }
    }

    /// Runs `work` with a clone of the core, see [`run_from_here`], and counts the request
    /// as `op`: its time to the answer, and the errno its answer carried.
    fn spawn<F, Fut>(&self, op: FuseOp, work: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (metrics, started) = (self.metrics.clone(), Instant::now());
        let work = work(self.fs.clone());
        run_from_here(
            &self.rt,
            ANSWERED.scope(std::cell::Cell::new(0), async move {
                work.await;
                let errno = ANSWERED.with(|answered| answered.get());
                metrics.fuse_done(op, started.elapsed(), errno);
            }),
        );
    }

    /// Counts a request answered on the spot, without the core's help.
    fn answered(&self, op: FuseOp, errno: Errno) -> Errno {
        self.metrics.fuse_done(op, Duration::ZERO, i32::from(errno));
        errno
    }
}

/// Runs `task` on the calling (FUSE) thread up to its first wait, then on the runtime. A
/// request the core answers from memory (a create, a write into the buffer, a deferred
/// close, a cached lookup) is replied to at once, without waiting for a runtime thread
/// that may be busy with uploads.
fn run_from_here(rt: &Handle, task: impl Future<Output = ()> + Send + 'static) {
    let _runtime = rt.enter();
    let mut task = Box::pin(task);
    // The first poll's waker is never woken; the runtime polls the task again at once,
    // which registers its own waker with whatever the task waits for.
    let mut first = Context::from_waker(std::task::Waker::noop());
    // A panic stays in its request, as it would on the runtime: the dropped reply answers
    // EIO and this FUSE thread lives on.
    // On this thread, which waits for the kernel anyway, a block on the local disk is read
    // in place (crate::fs::disk_wait).
    let first_poll = || crate::fs::disk_wait::allowing(|| task.as_mut().poll(&mut first));
    match std::panic::catch_unwind(AssertUnwindSafe(first_poll)) {
        Ok(Poll::Pending) => {
            rt.spawn(task);
        }
        Ok(Poll::Ready(())) => {}
        Err(_) => tracing::error!("a request handler panicked; the request failed with EIO"),
    }
}

/// The one log line of a write or truncate refused while the kernel reads the file from
/// the disk cache's copy.
fn busy(ino: u64) {
    tracing::warn!(
        "writing or truncating inode {ino} refused (ETXTBSY): readers have it open from the disk cache's copy (passthrough; --passthrough false turns it off)"
    );
}

/// The kernel's errno for a core error, noted as the answer of the request being counted.
fn errno(e: CoreErrno) -> Errno {
    let _ = ANSWERED.try_with(|answered| answered.set(e.0));
    Errno::from_i32(e.0)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// `st_blksize`, the I/O size programs size their buffers by (Python's `open`, stdio,
/// `cp`, `cat`). An empty file is one being written (a new file, `cp`'s destination, an
/// `O_TRUNC`): 1 MiB, since without a writeback cache each `write()` is one FUSE request
/// (`cp` of 1 GiB into the mount took 3.9-4.0 s with 1 MiB writes, 4.7-5.9 s with 128 KiB).
/// A file with data is mostly read: 128 KiB, `cp`'s and `cat`'s own floor. A 1 MiB buffer
/// per open made glibc grow and trim its heap at each of Python's reads of a file of about
/// that size, faulting the pages in again: a warm epoch over 1,000 files of 1 MB took
/// 0.79 s, 0.30 s with 128 KiB (BENCHMARKS.md item 142).
fn preferred_io_size(a: &Attr) -> u32 {
    if a.size == 0 { 1 << 20 } else { 128 << 10 }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime(),
        mtime: a.mtime(),
        ctime: a.ctime(),
        crtime: a.mtime(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: preferred_io_size(a),
        flags: 0,
    }
}

fn open_mode(flags: OpenFlags) -> OpenMode {
    let f = flags.0;
    OpenMode {
        write: (f & libc::O_ACCMODE) != libc::O_RDONLY,
        truncate: f & libc::O_TRUNC != 0,
        append: f & libc::O_APPEND != 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Replies to a call that creates an entry.
fn reply_entry(fs: &Fs, reply: ReplyEntry, result: Result<Attr, CoreErrno>) {
    match result {
        Ok(attr) => reply.entry(&fs.attr_ttl(), &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), CoreErrno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// S3 keys are UTF-8: a name that is not cannot exist in the bucket.
fn utf8(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
        ];
        for flag in wanted {
            // An old kernel lacks some: mount anyway, a little slower. (No ATOMIC_O_TRUNC:
            // the kernel then truncates with a setattr after its own checks, so an O_TRUNC
            // refused with ETXTBSY truncates nothing.)
            let _ = config.add_capabilities(flag);
        }
        let _ = config
            .set_max_readahead(4 << 20)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config
            .set_max_background(256)
            .or_else(|max| config.set_max_background(max));
        let _ = config.set_max_write(1 << 20).or_else(|max| config.set_max_write(max));
        // Backing files one level deep: the disk cache's whole copies on a plain
        // filesystem (this mount can then still be a lower layer of an overlayfs).
        if self.fs.config().passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match utf8(name) {
            Ok(n) => n,
            Err(_) => return reply.error(self.answered(FuseOp::Lookup, Errno::ENOENT)),
        };
        self.spawn(FuseOp::Lookup, move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&fs.attr_ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let started = Instant::now();
        self.fs.forget(ino.0, nlookup);
        self.metrics.fuse_done(FuseOp::Forget, started.elapsed(), 0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(FuseOp::Getattr, move |fs| async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&fs.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(FuseOp::Readlink, move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = open_mode(flags);
        let writes = mode.write || mode.truncate;
        let passthrough = self.passthrough.clone();
        self.spawn(FuseOp::Open, move |fs| async move {
            if writes && !passthrough.readers_gone(ino.0).await {
                // Refused before the core sees it (and sets up data to write); an open that
                // races a reader's is refused below.
                busy(ino.0);
                return reply.error(errno(CoreErrno(libc::ETXTBSY)));
            }
            let o = match fs.open(ino.0, mode).await {
                Ok(o) => o,
                Err(e) => return reply.error(errno(e)),
            };
            let mut flags = if o.keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            if !mode.write {
                // A read-only handle's flush does nothing (locks are the kernel's
                // own): its close costs one request less (a DataLoader's files).
                flags |= FopenFlags::FOPEN_NOFLUSH;
            }
            match passthrough.open(&reply, ino.0, o.fh, writes, o.whole_file) {
                OpenAs::Passthrough(backing) => {
                    // The kernel takes no other flag with a backing file (KEEP_CACHE: EIO).
                    let flags = flags & FopenFlags::FOPEN_NOFLUSH;
                    fs.passthrough_opened();
                    reply.opened_passthrough(FileHandle(o.fh), flags, &backing)
                }
                OpenAs::ThroughS3vol => reply.opened(FileHandle(o.fh), flags),
                OpenAs::Busy => {
                    fs.release(o.fh).await;
                    busy(ino.0);
                    reply.error(errno(CoreErrno(libc::ETXTBSY)))
                }
            }
        });
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
        self.spawn(FuseOp::Read, move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(ino.0, fh.0);
        self.spawn(FuseOp::Release, move |fs| async move {
            fs.release(fh.0).await;
            reply.ok()
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(FuseOp::Write, move |fs| async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.spawn(FuseOp::Flush, move |fs| async move {
            reply_empty(reply, fs.flush(fh.0).await)
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(FuseOp::Fsync, move |fs| async move {
            reply_empty(reply, fs.fsync(fh.0).await)
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(self.answered(FuseOp::Create, e)),
        };
        let caller = caller(req);
        let open = open_mode(OpenFlags(flags));
        let passthrough = self.passthrough.clone();
        self.spawn(FuseOp::Create, move |fs| async move {
            match fs.create(parent.0, &name, mode & !umask, open, caller).await {
                Ok((attr, opened)) => {
                    passthrough.created(attr.ino);
                    reply.created(
                        &fs.attr_ttl(),
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(opened.fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            size,
            mode,
            uid,
            gid,
            mtime: mtime.map(time),
        };
        let passthrough = self.passthrough.clone();
        self.spawn(FuseOp::Setattr, move |fs| async move {
            if size.is_some() && !passthrough.readers_gone(ino.0).await {
                busy(ino.0);
                return reply.error(errno(CoreErrno(libc::ETXTBSY)));
            }
            match fs.setattr(ino.0, fh.map(|f| f.0), change).await {
                Ok(attr) => reply.attr(&fs.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = match utf8(name) {
            Ok(n) => n,
            Err(e) => return reply.error(self.answered(FuseOp::Mkdir, e)),
        };
        let caller = caller(req);
        self.spawn(FuseOp::Mkdir, move |fs| async move {
            let result = fs.mkdir(parent.0, &name, mode & !umask, caller).await;
            reply_entry(&fs, reply, result)
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let (name, target) = match (utf8(link_name), utf8(target.as_os_str())) {
            (Ok(n), Ok(t)) => (n, t),
            _ => return reply.error(self.answered(FuseOp::Symlink, Errno::EINVAL)),
        };
        let caller = caller(req);
        self.spawn(FuseOp::Symlink, move |fs| async move {
            let result = fs.symlink(parent.0, &name, &target, caller).await;
            reply_entry(&fs, reply, result)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Ok(name) = utf8(name) else {
            return reply.error(self.answered(FuseOp::Unlink, Errno::ENOENT));
        };
        self.spawn(FuseOp::Unlink, move |fs| async move {
            reply_empty(reply, fs.unlink(parent.0, &name).await)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Ok(name) = utf8(name) else {
            return reply.error(self.answered(FuseOp::Rmdir, Errno::ENOENT));
        };
        self.spawn(FuseOp::Rmdir, move |fs| async move {
            reply_empty(reply, fs.rmdir(parent.0, &name).await)
        });
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
        let (Ok(name), Ok(newname)) = (utf8(name), utf8(newname)) else {
            return reply.error(self.answered(FuseOp::Rename, Errno::EINVAL));
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(self.answered(FuseOp::Rename, Errno::EINVAL));
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.spawn(FuseOp::Rename, move |fs| async move {
            reply_empty(
                reply,
                fs.rename(parent.0, &name, newparent.0, &newname, no_replace).await,
            )
        });
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        // No extended attributes. ENOSYS, not ENOTSUP: only ENOSYS makes the kernel stop
        // asking (it asked for security.capability before every first write of a file);
        // callers still see EOPNOTSUPP.
        reply.error(self.answered(FuseOp::Getxattr, Errno::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(self.answered(FuseOp::Listxattr, Errno::ENOSYS));
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctls, as on a plain file of most filesystems. Python's open() asks every
        // file whether it is a terminal (TCGETS): the default answer logged a warning per
        // open, 10,000 lines for one epoch of a data loader.
        reply.error(self.answered(FuseOp::Ioctl, Errno::ENOTTY));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // Object stores have no hard links.
        reply.error(self.answered(FuseOp::Link, Errno::EPERM));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(FuseOp::Opendir, move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(FuseOp::Readdir, move |fs| async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.spawn(FuseOp::Readdirplus, move |fs| async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    let ttl = fs.attr_ttl();
                    for e in entries {
                        let Ok((attr, settled)) = fs.listed_attr(e.ino) else {
                            continue;
                        };
                        // Defaults until its metadata is read: the kernel asks before use.
                        let ttl = if settled { ttl } else { Duration::ZERO };
                        if reply.add(
                            INodeNo(e.ino),
                            e.next_offset,
                            &e.name,
                            &ttl,
                            &file_attr(&attr),
                            Generation(0),
                        ) {
                            break;
                        }
                        // The kernel now holds a reference to every entry but . and ..
                        if e.name != "." && e.name != ".." {
                            fs.note_lookup(e.ino);
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let started = Instant::now();
        self.fs.releasedir(fh.0);
        reply.ok();
        self.metrics.fuse_done(FuseOp::Releasedir, started.elapsed(), 0);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let started = Instant::now();
        let s = self.fs.statfs();
        self.metrics.fuse_done(FuseOp::Statfs, started.elapsed(), 0);
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.free_blocks,
            s.files,
            s.free_files,
            s.block_size,
            255,
            s.block_size,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{file_attr, run_from_here};
    use crate::fs::{Attr, Defaults, Kind};
    use std::sync::mpsc;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_file_being_written_asks_for_large_writes_and_one_with_data_for_modest_reads() {
        let d = Defaults {
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            keep_special_modes: false,
        };
        let attr = |size| file_attr(&Attr::new(2, Kind::File, size, SystemTime::UNIX_EPOCH, &d));
        assert_eq!(attr(0).blksize, 1 << 20);
        assert_eq!(attr(1).blksize, 128 << 10);
        assert_eq!(attr(1_024_000).blksize, 128 << 10);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_task_that_never_waits_finishes_on_the_calling_thread() {
        let rt = runtime();
        let (tx, rx) = mpsc::channel();
        run_from_here(
            rt.handle(),
            async move { tx.send(std::thread::current().id()).unwrap() },
        );
        // Already sent when the call returns, and from this thread.
        assert_eq!(rx.try_recv(), Ok(std::thread::current().id()));
    }

    #[test]
    fn a_task_that_waits_is_finished_by_the_runtime() {
        let rt = runtime();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = mpsc::channel();
        run_from_here(rt.handle(), async move {
            let value = go_rx.await.unwrap();
            // A timer needs the runtime's driver: the task really runs there now.
            tokio::time::sleep(Duration::from_millis(1)).await;
            done_tx.send((value, std::thread::current().id())).unwrap();
        });
        assert!(done_rx.try_recv().is_err(), "cannot finish before it is woken");
        go_tx.send(7).unwrap();
        let (value, thread) = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(value, 7);
        assert_ne!(thread, std::thread::current().id());
    }

    #[test]
    fn a_panicking_task_does_not_take_the_calling_thread_down() {
        let rt = runtime();
        run_from_here(rt.handle(), async { panic!("handler bug") });
        let (tx, rx) = mpsc::channel();
        run_from_here(rt.handle(), async move { tx.send(()).unwrap() });
        assert_eq!(rx.try_recv(), Ok(()));
    }
}
