//! Opening and closing files: handles, the local data a writer works on, catching up
//! with an upload under way, and the last close (the delete of a file unlinked while open).

use super::attr::Kind;
use super::blocks::ObjectVersion;
use super::dirty::FileData;
use super::handles::Released;
use super::readahead::ReadStreams;
use super::{Errno, Fs, FsResult, OpenFile, OpenMode, Opened};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

impl Fs {
    /// Opens a file. Writable opens share one [`FileData`] per inode; `truncate` is O_TRUNC.
    pub async fn open(self: &Arc<Self>, ino: u64, mode: OpenMode) -> FsResult<Opened> {
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
        if !local && !has_data {
            if fresh {
                self.renew_listing_ahead(ino);
            } else {
                self.revalidate_file(ino, &key).await?;
            }
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
        if !(mode.write || mode.truncate || has_data || local) {
            self.note_read_open(ino, &object);
        }
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
            let mut f = FileData::new(object.key.to_string(), base, self.handles.dirty_budget().clone());
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
        } else if last && file.has_read.load(std::sync::atomic::Ordering::Relaxed) {
            let object = file.object.lock().clone();
            self.note_read_done(file.ino, &object);
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
}
