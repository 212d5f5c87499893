//! The rest of a file read at random, fetched ahead of its reader (a model loader taking
//! its tensors in a shuffled order), so that the reads in any order cost what a download
//! of the file costs.
//!
//! The fetch keeps pace with the reader: the blocks it brought that no reader has read
//! yet stay within `room`, a share of the memory cache. Unpaced, a fetch faster than its
//! reader filled memory with blocks read only later, and memory evicted them first: a
//! shuffled load of a 1 GiB model (512 MiB of memory cache by default) read 750 of its
//! 1,024 blocks back from the disk cache, each written there and read again, with both
//! cores already busy.
//!
//! The pace holds only while the link is fast. Over a slow link a block read back from
//! the disk costs far less than its GET, and a fetch held back idles the link while the
//! reader waits on GETs of its own: a shuffled load over a 1 Gbit/s, 40 ms link ran at
//! 64 MiB/s paced against 91 unpaced. So the fetch times its GETs, and goes on unpaced
//! while they take longer than `SLOW_BLOCK` a block. Nor does the pace hold back the
//! fetch of a file whose reader pauses (a database answering a query now and then):
//! after `IDLE` without a read, the fetch goes on, so that the later reads find the
//! file local.
//!
//! Where the fetch can hand its blocks to the kernel's page cache (`page_push.rs`), a
//! block handed over counts as read: it is the reader's already, and the fetch runs at the
//! link's pace.

use super::{BlockCache, GetSlots, ObjectVersion, Slot};
use bytes::Bytes;
use parking_lot::Mutex;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a reader may read nothing before its fetch goes on beyond the room: a model
/// loader reads its next tensor within milliseconds.
const IDLE: Duration = Duration::from_millis(200);
/// A GET of the fetch slower than this a block (80 MiB/s per GET, 640 with the file's 8
/// in flight) says the link, not the reader, sets the pace: a 1 MiB block takes about
/// 1 ms to read back from a local disk.
const SLOW_BLOCK: Duration = Duration::from_micros(12_500);

/// A file fetched whole: which of its blocks the fetch brought ahead and which were read.
pub struct WholeFetch {
    blocks: Mutex<Blocks>,
    /// Blocks fetched ahead and not read yet, at most.
    room: u64,
    /// A reader read a block fetched ahead, or the file was closed (one waiter: the fetch).
    changed: Notify,
    started: AtomicBool,
    abandoned: AtomicBool,
    /// The fetch's last GET was slow (see `SLOW_BLOCK`); so until one is timed.
    slow_link: AtomicBool,
    /// Where fetched blocks go besides the caches (the kernel's page cache).
    sink: OnceLock<BlockSink>,
}

/// Takes a block fetched ahead (its index, its bytes) for the reader: what to wait for
/// before the fetch goes on (room for it among the blocks being handed over), or `None`
/// if it did not take it.
pub type BlockSink = Arc<dyn Fn(u64, Bytes) -> Option<futures::future::BoxFuture<'static, ()>> + Send + Sync>;

struct Blocks {
    state: Vec<BlockState>,
    ahead: u64,
    last_read: Instant,
}

#[derive(Clone, Copy, PartialEq)]
enum BlockState {
    Untouched,
    /// Claimed by the fetch, not read yet.
    Ahead,
    Read,
}

impl std::fmt::Debug for WholeFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeFetch")
            .field("ahead", &self.blocks.lock().ahead)
            .field("room", &self.room)
            .finish()
    }
}

impl WholeFetch {
    /// A file of `blocks` blocks, fetched at most `room` blocks ahead of its reads.
    pub fn new(blocks: u64, room: u64) -> Arc<WholeFetch> {
        let len = usize::try_from(blocks).unwrap_or(usize::MAX);
        Arc::new(WholeFetch {
            blocks: Mutex::new(Blocks {
                state: vec![BlockState::Untouched; len],
                ahead: 0,
                last_read: Instant::now(),
            }),
            room: room.max(1),
            changed: Notify::new(),
            started: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            slow_link: AtomicBool::new(true),
            sink: OnceLock::new(),
        })
    }

