//! Sends a file's local changes to the bucket: one PutObject for small files, a multipart
//! upload otherwise (parts of unchanged base data copied server-side where the provider
//! offers UploadPartCopy), and parts streamed out while a large file is still written.
//! A failed multipart upload is aborted: a half-written object is never visible.

use super::blocks::{BlockCache, ObjectVersion};
use super::budget::TransferBudget;
use super::dirty::{FileData, Piece};
use super::journal::Journal;
use super::part_gather::PartGather;
use crate::provider::{MIB, Resolved};
use crate::store::{CompletedPart, Metadata, ObjectStore, PutOptions, StoreError, StoreResult};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A multipart upload started while a file is written sequentially, so that close() only
/// sends the tail. Its state changes here only (writes report through `changed_from`).
pub struct Streaming {
    pub upload_id: String,
    part_size: u64,
    /// Parts started so far (numbered 1..=started).
    started: i32,
    tasks: Vec<JoinHandle<StoreResult<CompletedPart>>>,
    /// The staging file's background sync (`sync_staging_later`).
    syncing: Option<JoinHandle<()>>,
    /// One permit per part that may be in flight at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// A write landed in a part already sent, or a part failed: the upload starts over at
    /// close.
    broken: bool,
}

impl Streaming {
    /// Bytes from `offset` on changed: parts already sent from there on are wrong.
    pub fn changed_from(&mut self, offset: u64) {
        if offset < self.started as u64 * self.part_size {
            self.broken = true;
        }
    }
}

/// Flushes a staging file to disk in the background, once at a time, while a large file
/// is written: the journal's flush that makes it durable then has little left to write.
fn sync_staging_later(f: &mut FileData) {
    let Some(file) = f.staging_file() else {
        return;
    };
    let Some(s) = f.streaming.as_mut() else { return };
    if s.syncing.as_ref().is_none_or(|h| h.is_finished()) {
        s.syncing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = file.sync_data() {
                tracing::debug!("background sync of a staging file: {e}");
            }
        }));
    }
}

/// The largest part of a copy in one round (`Uploader::copy_part_size`): at 20 MB/s, a
/// slow provider's server-side copy, 26 s, under the 60 s a request may wait for its answer.
const MAX_COPY_PART: u64 = 512 * MIB;

pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    resolved: Resolved,
    blocks: Arc<BlockCache>,
    /// Memory for upload bodies in flight, shared with reads in flight.
    budget: Arc<TransferBudget>,
    /// Parts of one file sent at once (also while it is still being written).
    parts_in_flight: usize,
    journal: Arc<Journal>,
}

