//! Sequential-read detection: the prefetch window starts small, so `head`, `file` and
//! random reads fetch little, and doubles while reads stay sequential. State is per file
//! and holds several streams: readers of one file through different handles that move
//! together (the kernel then asks for each page once, through whichever handle misses
//! it) are one stream, and readers at different places are separate streams.
//!
//! A file read at random (a model loader taking its tensors in a shuffled order, a
//! database) gets no window: each jump starts a new stream. After a few jumps the file
//! counts as read at random, and its reader may fetch the rest of it ahead (see
//! `BlockCache::read`), so the reads in any order cost what a download of the file costs.
//! While it is fetched whole, each stream looks only `initial` bytes ahead: its window
//! would otherwise grow at each tensor to tens of MiB that the whole-file fetch brings
//! anyway, and read back from the disk cache what memory evicted, evicting in turn the
//! blocks the reader is about to want (a shuffled 1 GiB model load read 4.4 GiB from the
//! disk cache that way).
//!
//! The window is claimed in whole GETs (`step`, the size of one ranged GET), and at full
//! size it is twice what the file may have in flight (`PREFETCH_GETS`): GETs sharing a
//! link finish together, so a window of exactly the GETs in flight is refilled in bursts,
//! each starting with an idle round trip; the queued half keeps the link busy instead.

use super::blocks::{GetSlots, ServedBlocks, WholeFetch};
use std::sync::Arc;

/// Streams tracked per file; a new one replaces the one used least recently.
const STREAMS: usize = 8;
/// Prefetch GETs of one file in flight at once; the rest of its window waits in order.
const PREFETCH_GETS: usize = 8;
/// Jumps to a new place after which a file counts as read at random. A sequential reader
/// makes none; a few readers of one file, each in order, one per reader; `file` or
/// `head` of a large file one or two.
const RANDOM_JUMPS: u32 = 4;
/// How much a window grows at each refill until it is full size.
const GROWTH: u64 = 4;

#[derive(Debug)]
pub struct ReadStreams {
    /// Each stream with the tick of its last read.
    streams: Vec<(ReadAhead, u64)>,
    tick: u64,
    initial: u64,
    max: u64,
    step: u64,
    /// Reads that started a new stream while others existed.
    jumps: u32,
    /// The file was found read at random (said once).
    random: bool,
    /// The whole file is being fetched ahead of its reads: windows stay at `initial`.
    pub whole: Option<Arc<WholeFetch>>,
    /// Slots for the file's prefetch GETs (see `PREFETCH_GETS`).
    pub gets: Arc<GetSlots>,
    /// The blocks its reads handed out whole, which memory may let go.
    pub served: Arc<ServedBlocks>,
}

impl ReadStreams {
    /// Windows from `initial` up to `max` bytes, refilled `step` bytes (one GET) at a time.
    pub fn new(initial: u64, max: u64, step: u64) -> ReadStreams {
        ReadStreams {
            streams: Vec::new(),
            tick: 0,
            initial,
            max,
            step,
            jumps: 0,
            random: false,
            whole: None,
            gets: GetSlots::new(PREFETCH_GETS),
            served: Arc::default(),
        }
    }

    /// True once, at the read that shows the file is being read at random.
    pub fn turned_random(&mut self) -> bool {
        if self.random || self.jumps < RANDOM_JUMPS {
            return false;
        }
        self.random = true;
        true
    }

    /// From now on the whole file is on its way: reads look only a little ahead.
    pub fn fetch_whole(&mut self, whole: Arc<WholeFetch>) {
        self.whole = Some(whole);
    }

    /// Records a read; returns how far ahead to prefetch (an absolute offset).
    pub fn on_read(&mut self, offset: u64, len: u64) -> u64 {
        self.tick += 1;
        let found = self.streams.iter().position(|(s, _)| s.follows(offset));
        if found.is_none() && !self.streams.is_empty() {
            self.jumps = self.jumps.saturating_add(1);
        }
        let i = match found {
            Some(i) => i,
            None if self.streams.len() < STREAMS => {
                self.streams
                    .push((ReadAhead::new(self.initial, self.max, self.step), 0));
                self.streams.len() - 1
            }
            None => {
                let oldest = (0..self.streams.len()).min_by_key(|i| self.streams[*i].1).unwrap_or(0);
                self.streams[oldest].0 = ReadAhead::new(self.initial, self.max, self.step);
                oldest
            }
        };
        self.streams[i].1 = self.tick;
        let frontier = self.streams[i].0.on_read(offset, len);
        match self.whole {
            Some(_) => frontier.min(offset.saturating_add(len).saturating_add(self.initial)),
            None => frontier,
        }
    }
}

