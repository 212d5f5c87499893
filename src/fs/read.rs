//! Reading files, through the block cache or through a file's local data when it has
//! changes, and reading symlinks.

use super::attr::Kind;
use super::blocks::{ObjectVersion, Prefetch};
use super::{Errno, Fs, FsResult, OpenFile};
use crate::store::StoreError;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Fs {
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
            if streams.turned_random() && self.blocks.may_fetch_whole(object.size) {
                let whole = self.blocks.whole_fetch(&object);
                if let Some(sink) = self.block_sink(file.ino, &object) {
                    whole.hand_blocks_to(sink);
                }
                streams.fetch_whole(whole);
            }
            Prefetch {
                end,
                gets: Some(streams.gets.clone()),
                whole: streams.whole.clone(),
                served: Some(streams.served.clone()),
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
