//! A listed file's persisted metadata read by the GET of its data instead of a HEAD.
//!
//! A GET's headers carry the same user metadata (mode, owner, mtime) as a HEAD's. So in a
//! directory of many files (a dataset), the HEADs of the files that cannot be symlinks
//! (over 4,095 bytes) and that one GET fetches whole (one block) wait for a lookup instead
//! of going out with the listing. The lookup GETs the file, and the open's read finds it
//! cached: one request per file read, not two, and a walk that stats no file (`find`,
//! `os.walk`) sends none. Any GET's answer counts, the ones of files fetched ahead of
//! their opens included. The kernel gets such entries from a listing with no TTL, so that
//! it looks them up before using their attributes (`Fs::listed_attr`).
//!
//! A program that stats a directory's entries in listing order (`ls -l`, `du`, `rsync`,
//! `tar`) one after another would then wait for one request per entry: from its first
//! entry looked up right after the directory was read (four in a row anywhere), the rest
//! of the directory is HEADed at once ahead of it, as the listing did, and where the walk
//! read the parent too, the directories beside it.

use super::attr::{Kind, SYMLINK_MAX};
use super::blocks::{ObjectVersion, Prefetch};
use super::listed_metadata::CONCURRENT_HEADS;
use super::tree::Tree;
use super::{Fs, FsResult};
use crate::store::ObjectMeta;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files in one listing page from which their HEADs wait for lookups, over a long link. In
/// a smaller directory there (a source tree's, a package's that Python lists and then
/// stats in import order) the listing's HEADs, all at once, cost less than one lookup's
/// round trip after another. Next to the server a round trip costs little and a HEAD as
/// much CPU as a GET on both sides, so there the files of every listing wait (an epoch
/// over 1,000 files of 1 MB in directories of 10 had sent 1,000 HEADs besides its GETs).
const WAIT_FROM_FILES: usize = 64;
/// Lookups of waiting entries in listing order, one after the next, before the rest of
/// the directory is HEADed. A reader in random order over 100 files makes such a run
/// about once in a million of its lookups.
const IN_ORDER_RUN: u32 = 4;
/// A program that lists a directory and stats its entries (`ls -l`, `ls -lR`, `du`,
/// `rsync`, `tar`) stats the first entry within this of the directory's last readdir,
/// before it reads another directory: from there the rest is swept at once (over a 40 ms
/// link, waiting for a second entry cost two round trips: the first entry's GET, then the
/// second's HEAD). A DataLoader walks every directory before its random reads begin; a
/// random reader meets a directory's first entry, then its second, once per 100
/// directories, and when that run of two swept, most epochs of a 100-directory dataset
/// began a sweep, which after a walk HEADed half of the dataset (3,500-4,000 HEADs).
const JUST_READ: Duration = Duration::from_millis(100);
/// Directories whose lookups are followed at once (least recently looked in forgotten).
const DIRS: usize = 1024;
/// Directories beside one swept in a walk whose entries are HEADed with it (a bound on
/// one sweep's work; those after them are HEADed with their listings, a readdir's wait).
const SWEPT_BESIDE: usize = 1024;

/// Which directories' entries are being looked up in listing order.
pub(super) struct StatOrder {
    dirs: Mutex<lru::LruCache<u64, Run>>,
    /// Directories read by a walk that stats the entries of their subdirectories: the
    /// listings of those are HEADed as before.
    stat_walks: Mutex<lru::LruCache<u64, ()>>,
    /// The HEADs of directories swept ahead of their `ls -l`.
    share: tokio::sync::Semaphore,
    /// The directory a readdir read last.
    last_read: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Run {
    /// When a readdir last read the directory.
    read_at: Option<Instant>,
    /// The run began at the directory's first entry.
    from_first: bool,
    last: String,
    length: u32,
    swept: bool,
    /// The last name the sweeps of the directory took in: one listed since (a program
    /// that stats as it reads, as `ls -l` does, meets the names of later pages after the
    /// sweep) sweeps on from there at its lookup.
    swept_upto: Option<String>,
}

impl Default for StatOrder {
    fn default() -> Self {
        StatOrder {
            dirs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(DIRS).expect("not zero"))),
            stat_walks: Mutex::new(lru::LruCache::new(NonZeroUsize::new(DIRS).expect("not zero"))),
            share: tokio::sync::Semaphore::new(CONCURRENT_HEADS),
            last_read: Mutex::new(None),
        }
    }
}

