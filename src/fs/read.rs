//! Opening files and reading them: through the block cache, or through a file's local
//! data when it has changes; the last close.

use super::attr::Kind;
use super::blocks::{ObjectVersion, Prefetch};
use super::dirty::FileData;
use super::readahead::ReadStreams;
use super::{Errno, Fs, FsResult, OpenFile, OpenMode, Opened, handles};
use crate::store::StoreError;
use bytes::Bytes;
use handles::Released;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Fs {
    /// Opens a file. Writable opens share one [`FileData`] per inode; `truncate` is O_TRUNC.
    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<Opened> {
        if (mode.write || mode.truncate) && self.config.read_only {
            return Err(Errno(libc::EROFS));
        }
        let (key, kind, fresh, local) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (
                n.key.clone(),
                n.attr.kind,
                n.fresh_until > Instant::now() && n.etag.is_some(),
                n.local,
            )
        };
        if kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let has_data = self.handles.has_data(ino);
        if !fresh && !local && !has_data {
            self.refresh_file(ino, &key).await?;
        }
        let (object, keep_cache) = {
            let mut tree = self.tree();
            let n = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
            let etag = n.etag.clone().unwrap_or_default();
            let keep = !has_data && n.kernel_cache_etag.as_deref() == Some(etag.as_str());
            n.kernel_cache_etag = Some(etag.clone());
            let object = ObjectVersion {
                key: Arc::from(key.as_str()),
                etag: Arc::from(etag.as_str()),
                size: n.attr.size,
            };
            (object, keep)
        };
        // The handle counts before the data is looked up, so a concurrent last release
        // cannot drop the data this open is about to use.
        let opened = self.new_handle(ino, object.clone(), mode, keep_cache);
        self.catch_up_with_upload(ino, opened.fh);
        if mode.write || mode.truncate {
            let data = self.file_data(ino, &object, local);
            if mode.truncate
                && let Err(e) = self.truncate_data(ino, &data, 0).await
            {
                self.release(opened.fh).await;
                return Err(e);
            }
            // Linux truncates on O_RDONLY|O_TRUNC too; with no writer to close it, the
            // empty file is uploaded now.
            if !mode.write
                && let Err(e) = self.sync_ino(ino).await
            {
                self.release(opened.fh).await;
                return Err(e);
            }
        }
        Ok(opened)
    }

    /// A background upload that landed between this open's look at the tree and its
    /// handle's registration moved the tree on, and the handles it knew of, not this one:
    /// the handle takes the uploaded version now (else, once the local data is dropped, it
    /// would read the old version's cached blocks up to the new size).
    fn catch_up_with_upload(&self, ino: u64, fh: u64) {
        let Ok(file) = self.handle(fh) else { return };
        let tree = self.tree();
        let Some(n) = tree.get(ino) else { return };
        let etag = n.etag.as_deref().unwrap_or_default();
        let mut object = file.object.lock();
        if *object.etag != *etag {
            object.etag = Arc::from(etag);
            object.size = n.attr.size;
        }
    }

    pub(super) fn new_handle(&self, ino: u64, object: ObjectVersion, mode: OpenMode, keep_cache: bool) -> Opened {
        let readahead = self.handles.read_streams(ino, || {
            ReadStreams::new(
                self.config.initial_prefetch,
                self.max_window(),
                self.blocks.request_size,
            )
        });
        let file = Arc::new(OpenFile {
            ino,
            object: Mutex::new(object),
            readahead,
            writable: mode.write,
            append: mode.append,
            has_read: Default::default(),
        });
        let fh = self.handles.open_file(file);
        Opened { fh, keep_cache }
    }

    /// The inode's local data, created over `object` (or empty for a file that exists
    /// only locally).
    pub(super) fn file_data(
        &self,
        ino: u64,
        object: &ObjectVersion,
        local_only: bool,
    ) -> Arc<tokio::sync::Mutex<FileData>> {
        self.handles.data_or_insert(ino, || {
            let base = (!local_only && !object.etag.is_empty()).then(|| object.clone());
            let mut f = FileData::new(object.key.to_string(), base, self.dirty_budget.clone());
            // A file that exists only here must reach the bucket even if empty.
            f.dirty = local_only;
            f
        })
    }

    /// The prefetch window is capped so that a few sequential readers cannot evict each
    /// other's prefetched blocks before they are read.
    pub(super) fn max_window(&self) -> u64 {
        self.config
            .max_prefetch
            .min(self.config.memory_limit / 8)
            .max(self.config.block_size)
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handles.file(fh).ok_or(Errno(libc::EBADF))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.handle(fh)?;
        let range = offset..offset.saturating_add(u64::from(size));
        let data = self.handles.data(file.ino);
        if let Some(data) = data {
            let f = data.lock().await;
            let key = f.key.clone();
            return f
                .read(range, &self.blocks)
                .await
                .map(Bytes::from)
                .map_err(|e| self.fail("read", &key, e));
        }
        let object = file.object.lock().clone();
        let prefetch = {
            let mut streams = file.readahead.lock();
            let end = streams.on_read(offset, u64::from(size));
            Prefetch {
                end,
                gets: Some(streams.gets.clone()),
                whole_file: streams.turned_random() && self.blocks.may_fetch_whole(object.size),
            }
        };
        let mut result = self.blocks.read(&object, range.clone(), prefetch.clone()).await;
        if result == Err(StoreError::PreconditionFailed) && !file.has_read.load(Ordering::Relaxed) {
            // Changed remotely since the mount last saw it, and this handle has shown
            // nothing of the old version: it reads the new one.
            match self.revalidate(&file).await {
                Ok(object) => result = self.blocks.read(&object, range, prefetch).await,
                Err(e) => return Err(e),
            }
        }
        match result {
            Ok(data) => {
                if !data.is_empty() {
                    file.has_read.store(true, Ordering::Relaxed);
                }
                Ok(data)
            }
            Err(e) => {
                if e == StoreError::PreconditionFailed {
                    // The next open must see the new version.
                    if let Some(n) = self.tree().get_mut(file.ino) {
                        n.fresh_until = Instant::now();
                        n.kernel_cache_etag = None;
                    }
                }
                Err(self.fail("read", &object.key, e))
            }
        }
    }

    /// Points a handle that has read nothing yet at the object's current version, and
    /// tells the kernel its size may have changed.
    async fn revalidate(&self, file: &OpenFile) -> FsResult<ObjectVersion> {
        let key = file.object.lock().key.clone();
        let attr = self.refresh_file(file.ino, &key).await?;
        let etag = {
            let mut tree = self.tree();
            let n = tree.get_mut(file.ino).ok_or(Errno(libc::ENOENT))?;
            n.kernel_cache_etag = n.etag.clone();
            n.etag.clone().unwrap_or_default()
        };
        tracing::info!("{key:?} changed remotely before its first read: reading the new version");
        let object = ObjectVersion {
            key,
            etag: Arc::from(etag.as_str()),
            size: attr.size,
        };
        *file.object.lock() = object.clone();
        self.tell_kernel_attrs_changed(file.ino);
        Ok(object)
    }

    /// The last close of a handle. Clean local data is dropped with the last handle; a file
    /// unlinked while open is deleted from the bucket now.
    pub async fn release(&self, fh: u64) {
        let Some(Released {
            file,
            last,
            pending_delete,
        }) = self.handles.release(fh)
        else {
            return;
        };
        if file.writable {
            self.writer_released();
        }
        if !last {
            return;
        }
        if let Some(key) = pending_delete {
            self.handles.remove_data(file.ino);
            // The name may have been created again since the unlink: then the object is
            // the new file's.
            let recreated = self.tree().has_key(&key);
            if !recreated && let Err(e) = self.store.delete(&key).await {
                self.fail("delete", &key, e);
            }
            self.deferred.unhide(&key);
            return;
        }
        self.drop_clean_data(file.ino).await;
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let key = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            if n.attr.kind != Kind::Symlink {
                return Err(Errno(libc::EINVAL));
            }
            n.key.clone()
        };
        let resp = self
            .store
            .get_range(&key, 0..4096, None)
            .await
            .map_err(|e| self.fail("readlink", &key, e))?;
        resp.collect().await.map_err(|e| self.fail("readlink", &key, e))
    }
}
