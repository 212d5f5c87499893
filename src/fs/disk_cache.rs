//! The persistent block cache on local disk: blocks keyed by bucket, key, ETag and index,
//! each file carrying its identity and a CRC32 of its data, verified on every read (a
//! corrupt block is dropped and refetched, never served). Files are written atomically
//! (temporary file, rename). The size stays under a budget and a minimum of free disk
//! space is kept, evicting least recently used blocks one at a time as blocks are added.
//!
//! A file is laid out as the block's buffer is (`block_buffers.rs`): a header page, then
//! the data, padded to whole pages; it is written and read with O_DIRECT (where the
//! filesystem offers it) straight from and into that buffer. Through the page cache, the
//! copy into it was half of the daemon's CPU on a cold read, and reading back a copy out
//! of it plus fresh buffers most of a read after a remount.

use super::block_buffers::{BlockBuffer, BlockBuffers, DATA_OFFSET, round_up};
use crate::cache_dir::{BLOCKS, create_private_dirs, disk_bytes};
use bytes::Bytes;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;

const MAGIC: &[u8; 8] = b"S3VBLK2\0";
/// The layout before the data was page-aligned: such files are dropped quietly.
const OLD_MAGIC: &[u8; 8] = b"S3VBLK1\0";
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

    /// Whether the index lists the block (it may still turn out unreadable): a cheap check
    /// that needs no trip to a blocking thread.
    pub fn holds(&self, key: &str, etag: &str, index: u64) -> bool {
        let name = Self::name(&self.identity(key, etag, index));
        self.index.lock().lru.contains(&name)
    }

    /// Whether the disk has `bytes` more above the free-space floor (beyond it the cache
    /// refuses writes instead of evicting).
    pub fn has_room(&self, bytes: u64) -> bool {
        disk_bytes(&self.dir).1 >= self.min_free.saturating_add(bytes)
    }

    /// Counts lookups answered by `holds` alone.
    pub fn count_misses(&self, blocks: usize) {
        self.stats.misses.fetch_add(blocks as u64, Ordering::Relaxed);
    }

    /// The block, if cached and intact, read into one of `buffers`.
    pub fn get(&self, key: &str, etag: &str, index: u64, buffers: &Arc<BlockBuffers>) -> Option<Bytes> {
        let identity = self.identity(key, etag, index);
        let name = Self::name(&identity);
        if self.index.lock().lru.get(&name).is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let path = self.path(&name);
        let block = read_block(&path, buffers);
        match block
            .as_ref()
            .map(|(buf, filled)| decode(buf.image(*filled), &identity))
        {
            Some(Decoded::Data(len)) => {
                let (mut buf, _) = block.expect("matched");
                buf.set_len(len);
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(Arc::new(buf).share())
            }
            Some(Decoded::OldLayout) => {
                tracing::debug!("disk cache block {} has the old layout; dropped", path.display());
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.forget(&name);
                None
            }
            _ => {
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

    /// Writes a block's header into its buffer, then the block to disk in the background,
    /// unless too many writes are pending already. Returns the block, now to share.
    pub fn put_later(self: &Arc<Self>, key: &str, etag: &str, index: u64, mut block: BlockBuffer) -> Arc<BlockBuffer> {
        let identity = self.identity(key, etag, index);
        let fits = write_header(&identity, &mut block);
        let block = Arc::new(block);
        let Some(permit) = fits.then(|| self.writes.clone().try_acquire_owned().ok()).flatten() else {
            return block;
        };
        let (this, written) = (self.clone(), block.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(e) = this.put(&identity, &written) {
                tracing::debug!("disk cache write: {e}");
            }
        });
        block
    }

    fn put(&self, identity: &str, block: &BlockBuffer) -> std::io::Result<()> {
        let name = Self::name(identity);
        let path = self.path(&name);
        let image = block.file_image();
        let size = image.len() as u64;
        if size > self.budget || !self.reserve(size) {
            return Ok(());
        }
        create_private_dirs(path.parent().expect("two levels"))?;
        let tmp = path.with_file_name(format!(".tmp-{name}-{:08x}", fastrand::u32(..)));
        let write = |direct| create(&tmp, direct).and_then(|file| file.write_all_at(image, 0));
        let written = match write(true) {
            // A filesystem that takes O_DIRECT at open but not these writes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&tmp);
                write(false)
            }
            other => other,
        }
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

/// Opens a new file for writing, with O_DIRECT if `direct` and the filesystem takes it
/// (tmpfs does not).
fn create(path: &Path, direct: bool) -> std::io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    match open(if direct { libc::O_DIRECT } else { 0 }) {
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
}

/// Reads a block file whole into a buffer from `buffers`, with O_DIRECT where the
/// filesystem takes it: the buffer and how many bytes were read; `None` if it cannot be
/// read.
fn read_block(path: &Path, buffers: &Arc<BlockBuffers>) -> Option<(BlockBuffer, usize)> {
    match read_with(path, buffers, libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => read_with(path, buffers, 0),
        other => other,
    }
    .ok()
}

fn read_with(path: &Path, buffers: &Arc<BlockBuffers>, flags: i32) -> std::io::Result<(BlockBuffer, usize)> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    let size = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if size > buffers.largest_file() {
        // Not a block of this mount's size (or not a block at all): never a huge buffer.
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut buf = buffers.take(size.saturating_sub(DATA_OFFSET));
    let room = &mut buf.as_mut()[..DATA_OFFSET + round_up(size.saturating_sub(DATA_OFFSET))];
    let mut filled = 0;
    while filled < size {
        match (&file).read(&mut room[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((buf, filled))
}

/// Writes the header of `block` (magic, identity, data length, CRC32) into its header
/// page; false if the identity does not fit one page (such a block is not cached).
fn write_header(identity: &str, block: &mut BlockBuffer) -> bool {
    let fields = MAGIC.len() + 4 + identity.len() + 8 + 4;
    if fields > DATA_OFFSET {
        return false;
    }
    let crc = crc32fast::hash(block.data()).to_le_bytes();
    let len = (block.data().len() as u64).to_le_bytes();
    let page = block.header_mut();
    page.fill(0);
    let mut at = 0;
    for part in [
        &MAGIC[..],
        &(identity.len() as u32).to_le_bytes(),
        identity.as_bytes(),
        &len,
        &crc,
    ] {
        page[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    true
}

enum Decoded {
    /// An intact block of this identity, of that many bytes after the header page.
    Data(usize),
    OldLayout,
    Bad,
}

/// What a block file (header page and data, as read) holds.
fn decode(file: &[u8], identity: &str) -> Decoded {
    if file.starts_with(OLD_MAGIC) {
        return Decoded::OldLayout;
    }
    let parsed = || -> Option<usize> {
        let rest = file.strip_prefix(MAGIC)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let id_len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (id, rest) = rest.split_at_checked(id_len)?;
        if id != identity.as_bytes() {
            return None;
        }
        let (len, rest) = rest.split_at_checked(8)?;
        let data_len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
        let crc = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        let data = file.get(DATA_OFFSET..DATA_OFFSET.checked_add(data_len)?)?;
        (crc32fast::hash(data) == crc).then_some(data_len)
    };
    parsed().map_or(Decoded::Bad, Decoded::Data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `data` in a block buffer with its header, as a block fetched from the network is.
    fn block(buffers: &Arc<BlockBuffers>, identity: &str, data: &[u8]) -> BlockBuffer {
        let mut b = buffers.take(data.len());
        b.as_mut()[DATA_OFFSET..DATA_OFFSET + data.len()].copy_from_slice(data);
        b.set_len(data.len());
        assert!(write_header(identity, &mut b));
        b
    }

    fn put(cache: &DiskCache, buffers: &Arc<BlockBuffers>, key: &str, index: u64, data: &[u8]) {
        let identity = cache.identity(key, "e", index);
        cache.put(&identity, &block(buffers, &identity, data)).unwrap();
    }

    #[test]
    fn blocks_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "b", 1 << 30, 0).unwrap();
        let buffers = BlockBuffers::new(4096, 1 << 20);
        put(&cache, &buffers, "k", 0, b"hello");
        assert_eq!(cache.get("k", "e", 0, &buffers).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.get("k", "e2", 0, &buffers), None, "another ETag is another block");
        let name = DiskCache::name(&cache.identity("k", "e", 0));
        let path = cache.path(&name);
        let mut raw = std::fs::read(&path).unwrap();
        assert_eq!(
            raw.len(),
            DATA_OFFSET + 4096,
            "a header page, the data padded to a page"
        );
        raw[DATA_OFFSET] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert_eq!(cache.get("k", "e", 0, &buffers), None);
        assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
        assert!(!path.exists(), "a corrupt block is dropped");
    }

    #[test]
    fn hostile_block_files_are_misses_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "b", 1 << 30, 0).unwrap();
        let buffers = BlockBuffers::new(4096, 1 << 20);
        let identity = cache.identity("k", "e", 0);
        let mut header = block(&buffers, &identity, b"data").image(DATA_OFFSET).to_vec();
        let len_at = MAGIC.len() + 4 + identity.len();
        header[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let old = [&OLD_MAGIC[..], b"whatever"].concat();
        let huge = vec![0; 3 * DATA_OFFSET + 4096];
        for content in [Vec::new(), vec![0; 10], vec![0; DATA_OFFSET], header, old, huge] {
            put(&cache, &buffers, "k", 0, b"data");
            std::fs::write(cache.path(&DiskCache::name(&identity)), &content).unwrap();
            assert_eq!(cache.get("k", "e", 0, &buffers), None, "{} bytes", content.len());
        }
        assert_eq!(
            cache.stats.corrupt.load(Ordering::Relaxed),
            5,
            "the old layout is not corrupt"
        );
    }

    #[test]
    fn eviction_keeps_the_budget_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 1000];
        let one = (DATA_OFFSET + 4096) as u64;
        let cache = DiskCache::open(dir.path(), "b", 5 * one, 0).unwrap();
        let buffers = BlockBuffers::new(4096, 1 << 20);
        for i in 0..20 {
            put(&cache, &buffers, "k", i, &data);
            assert!(cache.used() <= 5 * one);
        }
        assert!(cache.get("k", "e", 19, &buffers).is_some() && cache.get("k", "e", 0, &buffers).is_none());
        let used = cache.used();
        drop(cache);
        let reopened = DiskCache::open(dir.path(), "b", 5 * one, 0).unwrap();
        assert_eq!(reopened.used(), used);
        assert!(reopened.get("k", "e", 19, &buffers).is_some());
    }
}
