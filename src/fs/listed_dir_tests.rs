//! The set-up of the core's tests of large directories: a mount of a directory `d/` of
//! many small files, read to its end by a readdir (so its listing is in the tree).

use crate::fs::{DirEntry, Fs, FsConfig, OpenMode, ROOT_INO};
use crate::provider::{Overrides, Resolved};
use crate::source::Source;
use crate::store::memory::MemoryStore;
use crate::store::{ObjectStore, PutOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mount of `files` files of 100 bytes in `d/` (`f00000`, `f00001`, ...), with a
/// metadata TTL of `ttl`, after a readdir of `d` to its end.
pub struct Listed {
    pub fs: Arc<Fs>,
    pub store: Arc<MemoryStore>,
    pub dir: u64,
    pub entries: Vec<DirEntry>,
    /// When the readdir ended.
    pub listed_at: Instant,
    _cache: tempfile::TempDir,
}

/// The key of file `i` of `d/`.
pub fn key(i: usize) -> String {
    format!("d/f{i:05}")
}

/// A store of `files` files of 100 bytes in `d/`.
pub async fn store_of(files: usize) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for i in 0..files {
        store
            .put(&key(i), vec![7; 100].into(), &PutOptions::default())
            .await
            .expect("put");
    }
    store
}

/// A mount of `store` with a metadata TTL of `ttl`, its cache in `cache` (with its disk
/// cache, and so what it remembers for the next mount, if `disk_cache`).
pub fn mount(store: &Arc<MemoryStore>, cache: &Path, ttl: Duration, disk_cache: bool) -> Arc<Fs> {
    let resolved = Resolved::new(&Source::parse("s3://b").expect("source"), &Overrides::default());
    let config = FsConfig {
        cache_dir: cache.to_path_buf(),
        metadata_ttl: ttl,
        disk_cache: disk_cache.then_some((64 << 20, 0)),
        ..FsConfig::default()
    };
    Fs::new(store.clone(), resolved, config)
}

/// Every entry of directory `dir`, read by one readdir to its end.
pub async fn read_whole(fs: &Arc<Fs>, dir: u64) -> Vec<DirEntry> {
    let fh = fs.opendir(dir).await.expect("opendir");
    let mut entries: Vec<DirEntry> = Vec::new();
    loop {
        let next = entries.last().map_or(0, |e| e.next_offset);
        let page = fs.readdir(dir, fh, next).await.expect("readdir");
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

/// The names of the store's keys under `d/`, as a listing shows them (a subdirectory once).
pub fn names_in(store: &MemoryStore) -> Vec<String> {
    let mut names: Vec<String> = store
        .keys()
        .iter()
        .filter_map(|k| k.strip_prefix("d/"))
        .map(|n| n.split('/').next().unwrap_or(n).to_string())
        .collect();
    names.dedup();
    names
}

/// Waits up to a second for the store's LISTs to reach `count`, then a little longer for
/// any beyond it.
pub async fn lists_reach(store: &MemoryStore, count: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(1);
    while store.requests("list") < count && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.requests("list")
}

pub async fn listed(files: usize, ttl: Duration) -> Listed {
    let cache = tempfile::tempdir().expect("temp dir");
    let store = store_of(files).await;
    let fs = mount(&store, cache.path(), ttl, false);
    let dir = fs.lookup(ROOT_INO, "d").await.expect("d").ino;
    let entries = read_whole(&fs, dir).await;
    assert_eq!(entries.len(), files + 2, "every entry and . and ..");
    // After the listing's TTL was set: the TTL ends before `listed_at + ttl`, however
    // long the readdir took.
    let listed_at = Instant::now();
    Listed {
        fs,
        store,
        dir,
        entries,
        listed_at,
        _cache: cache,
    }
}

impl Listed {
    pub fn ino(&self, name: &str) -> u64 {
        self.entries.iter().find(|e| e.name == name).expect("listed").ino
    }

    pub async fn open(&self, name: &str) {
        let fh = self
            .fs
            .open(self.ino(name), OpenMode::default())
            .await
            .expect("open")
            .fh;
        self.fs.release(fh).await;
    }

    pub async fn lists_reach(&self, count: u64) -> u64 {
        lists_reach(&self.store, count).await
    }

    /// The names of `d` in the tree.
    pub fn children(&self) -> Vec<String> {
        let tree = self.fs.tree();
        tree.get(self.dir).expect("d").children.keys().cloned().collect()
    }
}
