//! The filesystem core: namespace, metadata cache, reads. It knows object keys and errno
//! values, and nothing of FUSE (the adapter in `fuse.rs` translates).

pub mod attr;
mod block_buffers;
mod blocks;
mod budget;
mod content;
mod deferred;
mod direct_write;
mod dirty;
pub mod disk_cache;
pub mod disk_wait;
mod fetch_pacing;
mod guessed_splits;
mod handles;
mod heads_in_flight;
mod inodes;
mod journal;
mod journal_log;
mod list_prefetch;
mod list_segments;
#[cfg(test)]
mod listed_dir_tests;
mod listed_metadata;
mod listing;
mod lookup;
mod metadata_by_get;
mod metadata_version;
mod names;
mod namespace;
mod open;
mod page_push;
#[cfg(test)]
mod panic_tests;
mod part_gather;
mod ranges;
mod read;
mod readahead;
mod readdir;
mod recovery;
mod relist_large;
pub mod remembered_metadata;
mod revalidate;
pub mod shared_tier;
mod small_file_prefetch;
mod stat;
pub mod tree;
mod upload;
mod write;
mod writeback;

pub use attr::{Attr, Defaults, Kind};
pub use listing::DirEntry;
pub use namespace::Caller;
pub use recovery::Recovered;
pub use stat::SetAttr;
pub use tree::ROOT_INO;
pub use writeback::{DirtyReport, Settle, UploadMode};

use crate::provider::Resolved;
use crate::store::{ObjectStore, StoreError};
use blocks::{BlockCache, ObjectVersion};
use content::MemoryBudget;
use parking_lot::Mutex;
use readahead::ReadStreams;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tree::Tree;
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
    /// When close() returns: once journaled (the upload follows) or once uploaded.
    pub upload_mode: UploadMode,
    /// Free space writes leave on the cache directory's disk (bytes): beyond it they wait
    /// for uploads to drain, then fail with ENOSPC.
    pub staging_min_free: u64,
    /// The persistent block cache under `cache_dir`: size budget and free space to keep
    /// (bytes); `None` disables it.
    pub disk_cache: Option<(u64, u64)>,
    /// Reading a directory lists its subdirectories in the background.
    pub list_prefetch: bool,
    /// Opening a few small files of a directory fetches its other small files ahead.
    pub small_file_prefetch: bool,
    /// A read-only open of a large file the disk cache holds whole offers that copy for
    /// the kernel to read directly (`Opened::whole_file`).
    pub passthrough: bool,
    /// The shared cache tier, read after the disk cache and before the origin.
    pub shared_cache: Option<Arc<shared_tier::SharedTier>>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            defaults: Defaults {
                uid: 0,
                gid: 0,
                file_mode: 0o644,
                dir_mode: 0o755,
                keep_special_modes: false,
            },
            metadata_ttl: Duration::from_secs(5),
            read_only: false,
            memory_limit: 1 << 30,
            block_size: 1 << 20,
            initial_prefetch: 1 << 20,
            max_prefetch: 128 << 20,
            max_nodes: 256 * 1024,
            cache_dir: std::env::temp_dir().join("s3vol"),
            upload_mode: UploadMode::Background,
            staging_min_free: 0,
            disk_cache: None,
            list_prefetch: true,
            small_file_prefetch: true,
            passthrough: true,
            shared_cache: None,
        }
    }
}

/// An open file handle.
struct OpenFile {
    ino: u64,
    /// The object version reads see (fixed at open; moved by rename and our uploads).
    object: Mutex<ObjectVersion>,
    /// Shared by every handle of the inode.
    readahead: Arc<Mutex<ReadStreams>>,
    writable: bool,
    append: bool,
    /// Some read of this handle has returned bytes: from then on a changed object is
    /// ESTALE (the reader saw the old version), before it the new version is read.
    has_read: std::sync::atomic::AtomicBool,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

/// What `open` tells the kernel.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// The kernel's cached pages of this file are still valid (same ETag).
    pub keep_cache: bool,
    /// For a read-only open of a file the disk cache holds whole: that copy, opened, for
    /// the kernel to read from directly (FUSE passthrough) if the adapter can.
    pub whole_file: Option<std::fs::File>,
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
    /// Uploads refused because the object changed remotely (kept as conflict copies).
    pub conflicts: AtomicU64,
    pub lookups: AtomicU64,
    pub list_requests: AtomicU64,
    pub head_requests: AtomicU64,
}

