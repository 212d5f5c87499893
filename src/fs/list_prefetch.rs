//! Listing prefetch: when a directory is read, the first pages of its subdirectories are
//! listed in the background, a few at once. A tree walk (`find`, `du`, `cp -r` from the
//! mount) then finds each directory's listing ready instead of paying one round trip per
//! directory, one after the other. Only directories the user reads prefetch their
//! children, and a directory's siblings only while its parent is read too (a walk of
//! the parent): it never crawls the bucket by itself.

use super::Fs;
use super::attr::Kind;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Listings prefetched at once.
const CONCURRENT: usize = 16;
/// HEADs of prefetched entries in flight at once: a quarter of the default
/// `--max-requests`. An `ls` of the root prefetches the first page of every subdirectory,
/// up to 1,000 HEADs each: at the mount's full width (256) they took the request slots of
/// a model load that followed (1,003 HEADs during a 256 MiB load on bench/run's 40 ms
/// link). At 8, a tree walk that lists one directory after another (`os.walk` of a
/// dataset) outran them and paid a round of HEADs per directory itself (a data-loading
/// epoch of 1,000 files 14.4 s, 10.5 s before); at 64 they stay ahead of it.
const PREFETCH_HEADS: usize = 64;
/// Prefetches queued at most; subdirectories beyond are listed when they are read.
const QUEUED: usize = 512;
/// Subdirectories after the one being read whose listings are prefetched: a walk that
/// goes past the first QUEUED ones keeps finding its next listings ready.
const SIBLINGS: usize = 32;
/// Directories remembered as read by a readdir (the most recent ones): a walk is in them.
const READ_DIRS: usize = 4096;

/// The listings read ahead, and the bounds on the HEADs that listings cause.
pub(super) struct ListPrefetch {
    slots: Arc<tokio::sync::Semaphore>,
    /// HEADs of listed entries in flight across the mount, for readdir and prefetch alike
    /// (see `listed_metadata.rs`).
    pub heads: tokio::sync::Semaphore,
    /// The prefetched listings' share of `heads`.
    prefetch_heads: tokio::sync::Semaphore,
    /// Directories queued or being listed. A reader waits for a listing under way rather
    /// than send the same LIST again, but not for one still queued behind others.
    in_flight: Mutex<HashMap<u64, watch::Receiver<Stage>>>,
    /// Directories a readdir has read lately: the walks under way. A directory read whose
    /// parent is not among them (`os.walk` of `data/`, `ls data/x`) does not list its
    /// siblings: an `os.walk` of a dataset listed, and HEADed, every other directory of
    /// the bucket's root beside it (987 HEADs of a 21,000-request epoch).
    read: Mutex<LruCache<u64, ()>>,
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
            heads: tokio::sync::Semaphore::new(super::listed_metadata::CONCURRENT_HEADS),
            prefetch_heads: tokio::sync::Semaphore::new(PREFETCH_HEADS),
            in_flight: Mutex::new(HashMap::new()),
            read: Mutex::new(LruCache::new(NonZeroUsize::new(READ_DIRS).expect("not zero"))),
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
                let skip = slot.is_err() || listed;
                if !skip {
                    stage.send_replace(Stage::Listing);
                }
                // The listing slot goes with the listing: the HEADs that follow have
                // their own share.
                let done = {
                    let this = this.clone();
                    move || {
                        drop(slot);
                        this.list_prefetch.in_flight.lock().remove(&ino);
                        stage.send_replace(Stage::Done);
                    }
                };
                if skip {
                    return done();
                }
                // Waiters go on once the listing is in, not after its entries' HEADs.
                let prefetched = this
                    .list_then_load_metadata(ino, &key, &this.list_prefetch.prefetch_heads, done)
                    .await;
                if let Err(e) = prefetched {
                    // The directory's own readdir will ask again and report the error.
                    tracing::debug!("prefetch of the listing of {key:?}: {e}");
                }
            });
        }
    }

    /// A directory is being read: if its parent was read too (a tree walk), prefetch the
    /// listings of the subdirectories that follow it there (the walk reads them next),
    /// beyond the ones its parent's listing started.
    pub(super) fn prefetch_siblings(self: &Arc<Self>, ino: u64) {
        let next: Vec<(String, u64, Kind)> = {
            let tree = self.tree();
            let Some(node) = tree.get(ino) else { return };
            let walked = {
                let mut read = self.list_prefetch.read.lock();
                read.put(ino, ());
                node.parent != ino && read.contains(&node.parent)
            };
            if !walked {
                return;
            }
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

    /// Whether a readdir read `ino` lately (a walk is in it).
    pub(super) fn read_lately(&self, ino: u64) -> bool {
        self.list_prefetch.read.lock().contains(&ino)
    }

    /// Waits for a prefetch of `ino`'s listing under way, if any.
    pub(super) async fn wait_for_prefetch(&self, ino: u64) {
        let waiter = self.list_prefetch.in_flight.lock().get(&ino).cloned();
        if let Some(mut waiter) = waiter.filter(|w| *w.borrow() == Stage::Listing) {
            let _ = waiter.wait_for(|stage| *stage == Stage::Done).await;
        }
    }
}
