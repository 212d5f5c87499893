//! Small files fetched ahead of their opens. A DataLoader's workers, `grep -r`, `tar` and
//! `cp -r` read the small files of a directory one after another, in any order, and each
//! cold open costs a round trip (two after the metadata TTL: a HEAD, then the GET). Once
//! a few small files of one directory have been opened cold, the other small files its
//! listing holds are fetched in the background, a few GETs at once, up to a window of
//! files and a byte budget of fetched-but-not-yet-opened data; each open of one of them
//! slides the window on. A GET that succeeded also confirms the file's ETag (it was sent
//! with If-Match), so the open that follows needs no HEAD either.
//!
//! Only directories whose files are being opened are read ahead, never the bucket by
//! itself, and what a directory was lent comes back once it is left alone for a while.

use super::Fs;
use super::attr::Kind;
use super::blocks::ObjectVersion;
use super::fetch_pacing::FetchPacing;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Files up to this size are read ahead (one GET each).
const SMALL_FILE: u64 = 4 << 20;
/// Distinct files of a directory opened cold before the others are read ahead: one or
/// two opens are a program reading its config; three look like a walk. Once two
/// directories of one parent are walked, the first cold open in a third walks it too (a
/// dataset's directories are read together, each file once).
const TRIGGER: usize = 3;
const SIBLING_WALKS: usize = 2;
/// Files of one directory fetched ahead and not yet opened: the first window, and the
/// largest it grows to (the bytes stay within the budget below). A reader in a random
/// order over 10,000 files of one directory found its next file among 256 ahead seldom:
/// its first epoch over a 40 ms link took 72 s, 46 s with room for 2,048, 25 s for 8,192
/// (15 s in 100 directories of 100 files).
const WINDOW: usize = 32;
const WINDOW_MAX: usize = 8192;
/// Entries of a listing looked at per read-ahead, at most (files already held locally
/// are passed over without a request, but not without a look).
const SCAN: usize = 1024;
/// The most bytes fetched ahead and not yet opened, across the mount, where the disk cache
/// can keep them (an eighth of it at most).
const AHEAD_MAX: u64 = 1 << 30;
/// The least a file fetched ahead counts for in that budget, so that the budget bounds
/// how many files are ahead too (their bookkeeping, their GETs): 16,384 at most in 1 GiB,
/// however small the files and however wide the windows of 1,024 directories.
const CHARGE_MIN: u64 = 64 << 10;
/// Next to the server (`blocks/answer_time.rs`) a reader's own GET costs little more than
/// a read of the cache, and reading far ahead only costs (blocks read back from the disk
/// cache after memory evicted them: 10-30 % slower epochs measured on 2 cores; 650 MB of
/// fresh memory over 1 MB files). There a directory reads `NEAR_WINDOW` files ahead at
/// most, within an eighth of the memory for blocks.
const NEAR_WINDOW: usize = 2;
/// A directory none of whose files was opened for this long gives its window back.
const IDLE: Duration = Duration::from_secs(30);
/// How often idle directories are looked for.
const SWEEP: Duration = Duration::from_secs(1);
/// Directories followed at once; beyond, the idlest is forgotten.
const DIRS: usize = 1024;

/// The files read ahead and what became of them.
#[derive(Default)]
pub struct PrefetchStats {
    /// Files fetched ahead of their open.
    pub fetched: AtomicU64,
    /// Opens that found their file fetched ahead or on its way.
    pub used: AtomicU64,
}

/// Which directories are being read file by file, and what was fetched ahead for them.
#[derive(Default)]
pub(super) struct SmallFilePrefetch {
    dirs: Mutex<Dirs>,
    /// The GETs in flight: a few next to the server, up to 128 over a long link.
    pacing: FetchPacing,
    pub stats: PrefetchStats,
}

#[derive(Default)]
struct Dirs {
    by_ino: HashMap<u64, DirReads>,
    /// Walked directories (`DirReads::walked`) by their parent.
    walks_under: HashMap<u64, usize>,
    /// Bytes fetched (or being fetched) ahead and not opened yet, every directory's.
    ahead_bytes: u64,
    /// When idle directories were last looked for (not at every open: there may be 1,024).
    swept: Option<Instant>,
}

