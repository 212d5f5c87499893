//! Listing prefetch: when a directory is read, the first pages of its subdirectories are
//! listed in the background, a few at once. A tree walk (`find`, `du`, `cp -r` from the
//! mount) then finds each directory's listing ready instead of paying one round trip per
//! directory, one after the other. Only directories the user reads prefetch their
//! children, and a directory's siblings only while its parent is read too (a walk of
//! the parent): it never crawls the bucket by itself.
//!
//! A prefetched listing HEADs its entries (their persisted metadata, and which small
//! files are symlinks) only once a walk is going through its parent: it has read two of
//! the parent's subdirectories, or read the parent going through the parent's own
//! parent. An `ls` of a bucket's root, or a look into one directory of it, lists the
//! subdirectories but sends no HEAD for their entries (it sent up to 1,000 for each:
//! 800-1,000 HEADs during bench/run's write over 40 ms, after its `ls` of the root). A
//! directory read later HEADs its own entries then, at full width. A walk stays known
//! while its directory is among the `READ_DIRS` remembered.

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
/// HEADs of prefetched entries in flight at once, ahead of a walk going through them
/// (three quarters of the mount's width: the rest for the walk's own readdirs and
/// lookups). At 8, a tree walk that lists one directory after another outran them and
/// paid a round of HEADs per directory itself (a data-loading epoch of 1,000 files 14.4
/// s, 10.5 s before); over 40 ms, `find` of 10,000 small files in 100 directories took
/// 4.5 s at 64 and 3.3 s at 192.
const PREFETCH_HEADS: usize = 192;
/// Prefetches queued at most; subdirectories beyond are listed when they are read.
const QUEUED: usize = 512;
/// Subdirectories after the one being read whose listings are prefetched: a walk that
/// goes past the first QUEUED ones keeps finding its next listings ready.
const SIBLINGS: usize = 32;
/// Directories remembered as read by a readdir (the most recent ones): a walk is in them.
/// As many parents of walks, and directories HEADed ahead of one, are remembered.
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
    /// Parents a walk went into, by the first of their subdirectories it read.
    walks: Mutex<LruCache<u64, Walk>>,
    /// Directories whose entries were HEADed ahead of a walk (once each).
    headed_ahead: Mutex<LruCache<u64, ()>>,
}

/// A walk in a directory: the first subdirectory it read, and whether it has read another
/// since (it goes through them: `find`, `du`, `ls -R`, `os.walk`).
#[derive(Clone, Copy)]
struct Walk {
    first: u64,
    going: bool,
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
            walks: Mutex::new(LruCache::new(NonZeroUsize::new(READ_DIRS).expect("not zero"))),
            headed_ahead: Mutex::new(LruCache::new(NonZeroUsize::new(READ_DIRS).expect("not zero"))),
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
                // Waiters go on once the listing is in, not after its entries' HEADs, which
                // wait for a walk going through the parent.
                let heads_now = || {
                    let going = this.walk_going_beside(ino);
                    if going {
                        this.list_prefetch.headed_ahead.lock().put(ino, ());
                    }
                    going
                };
                let prefetched = this
                    .list_then_load_metadata(ino, &key, &this.list_prefetch.prefetch_heads, done, heads_now)
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
        let (next, going): (Vec<(String, u64, Kind)>, bool) = {
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
            let going = self.note_walk(node.parent, ino, parent.parent);
            let after = (std::ops::Bound::Excluded(node.name.clone()), std::ops::Bound::Unbounded);
            let next = parent
                .children
                .range::<String, _>(after)
                // Bounded: a directory of many files and few subdirectories is not
                // scanned to its end on every opendir.
                .take(SIBLINGS * 32)
                .filter_map(|(name, c)| tree.get(*c).map(|n| (name.clone(), *c, n.attr.kind)))
                .filter(|(_, _, kind)| *kind == Kind::Dir)
                .take(SIBLINGS)
                .collect();
            (next, going)
        };
        self.prefetch_listings(&next);
        if going {
            self.head_listed_ahead_of_walk(&next);
        }
    }

    /// A walk of `parent` read its subdirectory `dir`: whether it goes through the
    /// parent's subdirectories, having read another one before, or being one that goes
    /// through the parent's own parent (`grand`: `find` reads `a/b` as part of a walk of
    /// `a`), not only a look into one.
    fn note_walk(&self, parent: u64, dir: u64, grand: u64) -> bool {
        let mut walks = self.list_prefetch.walks.lock();
        let inherited = grand != parent && walks.peek(&grand).is_some_and(|w| w.going);
        let walk = walks.get_or_insert_mut(parent, || Walk {
            first: dir,
            going: false,
        });
        walk.going |= inherited || walk.first != dir;
        walk.going
    }

    /// Whether a walk goes through the parent of `dir`, or through the parent's parent
    /// (and reads the parent next): `dir`'s entries are to be HEADed ahead of it.
    fn walk_going_beside(&self, dir: u64) -> bool {
        let (parent, grand) = {
            let tree = self.tree();
            let Some(parent) = tree.get(dir).map(|n| n.parent) else {
                return false;
            };
            (parent, tree.get(parent).map_or(parent, |p| p.parent))
        };
        let walks = self.list_prefetch.walks.lock();
        [parent, grand].iter().any(|d| walks.peek(d).is_some_and(|w| w.going))
    }

    /// HEADs in the background the entries of those of `dirs` already listed, ahead of a
    /// walk going through them, once each (those being listed HEAD theirs when their
    /// listing is in).
    fn head_listed_ahead_of_walk(self: &Arc<Self>, dirs: &[(String, u64, Kind)]) {
        let now = Instant::now();
        for (_, dir, _) in dirs {
            let children: Vec<u64> = {
                let tree = self.tree();
                match tree.get(*dir) {
                    Some(n) if n.listed_until.is_some_and(|t| t > now) => {
                        if self.list_prefetch.headed_ahead.lock().put(*dir, ()).is_some() {
                            continue;
                        }
                        n.children.values().copied().collect()
                    }
                    _ => continue,
                }
            };
            let (this, dir) = (self.clone(), *dir);
            tokio::spawn(async move {
                let share = this.listing_heads_share(dir, &this.list_prefetch.prefetch_heads);
                this.load_metadata_within(&children, share).await;
            });
        }
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