impl Uploader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        resolved: Resolved,
        blocks: Arc<BlockCache>,
        budget: Arc<TransferBudget>,
        journal: Arc<Journal>,
    ) -> Uploader {
        Uploader {
            store,
            resolved,
            blocks,
            budget,
            parts_in_flight: 8,
            journal,
        }
    }

    /// The crash journal: uploads in progress, files waiting for theirs, background deletes.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Objects up to this size go out in one PutObject.
    fn single_put_limit(&self) -> u64 {
        let p = &self.resolved.profile;
        p.preferred_part_size.min(p.max_put_size).max(1)
    }

    fn put_options(&self, metadata: &Metadata) -> PutOptions {
        PutOptions {
            content_type: None,
            metadata: metadata.clone(),
            if_none_match: false,
            if_match: None,
        }
    }

    /// Room in the transfer budget for a body assembled from `range`. Bytes fetched from
    /// the base take their room on the way in (the block cache's fetch): taking it here too
    /// could wait on itself, so a range that needs the base takes none.
    async fn room_for(&self, f: &FileData, range: std::ops::Range<u64>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let local = f.pieces(range.clone()).iter().all(|p| !matches!(p, Piece::Base(_)));
        match local {
            true => Some(self.budget.take(range.end - range.start).await),
            false => None,
        }
    }

    /// Starts a multipart upload and journals its id, so that a crash leaves nothing
    /// behind that the next mount cannot abort.
    async fn start_multipart(&self, f: &mut FileData, metadata: &Metadata) -> StoreResult<String> {
        let upload_id = self.store.create_multipart(&f.key, &self.put_options(metadata)).await?;
        if let Err(e) = self.journal.record(f, metadata, Some(upload_id.clone())) {
            tracing::warn!(
                "journal for {:?}: {e}; a crash now would leave the upload to expire",
                f.key
            );
        }
        Ok(upload_id)
    }

    /// Called after each write: while a new file grows sequentially past whole parts,
    /// those parts are sent in the background. Waits for a part slot (back-pressure). A
    /// failure is not the write's: the whole file is uploaded at close instead.
    pub async fn stream_parts(&self, f: &mut FileData, metadata: &Metadata) {
        if let Err(e) = self.send_whole_parts(f, metadata).await {
            tracing::warn!("streaming upload of {:?}: {e}; will upload at close", f.key);
            if let Some(s) = &mut f.streaming {
                s.broken = true;
            }
            f.stop_gathering();
        }
    }

    async fn send_whole_parts(&self, f: &mut FileData, metadata: &Metadata) -> StoreResult<()> {
        let part_size = self.resolved.part_size_for(0);
        if !f.independent_of_base() || f.size <= self.single_put_limit() {
            return Ok(());
        }
        if f.streaming.as_ref().is_some_and(|s| s.broken) {
            f.stop_gathering();
            return Ok(());
        }
        // Parts gathered in memory take room beside those in flight: only parts that leave
        // most of the budget to them (a huge `--part-size` is read from the staging file).
        if !f.is_gathering() && part_size <= self.budget.bytes() / 4 {
            let next_boundary = f.size.div_ceil(part_size) * part_size;
            f.gather(PartGather::from(next_boundary, part_size, self.budget.clone()));
        }
        loop {
            let started = f.streaming.as_ref().map_or(0, |s| s.started);
            let start = started as u64 * part_size;
            let end = start + part_size;
            if end > f.size || started as u32 >= self.resolved.profile.max_parts {
                return Ok(());
            }
            let whole = f.pieces(start..end).iter().all(|p| matches!(p, Piece::Local(_)));
            if !whole {
                return Ok(());
            }
            if f.streaming.is_none() {
                let upload_id = self.start_multipart(f, metadata).await?;
                f.streaming = Some(Streaming {
                    upload_id,
                    part_size,
                    started: 0,
                    tasks: Vec::new(),
                    slots: Arc::new(tokio::sync::Semaphore::new(self.parts_in_flight)),
                    syncing: None,
                    broken: false,
                });
            }
            // More parts at once than the link needs only add congestion: on a 40 ms link,
            // 16 streams moved a fifth less than 8.
            let slots = f.streaming.as_ref().expect("created above").slots.clone();
            let in_flight = slots.acquire_owned().await.expect("never closed");
            let (body, slot) = match f.take_gathered(start) {
                Some(part) => (part.body, part.room),
                None => {
                    let slot = match self.budget.try_take(end - start) {
                        Some(slot) => slot,
                        None => {
                            // Waiting for room while the gathering holds some could wait
                            // for itself.
                            f.stop_gathering();
                            self.budget.take(end - start).await
                        }
                    };
                    (Bytes::from(f.read_local(start..end)?), slot)
                }
            };
            let s = f.streaming.as_mut().expect("created above");
            s.started += 1;
            let (store, key, id, number) = (self.store.clone(), f.key.clone(), s.upload_id.clone(), s.started);
            s.tasks.push(tokio::spawn(async move {
                let _slots = (slot, in_flight);
                store.upload_part(&key, &id, number, body).await
            }));
            sync_staging_later(f);
        }
    }

    /// Uploads the file's content; returns the new object version. The caller marks the
    /// data clean.
    pub async fn upload(&self, f: &mut FileData, metadata: &Metadata) -> StoreResult<ObjectVersion> {
        if f.size > self.resolved.profile.max_object_size {
            return Err(StoreError::Other(format!(
                "{} bytes is over the provider's object size limit of {}",
                f.size, self.resolved.profile.max_object_size
            )));
        }
        let profile = &self.resolved.profile;
        f.stop_gathering();
        if let Some(s) = f.streaming.take() {
            if !s.broken && f.size <= s.part_size * u64::from(profile.max_parts) {
                return self.finish_streaming(f, s, based_on(f)).await;
            }
            self.abort(&f.key, s).await;
        }
        let etag = if f.size <= self.single_put_limit() {
            let options = PutOptions {
                if_match: based_on(f),
                ..self.put_options(metadata)
            };
            let _room = self.room_for(f, 0..f.size).await;
            let body = Bytes::from(f.read(0..f.size, &self.blocks).await?);
            self.store.put(&f.key, body, &options).await?
        } else {
            self.multipart(f, metadata, based_on(f)).await?
        };
        Ok(ObjectVersion {
            key: Arc::from(f.key.as_str()),
            etag: Arc::from(etag.as_str()),
            size: f.size,
        })
    }

    async fn finish_streaming(
        &self,
        f: &mut FileData,
        mut s: Streaming,
        if_match: Option<String>,
    ) -> StoreResult<ObjectVersion> {
        let tail_start = s.started as u64 * s.part_size;
        let mut tail = None;
        let _room = self.budget.take(f.size.saturating_sub(tail_start)).await;
        if tail_start < f.size || s.started == 0 {
            let body = Bytes::from(f.read_local(tail_start..f.size)?);
            s.started += 1;
            tail = Some((s.started, body));
        }
        let tail_result = match tail {
            Some((number, body)) => self
                .store
                .upload_part(&f.key, &s.upload_id, number, body)
                .await
                .map(Some),
            None => Ok(None),
        };
        let mut parts = Vec::with_capacity(s.tasks.len() + 1);
        let mut failure = tail_result.as_ref().err().cloned();
        for task in s.tasks.drain(..) {
            match task.await {
                Ok(Ok(part)) => parts.push(part),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(StoreError::Other(format!("part upload task: {e}")))),
            }
        }
        if let Some(e) = failure {
            self.abort(&f.key, s).await;
            return Err(e);
        }
        parts.extend(tail_result?);
        parts.sort_by_key(|p| p.number);
        match self
            .store
            .complete_multipart(&f.key, &s.upload_id, &parts, if_match.as_deref())
            .await
        {
            Ok(etag) => Ok(ObjectVersion {
                key: Arc::from(f.key.as_str()),
                etag: Arc::from(etag.as_str()),
                size: f.size,
            }),
            Err(e) => {
                self.abort(&f.key, s).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, key: &str, mut s: Streaming) {
        for task in s.tasks.drain(..) {
            let _ = task.await;
        }
        if let Err(e) = self.store.abort_multipart(key, &s.upload_id).await {
            tracing::warn!("aborting the multipart upload of {key:?}: {e}");
        }
    }

    /// A multipart upload of the whole file: untouched base ranges are copied server-side
    /// where possible, everything else is assembled and sent; parts run concurrently. A
    /// file that is all base (a rename) is copied in one round of larger parts; where the
    /// provider turns part copies down after all, in parts of the usual size, read and sent.
    async fn multipart(&self, f: &mut FileData, metadata: &Metadata, if_match: Option<String>) -> StoreResult<String> {
        if let Some(part_size) = self.copy_part_size(f) {
            match self.multipart_in(f, metadata, if_match.clone(), part_size, true).await {
                Err(StoreError::Unsupported(e)) => {
                    tracing::debug!("{:?} copied in parts of the usual size: {e}", f.key)
                }
                other => return other,
            }
        }
        let part_size = self.resolved.part_size_for(f.size);
        self.multipart_in(f, metadata, if_match, part_size, false).await
    }

    /// The part size of a copy that moves the whole base (a rename): as many parts as go
    /// at once, so the copy takes one round of requests rather than one per
    /// `parts_in_flight` parts (a 2 GiB checkpoint: 128 parts of 16 MiB in 16 rounds, each
    /// a round trip plus the provider's hashing of its part). At most `MAX_COPY_PART`,
    /// which a slow provider still copies well within a request's timeout. `None` where
    /// the usual parts are as large, or the file is not all base.
    fn copy_part_size(&self, f: &FileData) -> Option<u64> {
        let p = &self.resolved.profile;
        if !p.upload_part_copy || f.base.is_none() || !f.is_pure_base(0..f.size) {
            return None;
        }
        let usual = self.resolved.part_size_for(f.size);
        let one_round = f
            .size
            .div_ceil(self.parts_in_flight.max(1) as u64)
            .next_multiple_of(MIB);
        let size = one_round.min(MAX_COPY_PART).min(p.max_part_size);
        (size > usual).then_some(size)
    }

    /// `multipart` with parts of `part_size`. `copy_only`: a part copy the provider turns
    /// down fails the upload (`Unsupported`) instead of being read and sent, as parts
    /// this large would take too much memory.
    async fn multipart_in(
        &self,
        f: &mut FileData,
        metadata: &Metadata,
        if_match: Option<String>,
        part_size: u64,
        copy_only: bool,
    ) -> StoreResult<String> {
        let p = &self.resolved.profile;
        let count = f.size.div_ceil(part_size);
        let upload_id = self.start_multipart(f, metadata).await?;
        let f = &*f;
        // Copies name the base's ETag: a base replaced remotely meanwhile fails the copy
        // rather than mixing its new bytes into ours.
        let copy_from = f.base.as_ref().map(|b| (b.key.to_string(), b.etag.to_string()));
        let results: Vec<StoreResult<CompletedPart>> = futures::stream::iter(0..count)
            .map(|i| {
                let range = i * part_size..((i + 1) * part_size).min(f.size);
                let copy_from = copy_from.clone();
                let upload_id = upload_id.clone();
                async move {
                    let number = i as i32 + 1;
                    let copyable = p.upload_part_copy
                        && f.is_pure_base(range.clone())
                        && (range.end - range.start >= p.min_part_size || range.end == f.size);
                    if let (true, Some((source, etag))) = (copyable, copy_from) {
                        let r = self
                            .store
                            .upload_part_copy(&f.key, &upload_id, number, &source, Some(&etag), range.clone())
                            .await;
                        if copy_only || !matches!(r, Err(StoreError::Unsupported(_))) {
                            return r;
                        }
                    }
                    let _room = self.room_for(f, range.clone()).await;
                    let body = Bytes::from(f.read(range, &self.blocks).await?);
                    self.store.upload_part(&f.key, &upload_id, number, body).await
                }
            })
            .buffered(self.parts_in_flight)
            .collect()
            .await;
        let parts: StoreResult<Vec<CompletedPart>> = results.into_iter().collect();
        let outcome = match parts {
            Ok(parts) => {
                self.store
                    .complete_multipart(&f.key, &upload_id, &parts, if_match.as_deref())
                    .await
            }
            Err(e) => Err(e),
        };
        if outcome.is_err()
            && let Err(e) = self.store.abort_multipart(&f.key, &upload_id).await
        {
            tracing::warn!("aborting the multipart upload of {:?}: {e}", f.key);
        }
        outcome
    }
}

/// The ETag of the object a file's changes were made to, if they are to replace it under
/// the same key: the upload must not silently overwrite another client's newer version.
fn based_on(f: &FileData) -> Option<String> {
    f.base
        .as_ref()
        .filter(|b| *b.key == *f.key && !b.etag.is_empty())
        .map(|b| b.etag.to_string())
}
