//! Persisted metadata remembered across mounts. A LIST carries no user metadata, so every
//! file a mount lists is HEADed once for its mode, owner and mtime (`listed_metadata.rs`);
//! after a remount that was every file again: an epoch over 10,000 files read from the
//! disk cache still sent 10,000 HEADs, and `ls -l` or `git status` of a large tree paid a
//! round trip per file. What a HEAD found is kept here with the object's ETag, size and
//! LastModified, and saved in the cache directory when the mount ends; a later listing that
//! shows the same three answers from here. A change of the object's bytes or of its
//! metadata (a copy onto itself, as chmod by another client) moves its LastModified, so a
//! stale entry is never used; an entry a listing no longer matches is simply not recalled.
//!
//! Kept with them: where the listings of large directories split (every 900th name's key,
//! `list_segments.rs`), so that a directory's first listing after a remount goes in
//! segments at once rather than page after page (ten round trips in a row for 10,000
//! names).
//!
//! The file is read as hostile input: checked whole (a CRC32 at its end), every length
//! bounded; anything wrong and the mount starts with nothing remembered (one log line).

use super::metadata_version::whole_seconds;
use crate::store::{Metadata, ObjectMeta};
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// Files remembered at most (about 150 bytes each in memory and on disk).
const ENTRIES: usize = 200_000;
/// Its files in the cache directory: `metadata-` and a CRC32 of the bucket's name.
const FILE_PREFIX: &str = "metadata-";
/// The file's first bytes; a file of the first version (no split points) is read too.
const MAGIC: &[u8; 16] = b"s3vol-metadata2\n";
const MAGIC_FIRST: &[u8; 16] = b"s3vol-metadata1\n";
/// Directories whose split points are kept at most, and split points per directory (a
/// directory of over 3.6 million names is listed in larger segments past the last).
const SPLIT_DIRS: usize = 10_000;
const SPLITS_PER_DIR: usize = 4_096;
/// Bounds on what one entry may hold (S3 keys are at most 1,024 bytes, user metadata
/// 2 KiB in all): anything larger is damage.
const MAX_KEY: usize = 4096;
const MAX_ETAG: usize = 256;
const MAX_PAIRS: usize = 64;
const MAX_VALUE: usize = 2048;
/// A file larger than this is not read.
const MAX_FILE: u64 = 256 << 20;

/// What a HEAD of a file found, and the object it found it on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    etag: String,
    size: u64,
    /// LastModified in whole seconds: a listing's may carry milliseconds, a HEAD's not.
    modified: i64,
    metadata: Metadata,
}

pub struct RememberedMetadata {
    /// Where it is saved; none for a mount without a disk cache.
    path: Option<PathBuf>,
    /// The bucket it belongs to, written in the file and checked when read.
    bucket: String,
    entries: Mutex<LruCache<String, Entry>>,
    /// Per directory key, the keys its listing splits after (each a direct child's).
    splits: Mutex<HashMap<String, Vec<String>>>,
    changed: AtomicBool,
}

impl RememberedMetadata {
    /// Nothing remembered, nothing saved.
    pub fn none() -> RememberedMetadata {
        RememberedMetadata {
            path: None,
            bucket: String::new(),
            entries: Mutex::new(LruCache::new(NonZeroUsize::new(1).expect("not zero"))),
            splits: Mutex::default(),
            changed: AtomicBool::new(false),
        }
    }

    /// What an earlier mount of `bucket` saved under `dir`, if anything usable.
    pub fn load(dir: &Path, bucket: &str) -> RememberedMetadata {
        let name = format!("{FILE_PREFIX}{:08x}", crc32fast::hash(bucket.as_bytes()));
        let path = dir.join(name);
        let mut entries = LruCache::new(NonZeroUsize::new(ENTRIES).expect("not zero"));
        let mut splits = HashMap::new();
        match read(&path, bucket) {
            Ok(found) => {
                for (key, entry) in found.entries {
                    entries.put(key, entry);
                }
                splits = found.splits;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "remembered metadata {}: {e}; starting without it (files are HEADed again)",
                path.display()
            ),
        }
        RememberedMetadata {
            path: Some(path),
            bucket: bucket.to_string(),
            entries: Mutex::new(entries),
            splits: Mutex::new(splits),
            changed: AtomicBool::new(false),
        }
    }