    /// A reader read `blocks`: those fetched ahead leave room for more.
    pub fn read(&self, blocks: Range<u64>) {
        let mut freed = false;
        {
            let mut b = self.blocks.lock();
            b.last_read = Instant::now();
            let Blocks { state, ahead, .. } = &mut *b;
            for index in blocks {
                let Some(state) = usize::try_from(index).ok().and_then(|i| state.get_mut(i)) else {
                    break;
                };
                if std::mem::replace(state, BlockState::Read) == BlockState::Ahead {
                    *ahead -= 1;
                    freed = true;
                }
            }
        }
        if freed {
            self.changed.notify_one();
        }
    }

    /// Hands the blocks this fetch brings to `sink` as they arrive.
    pub fn hand_blocks_to(&self, sink: BlockSink) {
        let _ = self.sink.set(sink);
    }

    fn was_read(&self, index: u64) -> bool {
        let b = self.blocks.lock();
        usize::try_from(index)
            .ok()
            .and_then(|i| b.state.get(i))
            .is_some_and(|s| *s == BlockState::Read)
    }

    /// A block arrived: handed on if a sink takes it (not if a reader read it meanwhile:
    /// the page cache has it), which counts as read; returns once the sink has room.
    async fn arrived(&self, index: u64, data: Bytes) -> bool {
        let Some(sink) = self.sink.get() else { return false };
        if self.was_read(index) {
            return false;
        }
        let Some(taking) = sink(index, data) else { return false };
        self.read(index..index + 1);
        let _ = taking.await;
        true
    }

    /// Where the blocks from `blocks.start` that no reader has read yet end, within
    /// `blocks`.
    pub fn unread_until(&self, blocks: Range<u64>) -> u64 {
        let b = self.blocks.lock();
        blocks
            .clone()
            .find(|index| {
                usize::try_from(*index)
                    .ok()
                    .and_then(|i| b.state.get(i))
                    .is_some_and(|s| *s == BlockState::Read)
            })
            .unwrap_or(blocks.end)
    }

    /// One of the fetch's GETs brought `blocks` blocks in `took`.
    pub(super) fn timed(&self, blocks: u64, took: Duration) {
        let slow = took > SLOW_BLOCK.saturating_mul(u32::try_from(blocks).unwrap_or(u32::MAX));
        self.slow_link.store(slow, Ordering::Relaxed);
    }

    /// The file was closed: the fetch stops.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// True once: the read that finds it so starts the fetch.
    fn start(&self) -> bool {
        !self.started.swap(true, Ordering::Relaxed)
    }

    /// Waits until the blocks of `blocks` that no reader has read and the disk cache
    /// does not hold (`on_disk`, one flag per block) fit in the room left, and counts them
    /// as fetched ahead; returns them, in stretches of consecutive blocks, or None if the
    /// file was closed meanwhile. A run larger than the whole room goes once nothing else
    /// is ahead; any run goes over a slow link, and once the reader has read nothing
    /// for `IDLE`. Blocks the reader read are not fetched again: memory dropped them once
    /// they were served, and they are in the kernel's page cache and the disk cache.
    async fn room_for(&self, blocks: Range<u64>, on_disk: &[bool]) -> Option<Vec<Range<u64>>> {
        loop {
            if self.abandoned.load(Ordering::Relaxed) {
                return None;
            }
            {
                let mut b = self.blocks.lock();
                let unpaced = b.last_read.elapsed() >= IDLE || self.slow_link.load(Ordering::Relaxed);
                let Blocks { state, ahead, .. } = &mut *b;
                let wanted = |index: u64| {
                    let untouched = usize::try_from(index)
                        .ok()
                        .and_then(|i| state.get(i))
                        .is_some_and(|s| *s == BlockState::Untouched);
                    let held = on_disk.get((index - blocks.start) as usize).copied().unwrap_or(false);
                    untouched && !held
                };
                let fetch: Vec<u64> = blocks.clone().filter(|i| wanted(*i)).collect();
                let count = fetch.len() as u64;
                if count == 0 || *ahead == 0 || *ahead + count <= self.room || unpaced {
                    let mut stretches: Vec<Range<u64>> = Vec::new();
                    for index in fetch {
                        if let Some(s) = usize::try_from(index).ok().and_then(|i| state.get_mut(i)) {
                            *s = BlockState::Ahead;
                        }
                        match stretches.last_mut() {
                            Some(last) if last.end == index => last.end += 1,
                            _ => stretches.push(index..index + 1),
                        }
                    }
                    *ahead += count;
                    return Some(stretches);
                }
            }
            // A permit stored by a read since the check wakes this at once.
            let _ = tokio::time::timeout(IDLE, self.changed.notified()).await;
        }
    }
}

