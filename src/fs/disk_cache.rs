//! The persistent block cache on local disk: blocks keyed by bucket, key, ETag and index,
//! each file carrying its identity and a CRC32 of its data, verified on every read (a
//! corrupt block is dropped and refetched, never served). Files are written atomically
//! (temporary file, rename). The size stays under a budget and a minimum of free disk
//! space is kept, evicting least recently used blocks one at a time as blocks are added.

use crate::private_dir::{self, Link, Purpose};
use bytes::Bytes;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;

const MAGIC: &[u8; 8] = b"S3VBLK1\0";
/// Blocks written to disk at once; beyond it new blocks are not cached rather than
/// slowing reads down.
const PENDING_WRITES: usize = 16;

#[derive(Default)]
pub struct DiskStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
}

struct Index {
    /// File name -> size, least recently used first out.
    lru: lru::LruCache<String, u64>,
    used: u64,
}

pub struct DiskCache {
    dir: PathBuf,
    bucket: String,
    budget: u64,
    min_free: u64,
    index: Mutex<Index>,
    writes: Arc<Semaphore>,
    pub stats: DiskStats,
}

/// How big the cache may grow: bytes, or a share of the disk it lives on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheSize {
    Bytes(u64),
    Percent(f64),
}

impl CacheSize {
    pub fn parse(text: &str) -> Result<CacheSize, String> {
        match text.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| format!("invalid percentage '{text}'"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("percentage '{text}' is not between 0 and 100"));
                }
                Ok(CacheSize::Percent(p))
            }
            None => crate::provider::parse_size(text).map(CacheSize::Bytes),
        }
    }

    pub fn resolve(self, dir: &Path) -> u64 {
        match self {
            CacheSize::Bytes(b) => b,
            CacheSize::Percent(p) => (disk_bytes(dir).0 as f64 * p / 100.0) as u64,
        }
    }
}

