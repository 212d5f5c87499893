//! The persistent block cache on local disk: blocks keyed by bucket, key, ETag and index,
//! appended as records (`disk_cache/record.rs`: identity and CRC32 in a header page,
//! verified on every read; a corrupt block is dropped and refetched, never served) to
//! segment files (`disk_cache/segments.rs`). The size stays under a budget and a minimum
//! of free disk space is kept by removing the oldest segment as records are added; a
//! block read from the oldest quarter of the cache is written again at its head, so that
//! what is read again and again stays while what was read once goes first.
//!
//! A large object's blocks go instead to one file of its own at their offsets
//! (`disk_cache/objects.rs`, each block's CRC32 in the file's index), which once whole is
//! handed to the kernel to read directly (FUSE passthrough, `whole_file`).
//!
//! Records are written and read with O_DIRECT (where the filesystem offers it) straight
//! from and into the block's buffer: through the page cache, the copy into it was half of
//! the daemon's CPU on a cold read, and reading back a copy out of it plus fresh buffers
//! most of a read after a remount.

mod free_space;
mod objects;
mod record;
mod segments;
mod write_queue;

use super::block_buffers::{BlockBuffer, BlockBuffers, DATA_OFFSET, round_up};
use super::blocks::ObjectVersion;
use crate::cache_dir::{BLOCKS, create_private_dirs};
use bytes::Bytes;
use parking_lot::Mutex;
use segments::{Entry, Name};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use write_queue::{QueuedRecord, Start, WriteQueue};

/// Blocks waiting for or under way to the disk at the least; beyond the pending budget
/// new blocks are not cached rather than slowing reads down.
const PENDING_WRITES_MIN: usize = 16;
/// A segment is filled up to this, or an eighth of the budget if less: the cache gives
/// back space a segment at a time.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Segments kept open for reading.
const OPEN_READERS: usize = 64;
/// Segments filled at once. Writes that extend one file wait for each other (ext4 takes
/// the inode's lock for them): with one, a cold read at 1 GiB/s left 40 % of its blocks
/// uncached for want of a write slot.
const LANES: usize = 4;
/// Objects of at least this many blocks get a file of their own (the kernel reads it
/// directly once whole); a smaller one's few reads cost little through the daemon, and
/// a file per object cost ext4 0.4 ms of CPU each to create (item 48).
const OBJECT_FILE_MIN_BLOCKS: u64 = 16;
/// An object file's index is written again after this many new blocks (and when whole):
/// blocks written since the last one are fetched again after a crash, never trusted.
const OBJECT_INDEX_EVERY: u32 = 32;

#[derive(Default)]
pub struct DiskStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
    /// Opens the kernel reads from a whole object file (FUSE passthrough).
    pub passthrough_opens: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    seq: u64,
    offset: u64,
    size: u64,
    /// `Some` for a block of an object file: its data alone at `offset`, `size` bytes,
    /// with this CRC32 (a record carries its own in its header page).
    crc: Option<u32>,
}

/// An object file's state: its index as written so far.
struct ObjectFile {
    index: objects::ObjectIndex,
    /// Blocks written since the index was last saved.
    unsaved: u32,
}

struct Segment {
    /// Bytes handed out: written, being written, or given up by a failed write.
    len: u64,
    /// Blocks written into it (some may live elsewhere by now).
    names: Vec<Name>,
    /// Writes under way.
    pending: u32,
    /// Where records are appended, until the segment is filled and its index written
    /// (a segment found at mount time has none: it is never appended to again).
    appender: Option<Arc<File>>,
    /// `Some` if this is an object file rather than a segment of records.
    object: Option<ObjectFile>,
}

impl Segment {
    /// A segment or object file that is not appended to: found at mount time, or an
    /// object file (written into at its blocks' offsets).
    fn settled(len: u64, names: Vec<Name>, object: Option<ObjectFile>) -> Segment {
        Segment {
            len,
            names,
            pending: 0,
            appender: None,
            object,
        }
    }
}

#[derive(Default)]
struct State {
    blocks: HashMap<Name, Location>,
    segments: BTreeMap<u64, Segment>,
    /// The segments records are appended to, one per lane.
    active: [Option<u64>; LANES],
    /// The lane the next write goes to.
    next_lane: usize,
    next_seq: u64,
    /// Bytes of every segment (records given up or written again elsewhere included,
    /// until their segment goes).
    used: u64,
    /// Blocks queued for the disk and not written yet, served from here meanwhile.
    writing: HashMap<Name, Arc<BlockBuffer>>,
    /// The object file of each object that has one, by its identity.
    objects: HashMap<String, u64>,
}

