//! Namespace changes: create, mkdir, rmdir, unlink, rename, symlink.

use super::attr::{Attr, Kind};
use super::blocks::ObjectVersion;
use super::dirty::FileData;
use super::tree::{DirMtime, Seen};
use super::{Errno, Fs, FsResult, OpenMode, Opened, UploadMode, names};
use crate::provider::Markers;
use crate::store::StoreError;
use crate::store::pagination::Pagination;
use crate::store::{ListRequest, PutOptions};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Who asks, for the owner of what they create.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Directory renames copy this many keys at once.
const RENAME_CONCURRENCY: usize = 16;

/// Objects of at least this many parts are copied in parts, several at once: one
/// CopyObject is one stream on the provider's side (on bench/run's server the rename of a
/// 2 GiB checkpoint took 2.9 s in one piece, 1.5 s in parts), where parts spread over its
/// disks and cores. Below it the extra requests of a multipart upload cost more than they
/// save.
const COPY_IN_PARTS_FROM: u64 = 8;

impl Fs {
    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The key a new entry gets, after the checks every creating call makes.
    fn new_child_key(&self, parent: u64, name: &str, kind: Kind) -> FsResult<String> {
        self.check_writable()?;
        if name.len() > 255 {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        if names::unusable_name(name).is_some() || name.contains('/') {
            return Err(Errno(libc::EINVAL));
        }
        let key = {
            let tree = self.tree();
            let p = tree.get(parent).ok_or(Errno(libc::ENOENT))?;
            if p.attr.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            tree.child_key(parent, name, kind).ok_or(Errno(libc::ENOENT))?
        };
        if key.len() > 1024 {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let file_key = key.trim_end_matches('/');
        if let Some(why) = self.resolved.forbidden_key(file_key) {
            tracing::warn!("cannot create {file_key:?}: the provider forbids this name ({why})");
            return Err(Errno(libc::EINVAL));
        }
        Ok(key)
    }

    /// Adds a node that exists only in the mount so far.
    fn add_local(&self, parent: u64, name: &str, kind: Kind, perm: u32, caller: Caller, size: u64) -> FsResult<u64> {
        let mut tree = self.tree();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let seen = Seen {
            name: name.to_string(),
            kind,
            size,
            mtime: SystemTime::now(),
            etag: None,
        };
        let ino = tree.upsert(parent, &seen, far).ok_or(Errno(libc::ENOENT))?;
        let n = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
        n.local = true;
        n.etag = None;
        n.metadata_loaded = true;
        n.dir_mtime = DirMtime::Settled;
        // The entry goes to the kernel, which then holds a reference.
        n.lookups += 1;
        n.attr.kind = kind;
        n.attr.size = size;
        n.attr.set_mtime(SystemTime::now());
        n.attr.perm = (perm & 0o7777) as u16;
        n.attr.uid = caller.uid;
        n.attr.gid = caller.gid;
        if kind == Kind::Dir {
            n.children.clear();
            n.listed_until = Some(Instant::now() + self.config.metadata_ttl);
        }
        if let Some(p) = tree.get_mut(parent) {
            p.attr.set_mtime(SystemTime::now());
            p.dir_mtime = DirMtime::Settled;
        }
        tree.placed(ino);
        Ok(ino)
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        open: OpenMode,
        caller: Caller,
    ) -> FsResult<(Attr, Opened)> {
        let key = self.new_child_key(parent, name, Kind::File)?;
        self.after_pending_delete(&key).await;
        self.deferred.unhide(&key);
        let ino = self.add_local(parent, name, Kind::File, mode, caller, 0)?;
        let object = ObjectVersion {
            key: Arc::from(key.as_str()),
            etag: Arc::from(""),
            size: 0,
        };
        // A create replaces whatever local data a previous file of this inode left.
        self.handles.remove_data(ino);
        self.file_data(ino, &object, true);
        self.page_pushes.wait_idle(ino).await;
        let opened = self.new_handle(ino, object, OpenMode { write: true, ..open }, false);
        Ok((self.node_attr(ino)?, opened))
    }

    pub async fn mkdir(self: &Arc<Self>, parent: u64, name: &str, mode: u32, caller: Caller) -> FsResult<Attr> {
        let key = self.new_child_key(parent, name, Kind::Dir)?;
        let markers = self.resolved.profile.markers;
        let ino = self.add_local(parent, name, Kind::Dir, mode, caller, 0)?;
        if markers == Markers::Forbidden {
            // Lives in the mount until a file is written into it.
            return self.node_attr(ino);
        }
        if let Some(n) = self.tree().get_mut(ino) {
            n.awaits_marker = true;
        }
        let opts = PutOptions {
            metadata: self.metadata_for(ino),
            ..Default::default()
        };
        if self.config.upload_mode == UploadMode::Background {
            self.put_marker_later(ino, key, opts).await;
            return self.node_attr(ino);
        }
        if let Err(e) = self.store.put(&key, Bytes::new(), &opts).await {
            self.tree().remove_child(parent, name, Instant::now());
            return Err(self.fail("mkdir", &key, e));
        }
        self.marker_is_in(ino, &key);
        self.node_attr(ino)
    }

    /// A deferred delete of `key` lands before anything new is put there (a file, a
    /// symlink, a marker, an upload moved there by a rename).
    pub(super) async fn after_pending_delete(&self, key: &str) {
        if self.deferred.is_hidden(key) {
            self.deferred.wait_idle().await;
        }
    }

    /// Deferred deletes of `dir_key` (a marker) and of every key under it land before
    /// anything is copied there: a directory renamed onto one just removed.
    async fn after_pending_deletes_under(&self, dir_key: &str) {
        if self.deferred.any_hidden_under(dir_key) {
            self.deferred.wait_idle().await;
        }
    }

    /// The directory exists in the bucket now.
    fn marker_is_in(&self, ino: u64, key: &str) {
        let mut tree = self.tree();
        if let Some(n) = tree.get_mut(ino).filter(|n| n.key == key) {
            n.fresh_until = Instant::now() + self.config.metadata_ttl;
            tree.now_in_bucket(ino, self.ttl_from_now());
        }
    }

    /// `UploadMode::Background`: the marker goes out in the background like file uploads
    /// (a `cp -r` of many directories would otherwise wait a round trip per directory).
    /// Until it is in, the directory is local; a failure is logged and counted in status.
    async fn put_marker_later(self: &Arc<Self>, ino: u64, key: String, opts: PutOptions) {
        // The delete of an earlier directory of this name goes first.
        self.after_pending_delete(&key).await;
        self.deferred.marker_on_its_way(&key);
        self.in_background(|this| async move {
            let result = this.store.put(&key, Bytes::new(), &opts).await;
            let put = match result {
                Ok(_) => {
                    this.marker_is_in(ino, &key);
                    true
                }
                Err(e) => {
                    this.fail("mkdir", &key, e);
                    false
                }
            };
            this.deferred.marker_landed(&key);
            put
        })
        .await;
    }

    /// Waits for background marker puts under `dir_key`, so that removing or moving the
    /// directory sees them in the bucket.
    async fn settle_markers(&self, dir_key: &str) {
        if self.deferred.markers_on_their_way_under(dir_key) {
            self.deferred.wait_idle().await;
        }
    }

    /// The child `name` of `parent`, looked up if not cached.
    async fn child(&self, parent: u64, name: &str) -> FsResult<(u64, Attr)> {
        let attr = self.find(parent, name).await?;
        Ok((attr.ino, attr))
    }

    /// Whether the bucket holds anything under `dir_key` other than its marker.
    async fn remote_dir_is_empty(&self, dir_key: &str) -> FsResult<bool> {
        let page = self.first_keys(dir_key, 2).await?;
        let only_hidden = self
            .deferred
            .with_hidden(|hidden| page.objects.iter().all(|o| o.key == dir_key || hidden.contains(&o.key)));
        Ok(only_hidden && page.prefixes.is_empty())
    }

    pub async fn rmdir(self: &Arc<Self>, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let (ino, attr) = self.child(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        let key = self.tree().get(ino).ok_or(Errno(libc::ENOENT))?.key.clone();
        self.settle_markers(&key).await;
        let (local, any_children, local_children, listed) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            // An entry of the mount only (a file not uploaded yet, a directory made here,
            // or one holding such an entry): not empty, whatever the bucket says.
            let local_children = n.children.values().any(|c| tree.holds_local(*c));
            let listed = n.listed_until.is_some_and(|t| t > Instant::now());
            (n.local, !n.children.is_empty(), local_children, listed)
        };
        if local_children {
            return Err(Errno(libc::ENOTEMPTY));
        }
        // A whole listing still within its TTL, every entry of which was removed through
        // the mount: empty without asking the bucket again (`rm -r` lists, unlinks, then
        // removes each directory).
        let known_empty = listed && !any_children;
        // A directory made here is asked about too: another client may have put keys
        // under its name (without markers it lives in the mount only until then).
        if !known_empty {
            if self.deferred.any_hidden_under(&key) {
                // Deferred deletes of its files first: then the bucket shows what is left.
                self.deferred.wait_idle().await;
            }
            if !self.remote_dir_is_empty(&key).await? {
                return Err(Errno(libc::ENOTEMPTY));
            }
        }
        if !local && self.resolved.profile.markers != Markers::Forbidden {
            self.delete_object(&key, None).await?;
        }
        self.tree()
            .remove_child(parent, name, Instant::now() + self.config.metadata_ttl);
        Ok(())
    }

    pub async fn unlink(self: &Arc<Self>, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let (ino, attr) = self.child(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        // Nothing to upload for a file that no longer has a name. An upload already under
        // way finishes first (it holds the data): after it, the file is in the bucket.
        let data = self.handles.data(ino);
        if let Some(d) = data {
            let mut f = d.lock().await;
            self.forget_changes(ino, &mut f).await;
        }
        let (key, local, etag) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.key.clone(), n.local, n.etag.clone())
        };
        // A release racing with this unlink either sees the pending delete or has closed
        // the file already (then it is deleted here): see `Handles::unlinked`.
        let object = (!local).then_some(key.as_str());
        let open = self.handles.unlinked(ino, object, || {
            self.deferred.hide(&key);
        });
        if !open {
            self.handles.remove_data(ino);
            if !local {
                self.delete_object(&key, etag.as_deref()).await?;
            }
        }
        self.tree()
            .remove_child(parent, name, Instant::now() + self.config.metadata_ttl);
        self.blocks.forget_object(&key);
        Ok(())
    }

    /// Deletes now, or, with deferred uploads, in the background like them (hidden from
    /// this mount's listings until done; a failure is logged and counted).
    /// A background delete is journaled first (`Journal::record_delete`): a daemon killed
    /// before it lands has the next mount send it. `etag`: the version deleted, if known.
    async fn delete_object(self: &Arc<Self>, key: &str, etag: Option<&str>) -> FsResult<()> {
        let journaled = match self.config.upload_mode {
            UploadMode::OnClose => None,
            UploadMode::Background => match self.uploader.journal().record_delete(key, etag) {
                Ok(at) => Some(at),
                Err(e) => {
                    tracing::warn!("journal for the delete of {key:?}: {e}; deleting it now instead");
                    None
                }
            },
        };
        let Some(at) = journaled else {
            return self.store.delete(key).await.map_err(|e| self.fail("delete", key, e));
        };
        self.deferred.hide(key);
        let key = key.to_string();
        self.in_background(|this| async move {
            let deleted = match this.store.delete(&key).await {
                Ok(()) => {
                    this.uploader.journal().deleted(at);
                    true
                }
                Err(e) => {
                    // The record stays: the next mount sends it again.
                    this.fail("delete", &key, e);
                    false
                }
            };
            this.deferred.unhide(&key);
            deleted
        })
        .await;
        Ok(())
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str, caller: Caller) -> FsResult<Attr> {
        let key = self.new_child_key(parent, name, Kind::Symlink)?;
        if !self.resolved.profile.user_metadata {
            tracing::warn!("cannot create symlink {key:?}: the provider keeps no user metadata to mark it");
            return Err(Errno(libc::EPERM));
        }
        self.after_pending_delete(&key).await;
        let ino = self.add_local(parent, name, Kind::Symlink, 0o777, caller, target.len() as u64)?;
        let opts = PutOptions {
            metadata: self.metadata_for(ino),
            ..Default::default()
        };
        match self.store.put(&key, Bytes::from(target.to_string()), &opts).await {
            Ok(etag) => {
                let mut tree = self.tree();
                if let Some(n) = tree.get_mut(ino) {
                    n.written_here(etag);
                    n.fresh_until = Instant::now() + self.config.metadata_ttl;
                }
                tree.now_in_bucket(ino, self.ttl_from_now());
                drop(tree);
                self.node_attr(ino)
            }
            Err(e) => {
                self.tree().remove_child(parent, name, Instant::now());
                Err(self.fail("symlink", &key, e))
            }
        }
    }

    pub async fn rename(
        self: &Arc<Self>,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let (ino, attr) = self.child(parent, name).await?;
        let new_key = self.new_child_key(new_parent, new_name, attr.kind)?;
        let target = match self.child(new_parent, new_name).await {
            Ok((t, t_attr)) => Some((t, t_attr)),
            Err(Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        if let Some((t, t_attr)) = target {
            if t == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno(libc::EEXIST));
            }
            match (attr.kind == Kind::Dir, t_attr.kind == Kind::Dir) {
                (true, false) => return Err(Errno(libc::ENOTDIR)),
                (false, true) => return Err(Errno(libc::EISDIR)),
                (true, true) => self.rmdir(new_parent, new_name).await?,
                (false, false) => self.replaced(t).await,
            }
        }
        if attr.kind == Kind::Dir {
            self.rename_dir(ino, &new_key).await?;
        } else {
            self.rename_file(ino, &new_key).await?;
        }
        let mut tree = self.tree();
        tree.move_node(ino, new_parent, new_name).ok_or(Errno(libc::ENOENT))?;
        tree.remember_missing(parent, name, Instant::now() + self.config.metadata_ttl);
        if attr.kind == Kind::Dir {
            // Copies may have new ETags: the next open asks the bucket.
            for d in tree.descendants(ino) {
                if let Some(n) = tree.get_mut(d)
                    && !n.local
                {
                    n.fresh_until = Instant::now();
                    n.etag = None;
                }
            }
        }
        Ok(())
    }

    /// Moves one object: RenameObject where offered, else copy and delete (download and
    /// upload where the provider cannot copy). Returns the new ETag.
    async fn move_object(&self, from: &str, to: &str, size: u64) -> Result<Option<String>, StoreError> {
        match self.store.rename(from, to).await {
            Ok(()) => return Ok(None),
            Err(StoreError::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
        let etag = self.copy_object(from, to, size).await?;
        self.store.delete(from).await?;
        Ok(Some(etag))
    }

    /// Server-side copy. Large objects (and those over the single-copy limit, the PutObject
    /// limit) go through a multipart copy, its parts copied several at once where the
    /// provider offers UploadPartCopy; providers without copy get a download and upload.
    async fn copy_object(&self, from: &str, to: &str, size: u64) -> Result<String, StoreError> {
        let profile = &self.resolved.profile;
        let in_parts = profile.upload_part_copy && size >= COPY_IN_PARTS_FROM * self.resolved.part_size_for(size);
        if size <= profile.max_put_size && !in_parts {
            match self.store.copy(from, to, None).await {
                Err(StoreError::Unsupported(_)) => {}
                other => return other,
            }
        }
        let head = self.store.head(from).await?;
        let base = ObjectVersion {
            key: Arc::from(from),
            etag: Arc::from(head.etag.unwrap_or_default().as_str()),
            size: head.size,
        };
        let mut f = FileData::new(to.to_string(), Some(base), self.handles.dirty_budget().clone());
        f.dirty = true;
        let version = self.uploader.upload(&mut f, &head.metadata).await?;
        Ok(version.etag.to_string())
    }

    /// A file replaced by a rename: its pending changes must not land over the file that
    /// replaces it.
    async fn replaced(&self, ino: u64) {
        let data = self.handles.data(ino);
        if let Some(d) = data {
            let mut f = d.lock().await;
            self.forget_changes(ino, &mut f).await;
        }
    }

    async fn rename_file(self: &Arc<Self>, ino: u64, new_key: &str) -> FsResult<()> {
        if self.retarget_pending(ino, new_key).await? {
            return Ok(());
        }
        // Local changes go out first, under the old name: then one server-side move, once
        // a deferred delete of the new name (a file unlinked just before) has landed, or
        // it would delete the file moved there.
        self.sync_ino(ino).await?;
        self.after_pending_delete(new_key).await;
        let (old_key, local, size) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.key.clone(), n.local, n.attr.size)
        };
        let new_etag = if local {
            None
        } else {
            self.move_object(&old_key, new_key, size)
                .await
                .map_err(|e| self.fail("rename", &old_key, e))?
        };
        if let Some(d) = self.handles.data(ino)
            && let Ok(mut f) = d.try_lock()
        {
            f.key = new_key.to_string();
            if let Some(b) = &mut f.base {
                b.key = Arc::from(new_key);
                if let Some(etag) = &new_etag {
                    b.etag = Arc::from(etag.as_str());
                }
            }
        }
        if let Some(etag) = &new_etag
            && let Some(n) = self.tree().get_mut(ino)
        {
            n.written_here(etag.clone());
        }
        for file in self.handles.files_of(ino) {
            let mut object = file.object.lock();
            object.key = Arc::from(new_key);
            if let Some(etag) = &new_etag {
                object.etag = Arc::from(etag.as_str());
            }
        }
        Ok(())
    }

    /// A file whose changes are still to be uploaded, and need nothing of its old object
    /// (new, or rewritten from empty), moves by changing where that upload goes: no upload
    /// under the old name and copy after it. Its journal record is rewritten first, so a
    /// crash uploads it under the new name; the old name's object, if any, is deleted.
    /// False: the file must be uploaded, then moved (it keeps bytes of its old object, or a
    /// multipart upload to the old name is under way).
    async fn retarget_pending(self: &Arc<Self>, ino: u64, new_key: &str) -> FsResult<bool> {
        let Some(data) = self.handles.data(ino) else {
            return Ok(false);
        };
        let mut f = data.lock().await;
        if !f.dirty || f.streaming.is_some() || !f.independent_of_base() {
            return Ok(false);
        }
        let (old_key, local, old_etag) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.key.clone(), n.local, n.etag.clone())
        };
        let old_key_of_data = std::mem::replace(&mut f.key, new_key.to_string());
        let old_base = f.base.take();
        if f.journal.is_some() {
            let metadata = self.metadata_for(ino);
            if let Err(e) = self.uploader.journal().record(&mut f, &metadata, None) {
                tracing::warn!("journal for {new_key:?}: {e}; uploading under the old name, then moving");
                f.key = old_key_of_data;
                f.base = old_base;
                return Ok(false);
            }
        }
        drop(f);
        if !local {
            self.delete_object(&old_key, old_etag.as_deref()).await?;
        }
        if let Some(n) = self.tree().get_mut(ino) {
            n.local = true;
            n.etag = None;
        }
        for file in self.handles.files_of(ino) {
            file.object.lock().key = Arc::from(new_key);
        }
        Ok(true)
    }

    /// Moves every key under the directory, concurrently (bounded), after uploading the
    /// local changes of files inside it.
    async fn rename_dir(self: &Arc<Self>, ino: u64, new_key: &str) -> FsResult<()> {
        self.after_pending_deletes_under(new_key).await;
        let (old_key, descendants) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            let descendants: Vec<(u64, Option<String>)> = tree
                .descendants(ino)
                .into_iter()
                .map(|d| {
                    // Files not in the bucket yet move with their pending upload.
                    let moved = tree
                        .get(d)
                        .filter(|c| c.local && c.attr.kind == Kind::File)
                        .and_then(|c| c.key.strip_prefix(n.key.as_str()))
                        .map(|rest| format!("{new_key}{rest}"));
                    (d, moved)
                })
                .collect();
            (n.key.clone(), descendants)
        };
        self.settle_markers(&old_key).await;
        let synced: Vec<FsResult<()>> = futures::stream::iter(descendants)
            .map(|(d, moved)| async move {
                if let Some(to) = moved
                    && self.retarget_pending(d, &to).await?
                {
                    return Ok(());
                }
                self.sync_ino(d).await
            })
            .buffer_unordered(RENAME_CONCURRENCY)
            .collect()
            .await;
        synced.into_iter().collect::<FsResult<()>>()?;
        let mut continuation = None;
        let mut pagination = Pagination::default();
        loop {
            self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
            let req = ListRequest {
                prefix: old_key.clone(),
                continuation: continuation.clone(),
                ..Default::default()
            };
            let page = self
                .store
                .list_page(&req)
                .await
                .map_err(|e| self.fail("LIST", &old_key, e))?;
            // A key outside the prefix (a server that ignored it) is not ours to move.
            let jobs: Vec<(String, String, u64)> = page
                .objects
                .iter()
                .filter_map(|o| {
                    let rest = o.key.strip_prefix(old_key.as_str())?;
                    Some((o.key.clone(), format!("{new_key}{rest}"), o.size))
                })
                .collect();
            let moves = futures::stream::iter(jobs)
                .map(|(from, to, size)| async move {
                    self.move_object(&from, &to, size)
                        .await
                        .map_err(|e| self.fail("rename", &from, e))
                })
                .buffer_unordered(RENAME_CONCURRENCY);
            let results: Vec<FsResult<Option<String>>> = moves.collect().await;
            for r in results {
                r?;
            }
            // Listing again from the start would see only what is left; continue instead.
            continuation = pagination
                .next(&old_key, &page)
                .map_err(|e| self.fail("LIST", &old_key, e))?;
            if continuation.is_none() {
                break;
            }
        }
        Ok(())
    }
}
