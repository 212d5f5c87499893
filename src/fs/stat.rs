//! Attributes: getattr (checked against the bucket once the TTL ran out) and setattr
//! (chmod, chown, utimes, truncate), with the metadata that persists them.

use super::attr::{Attr, Kind};
use super::blocks::ObjectVersion;
use super::tree::{DirMtime, ROOT_INO};
use super::write::Truncated;
use super::{Errno, Fs, FsResult};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Attribute changes of one setattr call.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

impl SetAttr {
    /// The metadata changes that differ from `current`. The size is checked once the
    /// file's version is current (see `setattr`).
    fn without_no_ops(self, current: &Attr) -> SetAttr {
        SetAttr {
            size: self.size,
            mode: self.mode.filter(|m| (m & 0o7777) as u16 != current.perm),
            uid: self.uid.filter(|u| *u != current.uid),
            gid: self.gid.filter(|g| *g != current.gid),
            mtime: self.mtime.filter(|t| *t != current.mtime()),
        }
    }
}

impl Fs {
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let (fresh, key, kind) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.local || n.fresh_until > Instant::now(), n.key.clone(), n.attr.kind)
        };
        // A file with local data (open for writing, or changes not uploaded yet) has the
        // size the mount gave it: the bucket's is older.
        if fresh || kind == Kind::Dir || self.handles.has_data(ino) {
            // Listed, its persisted mode and owner perhaps not read yet (metadata_by_get.rs).
            self.settle_waiting(ino).await?;
            return self.node_attr(ino);
        }
        self.refresh_file(ino, &key).await
    }

    pub async fn setattr(&self, ino: u64, fh: Option<u64>, change: SetAttr) -> FsResult<Attr> {
        if self.config.read_only {
            return Err(Errno(libc::EROFS));
        }
        // Changes are compared with, and persisted over, the file's persisted metadata:
        // read it first if a listing left it to a lookup (metadata_by_get.rs).
        self.settle_waiting(ino).await?;
        let (kind, local, key, current) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.attr.kind, n.local, n.key.clone(), n.attr)
        };
        // A change to what the file already has is no change: no request (a lock file's
        // O_TRUNC of an empty file and fchmod to its mode, many times a second).
        let change = change.without_no_ops(&current);
        if let Some(size) = change.size {
            if kind == Kind::Dir {
                return Err(Errno(libc::EISDIR));
            }
            let mut local = local;
            loop {
                let object = self.current_version(ino, &key).await?;
                // The size as the mount knows it once revalidated (local data included):
                // the same size is no change.
                if self.node_attr(ino)?.size == size {
                    break;
                }
                let data = self.file_data(ino, &object, local);
                // No block of the old content lands in the page cache past this change.
                self.page_pushes.wait_idle(ino).await;
                if self.truncate_data(ino, &data, size).await? == Truncated::Dropped {
                    // The last release of a handle dropped the clean data between its
                    // lookup and the truncate (`truncate` just after `close`): again, on
                    // the version that release left.
                    local = self.tree().get(ino).ok_or(Errno(libc::ENOENT))?.local;
                    continue;
                }
                // A truncate by path (`truncate -s`) is uploaded now; one through a writable
                // handle (ftruncate, O_TRUNC) at that handle's close. Not "unless a handle is
                // open for writing": the kernel sends a handle's release after its `close`
                // returns, so a file just closed may still count as open (the truncate then
                // reached the bucket only later, 1 in 150 times).
                let through_writer = fh.is_some_and(|fh| self.handle(fh).is_ok_and(|h| h.writable));
                if !through_writer {
                    self.sync_ino(ino).await?;
                    self.drop_clean_data(ino).await;
                }
                break;
            }
        }
        let meta_change =
            change.mode.is_some() || change.uid.is_some() || change.gid.is_some() || change.mtime.is_some();
        if meta_change {
            {
                let mut tree = self.tree();
                let n = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
                if let Some(mode) = change.mode {
                    n.attr.perm = (mode & 0o7777) as u16;
                }
                if let Some(uid) = change.uid {
                    n.attr.uid = uid;
                }
                if let Some(gid) = change.gid {
                    n.attr.gid = gid;
                }
                if let Some(mtime) = change.mtime {
                    n.attr.set_mtime(mtime);
                    n.dir_mtime = DirMtime::Settled;
                }
            }
            self.persist_metadata(ino, kind, local, &key).await?;
        }
        self.node_attr(ino)
    }

    /// The object version an inode stands for now (HEAD when the cache is stale).
    async fn current_version(&self, ino: u64, key: &str) -> FsResult<ObjectVersion> {
        let (fresh, local) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.fresh_until > Instant::now() && n.etag.is_some(), n.local)
        };
        if !fresh && !local && !self.handles.has_data(ino) {
            self.refresh_file(ino, key).await?;
        }
        let tree = self.tree();
        let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
        Ok(ObjectVersion {
            key: Arc::from(key),
            etag: Arc::from(n.etag.clone().unwrap_or_default().as_str()),
            size: n.attr.size,
        })
    }

    /// Mode, owner and mtime go with the next upload of a file with local changes, or by
    /// a CopyObject onto itself otherwise; a directory's go into its marker. Providers
    /// without user metadata (and directories without markers) keep them in the mount only.
    async fn persist_metadata(&self, ino: u64, kind: Kind, local: bool, key: &str) -> FsResult<()> {
        if kind == Kind::Dir {
            return self.persist_dir_metadata(ino, key).await;
        }
        let data = self.handles.data(ino);
        if let Some(data) = data {
            // An upload under way may have read the metadata before this change: it ends
            // first, then the question is asked again.
            let mut f = data.lock().await;
            if f.dirty {
                // The coming upload carries the new metadata (and its record, rewritten).
                f.journal_current = false;
                return Ok(());
            }
        }
        let local = self.tree().get(ino).map_or(local, |n| n.local);
        if !self.resolved.profile.user_metadata || local {
            return Ok(());
        }
        let metadata = self.metadata_for(ino);
        let etag = self
            .store
            .copy(key, key, Some(&metadata))
            .await
            .map_err(|e| self.fail("chmod/chown/utimens", key, e))?;
        if let Some(n) = self.tree().get_mut(ino) {
            // Same bytes, new ETag: the kernel's pages stay valid.
            if n.kernel_cache_etag == n.etag {
                n.kernel_cache_etag = Some(etag.clone());
            }
            n.written_here(etag.clone());
        }
        for file in self.handles.files_of(ino) {
            let mut object = file.object.lock();
            object.etag = Arc::from(etag.as_str());
        }
        // Clean data of an open file is based on the new version now (its next upload
        // names it, and is no conflict with this copy).
        let data = self.handles.data(ino);
        if let Some(data) = data
            && let Some(base) = data.lock().await.base.as_mut().filter(|b| *b.key == *key)
        {
            base.etag = Arc::from(etag.as_str());
        }
        Ok(())
    }

    /// A directory's mode, owner and mtime are its marker's metadata: the marker is put
    /// again with them (a directory known only from its keys gets a marker now).
    async fn persist_dir_metadata(&self, ino: u64, key: &str) -> FsResult<()> {
        if !self.may_carry_metadata(Kind::Dir) || ino == ROOT_INO {
            return Ok(());
        }
        if self.deferred.is_marker_on_its_way(key) {
            // Its first marker is still on its way (`--upload-mode background`): this one
            // must land after it.
            self.deferred.wait_idle().await;
        }
        let opts = crate::store::PutOptions {
            metadata: self.metadata_for(ino),
            ..Default::default()
        };
        self.store
            .put(key, Bytes::new(), &opts)
            .await
            .map_err(|e| self.fail("chmod/chown/utimens", key, e))?;
        Ok(())
    }
}
