//! The write path from close() on, in one place: a file's changes are journaled (on local
//! disk, `journal.rs`), uploaded (`upload.rs`), and forgotten once in the bucket, or once
//! the file is deleted or the user discards them.
//!
//! With `UploadMode::Background` (the default) close() returns once the journal record is
//! written (a killed daemon loses nothing; a power loss only what closed within the
//! journal's flush delay, as on a local filesystem), and a queue uploads in the background: bounded in flight, retried with backoff
//! while the store fails transiently, and a refusal (403, a name or size the provider
//! rejects) kept with its data, listed, and returned by the file's next close or fsync.
//! `UploadMode::OnClose` makes close() wait for the upload and return its error.
//! `WriteBack` owns which files are queued, uploading or refused.

use super::dirty::FileData;
use super::{Errno, Fs, FsResult, recovery};
use crate::store::Metadata;
use crate::store::StoreError;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// When close() returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadMode {
    /// Once the changes are journaled on local disk; the upload follows.
    #[default]
    Background,
    /// Once the changes are in the bucket (close returns the upload's error).
    OnClose,
}

/// Uploads the queue runs at once: enough to hide a WAN round trip behind small files.
pub(super) const UPLOADS_IN_FLIGHT: usize = 64;
/// Longest pause between attempts while the store fails transiently.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a write waits for uploads to free staging space before ENOSPC.
const STAGING_WAIT: Duration = Duration::from_secs(30);
/// How long the disk's free space, once read, answers for writes (`staging_room`).
const STAGING_CREDIT_AGE: Duration = Duration::from_secs(1);
/// The most bytes one reading of the free space lets through (others write to the disk
/// too: near the floor it is read again sooner).
const STAGING_CREDIT_MAX: u64 = 256 << 20;

/// How long a queued upload waits for a file's writers to let go of it (see
/// `after_writers_close`).
const WRITER_GRACE: Duration = Duration::from_millis(500);

/// A file's place in the queue.
struct Queued {
    /// The oldest request (close) not yet served.
    ticket: u64,
    /// A later close came while an attempt ran: one more round after it.
    again: Option<u64>,
    /// The clock when an attempt that failed had started (see `Settle::OneAttempt`).
    failed_attempt: u64,
}

/// An upload the store refused for good: kept, with its data, until the file is uploaded
/// after all, deleted or discarded.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub key: String,
    pub reason: String,
    errno: i32,
    /// Returned by a close or fsync already.
    reported: bool,
}

#[derive(Default)]
struct QueueState {
    /// Requests so far (each close queued is one).
    clock: u64,
    queued: HashMap<u64, Queued>,
    refused: HashMap<u64, Refusal>,
}

/// How long a `sync_all` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Until everything queued before it is uploaded or refused (`s3vol sync`).
    Uploaded,
    /// Until each of those has been tried once more (unmount, SIGTERM: what still fails
    /// stays in the journal for the next mount).
    OneAttempt,
}

pub(super) struct WriteBack {
    state: Mutex<QueueState>,
    /// Bumped whenever a queued upload ends or fails: `sync_all` and writes waiting for
    /// staging space look again.
    progress: tokio::sync::watch::Sender<u64>,
    slots: tokio::sync::Semaphore,
    /// Shared by every queued upload: while the store fails, all of them wait.
    backoff: Mutex<(Duration, Instant)>,
    /// Cuts backoff short (`s3vol sync`, unmount).
    retry_now: tokio::sync::Notify,
    /// Data recovered after a crash whose upload failed at mount, queued under inode
    /// numbers counted down from `ADOPTED`: never the tree's.
    adopted: std::sync::atomic::AtomicU64,
    /// A writable handle was released.
    released: tokio::sync::Notify,
    /// Bytes writes may still take without asking the disk again, and since when: a
    /// statvfs per write would cost a syscall on every write.
    staging_credit: Mutex<(Instant, u64)>,
}

/// The first inode number given to adopted data (the tree counts up from 1).
const ADOPTED: u64 = u64::MAX - 1;