struct DirReads {
    /// The directory's own parent.
    parent: u64,
    /// Its small files are read ahead.
    walked: bool,
    /// Distinct files opened cold, up to `TRIGGER`: then the directory is walked.
    opened: Vec<u64>,
    /// Files fetched ahead and not opened yet, with what each counts for in the budget.
    ahead: HashMap<u64, u64>,
    /// How many files `ahead` may hold: each open that found its file there adds sixteen.
    window: usize,
    /// The name the next candidates follow (the listing is walked once, in name order).
    after: Option<String>,
    last_open: Instant,
}

impl Dirs {
    /// Drops directories left alone for `IDLE`, and the idlest beyond `DIRS`, with what
    /// they were lent.
    fn forget_idle(&mut self, now: Instant) {
        if self.swept.is_some_and(|t| now.duration_since(t) < SWEEP) && self.by_ino.len() < DIRS {
            return;
        }
        self.swept = Some(now);
        let before = self.by_ino.len();
        self.by_ino.retain(|_, d| now.duration_since(d.last_open) < IDLE);
        if self.by_ino.len() >= DIRS
            && let Some(idlest) = self.by_ino.iter().min_by_key(|(_, d)| d.last_open).map(|(ino, _)| *ino)
        {
            self.by_ino.remove(&idlest);
        }
        if self.by_ino.len() != before {
            self.ahead_bytes = self.by_ino.values().flat_map(|d| d.ahead.values()).sum();
            self.walks_under.clear();
            for d in self.by_ino.values().filter(|d| d.walked) {
                *self.walks_under.entry(d.parent).or_default() += 1;
            }
        }
    }

    fn give_back(&mut self, dir: u64, ino: u64) {
        if let Some(size) = self.by_ino.get_mut(&dir).and_then(|d| d.ahead.remove(&ino)) {
            self.ahead_bytes = self.ahead_bytes.saturating_sub(size);
        }
    }
}

impl Fs {
    /// A file opened for reading: counts toward its directory's walk, and reads the
    /// directory's other small files ahead once it is one.
    pub(super) fn note_read_open(self: &Arc<Self>, ino: u64, object: &ObjectVersion) {
        if !self.config.small_file_prefetch || object.size == 0 || object.size > SMALL_FILE {
            return;
        }
        let (dir, up) = {
            let tree = self.tree();
            let Some(dir) = tree.get(ino).filter(|n| !n.local).map(|n| n.parent) else {
                return;
            };
            (dir, tree.get(dir).map_or(0, |d| d.parent))
        };
        let now = Instant::now();
        let read_ahead = {
            let prefetch = &self.small_file_prefetch;
            let mut guard = prefetch.dirs.lock();
            let dirs = &mut *guard;
            dirs.forget_idle(now);
            let d = dirs.by_ino.entry(dir).or_insert_with(|| DirReads {
                parent: up,
                walked: false,
                opened: Vec::new(),
                ahead: HashMap::new(),
                window: WINDOW,
                after: None,
                last_open: now,
            });
            d.last_open = now;
            if let Some(size) = d.ahead.remove(&ino) {
                prefetch.stats.used.fetch_add(1, Ordering::Relaxed);
                dirs.ahead_bytes = dirs.ahead_bytes.saturating_sub(size);
                d.window = (d.window + 16).min(WINDOW_MAX);
                true
            } else if self.blocks.held(object) {
                // Read before (a second epoch): not a sign of a walk that needs the network.
                false
            } else {
                if d.opened.len() < TRIGGER && !d.opened.contains(&ino) {
                    d.opened.push(ino);
                }
                let siblings_walked = dirs.walks_under.get(&up).is_some_and(|n| *n >= SIBLING_WALKS);
                if !d.walked && (d.opened.len() >= TRIGGER || siblings_walked) {
                    d.walked = true;
                    *dirs.walks_under.entry(up).or_default() += 1;
                }
                d.walked
            }
        };
        if read_ahead {
            self.read_dir_ahead(dir);
        }
    }