impl State {
    /// The records segment `seq` holds now, for its index.
    fn entries(&self, seq: u64) -> Vec<Entry> {
        let Some(segment) = self.segments.get(&seq) else {
            return Vec::new();
        };
        segment
            .names
            .iter()
            .filter_map(|name| {
                let at = self.blocks.get(name).filter(|at| at.seq == seq)?;
                Some(Entry {
                    name: *name,
                    offset: at.offset,
                    size: at.size,
                })
            })
            .collect()
    }

    /// Whether `seq` is among the oldest quarter of the segments of a cache three
    /// quarters full: the next to go.
    fn near_eviction(&self, seq: u64, budget: u64) -> bool {
        let Some(&oldest) = self.segments.keys().next() else {
            return false;
        };
        self.used >= budget / 4 * 3 && self.segments.len() >= 4 && seq < oldest + (self.next_seq - oldest) / 4
    }

    fn is_active(&self, seq: u64) -> bool {
        self.active.contains(&Some(seq))
    }

    /// Takes `seq` out of the lanes, if it is filled in one.
    fn retire(&mut self, seq: u64) {
        for lane in &mut self.active {
            if *lane == Some(seq) {
                *lane = None;
            }
        }
    }
}

/// Where a block is written: appended to a segment behind its header page (in the
/// buffer already), or at its offset in its object's file.
enum Destination {
    Segment,
    Object(ObjectSpot),
}

struct ObjectSpot {
    identity: String,
    size: u64,
    block_size: u64,
    index: u64,
}

/// Where a record goes: reserved in a segment, written outside the lock.
struct Slot {
    seq: u64,
    offset: u64,
    appender: Arc<File>,
}

pub struct DiskCache {
    dir: PathBuf,
    /// The disk's free space, for the floor.
    free: free_space::FreeSpace,
    bucket: String,
    budget: u64,
    min_free: u64,
    segment_bytes: u64,
    /// Cleared when the filesystem turns O_DIRECT I/O down: plain I/O from then on.
    direct: AtomicBool,
    state: Mutex<State>,
    readers: Mutex<lru::LruCache<u64, Arc<File>>>,
    writes: Arc<Semaphore>,
    /// The permits of `writes`: all of them back, no write is under way.
    write_slots: usize,
    /// Records waiting for a segment.
    records: WriteQueue,
    index_writes: Mutex<()>,
    pub stats: DiskStats,
}

impl DiskCache {
    /// Opens the cache under `root/blocks`, indexing what earlier mounts left (at mount
    /// time, never on the read path). `pending_writes` blocks may wait for the disk at
    /// once (each holds its buffer until written, beyond the memory cache's budget if it
    /// evicted the block meanwhile).
    pub fn open(
        root: &Path,
        bucket: &str,
        budget: u64,
        min_free: u64,
        pending_writes: usize,
    ) -> std::io::Result<DiskCache> {
        let dir = root.join(BLOCKS);
        create_private_dirs(&dir)?;
        let mut state = State::default();
        for found in segments::load(&dir)? {
            if !found.indexed {
                // Read header by header this once; the next mount reads the index.
                let _ = segments::write_index(&dir, found.seq, &found.entries);
            }
            for e in &found.entries {
                let at = Location {
                    seq: found.seq,
                    offset: e.offset,
                    size: e.size,
                    crc: None,
                };
                state.blocks.insert(e.name, at);
            }
            state.used += found.len;
            state.next_seq = state.next_seq.max(found.seq + 1);
            let names = found.entries.iter().map(|e| e.name).collect();
            state
                .segments
                .insert(found.seq, Segment::settled(found.len, names, None));
        }
        for found in objects::load(&dir)? {
            let mut names = Vec::with_capacity(found.index.blocks.len());
            for &(index, crc) in &found.index.blocks {
                let name = segments::name_of(format!("{}\0{index}", found.index.identity).as_bytes());
                let at = Location {
                    seq: found.seq,
                    offset: index * found.index.block_size,
                    size: found.index.block_len(index),
                    crc: Some(crc),
                };
                state.blocks.insert(name, at);
                names.push(name);
            }
            state.used += found.len;
            state.next_seq = state.next_seq.max(found.seq + 1);
            state.objects.insert(found.index.identity.clone(), found.seq);
            let object = ObjectFile {
                index: found.index,
                unsaved: 0,
            };
            state
                .segments
                .insert(found.seq, Segment::settled(found.len, names, Some(object)));
        }
        let cache = DiskCache {
            free: free_space::FreeSpace::new(dir.clone()),
            dir,
            bucket: bucket.to_string(),
            budget,
            min_free,
            segment_bytes: (budget / 8).clamp(DATA_OFFSET as u64, SEGMENT_BYTES),
            direct: AtomicBool::new(true),
            state: Mutex::new(state),
            readers: Mutex::new(lru::LruCache::new(OPEN_READERS.try_into().expect("not zero"))),
            writes: Arc::new(Semaphore::new(pending_writes.max(PENDING_WRITES_MIN))),
            write_slots: pending_writes.max(PENDING_WRITES_MIN),
            records: WriteQueue::default(),
            index_writes: Mutex::new(()),
            stats: DiskStats::default(),
        };
        cache.evict(0);
        Ok(cache)
    }