pub struct Fs {
    /// Itself, for the background work a call starts (a `&self` cannot spawn it).
    me: std::sync::Weak<Fs>,
    store: Arc<dyn ObjectStore>,
    resolved: Resolved,
    config: FsConfig,
    tree: Mutex<Tree>,
    blocks: Arc<BlockCache>,
    /// Open handles, local data and the unlink-while-open rule.
    handles: handles::Handles,
    list_prefetch: list_prefetch::ListPrefetch,
    heads_in_flight: heads_in_flight::HeadsInFlight,
    small_file_prefetch: small_file_prefetch::SmallFilePrefetch,
    /// What HEADs of listed files found, kept for the next mount.
    remembered: remembered_metadata::RememberedMetadata,
    /// Directories listed again for the opens of their files after the TTL.
    revalidation: revalidate::Revalidation,
    relist_large: relist_large::RelistLarge,
    /// Whether the store can list a directory from a middle key (for whole listings at once).
    list_segments: list_segments::ListSegments,
    /// Directories whose entries are looked up in listing order (`ls -l`).
    stat_order: metadata_by_get::StatOrder,
    /// Uploads on close, and the journal every upload and background delete is recorded in.
    uploader: Uploader,
    /// Files' uploads after close: queued, in flight, refused.
    writeback: writeback::WriteBack,
    /// Directory markers and deletes deferred by `UploadMode::Background`.
    deferred: deferred::Deferred,
    pub stats: FsStats,
    /// The kernel let go of the mount: attributes fetched from now on reach nobody.
    unmounted: std::sync::atomic::AtomicBool,
    /// What the core tells the kernel on its own (set by the FUSE adapter at mount).
    kernel: KernelNotices,
    /// Blocks on their way into the kernel's page cache.
    page_pushes: page_push::PagePushes,
}

#[derive(Default)]
struct KernelNotices {
    /// An inode's cached attributes are stale.
    attrs_stale: std::sync::OnceLock<AttrsStale>,
    /// A name is gone.
    entry_gone: std::sync::OnceLock<EntryGone>,
    /// Bytes of a file go into its page cache.
    pages: std::sync::OnceLock<page_push::PagesToKernel>,
}

pub use page_push::PagesToKernel;

/// Marks an inode's attributes in the kernel as stale, so it asks again (its size changed
/// behind the kernel's back).
pub type AttrsStale = Arc<dyn Fn(u64) + Send + Sync>;

/// Drops the kernel's cached entry `name` under the inode `parent` (the name went away
/// without the kernel asking for it).
pub type EntryGone = Arc<dyn Fn(u64, String) + Send + Sync>;

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
    pub passthrough_opens: u64,
    /// Small files fetched ahead of their opens, and opens that found theirs fetched or on
    /// its way.
    pub prefetched_files: u64,
    pub prefetched_files_used: u64,
    /// Bytes of files read at random put into the kernel's page cache ahead of the reader.
    pub pushed_to_kernel_bytes: u64,
    pub shared: SharedReport,
}

/// What the shared cache tier did (all zero without one).
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedReport {
    pub hits: u64,
    pub misses: u64,
    pub rejected: u64,
    pub errors: u64,
    pub writes: u64,
    pub writes_dropped: u64,
    pub bytes_read: u64,
}

