//! The block cache: object data in fixed-size blocks keyed by key, ETag and index, held in
//! memory within a byte budget. A block is fetched once however many readers want it
//! (single flight), and runs of missing blocks are fetched as one ranged GET each, whose
//! body fills the blocks in order as it streams in. A read waits only for the bytes it asks
//! for, not for the whole block: on a long-distance link a 1 MiB block takes several round
//! trips of TCP slow start, while the first kilobytes arrive after one.

mod answer_time;
mod fetch_ahead;
mod get_run;
mod served;
mod whole_fetch;

use super::block_buffers::{BlockBuffer, BlockBuffers, DATA_OFFSET};
use super::budget::TransferBudget;
use super::disk_cache::DiskCache;
use super::shared_tier::SharedTier;
use crate::store::{ObjectStore, StoreError};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use get_run::GetRest;
use parking_lot::Mutex;
pub use served::ServedBlocks;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
pub use whole_fetch::{BlockSink, WholeFetch};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
}

/// The object a read is about: its key, the ETag seen at open, and its size.
#[derive(Debug, Clone)]
pub struct ObjectVersion {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub size: u64,
}

type BlockResult = Result<Bytes, StoreError>;

/// What a read prefetches: the blocks up to `end`, their GETs limited by `gets` (a file's
/// sequential stream) or all at once (`None`); with `whole`, every block of the file not
/// cached yet, in order, through `gets`, at the reader's pace (see `whole_fetch.rs`).
#[derive(Default, Clone)]
pub struct Prefetch {
    pub end: u64,
    pub gets: Option<Arc<GetSlots>>,
    pub whole: Option<Arc<WholeFetch>>,
    /// The file's blocks handed out whole, which memory lets go (see `served.rs`).
    pub served: Option<Arc<ServedBlocks>>,
}

/// Room for a few prefetch GETs at once, handed out in the order the GETs were claimed,
/// so the GETs nearest the reader go first.
#[derive(Debug)]
pub struct GetSlots {
    turn: tokio::sync::Mutex<()>,
    slots: Arc<Semaphore>,
    gets: usize,
    /// Set when the file is closed: GETs still queued are dropped unless a reader waits.
    abandoned: AtomicBool,
}

impl GetSlots {
    pub fn new(gets: usize) -> Arc<GetSlots> {
        Arc::new(GetSlots {
            turn: tokio::sync::Mutex::new(()),
            slots: Arc::new(Semaphore::new(gets.max(1))),
            gets: gets.max(1),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Whether most of the slots are free: the window ahead is fetched, and GETs that take
    /// over a lagging one's blocks use a link that would otherwise sit idle.
    fn mostly_idle(&self) -> bool {
        self.slots.available_permits() * 2 >= self.gets
    }

    /// No one reads on: the prefetch GETs not yet started need not be.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Prefetch {
    /// No prefetch: only the blocks the read needs.
    pub fn none() -> Prefetch {
        Prefetch::default()
    }
}

/// A block being fetched: the pieces of its body received so far, then its outcome.
struct Progress {
    pieces: Vec<Bytes>,
    received: usize,
    /// The fewest bytes a waiting reader needs (registered by the readers through a
    /// shared borrow, hence atomic); `usize::MAX` when none waits.
    wanted: AtomicUsize,
    done: Option<BlockResult>,
    /// Its GET's blocks not reached yet (weak: those blocks' senders are in it).
    rest: Weak<GetRest>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            pieces: Vec::new(),
            received: 0,
            wanted: AtomicUsize::new(usize::MAX),
            done: None,
            rest: Weak::new(),
        }
    }
}

impl Progress {
    /// Bytes `range` of the block if they have arrived (copied only when they span pieces).
    fn take(&self, range: Range<usize>) -> Option<Bytes> {
        if self.received < range.end {
            return None;
        }
        let mut out = BytesMut::with_capacity(range.len());
        let mut offset = 0;
        for piece in &self.pieces {
            let (from, to) = (range.start.max(offset), range.end.min(offset + piece.len()));
            if from < to {
                let slice = piece.slice(from - offset..to - offset);
                if out.is_empty() && slice.len() == range.len() {
                    return Some(slice);
                }
                out.extend_from_slice(&slice);
            }
            offset += piece.len();
        }
        Some(out.freeze())
    }
}

/// Memory kept mapped in idle block buffers at most (and an eighth of the cache's budget).
const IDLE_BUFFERS_MAX: u64 = 64 << 20;

type PendingBlock = watch::Receiver<Progress>;
type BlockSender = watch::Sender<Progress>;

/// How long a reader waits on a block before it asks whether the block's GET lags.
const LAG_CHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

/// Told what each GET's headers say of its object (its user metadata among them), so
/// that a file read needs no HEAD for its mode and owner.
pub type DescribedSink = Arc<dyn Fn(&crate::store::ObjectMeta) + Send + Sync>;

pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    /// Set once by the filesystem that owns the cache.
    described_sink: std::sync::OnceLock<DescribedSink>,
    cache: moka::sync::Cache<BlockKey, Bytes>,
    pending: Mutex<HashMap<BlockKey, PendingBlock>>,
    pub block_size: u64,
    /// Largest range one GET asks for; longer runs of blocks are split.
    pub request_size: u64,
    pub stats: CacheStats,
    /// The persistent cache behind memory: checked before the network, filled from it.
    pub disk: Option<Arc<DiskCache>>,
    /// The shared cache tier behind the disk: checked before the origin, filled from it.
    pub shared: Option<Arc<SharedTier>>,
    /// Memory for ranges being received, shared with uploads.
    budget: Arc<TransferBudget>,
    /// The buffers blocks are assembled and read from disk into, reused.
    buffers: Arc<BlockBuffers>,
    /// How long the server takes to answer a GET or a listing.
    answer_time: answer_time::AnswerTime,
}