/// Bytes available on the filesystem holding `dir`, if it can be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// (total, available) bytes of the filesystem holding `dir`.
fn disk_bytes(dir: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

const CACHE_DIR: Purpose = Purpose {
    what: "cache directory",
    elsewhere: "choose another with --cache-dir",
};

/// What a cache directory holds; each is private like the directory itself.
const CACHE_SUBDIRS: [&str; 3] = ["blocks", "staging", "journal"];

/// Creates a cache directory and its parts with mode 0700, or checks existing ones (see
/// `private_dir`). An older s3vol's directories, readable by others, are made private
/// with one log line.
fn private_cache_dir(dir: &Path) -> Result<(), String> {
    let mut loosened = Vec::new();
    if let Some(mode) = private_dir::create(dir, CACHE_DIR, Link::Follow)? {
        loosened.push(format!("{} (mode {mode:04o})", dir.display()));
    }
    for sub in CACHE_SUBDIRS {
        let path = dir.join(sub);
        if let Some(mode) = private_dir::create(&path, CACHE_DIR, Link::Refuse)? {
            loosened.push(format!("{} (mode {mode:04o})", path.display()));
        }
    }
    if !loosened.is_empty() {
        tracing::warn!(
            "made private (mode 0700): {}; other users could read cached objects and unuploaded writes",
            loosened.join(", ")
        );
    }
    Ok(())
}

/// Takes the lock of a cache directory: the base itself, or for a second mount sharing
/// it, a `mount-N` subdirectory of its own. The lock lives as long as the returned file.
/// The directory returned is absolute (journal records name their staging files by it).
pub fn lock_cache_dir(base: &Path) -> Result<(PathBuf, File), String> {
    let failed = |dir: &Path, e: std::io::Error| format!("cache directory {}: {e}", dir.display());
    for n in 1..=16 {
        let dir = if n == 1 {
            base.to_path_buf()
        } else {
            base.join(format!("mount-{n}"))
        };
        private_cache_dir(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| failed(&dir, e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if n > 1 {
                tracing::info!(
                    "cache directory {} is in use by another mount; using {}",
                    base.display(),
                    dir.display()
                );
            }
            let dir = std::fs::canonicalize(&dir).map_err(|e| failed(&dir, e))?;
            return Ok((dir, lock));
        }
    }
    Err(format!("cache directory {} is in use by 16 mounts", base.display()))
}

/// Whether another process holds `dir`'s lock.
pub fn cache_dir_in_use(dir: &Path) -> bool {
    let Ok(lock) = std::fs::OpenOptions::new().write(true).open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; released when it closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

impl DiskCache {
    /// Opens the cache under `root/blocks`, indexing what earlier mounts left (a scan at
    /// mount time, never on the read path).
    pub fn open(root: &Path, bucket: &str, budget: u64, min_free: u64) -> std::io::Result<DiskCache> {
        let dir = root.join("blocks");
        create_private_dirs(&dir)?;
        let mut found = Vec::new();
        for sub in std::fs::read_dir(&dir)?.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                let Ok(meta) = f.metadata() else { continue };
                if name.starts_with(".tmp") {
                    // A write interrupted by a crash.
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), name, meta.len()));
            }
        }
        found.sort();
        let mut index = Index {
            lru: lru::LruCache::unbounded(),
            used: 0,
        };
        for (_, name, size) in found {
            index.used += size;
            index.lru.put(name, size);
        }
        let cache = DiskCache {
            dir,
            bucket: bucket.to_string(),
            budget,
            min_free,
            index: Mutex::new(index),
            writes: Arc::new(Semaphore::new(PENDING_WRITES)),
            stats: DiskStats::default(),
        };
        cache.evict(0);
        Ok(cache)
    }

    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn identity(&self, key: &str, etag: &str, index: u64) -> String {
        format!("{}\0{key}\0{etag}\0{index}", self.bucket)
    }

    fn name(identity: &str) -> String {
        use md5::Digest;
        md5::Md5::digest(identity.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(&name[..2]).join(name)
    }

    /// The block, if cached and intact.
    pub fn get(&self, key: &str, etag: &str, index: u64) -> Option<Bytes> {
        let identity = self.identity(key, etag, index);
        let name = Self::name(&identity);
        if self.index.lock().lru.get(&name).is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let path = self.path(&name);
        match std::fs::read(&path).ok().and_then(|raw| decode(raw, &identity)) {
            Some(data) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(data)
            }
            None => {
                tracing::warn!(
                    "disk cache block {} is corrupt or unreadable; dropped and refetched",
                    path.display()
                );
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.forget(&name);
                None
            }
        }
    }

    fn forget(&self, name: &str) {
        let mut index = self.index.lock();
        if let Some(size) = index.lru.pop(name) {
            index.used -= size;
        }
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Writes a block in the background, unless too many writes are pending already.
    pub fn put_later(self: &Arc<Self>, key: &str, etag: &str, index: u64, data: Bytes) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        let (this, identity) = (self.clone(), self.identity(key, etag, index));
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(e) = this.put(&identity, &data) {
                tracing::debug!("disk cache write: {e}");
            }
        });
    }

    fn put(&self, identity: &str, data: &[u8]) -> std::io::Result<()> {
        let name = Self::name(identity);
        let path = self.path(&name);
        let size = encoded_len(identity, data) as u64;
        if size > self.budget || !self.reserve(size) {
            return Ok(());
        }
        create_private_dirs(path.parent().expect("two levels"))?;
        let tmp = path.with_file_name(format!(".tmp-{name}-{:08x}", fastrand::u32(..)));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                // The data is written from where it is: a copy into one buffer would cost
                // a fresh allocation and its page faults per block, on the reader's CPUs.
                file.write_all(&header(identity, data))?;
                file.write_all(data)
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        let mut index = self.index.lock();
        if let Err(e) = written {
            index.used -= size;
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // `size` was reserved: replacing a block gives back the old one's.
        if let Some(old) = index.lru.put(name, size) {
            index.used -= old;
        }
        Ok(())
    }

    /// Makes room for `size` bytes and counts them as used, so that concurrent writes
    /// cannot overshoot the budget together; false if the disk is too full.
    fn reserve(&self, size: u64) -> bool {
        self.evict(size);
        let mut index = self.index.lock();
        if index.used + size > self.budget || disk_bytes(&self.dir).1 < self.min_free + size {
            return false;
        }
        index.used += size;
        true
    }

    /// Evicts least recently used blocks until `incoming` more bytes fit the budget and
    /// the free-space floor.
    fn evict(&self, incoming: u64) {
        loop {
            let victim = {
                let mut index = self.index.lock();
                let over_budget = index.used + incoming > self.budget;
                let low_disk = disk_bytes(&self.dir).1 < self.min_free + incoming;
                if !(over_budget || low_disk) || index.lru.is_empty() {
                    return;
                }
                let (name, size) = index.lru.pop_lru().expect("not empty");
                index.used -= size;
                name
            };
            let _ = std::fs::remove_file(self.path(&victim));
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every block (`s3vol cache clear`).
    pub fn clear(&self) -> u64 {
        let names: Vec<String> = {
            let mut index = self.index.lock();
            index.used = 0;
            let names = index.lru.iter().map(|(n, _)| n.clone()).collect();
            index.lru.clear();
            names
        };
        for name in &names {
            let _ = std::fs::remove_file(self.path(name));
        }
        names.len() as u64
    }
}

/// `dir` and its missing parents, created 0700 whatever the umask (they hold private data).
pub(crate) fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Removes every block under a cache directory that no mount holds.
pub fn clear_unlocked(root: &Path) -> std::io::Result<u64> {
    let dir = root.join("blocks");
    let mut removed = 0;
    let Ok(subdirs) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    for sub in subdirs.flatten() {
        for f in std::fs::read_dir(sub.path())?.flatten() {
            std::fs::remove_file(f.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn encoded_len(identity: &str, data: &[u8]) -> usize {
    MAGIC.len() + 4 + identity.len() + 8 + 4 + data.len()
}

/// What precedes a block's data in its file: magic, identity, length and CRC32.
fn header(identity: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(identity, data) - data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    out.extend_from_slice(identity.as_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out
}

/// The data of an encoded block, if it is intact and is the block asked for.
fn decode(raw: Vec<u8>, identity: &str) -> Option<Bytes> {
    let rest = raw.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_at_checked(4)?;
    let id_len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (id, rest) = rest.split_at_checked(id_len)?;
    if id != identity.as_bytes() {
        return None;
    }
    let (len, rest) = rest.split_at_checked(8)?;
    let data_len = u64::from_le_bytes(len.try_into().ok()?) as usize;
    let (crc, data) = rest.split_at_checked(4)?;
    if data.len() != data_len || crc32fast::hash(data) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    // The block is the tail of what was read: handed out without a copy.
    let start = raw.len() - data_len;
    Some(Bytes::from(raw).slice(start..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "b", 1 << 30, 0).unwrap();
        cache.put(&cache.identity("k", "e1", 0), b"hello").unwrap();
        assert_eq!(cache.get("k", "e1", 0).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.get("k", "e2", 0), None, "another ETag is another block");
        let name = DiskCache::name(&cache.identity("k", "e1", 0));
        let path = cache.path(&name);
        let mut raw = std::fs::read(&path).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert_eq!(cache.get("k", "e1", 0), None);
        assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
        assert!(!path.exists(), "a corrupt block is dropped");
    }

    #[test]
    fn eviction_keeps_the_budget_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let block = vec![7u8; 1000];
        let one = encoded_len("b\0k\0e\0", &block) as u64 + 4;
        let cache = DiskCache::open(dir.path(), "b", 5 * one, 0).unwrap();
        for i in 0..20 {
            cache.put(&cache.identity("k", "e", i), &block).unwrap();
            assert!(cache.used() <= 5 * one);
        }
        assert!(cache.get("k", "e", 19).is_some() && cache.get("k", "e", 0).is_none());
        let used = cache.used();
        drop(cache);
        let reopened = DiskCache::open(dir.path(), "b", 5 * one, 0).unwrap();
        assert_eq!(reopened.used(), used);
        assert!(reopened.get("k", "e", 19).is_some());
    }

    #[test]
    fn a_second_mount_gets_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _l1) = lock_cache_dir(dir.path()).unwrap();
        let (second, _l2) = lock_cache_dir(dir.path()).unwrap();
        assert_eq!(first, dir.path());
        assert_eq!(second, dir.path().join("mount-2"));
        assert!(cache_dir_in_use(&first));
        drop(_l1);
        assert!(!cache_dir_in_use(&first));
    }

    #[test]
    fn sizes() {
        assert_eq!(CacheSize::parse("10%"), Ok(CacheSize::Percent(10.0)));
        assert_eq!(CacheSize::parse("2GiB"), Ok(CacheSize::Bytes(2 << 30)));
        assert!(CacheSize::parse("120%").is_err());
    }
}
