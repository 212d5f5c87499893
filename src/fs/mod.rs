//! The filesystem core: namespace, metadata cache, reads. It knows object keys and errno
//! values, and nothing of FUSE (the adapter in `fuse.rs` translates).

pub mod attr;
mod blocks;
mod content;
mod dir;
mod dirty;
pub mod disk_cache;
mod journal;
mod recovery;
mod names;
mod namespace;
mod ranges;
mod readahead;
pub mod tree;
mod upload;
mod write;

pub use attr::{Attr, Defaults, Kind};
pub use dir::DirEntry;
pub use namespace::Caller;
pub use recovery::Recovered;
pub use tree::ROOT_INO;
pub use write::{DirtyReport, SetAttr};

use crate::provider::Resolved;
use crate::store::{ListRequest, ObjectStore, StoreError};
use blocks::{BlockCache, ObjectVersion};
use bytes::Bytes;
use content::MemoryBudget;
use dir::{DirStream, ListState};
use dirty::FileData;
use readahead::ReadAhead;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tree::{Seen, Tree};
use upload::Uploader;

/// An errno value, positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type FsResult<T> = Result<T, Errno>;

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub defaults: Defaults,
    pub metadata_ttl: Duration,
    pub read_only: bool,
    /// Memory for cached blocks (reads) and dirty data (writes) together.
    pub memory_limit: u64,
    pub block_size: u64,
    /// First prefetch window of a sequential reader.
    pub initial_prefetch: u64,
    /// Largest prefetch window.
    pub max_prefetch: u64,
    /// Entries the inode table keeps at most (beyond it, unreferenced ones are dropped).
    pub max_nodes: usize,
    /// Staging files for dirty data that does not fit the memory budget.
    pub cache_dir: PathBuf,
    /// close() waits for the upload and returns its error; false defers it.
    pub upload_on_close: bool,
    /// The persistent block cache under `cache_dir`: size budget and free space to keep
    /// (bytes); `None` disables it.
    pub disk_cache: Option<(u64, u64)>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            defaults: Defaults {
                uid: 0,
                gid: 0,
                file_mode: 0o644,
                dir_mode: 0o755,
            },
            metadata_ttl: Duration::from_secs(5),
            read_only: false,
            memory_limit: 1 << 30,
            block_size: 1 << 20,
            initial_prefetch: 1 << 20,
            max_prefetch: 64 << 20,
            max_nodes: 256 * 1024,
            cache_dir: std::env::temp_dir().join("s3vol"),
            upload_on_close: true,
            disk_cache: None,
        }
    }
}

/// An open file handle.
struct OpenFile {
    ino: u64,
    /// The object version reads see (fixed at open; moved by rename and our uploads).
    object: Mutex<ObjectVersion>,
    readahead: Mutex<ReadAhead>,
    writable: bool,
    append: bool,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

/// What `open` tells the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The kernel's cached pages of this file are still valid (same ETag).
    pub keep_cache: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub free_blocks: u64,
    pub files: u64,
    pub free_files: u64,
    pub block_size: u32,
}

#[derive(Default)]
pub struct FsStats {
    pub lookups: AtomicU64,
    pub list_requests: AtomicU64,
    pub head_requests: AtomicU64,
}

pub struct Fs {
    store: Arc<dyn ObjectStore>,
    resolved: Resolved,
    config: FsConfig,
    tree: Mutex<Tree>,
    blocks: Arc<BlockCache>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open handles per inode.
    open_counts: Mutex<HashMap<u64, usize>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirStream>>>>,
    /// Files with local changes (or open for writing), by inode.
    data: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<FileData>>>>,
    /// Unlinked while open: deleted from the bucket at the last close, hidden until then.
    pending_deletes: Mutex<HashMap<u64, String>>,
    hidden_keys: Mutex<HashSet<String>>,
    uploader: Uploader,
    journal: Arc<journal::Journal>,
    dirty_budget: Arc<MemoryBudget>,
    /// Uploads deferred by `upload_on_close = false`, and those that failed.
    background: BackgroundUploads,
    next_fh: AtomicU64,
    pub stats: FsStats,
}

struct BackgroundUploads {
    /// One permit per upload in flight: bounds them, and waiting for all permits is
    /// waiting for them all to finish.
    slots: Arc<tokio::sync::Semaphore>,
    failed: AtomicU64,
}