    /// The last handle of a small file that was read is closed. In a walked directory
    /// each file is read once (a DataLoader's epoch, `tar`, `grep -r`): its blocks leave
    /// memory for the files fetched ahead, which memory would otherwise evict first
    /// (least recently used). Only once the disk cache holds it or has its write queued
    /// (its bytes stay in the kernel's page cache too; next to the server the writes of
    /// the files just read were still queued at their close, and kept 144,000 pages of
    /// fresh memory in a cold epoch over 1 MB files: BENCHMARKS.md item 145).
    pub(super) fn note_read_done(&self, ino: u64, object: &ObjectVersion) {
        if object.size > SMALL_FILE || self.handles.has_data(ino) {
            return;
        }
        let Some(dir) = self.tree().get(ino).map(|n| n.parent) else {
            return;
        };
        let walked = self
            .small_file_prefetch
            .dirs
            .lock()
            .by_ino
            .get(&dir)
            .is_some_and(|d| d.walked);
        if walked && self.blocks.kept_on_disk(object) {
            self.blocks.drop_from_memory(object);
        }
    }

    /// Starts fetches of the next small files of `dir`, as far as its window and the
    /// mount's budget allow.
    fn read_dir_ahead(self: &Arc<Self>, dir: u64) {
        // Bytes fetched ahead and not yet opened, across the mount. Next to the server,
        // an eighth of the memory for blocks. Over a longer link, where the disk
        // cache has room, up to an eighth of it: what memory evicts before its open is
        // read back from disk, and a reader in a random order finds more of its files
        // ahead. Short of room the disk cache refuses writes, so half the memory for
        // blocks (files read leave it: `note_read_done`); an eighth without a disk cache.
        let memory = self.blocks.budget();
        let near = self.blocks.server_is_near();
        let window = |d: &DirReads| if near { d.window.min(NEAR_WINDOW) } else { d.window };
        let budget = match &self.blocks.disk {
            _ if near => memory / 8,
            Some(disk) if disk.has_room(AHEAD_MAX) => (disk.budget() / 8).min(AHEAD_MAX).max(memory / 2),
            Some(_) => memory / 2,
            None => memory / 8,
        };
        let (after, room, bytes_room, opened) = {
            let dirs = self.small_file_prefetch.dirs.lock();
            let Some(d) = dirs.by_ino.get(&dir) else { return };
            (
                d.after.clone(),
                window(d).saturating_sub(d.ahead.len()),
                budget.saturating_sub(dirs.ahead_bytes),
                d.opened.clone(),
            )
        };
        if room == 0 || bytes_room < CHARGE_MIN {
            return;
        }
        let (candidates, scanned_to) = self.next_small_files(dir, after.as_deref(), (room, bytes_room), &opened);
        let mut started = Vec::new();
        {
            let mut dirs = self.small_file_prefetch.dirs.lock();
            let mut ahead_bytes = dirs.ahead_bytes;
            let Some(d) = dirs.by_ino.get_mut(&dir) else { return };
            // Another open may have walked on meanwhile: only forward from where it is.
            if d.after != after {
                return;
            }
            let mut full = false;
            for (name, ino, object) in candidates {
                let charge = object.size.max(CHARGE_MIN);
                if ahead_bytes + charge > budget || d.ahead.len() >= window(d) {
                    full = true;
                    break;
                }
                d.after = Some(name);
                ahead_bytes += charge;
                d.ahead.insert(ino, charge);
                started.push((ino, object));
            }
            // What was looked at and passed over is not looked at again.
            if !full && scanned_to.is_some() {
                d.after = scanned_to;
            }
            dirs.ahead_bytes = ahead_bytes;
        }
        for (ino, object) in started {
            let this = self.clone();
            tokio::spawn(async move { this.fetch_ahead(dir, ino, object).await });
        }
    }