impl Default for WriteBack {
    fn default() -> Self {
        WriteBack {
            state: Mutex::new(QueueState::default()),
            progress: tokio::sync::watch::channel(0).0,
            slots: tokio::sync::Semaphore::new(UPLOADS_IN_FLIGHT),
            backoff: Mutex::new((Duration::ZERO, Instant::now())),
            retry_now: tokio::sync::Notify::new(),
            adopted: std::sync::atomic::AtomicU64::new(ADOPTED),
            released: tokio::sync::Notify::new(),
            staging_credit: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl WriteBack {
    fn moved_on(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    /// Queues `ino`; true if no upload task has it yet (the caller starts one).
    fn enqueue(&self, ino: u64) -> bool {
        let mut q = self.state.lock();
        q.clock += 1;
        let ticket = q.clock;
        match q.queued.get_mut(&ino) {
            Some(e) => {
                e.again.get_or_insert(ticket);
                false
            }
            None => {
                q.queued.insert(
                    ino,
                    Queued {
                        ticket,
                        again: None,
                        failed_attempt: 0,
                    },
                );
                true
            }
        }
    }

    fn clock(&self) -> u64 {
        self.state.lock().clock
    }

    /// After a successful attempt: true if another close came meanwhile (one more round).
    fn attempt_done(&self, ino: u64) -> bool {
        let again = {
            let mut q = self.state.lock();
            q.refused.remove(&ino);
            match q.queued.get_mut(&ino) {
                Some(e) if e.again.is_some() => {
                    e.ticket = e.again.take().expect("checked");
                    true
                }
                _ => {
                    q.queued.remove(&ino);
                    false
                }
            }
        };
        *self.backoff.lock() = (Duration::ZERO, Instant::now());
        self.moved_on();
        again
    }

    fn attempt_failed(&self, ino: u64, started_at: u64) {
        if let Some(e) = self.state.lock().queued.get_mut(&ino) {
            e.failed_attempt = started_at;
        }
        let mut backoff = self.backoff.lock();
        backoff.0 = (backoff.0 * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
        backoff.1 = Instant::now() + backoff.0;
        drop(backoff);
        self.moved_on();
    }

    fn refuse(&self, ino: u64, key: &str, reason: String, errno: Errno) {
        {
            let mut q = self.state.lock();
            q.queued.remove(&ino);
            q.refused.insert(
                ino,
                Refusal {
                    key: key.to_string(),
                    reason,
                    errno: errno.0,
                    reported: false,
                },
            );
        }
        self.moved_on();
    }

    /// The store has been failing: waits out the backoff (or a `retry_now`).
    async fn wait_backoff(&self) {
        let until = self.backoff.lock().1;
        if until > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = self.retry_now.notified() => {}
            }
        }
    }

    /// A refusal of `ino` not yet returned to the user: taken as reported.
    fn unreported_refusal(&self, ino: u64) -> Option<Errno> {
        let mut q = self.state.lock();
        let r = q.refused.get_mut(&ino).filter(|r| !r.reported)?;
        r.reported = true;
        Some(Errno(r.errno))
    }

    fn forget(&self, ino: u64) {
        self.state.lock().refused.remove(&ino);
        self.moved_on();
    }

    /// Whether every request up to `ticket` is settled.
    fn settled(&self, ticket: u64, how: Settle) -> bool {
        self.state.lock().queued.values().all(|e| match how {
            Settle::Uploaded => e.ticket > ticket,
            Settle::OneAttempt => e.ticket > ticket || e.failed_attempt > ticket,
        })
    }

    pub(super) fn pending(&self) -> u64 {
        self.state.lock().queued.len() as u64
    }

    /// Uploads holding a slot now.
    fn in_flight(&self) -> u64 {
        (UPLOADS_IN_FLIGHT - self.slots.available_permits()) as u64
    }

    pub(super) fn refusals(&self) -> Vec<Refusal> {
        let mut out: Vec<Refusal> = self.state.lock().refused.values().cloned().collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn refused_count(&self) -> u64 {
        self.state.lock().refused.len() as u64
    }

    fn refused_ino(&self, key: &str) -> Option<u64> {
        let q = self.state.lock();
        q.refused.iter().find(|(_, r)| r.key == key).map(|(ino, _)| *ino)
    }
}

/// Why an upload did not happen.
struct UploadError {
    errno: Errno,
    reason: String,
    /// Worth trying again by itself (the store was unreachable or overloaded).
    transient: bool,
}

impl UploadError {
    fn store(e: StoreError) -> UploadError {
        UploadError {
            errno: Errno(e.errno()),
            reason: e.to_string(),
            transient: e.is_transient(),
        }
    }
}

impl Fs {
    /// close(): with `UploadMode::OnClose` the upload's result; otherwise the changes are
    /// journaled and queued, and a refusal of an earlier upload of the file is returned.
    pub async fn flush(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        if !file.writable {
            return Ok(());
        }
        if self.config.upload_mode == UploadMode::OnClose {
            return self.sync_ino(file.ino).await;
        }
        self.journal_and_queue(file.ino).await?;
        match self.writeback.unreported_refusal(file.ino) {
            Some(errno) => Err(errno),
            None => Ok(()),
        }
    }

    /// fsync(2): the file's changes are in the bucket when it returns.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?;
        self.sync_ino(file.ino).await
    }

    /// Data a crashed run journaled whose upload failed at mount: the queue retries it like
    /// a closed file's.
    pub(super) fn adopt(self: &Arc<Self>, f: FileData) {
        // Shown in the mount (readable, and removable: an unlink drops it) where its name
        // can be placed; else queued under an inode of its own.
        let in_bucket = f.base.as_ref().filter(|b| *b.key == *f.key).map(|b| b.etag.to_string());
        let placed = self
            .tree()
            .place_file(&f.key, f.size, in_bucket.as_deref(), self.ttl_from_now());
        let placed = placed.filter(|ino| !self.handles.has_data(*ino));
        if let (Some(ino), Some(metadata)) = (placed, &f.recovered_metadata)
            && let Some(n) = self.tree().get_mut(ino)
        {
            // Mode, owner and mtime as journaled: the node's carry them from here on.
            n.attr
                .apply_metadata(&f.key, metadata, self.config.defaults.keep_special_modes);
            n.metadata_loaded = true;
        }
        let ino = placed.unwrap_or_else(|| self.writeback.adopted.fetch_sub(1, Ordering::Relaxed));
        self.handles.insert_data(ino, f);
        self.queue_upload(ino);
    }

    /// The metadata an upload of `f` carries: its inode's, or what the journal kept for
    /// adopted data.
    fn upload_metadata(&self, ino: u64, f: &FileData) -> Metadata {
        match &f.recovered_metadata {
            Some(m) if self.tree().get(ino).is_none() => m.clone(),
            _ => self.metadata_for(ino),
        }
    }

    /// Journals `ino`'s changes (safe from a killed daemon once this returns) and queues
    /// their upload. If
    /// they cannot be journaled (the cache directory's disk is full or failing), they are
    /// uploaded now instead, and the caller waits.
    async fn journal_and_queue(self: &Arc<Self>, ino: u64) -> FsResult<()> {
        let Some(data) = self.handles.data(ino) else {
            return Ok(());
        };
        {
            let mut f = data.lock().await;
            if !f.dirty {
                return Ok(());
            }
            let metadata = self.upload_metadata(ino, &f);
            let upload_id = f.streaming.as_ref().map(|s| s.upload_id.clone());
            if let Err(e) = self.uploader.journal().record(&mut f, &metadata, upload_id) {
                tracing::warn!(
                    "journal for {:?} under {}: {e}; uploading it now instead",
                    f.key,
                    self.config.cache_dir.display()
                );
                drop(f);
                return self.sync_ino(ino).await;
            }
        }
        self.queue_upload(ino);
        Ok(())
    }

    fn queue_upload(self: &Arc<Self>, ino: u64) {
        if self.writeback.enqueue(ino) {
            let this = self.clone();
            tokio::spawn(async move { this.upload_in_background(ino).await });
        }
    }

    /// A writable handle was released (a queued upload may be waiting for it).
    pub(super) fn writer_released(&self) {
        self.writeback.released.notify_waiters();
    }

    /// A close of one of several descriptors of a file (a shell's `echo x > f` closes
    /// its first one before writing) queues an upload while the file is still written:
    /// the upload waits, briefly, for the file's writable handles to be released, rather
    /// than have the next write wait for it (the upload holds the file's data).
    async fn after_writers_close(&self, ino: u64) {
        let deadline = Instant::now() + WRITER_GRACE;
        loop {
            let released = self.writeback.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let writing = self.handles.open_for_writing(ino);
            if !writing || Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// The queue's work for one file: attempts until uploaded or refused.
    async fn upload_in_background(self: Arc<Self>, ino: u64) {
        let mut failures = 0u32;
        loop {
            self.after_writers_close(ino).await;
            self.writeback.wait_backoff().await;
            let slot = self.writeback.slots.acquire().await.expect("never closed");
            let started_at = self.writeback.clock();
            let result = self.upload_changes(ino).await;
            drop(slot);
            match result {
                Ok(key) => {
                    if failures > 0 {
                        tracing::info!("uploaded {key:?} after {failures} failed attempts");
                    }
                    if !self.writeback.attempt_done(ino) {
                        break;
                    }
                }
                Err((key, e)) if e.transient => {
                    if failures == 0 {
                        tracing::warn!(
                            "upload of {key:?}: {}; its data is journaled, retrying in the background",
                            e.reason
                        );
                    }
                    failures += 1;
                    self.writeback.attempt_failed(ino, started_at);
                }
                Err((key, e)) => {
                    tracing::error!(
                        "upload of {key:?} refused: {}; its data stays in the cache directory (s3vol status lists it, `s3vol discard PATH` drops it)",
                        e.reason
                    );
                    self.writeback.refuse(ino, &key, e.reason, e.errno);
                    break;
                }
            }
        }
        self.drop_clean_data(ino).await;
    }

    /// Uploads `ino`'s local changes now, if any, and points the inode at the new object.
    pub async fn sync_ino(&self, ino: u64) -> FsResult<()> {
        match self.upload_changes(ino).await {
            Ok(_) => {
                self.writeback.forget(ino);
                Ok(())
            }
            Err((key, e)) => {
                tracing::warn!("upload of {key:?}: {}", e.reason);
                Err(e.errno)
            }
        }
    }

    /// Journal, upload, forget: one file's changes to the bucket. Returns the key (for the
    /// caller's log line) and the error.
    async fn upload_changes(&self, ino: u64) -> Result<String, (String, UploadError)> {
        let Some(data) = self.handles.data(ino) else {
            return Ok(String::new());
        };
        let mut f = data.lock().await;
        if !f.dirty {
            return Ok(f.key.clone());
        }
        let metadata = self.upload_metadata(ino, &f);
        // Durable before the upload starts: a crash from here on is recovered at the next
        // mount with the same cache directory. A journal that cannot be written does not
        // stop the upload: its success makes the data safe all the same.
        if !f.journal_current {
            let upload_id = f.streaming.as_ref().map(|s| s.upload_id.clone());
            if let Err(e) = self.uploader.journal().record(&mut f, &metadata, upload_id) {
                tracing::warn!("journal for {:?} under {}: {e}", f.key, self.config.cache_dir.display());
            }
        }
        // An earlier file of this name (deleted, or replaced by a rename) goes first.
        self.after_pending_delete(&f.key).await;
        let version = match self.uploader.upload(&mut f, &metadata).await {
            Ok(v) => v,
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => {
                let key = f.key.clone();
                return self
                    .keep_as_conflict(ino, &data, &mut f, &metadata)
                    .await
                    .map(|()| key.clone())
                    .map_err(|e| (key, e));
            }
            Err(e) => return Err((f.key.clone(), UploadError::store(e))),
        };
        let staging = f.uploaded(version.clone());
        f.journal = self.uploader.journal().uploaded(f.journal.take(), staging).await;
        let mut tree = self.tree();
        if let Some(n) = tree.get_mut(ino) {
            n.written_here(version.etag.to_string());
            n.attr.size = version.size;
            n.metadata_loaded = true;
            n.fresh_until = Instant::now() + self.config.metadata_ttl;
            // The kernel's pages hold exactly what was uploaded.
            n.kernel_cache_etag = Some(version.etag.to_string());
        }
        // Placed even if it was in the bucket before: a listing that started before the
        // upload shows the old version.
        tree.placed(ino);
        tree.now_in_bucket(ino, self.ttl_from_now());
        drop(tree);
        for file in self.handles.files_of(ino) {
            *file.object.lock() = version.clone();
        }
        Ok(f.key.clone())
    }

    /// The file's changes are not to be uploaded (it was deleted, or its changes were
    /// discarded): clean, no journal record, no refusal. An upload already under way has
    /// finished (the caller holds the data's lock).
    pub(super) async fn forget_changes(&self, ino: u64, f: &mut FileData) {
        f.dirty = false;
        self.uploader.journal().forget(f);
        self.writeback.forget(ino);
    }

    /// Uploads everything written so far: every file with changes is queued (refused ones
    /// too: the cause may be fixed), then this waits as `how` says. Returns EIO if any file
    /// is still not in the bucket.
    pub async fn sync_all(self: &Arc<Self>, how: Settle) -> FsResult<()> {
        let dirty: Vec<u64> = {
            let data = self.handles.all_data();
            let mut out = Vec::new();
            for (ino, d) in data {
                if d.lock().await.dirty {
                    out.push(ino);
                }
            }
            out
        };
        // Journaled first (files still open for writing have no record yet).
        let queued = futures::stream::iter(dirty)
            .map(|ino| self.journal_and_queue(ino))
            .buffer_unordered(UPLOADS_IN_FLIGHT);
        let results: Vec<FsResult<()>> = queued.collect().await;
        let ticket = self.writeback.clock();
        self.writeback.retry_now.notify_waiters();
        let mut progress = self.writeback.progress.subscribe();
        while !self.writeback.settled(ticket, how) {
            // A retry after this wait would not see a notify sent before it began.
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if how == Settle::OneAttempt {
                self.writeback.retry_now.notify_waiters();
            }
        }
        // Deferred markers and deletes too.
        self.deferred.wait_idle().await;
        let refused = self.writeback.refused_count() > 0;
        let unsettled = self.writeback.pending() > 0 && how == Settle::OneAttempt;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None if refused || unsettled => Err(Errno(libc::EIO)),
            None => Ok(()),
        }
    }

    /// The daemon is exiting: uploads are over (what failed stays journaled).
    pub fn close_journal(&self) {
        self.uploader.journal().close();
    }

    /// Uploads the bucket refused for good, with their paths in the mount.
    pub fn upload_refusals(&self) -> Vec<(String, String)> {
        self.writeback
            .refusals()
            .into_iter()
            .map(|r| (self.path_of_key(&r.key), r.reason))
            .collect()
    }

    /// A key's path in the mount.
    fn path_of_key(&self, key: &str) -> String {
        key.strip_prefix(self.resolved.prefix.as_str())
            .unwrap_or(key)
            .to_string()
    }

    /// `s3vol discard PATH`: drops the refused changes of the file at `path` (relative to
    /// the mount). A file that never reached the bucket is gone; one that did shows the
    /// bucket's version again.
    pub async fn discard(&self, path: &str) -> FsResult<()> {
        let key = format!("{}{}", self.resolved.prefix, path.trim_start_matches('/'));
        let ino = self.writeback.refused_ino(&key).ok_or(Errno(libc::ENOENT))?;
        let data = self.handles.data(ino);
        if let Some(data) = data {
            let mut f = data.lock().await;
            self.forget_changes(ino, &mut f).await;
        }
        self.writeback.forget(ino);
        self.handles.remove_data_unless_open(ino);
        let mut tree = self.tree();
        let Some(n) = tree.get_mut(ino) else { return Ok(()) };
        let (local, parent, name) = (n.local, n.parent, n.name.clone());
        n.fresh_until = Instant::now();
        n.kernel_cache_etag = None;
        if local {
            tree.remove_child(parent, &name, Instant::now());
        }
        drop(tree);
        if local {
            self.tell_kernel_entry_gone(parent, name);
        }
        tracing::info!("discarded the refused changes of {key:?}");
        self.tell_kernel_attrs_changed(ino);
        Ok(())
    }

    /// Drops local data of an inode nobody has open any more, once it is clean. The open
    /// count is checked under its lock at the moment of removal: an open racing with the
    /// last release keeps the data.
    pub(super) async fn drop_clean_data(&self, ino: u64) {
        let Some(data) = self.handles.data(ino) else {
            return;
        };
        let f = data.lock().await;
        if !f.dirty {
            self.handles.remove_data_unless_open(ino);
        }
    }

    /// Waits until the cache directory's disk has room for `bytes` more beyond the floor
    /// (`--staging-min-free`), while queued uploads free some; ENOSPC if they do not.
    pub(super) async fn staging_room(&self, bytes: u64) -> FsResult<()> {
        {
            let mut credit = self.writeback.staging_credit.lock();
            if credit.0.elapsed() < STAGING_CREDIT_AGE && credit.1 >= bytes {
                credit.1 -= bytes;
                return Ok(());
            }
        }
        let deadline = Instant::now() + STAGING_WAIT;
        let mut progress = self.writeback.progress.subscribe();
        loop {
            let free = crate::cache_dir::free_bytes(&self.config.cache_dir);
            let room = free.map(|free| free.checked_sub(self.config.staging_min_free.saturating_add(bytes)));
            match room {
                None => return Ok(()),
                Some(Some(room)) => {
                    // Half of what is left above the floor, for the writes to come.
                    *self.writeback.staging_credit.lock() = (Instant::now(), (room / 2).min(STAGING_CREDIT_MAX));
                    return Ok(());
                }
                Some(None) => {}
            }
            if self.writeback.pending() == 0 || Instant::now() >= deadline {
                tracing::warn!(
                    "write refused: {} bytes free on the disk of {}, and --staging-min-free keeps {} (uploads pending: {})",
                    free.unwrap_or(0),
                    self.config.cache_dir.display(),
                    self.config.staging_min_free,
                    self.writeback.pending()
                );
                return Err(Errno(libc::ENOSPC));
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Bytes and files not yet in the bucket, and the upload queue.
    pub fn dirty_report(&self) -> DirtyReport {
        let data: Vec<_> = self.handles.all_data().into_iter().map(|(_, d)| d).collect();
        let (mut files, mut bytes, mut largest) = (0, 0, Vec::new());
        for d in data {
            if let Ok(f) = d.try_lock()
                && f.dirty
            {
                files += 1;
                bytes += f.size;
                largest.push((f.size, f.key.clone()));
            }
        }
        largest.sort_unstable_by(|a, b| b.cmp(a));
        largest.truncate(LARGEST_DIRTY);
        DirtyReport {
            files,
            bytes,
            largest: largest
                .into_iter()
                .map(|(size, key)| (self.path_of_key(&key), size))
                .collect(),
            memory: self.handles.dirty_budget().used(),
            pending_uploads: self.writeback.pending() + self.deferred.pending(),
            uploads_in_flight: self.writeback.in_flight(),
            journal_records: self.uploader.journal().live_records(),
            // Refused files, and markers and deletes that failed in the background.
            failed_uploads: self.writeback.refused_count() + self.deferred.failed(),
            conflicts: self.stats.conflicts.load(Ordering::Relaxed),
        }
    }

    /// The object changed remotely since the mount last saw it (or is gone): this mount's
    /// version is stored beside it as `NAME.s3vol-conflict-TIMESTAMP` instead of
    /// overwriting it, as crash recovery does. The name then stands for the remote object
    /// again; handles still open on it are stale.
    async fn keep_as_conflict(
        &self,
        ino: u64,
        data: &Arc<tokio::sync::Mutex<FileData>>,
        f: &mut FileData,
        metadata: &Metadata,
    ) -> Result<(), UploadError> {
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
                return Err(UploadError::store(e));
            }
        };
        let staging = f.uploaded(version);
        f.journal = self.uploader.journal().uploaded(f.journal.take(), staging).await;
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{original:?} changed remotely since this mount last saw it: this mount's version is kept as {:?}",
            f.key
        );
        self.handles.remove_data_if(ino, data);
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
}

/// Dirty files `dirty_report` names, the largest first.
const LARGEST_DIRTY: usize = 5;

#[derive(Debug, Clone, Default)]
pub struct DirtyReport {
    pub files: u64,
    pub bytes: u64,
    /// The largest dirty files: path in the mount and size.
    pub largest: Vec<(String, u64)>,
    pub memory: u64,
    pub pending_uploads: u64,
    /// Of those, uploads sending now.
    pub uploads_in_flight: u64,
    pub failed_uploads: u64,
    /// Journal records not yet done.
    pub journal_records: u64,
    pub conflicts: u64,
}