impl BlockCache {
    /// The pacing of a whole-file fetch of `object`: a quarter of the memory cache ahead
    /// of the reader (the rest keeps what other files and the reader itself use).
    pub fn whole_fetch(&self, object: &ObjectVersion) -> Arc<WholeFetch> {
        let per_request = (self.request_size / self.block_size).max(1);
        let room = (self.budget() / 4 / self.block_size).max(per_request);
        WholeFetch::new(object.size.div_ceil(self.block_size), room)
    }

    /// Starts fetching the rest of `object` if `whole` has not started yet.
    pub(super) fn start_whole_fetch(
        self: &Arc<Self>,
        object: &ObjectVersion,
        whole: &Arc<WholeFetch>,
        gets: &Arc<GetSlots>,
    ) {
        if whole.start() {
            let (this, object, whole, gets) = (self.clone(), object.clone(), whole.clone(), gets.clone());
            tokio::spawn(async move { this.fetch_rest(object, whole, gets).await });
        }
    }

    /// Fetches every block of a file read at random, in order, a GET at a time per slot
    /// of `gets`, within the room `whole` leaves ahead of the reader. Each GET's blocks
    /// are claimed only when it can start: a reader that wants a block further on claims
    /// and fetches it at once instead of waiting for its turn here. Stops when the file
    /// is closed, and after a GET that failed: the reads that need those blocks ask again,
    /// and report the error if it stays.
    ///
    /// Blocks the disk cache holds are passed over: they cost a disk read, not a round
    /// trip, and the reader reads them as it goes. Read back ahead, a file larger than
    /// memory (a model loaded again, after a remount) went from the disk into memory at
    /// full speed, racing the reader for the disk and evicting what it was about to read.
    async fn fetch_rest(self: Arc<Self>, object: ObjectVersion, whole: Arc<WholeFetch>, gets: Arc<GetSlots>) {
        let per_request = (self.request_size / self.block_size).max(1);
        let last_block = object.size.div_ceil(self.block_size);
        let failed = Arc::new(AtomicBool::new(false));
        let mut start = 0;
        while start < last_block {
            let end = (start + per_request).min(last_block);
            let on_disk: Vec<bool> = (start..end).map(|i| self.on_disk_within(&object, i..i + 1)).collect();
            let Some(stretches) = whole.room_for(start..end, &on_disk).await else {
                return;
            };
            start = end;
            if stretches.is_empty() {
                continue;
            }
            let Ok(slot) = gets.slots.clone().acquire_owned().await else {
                return;
            };
            if gets.abandoned.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                return;
            }
            // A run's slots are its blocks in order (no `served` to cut it short).
            let slots: Vec<(u64, Slot)> = stretches
                .into_iter()
                .flat_map(|run| {
                    run.clone()
                        .zip(self.claim_blocks(&object, run.clone(), run.end, None, None, false))
                })
                .collect();
            let (failed, whole, this, object) = (failed.clone(), whole.clone(), self.clone(), object.clone());
            let began = Instant::now();
            tokio::spawn(async move {
                let mut fetched = 0;
                for (index, slot) in slots {
                    if let Slot::Pending(mut progress) = slot {
                        fetched += 1;
                        let done = progress
                            .wait_for(|p| p.done.is_some())
                            .await
                            .ok()
                            .and_then(|p| p.done.clone());
                        let handed = match done {
                            Some(Ok(data)) => whole.arrived(index, data).await,
                            Some(Err(_)) => {
                                failed.store(true, Ordering::Relaxed);
                                false
                            }
                            None => false,
                        };
                        if handed {
                            // On its way to the page cache; kept by the disk cache too, if it
                            // took it.
                            this.let_go_if_kept(&object, index);
                        }
                    }
                }
                if fetched > 0 {
                    whole.timed(fetched, began.elapsed());
                }
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinHandle;

    /// A fetch whose GETs came fast: the pace holds.
    fn over_a_fast_link(blocks: u64, room: u64) -> Arc<WholeFetch> {
        let whole = WholeFetch::new(blocks, room);
        whole.timed(room, Duration::from_millis(1));
        whole
    }

    /// The fetch asking for room for `blocks`, in the background.
    fn asking(whole: &Arc<WholeFetch>, blocks: Range<u64>) -> JoinHandle<Option<Vec<Range<u64>>>> {
        let whole = whole.clone();
        tokio::spawn(async move { whole.room_for(blocks, &[]).await })
    }

    #[tokio::test]
    async fn the_fetch_waits_for_the_reader_to_read_what_it_brought() {
        let whole = over_a_fast_link(20, 4);
        assert!(whole.room_for(0..4, &[]).await.is_some());
        let next = asking(&whole, 4..8);
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "four blocks ahead: no room");
        // Reads elsewhere free nothing; they are not fetched ahead again either.
        whole.read(10..12);
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        whole.read(0..2);
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "two blocks still ahead: no room for four");
        whole.read(2..4);
        let went = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(went.expect("room once all were read").unwrap().is_some());
        // Blocks already read take no room: of 8..12, only 8 and 9 are fetched ahead.
        whole.read(4..6);
        let went = tokio::time::timeout(Duration::from_secs(5), whole.room_for(8..12, &[])).await;
        let stretches = went.expect("two ahead and two to come fit in four").unwrap();
        assert_eq!((stretches.len(), &stretches[0]), (1, &(8..10)));
        assert_eq!(whole.blocks.lock().ahead, 4);
        // A read's look ahead stops at the first block read already.
        assert_eq!(whole.unread_until(6..15), 10);
        assert_eq!(whole.unread_until(12..15), 15);
        // Nor do blocks the disk cache holds.
        whole.read(6..10);
        let fetch = whole.room_for(12..16, &[false, true, false, false]).await;
        assert_eq!(fetch, Some(vec![12..13, 14..16]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_pauses_lets_the_fetch_go_on() {
        let whole = over_a_fast_link(20, 2);
        assert!(whole.room_for(0..2, &[]).await.is_some());
        let started = Instant::now();
        let next = asking(&whole, 2..4);
        // Reads elsewhere keep the reader busy: no room, no going on.
        for at in 10..14 {
            tokio::time::sleep(IDLE / 2).await;
            whole.read(at..at + 1);
        }
        assert!(!next.is_finished(), "a busy reader holds the fetch back");
        let stretches = next.await.unwrap().expect("not closed");
        assert_eq!((stretches.len(), &stretches[0]), (1, &(2..4)));
        assert!(started.elapsed() >= IDLE * 2 + IDLE, "it went only after an idle spell");
    }

    #[tokio::test]
    async fn over_a_slow_link_the_fetch_is_not_held_back() {
        let whole = WholeFetch::new(20, 2);
        // Until a GET is timed, the link counts as slow.
        assert!(whole.room_for(0..2, &[]).await.is_some());
        let beyond = tokio::time::timeout(Duration::from_secs(5), whole.room_for(2..4, &[])).await;
        assert!(beyond.expect("not held back").is_some());
        whole.timed(2, SLOW_BLOCK * 2 + Duration::from_millis(1));
        let beyond = tokio::time::timeout(Duration::from_secs(5), whole.room_for(4..6, &[])).await;
        assert!(beyond.expect("not held back").is_some());
        // A fast GET: the pace holds.
        whole.timed(2, SLOW_BLOCK);
        let held = tokio::time::timeout(IDLE / 2, whole.room_for(6..8, &[])).await;
        assert!(held.is_err(), "six blocks ahead of a room of two");
    }

    #[tokio::test]
    async fn a_closed_file_ends_the_wait() {
        let whole = over_a_fast_link(20, 2);
        assert!(whole.room_for(0..2, &[]).await.is_some());
        let next = asking(&whole, 2..4);
        tokio::task::yield_now().await;
        whole.abandon();
        assert!(next.await.unwrap().is_none());
    }

    #[test]
    fn reads_beyond_the_file_are_ignored() {
        let whole = WholeFetch::new(2, 1);
        whole.read(0..10);
        assert_eq!(whole.blocks.lock().ahead, 0);
        assert_eq!(whole.unread_until(1..5), 1);
        assert_eq!(whole.unread_until(2..5), 5, "beyond the file nothing was read");
    }
}