    pub fn used(&self) -> u64 {
        self.state.lock().used
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn identity(&self, key: &str, etag: &str, index: u64) -> String {
        format!("{}\0{index}", self.object_identity(key, etag))
    }

    /// An object's identity, which its blocks' identities extend with their index.
    fn object_identity(&self, key: &str, etag: &str) -> String {
        format!("{}\0{key}\0{etag}", self.bucket)
    }

    /// Whether the index lists the block (it may still turn out unreadable): a cheap check
    /// that needs no trip to a blocking thread.
    pub fn holds(&self, key: &str, etag: &str, index: u64) -> bool {
        let name = segments::name_of(self.identity(key, etag, index).as_bytes());
        self.state.lock().blocks.contains_key(&name)
    }

    /// Whether the index lists the block or it is on its way to the disk: memory may let
    /// it go without a trip to the network when it is read again (`get` serves it from
    /// the queue until it is written).
    pub fn keeps(&self, key: &str, etag: &str, index: u64) -> bool {
        let name = segments::name_of(self.identity(key, etag, index).as_bytes());
        let state = self.state.lock();
        state.blocks.contains_key(&name) || state.writing.contains_key(&name)
    }

    /// Whether the disk has `bytes` more above the free-space floor (beyond it the cache
    /// refuses writes instead of evicting).
    pub fn has_room(&self, bytes: u64) -> bool {
        self.free.available() >= self.min_free.saturating_add(bytes)
    }

    /// Counts lookups answered by `keeps` alone.
    pub fn count_misses(&self, blocks: usize) {
        self.stats.misses.fetch_add(blocks as u64, Ordering::Relaxed);
    }

    /// The block, if cached and intact, read into one of `buffers`.
    pub fn get(self: &Arc<Self>, key: &str, etag: &str, index: u64, buffers: &Arc<BlockBuffers>) -> Option<Bytes> {
        let identity = self.identity(key, etag, index);
        let name = segments::name_of(identity.as_bytes());
        let found = {
            let state = self.state.lock();
            if let Some(queued) = state.writing.get(&name) {
                // Still on its way to the disk (memory may have let it go already): a
                // read of it in the meantime is no trip to the network.
                let queued = queued.clone();
                drop(state);
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Some(queued.share());
            }
            let at = state.blocks.get(&name).copied();
            at.map(|at| (at, state.near_eviction(at.seq, self.budget)))
        };
        let Some((at, near_eviction)) = found else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let read = match at.crc {
            Some(crc) => self.read_object_block(at, crc, buffers),
            None => usize::try_from(at.size)
                .ok()
                .filter(|size| *size <= buffers.largest_file() && *size >= DATA_OFFSET)
                .and_then(|size| self.read(at, size, buffers))
                .and_then(|buf| record::decode(buf.image(at.size as usize), &identity).map(|len| (buf, len))),
        };
        match read {
            Some((mut buf, len)) => {
                buf.set_len(len);
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                let block = Arc::new(buf);
                if near_eviction {
                    match at.crc {
                        Some(_) => self.renew_object(at.seq),
                        None => self.write_later(name, block.clone(), Destination::Segment),
                    }
                }
                Some(block.share())
            }
            None if !self.state.lock().segments.contains_key(&at.seq) => {
                // Its segment was evicted while this read looked for it: a plain miss.
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                tracing::warn!(
                    "disk cache block at {} offset {} is corrupt or unreadable; dropped and refetched",
                    self.path_of(at).display(),
                    at.offset
                );
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                let mut state = self.state.lock();
                if state
                    .blocks
                    .get(&name)
                    .is_some_and(|now| now.seq == at.seq && now.offset == at.offset)
                {
                    state.blocks.remove(&name);
                }
                None
            }
        }
    }

    fn path_of(&self, at: Location) -> PathBuf {
        match at.crc {
            Some(_) => objects::object_path(&self.dir, at.seq),
            None => segments::segment_path(&self.dir, at.seq),
        }
    }

    /// The record at `at`, `size` bytes, read whole into a buffer from `buffers`.
    fn read(&self, at: Location, size: usize, buffers: &Arc<BlockBuffers>) -> Option<BlockBuffer> {
        let mut buf = buffers.take(size - DATA_OFFSET);
        self.read_into(at, &mut buf.as_mut()[..size], size).map(|()| buf)
    }

    /// A block of an object file, with the length of its data, if intact.
    fn read_object_block(&self, at: Location, crc: u32, buffers: &Arc<BlockBuffers>) -> Option<(BlockBuffer, usize)> {
        let len = usize::try_from(at.size)
            .ok()
            .filter(|len| *len <= buffers.largest_file())?;
        let mut buf = buffers.take(len);
        // The whole pages O_DIRECT wants; the object's last block ends before its last page.
        let area = &mut buf.as_mut()[DATA_OFFSET..DATA_OFFSET + round_up(len)];
        self.read_into(at, area, len)?;
        (crc32fast::hash(&buf.as_mut()[DATA_OFFSET..DATA_OFFSET + len]) == crc).then_some((buf, len))
    }

    /// Reads into `area` from `at` until at least `need` bytes are in, with O_DIRECT if the
    /// filesystem takes it.
    fn read_into(&self, at: Location, area: &mut [u8], need: usize) -> Option<()> {
        let file = self.reader(at)?;
        match read_at_least(&file, area, at.offset, need) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.direct.swap(false, Ordering::Relaxed) => {
                // A filesystem that takes O_DIRECT at open but not its reads.
                self.readers.lock().clear();
                let file = self.reader(at)?;
                read_at_least(&file, area, at.offset, need).ok()
            }
            other => other.ok(),
        }
    }

