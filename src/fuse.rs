//! The FUSE adapter: decodes each kernel request, hands it to the filesystem core on the
//! tokio runtime and replies from that task, so a slow S3 call never holds up other
//! requests. No filesystem logic lives here.

use crate::fs::{Attr, Errno as CoreErrno, Fs, Kind};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, Request,
};
use std::ffi::OsStr;
use std::sync::Arc;
use tokio::runtime::Handle;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: Handle,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: Handle) -> FuseAdapter {
        FuseAdapter { fs, rt }
    }

    /// Runs `work` on the runtime with a clone of the core.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fs = self.fs.clone();
        self.rt.spawn(async move { work(fs).await });
    }
}

fn errno(e: CoreErrno) -> Errno {
    Errno::from_i32(e.0)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
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
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ];
        for flag in wanted {
            // An old kernel lacks some: mount anyway, a little slower.
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_readahead(4 << 20).or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_background(256).or_else(|max| config.set_max_background(max));
        let _ = config.set_max_write(1 << 20).or_else(|max| config.set_max_write(max));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match utf8(name) {
            Ok(n) => n,
            Err(_) => return reply.error(Errno::ENOENT),
        };
        self.spawn(move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&fs.attr_ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&fs.attr_ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = (flags.0 & libc::O_ACCMODE) != libc::O_RDONLY;
        self.spawn(move |fs| async move {
            match fs.open(ino.0, write).await {
                Ok(o) => {
                    let flags = if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                    reply.opened(FileHandle(o.fh), flags)
                }
                Err(e) => reply.error(errno(e)),
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
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        });
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
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn(move |fs| async move {
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
        self.spawn(move |fs| async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    let ttl = fs.attr_ttl();
                    for e in entries {
                        let Ok(attr) = fs.cached_attr(e.ino) else { continue };
                        if reply.add(INodeNo(e.ino), e.next_offset, &e.name, &ttl, &file_attr(&attr), Generation(0)) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(s.blocks, s.free_blocks, s.free_blocks, s.files, s.free_files, s.block_size, 255, s.block_size);
    }
}
