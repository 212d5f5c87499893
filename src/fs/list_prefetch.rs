//! Listing prefetch: when a directory is read, the first pages of its subdirectories are
//! listed in the background, a few at once. A tree walk (`find`, `du`, `cp -r` from the
//! mount) then finds each directory's listing ready instead of paying one round trip per
//! directory, one after the other. Only directories the user reads prefetch their
//! children: it never crawls the bucket by itself.

use super::*;
use tokio::sync::watch;

/// Listings prefetched at once.
const CONCURRENT: usize = 16;
/// Prefetches queued at most; subdirectories beyond are listed when they are read.
const QUEUED: usize = 512;
/// Subdirectories after the one being read whose listings are prefetched: a walk that
/// goes past the first QUEUED ones keeps finding its next listings ready.
const SIBLINGS: usize = 32;

pub(super) struct ListPrefetch {
    slots: Arc<tokio::sync::Semaphore>,
    /// Directories queued or being listed. A reader waits for a listing under way rather
    /// than send the same LIST again, but not for one still queued behind others.
    in_flight: Mutex<HashMap<u64, watch::Receiver<Stage>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued,
    Listing,
    Done,
}

impl Default for ListPrefetch {
    fn default() -> Self {
        ListPrefetch {
            slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT)),
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl Fs {
    /// Starts background listings of the subdirectories among `entries` whose listing is
    /// not cached.
    pub(super) fn prefetch_listings(self: &Arc<Self>, entries: &[(String, u64, Kind)]) {
        if !self.config.list_prefetch || self.config.metadata_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        for (_, ino, kind) in entries {
            if *kind != Kind::Dir {
                continue;
            }
            let key = {
                let tree = self.tree();
                match tree.get(*ino) {
                    Some(n) if !n.local && n.listed_until.is_none_or(|t| t <= now) => n.key.clone(),
                    _ => continue,
                }
            };
            let stage = {
                let mut in_flight = self.list_prefetch.in_flight.lock();
                if in_flight.len() >= QUEUED || in_flight.contains_key(ino) {
                    continue;
                }
                let (stage, waiters) = watch::channel(Stage::Queued);
                in_flight.insert(*ino, waiters);
                stage
            };
            let (this, ino) = (self.clone(), *ino);
            tokio::spawn(async move {
                let slot = this.list_prefetch.slots.clone().acquire_owned().await;
                // Read meanwhile by its own readdir: nothing left to do.
                let listed = this
                    .tree()
                    .get(ino)
                    .is_some_and(|n| n.listed_until.is_some_and(|t| t > Instant::now()));
                if slot.is_ok() && !listed {
                    stage.send_replace(Stage::Listing);
                    this.prefetch_listing(ino, &key).await;
                }
                this.list_prefetch.in_flight.lock().remove(&ino);
                stage.send_replace(Stage::Done);
            });
        }
    }

    /// A directory is being read: prefetch the listings of the subdirectories that follow
    /// it in its parent (a tree walk reads them next), beyond the ones its parent's
    /// listing started.
    pub(super) fn prefetch_siblings(self: &Arc<Self>, ino: u64) {
        let next: Vec<(String, u64, Kind)> = {
            let tree = self.tree();
            let Some(node) = tree.get(ino) else { return };
            let Some(parent) = tree.get(node.parent) else { return };
            let after = (std::ops::Bound::Excluded(node.name.clone()), std::ops::Bound::Unbounded);
            parent
                .children
                .range::<String, _>(after)
                // Bounded: a directory of many files and few subdirectories is not
                // scanned to its end on every opendir.
                .take(SIBLINGS * 32)
                .filter_map(|(name, c)| tree.get(*c).map(|n| (name.clone(), *c, n.attr.kind)))
                .filter(|(_, _, kind)| *kind == Kind::Dir)
                .take(SIBLINGS)
                .collect()
        };
        self.prefetch_listings(&next);
    }

    /// One page of `key`'s listing into the cache (a complete one is the whole listing),
    /// with its entries' metadata.
    async fn prefetch_listing(&self, ino: u64, key: &str) {
        if let Err(e) = self.list_with_metadata(ino, key).await {
            // The directory's own readdir will ask again and report the error.
            tracing::debug!("prefetch of the listing of {key:?}: {e}");
        }
    }

    /// Waits for a prefetch of `ino`'s listing under way, if any.
    pub(super) async fn wait_for_prefetch(&self, ino: u64) {
        let waiter = self.list_prefetch.in_flight.lock().get(&ino).cloned();
        if let Some(mut waiter) = waiter.filter(|w| *w.borrow() == Stage::Listing) {
            let _ = waiter.wait_for(|stage| *stage == Stage::Done).await;
        }
    }
}