impl Fs {
    pub fn new(store: Arc<dyn ObjectStore>, resolved: Resolved, config: FsConfig) -> Arc<Fs> {
        // The memory limit is shared: half for cached blocks, a quarter for dirty data
        // held in memory, a quarter for bodies in flight (GETs and uploads). A GET fetches up to 8
        // blocks at once.
        let quarter = config.memory_limit / 4;
        // Blocks waiting for the disk cache: an eighth of the memory limit. With 16, a cold
        // 1 GiB read on a fast link left 70 of its blocks uncached (the disk's writes fall
        // behind in bursts while the reader keeps both cores busy), fetched again after a
        // remount; with 128 none.
        let pending_writes = usize::try_from(config.memory_limit / 8 / config.block_size.max(1)).unwrap_or(usize::MAX);
        let disk = config.disk_cache.and_then(|(budget, min_free)| {
            match disk_cache::DiskCache::open(&config.cache_dir, &resolved.bucket, budget, min_free, pending_writes) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(
                        "disk cache under {}: {e}; reading without it",
                        config.cache_dir.display()
                    );
                    None
                }
            }
        });
        // Bodies in flight, reads and uploads together, share the last quarter.
        let transfers = budget::TransferBudget::new(quarter);
        let blocks = BlockCache::new(
            store.clone(),
            2 * quarter,
            config.block_size,
            8 * config.block_size,
            disk,
            config.shared_cache.clone(),
            transfers.clone(),
        );
        let tree = Tree::new(&resolved.prefix, config.defaults);
        let journal = Arc::new(journal::Journal::new(
            &config.cache_dir,
            &resolved.bucket,
            resolved.endpoint.as_deref(),
        ));
        let uploader = Uploader::new(store.clone(), resolved.clone(), blocks.clone(), transfers, journal);
        // Kept with the disk cache, whose blocks it spares the HEADs of after a remount.
        let remembered = match config.disk_cache.is_some() && resolved.profile.user_metadata {
            true => remembered_metadata::RememberedMetadata::load(&config.cache_dir, &resolved.bucket),
            false => remembered_metadata::RememberedMetadata::none(),
        };
        Arc::new_cyclic(|me: &std::sync::Weak<Fs>| {
            let fs = me.clone();
            blocks.set_described_sink(Arc::new(move |meta| {
                if let Some(fs) = fs.upgrade() {
                    fs.described_by_get(meta);
                }
            }));
            Fs {
                me: me.clone(),
                store,
                resolved,
                tree: Mutex::new(tree),
                blocks,
                handles: handles::Handles::new(MemoryBudget::new(quarter, quarter.min(8 << 20))),
                list_prefetch: Default::default(),
                heads_in_flight: Default::default(),
                small_file_prefetch: Default::default(),
                remembered,
                revalidation: revalidate::Revalidation::new(),
                relist_large: Default::default(),
                list_segments: Default::default(),
                stat_order: Default::default(),
                uploader,
                writeback: Default::default(),
                deferred: Default::default(),
                stats: FsStats::default(),
                unmounted: Default::default(),
                kernel: Default::default(),
                page_pushes: Default::default(),
                config,
            }
        })
    }

    /// How to tell the kernel that an inode's attributes changed (called once, at mount).
    pub fn on_attrs_stale(&self, notify: AttrsStale) {
        let _ = self.kernel.attrs_stale.set(notify);
    }

    /// How to put a file's bytes into the kernel's page cache (called once, at mount).
    pub fn on_pages_fetched(&self, to_kernel: page_push::PagesToKernel) {
        let _ = self.kernel.pages.set(to_kernel);
    }

    /// How to tell the kernel that a name went away (called once, at mount).
    pub fn on_entry_gone(&self, notify: EntryGone) {
        let _ = self.kernel.entry_gone.set(notify);
    }

    /// `name` under `parent` is gone, though the kernel did not remove it.
    pub(super) fn tell_kernel_entry_gone(&self, parent: u64, name: String) {
        if let Some(notify) = self.kernel.entry_gone.get().cloned() {
            tokio::task::spawn_blocking(move || notify(parent, name));
        }
    }

    /// The kernel's cached attributes of `ino` are stale (its object changed remotely).
    pub(super) fn tell_kernel_attrs_changed(&self, ino: u64) {
        if let Some(notify) = self.kernel.attrs_stale.get().cloned() {
            // Off this request: the kernel may wait for it while it takes the notice.
            tokio::task::spawn_blocking(move || notify(ino));
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
            open_files: self.handles.open_files(),
            disk_bytes: disk.map_or(0, |d| d.used()),
            disk_budget: disk.map_or(0, |d| d.budget()),
            disk_hits: disk.map_or(0, |d| d.stats.hits.load(Ordering::Relaxed)),
            disk_misses: disk.map_or(0, |d| d.stats.misses.load(Ordering::Relaxed)),
            disk_evictions: disk.map_or(0, |d| d.stats.evictions.load(Ordering::Relaxed)),
            disk_corrupt: disk.map_or(0, |d| d.stats.corrupt.load(Ordering::Relaxed)),
            passthrough_opens: disk.map_or(0, |d| d.stats.passthrough_opens.load(Ordering::Relaxed)),
            prefetched_files: self.small_file_prefetch.stats.fetched.load(Ordering::Relaxed),
            prefetched_files_used: self.small_file_prefetch.stats.used.load(Ordering::Relaxed),
            pushed_to_kernel_bytes: self.page_pushes.pushed_bytes.load(Ordering::Relaxed),
            shared: self.blocks.shared.as_deref().map_or_else(SharedReport::default, |t| {
                let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let s = &t.stats;
                SharedReport {
                    hits: n(&s.hits),
                    misses: n(&s.misses),
                    rejected: n(&s.rejected),
                    errors: n(&s.errors),
                    writes: n(&s.writes),
                    writes_dropped: n(&s.writes_dropped),
                    bytes_read: n(&s.bytes_read),
                }
            }),
        }
    }

    /// Lets the shared cache tier's queued writes go out, for at most `bound` (at unmount).
    pub async fn settle_shared_cache(&self, bound: Duration) {
        if let Some(tier) = &self.blocks.shared
            && !tier.settle(bound).await
        {
            tracing::info!("unmounting with blocks not yet written to the shared cache (they are not shared)");
        }
    }

    /// At unmount: the blocks on their way to the disk cache written (waited for up to
    /// `bound`), and every object file's index saved with them, so that the next mount
    /// finds them (a large file read whole is then read by the kernel from its copy).
    pub async fn settle_disk_cache(&self, bound: Duration) {
        if let Some(disk) = &self.blocks.disk {
            if !disk.writes_done(bound).await {
                tracing::info!("unmounting with blocks not yet written to the disk cache (they are fetched again)");
            }
            let disk = disk.clone();
            let _ = tokio::task::spawn_blocking(move || disk.save_object_indexes()).await;
        }
    }

    /// The kernel let go of the mount (the daemon uploads what is left, then exits).
    pub fn note_unmounted(&self) {
        self.unmounted.store(true, Ordering::Relaxed);
    }

    /// `s3vol cache clear` while mounted: empties the disk cache (returns the blocks
    /// removed) and forgets the metadata remembered for the next mount.
    pub fn clear_disk_cache(&self) -> u64 {
        self.remembered.clear();
        self.blocks.disk.as_ref().map_or(0, |d| d.clear())
    }

    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    pub(super) fn tree(&self) -> parking_lot::MutexGuard<'_, Tree> {
        self.tree.lock()
    }

    pub(super) fn ttl_from_now(&self) -> Instant {
        Instant::now() + self.config.metadata_ttl
    }

    /// Logs a failed remote call once, with the key, and returns its errno.
    pub(super) fn fail(&self, op: &str, key: &str, e: StoreError) -> Errno {
        match &e {
            StoreError::NotFound => {}
            StoreError::PreconditionFailed => tracing::warn!(
                "{op} {key:?}: the object changed remotely while open; reopen the file to read the new version"
            ),
            _ => tracing::warn!("{op} {key:?}: {e}"),
        }
        Errno(e.errno())
    }

    pub(super) fn node_attr(&self, ino: u64) -> FsResult<Attr> {
        self.tree().get(ino).map(|n| n.attr).ok_or(Errno(libc::ENOENT))
    }

    /// Attributes as cached, without a request (readdirplus answers from the listing), and
    /// whether the kernel may keep them for the TTL (`metadata_by_get.rs`).
    pub fn listed_attr(&self, ino: u64) -> FsResult<(Attr, bool)> {
        let tree = self.tree();
        let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
        Ok((n.attr, self.attr_settled(n)))
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
}