impl StatOrder {
    fn stat_walk_under(&self, dir: u64) -> bool {
        self.stat_walks.lock().contains(&dir)
    }

    /// `dir`'s entries up to `upto` are being HEADed with a sweep (its own or of the
    /// directory before it).
    fn mark_swept(&self, dir: u64, upto: Option<&String>) {
        let mut dirs = self.dirs.lock();
        let run = dirs.get_or_insert_mut(dir, Run::default);
        run.swept = true;
        if upto > run.swept_upto.as_ref() {
            run.swept_upto = upto.cloned();
        }
    }

    /// Whether a program is stat'ing `dir`'s entries in listing order (its listing's
    /// HEADs go with the pages from then on).
    fn swept(&self, dir: u64) -> bool {
        self.dirs.lock().peek(&dir).is_some_and(|r| r.swept)
    }

    /// A readdir read `dir` (each of its calls: the last one comes just before the stats
    /// of a program that lists, then stats).
    fn note_read(&self, dir: u64, now: Instant) {
        self.dirs.lock().get_or_insert_mut(dir, Run::default).read_at = Some(now);
        *self.last_read.lock() = Some(dir);
    }

    /// `name` in `dir` was looked up before its metadata was read; `before` is the name
    /// listed just before it. Whether the lookups have come in listing order long enough
    /// to sweep the rest of the directory (`Sweep` once, then `Swept`).
    fn note(&self, dir: u64, name: &str, before: Option<&str>, now: Instant) -> Order {
        let read_last = *self.last_read.lock() == Some(dir);
        let mut dirs = self.dirs.lock();
        let run = dirs.get_or_insert_mut(dir, Run::default);
        if run.swept {
            return match &run.swept_upto {
                Some(upto) if name > upto.as_str() => Order::Sweep,
                _ => Order::Swept,
            };
        }
        run.length = match before {
            Some(b) if run.length > 0 && b == run.last => run.length + 1,
            _ => {
                run.from_first = before.is_none();
                1
            }
        };
        run.last = name.to_string();
        let just_read = read_last
            && run
                .read_at
                .is_some_and(|t| now.saturating_duration_since(t) < JUST_READ);
        run.swept = run.length >= IN_ORDER_RUN || (run.from_first && just_read);
        match run.length {
            _ if run.swept => Order::Sweep,
            1 => Order::Scattered,
            _ => Order::Following,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Order {
    /// Not after the name looked up before in the directory (a reader in any order).
    Scattered,
    /// After it, in a run not long enough yet (the start of an `ls -l`, or chance).
    Following,
    /// The run just became long enough, or went past what its sweeps took in: HEAD the
    /// rest of the directory.
    Sweep,
    /// Its rest is being HEADed: a lookup joins its HEAD.
    Swept,
}

impl Fs {
    /// A readdir of `dir` is under way (see [`JUST_READ`]).
    pub(super) fn note_dir_read(&self, dir: u64) {
        self.stat_order.note_read(dir, Instant::now());
    }

    /// Whether a listed entry's HEAD may wait for its lookup: a file no symlink can be,
    /// which one GET fetches whole (a larger one's HEAD would not be saved, only delayed
    /// to its open).
    pub(super) fn metadata_may_wait(&self, kind: Kind, size: u64) -> bool {
        kind == Kind::File && size > SYMLINK_MAX && size <= self.blocks.block_size
    }

    /// Whether the HEADs of a listing of `dir` showing `files` files may wait for their
    /// lookups: not in a small directory over a long link, nor where a walk stats every
    /// entry of the directories beside it (`ls -lR`, `du`: they are HEADed with the
    /// listing then).
    pub(super) fn listing_defers_metadata(&self, tree: &Tree, dir: Option<u64>, files: usize) -> bool {
        (files >= WAIT_FROM_FILES || self.blocks.server_is_near())
            && self.may_carry_metadata(Kind::File)
            // A redirected GET's answer (a CDN's) carries no user metadata.
            && !self.resolved.profile.get_redirects
            && !dir
                .and_then(|d| tree.get(d))
                .is_some_and(|d| self.stat_order.stat_walk_under(d.parent))
            // An `ls -l` under way: the pages it has not reached are HEADed with them.
            && !dir.is_some_and(|d| self.stat_order.swept(d))
    }

    /// The share of HEADs under which a listing of `dir` HEADs its entries: a stat walk's
    /// (`ls -lR`, `du`) for a directory beside one it swept, which the walk will stat
    /// next, whichever share the listing came with (a prefetch's is a quarter of it).
    pub(super) fn listing_heads_share<'a>(
        &'a self,
        dir: u64,
        share: &'a tokio::sync::Semaphore,
    ) -> &'a tokio::sync::Semaphore {
        let parent = self.tree().get(dir).map(|d| d.parent);
        match parent {
            Some(p) if p != dir && self.stat_order.stat_walk_under(p) => &self.stat_order.share,
            _ => share,
        }
    }

    /// Whether the kernel may keep `ino`'s attributes for the TTL: not while a file's
    /// persisted mode and owner are still to be read (they are defaults until then).
    pub(super) fn attr_settled(&self, n: &super::tree::Node) -> bool {
        n.local
            || n.metadata_loaded
            || !self.metadata_may_wait(n.attr.kind, n.attr.size)
            || !self.may_carry_metadata(Kind::File)
    }

    /// A GET's headers described its object: that file's metadata, if not read yet.
    pub(super) fn described_by_get(&self, meta: &ObjectMeta) {
        if !self.may_carry_metadata(Kind::File) || meta.key.ends_with('/') {
            return;
        }
        let mut tree = self.tree();
        if tree.metadata_loaded(&meta.key) {
            return;
        }
        self.apply_head_result(&mut tree, &meta.key, &Ok(meta.clone()));
    }

    /// Reads the persisted metadata of `ino` if it lacks it (a lookup): a file whose HEAD
    /// waited, by the GET of its one block.
    pub(super) async fn load_node_metadata(&self, ino: u64) -> FsResult<()> {
        if !self.settle_waiting(ino).await? {
            self.load_metadata(&[ino]).await;
        }
        Ok(())
    }

    /// Reads the persisted metadata of `ino` if it is a file whose HEAD waited for its
    /// lookup (a getattr, a setattr: the kernel looked it up before, but defaults must
    /// never be shown or persisted as its own); whether it was one.
    pub(super) async fn settle_waiting(&self, ino: u64) -> FsResult<bool> {
        let (key, etag, size, parent, name, before) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(super::Errno(libc::ENOENT))?;
            // Every lookup and getattr passes here: a settled entry (nearly all) goes on
            // without a copy. A file with local data keeps the attributes the mount gave it.
            if self.attr_settled(n) || self.handles.has_data(ino) {
                return Ok(false);
            }
            let before = tree.get(n.parent).and_then(|p| {
                p.children
                    .range::<str, _>((Bound::Unbounded, Bound::Excluded(n.name.as_str())))
                    .next_back()
                    .map(|(name, _)| name.clone())
            });
            (
                n.key.clone(),
                n.etag.clone(),
                n.attr.size,
                n.parent,
                n.name.clone(),
                before,
            )
        };
        let order = self.stat_order.note(parent, &name, before.as_deref(), Instant::now());
        if order == Order::Sweep {
            self.sweep_after(parent, &name);
        }
        let by_get = matches!(order, Order::Scattered | Order::Following) && !self.heads_in_flight.under_way(&key);
        if let Some(etag) = etag.filter(|_| by_get) {
            let object = ObjectVersion {
                key: Arc::from(key.as_str()),
                etag: Arc::from(etag.as_str()),
                size,
            };
            // A cold read of the file, as its open would have been; not in a run in
            // listing order, which is more likely the start of an `ls -l` than a reader
            // whose directory is worth fetching ahead.
            if order == Order::Scattered
                && let Some(fs) = self.me.upgrade()
            {
                fs.note_read_open(ino, &object);
            }
            // A failure (the object changed, an error) leaves it to the HEAD below.
            let _ = self.blocks.read(&object, 0..size, Prefetch::none()).await;
            if self.tree().metadata_loaded(&key) {
                return Ok(true);
            }
        }
        // A block from a cache, a failed GET, or a sweep under way: a HEAD (or its own).
        self.load_metadata(&[ino]).await;
        Ok(true)
    }