/// The file's last handle is closed: its queued prefetch GETs need not go.
impl Drop for ReadStreams {
    fn drop(&mut self) {
        self.gets.abandon();
        if let Some(whole) = &self.whole {
            whole.abandon();
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Where the next sequential read would start.
    next: u64,
    window: u64,
    /// How far prefetching has been asked for.
    frontier: u64,
    initial: u64,
    max: u64,
    step: u64,
}

impl ReadAhead {
    pub fn new(initial: u64, max: u64, step: u64) -> ReadAhead {
        ReadAhead {
            next: 0,
            window: 0,
            frontier: 0,
            initial,
            max: max.max(initial),
            step: step.max(1),
        }
    }

    /// Refill when less than this is left ahead of the reader.
    fn low_water(&self) -> u64 {
        if self.window < self.max {
            self.window / 2
        } else {
            self.window - self.step.min(self.window / 2)
        }
    }

    /// The window's end, rounded down to a whole GET once the window is that large (to a
    /// whole window before), so that each refill claims whole GETs on their boundaries
    /// rather than a GET and a sliver. Still past `end`, as the window is at least that.
    fn window_end(&self, end: u64) -> u64 {
        let whole = self.window.min(self.step);
        (end + self.window) / whole * whole
    }

    /// Whether a read at `offset` continues this stream. The kernel issues readahead
    /// requests concurrently, so a sequential stream arrives slightly out of order:
    /// anything near the expected offset counts.
    fn follows(&self, offset: u64) -> bool {
        offset.abs_diff(self.next) <= self.window.max(self.initial)
    }

    /// Records a read of `len` bytes at `offset`; returns how far ahead to prefetch
    /// (an absolute offset).
    pub fn on_read(&mut self, offset: u64, len: u64) -> u64 {
        let sequential = self.follows(offset);
        let end = offset + len;
        if !sequential {
            self.window = 0;
            self.next = end;
            self.frontier = end;
            return end;
        }
        self.next = self.next.max(end);
        if self.window == 0 {
            self.window = self.initial;
            self.frontier = self.window_end(end);
        } else if self.frontier < end + self.low_water() {
            // While the window grows: refilled in whole windows, so one claim covers many
            // blocks, fetched as a few large GETs. At full size: refilled a GET's worth at
            // a time, so the GETs in flight stay as many and their connections busy (a
            // connection idle between bursts starts over in TCP slow start).
            self.window = (self.window * GROWTH).min(self.max);
            self.frontier = self.frontier.max(self.window_end(end));
        }
        self.frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn window_grows_in_whole_gets_and_resets_on_a_jump() {
        let mut r = ReadAhead::new(MIB, 16 * MIB, 4 * MIB);
        // The first window ends on a block boundary.
        assert_eq!(r.on_read(0, 4096), MIB);
        // Plenty left ahead: no new prefetch.
        assert_eq!(r.on_read(4096, 4096), MIB);
        let mut at = 8192;
        let mut frontiers = Vec::new();
        for _ in 0..400 {
            let frontier = r.on_read(at, 131072);
            at += 131072;
            assert!(frontier >= at && frontier <= at + 16 * MIB, "{frontier} at {at}");
            frontiers.push(frontier);
        }
        frontiers.dedup();
        let full: Vec<u64> = frontiers.iter().copied().filter(|f| *f > 24 * MIB).collect();
        assert!(full.len() > 5, "{frontiers:?}");
        // At full window, every refill is one whole GET on a GET boundary.
        assert!(full.iter().all(|f| f % (4 * MIB) == 0), "{full:?}");
        assert!(full.windows(2).all(|w| w[1] - w[0] == 4 * MIB), "{full:?}");
        assert_eq!(r.on_read(500 * MIB, 4096), 500 * MIB + 4096);
    }

    #[test]
    fn readers_moving_together_share_a_stream_and_distant_ones_do_not() {
        let mut streams = ReadStreams::new(MIB, 64 * MIB, 8 * MIB);
        // Four readers of one file, each missing the pages the others already read.
        let mut frontier = 0;
        for i in 0..256u64 {
            frontier = streams.on_read(i * 256 * 1024, 256 * 1024);
        }
        assert!(
            frontier >= 64 * MIB + 32 * MIB,
            "window grew to the maximum: {frontier}"
        );
        assert_eq!(streams.streams.len(), 1);
        // A second reader far away starts its own stream and leaves the first one intact.
        streams.on_read(900 * MIB, 4096);
        streams.on_read(900 * MIB + 4096, 131072);
        assert_eq!(streams.streams.len(), 2);
        assert!(streams.on_read(256 * 256 * 1024, 256 * 1024) >= 64 * MIB);
        assert!(!streams.turned_random(), "two streams are not random reads");
    }

    #[test]
    fn tensors_in_a_shuffled_order_turn_the_file_random_once() {
        let mut streams = ReadStreams::new(MIB, 64 * MIB, 8 * MIB);
        let order = [7u64, 2, 11, 0, 5, 13, 3, 9, 1, 12, 4, 8, 6, 10];
        let mut turned = Vec::new();
        for (n, tensor) in order.iter().enumerate() {
            // Each tensor of 4 MiB is read in order, in 1 MiB requests.
            for part in 0..4 {
                streams.on_read(tensor * 40 * MIB + part * MIB, MIB);
                if streams.turned_random() {
                    turned.push(n);
                }
            }
        }
        assert_eq!(
            turned,
            vec![RANDOM_JUMPS as usize],
            "after the last jump that counts, and only then"
        );
    }

    #[test]
    fn while_the_file_is_fetched_whole_reads_look_only_a_little_ahead() {
        let read_tensor = |streams: &mut ReadStreams, at: u64| {
            (0..32u64)
                .map(|part| {
                    let end = at + (part + 1) * 128 * 1024;
                    streams.on_read(end - 128 * 1024, 128 * 1024) - end
                })
                .max()
                .unwrap_or(0)
        };
        let mut streams = ReadStreams::new(MIB, 64 * MIB, 8 * MIB);
        assert!(
            read_tensor(&mut streams, 0) >= 8 * MIB,
            "a 4 MiB tensor grows its window"
        );
        streams.fetch_whole(WholeFetch::new(1, 1));
        assert!(read_tensor(&mut streams, 40 * MIB) <= MIB);
        assert!(read_tensor(&mut streams, 0) <= MIB, "a stream that had grown too");
    }
}
