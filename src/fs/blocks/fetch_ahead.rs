//! Fetches no reader waits for yet: the rest of a file read at random, and a small file
//! fetched before its open (see `small_file_prefetch.rs`).

use super::{BlockCache, GetSlots, ObjectVersion, Slot};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

impl BlockCache {
    /// Fetches every block of a file read at random, in order, a GET at a time per slot
    /// of `gets`. Each GET's blocks are claimed only when it can start: a reader that
    /// wants a block further on claims and fetches it at once instead of waiting for its
    /// turn here. Stops when the file is closed, and after a GET that failed: the reads
    /// that need those blocks ask again, and report the error if it stays.
    ///
    /// Blocks the disk cache holds are passed over: they cost a disk read, not a round
    /// trip, and the reader reads them as it goes. Read back ahead, a file larger than
    /// memory (a model loaded again, after a remount) went from the disk into memory at
    /// full speed, racing the reader for the disk and evicting what it was about to read.
    pub(super) async fn fetch_rest(self: Arc<Self>, object: ObjectVersion, gets: Arc<GetSlots>) {
        let per_request = (self.request_size / self.block_size).max(1);
        let last_block = object.size.div_ceil(self.block_size);
        let failed = Arc::new(AtomicBool::new(false));
        let mut start = 0;
        while start < last_block {
            let end = (start + per_request).min(last_block);
            if self.on_disk_within(&object, start..end) {
                start = end;
                continue;
            }
            let Ok(slot) = gets.slots.clone().acquire_owned().await else {
                return;
            };
            if gets.abandoned.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                return;
            }
            let slots = self.claim_blocks(&object, start..end, end, None, false);
            start = end;
            let failed = failed.clone();
            tokio::spawn(async move {
                for slot in slots {
                    if let Slot::Pending(mut progress) = slot {
                        let outcome = progress.wait_for(|p| p.done.is_some()).await;
                        if outcome.is_ok_and(|p| matches!(p.done, Some(Err(_)))) {
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                }
                drop(slot);
            });
        }
    }

    /// Fetches every block of `object` not held yet, ahead of any read, and waits for
    /// them: true if all arrived (or were held), false if a GET failed (the object
    /// changed, the store refused): the reads that want those blocks ask again.
    pub async fn fetch_object(self: &Arc<Self>, object: &ObjectVersion) -> bool {
        let last = object.size.div_ceil(self.block_size);
        let slots = self.claim_blocks(object, 0..last, last, None, false);
        for slot in slots {
            if let Slot::Pending(mut progress) = slot {
                match progress.wait_for(|p| p.done.is_some()).await {
                    Ok(p) if matches!(p.done, Some(Ok(_))) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Drops `object`'s blocks from memory (the disk cache keeps its copy).
    pub fn drop_from_memory(&self, object: &ObjectVersion) {
        for index in 0..object.size.div_ceil(self.block_size) {
            self.cache.invalidate(&super::BlockKey {
                key: object.key.clone(),
                etag: object.etag.clone(),
                index,
            });
        }
    }

    /// Whether `object` is held locally: every block in memory, or its first on disk (a
    /// look at the indexes only, no disk read, no claim).
    pub fn held(&self, object: &ObjectVersion) -> bool {
        self.in_memory(object)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.holds(&object.key, &object.etag, 0))
    }

    /// Whether the disk cache holds every block of `object`.
    pub fn on_disk(&self, object: &ObjectVersion) -> bool {
        self.on_disk_within(object, 0..object.size.div_ceil(self.block_size))
    }

    /// Whether the disk cache holds the blocks `indexes` of `object`.
    fn on_disk_within(&self, object: &ObjectVersion, mut indexes: std::ops::Range<u64>) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| indexes.all(|index| d.holds(&object.key, &object.etag, index)))
    }

    fn in_memory(&self, object: &ObjectVersion) -> bool {
        (0..object.size.div_ceil(self.block_size)).all(|index| {
            self.cache.contains_key(&super::BlockKey {
                key: object.key.clone(),
                etag: object.etag.clone(),
                index,
            })
        })
    }
}