    /// HEADs in the background the entries of `dir` after `name` whose metadata waits. If
    /// a walk read `dir`'s parent too (`ls -lR`, `du`), the next directories beside `dir`
    /// are HEADed with it, and the listings of the others from then on.
    fn sweep_after(&self, dir: u64, name: &str) {
        let Some(fs) = self.me.upgrade() else { return };
        let keys: Vec<String> = {
            let tree = self.tree();
            let Some(d) = tree.get(dir) else { return };
            let unsettled = |dir: &super::tree::Node, after: Bound<&str>| -> Vec<String> {
                dir.children
                    .range::<str, _>((after, Bound::Unbounded))
                    .filter_map(|(_, ino)| tree.get(*ino))
                    .filter(|n| !self.attr_settled(n))
                    .map(|n| n.key.clone())
                    .collect()
            };
            let mut keys = unsettled(d, Bound::Excluded(name));
            self.stat_order.mark_swept(dir, d.children.keys().next_back());
            if d.parent != dir && self.read_lately(d.parent) {
                self.stat_order.stat_walks.lock().put(d.parent, ());
                let beside = tree.get(d.parent).into_iter().flat_map(|p| {
                    p.children
                        .range::<str, _>((Bound::Excluded(d.name.as_str()), Bound::Unbounded))
                        .filter_map(|(_, ino)| tree.get(*ino))
                        .filter(|n| n.attr.kind == Kind::Dir)
                        .take(SWEPT_BESIDE)
                });
                for sibling in beside {
                    self.stat_order
                        .mark_swept(sibling.attr.ino, sibling.children.keys().next_back());
                    keys.extend(unsettled(sibling, Bound::Unbounded));
                }
            }
            keys
        };
        tracing::debug!(
            "entries of {dir} looked up in listing order: HEADing {} ahead",
            keys.len()
        );
        tokio::spawn(async move { fs.head_unloaded(keys, &fs.stat_order.share).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::attr::{META_MODE, META_UID};
    use crate::fs::{FsConfig, ROOT_INO, SetAttr};
    use crate::provider::{Overrides, Resolved};
    use crate::source::Source;
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectStore, PutOptions};
    use std::time::{Duration, UNIX_EPOCH};

    /// A mount of a directory of 70 files of 5,000 bytes read by readdir; `ds/f05` is
    /// owned by uid 4242 with mode 600. Returns the store, the core and f05's inode.
    async fn listed_dataset(cache: &std::path::Path) -> (Arc<MemoryStore>, Arc<Fs>, u64) {
        listed_files(cache, 70, Arc::new(MemoryStore::new())).await
    }

    /// The same with `files` files, in `store`.
    async fn listed_files(
        cache: &std::path::Path,
        files: usize,
        store: Arc<MemoryStore>,
    ) -> (Arc<MemoryStore>, Arc<Fs>, u64) {
        for i in 0..files {
            let mut opts = PutOptions::default();
            if i == 5 {
                opts.metadata.insert(META_UID.into(), "4242".into());
                opts.metadata.insert(META_MODE.into(), 0o100600.to_string());
            }
            let key = format!("ds/f{i:02}");
            store.put(&key, vec![i as u8; 5000].into(), &opts).await.expect("put");
        }
        let resolved = Resolved::new(&Source::parse("s3://b").expect("source"), &Overrides::default());
        let config = FsConfig {
            cache_dir: cache.to_path_buf(),
            metadata_ttl: Duration::from_secs(60),
            ..FsConfig::default()
        };
        let fs = Fs::new(store.clone(), resolved, config);
        let dir = fs.lookup(ROOT_INO, "ds").await.expect("ds").ino;
        let fh = fs.opendir(dir).await.expect("opendir");
        let entries = fs.readdir(dir, fh, 0).await.expect("readdir");
        let f05 = entries.iter().find(|e| e.name == "f05").expect("f05 listed").ino;
        (store, fs, f05)
    }

    #[tokio::test]
    async fn a_listed_file_is_described_by_one_get_at_its_getattr() {
        let cache = tempfile::tempdir().expect("temp dir");
        let (store, fs, f05) = listed_dataset(cache.path()).await;
        // The lookup of `ds` HEADs `ds` and its marker `ds/`; the listing none of its files.
        let heads = store.requests("head");
        assert_eq!(heads, 2, "the listing HEADed its files");
        let (attr, settled) = fs.listed_attr(f05).expect("listed");
        assert!(!settled, "defaults shown as settled: {attr:?}");
        let attr = fs.getattr(f05).await.expect("getattr");
        assert_eq!((attr.uid, attr.perm), (4242, 0o600));
        assert_eq!((store.requests("head"), store.requests("get")), (heads, 1));
        assert!(fs.listed_attr(f05).expect("listed").1);
    }

    #[tokio::test]
    async fn next_to_the_server_a_small_directory_s_files_wait_for_their_lookups() {
        let cache = tempfile::tempdir().expect("temp dir");
        let (store, fs, f05) = listed_files(cache.path(), 10, Arc::new(MemoryStore::new())).await;
        // The store answers at once: the lookup of `ds` HEADs `ds` and `ds/`, no file.
        assert_eq!(store.requests("head"), 2, "the listing HEADed its files");
        let attr = fs.getattr(f05).await.expect("getattr");
        assert_eq!((attr.uid, attr.perm), (4242, 0o600));
        assert_eq!((store.requests("head"), store.requests("get")), (2, 1));
    }

    #[tokio::test]
    async fn over_a_long_link_a_small_directory_s_files_are_headed_with_its_listing() {
        let cache = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(MemoryStore::new());
        store.delay_lists(Duration::from_millis(15));
        let (store, fs, f05) = listed_files(cache.path(), 10, store).await;
        assert_eq!(
            store.requests("head"),
            2 + 10,
            "the listing left its files' HEADs to lookups"
        );
        let attr = fs.getattr(f05).await.expect("getattr");
        assert_eq!((attr.uid, attr.perm), (4242, 0o600));
        assert_eq!((store.requests("head"), store.requests("get")), (12, 0));
    }

    #[tokio::test]
    async fn a_change_to_a_listed_file_keeps_what_it_does_not_change() {
        let cache = tempfile::tempdir().expect("temp dir");
        let (store, fs, f05) = listed_dataset(cache.path()).await;
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let change = SetAttr {
            mtime: Some(mtime),
            ..SetAttr::default()
        };
        let attr = fs.setattr(f05, None, change).await.expect("utimes");
        assert_eq!((attr.uid, attr.perm), (4242, 0o600));
        let head = store.head("ds/f05").await.expect("head");
        assert_eq!(head.metadata.get(META_UID).map(String::as_str), Some("4242"));
        assert_eq!(head.metadata.get(META_MODE), Some(&0o100600.to_string()));
    }

    #[test]
    fn a_run_in_listing_order_sweeps_once() {
        let order = StatOrder::default();
        let t0 = Instant::now();
        assert_eq!(order.note(7, "b", Some("a"), t0), Order::Scattered);
        assert_eq!(order.note(7, "c", Some("b"), t0), Order::Following);
        assert_eq!(order.note(7, "d", Some("c"), t0), Order::Following);
        assert_eq!(order.note(7, "e", Some("d"), t0), Order::Sweep);
        assert_eq!(
            order.note(7, "x", Some("q"), t0),
            Order::Swept,
            "a directory is swept once"
        );
    }

    /// `ls -l` stats as it reads: names of later pages come after the sweep, which took in
    /// only the names listed then. The first of them sweeps on from there; the directory's
    /// listing HEADs its pages from then on (`swept`).
    #[test]
    fn a_sweep_goes_on_from_a_name_listed_after_it() {
        let order = StatOrder::default();
        let t0 = Instant::now();
        assert!(!order.swept(7));
        for (name, before) in [("b", "a"), ("c", "b"), ("d", "c")] {
            assert_ne!(order.note(7, name, Some(before), t0), Order::Sweep);
        }
        assert_eq!(order.note(7, "e", Some("d"), t0), Order::Sweep);
        order.mark_swept(7, Some(&"m".to_string()));
        assert!(order.swept(7));
        assert_eq!(order.note(7, "f", Some("e"), t0), Order::Swept);
        assert_eq!(order.note(7, "m", Some("l"), t0), Order::Swept);
        assert_eq!(
            order.note(7, "n", Some("m"), t0),
            Order::Sweep,
            "listed after the sweep"
        );
        order.mark_swept(7, Some(&"z".to_string()));
        // A sweep that took in less than one before it does not move the mark back.
        order.mark_swept(7, Some(&"p".to_string()));
        assert_eq!(order.note(7, "q", Some("p"), t0), Order::Swept);
    }

    #[test]
    fn the_first_entry_right_after_its_readdir_sweeps_at_once() {
        let order = StatOrder::default();
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(5);
        order.note_read(4, t0);
        order.note_read(5, t0);
        assert_eq!(order.note(5, "a", None, soon), Order::Sweep);
        // Another entry first.
        order.note_read(7, t0);
        assert_eq!(order.note(7, "k", Some("j"), soon), Order::Scattered);
        assert_eq!(order.note(7, "l", Some("k"), soon), Order::Following);
    }

    /// A random reader meets the first entry, then the second, once per 100 directories.
    #[test]
    fn a_first_entry_after_other_readdirs_or_later_is_chance() {
        let order = StatOrder::default();
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(5);
        // A walk read 6, then 7: 6's first entry comes after another readdir.
        order.note_read(6, t0);
        order.note_read(7, t0);
        assert_eq!(order.note(6, "a", None, soon), Order::Scattered);
        assert_eq!(order.note(6, "b", Some("a"), soon), Order::Following);
        // Too long after.
        order.note_read(5, t0);
        assert_eq!(order.note(5, "a", None, t0 + JUST_READ), Order::Scattered);
        // Never read by a readdir (opened by path).
        assert_eq!(order.note(8, "a", None, t0), Order::Scattered);
        assert_eq!(order.note(8, "b", Some("a"), t0), Order::Following);
    }

    #[test]
    fn lookups_out_of_order_never_sweep() {
        let order = StatOrder::default();
        let t0 = Instant::now();
        for (name, before) in [("q", "p"), ("c", "b"), ("d", "c"), ("m", "l"), ("n", "m"), ("o", "n")] {
            assert_ne!(order.note(3, name, Some(before), t0), Order::Sweep);
        }
        // Another directory's run is its own.
        for (name, before) in [("b", "a"), ("c", "b"), ("d", "c")] {
            assert_ne!(order.note(4, name, Some(before), t0), Order::Sweep);
        }
        assert_eq!(order.note(3, "p", Some("o"), t0), Order::Sweep);
    }
}