    /// The persisted metadata of the object a listing shows, if a HEAD of that very object
    /// (same ETag, size and LastModified) found it before.
    pub fn recall(&self, listed: &ObjectMeta) -> Option<ObjectMeta> {
        let (etag, modified) = (listed.etag.as_deref()?, listed.last_modified?);
        let mut entries = self.entries.lock();
        let e = entries.get(&listed.key)?;
        if e.etag != etag || e.size != listed.size || e.modified != whole_seconds(modified) {
            return None;
        }
        Some(ObjectMeta {
            key: listed.key.clone(),
            size: e.size,
            etag: Some(e.etag.clone()),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(e.modified.max(0) as u64)),
            metadata: e.metadata.clone(),
        })
    }

    /// What a HEAD of a file found.
    pub fn remember(&self, head: &ObjectMeta) {
        if self.path.is_none() || head.key.len() > MAX_KEY || head.metadata.len() > MAX_PAIRS {
            return;
        }
        let (Some(etag), Some(modified)) = (head.etag.as_ref(), head.last_modified) else {
            return;
        };
        if etag.len() > MAX_ETAG
            || head
                .metadata
                .iter()
                .any(|(k, v)| k.len() > MAX_VALUE || v.len() > MAX_VALUE)
        {
            return;
        }
        let entry = Entry {
            etag: etag.clone(),
            size: head.size,
            modified: whole_seconds(modified),
            metadata: head.metadata.clone(),
        };
        let mut entries = self.entries.lock();
        if entries.get(&head.key) != Some(&entry) {
            entries.put(head.key.clone(), entry);
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// The keys after which the listing of directory `dir_key` split when a mount last
    /// listed it whole (none if it was not large).
    pub fn listing_splits(&self, dir_key: &str) -> Vec<String> {
        self.splits.lock().get(dir_key).cloned().unwrap_or_default()
    }

    /// Whether a mount listed `dir_key` whole as a large directory.
    pub fn has_listing_splits(&self, dir_key: &str) -> bool {
        self.splits.lock().contains_key(dir_key)
    }

    /// Where the listing of `dir_key`, just listed whole, splits now (none: it is small).
    pub fn remember_listing_splits(&self, dir_key: &str, mut keys: Vec<String>) {
        if self.path.is_none() || dir_key.len() > MAX_KEY {
            return;
        }
        keys.retain(|k| is_split_of(dir_key, k));
        keys.truncate(SPLITS_PER_DIR);
        let mut splits = self.splits.lock();
        let changed = match keys.is_empty() {
            true => splits.remove(dir_key).is_some(),
            false if splits.get(dir_key) == Some(&keys) => false,
            false if splits.len() >= SPLIT_DIRS && !splits.contains_key(dir_key) => false,
            false => {
                splits.insert(dir_key.to_string(), keys);
                true
            }
        };
        if changed {
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Writes what is remembered, if anything changed, for the next mount (a whole new
    /// file renamed over the old one: a crash leaves one or the other).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.changed.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.bucket.as_bytes());
        {
            let entries = self.entries.lock();
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            // Least recently used first: read back in order, the newest stay newest.
            for (key, e) in entries.iter().rev() {
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, e.etag.as_bytes());
                out.extend_from_slice(&e.size.to_le_bytes());
                out.extend_from_slice(&e.modified.to_le_bytes());
                out.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
                for (k, v) in &e.metadata {
                    put_bytes(&mut out, k.as_bytes());
                    put_bytes(&mut out, v.as_bytes());
                }
            }
        }
        {
            let splits = self.splits.lock();
            out.extend_from_slice(&(splits.len() as u32).to_le_bytes());
            for (dir, keys) in splits.iter() {
                put_bytes(&mut out, dir.as_bytes());
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for key in keys {
                    put_bytes(&mut out, key.as_bytes());
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        crate::cache_dir::replace_file(path, &out, true)
    }

    /// `s3vol cache clear` through the mount: forgets everything, on disk too.
    pub fn clear(&self) {
        self.entries.lock().clear();
        self.splits.lock().clear();
        self.changed.store(false, Ordering::Relaxed);
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

/// `s3vol cache clear` of an unmounted cache directory: removes what every bucket's mounts
/// remembered. Returns how many files went.
pub fn clear_unlocked(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(FILE_PREFIX) && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn damaged(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

/// Whether `key` can split the listing of `dir_key`: a direct child's key, a file's or a
/// subdirectory's (ending in its one `/`; a key below a subdirectory would roll up into
/// the subdirectory's prefix, which sorts before it).
fn is_split_of(dir_key: &str, key: &str) -> bool {
    let Some(name) = key.strip_prefix(dir_key) else {
        return false;
    };
    let name = name.strip_suffix('/').unwrap_or(name);
    !name.is_empty() && !name.contains('/')
}

/// What a saved file holds.
struct Saved {
    entries: Vec<(String, Entry)>,
    splits: HashMap<String, Vec<String>>,
}

/// Reads a saved file; every length is checked before it is used.
fn read(path: &Path, bucket: &str) -> std::io::Result<Saved> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.len() > MAX_FILE {
        return Err(damaged("larger than any file s3vol writes"));
    }
    let data = std::fs::read(path)?;
    let body_len = data.len().checked_sub(4).ok_or_else(|| damaged("truncated"))?;
    let (body, crc) = data.split_at(body_len);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(damaged("checksum mismatch"));
    }
    let mut r = Reader { data: body };
    let magic = r.take(MAGIC.len())?;
    if magic != MAGIC && magic != MAGIC_FIRST {
        return Err(damaged("not a metadata file of this version"));
    }
    if r.string(MAX_KEY)? != bucket {
        return Err(damaged("written for another bucket"));
    }
    let count = r.u32()? as usize;
    if count > ENTRIES {
        return Err(damaged("more entries than s3vol keeps"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.string(MAX_KEY)?;
        let etag = r.string(MAX_ETAG)?;
        let size = r.u64()?;
        let modified = r.u64()? as i64;
        let pairs = r.u32()? as usize;
        if pairs > MAX_PAIRS {
            return Err(damaged("an entry with too much metadata"));
        }
        let mut metadata = Metadata::new();
        for _ in 0..pairs {
            let k = r.string(MAX_VALUE)?;
            let v = r.string(MAX_VALUE)?;
            metadata.insert(k, v);
        }
        let entry = Entry {
            etag,
            size,
            modified,
            metadata,
        };
        out.push((key, entry));
    }
    let mut splits = HashMap::new();
    if magic == MAGIC {
        let dirs = r.u32()? as usize;
        if dirs > SPLIT_DIRS {
            return Err(damaged("split points of more directories than s3vol keeps"));
        }
        for _ in 0..dirs {
            let dir = r.string(MAX_KEY)?;
            let count = r.u32()? as usize;
            if count > SPLITS_PER_DIR {
                return Err(damaged("more split points than s3vol keeps"));
            }
            let keys = (0..count)
                .map(|_| r.string(MAX_KEY))
                .collect::<std::io::Result<Vec<_>>>()?;
            if !keys.iter().all(|k| is_split_of(&dir, k)) {
                return Err(damaged("a split point outside its directory"));
            }
            splits.insert(dir, keys);
        }
    }
    if !r.data.is_empty() {
        return Err(damaged("bytes after the last entry"));
    }
    Ok(Saved { entries: out, splits })
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if n > self.data.len() {
            return Err(damaged("truncated"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, max: usize) -> std::io::Result<String> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(damaged("a field longer than allowed"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| damaged("a field not in UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(key: &str, etag: &str, modified: u64, mode: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 100,
            etag: Some(etag.into()),
            last_modified: Some(UNIX_EPOCH + Duration::from_millis(modified * 1000 + 250)),
            metadata: [("mode".to_string(), mode.to_string())].into(),
        }
    }

    fn listed(key: &str, etag: &str, modified: u64) -> ObjectMeta {
        ObjectMeta {
            metadata: Metadata::new(),
            last_modified: Some(UNIX_EPOCH + Duration::from_millis(modified * 1000 + 700)),
            ..head(key, etag, modified, "")
        }
    }

    #[test]
    fn what_a_head_found_is_recalled_after_a_remount_for_the_same_object_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.remember(&head("a/x", "e1", 1000, "33261"));
        r.remember(&head("a/y", "e2", 1000, "33188"));
        r.save().unwrap();
        let again = RememberedMetadata::load(dir.path(), "b");
        let x = again.recall(&listed("a/x", "e1", 1000)).expect("the same object");
        assert_eq!(x.metadata.get("mode").map(String::as_str), Some("33261"));
        assert!(again.recall(&listed("a/x", "e9", 1000)).is_none(), "other bytes");
        assert!(
            again.recall(&listed("a/x", "e1", 1001)).is_none(),
            "rewritten (a chmod elsewhere)"
        );
        assert!(
            again
                .recall(&ObjectMeta {
                    size: 5,
                    ..listed("a/y", "e2", 1000)
                })
                .is_none(),
            "other size"
        );
        assert!(again.recall(&listed("a/z", "e1", 1000)).is_none(), "never HEADed");
        assert!(
            RememberedMetadata::load(dir.path(), "other")
                .recall(&listed("a/x", "e1", 1000))
                .is_none(),
            "another bucket"
        );
    }

    fn split_keys(dir: &str, names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("{dir}{n}")).collect()
    }

    #[test]
    fn where_large_listings_split_is_kept_for_the_next_mount() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.remember_listing_splits("big/", split_keys("big/", &["f0899", "f1799"]));
        r.remember_listing_splits("", split_keys("", &["a", "b"]));
        // Keys that cannot split the listing (below a subdirectory, elsewhere) are left out.
        let odd = ["odd/sub/x", "other/y", "odd/z", "odd/", "odd//", "odd/d/"];
        r.remember_listing_splits("odd/", odd.iter().map(|k| k.to_string()).collect());
        r.remember_listing_splits("small/", Vec::new());
        r.save().unwrap();
        let again = RememberedMetadata::load(dir.path(), "b");
        assert_eq!(again.listing_splits("big/"), split_keys("big/", &["f0899", "f1799"]));
        assert_eq!(again.listing_splits(""), split_keys("", &["a", "b"]));
        assert_eq!(again.listing_splits("odd/"), split_keys("odd/", &["z", "d/"]));
        assert!(again.listing_splits("small/").is_empty());
        // A directory that became small forgets its splits; the same splits change nothing.
        again.remember_listing_splits("big/", Vec::new());
        again.remember_listing_splits("", split_keys("", &["a", "b"]));
        again.save().unwrap();
        let third = RememberedMetadata::load(dir.path(), "b");
        assert!(third.listing_splits("big/").is_empty());
        third.remember_listing_splits("", split_keys("", &["a", "b"]));
        assert!(!third.changed.load(Ordering::Relaxed), "nothing new to save");
    }

    /// A file of the first version (no split points) is still read; the same with a
    /// split-point section is damage.
    #[test]
    fn a_file_of_the_first_version_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.remember(&head("k", "e", 7, "1"));
        r.save().unwrap();
        let path = r.path.clone().unwrap();
        let saved = std::fs::read(&path).unwrap();
        // The current file ends in an empty split-point section (4 bytes) and its CRC.
        let with_section = &saved[..saved.len() - 4];
        let without = &with_section[..with_section.len() - 4];
        let first_version = |body: &[u8]| {
            let mut out = MAGIC_FIRST.to_vec();
            out.extend_from_slice(&body[MAGIC.len()..]);
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        };
        std::fs::write(&path, first_version(without)).unwrap();
        let old = RememberedMetadata::load(dir.path(), "b");
        assert!(old.recall(&listed("k", "e", 7)).is_some());
        std::fs::write(&path, first_version(with_section)).unwrap();
        assert!(read(&path, "b").is_err());
    }

    #[test]
    fn a_damaged_or_hostile_file_is_ignored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.remember(&head("k", "e", 7, "1"));
        r.save().unwrap();
        let path = r.path.clone().unwrap();
        let good = std::fs::read(&path).unwrap();
        assert_eq!(RememberedMetadata::load(dir.path(), "b").len(), 1);
        for cut in [0, 3, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(RememberedMetadata::load(dir.path(), "b").len(), 0, "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(RememberedMetadata::load(dir.path(), "b").len(), 0);
        // A huge length with a valid checksum: refused, not allocated.
        let mut hostile = MAGIC.to_vec();
        put_bytes(&mut hostile, b"b");
        hostile.extend_from_slice(&1u32.to_le_bytes());
        hostile.extend_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&hostile);
        hostile.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &hostile).unwrap();
        assert_eq!(RememberedMetadata::load(dir.path(), "b").len(), 0);
        // A split point outside its directory, with a valid checksum: refused whole.
        let mut outside = MAGIC.to_vec();
        put_bytes(&mut outside, b"b");
        outside.extend_from_slice(&0u32.to_le_bytes());
        outside.extend_from_slice(&1u32.to_le_bytes());
        put_bytes(&mut outside, b"d/");
        outside.extend_from_slice(&1u32.to_le_bytes());
        put_bytes(&mut outside, b"e/x");
        let crc = crc32fast::hash(&outside);
        outside.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &outside).unwrap();
        assert!(read(&path, "b").is_err());
        assert!(
            RememberedMetadata::load(dir.path(), "b")
                .listing_splits("d/")
                .is_empty()
        );
    }

    #[test]
    fn cache_clear_forgets_everything_mounted_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.remember(&head("k", "e", 7, "1"));
        r.save().unwrap();
        r.clear();
        assert!(r.recall(&listed("k", "e", 7)).is_none());
        assert!(!r.path.as_ref().unwrap().exists());
        r.save().unwrap();
        assert!(!r.path.as_ref().unwrap().exists(), "nothing left to save");
        let other = RememberedMetadata::load(dir.path(), "c");
        other.remember(&head("k", "e", 7, "1"));
        other.save().unwrap();
        std::fs::write(dir.path().join("unrelated"), b"x").unwrap();
        assert_eq!(clear_unlocked(dir.path()).unwrap(), 1);
        assert!(dir.path().join("unrelated").exists());
        assert_eq!(RememberedMetadata::load(dir.path(), "c").len(), 0);
    }

    #[test]
    fn nothing_changed_nothing_written_and_without_a_path_nothing_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = RememberedMetadata::load(dir.path(), "b");
        r.save().unwrap();
        assert!(!r.path.as_ref().unwrap().exists(), "nothing to save");
        let none = RememberedMetadata::none();
        none.remember(&head("k", "e", 7, "1"));
        assert!(none.recall(&listed("k", "e", 7)).is_none());
        none.save().unwrap();
    }
}
