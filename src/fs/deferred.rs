//! Work deferred to the background (`UploadMode::Background`): directory markers and
//! deletes sent after the call returned, bounded in flight, and what the rest of the core
//! must see meanwhile: keys being deleted are hidden from listings and lookups, markers
//! on their way are waited for before their directory is changed again. File uploads
//! have their own queue (`writeback.rs`).

use super::Fs;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Deferred markers and deletes in flight at once; the caller waits for a slot beyond it.
const BACKGROUND_REQUESTS: u32 = 64;

pub(super) struct Deferred {
    /// Keys whose objects are being deleted (in the background, or at a last close):
    /// listings leave them out. Sorted, so a directory's are found by their prefix.
    hidden_keys: Mutex<BTreeSet<String>>,
    /// Directory markers being put in the background.
    pending_markers: Mutex<HashSet<String>>,
    /// One permit per request in flight: bounds them, and waiting for all permits is
    /// waiting for them all to finish.
    slots: Arc<tokio::sync::Semaphore>,
    failed: AtomicU64,
}

impl Default for Deferred {
    fn default() -> Self {
        Deferred {
            hidden_keys: Default::default(),
            pending_markers: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_REQUESTS as usize)),
            failed: AtomicU64::new(0),
        }
    }
}

impl Deferred {
    /// `key`'s object is being deleted: hidden until `unhide`.
    pub fn hide(&self, key: &str) {
        self.hidden_keys.lock().insert(key.to_string());
    }

    pub fn unhide(&self, key: &str) {
        self.hidden_keys.lock().remove(key);
    }

    pub fn is_hidden(&self, key: &str) -> bool {
        self.hidden_keys.lock().contains(key)
    }

    /// The hidden keys starting with `prefix`.
    pub fn hidden_under(&self, prefix: &str) -> HashSet<String> {
        starting_with(&self.hidden_keys.lock(), prefix).cloned().collect()
    }

    pub fn any_hidden_under(&self, prefix: &str) -> bool {
        starting_with(&self.hidden_keys.lock(), prefix).next().is_some()
    }

    /// Runs `f` over the hidden keys, as one consistent view.
    pub fn with_hidden<R>(&self, f: impl FnOnce(&BTreeSet<String>) -> R) -> R {
        f(&self.hidden_keys.lock())
    }

    pub fn marker_on_its_way(&self, key: &str) {
        self.pending_markers.lock().insert(key.to_string());
    }

    pub fn marker_landed(&self, key: &str) {
        self.pending_markers.lock().remove(key);
    }

    pub fn is_marker_on_its_way(&self, key: &str) -> bool {
        self.pending_markers.lock().contains(key)
    }

    pub fn markers_on_their_way_under(&self, dir_key: &str) -> bool {
        self.pending_markers.lock().iter().any(|k| k.starts_with(dir_key))
    }

    /// Requests in flight.
    pub fn pending(&self) -> u64 {
        u64::from(BACKGROUND_REQUESTS) - self.slots.available_permits() as u64
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until every deferred request has finished.
    pub async fn wait_idle(&self) {
        let all = self.slots.acquire_many(BACKGROUND_REQUESTS).await;
        drop(all);
    }

    #[cfg(test)]
    pub fn panic_holding_each_lock(&self) {
        super::panic_tests::panic_holding(&self.hidden_keys);
        super::panic_tests::panic_holding(&self.pending_markers);
    }
}

impl Fs {
    /// Runs `work` as a background task once a background slot is free (the caller waits
    /// for one: that is the bound on deferred work). `work` logs its own failure and
    /// returns false; failures are counted for `s3vol status`.
    pub(super) async fn in_background<Fut>(self: &Arc<Self>, work: impl FnOnce(Arc<Fs>) -> Fut)
    where
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let slot = self.deferred.slots.clone().acquire_owned().await.expect("never closed");
        let this = self.clone();
        let work = work(self.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if !work.await {
                this.deferred.failed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// The keys of a sorted set that start with `prefix`, found by range.
fn starting_with<'a>(keys: &'a BTreeSet<String>, prefix: &'a str) -> impl Iterator<Item = &'a String> {
    keys.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |k| k.starts_with(prefix))
}