/// Deferred uploads (`upload_on_close = false`) in flight at once; close() waits for a
/// slot beyond it.
const BACKGROUND_UPLOADS: u32 = 64;

impl Default for BackgroundUploads {
    fn default() -> Self {
        BackgroundUploads {
            slots: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_UPLOADS as usize)),
            failed: AtomicU64::new(0),
        }
    }
}

impl BackgroundUploads {
    fn pending(&self) -> u64 {
        u64::from(BACKGROUND_UPLOADS) - self.slots.available_permits() as u64
    }

    async fn wait_idle(&self) {
        let all = self.slots.acquire_many(BACKGROUND_UPLOADS).await;
        drop(all);
    }
}

/// A snapshot of cache use, for `s3vol status`.
#[derive(Debug, Clone, Copy)]
pub struct CacheReport {
    pub block_bytes: u64,
    pub block_budget: u64,
    pub hits: u64,
    pub misses: u64,
    pub fetched_bytes: u64,
    pub open_files: usize,
    pub disk_bytes: u64,
    pub disk_budget: u64,
    pub disk_hits: u64,
    pub disk_misses: u64,
    pub disk_evictions: u64,
    pub disk_corrupt: u64,
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, resolved: Resolved, config: FsConfig) -> Fs {
        // The memory limit is shared: half for cached blocks, a quarter for dirty data
        // held in memory, a quarter for upload parts in flight. A GET fetches up to 8
        // blocks at once.
        let quarter = config.memory_limit / 4;
        let disk = config.disk_cache.and_then(|(budget, min_free)| {
            match disk_cache::DiskCache::open(&config.cache_dir, &resolved.bucket, budget, min_free) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!("disk cache under {}: {e}; reading without it", config.cache_dir.display());
                    None
                }
            }
        });
        let blocks = BlockCache::new(store.clone(), 2 * quarter, config.block_size, 8 * config.block_size, disk);
        let tree = Tree::new(&resolved.prefix, config.defaults);
        let journal = Arc::new(journal::Journal::new(&config.cache_dir, &resolved.bucket));
        let uploader = Uploader::new(store.clone(), resolved.clone(), blocks.clone(), quarter, journal.clone());
        Fs {
            store,
            resolved,
            tree: Mutex::new(tree),
            blocks,
            files: Mutex::new(HashMap::new()),
            open_counts: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            data: Mutex::new(HashMap::new()),
            pending_deletes: Mutex::new(HashMap::new()),
            hidden_keys: Mutex::new(HashSet::new()),
            uploader,
            journal,
            dirty_budget: MemoryBudget::new(quarter, quarter.min(8 << 20)),
            background: BackgroundUploads::default(),
            next_fh: AtomicU64::new(1),
            stats: FsStats::default(),
            config,
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn cache_report(&self) -> CacheReport {
        let s = &self.blocks.stats;
        let disk = self.blocks.disk.as_deref();
        CacheReport {
            block_bytes: self.blocks.used(),
            block_budget: self.blocks.budget(),
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            fetched_bytes: s.fetched_bytes.load(Ordering::Relaxed),
            open_files: self.files.lock().unwrap().len(),
            disk_bytes: disk.map_or(0, |d| d.used()),
            disk_budget: disk.map_or(0, |d| d.budget()),
            disk_hits: disk.map_or(0, |d| d.stats.hits.load(Ordering::Relaxed)),
            disk_misses: disk.map_or(0, |d| d.stats.misses.load(Ordering::Relaxed)),
            disk_evictions: disk.map_or(0, |d| d.stats.evictions.load(Ordering::Relaxed)),
            disk_corrupt: disk.map_or(0, |d| d.stats.corrupt.load(Ordering::Relaxed)),
        }
    }

    /// Empties the disk cache (`s3vol cache clear` while mounted); returns blocks removed.
    pub fn clear_disk_cache(&self) -> u64 {
        self.blocks.disk.as_ref().map_or(0, |d| d.clear())
    }

    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().expect("inode table poisoned")
    }

    fn ttl_from_now(&self) -> Instant {
        Instant::now() + self.config.metadata_ttl
    }

    /// Logs a failed remote call once, with the key, and returns its errno.
    fn fail(&self, op: &str, key: &str, e: StoreError) -> Errno {
        match &e {
            StoreError::NotFound => {}
            StoreError::PreconditionFailed => tracing::warn!(
                "{op} {key:?}: the object changed remotely while open; reopen the file to read the new version"
            ),
            _ => tracing::warn!("{op} {key:?}: {e}"),
        }
        Errno(e.errno())
    }

    fn node_attr(&self, ino: u64) -> FsResult<Attr> {
        self.tree().get(ino).map(|n| n.attr).ok_or(Errno(libc::ENOENT))
    }

    /// Attributes as cached, without a request (readdirplus answers from the listing).
    pub fn cached_attr(&self, ino: u64) -> FsResult<Attr> {
        self.node_attr(ino)
    }

    /// Object stores have no capacity to report (Runpod's volume size is not in its S3
    /// API): a large, mostly free filesystem, so `df` and tools that check space proceed;
    /// a full volume is reported as ENOSPC when a write fails.
    pub fn statfs(&self) -> StatFs {
        const BLOCK: u32 = 4096;
        const TOTAL: u64 = (1 << 50) / BLOCK as u64;
        StatFs {
            blocks: TOTAL,
            free_blocks: TOTAL,
            files: 1 << 32,
            free_files: 1 << 31,
            block_size: BLOCK,
        }
    }

    pub fn attr_ttl(&self) -> Duration {
        self.config.metadata_ttl
    }

    /// Resolves `name` for the kernel, which then holds a reference to the inode.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let attr = self.find(parent, name).await?;
        self.tree().add_lookup(attr.ino);
        Ok(attr)
    }

    /// Entries in the inode table now.
    pub fn inode_count(&self) -> usize {
        self.tree().node_count()
    }

    /// The kernel was given `ino` in a readdirplus entry.
    pub fn note_lookup(&self, ino: u64) {
        self.tree().add_lookup(ino);
    }

    /// The kernel dropped `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.tree().forget(ino, count);
    }

    /// Keeps the inode table within its budget: unreferenced entries the kernel forgot
    /// (or never saw) go, oldest first, unless a file is open or has local data.
    fn trim_tree(&self) {
        let excess = self.tree().node_count().saturating_sub(self.config.max_nodes);
        if excess == 0 {
            return;
        }
        let candidates = self.tree().eviction_candidates(excess + 64);
        let pinned: Vec<bool> = {
            let open = self.open_counts.lock().unwrap();
            let data = self.data.lock().unwrap();
            let deletes = self.pending_deletes.lock().unwrap();
            candidates.iter().map(|i| open.contains_key(i) || data.contains_key(i) || deletes.contains_key(i)).collect()
        };
        let mut tree = self.tree();
        for (ino, pinned) in candidates.into_iter().zip(pinned) {
            if pinned { tree.keep(ino) } else { tree.evict(ino) }
        }
    }

    /// `lookup` without the kernel reference (for the core's own resolution of names).
    async fn find(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        if name.len() > 255 {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let (parent_key, cached) = {
            let tree = self.tree();
            let p = tree.get(parent).ok_or(Errno(libc::ENOENT))?;
            if p.attr.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            (p.key.clone(), tree.cached_lookup(parent, name, Instant::now()))
        };
        match cached {
            Some(Some(ino)) => return self.node_attr(ino),
            Some(None) => return Err(Errno(libc::ENOENT)),
            None => {}
        }
        if names::unusable_name(name).is_some() {
            return Err(Errno(libc::ENOENT));
        }
        self.trim_tree();
        match self.lookup_remote(&parent_key, name).await? {
            Some((seen, metadata)) => {
                let mut tree = self.tree();
                let ino = tree
                    .upsert(parent, &seen, self.ttl_from_now())
                    .ok_or(Errno(libc::ENOENT))?;
                let node = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
                if let Some(m) = metadata {
                    node.attr.apply_metadata(&m);
                    node.metadata_loaded = true;
                }
                Ok(node.attr)
            }
            None => {
                self.tree().remember_missing(parent, name, self.ttl_from_now());
                Err(Errno(libc::ENOENT))
            }
        }
    }

    /// One round trip: a LIST of `prefix=name` with delimiter `/` finds the file, the
    /// directory and its marker at once; where the provider keeps user metadata, a HEAD
    /// runs alongside for the file's persisted mode, owner, mtime and symlink type.
    async fn lookup_remote(
        &self,
        parent_key: &str,
        name: &str,
    ) -> FsResult<Option<(Seen, Option<crate::store::Metadata>)>> {
        let key = format!("{parent_key}{name}");
        let dir_key = format!("{key}/");
        let list = async {
            self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
            let req = ListRequest {
                prefix: key.clone(),
                delimiter: Some("/".into()),
                max_keys: Some(1000),
                ..Default::default()
            };
            self.store.list_page(&req).await
        };
        let head = async {
            if !self.resolved.profile.user_metadata {
                return Ok(None);
            }
            self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
            match self.store.head(&key).await {
                Ok(m) => Ok(Some(m)),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let (page, head) = futures::join!(list, head);
        let page = page.map_err(|e| self.fail("LIST", &key, e))?;
        let hidden = self.resolved.profile.hidden_prefixes.iter().any(|h| dir_key == *h);
        let is_dir = !hidden && page.prefixes.contains(&dir_key);
        let is_dir = is_dir || (page.next.is_some() && !hidden && self.dir_exists(&dir_key).await?);
        if is_dir {
            let seen = Seen {
                name: name.to_string(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                etag: None,
            };
            return Ok(Some((seen, None)));
        }
        let head = head.map_err(|e| self.fail("HEAD", &key, e))?;
        if self.hidden_keys.lock().unwrap().contains(&key) {
            return Ok(None);
        }
        let listed = page.objects.iter().find(|o| o.key == key);
        let meta = match (head, listed) {
            (Some(h), _) => Some((h.clone(), Some(h.metadata))),
            (None, Some(o)) if !self.resolved.profile.user_metadata => Some((o.clone(), None)),
            (None, Some(o)) => Some((o.clone(), None)),
            (None, None) => None,
        };
        Ok(meta.map(|(o, metadata)| {
            let seen = Seen {
                name: name.to_string(),
                kind: Kind::File,
                size: o.size,
                mtime: o.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                etag: o.etag.clone(),
            };
            (seen, metadata)
        }))
    }

    /// Whether anything exists under `dir_key` (for a lookup whose first page was cut short
    /// by siblings sorting before `name/`).
    async fn dir_exists(&self, dir_key: &str) -> FsResult<bool> {
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let req = ListRequest {
            prefix: dir_key.to_string(),
            max_keys: Some(1),
            ..Default::default()
        };
        let page = self
            .store
            .list_page(&req)
            .await
            .map_err(|e| self.fail("LIST", dir_key, e))?;
        Ok(!page.objects.is_empty() || !page.prefixes.is_empty())
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let (fresh, key, kind) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (n.local || n.fresh_until > Instant::now(), n.key.clone(), n.attr.kind)
        };
        if fresh || kind == Kind::Dir {
            return self.node_attr(ino);
        }
        self.refresh_file(ino, &key).await
    }

    /// Re-reads a file's attributes with one HEAD.
    async fn refresh_file(&self, ino: u64, key: &str) -> FsResult<Attr> {
        self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
        let head = self.store.head(key).await.map_err(|e| self.fail("HEAD", key, e))?;
        let mut tree = self.tree();
        let until = Instant::now() + self.config.metadata_ttl;
        let node = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
        if node.etag != head.etag {
            node.attr.mtime = head.last_modified.unwrap_or(node.attr.mtime);
        }
        node.attr.size = head.size;
        node.etag = head.etag;
        node.attr.apply_metadata(&head.metadata);
        node.metadata_loaded = true;
        node.fresh_until = until;
        Ok(node.attr)
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let key = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            if n.attr.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            n.key.clone()
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(tokio::sync::Mutex::new(DirStream::new(ino, key)));
        self.dirs.lock().unwrap().insert(fh, stream);
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Entries from `offset` on (as many as one page holds); empty at the end. Offsets 1
    /// and 2 are `.` and `..`.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let stream = self.dirs.lock().unwrap().get(&fh).cloned().ok_or(Errno(libc::EBADF))?;
        let mut s = stream.lock().await;
        let mut out = Vec::new();
        if offset < 2 {
            let parent = self.tree().get(ino).map_or(ROOT_INO, |n| n.parent);
            if offset < 1 {
                out.push(DirEntry {
                    ino,
                    name: ".".into(),
                    kind: Kind::Dir,
                    next_offset: 1,
                });
            }
            out.push(DirEntry {
                ino: parent,
                name: "..".into(),
                kind: Kind::Dir,
                next_offset: 2,
            });
        }
        let offset = offset.max(dir::FIRST_LISTING_OFFSET);
        if offset < s.base {
            s.restart();
        }
        // Advance page by page until the page that holds `offset`.
        while offset >= s.end_offset() && s.state != ListState::Done {
            self.next_dir_page(&mut s).await?;
        }
        let from = (offset - s.base) as usize;
        out.extend(s.entries.iter().skip(from).cloned());
        Ok(out)
    }

    /// Replaces the stream's entries with its next page.
    async fn next_dir_page(&self, s: &mut DirStream) -> FsResult<()> {
        let new_base = s.end_offset();
        let now = Instant::now();
        let until = now + self.config.metadata_ttl;
        let cached = {
            let tree = self.tree();
            let n = tree.get(s.ino).ok_or(Errno(libc::ENOENT))?;
            (s.state == ListState::Start && n.listed_until.is_some_and(|t| t > now)).then(|| {
                n.children
                    .iter()
                    .map(|(name, ino)| (name.clone(), *ino))
                    .collect::<Vec<_>>()
            })
        };
        let entries: Vec<(String, u64, Kind)> = if let Some(children) = cached {
            // A fresh complete listing is in the cache: no request.
            s.state = ListState::Done;
            let tree = self.tree();
            children
                .into_iter()
                .filter_map(|(name, ino)| tree.get(ino).map(|n| (name, ino, n.attr.kind)))
                .collect()
        } else if s.state == ListState::More || s.state == ListState::Start {
            self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
            let page = self
                .store
                .list_page(&s.request())
                .await
                .map_err(|e| self.fail("LIST", &s.key, e))?;
            let mut seen = dir::page_entries(&s.key, &page, self.resolved.profile.hidden_prefixes);
            {
                let hidden = self.hidden_keys.lock().unwrap();
                if !hidden.is_empty() {
                    seen.retain(|e| !hidden.contains(&format!("{}{}", s.key, e.name)));
                }
            }
            let mut tree = self.tree();
            let mut entries = Vec::with_capacity(seen.len());
            for e in &seen {
                if let Some(ino) = tree.upsert(s.ino, e, until) {
                    s.shown.insert(e.name.clone());
                    let kind = tree.get(ino).map_or(e.kind, |n| n.attr.kind);
                    entries.push((e.name.clone(), ino, kind));
                }
            }
            s.token = page.next;
            if s.token.is_none() {
                s.state = ListState::Done;
                tree.finish_listing(s.ino, &s.shown, until);
                // Entries that exist only in the mount come last.
                let local: Vec<(String, u64, Kind)> = tree
                    .get(s.ino)
                    .map(|n| {
                        n.children
                            .iter()
                            .filter(|(name, _)| !s.shown.contains(*name))
                            .filter_map(|(name, ino)| tree.get(*ino).map(|c| (name.clone(), *ino, c.attr.kind)))
                            .collect()
                    })
                    .unwrap_or_default();
                entries.extend(local);
            } else {
                s.state = ListState::More;
            }
            entries
        } else {
            Vec::new()
        };
        self.trim_tree();
        s.base = new_base;
        s.entries = entries
            .into_iter()
            .enumerate()
            .map(|(i, (name, ino, kind))| DirEntry {
                ino,
                name,
                kind,
                next_offset: new_base + i as u64 + 1,
            })
            .collect();
        Ok(())
    }

    /// Opens a file. Writable opens share one [`FileData`] per inode; `truncate` is O_TRUNC.
    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<Opened> {
        if mode.write && self.config.read_only {
            return Err(Errno(libc::EROFS));
        }
        let (key, kind, fresh, local) = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            (
                n.key.clone(),
                n.attr.kind,
                n.fresh_until > Instant::now() && n.etag.is_some(),
                n.local,
            )
        };
        if kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let has_data = self.data.lock().unwrap().contains_key(&ino);
        if !fresh && !local && !has_data {
            self.refresh_file(ino, &key).await?;
        }
        let (object, keep_cache) = {
            let mut tree = self.tree();
            let n = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
            let etag = n.etag.clone().unwrap_or_default();
            let keep = !has_data && n.kernel_cache_etag.as_deref() == Some(etag.as_str());
            n.kernel_cache_etag = Some(etag.clone());
            let object = ObjectVersion {
                key: Arc::from(key.as_str()),
                etag: Arc::from(etag.as_str()),
                size: n.attr.size,
            };
            (object, keep)
        };
        // The handle counts before the data is looked up, so a concurrent last release
        // cannot drop the data this open is about to use.
        let opened = self.new_handle(ino, object.clone(), mode, keep_cache);
        if mode.write {
            let data = self.file_data(ino, &object, local);
            if mode.truncate
                && let Err(e) = self.truncate_data(ino, &data, 0).await
            {
                self.release(opened.fh).await;
                return Err(e);
            }
        }
        Ok(opened)
    }

    fn new_handle(&self, ino: u64, object: ObjectVersion, mode: OpenMode, keep_cache: bool) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let readahead = ReadAhead::new(self.config.initial_prefetch, self.max_window());
        let file = Arc::new(OpenFile {
            ino,
            object: Mutex::new(object),
            readahead: Mutex::new(readahead),
            writable: mode.write,
            append: mode.append,
        });
        self.files.lock().unwrap().insert(fh, file);
        *self.open_counts.lock().unwrap().entry(ino).or_default() += 1;
        Opened { fh, keep_cache }
    }

    /// The inode's local data, created over `object` (or empty for a file that exists
    /// only locally).
    fn file_data(&self, ino: u64, object: &ObjectVersion, local_only: bool) -> Arc<tokio::sync::Mutex<FileData>> {
        let mut data = self.data.lock().unwrap();
        data.entry(ino)
            .or_insert_with(|| {
                let base = (!local_only && !object.etag.is_empty()).then(|| object.clone());
                let mut f = FileData::new(object.key.to_string(), base, self.dirty_budget.clone());
                // A file that exists only here must reach the bucket even if empty.
                f.dirty = local_only;
                Arc::new(tokio::sync::Mutex::new(f))
            })
            .clone()
    }

    /// The prefetch window is capped so that a few sequential readers cannot evict each
    /// other's prefetched blocks before they are read.
    fn max_window(&self) -> u64 {
        self.config
            .max_prefetch
            .min(self.config.memory_limit / 8)
            .max(self.config.block_size)
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.lock().unwrap().get(&fh).cloned().ok_or(Errno(libc::EBADF))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.handle(fh)?;
        let range = offset..offset.saturating_add(u64::from(size));
        let data = self.data.lock().unwrap().get(&file.ino).cloned();
        if let Some(data) = data {
            let f = data.lock().await;
            let key = f.key.clone();
            return f
                .read(range, &self.blocks)
                .await
                .map(Bytes::from)
                .map_err(|e| self.fail("read", &key, e));
        }
        let prefetch_end = file.readahead.lock().unwrap().on_read(offset, u64::from(size));
        let object = file.object.lock().unwrap().clone();
        match self.blocks.read(&object, range, prefetch_end).await {
            Ok(data) => Ok(data),
            Err(e) => {
                if e == StoreError::PreconditionFailed {
                    // The next open must see the new version.
                    if let Some(n) = self.tree().get_mut(file.ino) {
                        n.fresh_until = Instant::now();
                        n.kernel_cache_etag = None;
                    }
                }
                Err(self.fail("read", &object.key, e))
            }
        }
    }

    /// The last close of a handle. Clean local data is dropped with the last handle; a file
    /// unlinked while open is deleted from the bucket now.
    pub async fn release(&self, fh: u64) {
        let Some(file) = self.files.lock().unwrap().remove(&fh) else {
            return;
        };
        let last = {
            let mut counts = self.open_counts.lock().unwrap();
            let n = counts.entry(file.ino).or_default();
            *n = n.saturating_sub(1);
            let last = *n == 0;
            if last {
                counts.remove(&file.ino);
            }
            last
        };
        if !last {
            return;
        }
        let pending_delete = self.pending_deletes.lock().unwrap().remove(&file.ino);
        if let Some(key) = pending_delete {
            self.data.lock().unwrap().remove(&file.ino);
            if let Err(e) = self.store.delete(&key).await {
                self.fail("delete", &key, e);
            }
            self.hidden_keys.lock().unwrap().remove(&key);
            return;
        }
        self.drop_clean_data(file.ino).await;
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let key = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            if n.attr.kind != Kind::Symlink {
                return Err(Errno(libc::EINVAL));
            }
            n.key.clone()
        };
        let resp = self
            .store
            .get_range(&key, 0..4096, None)
            .await
            .map_err(|e| self.fail("readlink", &key, e))?;
        resp.collect().await.map_err(|e| self.fail("readlink", &key, e))
    }
}
