//! Writes: the write-back buffer per file, uploads at close/fsync (or in the background),
//! truncation and attribute changes.

use super::*;

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
            mtime: self.mtime.filter(|t| *t != current.mtime),
        }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Fs {
    pub(super) fn staging_dir(&self) -> PathBuf {
        self.journal.staging_dir()
    }

    /// Metadata persisted with an upload of `ino`, where the provider keeps it.
    pub(super) fn metadata_for(&self, ino: u64) -> crate::store::Metadata {
        match (self.resolved.profile.user_metadata, self.tree().get(ino)) {
            (true, Some(n)) => n.attr.to_metadata(),
            _ => crate::store::Metadata::new(),
        }
    }

    fn touch_node(&self, ino: u64, size: u64) {
        if let Some(n) = self.tree().get_mut(ino) {
            n.attr.size = size;
            n.attr.mtime = SystemTime::now();
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        let file = self.handle(fh)?;
        if !file.writable {
            return Err(Errno(libc::EBADF));
        }
        let data = self
            .data
            .lock()
            .get(&file.ino)
            .cloned()
            // Its data went to a conflict copy: the file changed remotely.
            .ok_or(Errno(libc::ESTALE))?;
        let mut f = data.lock().await;
        let offset = if file.append { f.size } else { offset };
        let end = offset.checked_add(bytes.len() as u64).ok_or(Errno(libc::EFBIG))?;
        if end > self.resolved.profile.max_object_size {
            return Err(Errno(libc::EFBIG));
        }
        f.write(offset, bytes, &self.staging_dir()).map_err(|e| {
            tracing::warn!(
                "write to {:?}: staging file under {}: {e}",
                f.key,
                self.staging_dir().display()
            );
            io_errno(&e)
        })?;
        self.touch_node(file.ino, f.size);
        let metadata = self.metadata_for(file.ino);
        if let Err(e) = self.uploader.stream_parts(&mut f, &metadata).await {
            // Not fatal: the whole file is uploaded at close instead.
            tracing::warn!("streaming upload of {:?}: {e}; will upload at close", f.key);
            if let Some(s) = &mut f.streaming {
                s.broken = true;
            }
        }
        Ok(bytes.len() as u32)
    }

    /// close(): uploads the file's changes and reports the upload's error, unless uploads
    /// are deferred (`upload_on_close = false`).
    pub async fn flush(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        if !file.writable {
            return Ok(());
        }
        if self.config.upload_on_close {
            return self.sync_ino(file.ino).await;
        }
        self.in_background(|this| async move {
            let uploaded = this.sync_ino(file.ino).await.is_ok();
            this.drop_clean_data(file.ino).await;
            uploaded
        })
        .await;
        Ok(())
    }

    /// Drops local data of an inode nobody has open any more, once it is clean. The open
    /// count is checked under its lock at the moment of removal: an open racing with the
    /// last release keeps the data.
    pub(super) async fn drop_clean_data(&self, ino: u64) {
        let Some(data) = self.data.lock().get(&ino).cloned() else {
            return;
        };
        let f = data.lock().await;
        let counts = self.open_counts.lock();
        if !f.dirty && !counts.contains_key(&ino) {
            self.data.lock().remove(&ino);
        }
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        self.sync_ino(file.ino).await
    }

    /// Uploads `ino`'s local changes, if any, and points the inode at the new object.
    pub async fn sync_ino(&self, ino: u64) -> FsResult<()> {
        let Some(data) = self.data.lock().get(&ino).cloned() else {
            return Ok(());
        };
        let mut f = data.lock().await;
        if !f.dirty {
            return Ok(());
        }
        let metadata = self.metadata_for(ino);
        // Durable before the upload starts: a crash from here on is recovered at the next
        // mount with the same cache directory.
        let upload_id = f.streaming.as_ref().map(|s| s.upload_id.clone());
        if let Err(e) = self.journal.record(&mut f, &metadata, upload_id) {
            tracing::warn!("journal for {:?} under {}: {e}", f.key, self.config.cache_dir.display());
            return Err(io_errno(&e));
        }
        let version = match self.uploader.upload(&mut f, &metadata).await {
            Ok(v) => v,
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => {
                return self.keep_as_conflict(ino, &data, &mut f, &metadata).await;
            }
            Err(e) => return Err(self.fail("upload", &f.key.clone(), e)),
        };
        let staging = f.uploaded(version.clone());
        f.journal = self.journal.uploaded(f.journal.take(), staging);
        let mut tree = self.tree();
        if let Some(n) = tree.get_mut(ino) {
            n.etag = Some(version.etag.to_string());
            n.attr.size = version.size;
            n.metadata_loaded = true;
            n.fresh_until = Instant::now() + self.config.metadata_ttl;
            // The kernel's pages hold exactly what was uploaded.
            n.kernel_cache_etag = Some(version.etag.to_string());
        }
        // Placed even if it was in the bucket before: a listing that started before the
        // upload shows the old version.
        tree.placed(ino);
        tree.now_in_bucket(ino);
        drop(tree);
        for file in self.files.lock().values().filter(|h| h.ino == ino) {
            *file.object.lock() = version.clone();
        }
        Ok(())
    }

    /// Uploads every file with local changes; the first error is returned after all tried.
    pub async fn sync_all(&self) -> FsResult<()> {
        use futures::StreamExt;
        let inos: Vec<u64> = self.data.lock().keys().copied().collect();
        let results: Vec<FsResult<()>> = futures::stream::iter(inos)
            .map(|ino| self.sync_ino(ino))
            .buffer_unordered(BACKGROUND_UPLOADS as usize)
            .collect()
            .await;
        self.background.wait_idle().await;
        results.into_iter().collect()
    }

    /// Bytes and files not yet in the bucket, and background uploads (pending, failed).
    pub fn dirty_report(&self) -> DirtyReport {
        let data: Vec<_> = self.data.lock().values().cloned().collect();
        let (mut files, mut bytes) = (0, 0);
        for d in data {
            if let Ok(f) = d.try_lock()
                && f.dirty
            {
                files += 1;
                bytes += f.size;
            }
        }
        DirtyReport {
            files,
            bytes,
            memory: self.dirty_budget.used(),
            pending_uploads: self.background.pending(),
            failed_uploads: self.background.failed.load(Ordering::Relaxed),
            conflicts: self.stats.conflicts.load(Ordering::Relaxed),
        }
    }

    pub(super) async fn truncate_data(
        &self,
        ino: u64,
        data: &Arc<tokio::sync::Mutex<FileData>>,
        size: u64,
    ) -> FsResult<()> {
        if size > self.resolved.profile.max_object_size {
            return Err(Errno(libc::EFBIG));
        }
        let mut f = data.lock().await;
        let changed = f.size != size;
        f.truncate(size).map_err(|e| io_errno(&e))?;
        drop(f);
        // O_TRUNC of an empty file changes nothing, not even the mtime.
        if changed {
            self.touch_node(ino, size);
        }
        Ok(())
    }

    pub async fn setattr(&self, ino: u64, fh: Option<u64>, change: SetAttr) -> FsResult<Attr> {
        if self.config.read_only {
            return Err(Errno(libc::EROFS));
        }
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
            let object = self.current_version(ino, &key).await?;
            // The size as the mount knows it once revalidated (local data included): the
            // same size is no change.
            if self.node_attr(ino)?.size != size {
                let data = self.file_data(ino, &object, local);
                self.truncate_data(ino, &data, size).await?;
                // A file truncated while not open (`truncate -s`) is uploaded now.
                let open_for_write = fh.is_some_and(|fh| self.handle(fh).is_ok_and(|h| h.writable))
                    || self.files.lock().values().any(|h| h.ino == ino && h.writable);
                if !open_for_write {
                    self.sync_ino(ino).await?;
                    self.drop_clean_data(ino).await;
                }
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
                    n.attr.mtime = mtime;
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
        if !fresh && !local && !self.data.lock().contains_key(&ino) {
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
        let has_dirty_data = match self.data.lock().get(&ino).cloned() {
            Some(d) => d.try_lock().map_or(true, |f| f.dirty),
            None => false,
        };
        if !self.resolved.profile.user_metadata || local || has_dirty_data {
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
            n.etag = Some(etag.clone());
        }
        for file in self.files.lock().values().filter(|h| h.ino == ino) {
            let mut object = file.object.lock();
            object.etag = Arc::from(etag.as_str());
        }
        // Clean data of an open file is based on the new version now (its next upload
        // names it, and is no conflict with this copy).
        let data = self.data.lock().get(&ino).cloned();
        if let Some(data) = data
            && let Some(base) = data.lock().await.base.as_mut().filter(|b| *b.key == *key)
        {
            base.etag = Arc::from(etag.as_str());
        }
        Ok(())
    }
}

impl Fs {
    /// The object changed remotely since the mount last saw it (or is gone): this mount's
    /// version is stored beside it as `NAME.s3vol-conflict-TIMESTAMP` instead of
    /// overwriting it, as crash recovery does. The name then stands for the remote object
    /// again; handles still open on it are stale.
    async fn keep_as_conflict(
        &self,
        ino: u64,
        data: &Arc<tokio::sync::Mutex<FileData>>,
        f: &mut FileData,
        metadata: &crate::store::Metadata,
    ) -> FsResult<()> {
        let conflict = recovery::conflict_key(&f.key);
        let original = std::mem::replace(&mut f.key, conflict);
        let version = match self.uploader.upload(f, metadata).await {
            Ok(version) => version,
            Err(e) => {
                let conflict = std::mem::replace(&mut f.key, original);
                tracing::error!(
                    "{:?} changed remotely since this mount last saw it, and storing this mount's version as {conflict:?} failed: {e}; it stays in the cache directory's journal",
                    f.key
                );
                return Err(Errno(e.errno()));
            }
        };
        let staging = f.uploaded(version);
        f.journal = self.journal.uploaded(f.journal.take(), staging);
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{original:?} changed remotely since this mount last saw it: this mount's version is kept as {:?}",
            f.key
        );
        {
            let mut data_map = self.data.lock();
            if data_map.get(&ino).is_some_and(|d| Arc::ptr_eq(d, data)) {
                data_map.remove(&ino);
            }
        }
        let mut tree = self.tree();
        let parent = tree.get_mut(ino).map(|n| {
            n.fresh_until = Instant::now();
            n.kernel_cache_etag = None;
            n.parent
        });
        if let Some(parent) = parent {
            tree.invalidate_listing(parent);
        }
        drop(tree);
        self.tell_kernel_attrs_changed(ino);
        Ok(())
    }

    /// A directory's mode, owner and mtime are its marker's metadata: the marker is put
    /// again with them (a directory known only from its keys gets a marker now).
    async fn persist_dir_metadata(&self, ino: u64, key: &str) -> FsResult<()> {
        if !self.may_carry_metadata(Kind::Dir) || ino == ROOT_INO {
            return Ok(());
        }
        if self.pending_markers.lock().contains(key) {
            // Its first marker is still on its way (`--upload-on-close false`): this one
            // must land after it.
            self.background.wait_idle().await;
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

#[derive(Debug, Clone, Copy, Default)]
pub struct DirtyReport {
    pub files: u64,
    pub bytes: u64,
    pub memory: u64,
    pub pending_uploads: u64,
    pub failed_uploads: u64,
    pub conflicts: u64,
}