    fn reader(&self, at: Location) -> Option<Arc<File>> {
        if let Some(file) = self.readers.lock().get(&at.seq) {
            return Some(file.clone());
        }
        let file = Arc::new(segments::open(&self.path_of(at), false, self.direct.load(Ordering::Relaxed)).ok()?);
        self.readers.lock().put(at.seq, file.clone());
        Some(file)
    }

    /// Writes block `index` of `object` to disk in the background (into the object's own
    /// file if it is large, else as a record: its header written into the buffer first),
    /// unless too many writes are pending already. Returns the block, now to share.
    pub fn put_later(
        self: &Arc<Self>,
        object: &ObjectVersion,
        block_size: u64,
        index: u64,
        mut block: BlockBuffer,
    ) -> Arc<BlockBuffer> {
        let identity = self.identity(&object.key, &object.etag, index);
        let name = segments::name_of(identity.as_bytes());
        if self.takes_object_file(object.size, block_size) {
            let block = Arc::new(block);
            // Queued only while the disk has room above the floor: a large file's block on
            // its way counts as kept (`keeps`), and memory lets it go once read (with the
            // disk full, a same-mount re-read of a 1 GiB file fetched 240 MiB again whose
            // writes had been refused at the write).
            if !self.has_room(block.data().len() as u64) {
                return block;
            }
            let spot = ObjectSpot {
                identity: self.object_identity(&object.key, &object.etag),
                size: object.size,
                block_size,
                index,
            };
            self.write_later(name, block.clone(), Destination::Object(spot));
            return block;
        }
        let fits = record::write_header(&identity, &mut block);
        let block = Arc::new(block);
        if fits {
            self.write_later(name, block.clone(), Destination::Segment);
        }
        block
    }