enum Slot {
    Ready(Bytes),
    Pending(PendingBlock),
}

impl BlockCache {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        budget: u64,
        block_size: u64,
        request_size: u64,
        disk: Option<Arc<DiskCache>>,
        shared: Option<Arc<SharedTier>>,
        transfers: Arc<TransferBudget>,
    ) -> Arc<BlockCache> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_: &BlockKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .support_invalidation_closures()
            // Plain LRU: TinyLFU admission turns away freshly prefetched blocks once the
            // cache is full, and they are then fetched again.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Arc::new(BlockCache {
            store,
            described_sink: std::sync::OnceLock::new(),
            cache,
            pending: Mutex::new(HashMap::new()),
            block_size,
            request_size: request_size.max(block_size),
            stats: CacheStats::default(),
            disk,
            shared,
            budget: transfers,
            buffers: BlockBuffers::new(
                usize::try_from(block_size).unwrap_or(usize::MAX),
                (budget / 8).min(IDLE_BUFFERS_MAX),
            ),
            answer_time: Default::default(),
        })
    }

    /// Where what GETs' headers say goes from now on (once; later calls are ignored).
    pub fn set_described_sink(&self, sink: DescribedSink) {
        let _ = self.described_sink.set(sink);
    }

    /// Whether the server is next to the mount, by the quickest of its recent answers:
    /// the distance to it, without the bodies' transfer or any wait (`answer_time.rs`).
    pub fn server_is_near(&self) -> bool {
        self.answer_time.near()
    }

    /// The first page of a listing came back `took` after it was asked for.
    pub fn listing_answered(&self, took: std::time::Duration) {
        self.answer_time.answered(took);
    }

    pub fn budget(&self) -> u64 {
        self.cache.policy().max_capacity().unwrap_or(0)
    }

    /// Whether a file of `size` bytes may be fetched whole ahead of its reads: it fits
    /// half of the disk cache (which keeps what memory evicts before it is read), or half
    /// of memory without one.
    pub fn may_fetch_whole(&self, size: u64) -> bool {
        let room = self.disk.as_ref().map_or(self.budget(), |d| d.budget());
        size <= room / 2
    }

    /// Drops a block from memory if the disk cache keeps it (written, or queued: a read in
    /// the moment before the write lands is served from the queue).
    pub(super) fn let_go_if_kept(&self, object: &ObjectVersion, index: u64) {
        if let Some(disk) = &self.disk
            && disk.keeps(&object.key, &object.etag, index)
        {
            self.cache.invalidate(&BlockKey {
                key: object.key.clone(),
                etag: object.etag.clone(),
                index,
            });
        }
    }

    /// Bytes of block data held now.
    pub fn used(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Reads `range` of the object (clamped to its size), and makes sure the blocks up to
    /// `prefetch.end` are fetched or being fetched.
    pub async fn read(
        self: &Arc<Self>,
        object: &ObjectVersion,
        range: Range<u64>,
        prefetch: Prefetch,
    ) -> Result<Bytes, StoreError> {
        let prefetch_end = prefetch.end;
        let gets = prefetch.gets.clone();
        let end = range.end.min(object.size);
        if range.start >= end {
            return Ok(Bytes::new());
        }
        let bs = self.block_size;
        let wanted = range.start / bs..end.div_ceil(bs);
        let last_block = object.size.div_ceil(bs);
        let mut ensure_end = prefetch_end
            .min(object.size)
            .div_ceil(bs)
            .max(wanted.end)
            .min(last_block);
        if let Some(whole) = &prefetch.whole {
            // Blocks read already are in the page cache: not brought back from the disk.
            ensure_end = whole.unread_until(wanted.end..ensure_end);
        }
        let slots = self.claim(object, wanted.start..ensure_end, wanted.end, &prefetch);
        if let (Some(whole), Some(gets)) = (&prefetch.whole, &prefetch.gets) {
            whole.read(wanted.clone());
            self.start_whole_fetch(object, whole, gets);
        }
        let mut pieces = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            let index = wanted.start + i as u64;
            let block_start = index * bs;
            let from = range.start.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(self.block_len(object, index) as usize);
            let piece = match slot {
                Slot::Ready(block) => Self::slice(&block, from..to),
                Slot::Pending(progress) => self.wait_for(object, progress, from..to, gets.as_deref()).await?,
            };
            pieces.push(piece.ok_or_else(|| StoreError::Other(format!("short block {index} of {}", object.key)))?);
        }
        if let Some(served) = &prefetch.served
            && self
                .disk
                .as_ref()
                .is_some_and(|disk| disk.takes_object_file(object.size, bs))
        {
            // Only where the disk cache keeps them (written, or queued: a read in the
            // moment before the write lands is served from the queue): a reader that bypasses
            // the page cache (O_DIRECT) reads them again from the disk. Only for large
            // files (the disk cache's object files), whose blocks filled memory: a small
            // file's block held in memory serves its next epoch on the same mount.
            for index in served.served(range.start..end, bs, object.size) {
                self.let_go_if_kept(object, index);
            }
        }
        // Kernel reads are aligned and at most one block long: usually one piece, handed
        // out without a copy.
        Ok(match pieces.len() {
            1 => pieces.pop().unwrap_or_default(),
            _ => Bytes::from(pieces.concat()),
        })
    }

    fn slice(block: &Bytes, range: Range<usize>) -> Option<Bytes> {
        (range.start < range.end && range.end <= block.len()).then(|| block.slice(range))
    }

    /// Waits until bytes `range` of a block being fetched have arrived, or its fetch ended.
    /// While it waits and the file's link is mostly idle, it lets a lagging GET be taken
    /// over (see `get_run`).
    async fn wait_for(
        self: &Arc<Self>,
        object: &ObjectVersion,
        mut progress: PendingBlock,
        range: Range<usize>,
        gets: Option<&GetSlots>,
    ) -> Result<Option<Bytes>, StoreError> {
        loop {
            let arrived = progress.wait_for(|p| {
                let ready = p.done.is_some() || p.received >= range.end;
                // The GET keeps the bytes it reads to itself until a reader waits for
                // them: told so, it hands over what is in.
                if !ready
                    && p.wanted.fetch_min(range.end, Ordering::AcqRel) > range.end
                    && let Some(rest) = p.rest.upgrade()
                {
                    rest.reader_waits.notify_one();
                }
                ready
            });
            let outcome = match tokio::time::timeout(LAG_CHECK, arrived).await {
                Ok(Ok(state)) => Some(match &state.done {
                    Some(Ok(block)) => Ok(Self::slice(block, range.clone())),
                    Some(Err(e)) => Err(e.clone()),
                    None => Ok(state.take(range.clone())),
                }),
                Ok(Err(_)) => Some(Err(StoreError::Other("block fetch was dropped".into()))),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            let rest = progress.borrow().rest.upgrade();
            if let Some(rest) = rest
                && gets.is_some_and(GetSlots::mostly_idle)
            {
                self.take_over_if_lagging(object, &rest);
            }
        }
    }

    /// Returns a slot for each block in `blocks` below `wanted_end`, and starts fetches for
    /// every missing block of `blocks`, the prefetch included: GETs with a wanted block at
    /// once, the others in order as `gets` has room.
    fn claim(
        self: &Arc<Self>,
        object: &ObjectVersion,
        blocks: Range<u64>,
        wanted_end: u64,
        prefetch: &Prefetch,
    ) -> Vec<Slot> {
        let served = prefetch.served.as_deref();
        self.claim_blocks(object, blocks, wanted_end, prefetch.gets.clone(), served, true)
    }

    /// [`claim`](Self::claim), counting the wanted blocks as cache hits and misses only
    /// when a reader wants them (`count`).
    fn claim_blocks(
        self: &Arc<Self>,
        object: &ObjectVersion,
        blocks: Range<u64>,
        wanted_end: u64,
        gets: Option<Arc<GetSlots>>,
        served: Option<&ServedBlocks>,
        count: bool,
    ) -> Vec<Slot> {
        let mut slots = Vec::new();
        let mut missing: Vec<(u64, BlockSender)> = Vec::new();
        {
            let mut pending = self.pending.lock();
            for index in blocks.clone() {
                let key = BlockKey {
                    key: object.key.clone(),
                    etag: object.etag.clone(),
                    index,
                };
                // Fetches insert into the cache before they leave `pending`, so a block in
                // neither is truly missing.
                let slot = match pending.get(&key) {
                    Some(p) => Some(Slot::Pending(p.clone())),
                    None => self.cache.get(&key).map(Slot::Ready),
                };
                // The window ends at a block a read served whole and memory let go (a
                // read behind it came late): asked here, after the cache missed it, as the
                // read marks it served before letting it go.
                if slot.is_none() && index >= wanted_end && served.is_some_and(|s| s.served_lately(index)) {
                    break;
                }
                let slot = match slot {
                    Some(s) => {
                        if count && index < wanted_end {
                            self.stats.hits.fetch_add(1, Ordering::Relaxed);
                        }
                        s
                    }
                    None => {
                        if count && index < wanted_end {
                            self.stats.misses.fetch_add(1, Ordering::Relaxed);
                        }
                        let (tx, rx) = watch::channel(Progress::default());
                        pending.insert(key, rx.clone());
                        missing.push((index, tx));
                        Slot::Pending(rx)
                    }
                };
                if index < wanted_end {
                    slots.push(slot);
                }
            }
        }
        let (wanted, ahead): (Vec<_>, Vec<_>) = self
            .runs(missing)
            .into_iter()
            .partition(|run| gets.is_none() || run[0].0 < wanted_end);
        for run in wanted {
            let Some(run) = self.read_from_disk_here(object, run) else {
                continue;
            };
            let this = self.clone();
            let object = object.clone();
            tokio::spawn(async move { this.fetch(object, run).await });
        }
        if let Some(gets) = gets.filter(|_| !ahead.is_empty()) {
            let this = self.clone();
            let object = object.clone();
            // Claims take their turns in order (the lock is fair), and each its runs.
            tokio::spawn(async move {
                let _turn = gets.turn.lock().await;
                for run in ahead {
                    let slot = gets.slots.clone().acquire_owned().await.expect("never closed");
                    if gets.abandoned.load(Ordering::Relaxed) && this.unclaim_unwanted(&object, &run) {
                        continue;
                    }
                    let (this, object) = (this.clone(), object.clone());
                    tokio::spawn(async move {
                        this.fetch(object, run).await;
                        drop(slot);
                    });
                }
            });
        }
        slots
    }

    /// Where this thread may wait for the disk (a FUSE thread's first poll of a request,
    /// `disk_wait.rs`), reads the run's blocks the disk cache holds, in order, right here
    /// and publishes them; returns the rest of the run (from the first block not read),
    /// `None` if nothing is left.
    fn read_from_disk_here(
        &self,
        object: &ObjectVersion,
        run: Vec<(u64, BlockSender)>,
    ) -> Option<Vec<(u64, BlockSender)>> {
        let disk = match &self.disk {
            Some(disk) if super::disk_wait::allowed() => disk,
            _ => return Some(run),
        };
        let mut run = run.into_iter();
        while let Some((index, tx)) = run.next() {
            let block = disk
                .keeps(&object.key, &object.etag, index)
                .then(|| disk.get(&object.key, &object.etag, index, &self.buffers))
                .flatten()
                .filter(|block| block.len() as u64 == self.block_len(object, index));
            match block {
                Some(block) => self.publish(object, index, Ok(block), tx),
                None => return Some(std::iter::once((index, tx)).chain(run).collect()),
            }
        }
        None
    }

    /// Gives up the claim on a run of blocks no reader waits for (only the pending map
    /// holds a receiver; readers take theirs under the same lock); false if one waits.
    fn unclaim_unwanted(&self, object: &ObjectVersion, run: &[(u64, BlockSender)]) -> bool {
        let mut pending = self.pending.lock();
        if run.iter().any(|(_, tx)| tx.receiver_count() > 1) {
            return false;
        }
        for (index, _) in run {
            pending.remove(&BlockKey {
                key: object.key.clone(),
                etag: object.etag.clone(),
                index: *index,
            });
        }
        true
    }

    /// Consecutive missing blocks, split into runs that do not cross a multiple of
    /// `request_size`: a sequential reader's refills then are whole GETs, not a GET and a
    /// sliver.
    fn runs(&self, missing: Vec<(u64, BlockSender)>) -> Vec<Vec<(u64, BlockSender)>> {
        let per_request = (self.request_size / self.block_size).max(1);
        let mut runs: Vec<Vec<_>> = Vec::new();
        for (index, tx) in missing {
            match runs.last_mut() {
                Some(run) if index % per_request != 0 && run.last().is_some_and(|(i, _)| i + 1 == index) => {
                    run.push((index, tx))
                }
                _ => runs.push(vec![(index, tx)]),
            }
        }
        runs
    }

    /// Serves a run of blocks from the disk cache where it has them, and the rest from the
    /// network, one GET per consecutive stretch. Each disk block is published as soon as
    /// it is read, so a reader starts on the first while the next ones are read.
    async fn fetch(self: Arc<Self>, object: ObjectVersion, run: Vec<(u64, BlockSender)>) {
        let Some(disk) = self.disk.clone() else {
            return self.fetch_beyond_disk(object, run).await;
        };
        // A run none of whose blocks is on disk (every run of a cold read) goes on without
        // a trip through the blocking pool: with 10,000 small files read by 32 workers,
        // that handoff per file was a good part of the daemon's CPU.
        if !run
            .iter()
            .any(|(index, _)| disk.keeps(&object.key, &object.etag, *index))
        {
            disk.count_misses(run.len());
            return self.fetch_beyond_disk(object, run).await;
        }
        let (found_tx, mut found) = tokio::sync::mpsc::unbounded_channel();
        let indexes: Vec<u64> = run.iter().map(|(i, _)| *i).collect();
        let (key, etag, buffers) = (object.key.clone(), object.etag.clone(), self.buffers.clone());
        tokio::task::spawn_blocking(move || {
            for index in indexes {
                if found_tx.send(disk.get(&key, &etag, index, &buffers)).is_err() {
                    return;
                }
            }
        });
        let mut stretch: Vec<(u64, BlockSender)> = Vec::new();
        for (index, tx) in run {
            // None from the channel: the blocking task ended early; the network serves.
            match found.recv().await.flatten() {
                Some(block) if block.len() as u64 == self.block_len(&object, index) => {
                    self.publish(&object, index, Ok(block), tx)
                }
                _ => {
                    if stretch.last().is_some_and(|last| last.0 + 1 != index) {
                        self.clone()
                            .fetch_beyond_disk(object.clone(), std::mem::take(&mut stretch))
                            .await;
                    }
                    stretch.push((index, tx));
                }
            }
        }
        if !stretch.is_empty() {
            self.fetch_beyond_disk(object, stretch).await;
        }
    }

    /// Consecutive blocks no local cache has: from the shared tier where it has them (all
    /// asked at once, published in order as they come), the rest from the origin, one GET
    /// per consecutive stretch.
    async fn fetch_beyond_disk(self: Arc<Self>, object: ObjectVersion, run: Vec<(u64, BlockSender)>) {
        let Some(tier) = self.shared.clone().filter(|t| t.usable()) else {
            return self.fetch_remote(object, run).await;
        };
        let mut lookups: FuturesOrdered<_> = run
            .iter()
            .map(|(index, _)| {
                let (tier, object, index) = (tier.clone(), object.clone(), *index);
                let (block_size, len) = (self.block_size, self.block_len(&object, index));
                async move { tier.get(&object, block_size, index, len).await }
            })
            .collect();
        let mut from_origin: Vec<(u64, BlockSender)> = Vec::new();
        for (index, tx) in run {
            match lookups.next().await.flatten() {
                Some(data) => {
                    if !from_origin.is_empty() {
                        let (this, object) = (self.clone(), object.clone());
                        tokio::spawn(this.fetch_remote(object, std::mem::take(&mut from_origin)));
                    }
                    let block = self.assemble(&[data], self.block_len(&object, index) as usize);
                    let block = self.keep_on_disk(&object, index, block);
                    self.publish(&object, index, Ok(block.share()), tx);
                }
                None => from_origin.push((index, tx)),
            }
        }
        if !from_origin.is_empty() {
            self.fetch_remote(object, from_origin).await;
        }
    }

    fn block_len(&self, object: &ObjectVersion, index: u64) -> u64 {
        let start = index * self.block_size;
        self.block_size.min(object.size.saturating_sub(start))
    }

    /// One block from the pieces its body arrived in, in a reused buffer. Always a copy:
    /// a piece may be a slice of a larger receive buffer, which the cache must not keep
    /// alive.
    fn assemble(&self, pieces: &[Bytes], len: usize) -> BlockBuffer {
        let mut block = self.buffers.take(len);
        let mut at = DATA_OFFSET;
        for piece in pieces {
            block.as_mut()[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        block.set_len(at - DATA_OFFSET);
        block
    }

    /// A block received whole from the origin: counted, written to the disk cache and the
    /// shared tier in the background, and published.
    fn keep(&self, object: &ObjectVersion, index: u64, block: BlockBuffer, tx: BlockSender) {
        self.stats
            .fetched_bytes
            .fetch_add(block.data().len() as u64, Ordering::Relaxed);
        let block = self.keep_on_disk(object, index, block);
        if let Some(tier) = &self.shared {
            tier.put_later(object, self.block_size, index, block.share());
        }
        self.publish(object, index, Ok(block.share()), tx);
    }

    /// Writes a block to the disk cache in the background; returns it, now to share.
    fn keep_on_disk(&self, object: &ObjectVersion, index: u64, block: BlockBuffer) -> Arc<BlockBuffer> {
        match &self.disk {
            Some(disk) => disk.put_later(object, self.block_size, index, block),
            None => Arc::new(block),
        }
    }

    fn publish(&self, object: &ObjectVersion, index: u64, result: BlockResult, tx: BlockSender) {
        let key = BlockKey {
            key: object.key.clone(),
            etag: object.etag.clone(),
            index,
        };
        if let Ok(block) = &result {
            self.cache.insert(key.clone(), block.clone());
            // Evict now rather than when moka's housekeeping gets to it: a fast reader
            // otherwise runs the cache past its budget for a while (RSS peaks of 2-3x
            // `--memory-limit` in tests/it/mount_memory.rs).
            self.cache.run_pending_tasks();
        }
        self.pending.lock().remove(&key);
        tx.send_modify(|p| {
            p.pieces.clear();
            p.done = Some(result);
        });
    }

    /// Drops every cached block of `key` (after it was replaced or deleted).
    pub fn forget_object(&self, key: &str) {
        let key: Arc<str> = Arc::from(key);
        let _ = self.cache.invalidate_entries_if(move |k, _| k.key == key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PutOptions;
    use crate::store::memory::MemoryStore;

    /// Lets the spawned fetches of a single-threaded test runtime run as far as they can.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    fn ahead(end: u64) -> Prefetch {
        Prefetch {
            end,
            gets: None,
            whole: None,
            served: None,
        }
    }

    pub async fn setup(len: usize) -> (Arc<MemoryStore>, Arc<BlockCache>, ObjectVersion, Vec<u8>) {
        let store = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let etag = store
            .put("obj", Bytes::from(data.clone()), &PutOptions::default())
            .await
            .unwrap();
        let cache = BlockCache::new(
            store.clone(),
            1 << 30,
            1000,
            4000,
            None,
            None,
            TransferBudget::new(1 << 20),
        );
        let object = ObjectVersion {
            key: "obj".into(),
            etag: etag.into(),
            size: len as u64,
        };
        (store, cache, object, data)
    }

    /// A read on a thread that may wait for the disk (a FUSE thread's first poll) gets the
    /// blocks the disk cache holds right there: done on its first poll. Elsewhere its
    /// first poll waits for a fetch on the runtime.
    #[tokio::test]
    async fn blocks_on_disk_are_read_in_place_where_the_thread_may_wait() {
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().unwrap();
        let (store, _, object, data) = setup(3_000).await;
        let disk = Arc::new(DiskCache::open(dir.path(), "b", 1 << 30, 0, 16).unwrap());
        let cache = BlockCache::new(
            store.clone(),
            1 << 30,
            1000,
            4000,
            Some(disk.clone()),
            None,
            TransferBudget::new(1 << 20),
        );
        cache.read(&object, 0..3_000, Prefetch::none()).await.unwrap();
        for _ in 0..500 {
            if (0..3).all(|i| disk.holds("obj", &object.etag, i)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let gets = store.requests("get");
        let mut first_poll = Context::from_waker(Waker::noop());
        cache.forget_object("obj");
        let mut read = Box::pin(cache.read(&object, 1_000..2_000, Prefetch::none()));
        match super::super::disk_wait::allowing(|| read.as_mut().poll(&mut first_poll)) {
            Poll::Ready(Ok(got)) => assert_eq!(&got[..], &data[1_000..2_000]),
            _ => panic!("not read in place"),
        }
        cache.forget_object("obj");
        let mut read = Box::pin(cache.read(&object, 0..1_000, Prefetch::none()));
        assert!(read.as_mut().poll(&mut first_poll).is_pending());
        assert_eq!(&read.await.unwrap()[..], &data[..1_000]);
        assert_eq!(store.requests("get"), gets, "from the disk both times");
    }

    /// Blocks a reader was served whole leave memory when the disk cache keeps them, and
    /// a window ahead of a late read stops at the first of them (`served.rs`).
    #[tokio::test]
    async fn blocks_served_whole_leave_memory_and_are_not_prefetched_again() {
        let dir = tempfile::tempdir().unwrap();
        // Blocks of 4 KiB (as the disk cache's object files need), 20 of them: a file
        // large enough for one (small files keep their blocks in memory).
        const B: u64 = 4096;
        let (store, _, object, _) = setup(20 * B as usize).await;
        let disk = Arc::new(DiskCache::open(dir.path(), "b", 1 << 30, 0, 16).unwrap());
        let cache = BlockCache::new(
            store.clone(),
            1 << 30,
            B,
            4 * B,
            Some(disk),
            None,
            TransferBudget::new(1 << 20),
        );
        let served = Arc::new(ServedBlocks::default());
        let reading = |end| Prefetch {
            end,
            gets: None,
            whole: None,
            served: Some(served.clone()),
        };
        let in_memory = |index| {
            cache.cache.contains_key(&BlockKey {
                key: object.key.clone(),
                etag: object.etag.clone(),
                index,
            })
        };
        cache.read(&object, 0..2 * B + B / 2, reading(0)).await.unwrap();
        assert!(!in_memory(0) && !in_memory(1), "served whole: let go");
        assert!(in_memory(2), "served in part: kept");
        // Read-ahead served block 5 before the read of block 3, whose window reaches 9.
        cache.read(&object, 5 * B..6 * B, reading(0)).await.unwrap();
        cache.read(&object, 3 * B..3 * B + 10, reading(10 * B)).await.unwrap();
        settle().await;
        let mut starts = store.get_starts();
        starts.sort_unstable();
        assert_eq!(starts, [0, 3 * B, 4 * B, 5 * B], "the window stopped at block 5");
    }

    #[tokio::test]
    async fn reads_any_range_and_fetches_each_block_once() {
        let (store, cache, object, data) = setup(10_500).await;
        for (a, b) in [(0, 10), (999, 1001), (2500, 9000), (10_000, 20_000), (0, 10_500)] {
            let got = cache.read(&object, a..b, Prefetch::none()).await.unwrap();
            assert_eq!(&got[..], &data[a as usize..(b as usize).min(data.len())]);
        }
        // 11 blocks, fetched in runs that do not cross a multiple of 4 blocks: 0, 1, 2-3,
        // 4-7, 8, 10, 9.
        assert_eq!(store.requests("get"), 7);
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch() {
        let (store, cache, object, data) = setup(4000).await;
        let reads = (0..16).map(|_| cache.read(&object, 0..4000, Prefetch::none()));
        for got in futures::future::join_all(reads).await {
            assert_eq!(&got.unwrap()[..], &data[..]);
        }
        assert_eq!(store.requests("get"), 1);
    }

    #[tokio::test]
    async fn prefetch_fills_ahead() {
        let (store, cache, object, _) = setup(8000).await;
        cache.read(&object, 0..10, ahead(8000)).await.unwrap();
        tokio::task::yield_now().await;
        let before = store.requests("get");
        cache.read(&object, 4000..8000, ahead(8000)).await.unwrap();
        assert_eq!(store.requests("get"), before);
    }

    #[tokio::test]
    async fn prefetch_gets_wait_for_a_slot_and_go_in_order() {
        let (store, cache, object, data) = setup(20_000).await;
        let gate = store.hold_gets();
        let gets = GetSlots::new(2);
        let reader = {
            let (cache, object) = (cache.clone(), object.clone());
            let prefetch = Prefetch {
                end: 20_000,
                gets: Some(gets),
                whole: None,
                served: None,
            };
            tokio::spawn(async move { cache.read(&object, 0..10, prefetch).await })
        };
        settle().await;
        // The read's own GET goes at once, two prefetch GETs take the slots, two wait.
        assert_eq!(store.get_starts(), [0, 4000, 8000]);
        // The read's GET holds no slot: answering it starts nothing new.
        gate.add_permits(1);
        settle().await;
        assert_eq!(&reader.await.unwrap().unwrap()[..], &data[..10]);
        assert_eq!(store.get_starts(), [0, 4000, 8000]);
        // A prefetch GET that ends hands its slot to the next one, nearest first.
        gate.add_permits(1);
        settle().await;
        assert_eq!(store.get_starts(), [0, 4000, 8000, 12000]);
        gate.add_permits(10);
        settle().await;
        assert_eq!(store.get_starts(), [0, 4000, 8000, 12000, 16000]);
        let all = cache.read(&object, 0..20_000, Prefetch::none()).await.unwrap();
        assert_eq!(&all[..], &data[..]);
        assert_eq!(store.requests("get"), 5);
    }

    #[tokio::test]
    async fn a_file_read_at_random_is_fetched_whole_in_order_after_the_wanted_block() {
        let (store, cache, object, data) = setup(20_000).await;
        let gate = store.hold_gets();
        let prefetch = Prefetch {
            end: 12_010,
            gets: Some(GetSlots::new(2)),
            whole: Some(cache.whole_fetch(&object)),
            served: None,
        };
        let reader = {
            let (cache, object) = (cache.clone(), object.clone());
            tokio::spawn(async move { cache.read(&object, 12_000..12_010, prefetch).await })
        };
        settle().await;
        // The wanted block at once, then the rest from the start, two at a time.
        assert_eq!(store.get_starts(), [12000, 0, 4000]);
        // A read further on does not wait for its turn: its block is fetched at once.
        let later = {
            let (cache, object) = (cache.clone(), object.clone());
            tokio::spawn(async move { cache.read(&object, 17_000..17_010, Prefetch::none()).await })
        };
        settle().await;
        assert_eq!(store.get_starts(), [12000, 0, 4000, 17000]);
        gate.add_permits(10);
        settle().await;
        assert_eq!(&reader.await.unwrap().unwrap()[..], &data[12_000..12_010]);
        assert_eq!(&later.await.unwrap().unwrap()[..], &data[17_000..17_010]);
        // 13000: the rest of the wanted block's GET (blocks 13-15); 16000 and 18000
        // around the later read's block.
        assert_eq!(store.get_starts(), [12000, 0, 4000, 17000, 8000, 13000, 16000, 18000]);
        // Every block is in: reads in any order cost no request.
        let all = cache.read(&object, 0..20_000, Prefetch::none()).await.unwrap();
        assert_eq!(&all[..], &data[..]);
        assert_eq!(store.requests("get"), 8);
    }

    #[tokio::test]
    async fn a_file_fetched_whole_stays_within_its_room_ahead_of_the_reader() {
        let (store, cache, object, data) = setup(20_000).await;
        // Room for one GET's four blocks ahead of the reader, over a fast link.
        let whole = WholeFetch::new(20, 4);
        whole.timed(4, Duration::from_millis(1));
        let gets = GetSlots::new(4);
        // Each read prefetches nothing of its own: every GET but the wanted ones is the
        // whole-file fetch's.
        let paced = || Prefetch {
            end: 0,
            gets: Some(gets.clone()),
            whole: Some(whole.clone()),
            served: None,
        };
        let got = cache.read(&object, 12_000..12_010, paced()).await.unwrap();
        assert_eq!(&got[..], &data[12_000..12_010]);
        settle().await;
        // The wanted block's GET, then one run from the start; the next waits for room.
        assert_eq!(store.get_starts(), [12000, 0]);
        let got = cache.read(&object, 0..4000, paced()).await.unwrap();
        assert_eq!(&got[..], &data[..4000]);
        settle().await;
        assert_eq!(store.get_starts(), [12000, 0, 4000]);
        // Closing the file ends the fetch that waits for room.
        whole.abandon();
        cache.read(&object, 4000..8000, paced()).await.unwrap();
        settle().await;
        assert_eq!(store.get_starts(), [12000, 0, 4000]);
    }

    #[tokio::test]
    async fn fetching_a_file_whole_stops_after_a_failed_get() {
        let (store, cache, object, data) = setup(20_000).await;
        let gate = store.hold_gets();
        let prefetch = Prefetch {
            end: 12_010,
            gets: Some(GetSlots::new(1)),
            whole: Some(cache.whole_fetch(&object)),
            served: None,
        };
        let reader = {
            let (cache, object) = (cache.clone(), object.clone());
            tokio::spawn(async move { cache.read(&object, 12_000..12_010, prefetch).await })
        };
        settle().await;
        assert_eq!(store.get_starts(), [12000, 0], "the wanted block, then the first run");
        // The object goes away: every GET from now on fails.
        store.delete("obj").await.unwrap();
        let before = store.requests("get");
        gate.add_permits(10);
        settle().await;
        assert_eq!(&reader.await.unwrap().unwrap()[..], &data[12_000..12_010]);
        assert_eq!(
            store.requests("get") - before,
            1,
            "one failed GET, not one per remaining run"
        );
    }

    #[tokio::test]
    async fn queued_prefetch_gets_of_a_closed_file_are_dropped_unless_awaited() {
        let (store, cache, object, data) = setup(20_000).await;
        let gate = store.hold_gets();
        let gets = GetSlots::new(1);
        let prefetch = Prefetch {
            end: 20_000,
            gets: Some(gets.clone()),
            whole: None,
            served: None,
        };
        let first = {
            let (cache, object) = (cache.clone(), object.clone());
            tokio::spawn(async move { cache.read(&object, 0..10, prefetch).await })
        };
        settle().await;
        assert_eq!(store.get_starts(), [0, 4000]);
        // Another reader waits for a block whose GET is queued (8000-11999).
        let waiting = {
            let (cache, object) = (cache.clone(), object.clone());
            tokio::spawn(async move { cache.read(&object, 9000..9010, Prefetch::none()).await })
        };
        settle().await;
        gets.abandon();
        gate.add_permits(100);
        settle().await;
        assert_eq!(&first.await.unwrap().unwrap()[..], &data[..10]);
        assert_eq!(&waiting.await.unwrap().unwrap()[..], &data[9000..9010]);
        // The awaited GET went; the two nobody waited for did not.
        assert_eq!(store.get_starts(), [0, 4000, 8000]);
        // Their blocks are not left claimed: a later read fetches them.
        let rest = cache.read(&object, 12_000..20_000, Prefetch::none());
        let rest = tokio::time::timeout(std::time::Duration::from_secs(10), rest)
            .await
            .expect("blocks left claimed")
            .unwrap();
        assert_eq!(&rest[..], &data[12_000..20_000]);
        assert_eq!(store.get_starts(), [0, 4000, 8000, 12_000, 16_000]);
    }

    #[tokio::test]
    async fn a_replaced_object_is_never_mixed() {
        let (store, cache, object, _) = setup(3000).await;
        cache.read(&object, 0..1000, Prefetch::none()).await.unwrap();
        store
            .put("obj", Bytes::from(vec![1u8; 3000]), &PutOptions::default())
            .await
            .unwrap();
        let err = cache.read(&object, 1000..3000, Prefetch::none()).await.unwrap_err();
        assert_eq!(err, StoreError::PreconditionFailed);
    }
}
