//! The persistent block cache on local disk: blocks keyed by bucket, key, ETag and index,
//! each file carrying its identity and a CRC32 of its data, verified on every read (a
//! corrupt block is dropped and refetched, never served). Files are written atomically
//! (temporary file, rename). The size stays under a budget and a minimum of free disk
//! space is kept, evicting least recently used blocks one at a time as blocks are added.

use crate::cache_dir::{BLOCKS, create_private_dirs, disk_bytes};
use bytes::Bytes;
use parking_lot::Mutex;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

impl DiskCache {
    /// Opens the cache under `root/blocks`, indexing what earlier mounts left (a scan at
    /// mount time, never on the read path).
    pub fn open(root: &Path, bucket: &str, budget: u64, min_free: u64) -> std::io::Result<DiskCache> {
        let dir = root.join(BLOCKS);
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
}