    /// Writes `block` in the background, if a write slot is free: a record through the
    /// queue of records, a large object's block at once on a thread of its own (the
    /// disk takes those fastest many at a time, one block each: in one write per run of
    /// neighbours, 2-4 MiB took 3-16 ms where 1 MiB took 1, and a cold 1 GiB read left
    /// blocks uncached for want of a write slot in half the runs).
    fn write_later(self: &Arc<Self>, name: Name, block: Arc<BlockBuffer>, to: Destination) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        self.state.lock().writing.insert(name, block.clone());
        let this = self.clone();
        let write: Box<dyn FnOnce() + Send> = match to {
            Destination::Object(spot) => Box::new(move || {
                let _permit = permit;
                if let Err(e) = this.put_in_object(name, &spot, &block) {
                    tracing::debug!("disk cache write: {e}");
                }
                this.state.lock().writing.remove(&name);
            }),
            Destination::Segment => {
                let record = QueuedRecord {
                    name,
                    block,
                    _permit: permit,
                };
                let start = self.records.push(record);
                if start == Start::No {
                    return; // a running writer takes it
                }
                Box::new(move || this.write_records(start == Start::Idle))
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// A writer of records: writes batches while any wait; one started on an idle queue
    /// first lets a few gather.
    fn write_records(&self, gather: bool) {
        if gather {
            std::thread::sleep(write_queue::GATHER);
        }
        while let Some(batch) = self.records.next_batch() {
            // A panic loses this batch's blocks (read from the origin again), not the writer.
            let written = std::panic::catch_unwind(AssertUnwindSafe(|| self.put(&batch)));
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("disk cache write: {e}"),
                Err(_) => tracing::error!("disk cache write panicked; {} blocks not cached", batch.len()),
            }
            let mut state = self.state.lock();
            for record in &batch {
                state.writing.remove(&record.name);
            }
        }
    }

    /// Appends `records` to one segment, in one write.
    fn put(&self, records: &[QueuedRecord]) -> std::io::Result<()> {
        let records: Vec<&QueuedRecord> = records
            .iter()
            .filter(|r| r.block.file_image().len() as u64 <= self.budget)
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let images: Vec<&[u8]> = records.iter().map(|r| r.block.file_image()).collect();
        let size = images.iter().map(|image| image.len() as u64).sum();
        let Some(slot) = self.reserve(size, records.len())? else {
            return Ok(());
        };
        let written = match write_all_at(&slot.appender, &images, slot.offset) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // A filesystem that takes O_DIRECT at open but not these writes.
                self.direct.store(false, Ordering::Relaxed);
                let path = segments::segment_path(&self.dir, slot.seq);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|plain| write_all_at(&plain, &images, slot.offset))
            }
            other => other,
        };
        let mut offset = slot.offset;
        for (record, image) in records.iter().zip(&images) {
            let size = image.len() as u64;
            let at = Location {
                seq: slot.seq,
                offset,
                size,
                crc: None,
            };
            self.finish(record.name, at, written.is_ok());
            offset += size;
        }
        written
    }

    /// Writes a block at its offset in its object's file (created with the first).
    fn put_in_object(&self, name: Name, spot: &ObjectSpot, block: &BlockBuffer) -> std::io::Result<()> {
        let padded = &block.file_image()[DATA_OFFSET..];
        let expected = spot
            .block_size
            .min(spot.size.saturating_sub(spot.index * spot.block_size));
        if block.data().len() as u64 != expected {
            // Not this object's block (a size the listing got wrong): the file must be
            // the object byte for byte.
            return Ok(());
        }
        let Some(seq) = self.reserve_in_object(name, spot)? else {
            return Ok(());
        };
        let path = objects::object_path(&self.dir, seq);
        let offset = spot.index * spot.block_size;
        let write = |direct| {
            // Never created here: a file evicted meanwhile must not come back untracked.
            let mut o = std::fs::OpenOptions::new();
            o.write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path).and_then(|file| file.write_all_at(padded, offset))
        };
        let written = match write(self.direct.load(Ordering::Relaxed)) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // A filesystem that does not take O_DIRECT (tmpfs) or not these writes.
                self.direct.store(false, Ordering::Relaxed);
                write(false)
            }
            other => other,
        };
        let at = Location {
            seq,
            offset,
            size: block.data().len() as u64,
            crc: Some(crc32fast::hash(block.data())),
        };
        self.finish_in_object(name, spot.index, at, written.is_ok());
        written
    }

    /// Finds the object's file, or starts it: created here, under the lock, with room
    /// for the whole object allocated at once (its budget share taken then) so that the
    /// blocks written into it in any order, several at a time, neither wait for each
    /// other (ext4 serializes O_DIRECT writes that fill holes or extend a file: a cold
    /// 1 GiB read left 445 of its blocks unwritten for want of a write slot) nor scatter
    /// the file (138 extents: read back at 372 MB/s). `None` if the cache or the disk
    /// has no room, or the file has the block already.
    fn reserve_in_object(&self, name: Name, spot: &ObjectSpot) -> std::io::Result<Option<u64>> {
        let found = |state: &State| {
            state
                .objects
                .get(&spot.identity)
                .copied()
                .filter(|seq| state.segments.contains_key(seq))
        };
        let room = round_up(usize::try_from(spot.size).unwrap_or(usize::MAX)) as u64;
        if found(&self.state.lock()).is_none() {
            self.evict(room);
            if self.free.available() < self.min_free.saturating_add(room) {
                return Ok(None);
            }
        }
        let mut state = self.state.lock();
        if state.blocks.contains_key(&name) {
            return Ok(None);
        }
        let seq = match found(&state) {
            Some(seq) => seq,
            None => {
                if state.used + room > self.budget {
                    return Ok(None);
                }
                let seq = state.next_seq;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(objects::object_path(&self.dir, seq))?;
                allocate(&file, room)?;
                self.free.spend(room);
                state.next_seq += 1;
                state.used += room;
                state.objects.insert(spot.identity.clone(), seq);
                let index = objects::ObjectIndex {
                    identity: spot.identity.clone(),
                    size: spot.size,
                    block_size: spot.block_size,
                    complete: false,
                    blocks: Vec::new(),
                };
                let object = ObjectFile { index, unsaved: 0 };
                state
                    .segments
                    .insert(seq, Segment::settled(room, Vec::new(), Some(object)));
                seq
            }
        };
        state.segments.get_mut(&seq).expect("found or made above").pending += 1;
        Ok(Some(seq))
    }

    /// A write into an object file ended. Its index is saved every few blocks; once every
    /// block is in, the file is cut to the object's size and flushed, and then its index
    /// says it is whole.
    fn finish_in_object(&self, name: Name, index: u64, at: Location, ok: bool) {
        let (whole, save) = {
            let mut state = self.state.lock();
            // A block fetched twice at once was written twice: counted once, or the file
            // would pass for whole with one block missing.
            let ok = ok && !state.blocks.contains_key(&name);
            let Some(segment) = state.segments.get_mut(&at.seq) else {
                return; // removed meanwhile (evicted, or the cache cleared)
            };
            segment.pending -= 1;
            let pending = segment.pending;
            let Some(object) = segment.object.as_mut() else {
                return;
            };
            if ok {
                object.index.blocks.push((index, at.crc.unwrap_or_default()));
                object.unsaved += 1;
                segment.names.push(name);
            }
            let whole = pending == 0 && object.index.blocks.len() as u64 == object.index.block_count();
            let save = whole || object.unsaved >= OBJECT_INDEX_EVERY;
            if save {
                object.unsaved = 0;
            }
            if ok {
                state.blocks.insert(name, at);
            }
            (whole, save)
        };
        if save && let Err(e) = self.save_object_index(at.seq, whole) {
            tracing::debug!("disk cache index of object file {}: {e}", at.seq);
        }
    }

    /// Writes an object file's index as it stands; `whole` first cuts the file to the
    /// object's size and flushes it, and marks the index so, durably.
    fn save_object_index(&self, seq: u64, whole: bool) -> std::io::Result<()> {
        // One index write at a time: each writes the latest state, and two writers would
        // share the temporary file.
        let _one = self.index_writes.lock();
        if whole {
            let size = match self.state.lock().segments.get(&seq).and_then(|s| s.object.as_ref()) {
                Some(object) => object.index.size,
                None => return Ok(()),
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(objects::object_path(&self.dir, seq))?;
            file.set_len(size)?;
            file.sync_data()?;
        }
        let index = {
            let mut state = self.state.lock();
            let Some(object) = state.segments.get_mut(&seq).and_then(|s| s.object.as_mut()) else {
                return Ok(());
            };
            object.index.complete |= whole;
            object.index.clone()
        };
        objects::write_index(&self.dir, seq, &index, whole)
    }

    /// Waits up to `bound` until no block is waiting for or under way to the disk; false
    /// if some still are.
    pub async fn writes_done(&self, bound: Duration) -> bool {
        let all = u32::try_from(self.write_slots).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(bound, self.writes.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Saves the index of every object file that holds blocks its index does not list
    /// yet (and marks whole those that are); at unmount.
    pub fn save_object_indexes(&self) {
        let stale: Vec<(u64, bool)> = {
            let state = self.state.lock();
            state
                .segments
                .iter()
                .filter_map(|(seq, segment)| {
                    let object = segment.object.as_ref()?;
                    let whole = segment.pending == 0
                        && !object.index.complete
                        && object.index.blocks.len() as u64 == object.index.block_count();
                    (object.unsaved > 0 || whole).then_some((*seq, whole))
                })
                .collect()
        };
        for (seq, whole) in stale {
            if let Some(object) = self.state.lock().segments.get_mut(&seq).and_then(|s| s.object.as_mut()) {
                object.unsaved = 0;
            }
            if let Err(e) = self.save_object_index(seq, whole) {
                tracing::debug!("disk cache index of object file {seq}: {e}");
            }
        }
    }

    /// Whether an object of `size` gets a file of its own (it takes its whole size from
    /// the budget at once: at most half of it).
    pub fn takes_object_file(&self, size: u64, block_size: u64) -> bool {
        block_size.is_multiple_of(DATA_OFFSET as u64)
            && size >= block_size.saturating_mul(OBJECT_FILE_MIN_BLOCKS)
            && size <= self.budget / 2
    }

    /// The object's file, opened for reading, if it holds the whole object: for the
    /// kernel to read from directly.
    pub fn whole_file(&self, object: &ObjectVersion, block_size: u64) -> Option<File> {
        // Checked first: every open of a small file asks (10,000 per data-loading epoch).
        if !self.takes_object_file(object.size, block_size) {
            return None;
        }
        let identity = self.object_identity(&object.key, &object.etag);
        let seq = {
            let state = self.state.lock();
            let seq = *state.objects.get(&identity)?;
            let whole = state.segments.get(&seq)?.object.as_ref()?;
            (whole.index.complete && whole.index.size == object.size).then_some(seq)?
        };
        File::open(objects::object_path(&self.dir, seq)).ok()
    }

    /// Moves an object file read from the oldest quarter of a full cache to the newest
    /// end: what is read again stays. (A record is written again instead; an object
    /// file is only renamed.) Not while blocks are being written into it.
    fn renew_object(&self, seq: u64) {
        let mut state = self.state.lock();
        if state.segments.get(&seq).is_none_or(|s| s.pending > 0) {
            return;
        }
        let to = state.next_seq;
        if let Err(e) = objects::renumber(&self.dir, seq, to) {
            tracing::debug!("disk cache: renaming object file {seq}: {e}");
            return;
        }
        state.next_seq += 1;
        let segment = state.segments.remove(&seq).expect("checked above");
        for name in &segment.names {
            if let Some(at) = state.blocks.get_mut(name).filter(|at| at.seq == seq) {
                at.seq = to;
            }
        }
        if let Some(object) = &segment.object {
            state.objects.insert(object.index.identity.clone(), to);
        }
        state.segments.insert(to, segment);
        drop(state);
        self.readers.lock().pop(&seq);
    }

    /// Makes room for `records` records of `size` bytes in all and hands out where they
    /// go, one after another, so that concurrent writes can neither overshoot the budget
    /// nor overlap; `None` if the disk is too full.
    fn reserve(&self, size: u64, records: usize) -> std::io::Result<Option<Slot>> {
        self.evict(size);
        if self.free.available() < self.min_free.saturating_add(size) {
            return Ok(None);
        }
        let mut state = self.state.lock();
        if state.used + size > self.budget {
            return Ok(None);
        }
        self.free.spend(size);
        let lane = state.next_lane;
        state.next_lane = (lane + 1) % LANES;
        let seq = match state.active[lane] {
            Some(seq) => seq,
            None => {
                let seq = state.next_seq;
                let path = segments::segment_path(&self.dir, seq);
                let appender = segments::open(&path, true, self.direct.load(Ordering::Relaxed))?;
                state.next_seq += 1;
                state.active[lane] = Some(seq);
                state.segments.insert(
                    seq,
                    Segment {
                        len: 0,
                        names: Vec::new(),
                        pending: 0,
                        appender: Some(Arc::new(appender)),
                        object: None,
                    },
                );
                seq
            }
        };
        let segment = state.segments.get_mut(&seq).expect("the active segment");
        let slot = Slot {
            seq,
            offset: segment.len,
            appender: segment.appender.clone().expect("the active segment appends"),
        };
        segment.len += size;
        segment.pending += u32::try_from(records).unwrap_or(u32::MAX);
        if segment.len >= self.segment_bytes {
            state.active[lane] = None;
        }
        state.used += size;
        Ok(Some(slot))
    }

    /// A write into a segment ended: the block is found there from now on if it
    /// succeeded. A segment filled and no longer written gets its index.
    fn finish(&self, name: Name, at: Location, ok: bool) {
        let mut state = self.state.lock();
        let active = state.is_active(at.seq);
        let Some(segment) = state.segments.get_mut(&at.seq) else {
            return; // removed meanwhile (evicted, or the cache cleared)
        };
        segment.pending -= 1;
        if ok {
            segment.names.push(name);
        }
        let filled = !active && segment.pending == 0 && segment.appender.is_some();
        if filled {
            segment.appender = None;
        }
        if ok {
            state.blocks.insert(name, at);
        }
        if filled {
            let entries = state.entries(at.seq);
            drop(state);
            if let Err(e) = segments::write_index(&self.dir, at.seq, &entries) {
                tracing::debug!("disk cache index of segment {}: {e}", at.seq);
            }
        }
    }

    /// Removes the oldest segments until `incoming` more bytes fit the budget and the
    /// free-space floor.
    fn evict(&self, incoming: u64) {
        loop {
            let low_disk = self.free.available() < self.min_free.saturating_add(incoming);
            let mut state = self.state.lock();
            if !(low_disk || state.used + incoming > self.budget) {
                return;
            }
            let Some((seq, segment)) = state.segments.pop_first() else {
                return;
            };
            state.retire(seq);
            state.used -= segment.len;
            let mut evicted = 0;
            for name in &segment.names {
                if state.blocks.get(name).is_some_and(|at| at.seq == seq) {
                    state.blocks.remove(name);
                    evicted += 1;
                }
            }
            if let Some(object) = &segment.object
                && state.objects.get(&object.index.identity) == Some(&seq)
            {
                state.objects.remove(&object.index.identity);
            }
            drop(state);
            self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
            // An open reader would keep the removed file's space (a reader the kernel
            // holds for a passthrough open keeps it until that file is closed).
            self.readers.lock().pop(&seq);
            remove_files(&self.dir, seq, segment.object.is_some());
            self.free.forget();
        }
    }

    /// Removes every block (`s3vol cache clear`); returns how many there were.
    pub fn clear(&self) -> u64 {
        let (blocks, seqs) = {
            let mut state = self.state.lock();
            let blocks = state.blocks.len() as u64;
            let seqs: Vec<(u64, bool)> = state
                .segments
                .iter()
                .map(|(seq, segment)| (*seq, segment.object.is_some()))
                .collect();
            state.blocks.clear();
            state.segments.clear();
            state.objects.clear();
            state.active = [None; LANES];
            state.used = 0;
            (blocks, seqs)
        };
        self.readers.lock().clear();
        for (seq, object) in seqs {
            remove_files(&self.dir, seq, object);
        }
        self.free.forget();
        blocks
    }
}

/// Allocates `len` bytes for `file` (where the filesystem cannot, its size is set: a
/// sparse file).
fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an open descriptor; fallocate only changes the file's allocation.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    file.set_len(len as u64)
}

fn remove_files(dir: &Path, seq: u64, object: bool) {
    match object {
        true => objects::remove(dir, seq),
        false => segments::remove(dir, seq),
    }
}

/// Reads `area` at `offset`, of which at least the first `need` bytes must be there: an
/// object file's last block ends within the last page O_DIRECT reads. A regular file's
/// read comes back short only at its end (and an O_DIRECT read cannot go on from an
/// unaligned offset): a short one is the end.
fn read_at_least(file: &File, area: &mut [u8], offset: u64, need: usize) -> std::io::Result<()> {
    loop {
        match file.read_at(area, offset) {
            Ok(n) if n >= need => return Ok(()),
            Ok(_) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes every block under a cache directory no mount holds; returns how many there
/// were.
pub fn clear_unlocked(root: &Path) -> std::io::Result<u64> {
    let dir = root.join(BLOCKS);
    if !dir.exists() {
        return Ok(0);
    }
    let found = segments::load(&dir)?;
    let mut blocks = found.iter().map(|f| f.entries.len() as u64).sum();
    for f in found {
        segments::remove(&dir, f.seq);
    }
    for f in objects::load(&dir)? {
        blocks += f.index.blocks.len() as u64;
        objects::remove(&dir, f.seq);
    }
    Ok(blocks)
}

/// Writes `images` one after another from `offset`, in as few calls as the kernel takes.
fn write_all_at(file: &File, images: &[&[u8]], offset: u64) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = images.iter().map(|image| IoSlice::new(image)).collect();
    let mut rest = &mut slices[..];
    let mut offset = i64::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    while !rest.is_empty() {
        match nix::sys::uio::pwritev(file, rest, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n as i64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
