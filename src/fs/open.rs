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
        #[cfg(test)]
        tests::BETWEEN_LOOK_AND_HANDLE.with(|hook| {
            if let Some(f) = hook.borrow().as_ref() {
                f(ino)
            }
        });
        // The handle counts before the data is looked up, so a concurrent last release
        // cannot drop the data this open is about to use.
        let mut opened = self.new_handle(ino, object.clone(), mode, keep_cache);
        self.catch_up_with_upload(ino, opened.fh);
        if !(keep_cache || mode.write || mode.truncate) {
            // The kernel drops the pages it has at this open's answer: none of another
            // version may land after it (`page_push.rs`).
            self.page_pushes.wait_idle(ino).await;
        }
        if !(mode.write || mode.truncate || has_data || local) {
            self.note_read_open(ino, &object);
            // Not a file this mount handed to the kernel's page cache (same version, read
            // through s3vol): read from there, it is faster than from the disk (a 1 GiB
            // re-read on the same mount: 1.5-1.8 GB/s against 0.8-0.9 passed through).
            if !keep_cache {
                opened.whole_file = self.whole_file(opened.fh);
            }
            if opened.whole_file.is_some() {
                // Read from the copy, this open fills no page cache of the inode's.
                if let Some(n) = self.tree().get_mut(ino) {
                    n.kernel_cache_etag = None;
                }
            }
        }
        if mode.write || mode.truncate {
            // The version as of the handle's registration, not `object`: an upload that
            // landed since the look at the tree may have dropped the data (it was clean and
            // no handle was counted yet), and new data based on the older version would
            // make the next upload a false conflict (If-Match on a replaced ETag).
            let current = self.handle(opened.fh).map(|f| f.object.lock().clone())?;
            let data = self.file_data(ino, &current, local);
            // Blocks of the version before on their way into the page cache land before
            // this open's answer, or not at all (`page_push.rs`).
            self.page_pushes.wait_idle(ino).await;
            // The handle counted above keeps the data the inode's: never `Dropped`.
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
        Opened {
            fh,
            keep_cache,
            whole_file: None,
        }
    }

    /// Counts an open the kernel reads from the disk cache's whole copy.
    pub fn passthrough_opened(&self) {
        if let Some(disk) = &self.blocks.disk {
            disk.stats
                .passthrough_opens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The disk cache's whole copy of the version handle `fh` reads, if there is one and
    /// the mount hands such copies to the kernel.
    fn whole_file(&self, fh: u64) -> Option<std::fs::File> {
        let disk = self.blocks.disk.as_ref().filter(|_| self.config.passthrough)?;
        let object = self.handle(fh).ok()?.object.lock().clone();
        disk.whole_file(&object, self.blocks.block_size)
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

#[cfg(test)]
mod tests {
    use crate::fs::listed_dir_tests::mount;
    use crate::fs::writeback::Settle;
    use crate::fs::{OpenMode, ROOT_INO};
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectStore, PutOptions};
    use std::cell::RefCell;
    use std::time::{Duration, Instant};

    /// A test's step inside `open` (given the inode).
    type Hook = Box<dyn Fn(u64)>;

    thread_local! {
        /// Runs in `open` between its look at the tree and the handle's registration.
        pub(super) static BETWEEN_LOOK_AND_HANDLE: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    const REWRITE: OpenMode = OpenMode {
        write: true,
        truncate: true,
        append: false,
    };

    /// An open(O_TRUNC) that looked at the tree while the last rewrite's upload was in
    /// flight, and registered its handle once that upload had landed and dropped the
    /// (clean) data: its new data is based on the version uploaded, so the next upload
    /// replaces it, not a false conflict.
    #[test]
    fn a_rewrite_opened_while_the_last_upload_lands_replaces_what_it_uploaded() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cache = tempfile::tempdir().expect("cache dir");
        let store = std::sync::Arc::new(MemoryStore::new());
        let fs = runtime.block_on(async {
            store
                .put("f", b"round 0".to_vec().into(), &PutOptions::default())
                .await
                .expect("put");
            mount(&store, cache.path(), Duration::from_secs(60), false)
        });
        let rewrite = |bytes: &'static [u8]| {
            let fs = fs.clone();
            async move {
                let ino = fs.lookup(ROOT_INO, "f").await.expect("lookup").ino;
                let fh = fs.open(ino, REWRITE).await.expect("open").fh;
                fs.write(fh, 0, bytes).await.expect("write");
                fs.flush(fh).await.expect("close");
                // The release waits for the data, which an upload in flight holds.
                tokio::spawn(async move { fs.release(fh).await });
                ino
            }
        };
        let puts = store.hold_puts();
        let ino = runtime.block_on(rewrite(b"round 1"));
        // Round 1's upload is in flight. Round 2's open looks at the tree, then lets it
        // land and waits until its data is dropped before registering the handle.
        let landed = {
            let fs = fs.clone();
            move |_| {
                puts.add_permits(1_000);
                let until = Instant::now() + Duration::from_secs(10);
                while fs.handles.has_data(ino) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        BETWEEN_LOOK_AND_HANDLE.with(|hook| *hook.borrow_mut() = Some(Box::new(landed)));
        runtime.block_on(rewrite(b"round 2"));
        BETWEEN_LOOK_AND_HANDLE.with(|hook| *hook.borrow_mut() = None);
        runtime.block_on(fs.sync_all(Settle::Uploaded)).expect("sync");
        assert_eq!(store.keys(), vec!["f".to_string()], "no conflict copy");
        assert_eq!(store.contents("f").as_deref(), Some(&b"round 2"[..]));
    }
}