    /// Small files of `dir` in the bucket after the name `after`, in name order, with no
    /// local data, not among `opened` (being read) and not held locally (read already: in
    /// memory or on disk), as many as `room` (files, bytes charged) takes, looking at `SCAN`
    /// entries at most; and the name of the last one looked at and passed or taken. The
    /// look stops at the first file that does not fit: once the budget is the limit, each
    /// open starts a file or two, and a look past them (1,024 names, a cache lookup each)
    /// at every open made the daemon's CPU the bound of a large directory's epoch.
    fn next_small_files(
        &self,
        dir: u64,
        after: Option<&str>,
        (count, bytes): (usize, u64),
        opened: &[u64],
    ) -> (Vec<(String, u64, ObjectVersion)>, Option<String>) {
        let tree = self.tree();
        let Some(d) = tree.get(dir) else {
            return (Vec::new(), None);
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut found = Vec::new();
        let mut charged = 0;
        let mut scanned_to = None;
        for (name, &ino) in d.children.range::<str, _>((from, Bound::Unbounded)).take(SCAN) {
            if found.len() >= count {
                break;
            }
            let wanted = tree.get(ino).and_then(|n| {
                let small = n.attr.kind == Kind::File && n.attr.size > 0 && n.attr.size <= SMALL_FILE;
                if !small || n.local || opened.contains(&ino) || self.handles.has_data(ino) {
                    return None;
                }
                let object = ObjectVersion {
                    key: Arc::from(n.key.as_str()),
                    etag: Arc::from(n.etag.as_deref()?),
                    size: n.attr.size,
                };
                (!self.blocks.held(&object)).then_some(object)
            });
            if let Some(object) = wanted {
                charged += object.size.max(CHARGE_MIN);
                if charged > bytes {
                    break;
                }
                found.push((name.clone(), ino, object));
            }
            scanned_to = Some(name);
        }
        (found, scanned_to.cloned())
    }

    /// One file read ahead. Its metadata is then as fresh as the GET that confirmed its
    /// ETag; a failed fetch (changed or gone since the listing) gives its room back.
    async fn fetch_ahead(self: Arc<Self>, dir: u64, ino: u64, object: ObjectVersion) {
        let Some(slot) = self.small_file_prefetch.pacing.slot().await else {
            return;
        };
        let still_wanted = self
            .small_file_prefetch
            .dirs
            .lock()
            .by_ino
            .get(&dir)
            .is_some_and(|d| d.ahead.contains_key(&ino));
        if !still_wanted {
            return;
        }
        let asked = Instant::now();
        let fetched = self.blocks.fetch_object(&object).await;
        self.small_file_prefetch.pacing.done(slot, asked.elapsed());
        if !fetched {
            self.small_file_prefetch.dirs.lock().give_back(dir, ino);
            // Changed or gone since it was listed, most likely: its open asks the bucket
            // (a HEAD) rather than send a GET for the listed version.
            if let Some(n) = self.tree().get_mut(ino)
                && n.etag.as_deref() == Some(&*object.etag)
            {
                n.fresh_until = Instant::now();
            }
            return;
        }
        self.small_file_prefetch.stats.fetched.fetch_add(1, Ordering::Relaxed);
        let mut tree = self.tree();
        if let Some(n) = tree.get_mut(ino)
            && n.etag.as_deref() == Some(&*object.etag)
            && !n.local
        {
            n.fresh_until = n.fresh_until.max(asked + self.config.metadata_ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CHARGE_MIN;
    use crate::fs::listed_dir_tests::listed;
    use std::time::Duration;

    /// Once the budget is the limit, the look for the next files stops at the first one
    /// that does not fit and the next look starts there: a look past it (up to 1,024 names,
    /// a cache lookup each) at every open made a large directory's epoch CPU-bound.
    #[tokio::test]
    async fn the_look_ahead_stops_where_the_budget_does() {
        let d = listed(2_000, Duration::from_secs(60)).await;
        let (found, scanned_to) = d.fs.next_small_files(d.dir, None, (100, 3 * CHARGE_MIN + 1), &[]);
        let names: Vec<&str> = found.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(names, ["f00000", "f00001", "f00002"]);
        assert_eq!(scanned_to.as_deref(), Some("f00002"));

        let opened = [d.ino("f00003")];
        let (found, scanned_to) = d.fs.next_small_files(d.dir, Some("f00002"), (2, 1 << 30), &opened);
        let names: Vec<&str> = found.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(names, ["f00004", "f00005"], "an opened file is passed over");
        assert_eq!(scanned_to.as_deref(), Some("f00005"));
    }
}
