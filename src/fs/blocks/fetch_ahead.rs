//! Fetches no reader waits for yet: a small file fetched before its open (see
//! `small_file_prefetch.rs`), and what tells whether a file is held already. (The rest of
//! a file read at random: `whole_fetch.rs`.)

use super::{BlockCache, ObjectVersion, Slot};
use std::sync::Arc;

impl BlockCache {
    /// Fetches every block of `object` not held yet, ahead of any read, and waits for
    /// them: true if all arrived (or were held), false if a GET failed (the object
    /// changed, the store refused): the reads that want those blocks ask again.
    pub async fn fetch_object(self: &Arc<Self>, object: &ObjectVersion) -> bool {
        let last = object.size.div_ceil(self.block_size);
        let slots = self.claim_blocks(object, 0..last, last, None, None, false);
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

    /// Whether `object` is held locally: every block in memory, or its first on disk or
    /// on its way there (a look at the indexes only, no disk read, no claim).
    pub fn held(&self, object: &ObjectVersion) -> bool {
        self.in_memory(object)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.keeps(&object.key, &object.etag, 0))
    }

    /// Whether the disk cache holds every block of `object` or has it on its way there.
    pub fn kept_on_disk(&self, object: &ObjectVersion) -> bool {
        self.disk.as_ref().is_some_and(|d| {
            (0..object.size.div_ceil(self.block_size)).all(|index| d.keeps(&object.key, &object.etag, index))
        })
    }

    /// Whether the disk cache holds the blocks `indexes` of `object`.
    pub(super) fn on_disk_within(&self, object: &ObjectVersion, mut indexes: std::ops::Range<u64>) -> bool {
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
